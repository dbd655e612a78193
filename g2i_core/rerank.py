"""Neighbour selection from PPR candidates and embeddings -> ``neighbours``
(node_id, rank, neighbour_id, ppr_score, semantic_score, score).

Strategies (the paper's ablation):
  semantic_ppr  default. Among the node's PPR candidates, score =
                (1 - ppr_weight) * semantic_score + ppr_weight * ppr_score / max ppr_score of the node.
                ``tune_ppr_weight`` picks ppr_weight on validation nodes without labels (see there).
  ppr           the top-k candidates by PPR score alone (score = ppr_score).
  semantic      the top-k of ALL other nodes by semantic score, ignoring the graph (score = semantic_score;
                ppr_score is filled when the neighbour is also a PPR candidate, else null).
  random        k other nodes drawn uniformly, seeded per node (score = 0).

semantic_score is the cosine between the target's text vector and the neighbour's vector of the
configured kind: ``text`` (default; works with the offline MiniLM), ``image`` (needs a shared text-image
space, i.e. CLIP for both), or ``both`` (mean of the two). A neighbour without that vector gets
semantic_score null and is ranked on its PPR part alone. Ties: higher PPR, then neighbour id.
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from g2i_core.arrow_lookup import positions_in

if TYPE_CHECKING:
    import pyarrow as pa

    from g2i_core.storage import Storage

log = logging.getLogger(__name__)
TABLE = "neighbours"
STRATEGIES = ("semantic_ppr", "ppr", "semantic", "random")
NEIGHBOUR_KINDS = ("text", "image", "both")
PPR_WEIGHT_GRID = tuple(i / 10 for i in range(11))


@dataclass(frozen=True)
class RerankConfig:
    strategy: str = "semantic_ppr"
    k: int = 5
    # 0.5: on the 500-node sample, neighbour community purity is 0.75 / 0.82 / 0.88 / 0.89 / 0.85 at
    # w = 0 / 0.2 / 0.5 / 0.6 / 1 (docs/neighbours.md, "Choosing the PPR weight")
    ppr_weight: float = 0.5
    neighbour_kind: str = "text"
    seed: int = 0
    tune_ppr_weight: bool = False  # choose ppr_weight on validation nodes (``tune_ppr_weight``)
    tune_nodes: int = 2000

    def check(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        if self.neighbour_kind not in NEIGHBOUR_KINDS:
            raise ValueError(f"neighbour_kind must be one of {NEIGHBOUR_KINDS}, got {self.neighbour_kind!r}")
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")
        if not 0 <= self.ppr_weight <= 1:
            raise ValueError(f"ppr_weight must be in [0, 1], got {self.ppr_weight}")
        if self.tune_nodes < 1:
            raise ValueError(f"tune_nodes must be >= 1, got {self.tune_nodes}")


class VectorIndex:
    """Unit vectors by node id; ``cos(a_ids, b_ids)`` with NaN where a vector is missing."""

    def __init__(self, ids: list[str], vectors: np.ndarray):
        self.pos = {n: i for i, n in enumerate(ids)}
        self.ids = list(ids)
        self.vectors = np.asarray(vectors, np.float32)

    @property
    def dim(self) -> int:
        return self.vectors.shape[1] if self.vectors.ndim == 2 and len(self.vectors) else 0

    def positions(self, node_ids: "pa.Array") -> np.ndarray:
        """Row of each id's vector, -1 where it has none (vectorised ``pos`` lookup)."""
        import pyarrow as pa

        if getattr(self, "_id_array", None) is None:
            self._id_array = pa.array(self.ids, pa.string())
        return positions_in(node_ids.cast(pa.string()), self._id_array)

    def get(self, node_id: str) -> np.ndarray | None:
        i = self.pos.get(node_id)
        return None if i is None else self.vectors[i]


def select_neighbours(candidates: "pa.Table", text: VectorIndex, others: dict[str, VectorIndex],
                      config: RerankConfig) -> "pa.Table":
    """Neighbours for every node of ``candidates`` (semantic_ppr/ppr) or of ``text`` (semantic/random).

    ``others`` maps neighbour kind ('text', 'image') to its vectors; see the module docstring."""
    import pyarrow as pa

    config.check()
    _check_spaces(text, others, config)
    if config.strategy in ("semantic_ppr", "ppr"):
        return _rank_all_candidates(candidates, text, others, config)
    by_node: dict[str, list[tuple[str, float]]] = {}
    columns = (candidates.column(c).to_pylist() for c in ("node_id", "neighbour_id", "ppr_score"))
    for nid, nbr, score in zip(*columns, strict=False):
        by_node.setdefault(nid, []).append((nbr, score))
    out: dict[str, list] = {c: [] for c in ("node_id", "rank", "neighbour_id", "ppr_score", "semantic_score", "score")}
    if config.strategy == "semantic":
        chosen = _semantic_all(text, others, by_node, config)
    else:
        chosen = _random(text.ids or sorted(by_node), text, others, by_node, config)
    for nid, picks in chosen.items():
        for rank, (nbr, ppr, sem, score) in enumerate(picks, start=1):
            for col, val in zip(out, (nid, rank, nbr, ppr, sem, score), strict=False):
                out[col].append(val)
    return pa.table({"node_id": pa.array(out["node_id"], pa.string()), "rank": pa.array(out["rank"], pa.int32()),
                     "neighbour_id": pa.array(out["neighbour_id"], pa.string()),
                     **{c: pa.array(out[c], pa.float64()) for c in ("ppr_score", "semantic_score", "score")}})


