"""numba kernel of one block sweep of ``spark-propagate`` (see ``g2i_core/ppr/spark_propagate.py``);
imported only inside Spark tasks, with ``cache=True`` so workers reuse the compiled code."""

import numba
import numpy as np

from g2i_core.ppr._propagate_kernels import _top_rows


@numba.njit(cache=True, nogil=True)
def block_sweep(indptr, indices, probs, alpha, first, row_idx, row_val, acc, seen):
    """Rebuild the rows of one block of nodes in place (Gauss-Seidel inside the block).

    Local row ``i < nb`` (nb = len(indptr) - 1) is node ``first + i``; rows ``>= nb`` are the other
    blocks' rows this block reads (fixed during the sweep: Jacobi between blocks). ``indices`` are
    local row positions; row entries are global node ids, so ``acc``/``seen`` are global-size
    scratch, zero/False on entry and on return. Each row keeps its top K' entries, unordered."""
    nb = indptr.shape[0] - 1
    keep = row_idx.shape[1]
    cap = 1
    for s in range(nb):
        cap = max(cap, 1 + (indptr[s + 1] - indptr[s]) * keep)
    touched = np.empty(cap, np.int64)
    vals = np.empty(cap)
    new_idx = np.empty(keep, row_idx.dtype)
    new_val = np.empty(keep, row_val.dtype)
    for s in range(nb):
        g = first + s
        acc[g] = alpha
        seen[g] = True
        touched[0] = g
        nt = 1
        for e in range(indptr[s], indptr[s + 1]):
            v = indices[e]
            w = (1.0 - alpha) * probs[e]
            for j in range(keep):
                u = row_idx[v, j]
                if u < 0:
                    break
                acc[u] += w * row_val[v, j]
                if not seen[u]:
                    seen[u] = True
                    touched[nt] = u
                    nt += 1
        for t in range(nt):
            seen[touched[t]] = False
        _top_rows(acc, touched, nt, keep, new_idx, new_val, vals)
        for j in range(keep):
            row_idx[s, j] = new_idx[j]
            row_val[s, j] = new_val[j]
