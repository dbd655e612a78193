"""Top-K candidate lists as dense arrays, and their ``ppr_candidates`` table form."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from g2i_core.ppr.graph import CsrGraph

if TYPE_CHECKING:
    import pyarrow as pa

CANDIDATE_COLUMNS = ("node_id", "rank", "neighbour_id", "ppr_score")


@dataclass
class Candidates:
    sources: np.ndarray  # (m,) int64 node index of each source
    neighbours: np.ndarray  # (m, K) int64 node index, -1 where a source has fewer than K candidates
    scores: np.ndarray  # (m, K) float64 ppr score, descending along each row
    rows: tuple[np.ndarray, np.ndarray] | None = None  # propagate's (row_idx, row_val) of every node, when kept

    @property
    def top_k(self) -> int:
        return self.neighbours.shape[1]

    def to_arrow(self, graph: CsrGraph, chunk_rows: int = 8_000_000) -> "pa.Table":
        """The ``ppr_candidates`` table: one row per (source, rank) that has a candidate."""
        return candidates_table(graph.id_array, *self.flat(), chunk_rows=chunk_rows)

    def flat(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(source, neighbour, rank, score) of every entry, by source then rank."""
        rows, cols = np.nonzero(self.neighbours >= 0)
        return self.sources[rows], self.neighbours[rows, cols], (cols + 1).astype(np.int32), self.scores[rows, cols]

    def as_dict(self, graph: CsrGraph) -> dict[str, list[str]]:
        """source id -> neighbour ids in rank order (handy in tests and for small graphs)."""
        return {graph.ids[s]: [graph.ids[v] for v in row if v >= 0]
                for s, row in zip(self.sources.tolist(), self.neighbours, strict=False)}


def candidates_table(ids: "pa.Array", source: np.ndarray, neighbour: np.ndarray, rank: np.ndarray,
                     score: np.ndarray, chunk_rows: int = 8_000_000) -> "pa.Table":
    """The ``ppr_candidates`` table of entries given as node indices into ``ids``.

    The id columns are gathered by Arrow from the one string array of node ids, in chunks (a 32-bit-offset
    string chunk holds at most 2 GiB); turning 100M indices into Python strings first would cost minutes and
    several GB at Goodreads size (2.4M sources x 42 candidates)."""
    import pyarrow as pa

    def gather(index: np.ndarray) -> "pa.ChunkedArray":
        return pa.chunked_array([ids.take(pa.array(index[i:i + chunk_rows]))
                                 for i in range(0, len(index), chunk_rows)], pa.string())

    return pa.table({
        "node_id": gather(source),
        "rank": pa.array(np.asarray(rank, np.int32), pa.int32()),
        "neighbour_id": gather(neighbour),
        "ppr_score": pa.array(np.asarray(score, np.float64), pa.float64()),
    })


def top_k_of_rows(matrix: np.ndarray, sources: np.ndarray, k: int) -> Candidates:
    """Top-k of each dense score row, excluding the row's own source and zero scores;
    ties broken by node index (= node id order)."""
    m, n = matrix.shape
    neighbours = np.full((m, k), -1, np.int64)
    scores = np.zeros((m, k))
    for i, s in enumerate(sources.tolist()):
        row = matrix[i].copy()
        row[s] = 0.0
        nz = np.flatnonzero(row > 0)
        if len(nz) > 4 * k:  # cheap pre-selection before the exact, tie-stable sort
            cut = np.partition(row[nz], len(nz) - k)[len(nz) - k]
            nz = nz[row[nz] >= cut]
        order = nz[np.lexsort((nz, -row[nz]))][:k]
        neighbours[i, : len(order)] = order
        scores[i, : len(order)] = row[order]
    return Candidates(sources=sources.astype(np.int64), neighbours=neighbours, scores=scores)


def precision_at_k(approx: Candidates, exact_rows: np.ndarray, k: int = 10, tie_tol: float = 1e-12) -> float:
    """Mean over sources of |approx top-k ∩ exact top-k| / min(k, #reachable), tie-aware.

    ``exact_rows[i]`` is the exact ppr vector of ``approx.sources[i]``. A returned node counts as
    correct when its exact score is at least the k-th best exact score (minus ``tie_tol``), so a
    method is not penalised for picking a different member of a tied group."""
    precisions = []
    for i, s in enumerate(approx.sources.tolist()):
        row = exact_rows[i].copy()
        row[s] = 0.0
        reachable = int((row > 0).sum())
        want = min(k, reachable)
        if want == 0:
            continue
        kth = np.sort(row)[::-1][want - 1]
        got = approx.neighbours[i, :k]
        got = got[got >= 0]
        precisions.append(float((row[got] >= kth - tie_tol).sum()) / want)
    return float(np.mean(precisions)) if precisions else 1.0
