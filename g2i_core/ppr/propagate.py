"""All-node fast path: top-K propagation, then a short push per source.

Computing every node's top-K by an independent push per source repeats the same far-away work
millions of times. This method shares it instead, in two phases:

1. **Propagation.** Every node keeps a sparse row with its K' largest entries of the unnormalised
   PPR vector ``Phi_s = alpha e_s (I - (1 - alpha) P)^-1`` (dangling rows of P empty). The rows
   satisfy ``Phi_s = alpha e_s + (1 - alpha) sum_v P[s, v] Phi_v``; block Gauss-Seidel sweeps apply
   that identity to all nodes, truncating each row back to K'. Cost per sweep ~ edges x K'.
2. **Refinement.** For each source, a forward push with threshold ``refine_eps`` computes the near
   part exactly (``p``) and leaves residuals ``r``; the push invariant
   ``Phi_s = p + sum_v r(v) Phi_v`` resolves the residuals with the propagated rows. Truncation
   errors of those rows are multiplied by the small leftover residual, so near-ties among a
   source's direct neighbours are decided by the exact near part.

Scores are ``Phi_s / |Phi_s|_1``: with dangling nodes restarting to the source (this project's
semantics) the true PPR vector is proportional to ``Phi_s``, and ``|Phi_s|_1`` solves the scalar
system ``m = alpha + (1 - alpha) P m`` exactly. Rankings are therefore those of the push method.

Knobs (accuracy vs speed, see docs/neighbours.md for measurements): ``row_k`` (K'), ``sweeps``,
``refine_eps``. Memory: n x K' x (4 + 4) bytes for the rows (float32 values, int32 indices) plus
per-thread O(n) scratch.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

import numpy as np

from g2i_core.ppr.candidates import Candidates
from g2i_core.ppr.graph import CsrGraph

log = logging.getLogger(__name__)
DEFAULT_ROW_K = 128
DEFAULT_SWEEPS = 8
DEFAULT_REFINE_EPS = 1e-3


@dataclass(frozen=True)
class WarmStart:
    """Rows to continue from instead of the cold start (a refresh: the previous version's rows, mapped
    onto this graph), and the nodes to sweep (those near a change); ``sweeps`` of them."""
    row_idx: np.ndarray  # (n, K') int32, -1 padded, sorted descending by value
    row_val: np.ndarray  # (n, K') float32
    nodes: np.ndarray  # int64 node indices to sweep
    sweeps: int


def cold_rows(num_nodes: int, row_k: int, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """The rows before any sweep: alpha on the node itself."""
    row_idx = np.full((num_nodes, row_k), -1, np.int32)
    row_val = np.zeros((num_nodes, row_k), np.float32)
    row_idx[:, 0] = np.arange(num_nodes, dtype=np.int32)
    row_val[:, 0] = alpha
    return row_idx, row_val


def propagate_rows(graph: CsrGraph, *, alpha: float = 0.15, row_k: int = DEFAULT_ROW_K, sweeps: int = DEFAULT_SWEEPS,
                   threads: int | None = None, block: int = 8192, warm: WarmStart | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Phase 1: (n, row_k) int32 indices (-1 padded) and float32 values of every node's row (``warm``: its
    rows updated in place, only its nodes swept, its number of sweeps)."""
    import numba

    from g2i_core.ppr._propagate_kernels import propagate_sweep

    n = graph.num_nodes
    if n >= 2**31 - 1:
        raise ValueError(f"propagate stores int32 node indices; {n} nodes is too many (use spark-push)")
    threads = threads or numba.config.NUMBA_NUM_THREADS or os.cpu_count() or 1
    if warm is None:
        row_idx, row_val = cold_rows(n, row_k, alpha)
        nodes = np.arange(n, dtype=np.int64)
    else:
        if warm.row_idx.shape != (n, row_k):
            raise ValueError(f"warm-start rows are {warm.row_idx.shape}, this graph needs {(n, row_k)}")
        row_idx, row_val, nodes, sweeps = warm.row_idx, warm.row_val, np.asarray(warm.nodes, np.int64), warm.sweeps
    acc = np.zeros((threads, n))
    seen = np.zeros((threads, n), np.bool_)
    started = time.monotonic()
    for sweep in range(sweeps):
        gained = propagate_sweep(graph.indptr, graph.indices, graph.probs, float(alpha), row_idx, row_val,
                                 int(block), acc, seen, int(threads), nodes)
        log.info("propagate: sweep %d/%d over %d nodes, mean row mass gained %.2e, %.1fs", sweep + 1, sweeps,
                 len(nodes), gained / max(len(nodes), 1), time.monotonic() - started)
    return row_idx, row_val


