"""Compressed sparse row (CSR) form of a directed graph with string node ids.

Node index ``i`` is the position of the id in the sorted id array, so "ties broken by index" means
"ties broken by node id" everywhere in the PPR code.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Iterable

import numpy as np

if TYPE_CHECKING:
    import pyarrow as pa


@dataclass(frozen=True)
class CsrGraph:
    ids: np.ndarray  # (n,) object array of node ids, sorted
    indptr: np.ndarray  # (n+1,) int64: out-edges of node i are indices[indptr[i]:indptr[i+1]]
    indices: np.ndarray  # (m,) int64 destination node index
    probs: np.ndarray  # (m,) float64 transition probability; each non-empty row sums to 1

    @property
    def num_nodes(self) -> int:
        return len(self.ids)

    @property
    def num_edges(self) -> int:
        return len(self.indices)

    @property
    def out_degree(self) -> np.ndarray:
        return np.diff(self.indptr)

    @cached_property
    def id_array(self) -> "pa.Array":
        """The ids as one Arrow string array (built once: ~1 s at 2.4M nodes)."""
        import pyarrow as pa

        return pa.array(self.ids.tolist(), pa.string())

    def index_of(self, node_ids: Iterable[str]) -> np.ndarray:
        """Indices of ``node_ids``; raises naming the ids that are not in the graph."""
        wanted = np.asarray(list(node_ids), dtype=object)
        pos = np.searchsorted(self.ids, wanted)
        pos = np.minimum(pos, max(self.num_nodes - 1, 0))
        ok = (self.num_nodes > 0) & (self.ids[pos] == wanted) if len(wanted) else np.zeros(0, bool)
        if not np.all(ok):
            missing = wanted[~ok][:5].tolist()
            raise ValueError(f"{int((~ok).sum())} node ids are not in the graph, e.g. {missing}")
        return pos.astype(np.int64)

    def transition_matrix(self):
        """scipy CSR ``P0`` (n x n): row-stochastic on nodes with out-edges, zero rows on dangling nodes."""
        import scipy.sparse as sp

        n = self.num_nodes
        return sp.csr_matrix((self.probs, self.indices, self.indptr), shape=(n, n))


def build_graph(src: Iterable[str], dst: Iterable[str], weight: Iterable[float] | None = None,
                extra_nodes: Iterable[str] = ()) -> CsrGraph:
    """CSR graph from parallel edge arrays; duplicate (src, dst) pairs add their weights.

    ``extra_nodes`` adds nodes that may have no edges at all (isolated nodes get no candidates but
    still appear as sources)."""
    src = np.asarray(list(src) if not isinstance(src, np.ndarray) else src, dtype=object)
    dst = np.asarray(list(dst) if not isinstance(dst, np.ndarray) else dst, dtype=object)
    if len(src) != len(dst):
        raise ValueError(f"src and dst must have the same length, got {len(src)} and {len(dst)}")
    w = np.ones(len(src)) if weight is None else np.asarray(list(weight) if not isinstance(weight, np.ndarray)
                                                            else weight, dtype=np.float64)
    if len(w) != len(src):
        raise ValueError(f"weight must have one value per edge, got {len(w)} for {len(src)} edges")
    _check_weights(w)
    extra = np.asarray(list(extra_nodes), dtype=object)
    ids, inverse = np.unique(np.concatenate([src, dst, extra]), return_inverse=True)
    s = inverse[: len(src)].astype(np.int64)
    d = inverse[len(src): 2 * len(src)].astype(np.int64)
    return _csr(ids, s, d, w)


def _check_weights(w: np.ndarray) -> None:
    if len(w) and not (np.all(np.isfinite(w)) and np.all(w > 0)):
        raise ValueError("edge weights must be finite and > 0 (drop or fix edges with null/zero weights, "
                         "or run without weights)")


def _csr(ids: np.ndarray, s: np.ndarray, d: np.ndarray, w: np.ndarray) -> CsrGraph:
    import scipy.sparse as sp

    n = len(ids)
    mat = sp.csr_matrix((w, (s, d)), shape=(n, n))  # sums duplicate pairs
    mat.sum_duplicates()
    mat.sort_indices()
    row_sum = np.asarray(mat.sum(axis=1)).ravel()
    scale = np.divide(1.0, row_sum, out=np.zeros(n), where=row_sum > 0)
    probs = mat.data * np.repeat(scale, np.diff(mat.indptr))
    return CsrGraph(ids=ids, indptr=mat.indptr.astype(np.int64), indices=mat.indices.astype(np.int64),
                    probs=probs.astype(np.float64))


def graph_from_arrow(edges: "pa.Table", *, use_weights: bool = True, extra_nodes: Iterable[str] = ()) -> CsrGraph:
    """From an edges table with string ``src``, ``dst`` and optional ``weight`` columns; the same graph as
    :func:`build_graph` on the same edges.

    Ids are numbered with Arrow's hash table and sort (C++ on the string buffers) instead of ``np.unique``
    over Python objects: at 2.4M nodes / 20.8M edges the whole conversion took 15.3 s instead of 78.9 s
    (``bench/bench_graph_load.py``). UTF-8 byte order is code point order, so the ids sort exactly as
    Python sorts them."""
    import pyarrow as pa
    import pyarrow.compute as pc

    missing = {"src", "dst"} - set(edges.column_names)
    if missing:
        raise ValueError(f"edges table needs string columns src and dst; it has {edges.column_names}")
    src, dst = edges.column("src"), edges.column("dst")
    if not (pa.types.is_string(src.type) or pa.types.is_large_string(src.type)):
        raise ValueError(f"edges src/dst must be strings, got {src.type}")
    if dst.type != src.type:  # e.g. string and large_string from different writers
        dst = dst.cast(src.type)
    if src.null_count or dst.null_count:
        raise ValueError("edges table has null src/dst ids; clean the graph first (g2i build-graph)")
    weight = None
    if use_weights and "weight" in edges.column_names:
        weight = np.asarray(edges.column("weight").to_numpy(zero_copy_only=False), dtype=np.float64)
        _check_weights(weight)
    extra = pa.chunked_array([pa.array(list(extra_nodes), src.type)])
    if extra.null_count:
        extra = extra.filter(pc.is_valid(extra))
    every = pa.chunked_array(src.chunks + dst.chunks + extra.chunks, src.type)
    unique = pc.unique(every)
    ids = unique.take(pc.sort_indices(unique))
    s = pc.index_in(src, value_set=ids).to_numpy().astype(np.int64)
    d = pc.index_in(dst, value_set=ids).to_numpy().astype(np.int64)
    w = np.ones(len(s)) if weight is None else weight
    return _csr(np.asarray(ids.to_pylist(), dtype=object), s, d, w)


def powerlaw_graph(num_nodes: int, avg_degree: float = 10.0, seed: int = 0) -> CsrGraph:
    """Synthetic directed graph with heavy-tailed out- and in-degrees (about ``avg_degree`` edges per
    node, no self-loops, a few percent dangling nodes). Ids are ``n000000``-style strings."""
    rng = np.random.default_rng(seed)
    out_deg = np.floor(avg_degree * 0.5 * (1 + rng.pareto(2.0, num_nodes))).astype(np.int64)
    out_deg[rng.random(num_nodes) < 0.03] = 0  # some dangling nodes, as real dumps have
    out_deg = np.minimum(out_deg, max(num_nodes - 1, 0))
    popularity = 1.0 + rng.pareto(1.2, num_nodes)
    cdf = np.cumsum(popularity) / popularity.sum()
    s = np.repeat(np.arange(num_nodes, dtype=np.int64), out_deg)
    d = np.searchsorted(cdf, rng.random(len(s)), side="right").clip(0, num_nodes - 1).astype(np.int64)
    local = rng.random(len(s)) < 0.5  # half the edges stay near the source: community structure
    d[local] = (s[local] + rng.integers(1, 50, local.sum())) % max(num_nodes, 1)
    keep = s != d
    width = len(str(max(num_nodes - 1, 0)))
    ids = np.array([f"n{i:0{width}d}" for i in range(num_nodes)], dtype=object)
    return _csr(ids, s[keep], d[keep], np.ones(int(keep.sum())))


def edges_table(graph: CsrGraph) -> "pa.Table":
    """The graph back as an edges table (src, dst, weight = transition probability)."""
    import pyarrow as pa

    src_idx = np.repeat(np.arange(graph.num_nodes), graph.out_degree)
    return pa.table({"src": pa.array(graph.ids[src_idx].tolist(), pa.string()),
                     "dst": pa.array(graph.ids[graph.indices].tolist(), pa.string()),
                     "weight": pa.array(graph.probs, pa.float64())})
