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
    """Compile lazily: numba is imported only when the fast path runs."""
    global _KERNELS
    if _KERNELS is not None:
        return _KERNELS
    import numba

    @numba.njit(cache=True, nogil=True)
    def push_one(s, indptr, indices, probs, alpha, eps, p, r, in_queue, seen, queue, touched):
        """Forward push from source s into the scratch arrays; returns how many nodes it touched."""
        n = indptr.shape[0] - 1
        r[s] = 1.0
        seen[s] = True
        touched[0] = s
        n_touched = 1
        queue[0] = s
        in_queue[s] = True
        head, size = 0, 1
        while size > 0:
            u = queue[head]
            head = head + 1 if head + 1 < n else 0
            size -= 1
            in_queue[u] = False
            deg = indptr[u + 1] - indptr[u]
            ru = r[u]
            if ru < eps * max(deg, 1):
                continue
            r[u] = 0.0
            p[u] += alpha * ru
            mass = (1.0 - alpha) * ru
            if deg == 0:  # dangling: the walk restarts at the source
                lo, hi, targets = 0, 1, True
            else:
                lo, hi, targets = indptr[u], indptr[u + 1], False
            for e in range(lo, hi):
                v = s if targets else indices[e]
                r[v] += mass if targets else mass * probs[e]
                if not seen[v]:
                    seen[v] = True
                    touched[n_touched] = v
                    n_touched += 1
                if not in_queue[v] and r[v] >= eps * max(indptr[v + 1] - indptr[v], 1):
                    tail = head + size
                    queue[tail if tail < n else tail - n] = v
                    in_queue[v] = True
                    size += 1
        return n_touched

    @numba.njit(cache=True, nogil=True)
    def select_top_k(s, p, r, alpha, touched, n_touched, k, out_idx, out_val):
        """Top-k of the estimate over touched nodes except s; ties by node index. Writes one row.

        The estimate adds alpha * r(v): residual mass parked at v stops there at least that often,
        so it stays a lower bound while sharpening the ranking for free."""
        count = 0
        cand = np.empty(n_touched, np.int64)
        vals = np.empty(n_touched)
        for t in range(n_touched):
            v = touched[t]
            est = p[v] + alpha * r[v]
            if v != s and est > 0.0:
                cand[count] = v
                vals[count] = est
                count += 1
        if count > k:  # keep only what can reach the top k before the exact sort
            kth = np.partition(vals[:count], count - k)[count - k]
            kept = 0
            for t in range(count):
                if vals[t] >= kth:
                    cand[kept] = cand[t]
                    vals[kept] = vals[t]
                    kept += 1
            count = kept
        order = np.argsort(cand[:count])
        cand = cand[:count][order]
        neg = -vals[:count][order]
        order = np.argsort(neg, kind="mergesort")  # stable: equal scores keep node index order
        for j in range(min(k, count)):
            out_idx[j] = cand[order[j]]
            out_val[j] = -neg[order[j]]

    @numba.njit(parallel=True, cache=True)
    def push_many(sources, indptr, indices, probs, alpha, eps, k, n_chunks):
        n = indptr.shape[0] - 1
        m = sources.shape[0]
        out_idx = np.full((m, k), -1, np.int64)
        out_val = np.zeros((m, k))
        work = np.zeros(n_chunks, np.int64)
        chunk = (m + n_chunks - 1) // n_chunks
        for c in numba.prange(n_chunks):
            # one scratch set per chunk, reset sparsely (only touched entries) between sources
            p = np.zeros(n)
            r = np.zeros(n)
            in_queue = np.zeros(n, np.bool_)
            seen = np.zeros(n, np.bool_)
            queue = np.empty(n, np.int64)
            touched = np.empty(n, np.int64)
            for j in range(c * chunk, min(m, (c + 1) * chunk)):
                s = sources[j]
                nt = push_one(s, indptr, indices, probs, alpha, eps, p, r, in_queue, seen, queue, touched)
                select_top_k(s, p, r, alpha, touched, nt, k, out_idx[j], out_val[j])
                work[c] += nt
                for t in range(nt):
                    v = touched[t]
                    p[v] = 0.0
                    r[v] = 0.0
                    seen[v] = False
                    in_queue[v] = False
        return out_idx, out_val, work

    _KERNELS = push_many
    return _KERNELS


_KERNELS = None


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
