"""Spark graph algorithms behind one front: GraphFrames if its JAR is on the classpath, otherwise
``g2i.GraphXBridge`` (our Java, compiled in setup against the GraphX that pyspark ships).

Both run the same GraphX routines (GraphFrames' connectedComponents(algorithm="graphx") and
parallelPersonalizedPageRank wrap them), so callers get the same columns either way.

Vertex ids are strings here; GraphX needs longs, so ids are indexed once (``index_vertices``) and
mapped back after the algorithm.

Connected components also run on the driver (``method="local"``: the long edge list through Arrow, scipy's
``connected_components``) when the graph fits the single-machine memory budget and the master is not a
cluster: GraphX's iterations are most of build-graph's time on one machine (``cc_method_for``).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)
GRAPHFRAMES_CLASS = "org.graphframes.GraphFrame"
BRIDGE_CLASS = "g2i.GraphXBridge"


def backend(spark: "SparkSession") -> str:
    """'graphframes' or 'graphx-bridge'; raises with a fix when neither JAR is attached."""
    from g2i_core.spark import has_jvm_class

    if has_jvm_class(spark, GRAPHFRAMES_CLASS):
        return "graphframes"
    if has_jvm_class(spark, BRIDGE_CLASS):
        return "graphx-bridge"
    raise RuntimeError("neither GraphFrames nor the g2i GraphX bridge is on Spark's classpath: run `make setup` "
                       "(builds .local/jars/g2i-graphx-bridge.jar) or set G2I_SPARK_PACKAGES to the GraphFrames "
                       "Maven coordinates")


def index_vertices(vertices: "DataFrame", id_col: str = "id") -> "DataFrame":
    """(id, vid): ``vid`` is a dense long index of ``id_col`` in id order (0 .. n-1), computed once.

    All in the JVM: a range-partitioned sort, then each row's position inside its partition
    (``monotonically_increasing_id`` minus the partition's high bits) plus the sizes of the partitions
    before it, so no id passes through a Python worker (the old zipWithIndex over a Python RDD did, once
    per join that read the index). bench/bench_build_graph.py: about even at 100k nodes; GraphX CC dominates."""
    from pyspark.sql import functions as F

    ids = vertices.select(F.col(id_col).alias("id")).distinct().orderBy("id")
    # the checkpoint pins partition ids and positions: every reader of the index sees the same numbers
    ranked = ids.select("id", F.spark_partition_id().alias("part"),
                        F.monotonically_increasing_id().alias("pos")).localCheckpoint()
    sizes = sorted((r["part"], r["count"]) for r in ranked.groupBy("part").count().collect())
    offsets, total = [], 0
    for part, size in sizes:  # one row per partition: small
        offsets.append((part, total))
        total += size
    offset = ranked.sparkSession.createDataFrame(offsets, "part int, offset long")
    local_pos = F.col("pos") - F.shiftleft(F.col("part").cast("long"), 33)
    return ranked.join(F.broadcast(offset), "part").select("id", (F.col("offset") + local_pos).alias("vid"))


def _long_edges(edges: "DataFrame", index: "DataFrame") -> "DataFrame":
    from pyspark.sql import functions as F

    s = index.select(F.col("id").alias("src"), F.col("vid").alias("s"))
    d = index.select(F.col("id").alias("dst"), F.col("vid").alias("d"))
    return (edges.select("src", "dst").join(s, "src").join(d, "dst")
            .select(F.col("s").alias("src"), F.col("d").alias("dst")))


CC_METHODS = ("auto", "graphx", "local")


def local_cc_memory_bytes(num_nodes: int, num_edges: int) -> int:
    """Peak driver memory of ``method="local"``: per edge the two longs in the JVM's Arrow batches, in
    Python's Arrow and numpy copies and scipy's CSR (int32 indices + data), ~64 B; per node ~40 B."""
    return 64 * num_edges + 40 * num_nodes


def cc_method_for(num_nodes: int, num_edges: int, *, spark_master: str, memory_budget: int) -> str:
    """``auto``: local when the master is not a cluster and the graph fits ``memory_budget`` bytes."""
    from g2i_core.spark import spark_master_is_cluster

    if spark_master_is_cluster(spark_master) or local_cc_memory_bytes(num_nodes, num_edges) > memory_budget:
        return "graphx"
    return "local"


def _local_components(spark: "SparkSession", index: "DataFrame", long_edges: "DataFrame") -> "DataFrame":
    """(id long, component long) by scipy on the driver; the component is its smallest vid, as GraphX's."""
    import numpy as np
    import pandas as pd
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components as scipy_cc

    arrow_key = "spark.sql.execution.arrow.pyspark.enabled"
    previous = spark.conf.get(arrow_key, "false")
    spark.conf.set(arrow_key, "true")  # columnar transfer both ways; row by row would dominate
    try:
        num_nodes = index.count()
        frame = long_edges.toPandas()
        src, dst = frame["src"].to_numpy(np.int64), frame["dst"].to_numpy(np.int64)
        del frame
        adjacency = coo_matrix((np.ones(len(src), np.int8), (src, dst)), shape=(num_nodes, num_nodes)).tocsr()
        del src, dst
        count, labels = scipy_cc(adjacency, directed=True, connection="weak")
        del adjacency
        smallest = np.full(count, num_nodes, np.int64)
        np.minimum.at(smallest, labels, np.arange(num_nodes, dtype=np.int64))
        components = pd.DataFrame({"id": np.arange(num_nodes, dtype=np.int64), "component": smallest[labels]})
        return spark.createDataFrame(components, "id long, component long")
    finally:
        spark.conf.set(arrow_key, previous)


def connected_components(spark: "SparkSession", vertices: "DataFrame", edges: "DataFrame",
                         max_iterations: int = 50, method: str = "graphx") -> "DataFrame":
    """(id string, component string): every vertex with the smallest id of its weakly connected component.

    ``vertices`` needs ``id``; ``edges`` needs ``src`` and ``dst`` (string ids). ``method`` is ``graphx``
    (GraphFrames or the bridge, on the executors) or ``local`` (scipy on the driver; same answer)."""
    from pyspark.sql import functions as F

    if method not in ("graphx", "local"):
        raise ValueError(f"connected components method must be graphx or local, got {method!r}")
    index = index_vertices(vertices)
    if method == "local":
        cc = _local_components(spark, index, _long_edges(edges, index))
    elif backend(spark) == "graphframes":
        from graphframes import GraphFrame

        g = GraphFrame(index.select(F.col("vid").alias("id")), _long_edges(edges, index))
        cc = g.connectedComponents(algorithm="graphx", maxIter=max_iterations)
    else:
        jvm = spark.sparkContext._jvm
        jdf = jvm.g2i.GraphXBridge.connectedComponents(spark._jsparkSession, _long_edges(edges, index)._jdf,
                                                       max_iterations)
        from pyspark.sql import DataFrame as PyDataFrame

        cc = PyDataFrame(jdf, spark)
    # isolated vertices have no edges, so GraphX never saw them: each is its own component
    comp = index.join(cc.select(F.col("id").alias("vid"), "component"), "vid", "left")
    comp = comp.withColumn("component", F.coalesce("component", "vid"))
    rep = index.select(F.col("vid").alias("component"), F.col("id").alias("component_id"))
    return comp.join(rep, "component").select("id", F.col("component_id").alias("component"))


def parallel_personalized_pagerank(spark: "SparkSession", vertices: "DataFrame", edges: "DataFrame",
                                   sources: Sequence[str], reset_probability: float = 0.15,
                                   max_iterations: int = 20) -> "DataFrame":
    """(source string, node string, score double) for one batch of ``sources``.

    This is GraphX's ``runParallelPersonalizedPageRank`` (fixed iterations, edge weights ignored,
    1/out-degree transitions): the engine GraphFrames' parallelPersonalizedPageRank calls."""
    from pyspark.sql import DataFrame as PyDataFrame
    from pyspark.sql import functions as F

    if not sources:
        raise ValueError("sources must name at least one vertex id")
    index = index_vertices(vertices)
    src_ids = index.where(F.col("id").isin(list(sources))).collect()
    missing = set(sources) - {r["id"] for r in src_ids}
    if missing:
        raise ValueError(f"sources not among the vertices: {sorted(missing)[:5]}")
    vids = [r["vid"] for r in src_ids]
    long_edges = _long_edges(edges, index)
    if backend(spark) == "graphframes":
        from graphframes import GraphFrame

        g = GraphFrame(index.select(F.col("vid").alias("id")), long_edges)
        res = g.parallelPersonalizedPageRank(resetProbability=reset_probability, sourceIds=vids,
                                             maxIter=max_iterations)
        # explode the per-vertex sparse vector into (source, node, score)
        from pyspark.ml.functions import vector_to_array

        arr = res.vertices.select(F.col("id").alias("node"), vector_to_array("pageranks").alias("v"))
        scores = arr.select("node", F.posexplode("v").alias("i", "score")).where("score > 0")
        pos = spark.createDataFrame([(i, v) for i, v in enumerate(vids)], "i int, source long")
        out = scores.join(pos, "i").select("source", "node", "score")
    else:
        jvm = spark.sparkContext._jvm
        arr = spark.sparkContext._gateway.new_array(jvm.long, len(vids))
        for i, v in enumerate(vids):
            arr[i] = v
        out = PyDataFrame(jvm.g2i.GraphXBridge.parallelPersonalizedPageRank(
            spark._jsparkSession, long_edges._jdf, arr, float(reset_probability), int(max_iterations)), spark)
    names = index.select(F.col("vid").alias("source"), F.col("id").alias("source_id"))
    nodes = index.select(F.col("vid").alias("node"), F.col("id").alias("node_id"))
    return (out.join(names, "source").join(nodes, "node")
            .select(F.col("source_id").alias("source"), F.col("node_id").alias("node"), "score"))
