"""numba kernels of top-K propagation (see ``g2i_core/ppr/propagate.py``); imported only when that
method runs, with ``cache=True`` so compiled code is reused across processes."""

import numba
import numpy as np

from g2i_core.ppr._push_kernels import push_one, write_top_k


@numba.njit(cache=True, nogil=True)
def _top_rows(acc, touched, n_touched, keep, out_idx, out_val, vals):
    """Write the ``keep`` largest acc entries over ``touched`` into one row, unordered (sweeps only
    need the set; ties at the cut go to the earliest touched); resets acc for the touched entries.
    ``vals`` is scratch."""
    for t in range(n_touched):
        vals[t] = acc[touched[t]]
    j = 0
    if n_touched <= keep:
        for t in range(n_touched):
            out_idx[j] = touched[t]
            out_val[j] = vals[t]
            j += 1
    else:
        kth = np.partition(vals[:n_touched], n_touched - keep)[n_touched - keep]
        for t in range(n_touched):  # partition reordered vals: read the values back from acc
            v = acc[touched[t]]
            if v > kth:
                out_idx[j] = touched[t]
                out_val[j] = v
                j += 1
        for t in range(n_touched):
            if j >= keep:
                break
            if acc[touched[t]] == kth:
                out_idx[j] = touched[t]
                out_val[j] = kth
                j += 1
    for t in range(n_touched):
        acc[touched[t]] = 0.0
    for t in range(j, out_idx.shape[0]):
        out_idx[t] = -1
        out_val[t] = 0.0


@numba.njit(parallel=True, cache=True)
def propagate_sweep(indptr, indices, probs, alpha, row_idx, row_val, block, acc, seen, n_chunks, nodes):
    """One block Gauss-Seidel sweep of Phi_s = alpha e_s + (1 - alpha) sum_v P[s, v] Phi_v over the
    ``nodes`` (int64 indices, in that order; every node for a full sweep, the ones near a change when a
    refresh warm-starts from the previous rows).

    Nodes go in blocks of ``block``; the rows of a block are computed in parallel from the current
    rows (earlier blocks already updated, which converges faster than Jacobi), then written back
    together, so no thread reads a row while another writes it. Each row keeps its top K' entries.
    ``acc``/``seen`` (n_chunks x n) are per-thread scratch, all zero/False on entry and on return.
    Returns the total mass the kept rows gained in this sweep (falls towards 0 as it converges)."""
    n = nodes.shape[0]
    keep = row_idx.shape[1]
    gained = 0.0
    new_idx = np.empty((block, keep), row_idx.dtype)
    new_val = np.empty((block, keep), row_val.dtype)
    for b0 in range(0, n, block):
        b1 = min(n, b0 + block)
        chunk = (b1 - b0 + n_chunks - 1) // n_chunks
        for c in numba.prange(n_chunks):
            a = acc[c]
            sn = seen[c]
            lo = b0 + c * chunk
            hi = min(b1, lo + chunk)
            if lo >= hi:
                continue
            cap = 1
            for t in range(lo, hi):
                s = nodes[t]
                cap = max(cap, 1 + (indptr[s + 1] - indptr[s]) * keep)
            touched = np.empty(cap, np.int64)
            vals = np.empty(cap)
            for t0 in range(lo, hi):
                s = nodes[t0]
                a[s] = alpha
                sn[s] = True
                touched[0] = s
                nt = 1
                for e in range(indptr[s], indptr[s + 1]):
                    v = indices[e]
                    w = (1.0 - alpha) * probs[e]
                    for j in range(keep):
                        u = row_idx[v, j]
                        if u < 0:
                            break
                        a[u] += w * row_val[v, j]
                        if not sn[u]:
                            sn[u] = True
                            touched[nt] = u
                            nt += 1
                for t in range(nt):
                    sn[touched[t]] = False
                _top_rows(a, touched, nt, keep, new_idx[t0 - b0], new_val[t0 - b0], vals)
        for t0 in range(b0, b1):
            s = nodes[t0]
            old = 0.0
            new = 0.0
            for j in range(keep):
                old += row_val[s, j]
                new += new_val[t0 - b0, j]
                row_idx[s, j] = new_idx[t0 - b0, j]
                row_val[s, j] = new_val[t0 - b0, j]
            gained += new - old
    return gained