def propagate_candidates(graph: CsrGraph, sources: np.ndarray | None = None, *, alpha: float = 0.15,
                         top_k: int = 50, row_k: int = DEFAULT_ROW_K, sweeps: int = DEFAULT_SWEEPS,
                         refine_eps: float = DEFAULT_REFINE_EPS, threads: int | None = None,
                         block: int = 20_000, warm: WarmStart | None = None, keep_rows: bool = False) -> Candidates:
    """Top-K candidates of every source (all nodes when None) by propagation + refinement. ``warm``:
    continue from earlier rows (see ``propagate_rows``); ``keep_rows``: return the rows in
    ``Candidates.rows`` (what the next refresh warm-starts from)."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha (restart probability) must be in (0, 1), got {alpha}")
    if row_k < 1 or sweeps < 0:
        raise ValueError(f"row_k must be >= 1 and sweeps >= 0, got {row_k} and {sweeps}")
    if not 0 < refine_eps < 1:
        raise ValueError(f"refine_eps (push threshold) must be in (0, 1), got {refine_eps}; try 1e-3")
    import numba

    from g2i_core.ppr._propagate_kernels import refine_top_k, restart_mass, sort_rows

    sources = np.arange(graph.num_nodes, dtype=np.int64) if sources is None else np.asarray(sources, np.int64)
    if graph.num_nodes == 0 or len(sources) == 0:
        return Candidates(sources, np.full((len(sources), top_k), -1, np.int64), np.zeros((len(sources), top_k)))
    threads = threads or numba.config.NUMBA_NUM_THREADS or os.cpu_count() or 1
    t0 = time.monotonic()
    row_idx, row_val = propagate_rows(graph, alpha=alpha, row_k=row_k, sweeps=sweeps, threads=threads, warm=warm)
    sort_rows(row_idx, row_val)
    log.info("propagate: %d rows x %d kept, %d sweeps (%s) in %.1fs", graph.num_nodes, row_k,
             warm.sweeps if warm else sweeps, f"warm, {len(warm.nodes)} nodes" if warm else "cold",
             time.monotonic() - t0)
    # |Phi_s|_1 to (1 - alpha)^iterations relative accuracy (1e-12 at alpha 0.15)
    iterations = int(np.ceil(np.log(1e-12) / np.log(1 - alpha)))
    mass = restart_mass(graph.indptr, graph.indices, graph.probs, float(alpha), iterations)
    idx_parts, val_parts = [], []
    started = time.monotonic()
    for start in range(0, len(sources), block):
        batch = sources[start:start + block]
        out_idx, out_val = refine_top_k(batch, graph.indptr, graph.indices, graph.probs, float(alpha),
                                        float(refine_eps), int(row_k), row_idx, row_val, mass, int(top_k),
                                        int(min(len(batch), 4 * threads)))
        idx_parts.append(out_idx)
        val_parts.append(out_val)
        if len(sources) > block:
            log.info("propagate: refined %d/%d sources, %.1fs", start + len(batch), len(sources),
                     time.monotonic() - started)
    return Candidates(sources, np.concatenate(idx_parts), np.concatenate(val_parts),
                      rows=(row_idx, row_val) if keep_rows else None)
