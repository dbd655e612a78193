"""numba kernel of the re-ranker (see ``g2i_core/rerank.py``); imported only when it runs, with
``cache=True`` so compiled code is reused across processes."""

import numba
import numpy as np


@numba.njit(parallel=True, cache=True, nogil=True)
def row_dots(a, a_pos, b, b_pos, out):
    """``out[i] = a[a_pos[i]] . b[b_pos[i]]`` summed in float64, 0 where either position is -1.

    Reads the vectors where they are: gathering two (rows x dim) blocks per chunk first cost most of the
    re-ranker's time at Goodreads size (fresh 200 MB buffers, page faults, a copy of every vector read)."""
    dim = a.shape[1]
    for i in numba.prange(a_pos.shape[0]):
        p, q = a_pos[i], b_pos[i]
        s = 0.0
        if p >= 0 and q >= 0:
            for j in range(dim):
                s += np.float64(a[p, j]) * np.float64(b[q, j])
        out[i] = s
