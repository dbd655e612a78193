"""numba kernels of the forward push (imported only when the fast path runs: numba at module level
so that ``cache=True`` keeps the compiled code on disk between processes and Spark workers)."""

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def push_one(s, indptr, indices, probs, alpha, eps, p, r, in_queue, seen, queue, touched, dangling_to_source=True):
    """Forward push from source s into the scratch arrays; returns how many nodes it touched.

    ``dangling_to_source=False`` drops the mass reaching dangling nodes instead (the unnormalised
    walk that top-K propagation combines rows of)."""
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
            if not dangling_to_source:
                continue
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
def write_top_k(cand, vals, count, k, out_idx, out_val):
    """The k largest of ``vals[:count]`` with their ``cand`` into one output row, descending, ties
    by node index (stable sort over index-sorted candidates). Reorders cand/vals in place."""
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
    c2 = cand[:count][order]
    neg = -vals[:count][order]
    order = np.argsort(neg, kind="mergesort")  # stable: equal scores keep node index order
    for j in range(min(k, count)):
        out_idx[j] = c2[order[j]]
        out_val[j] = -neg[order[j]]


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
    write_top_k(cand, vals, count, k, out_idx, out_val)

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