def _sorted_codes(column: "pa.ChunkedArray | pa.Array") -> tuple["pa.Array", np.ndarray]:
    """(distinct values in sorted order, each row's index into them): string ids as integers whose
    order is the ids' order, so sorting and tie-breaking run on numpy ints."""
    import pyarrow as pa
    import pyarrow.compute as pc

    column = column if isinstance(column, pa.ChunkedArray) else pa.chunked_array([column])
    if not pa.types.is_dictionary(column.type):  # read as strings: encode (one dictionary for all chunks)
        column = pc.dictionary_encode(column)
    column = column.unify_dictionaries()  # read dictionary-encoded: one dictionary per file until here
    if column.num_chunks == 0:
        return pa.array([], pa.string()), np.zeros(0, np.int64)
    dictionary = column.chunk(0).dictionary
    order = pc.sort_indices(dictionary).to_numpy()
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order))
    indices = np.concatenate([c.indices.to_numpy(zero_copy_only=False) for c in column.chunks])
    return dictionary.take(pa.array(order)), rank[indices]


def _rank_all_candidates(candidates: "pa.Table", text: VectorIndex, others: dict[str, VectorIndex],
                         config: RerankConfig) -> "pa.Table":
    """semantic_ppr / ppr for every node at once: rows grouped by node (already so when the candidates are
    sorted, as ``ppr`` publishes them), then one numba pass per node group computes the dot products in
    place and keeps the top k. Same result as scoring each node's candidates one by one:
    score = (1 - w) * (semantic or 0) + w * ppr / (node's max ppr or 1) (ppr: score = ppr),
    the node itself skipped, ties by higher PPR then neighbour id, the top k kept, rows by node id."""
    import pyarrow as pa

    from g2i_core._rerank_kernels import rank_groups

    nodes, node_code = _sorted_codes(candidates.column("node_id"))
    nbrs, nbr_code = _sorted_codes(candidates.column("neighbour_id"))
    ppr = candidates.column("ppr_score").to_numpy().astype(np.float64)
    if len(node_code) > 1 and not np.all(node_code[1:] >= node_code[:-1]):
        order = np.argsort(node_code, kind="stable")  # stable: equal rows keep their order
        node_code, nbr_code, ppr = node_code[order], nbr_code[order], ppr[order]
    starts = np.flatnonzero(np.r_[True, node_code[1:] != node_code[:-1]]) if len(node_code) else np.zeros(0, np.int64)
    group_node = node_code[starts]
    starts = np.r_[starts, len(node_code)].astype(np.int64)
    self_code = np.full(len(nodes), -1, np.int64)  # the node's own code among neighbour ids, to skip self rows
    both = positions_in(nodes, nbrs)
    self_code[both >= 0] = both[both >= 0]
    kinds = [k for k in (("text", "image") if config.neighbour_kind == "both" else (config.neighbour_kind,))
             if k in others]
    empty_vectors, no_pos = np.zeros((1, max(text.dim, 1)), np.float32), np.full(len(nbrs), -1, np.int64)
    b = [(np.ascontiguousarray(others[k].vectors if others[k].dim else empty_vectors), others[k].positions(nbrs))
         for k in kinds] + [(empty_vectors, no_pos)] * (2 - len(kinds))
    a = np.ascontiguousarray(text.vectors if text.dim else empty_vectors)
    out_row = np.full((len(group_node), config.k), -1, np.int64)
    out_sem, out_score = np.zeros(out_row.shape), np.zeros(out_row.shape)
    rank_groups(starts, nbr_code, ppr, self_code[group_node], text.positions(nodes)[group_node], a, b[0][0],
                b[0][1], b[1][0], b[1][1], len(kinds), float(config.ppr_weight), config.strategy == "ppr",
                out_row, out_sem, out_score)
    g, col = np.nonzero(out_row >= 0)
    rows = out_row[g, col]
    sem = out_sem[g, col]
    return pa.table({
        "node_id": nodes.take(pa.array(group_node[g])).cast(pa.string()),
        "rank": pa.array((col + 1).astype(np.int32), pa.int32()),
        "neighbour_id": nbrs.take(pa.array(nbr_code[rows])).cast(pa.string()),
        "ppr_score": pa.array(ppr[rows], pa.float64()),
        "semantic_score": pa.array(sem, pa.float64(), mask=np.isnan(sem)),
        "score": pa.array(out_score[g, col], pa.float64()),
    })


