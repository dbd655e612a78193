"""``ppr_rows``: every node's propagated top-K' row, committed with the ``ppr_candidates`` it produced,
so the next night's refresh continues from it instead of sweeping every row from the cold start.

The table is in the graph's node order (the sorted ids of the graph run in the candidates' manifest):
``node_id``, ``row_index`` (K' int32 positions in that order, -1 padded) and ``row_value`` (K' float32,
descending). 2.4M nodes x K' 128 is 2.5 GB of Arrow data per version.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger(__name__)
TABLE = "ppr_rows"


def rows_table(ids: "pa.Array", row_idx: np.ndarray, row_val: np.ndarray) -> "pa.Table":
    """The ``ppr_rows`` table of a graph's rows (zero-copy views of the arrays)."""
    import pyarrow as pa

    width = row_idx.shape[1]
    return pa.table({"node_id": ids,
                     "row_index": pa.FixedSizeListArray.from_arrays(pa.array(row_idx.reshape(-1)), width),
                     "row_value": pa.FixedSizeListArray.from_arrays(pa.array(row_val.reshape(-1)), width)})


def rows_on_graph(previous: "pa.Table", old_ids: "pa.Array", new_ids: "pa.Array", row_k: int,
                  alpha: float) -> tuple[np.ndarray, np.ndarray] | None:
    """The previous version's rows moved onto the new graph's node order: entries of nodes that left are
    dropped, new nodes start cold. None (with the reason logged) when the rows do not fit these graphs."""
    import pyarrow.compute as pc

    from g2i_core.arrow_lookup import positions_in
    from g2i_core.ppr._propagate_kernels import place_rows
    from g2i_core.ppr.propagate import cold_rows

    started = time.monotonic()
    width = previous.schema.field("row_index").type.list_size
    if width != row_k or previous.num_rows != len(old_ids):
        log.info("ppr rows: %d rows of width %d do not fit %d nodes at K' %d; sweeping cold", previous.num_rows,
                 width, len(old_ids), row_k)
        return None
    if not pc.all(pc.equal(previous.column("node_id"), old_ids)).as_py():
        log.info("ppr rows: not in the previous graph's node order; sweeping cold")
        return None
    old_to_new = positions_in(old_ids, new_ids).astype(np.int32)
    row_idx, row_val = cold_rows(len(new_ids), row_k, alpha)
    offset = 0
    for batch in previous.select(["row_index", "row_value"]).to_batches():  # both columns aligned
        m = batch.num_rows
        src_idx = batch.column(0).flatten().to_numpy().reshape(m, width)
        src_val = batch.column(1).flatten().to_numpy().reshape(m, width)
        place_rows(src_idx, src_val, old_to_new[offset:offset + m], old_to_new, row_idx, row_val)
        offset += m
    log.info("ppr rows: %d previous rows placed on %d nodes in %.1fs", offset, len(new_ids),
             time.monotonic() - started)
    return row_idx, row_val
