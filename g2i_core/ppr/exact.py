"""Exact PPR by power iteration: the reference every other method is tested against.

Dangling nodes restart to the source. We iterate the *substochastic* walk (dangling mass simply
leaves), ``q = alpha*e_s + (1-alpha) * q @ P0``, and normalise: a walk that jumps back to ``s`` starts
an independent copy of the same walk (renewal), so ``ppr_s = q_s / sum(q_s)`` exactly. Dense in
the number of nodes per batch of sources: for graphs up to ~1M nodes with a few hundred sources.
"""

from __future__ import annotations

import logging

import numpy as np

from g2i_core.ppr.candidates import Candidates, top_k_of_rows
from g2i_core.ppr.graph import CsrGraph

log = logging.getLogger(__name__)


def ppr_rows(graph: CsrGraph, sources: np.ndarray, alpha: float = 0.15, tol: float = 1e-10,
             max_iterations: int = 10_000) -> np.ndarray:
    """(len(sources), n) dense exact PPR vectors; every entry within ``tol`` of the fixed point."""
    _check_alpha(alpha)
    sources = np.asarray(sources, dtype=np.int64)
    n = graph.num_nodes
    if len(sources) == 0 or n == 0:
        return np.zeros((len(sources), n))
    p0_t = graph.transition_matrix().T.tocsr()  # (n, n): z_new = alpha*E + (1-alpha) * P0^T z
    start = np.zeros((n, len(sources)))
    start[sources, np.arange(len(sources))] = alpha
    z = start.copy()
    for iteration in range(1, max_iterations + 1):  # noqa: B007 - logged after the loop
        z_new = start + (1 - alpha) * (p0_t @ z)
        delta = float(np.abs(z_new - z).max())
        z = z_new
        # the remaining change is a geometric tail: delta * (1-alpha)/alpha bounds the error on q,
        # and q's row sum is >= alpha, so this bounds the error of the normalised vector too
        if delta * (1 - alpha) / alpha / alpha < tol:
            break
    else:
        raise RuntimeError(f"power iteration did not reach tol={tol} in {max_iterations} iterations")
    log.debug("exact ppr: %d sources, %d iterations", len(sources), iteration)
    rows = z.T
    return rows / rows.sum(axis=1, keepdims=True)


def exact_candidates(graph: CsrGraph, sources: np.ndarray | None = None, *, alpha: float = 0.15, top_k: int = 50,
                     tol: float = 1e-10, batch_size: int = 256) -> Candidates:
    """Top-K candidates of every source by exact PPR (all nodes when ``sources`` is None)."""
    sources = np.arange(graph.num_nodes) if sources is None else np.asarray(sources, dtype=np.int64)
    parts = []
    for start in range(0, len(sources), batch_size):
        batch = sources[start:start + batch_size]
        parts.append(top_k_of_rows(ppr_rows(graph, batch, alpha, tol), batch, top_k))
    if not parts:
        return Candidates(np.zeros(0, np.int64), np.zeros((0, top_k), np.int64), np.zeros((0, top_k)))
    return Candidates(np.concatenate([p.sources for p in parts]), np.concatenate([p.neighbours for p in parts]),
                      np.concatenate([p.scores for p in parts]))


def _check_alpha(alpha: float) -> None:
    if not 0 < alpha < 1:
        raise ValueError(f"alpha (restart probability) must be in (0, 1), got {alpha}")