@numba.njit(parallel=True, cache=True)
def place_rows(src_idx, src_val, src_at, old_to_new, dst_idx, dst_val):
    """Row i of ``src`` (rows of another graph) becomes row ``src_at[i]`` of ``dst`` (skipped when -1),
    every entry's node mapped through ``old_to_new``; entries whose node left the graph (-1) are dropped
    and the rest keep their order, so rows stay sorted and -1-padded."""
    width = dst_idx.shape[1]
    for i in numba.prange(src_idx.shape[0]):
        p = src_at[i]
        if p < 0:
            continue
        j = 0
        for t in range(src_idx.shape[1]):
            u = src_idx[i, t]
            if u < 0:
                break
            v = old_to_new[u]
            if v >= 0 and j < width:
                dst_idx[p, j] = v
                dst_val[p, j] = src_val[i, t]
                j += 1
        for t in range(j, width):
            dst_idx[p, t] = -1
            dst_val[p, t] = 0.0


@numba.njit(parallel=True, cache=True)
def restart_mass(indptr, indices, probs, alpha, iterations):
    """|Phi_s|_1 for every s: m = alpha + (1 - alpha) P m (exact up to (1 - alpha)^iterations).
    Jacobi iterations, parallel over nodes (each node's sum in edge order: the same result on any
    thread count); ~30 s on one thread at 2.4M nodes / 20.8M edges."""
    n = indptr.shape[0] - 1
    m = np.full(n, alpha)
    nxt = np.empty(n)
    for _ in range(iterations):
        for s in numba.prange(n):
            t = 0.0
            for e in range(indptr[s], indptr[s + 1]):
                t += probs[e] * m[indices[e]]
            nxt[s] = alpha + (1.0 - alpha) * t
        m, nxt = nxt, m
    return m


@numba.njit(parallel=True, cache=True)
def refine_top_k(sources, indptr, indices, probs, alpha, eps, merge_k, row_idx, row_val, mass, k, n_chunks):
    """Final rows by a short forward push from each source, its leftover residual r(v) resolved
    with the propagated rows: Phi_s = p + sum_v r(v) Phi_v (the push invariant), top-k without s.
    Rows are sorted descending and only their first ``merge_k`` entries are merged (the estimate
    stays a lower bound)."""
    n = indptr.shape[0] - 1
    m = sources.shape[0]
    out_idx = np.full((m, k), -1, np.int64)
    out_val = np.zeros((m, k))
    chunk = (m + n_chunks - 1) // n_chunks
    for c in numba.prange(n_chunks):
        p = np.zeros(n)
        r = np.zeros(n)
        in_queue = np.zeros(n, np.bool_)
        seen = np.zeros(n, np.bool_)
        queue = np.empty(n, np.int64)
        touched = np.empty(n, np.int64)
        acc = np.zeros(n)
        mark = np.zeros(n, np.bool_)
        hit = np.empty(n, np.int64)
        for i in range(c * chunk, min(m, (c + 1) * chunk)):
            s = sources[i]
            nt = push_one(s, indptr, indices, probs, alpha, eps, p, r, in_queue, seen, queue, touched, False)
            nh = 0
            for t in range(nt):
                v = touched[t]
                if p[v] > 0.0:
                    acc[v] += p[v]
                    if not mark[v]:
                        mark[v] = True
                        hit[nh] = v
                        nh += 1
                rv = r[v]
                if rv > 0.0:
                    for j in range(merge_k):
                        u = row_idx[v, j]
                        if u < 0:
                            break
                        acc[u] += rv * row_val[v, j]
                        if not mark[u]:
                            mark[u] = True
                            hit[nh] = u
                            nh += 1
                p[v] = 0.0
                r[v] = 0.0
                seen[v] = False
                in_queue[v] = False
            # top-k of acc over hit, without s
            cnt = 0
            vals = np.empty(nh)
            cand = np.empty(nh, np.int64)
            for t in range(nh):
                u = hit[t]
                if u != s:
                    cand[cnt] = u
                    vals[cnt] = acc[u]
                    cnt += 1
                acc[u] = 0.0
                mark[u] = False
            write_top_k(cand, vals, cnt, k, out_idx[i], out_val[i])
            for j in range(k):
                out_val[i, j] /= mass[s]
    return out_idx, out_val


@numba.njit(parallel=True, cache=True)
def sort_rows(row_idx, row_val):
    """Sort every row by value, descending (padding -1 entries have value 0 and stay last)."""
    for s in numba.prange(row_idx.shape[0]):
        order = np.argsort(-row_val[s])
        row_idx[s] = row_idx[s][order]
        row_val[s] = row_val[s][order]
