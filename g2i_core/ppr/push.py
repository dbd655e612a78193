"""Single-machine fast path: forward push (Andersen-Chung-Lang), compiled with numba, parallel over
sources, keeping only the top-K of each source so memory is O(threads * n + sources * K).

Accuracy knob: ``eps``. A node ``u`` is pushed while its residual ``r(u) >= eps * max(outdeg(u), 1)``;
at the end every estimate is a lower bound and the missing mass is the residual left behind
(``sum(r) < eps * m`` in the worst case, far less in practice). Smaller eps: more precise, slower;
work per source is at most ``1 / (alpha * eps)`` pushed edges.
"""

from __future__ import annotations

import logging
import os
import time

import numpy as np

from g2i_core.ppr.candidates import Candidates
from g2i_core.ppr.graph import CsrGraph

log = logging.getLogger(__name__)
DEFAULT_EPS = 1e-6


def _kernels():
    """The compiled kernel; numba is imported only when the fast path runs."""
    from g2i_core.ppr._push_kernels import push_many

    return push_many




def push_candidates(graph: CsrGraph, sources: np.ndarray | None = None, *, alpha: float = 0.15,
                    top_k: int = 50, eps: float = DEFAULT_EPS, threads: int | None = None,
                    block: int = 20_000) -> Candidates:
    """Top-K candidates of every source (all nodes when None) by forward push."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha (restart probability) must be in (0, 1), got {alpha}")
    if not 0 < eps < 1:
        raise ValueError(f"eps (push threshold) must be in (0, 1), got {eps}; try 1e-6")
    import numba

    sources = np.arange(graph.num_nodes, dtype=np.int64) if sources is None else np.asarray(sources, np.int64)
    if graph.num_nodes == 0 or len(sources) == 0:
        return Candidates(sources, np.full((len(sources), top_k), -1, np.int64), np.zeros((len(sources), top_k)))
    push_many = _kernels()
    threads = threads or numba.config.NUMBA_NUM_THREADS or os.cpu_count() or 1
    idx_parts, val_parts = [], []
    started = time.monotonic()
    # blocks of sources give progress lines on long runs; 4 chunks per thread balance skewed work
    for start in range(0, len(sources), block):
        batch = sources[start:start + block]
        out_idx, out_val, _ = push_many(batch, graph.indptr, graph.indices, graph.probs, float(alpha),
                                        float(eps), int(top_k), int(min(len(batch), 4 * threads)))
        idx_parts.append(out_idx)
        val_parts.append(out_val)
        done = start + len(batch)
        if len(sources) > block:
            log.info("push: %d/%d sources, %.1fs", done, len(sources), time.monotonic() - started)
    return Candidates(sources, np.concatenate(idx_parts), np.concatenate(val_parts))
