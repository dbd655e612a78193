"""PPR on Spark: partition-local push (``spark-push``), all-node propagation (``spark-propagate``, in
``spark_propagate.py``) and GraphX/GraphFrames (``graphframes``).

spark-push: the driver never holds the graph. A Spark job indexes the vertices, writes the edges as
(src_vid, dst_vid, weight) Parquet under a staging prefix of the output storage, and every Python
worker builds the CSR graph from those files itself (once per worker, then reused). Sources are
spread over partitions; each partition runs the same numba forward push as the single-machine path
on its sources. Cost is linear in sources x work-per-source; each executor needs the graph in memory
(about 20 bytes per edge), which fits 100M-edge graphs on ordinary executors.

graphframes: GraphFrames' parallelPersonalizedPageRank (or our GraphX bridge, the same routine), run
in batches of sources. GraphX's variant differs from our definition: a fixed iteration count, edge
weights ignored, and no restart from dangling nodes (their mass is lost, the result is renormalised).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np

from g2i_core.ppr.api import PprConfig
from g2i_core.ppr.candidates import Candidates
from g2i_core.ppr.graph import CsrGraph

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from g2i_core.storage import Storage

log = logging.getLogger(__name__)
OUTPUT_SCHEMA = "node_id string, rank int, neighbour_id string, ppr_score double"
_WORKER_GRAPHS: dict[str, CsrGraph] = {}  # staging uri -> graph, per Python worker process


def spark_candidates(spark: "SparkSession", edges: "DataFrame", config: PprConfig, staging: "Storage",
                     sources: "DataFrame | None" = None, nodes: "DataFrame | None" = None) -> "DataFrame":
    """(node_id, rank, neighbour_id, ppr_score) for every source (``sources.node_id``, default all nodes).

    ``edges`` has string src, dst and optional weight; ``nodes.node_id`` adds isolated nodes."""
    from pyspark.sql import functions as F

    from g2i_core.graph.engine import index_vertices

    config.check()
    # 1. one dense long index over every node id (ordered by id, computed in the JVM)
    ids = edges.select(F.col("src").alias("id")).union(edges.select(F.col("dst").alias("id")))
    if nodes is not None:
        ids = ids.union(nodes.select(F.col("node_id").alias("id")))
    index = index_vertices(ids).persist()
    src_names = sources.select(F.col("node_id").alias("id")) if sources is not None else index.select("id")
    src_vids = src_names.join(index, "id").select("vid")
    if config.method == "graphframes":
        raw = _graphframes_scores(spark, edges, index, src_vids, config)
        return _top_k_from_scores(raw, index, config.top_k)
    if config.method not in ("spark-push", "spark-propagate"):
        raise ValueError(f"method {config.method!r} does not run on Spark; use spark-push, spark-propagate or "
                         "graphframes")
    weight = F.col("weight").cast("double") if (config.use_weights and "weight" in edges.columns) else F.lit(1.0)
    if config.method == "spark-propagate":
        from g2i_core.ppr.spark_propagate import spark_propagate_scores

        scores = spark_propagate_scores(spark, index, edges.select("src", "dst", weight.alias("w")), src_vids,
                                        config, staging)
        return _names_back(scores, index)
    # 2. stage the indexed edges where every worker can read them (not through the driver)
    s = index.select(F.col("id").alias("src"), F.col("vid").alias("s"))
    d = index.select(F.col("id").alias("dst"), F.col("vid").alias("d"))
    long_edges = edges.select("src", "dst", weight.alias("w")).join(s, "src").join(d, "dst").select("s", "d", "w")
    staging.delete_prefix(staging.root)
    long_edges.write.mode("overwrite").parquet(staging.spark_uri(staging.uri("edges")))
    num_nodes = index.count()
    # 3. push on each partition of sources
    parts = config.partitions or 4 * spark.sparkContext.defaultParallelism
    job = _PartitionPush(staging.root, staging._settings, num_nodes, config)
    rows = src_vids.repartition(parts).rdd.mapPartitions(job)
    scores = spark.createDataFrame(rows, "source long, rank int, node long, score double")
    return _names_back(scores, index)


def _names_back(scores: "DataFrame", index: "DataFrame") -> "DataFrame":
    """(source, rank, node, score) by vid -> the ``ppr_candidates`` columns by node id."""
    from pyspark.sql import functions as F

    names = index.select(F.col("vid").alias("source"), F.col("id").alias("node_id"))
    nbrs = index.select(F.col("vid").alias("node"), F.col("id").alias("neighbour_id"))
    return scores.join(names, "source").join(nbrs, "node").select("node_id", "rank", "neighbour_id",
                                                                   F.col("score").alias("ppr_score"))


class _PartitionPush:
    """Picklable per-partition job: load the staged graph once per worker, push from each source."""

    def __init__(self, staging_root: str, settings: Any, num_nodes: int, config: PprConfig):
        self.staging_root, self.settings, self.num_nodes, self.config = staging_root, settings, num_nodes, config

    def __call__(self, rows):
        import numba

        from g2i_core.ppr.push import push_candidates

        sources = np.fromiter((r["vid"] for r in rows), dtype=np.int64)
        if len(sources) == 0:
            return iter(())
        numba.set_num_threads(1)  # Spark already runs one task per core
        graph = self._graph()
        cand = push_candidates(graph, sources, alpha=self.config.alpha, top_k=self.config.top_k, eps=self.config.eps)
        out = []
        for i, s in enumerate(cand.sources.tolist()):
            for j in range(cand.top_k):
                v = int(cand.neighbours[i, j])
                if v < 0:
                    break
                out.append((s, j + 1, v, float(cand.scores[i, j])))
        return iter(out)

    def _graph(self) -> CsrGraph:
        if self.staging_root not in _WORKER_GRAPHS:
            from g2i_core.ppr.graph import _csr
            from g2i_core.storage import Storage

            storage = Storage(self.staging_root, settings=self.settings)
            files = [u for u in storage.list(storage.uri("edges")) if u.endswith(".parquet")]
            table = storage.read_parquet(files) if files else None
            ids = np.arange(self.num_nodes)  # ids are vids here; names are joined back on Spark
            if table is None or table.num_rows == 0:
                empty = np.zeros(0, np.int64)
                _WORKER_GRAPHS[self.staging_root] = _csr(ids, empty, empty, np.zeros(0))
            else:
                _WORKER_GRAPHS[self.staging_root] = _csr(ids, table.column("s").to_numpy(),
                                                         table.column("d").to_numpy(), table.column("w").to_numpy())
        return _WORKER_GRAPHS[self.staging_root]


def _graphframes_scores(spark: "SparkSession", edges: "DataFrame", index: "DataFrame", src_vids: "DataFrame",
                        config: PprConfig) -> "DataFrame":
    """(source vid, node vid, score) from GraphX parallel PPR, in batches of config.batch_size sources."""
    from functools import reduce

    from pyspark.sql import functions as F

    from g2i_core.graph.engine import parallel_personalized_pagerank

    ids = [r["id"] for r in src_vids.join(index, "vid").select("id").orderBy("id").collect()]
    vertices = index.select("id")
    parts = []
    for start in range(0, len(ids), config.batch_size):
        batch = ids[start:start + config.batch_size]
        res = parallel_personalized_pagerank(spark, vertices, edges.select("src", "dst"), batch,
                                             reset_probability=config.alpha, max_iterations=config.iterations)
        parts.append(res.localCheckpoint())  # materialise the batch before the next one starts
        log.info("graphframes ppr: %d/%d sources", start + len(batch), len(ids))
    if not parts:
        return spark.createDataFrame([], "source string, node string, score double")
    return reduce(lambda a, b: a.unionByName(b), parts).where(F.col("source") != F.col("node"))


def _top_k_from_scores(scores: "DataFrame", index: "DataFrame", top_k: int) -> "DataFrame":
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    w = Window.partitionBy("source").orderBy(F.col("score").desc(), F.col("node"))
    ranked = scores.where("score > 0").withColumn("rank", F.row_number().over(w)).where(F.col("rank") <= top_k)
    return ranked.select(F.col("source").alias("node_id"), F.col("rank").cast("int"),
                         F.col("node").alias("neighbour_id"), F.col("score").alias("ppr_score"))


def candidates_from_rows(graph: CsrGraph, rows: list[tuple[str, int, str, float]], top_k: int,
                         sources: np.ndarray) -> Candidates:
    """Collected (node_id, rank, neighbour_id, score) rows back into dense Candidates (tests, bench)."""
    pos = {s: i for i, s in enumerate(sources.tolist())}
    neighbours = np.full((len(sources), top_k), -1, np.int64)
    scores = np.zeros((len(sources), top_k))
    for node_id, rank, nbr, score in rows:
        i = pos[int(graph.index_of([node_id])[0])]
        neighbours[i, rank - 1] = graph.index_of([nbr])[0]
        scores[i, rank - 1] = score
    return Candidates(sources.astype(np.int64), neighbours, scores)
