"""numba kernel of the re-ranker (see ``g2i_core/rerank.py``); imported only when it runs, with
``cache=True`` so compiled code is reused across processes."""

import numba
import numpy as np


@numba.njit(cache=True, nogil=True, inline="always")
def _dot(a, p, b, q):
    """``a[p] . b[q]`` summed in float64, read in place."""
    s = 0.0
    for j in range(a.shape[1]):
        s += np.float64(a[p, j]) * np.float64(b[q, j])
    return s


@numba.njit(parallel=True, cache=True, nogil=True)
def rank_groups(starts, nbr_code, ppr, self_code, target_pos, a, b1, b1_pos, b2, b2_pos, n_kinds, weight, by_ppr,
                out_row, out_sem, out_score):
    """Top-k rows of every node group ``starts[g]:starts[g + 1]`` (rows sorted by node), best first.

    semantic = mean over the ``n_kinds`` neighbour vector sets (``b1``, then ``b2``) of the float64 dot
    with the target's vector ``a[target_pos[g]]``, NaN when none exists; score = ppr (``by_ppr``) or
    (1 - weight) * (semantic or 0) + weight * ppr / (the group's max ppr, or 1). The node's own row
    (``self_code[g]``) is skipped; ties go to higher ppr, then the smaller neighbour code, then the earlier
    row. ``out_row`` (groups x k) gets row indices, -1 padded; ``out_sem``/``out_score`` their values.
    One pass per group with a k-slot insertion buffer: no sort, no per-row temporaries."""
    k = out_row.shape[1]
    for g in numba.prange(starts.shape[0] - 1):
        lo, hi = starts[g], starts[g + 1]
        top = 0.0
        for i in range(lo, hi):
            top = max(top, ppr[i])
        if top == 0.0:
            top = 1.0
        tp = target_pos[g]
        filled = 0
        for i in range(lo, hi):
            c = nbr_code[i]
            if c == self_code[g]:
                continue
            total = 0.0
            count = 0
            if tp >= 0:
                q = b1_pos[c]
                if q >= 0:
                    total += _dot(a, tp, b1, q)
                    count += 1
                q = b2_pos[c] if n_kinds == 2 else -1
                if q >= 0:
                    total += _dot(a, tp, b2, q)
                    count += 1
            sem = total / count if count > 0 else np.nan
            p = ppr[i]
            score = p if by_ppr else (1 - weight) * (sem if count > 0 else 0.0) + weight * p / top
            # slot where this row goes among the kept ones (after equals: earlier rows win ties)
            at = filled
            while at > 0:
                r = out_row[g, at - 1]
                s2, p2, c2 = out_score[g, at - 1], ppr[r], nbr_code[r]
                if score > s2 or (score == s2 and (p > p2 or (p == p2 and c < c2))):
                    at -= 1
                else:
                    break
            if at >= k:
                continue
            last = min(filled, k - 1)
            for j in range(last, at, -1):
                out_row[g, j] = out_row[g, j - 1]
                out_sem[g, j] = out_sem[g, j - 1]
                out_score[g, j] = out_score[g, j - 1]
            out_row[g, at] = i
            out_sem[g, at] = sem
            out_score[g, at] = score
            filled = min(filled + 1, k)
