"""Id lookups over Arrow arrays: the one place string ids become positions (hash lookups, never a Python
dict or a string sort over millions of rows)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pyarrow as pa


def positions_in(values: "pa.ChunkedArray | pa.Array", pool: "pa.Array") -> np.ndarray:
    """(len(values),) int64: the index of each value in ``pool``, -1 where absent (or null).

    Dictionary-encoded values (ids read with ``Storage.read_table(..., dictionary=...)``) get one shared
    dictionary first, looked up once: every lookup hashes the whole pool, so one lookup per file's
    dictionary would cost a 2.4M-entry hash table per file at Goodreads size."""
    import pyarrow as pa
    import pyarrow.compute as pc

    def lookup(array: "pa.Array | pa.ChunkedArray") -> np.ndarray:
        return pc.fill_null(pc.index_in(array, value_set=pool), -1).to_numpy().astype(np.int64)

    values = values if isinstance(values, pa.ChunkedArray) else pa.chunked_array([values])
    if len(values) == 0 or len(pool) == 0:
        return np.full(len(values), -1, np.int64)
    if pa.types.is_dictionary(values.type):
        values = values.unify_dictionaries()
        at = lookup(values.chunk(0).dictionary)
        return np.concatenate([at[c.indices.to_numpy(zero_copy_only=False)] for c in values.chunks])
    return lookup(values)
