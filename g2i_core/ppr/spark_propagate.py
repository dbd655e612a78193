"""``spark-propagate``: the all-node ``propagate`` method (``g2i_core/ppr/propagate.py``) as Spark jobs.

Nodes get a dense index (ids in order) and are cut into B contiguous blocks. A node's row is its
top-K' entries of ``Phi_s`` (int32 ids and float32 values, stored as two fixed-width binary
columns), keyed by (target block, node).

1. **Staging** (once): the normalised edges (s, d, p), partitioned by the block of s, and the
   routes (v, t): block t has an edge into v, which lives in another block.
2. **Sweeps**: the state is every row once for its own block plus one copy per route. A sweep
   shuffles the state by target block (edges ⋈ rows, done per block); the task of block b reads its
   own edges, rebuilds its rows from its out-neighbours' rows (Gauss-Seidel inside the block, Jacobi
   between blocks; the numba kernel is the single-machine one's inner loop), keeps the top K', and
   emits the new rows with their routed copies. Each sweep's state is written to the staging prefix
   and read back, so the plan never grows and a failed task reruns one sweep, not all of them.
3. **Refinement**: sources are spread over partitions; each Python worker loads the staged graph
   and final rows once (not through the driver) and runs the single-machine refinement kernel
   (short push, residuals resolved with the rows, scores divided by ``|Phi_s|_1``).

The driver only counts nodes: no graph, rows or per-source state pass through it. Memory per
executor: one block's rows plus its routed rows in the sweeps; graph (~16 B/edge) and all rows
(8 K' B/node) in the refinement. docs/neighbours.md has the measurements and a sizing estimate.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from g2i_core.ppr.api import PprConfig

if TYPE_CHECKING:
    import pyarrow as pa
    from pyspark.sql import DataFrame, SparkSession

    from g2i_core.storage import Storage

log = logging.getLogger(__name__)
STATE_SCHEMA = "tgt int, v int, idx binary, val binary"
SCORES_SCHEMA = "source long, rank int, node long, score double"
_BATCH_ROWS = 65_536  # rows per Arrow batch out of a task: 32 MiB of row data at K' = 128
_WORKER_CACHE: dict[str, Any] = {}  # staging root -> (graph, rows, mass), per Python worker process


def spark_propagate_scores(spark: "SparkSession", index: "DataFrame", edges: "DataFrame", src_vids: "DataFrame",
                           config: PprConfig, staging: "Storage") -> "DataFrame":
    """(source, rank, node, score) by vid for every ``src_vids.vid``.

    ``index`` is (id, vid) with dense vids in id order; ``edges`` is (src, dst, w) with string ids."""
    from pyspark.sql import functions as F

    started = time.monotonic()
    num_nodes = index.count()
    if num_nodes >= 2**31 - 1:
        raise ValueError(f"spark-propagate stores int32 node ids; {num_nodes} nodes is too many (use spark-push)")
    if num_nodes == 0:
        return spark.createDataFrame([], SCORES_SCHEMA)
    blocks = max(1, min(config.partitions or spark.sparkContext.defaultParallelism, num_nodes))
    block = -(-num_nodes // blocks)  # ceil: block b holds vids [b * block, (b + 1) * block)
    blocks = -(-num_nodes // block)
    # 1. stage normalised edges by the block of their source, and the routes of rows between blocks
    s = index.select(F.col("id").alias("src"), F.col("vid").cast("int").alias("s"))
    d = index.select(F.col("id").alias("dst"), F.col("vid").cast("int").alias("d"))
    summed = edges.join(s, "src").join(d, "dst").groupBy("s", "d").agg(F.sum("w").alias("w"))
    out_w = summed.groupBy("s").agg(F.sum("w").alias("out_w"))
    probs = summed.join(out_w, "s").select("s", "d", (F.col("w") / F.col("out_w")).alias("p"))
    staging.delete_prefix(staging.root)
    probs.withColumn("blk", (F.col("s") / F.lit(block)).cast("int")) \
        .write.partitionBy("blk").parquet(staging.spark_uri(staging.uri("edges")))
    staged = spark.read.parquet(staging.spark_uri(staging.uri("edges")))
    routes = staged.select(F.col("d").alias("v"), F.col("blk").alias("t")) \
        .where((F.col("v") / F.lit(block)).cast("int") != F.col("t")).distinct()
    routes.withColumn("blk", (F.col("v") / F.lit(block)).cast("int")) \
        .write.partitionBy("blk").parquet(staging.spark_uri(staging.uri("routes")))
    log.info("spark-propagate: %d nodes in %d blocks of %d, staged in %.1fs", num_nodes, blocks, block,
             time.monotonic() - started)
    # 2. sweeps: the first builds its rows from alpha e_v, every later one reads the previous state
    task = _BlockSweep(staging.root, staging._settings, num_nodes, block, config)
    state = spark.range(blocks, numPartitions=blocks).select(F.col("id").cast("int").alias("tgt"))
    coalesce_key = "spark.sql.adaptive.coalescePartitions.enabled"
    coalesce = spark.conf.get(coalesce_key, "true")
    spark.conf.set(coalesce_key, "false")  # one task per block: AQE would merge small blocks into one task
    try:
        _sweeps(spark, staging, task, state, blocks, config, started)
    finally:
        spark.conf.set(coalesce_key, coalesce)
    # 3. refinement, partition-local on sources
    parts = config.partitions or 4 * spark.sparkContext.defaultParallelism
    refine = _Refine(staging.root, staging._settings, num_nodes, config)
    return src_vids.select(F.col("vid").alias("source")).repartition(parts).mapInArrow(refine, SCORES_SCHEMA)


def _sweeps(spark: "SparkSession", staging: "Storage", task: "_BlockSweep", state: "DataFrame", blocks: int,
            config: PprConfig, started: float) -> None:
    """Run every sweep; the last one writes the sorted rows to ``rows`` under the staging prefix."""
    for sweep in range(max(config.sweeps, 1)):
        final = sweep == max(config.sweeps, 1) - 1
        task.run_kernel, task.final = config.sweeps > 0, final
        name = "rows" if final else f"sweep{sweep % 2}"  # the previous sweep's state stays readable
        out = state.repartitionByRange(blocks, "tgt").mapInArrow(task, STATE_SCHEMA)
        out.write.mode("overwrite").parquet(staging.spark_uri(staging.uri(name)))
        if sweep > 0:
            staging.delete_prefix(staging.uri(f"sweep{(sweep - 1) % 2}"))
        state = spark.read.parquet(staging.spark_uri(staging.uri(name)))
        log.info("spark-propagate: sweep %d/%d, %.1fs", sweep + 1, config.sweeps, time.monotonic() - started)


def _binary_matrix(arr: "pa.Array", dtype: type, width: int) -> np.ndarray:
    """A binary column of equal-length values as an (rows, width) view of its data buffer."""
    offsets = np.frombuffer(arr.buffers()[1], np.int32, count=len(arr) + 1, offset=arr.offset * 4)
    data = np.frombuffer(arr.buffers()[2], np.uint8)
    item = np.dtype(dtype).itemsize
    if offsets[-1] - offsets[0] != len(arr) * width * item:
        raise ValueError(f"row column has values of the wrong size (want {width} x {item} bytes each)")
    return data[offsets[0]:offsets[-1]].view(dtype).reshape(len(arr), width)


def _binary_array(mat: np.ndarray) -> "pa.Array":
    import pyarrow as pa

    mat = np.ascontiguousarray(mat)
    width = mat.shape[1] * mat.itemsize
    offsets = np.arange(mat.shape[0] + 1, dtype=np.int32) * width
    return pa.Array.from_buffers(pa.binary(), mat.shape[0], [None, pa.py_buffer(offsets), pa.py_buffer(mat)])


def _read_staged(storage: "Storage", name: str, columns: list[str]) -> "pa.Table | None":
    files = [u for u in storage.list(storage.uri(name)) if u.endswith(".parquet")]
    return storage.read_parquet(files, columns=columns) if files else None


class _BlockSweep:
    """Picklable mapInArrow task: one sweep over every block whose rows land in this partition."""

    def __init__(self, staging_root: str, settings: Any, num_nodes: int, block: int, config: PprConfig):
        self.staging_root, self.settings, self.num_nodes, self.block = staging_root, settings, num_nodes, block
        self.alpha, self.row_k = config.alpha, config.row_k
        self.run_kernel, self.final = True, False

    def __call__(self, batches: Iterator["pa.RecordBatch"]) -> Iterator["pa.RecordBatch"]:
        from g2i_core.storage import Storage

        storage = Storage(self.staging_root, settings=self.settings)
        tgt, v, idx, val = [], [], [], []
        for b in batches:
            tgt.append(b.column("tgt").to_numpy())
            if "idx" in b.schema.names:  # the first sweep gets block numbers only
                v.append(b.column("v").to_numpy())
                idx.append(_binary_matrix(b.column("idx"), np.int32, self.row_k))
                val.append(_binary_matrix(b.column("val"), np.float32, self.row_k))
        if not tgt:
            return
        tgt = np.concatenate(tgt)
        if v:
            v, idx, val = np.concatenate(v), np.concatenate(idx), np.concatenate(val)
        for blk in np.unique(tgt).tolist():
            sel = np.flatnonzero(tgt == blk) if len(v) else None
            yield from self._block(storage, int(blk), None if sel is None else (v[sel], idx[sel], val[sel]))

    def _block(self, storage: "Storage", blk: int, rows) -> Iterator["pa.RecordBatch"]:
        import pyarrow as pa

        first = blk * self.block
        nb = min(self.num_nodes, first + self.block) - first
        edges = _read_staged(storage, f"edges/blk={blk}", ["s", "d", "p"])
        s = edges.column("s").to_numpy().astype(np.int64) - first if edges is not None else np.zeros(0, np.int64)
        d = edges.column("d").to_numpy().astype(np.int64) if edges is not None else np.zeros(0, np.int64)
        p = edges.column("p").to_numpy() if edges is not None else np.zeros(0)
        order = np.argsort(s, kind="stable")
        s, d, p = s[order], d[order], p[order]
        # local rows: the block's own nodes first (position = vid - first), then the routed-in rows
        own = (d >= first) & (d < first + nb)
        foreign = np.unique(d[~own])
        local_d = np.where(own, d - first, nb + np.searchsorted(foreign, d))
        row_idx = np.full((nb + len(foreign), self.row_k), -1, np.int32)
        row_val = np.zeros((nb + len(foreign), self.row_k), np.float32)
        if rows is None:  # first sweep: every row is alpha e_v
            ids = np.concatenate([np.arange(first, first + nb), foreign])
            row_idx[:, 0] = ids
            row_val[:, 0] = self.alpha
        else:
            rv, ri, rl = rows
            is_own = (rv >= first) & (rv < first + nb)
            row_idx[rv[is_own] - first] = ri[is_own]
            row_val[rv[is_own] - first] = rl[is_own]
            pos = np.searchsorted(foreign, rv[~is_own])
            ok = pos < len(foreign)
            ok[ok] = foreign[pos[ok]] == rv[~is_own][ok]
            if int(ok.sum()) != len(foreign) or int(is_own.sum()) != nb:
                raise RuntimeError(f"block {blk}: got {int(is_own.sum())}/{nb} own rows and {int(ok.sum())}/"
                                   f"{len(foreign)} routed rows; the staged routes do not match the edges")
            row_idx[nb + pos[ok]] = ri[~is_own][ok]
            row_val[nb + pos[ok]] = rl[~is_own][ok]
        if self.run_kernel:
            from g2i_core.ppr._spark_propagate_kernels import block_sweep

            indptr = np.zeros(nb + 1, np.int64)
            np.cumsum(np.bincount(s, minlength=nb), out=indptr[1:])
            block_sweep(indptr, local_d, p, float(self.alpha), first, row_idx, row_val,
                        np.zeros(self.num_nodes), np.zeros(self.num_nodes, np.bool_))
        row_idx, row_val = row_idx[:nb], row_val[:nb]
        vids = np.arange(first, first + nb, dtype=np.int32)
        if self.final:  # rows sorted by value, descending, as the refinement expects; no routed copies
            order = np.argsort(-row_val, axis=1, kind="stable")
            row_idx = np.take_along_axis(row_idx, order, axis=1)
            row_val = np.take_along_axis(row_val, order, axis=1)
            out_tgt, out_v, out_pos = np.full(nb, blk, np.int32), vids, np.arange(nb)
        else:
            routes = _read_staged(storage, f"routes/blk={blk}", ["v", "t"])
            rv = routes.column("v").to_numpy() if routes is not None else np.zeros(0, np.int32)
            rt = routes.column("t").to_numpy() if routes is not None else np.zeros(0, np.int32)
            out_tgt = np.concatenate([np.full(nb, blk, np.int32), rt.astype(np.int32)])
            out_v = np.concatenate([vids, rv.astype(np.int32)])
            out_pos = out_v.astype(np.int64) - first
        for a in range(0, len(out_v), _BATCH_ROWS):
            sl = slice(a, a + _BATCH_ROWS)
            pos = out_pos[sl]
            yield pa.RecordBatch.from_arrays(
                [pa.array(out_tgt[sl], pa.int32()), pa.array(out_v[sl], pa.int32()),
                 _binary_array(row_idx[pos]), _binary_array(row_val[pos])], names=["tgt", "v", "idx", "val"])


class _Refine:
    """Picklable mapInArrow task: top-K of each source from a short push resolved with the rows."""

    def __init__(self, staging_root: str, settings: Any, num_nodes: int, config: PprConfig):
        self.staging_root, self.settings, self.num_nodes, self.config = staging_root, settings, num_nodes, config

    def __call__(self, batches: Iterator["pa.RecordBatch"]) -> Iterator["pa.RecordBatch"]:
        import numba
        import pyarrow as pa

        from g2i_core.ppr._propagate_kernels import refine_top_k

        parts = [b.column("source").to_numpy() for b in batches]
        sources = np.sort(np.concatenate(parts)) if parts else np.zeros(0, np.int64)
        if len(sources) == 0:
            return
        numba.set_num_threads(1)  # Spark already runs one task per core
        graph, row_idx, row_val, mass = self._load()
        c = self.config
        for a in range(0, len(sources), 20_000):
            batch = sources[a:a + 20_000].astype(np.int64)
            out_idx, out_val = refine_top_k(batch, graph.indptr, graph.indices, graph.probs, float(c.alpha),
                                            float(c.refine_eps), int(c.row_k), row_idx, row_val, mass,
                                            int(c.top_k), 1)
            rows, cols = np.nonzero(out_idx >= 0)
            yield pa.RecordBatch.from_arrays(
                [pa.array(batch[rows], pa.int64()), pa.array((cols + 1).astype(np.int32), pa.int32()),
                 pa.array(out_idx[rows, cols], pa.int64()), pa.array(out_val[rows, cols], pa.float64())],
                names=["source", "rank", "node", "score"])

    def _load(self):
        """Graph, rows and |Phi_s|_1 of every node, read from staging once per Python worker."""
        if self.staging_root not in _WORKER_CACHE:
            from g2i_core.ppr._propagate_kernels import restart_mass
            from g2i_core.ppr.graph import _csr
            from g2i_core.storage import Storage

            _WORKER_CACHE.clear()  # one graph at a time per worker
            storage = Storage(self.staging_root, settings=self.settings)
            n, k = self.num_nodes, self.config.row_k
            edges = _read_staged(storage, "edges", ["s", "d", "p"])
            ids = np.arange(n)
            if edges is None:
                empty = np.zeros(0, np.int64)
                graph = _csr(ids, empty, empty, np.zeros(0))
            else:
                graph = _csr(ids, edges.column("s").to_numpy().astype(np.int64),
                             edges.column("d").to_numpy().astype(np.int64), edges.column("p").to_numpy())
            del edges
            row_idx = np.full((n, k), -1, np.int32)
            row_val = np.zeros((n, k), np.float32)
            files = [u for u in storage.list(storage.uri("rows")) if u.endswith(".parquet")]
            for f in files:  # file by file: never two copies of all rows at once
                t = storage.read_parquet(f, columns=["v", "idx", "val"])
                for b in t.to_batches():
                    v = b.column("v").to_numpy()
                    row_idx[v] = _binary_matrix(b.column("idx"), np.int32, k)
                    row_val[v] = _binary_matrix(b.column("val"), np.float32, k)
            alpha = self.config.alpha
            iterations = int(np.ceil(np.log(1e-12) / np.log(1 - alpha)))  # as propagate: 1e-12 relative
            mass = restart_mass(graph.indptr, graph.indices, graph.probs, float(alpha), iterations)
            _WORKER_CACHE[self.staging_root] = (graph, row_idx, row_val, mass)
        return _WORKER_CACHE[self.staging_root]