def _semantic(target: str, nbr: str, text: VectorIndex, others: dict[str, VectorIndex], kind: str) -> float | None:
    t = text.get(target)
    if t is None:
        return None
    sims = []
    for k in (("text", "image") if kind == "both" else (kind,)):
        v = others[k].get(nbr) if k in others else None
        if v is not None:
            sims.append(float(np.dot(t, v)))
    return float(np.mean(sims)) if sims else None


def _semantic_all(text, others, by_node, config, chunk: int = 2048):
    """Exact top-k by cosine over all nodes, in chunks of targets (memory chunk x n)."""
    kinds = ("text", "image") if config.neighbour_kind == "both" else (config.neighbour_kind,)
    pool = sorted(set().union(*(others[k].ids for k in kinds if k in others)))
    sims_by_kind = [_aligned(others[k], pool) for k in kinds if k in others]
    pool_pos = {n: j for j, n in enumerate(pool)}
    chosen = {}
    for start in range(0, len(text.ids), chunk):
        ids = text.ids[start:start + chunk]
        t = text.vectors[start:start + chunk]  # (c, d)
        total = np.zeros((len(ids), len(pool)))
        count = np.zeros((len(ids), len(pool)))
        for vecs, present in sims_by_kind:
            total += np.where(present, t @ vecs.T, 0.0)
            count += present
        sims = np.where(count > 0, total / np.maximum(count, 1), -np.inf)
        for i, nid in enumerate(ids):
            row = sims[i]
            if nid in pool_pos:
                row[pool_pos[nid]] = -np.inf  # never one's own neighbour
            near = np.argpartition(-row, min(config.k, len(row) - 1))[: config.k + 1] if len(row) else row
            near = near[np.isfinite(row[near])]
            top = near[np.lexsort((near, -row[near]))][: config.k]
            ppr = dict(by_node.get(nid, []))
            chosen[nid] = [(pool[j], ppr.get(pool[j]), float(row[j]), float(row[j])) for j in top]
    return chosen


def _aligned(index: VectorIndex, pool: list[str]) -> tuple[np.ndarray, np.ndarray]:
    vecs = np.zeros((len(pool), index.dim), np.float32)
    present = np.zeros(len(pool), bool)
    for j, nid in enumerate(pool):
        v = index.get(nid)
        if v is not None:
            vecs[j], present[j] = v, True
    return vecs, present[None, :]


def _random(node_ids, text, others, by_node, config):
    ids = sorted(node_ids)
    chosen = {}
    for nid in ids:
        rng = np.random.default_rng([config.seed, zlib.crc32(nid.encode())])  # stable per node, any order
        others_ids = [x for x in ids if x != nid] if len(ids) < 10_000 else None
        if others_ids is not None:
            picks = [others_ids[j] for j in rng.choice(len(others_ids), min(config.k, len(others_ids)), replace=False)]
        else:
            picks = []
            while len(picks) < config.k:
                cand = ids[int(rng.integers(len(ids)))]
                if cand != nid and cand not in picks:
                    picks.append(cand)
        ppr = dict(by_node.get(nid, []))
        chosen[nid] = [(p, ppr.get(p), _semantic(nid, p, text, others, config.neighbour_kind), 0.0) for p in picks]
    return chosen


def validation_nodes(ids: list[str], limit: int, seed: int = 0) -> list[str]:
    """A stable subsample of ``ids``: the ``limit`` ids with the smallest crc32 of ``seed:id``."""
    return sorted(ids, key=lambda n: (zlib.crc32(f"{seed}:{n}".encode()), n))[:limit]


def tune_ppr_weight(candidates: "pa.Table", text: VectorIndex, others: dict[str, VectorIndex], images: VectorIndex,
                    nodes: list[str], config: RerankConfig,
                    grid: tuple[float, ...] = PPR_WEIGHT_GRID) -> tuple[float, dict[float, float]]:
    """The semantic-PPR weight whose neighbours look most like the node itself, and the whole curve.

    Needs no labels: for each weight of ``grid`` the neighbours of the validation ``nodes`` are selected
    and scored by the mean cosine between a node's image vector and its neighbours' image vectors (a
    neighbour is there to show what the node looks like). Only nodes with an image vector count. Ties
    go to the smaller weight. On the 500-node sample this criterion (colorhist-v1 vectors) and neighbour
    community purity peak at the same weight (docs/neighbours.md)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    nodes = [n for n in nodes if images.get(n) is not None]
    if not nodes:
        raise ValueError("no validation node has an image vector: run `g2i embed` with an image encoder, "
                         "or pass a fixed --ppr-weight")
    sub = candidates.filter(pc.is_in(candidates["node_id"], value_set=pa.array(nodes, pa.string())))
    curve = {}
    for w in grid:
        picked = select_neighbours(sub, text, others, replace(config, strategy="semantic_ppr", ppr_weight=w))
        sims = [float(np.dot(images.get(a), images.get(b)))
                for a, b in zip(picked["node_id"].to_pylist(), picked["neighbour_id"].to_pylist(), strict=True)
                if images.get(b) is not None]
        curve[w] = float(np.mean(sims)) if sims else float("nan")
    scored = [w for w in grid if np.isfinite(curve[w])]
    if not scored:
        raise ValueError("no validation node has a neighbour with an image vector; pass a fixed --ppr-weight")
    best = max(scored, key=lambda w: (curve[w], -w))
    return best, curve


def _check_spaces(text: VectorIndex, others: dict[str, VectorIndex], config: RerankConfig) -> None:
    kinds = ("text", "image") if config.neighbour_kind == "both" else (config.neighbour_kind,)
    for k in kinds:
        other = others.get(k)
        if other is None or not other.ids:
            if config.strategy in ("semantic_ppr", "semantic"):
                raise ValueError(f"no {k} embeddings for neighbours: run `g2i embed` first or use "
                                 f"--neighbour-kind text")
            continue
        if text.dim and other.dim != text.dim:
            raise ValueError(f"target text vectors ({text.dim} dims) and neighbour {k} vectors ({other.dim} dims) "
                             f"are not in one space: text<->image needs CLIP for both (g2i embed --text-encoder "
                             f"clip --image-encoder clip --clip-path DIR), or use --neighbour-kind text")


def rerank_storage(storage: "Storage", config: RerankConfig, run_id: str, candidates_table: str = "ppr_candidates",
                   out_table: str = TABLE) -> dict:
    """Read candidates + embeddings under ``storage``, publish ``out_table``, return its manifest."""
    from g2i_core.embed import load_vectors

    config.check()
    candidates_manifest = storage.manifest(candidates_table)
    # ids dictionary-encoded: 101M rows name 2.4M ids; the vectorised ranker encodes them anyway
    vectorised = config.strategy in ("semantic_ppr", "ppr") and not config.tune_ppr_weight
    candidates = storage.read_table(candidates_table, manifest=candidates_manifest,
                                    dictionary=["node_id", "neighbour_id"] if vectorised else None)
    ids, vecs, text_encoder = load_vectors(storage, "text")
    text = VectorIndex(ids, vecs)
    others = {"text": text}
    images, image_encoder = None, None
    if config.neighbour_kind in ("image", "both") or config.tune_ppr_weight:
        img_ids, img_vecs, image_encoder = load_vectors(storage, "image")
        images = VectorIndex(img_ids, img_vecs)
    if config.neighbour_kind in ("image", "both"):
        others["image"] = images
    extra = {"text_encoder": text_encoder}
    if config.tune_ppr_weight and config.strategy == "semantic_ppr":
        pool = sorted(set(candidates["node_id"].to_pylist()) & set(images.ids))
        val = validation_nodes(pool, config.tune_nodes, config.seed)
        best, curve = tune_ppr_weight(candidates, text, others, images, val, config)
        log.info("ppr_weight %.1f chosen on %d validation nodes (mean neighbour image cosine by weight: %s)",
                 best, len(val), ", ".join(f"{w:.1f}={v:.4f}" for w, v in curve.items()))
        config = replace(config, ppr_weight=best)
        extra["ppr_weight_tuning"] = {"criterion": "mean cosine of node and neighbour image vectors",
                                      "image_encoder": image_encoder, "nodes": len(val),
                                      "curve": {f"{w:.1f}": v for w, v in curve.items()}, "chosen": best}
    table = select_neighbours(candidates, text, others, config)
    extra["candidates_run_id"] = candidates_manifest["run_id"]
    # ordered by the graph version it came from: rerunning an old day never makes its neighbours live
    return storage.publish_table(out_table, table, run_id, extra={"config": asdict(config), **extra},
                                 logical_date=candidates_manifest.get("logical_date"))
