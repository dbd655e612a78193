"""build-graph: ``nodes`` + ``edges`` (+ ``node_images``) -> ``graph_nodes``, ``graph_edges``, stats JSON.

Steps: drop dangling edges (an end not among the nodes), optionally symmetrize, attach each node's image
status, compute in/out degree and weakly connected components (GraphFrames or our GraphX bridge, see
``graph.engine``), and assign a train/val/test split from a hash of the node id alone, so adding nodes
never moves an existing node to another split.

Columns added to ``graph_nodes`` (besides every ``nodes`` column): ``in_degree``, ``out_degree``,
``degree`` (= in + out, over all relations), ``component`` (smallest node id of its component),
``component_size``, ``split``, ``image_status``, ``image_key``.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

    from g2i_core.storage import Storage

log = logging.getLogger(__name__)
SPLIT_BUCKETS = 10_000
ENGINES = ("auto", "spark", "local")
DEGREE_COLUMNS = ["degree", "in_degree", "out_degree"]
QUANTILES = [0.5, 0.9, 0.99, 1.0]


@dataclass(frozen=True)
class BuildConfig:
    run_id: str = ""  # default: the nodes run id it was built from
    symmetrize: bool = False  # add the reverse of every edge (same relation and weight)
    relations: tuple[str, ...] = ()  # keep only these relations; empty = all
    train_fraction: float = 0.8
    val_fraction: float = 0.1  # test gets the rest
    cc_max_iterations: int = 50
    # spark, local (pyarrow + scipy in this process, graph.local), or auto: local when the master is not a
    # cluster, the graph fits the single-machine memory budget and cc_method is not graphx
    engine: str = "auto"
    # connected components: graphx (executors), local (scipy on the driver), or auto: local when the master is
    # not a cluster and the graph fits the single-machine memory budget (setting ppr_memory_budget_gb)
    cc_method: str = "auto"
    input_run_id: str = ""  # the ingest commit to read; default: run_id's own commit if published, else the live one
    force: bool = False  # make this run live even if a newer logical date is live

    def check(self) -> "BuildConfig":
        from g2i_core.graph.engine import CC_METHODS

        if self.cc_method not in CC_METHODS:
            raise ValueError(f"cc_method must be one of {CC_METHODS}, got {self.cc_method!r}")
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, got {self.engine!r}")
        if not (0 < self.train_fraction < 1 and 0 <= self.val_fraction < 1
                and self.train_fraction + self.val_fraction <= 1):
            raise ValueError(f"need 0 < train_fraction < 1, 0 <= val_fraction and their sum <= 1; got "
                             f"train_fraction={self.train_fraction}, val_fraction={self.val_fraction}")
        return self


# ---- split: the same answer in Python and in Spark ----------------------------------------------
def split_bucket(node_id: str) -> int:
    """0..9999 from the first 32 bits of sha256(node_id): depends on the id only."""
    return int(hashlib.sha256(node_id.encode("utf-8")).hexdigest()[:8], 16) % SPLIT_BUCKETS


def split_for(node_id: str, train_fraction: float = 0.8, val_fraction: float = 0.1) -> str:
    b = split_bucket(node_id)
    return "train" if b < train_fraction * SPLIT_BUCKETS else (
        "val" if b < (train_fraction + val_fraction) * SPLIT_BUCKETS else "test")


def split_column(node_id: "Column", train_fraction: float, val_fraction: float) -> "Column":
    from pyspark.sql import functions as F

    bucket = F.conv(F.substring(F.sha2(node_id, 256), 1, 8), 16, 10).cast("long") % SPLIT_BUCKETS
    return (F.when(bucket < train_fraction * SPLIT_BUCKETS, "train")
            .when(bucket < (train_fraction + val_fraction) * SPLIT_BUCKETS, "val").otherwise("test"))


# ---- transformations -------------------------------------------------------------------------------
def drop_dangling(edges: "DataFrame", nodes: "DataFrame") -> "DataFrame":
    """Edges whose both ends are nodes (Amazon dumps link to many products outside the file)."""
    ids = nodes.select("node_id")
    return (edges.join(ids.withColumnRenamed("node_id", "src"), "src", "left_semi")
            .join(ids.withColumnRenamed("node_id", "dst"), "dst", "left_semi")
            .select("src", "dst", "relation", "weight"))


def symmetrize(edges: "DataFrame") -> "DataFrame":
    """Both directions of every edge, once per (src, dst, relation), keeping the larger weight."""
    from pyspark.sql import functions as F

    reverse = edges.select(F.col("dst").alias("src"), F.col("src").alias("dst"), "relation", "weight")
    return edges.unionByName(reverse).groupBy("src", "dst", "relation").agg(F.max("weight").alias("weight"))


def degrees(nodes: "DataFrame", edges: "DataFrame") -> "DataFrame":
    """(node_id, in_degree, out_degree, degree) for every node, zeros for isolated ones."""
    from pyspark.sql import functions as F

    out_deg = edges.groupBy(F.col("src").alias("node_id")).agg(F.count(F.lit(1)).alias("out_degree"))
    in_deg = edges.groupBy(F.col("dst").alias("node_id")).agg(F.count(F.lit(1)).alias("in_degree"))
    d = (nodes.select("node_id").join(in_deg, "node_id", "left").join(out_deg, "node_id", "left")
         .fillna(0, ["in_degree", "out_degree"]))
    return d.withColumn("degree", F.col("in_degree") + F.col("out_degree"))


def image_status(nodes: "DataFrame", node_images: "DataFrame | None") -> "DataFrame":
    """(node_id, image_status, image_key); ``not_fetched`` where fetch-images has not run for a node."""
    from pyspark.sql import functions as F

    if node_images is None:
        return nodes.select("node_id", F.lit("not_fetched").alias("image_status"),
                            F.lit(None).cast("string").alias("image_key"))
    imgs = node_images.select("node_id", F.col("status").alias("image_status"), "image_key")
    return (nodes.select("node_id").join(imgs, "node_id", "left")
            .fillna("not_fetched", ["image_status"]))


def graph_nodes_frame(nodes: "DataFrame", degree: "DataFrame", components: "DataFrame", images: "DataFrame",
                      cfg: BuildConfig) -> "DataFrame":
    from pyspark.sql import functions as F

    comp = components.select(F.col("id").alias("node_id"), "component")
    sizes = comp.groupBy("component").agg(F.count(F.lit(1)).alias("component_size"))
    return (nodes.join(degree, "node_id").join(comp.join(sizes, "component"), "node_id").join(images, "node_id")
            .withColumn("split", split_column(F.col("node_id"), cfg.train_fraction, cfg.val_fraction)))


def graph_stats(graph_nodes: "DataFrame", graph_edges: "DataFrame", dropped: dict[str, int]) -> dict:
    """Counts per relation, degree quantiles, component sizes, image coverage and split sizes (few passes)."""
    from pyspark.sql import functions as F

    # one aggregate over the nodes gives node, split, image, real-image and isolated counts
    groups = graph_nodes.groupBy("split", "image_status").agg(
        F.count(F.lit(1)).alias("n"), F.sum(F.col("has_real_image").cast("int")).alias("real"),
        F.sum((F.col("degree") == 0).cast("int")).alias("isolated")).collect()
    quantiles = graph_nodes.approxQuantile(DEGREE_COLUMNS, QUANTILES, 0.001)
    comps = graph_nodes.select("component", "component_size").distinct()
    largest = [r["component_size"] for r in comps.orderBy(F.desc("component_size")).limit(10).collect()]
    relation_counts = graph_edges.groupBy("relation").count().collect()
    return stats_dict([r.asDict() for r in groups], dict(zip(DEGREE_COLUMNS, quantiles, strict=True)),
                      components=comps.count(), largest=largest,
                      edges_by_relation={r["relation"]: r["count"] for r in relation_counts}, dropped=dropped)


def stats_dict(groups: list[dict], quantiles: dict[str, list[float]], *, components: int, largest: list[int],
               edges_by_relation: dict[str, int], dropped: dict[str, int]) -> dict:
    """The stats JSON both engines publish. ``groups``: one dict per (split, image_status) with ``n`` nodes,
    ``real`` images and ``isolated`` nodes; ``quantiles``: per degree column, the values at QUANTILES;
    ``largest``: the largest component sizes, descending."""
    n_nodes = sum(r["n"] for r in groups)

    def total(key):
        out: dict[str, int] = {}
        for r in groups:
            out[r[key]] = out.get(r[key], 0) + r["n"]
        return dict(sorted(out.items()))

    images = total("image_status")
    edges_by_relation = dict(sorted(edges_by_relation.items()))
    return {
        "nodes": n_nodes,
        "edges": sum(edges_by_relation.values()),
        "edges_by_relation": edges_by_relation,
        "dangling_dropped_by_relation": dropped,
        "degree_quantiles": {c: dict(zip(["p50", "p90", "p99", "max"], [float(v) for v in q], strict=True))
                             for c, q in quantiles.items()},
        "components": components,
        "largest_component_sizes": largest,
        "largest_component_fraction": round(largest[0] / n_nodes, 6) if n_nodes else 0.0,
        "isolated_nodes": sum(r["isolated"] for r in groups),
        "image_status": images,
        "image_coverage": round(images.get("ok", 0) / n_nodes, 6) if n_nodes else 0.0,
        "real_image_fraction": round(sum(r["real"] or 0 for r in groups) / n_nodes, 6) if n_nodes else 0.0,
        "split": total("split"),
    }


def dropped_by_relation(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """Dangling edges dropped per relation, for the relations that lost any."""
    return {rel: before[rel] - after.get(rel, 0) for rel in sorted(before) if before[rel] != after.get(rel, 0)}


# ---- the job ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BuildInputs:
    """What one build reads: nodes and edges of ONE ingest commit, and node_images when fetch-images ran."""
    commit: dict  # the ingest commit: {"nodes": manifest, "edges": manifest, ...}
    inputs: dict  # table -> run id, recorded in the stats
    run_id: str
    logical_date: str | None
    images: "tuple[Storage, dict] | None"  # (storage, node_images manifest)


def resolve_inputs(storage: "Storage", out: "Storage", cfg: BuildConfig) -> BuildInputs:
    """The ingest commit to build from: the given run, else the live one. Reading "latest nodes" and
    "latest edges" separately could pair a new edges table with old nodes and drop edges as dangling."""
    pinned = cfg.input_run_id or (cfg.run_id if cfg.run_id and storage.is_published("nodes", cfg.run_id) else None)
    commit = storage.read_commit("nodes", pinned)
    if "edges" not in commit:
        raise ValueError(f"nodes run {commit['nodes']['run_id']} under {storage.root} was not committed together "
                         "with an edges table; re-run ingest")
    inputs = {name: commit[name]["run_id"] for name in ("nodes", "edges")}
    images_store = out if out.is_published("node_images") else storage
    images = (images_store, images_store.manifest("node_images")) if images_store.is_published("node_images") \
        else None
    if images:
        inputs["node_images"] = images[1]["run_id"]
    return BuildInputs(commit, inputs, cfg.run_id or inputs["nodes"], commit["nodes"].get("logical_date"), images)


def publish_graph(out: "Storage", src: BuildInputs, cfg: BuildConfig, attempts: "list", stats: dict) -> dict:
    """Stats JSON, then graph_edges and graph_nodes committed as one version (graph_nodes primary)."""
    stats.update(run_id=src.run_id, inputs=src.inputs, config=asdict(cfg))
    out.put_json(out.uri("graph_stats", f"{src.run_id}.json"), stats)
    extra = {"stats": stats, "config": asdict(cfg), "inputs": src.inputs}
    out.commit(attempts, extra={"graph_edges": extra, "graph_nodes": extra},
               rows={"graph_edges": stats["edges"], "graph_nodes": stats["nodes"]}, logical_date=src.logical_date,
               force=cfg.force)
    log.info("build-graph run=%s (%s): %d nodes, %d edges %s, dropped dangling %s, %d components (largest %s), "
             "image coverage %.1f%%", src.run_id, stats["engine"], stats["nodes"], stats["edges"],
             stats["edges_by_relation"], stats["dangling_dropped_by_relation"], stats["components"],
             stats["largest_component_sizes"][:3], 100 * stats["image_coverage"])
    return stats


def build_graph(storage: "Storage", cfg: BuildConfig, out: "Storage | None" = None, *, spark_master: str,
                spark: "Callable[[], SparkSession]", memory_budget: int | None = None) -> dict:
    """Build and publish the graph with the engine ``cfg.engine`` names (``auto``: see ``engine_for``);
    ``spark`` makes the session, and is called only when the Spark engine runs."""
    from g2i_core.graph.local import engine_for, run_build_graph_local
    from g2i_core.ppr.api import resolve_memory_budget

    cfg = cfg.check()
    out = out or storage
    engine = cfg.engine
    if engine == "auto":
        engine = engine_for(storage, resolve_inputs(storage, out, cfg).commit, cfg, spark_master=spark_master,
                            memory_budget=resolve_memory_budget(memory_budget))
    if engine == "local":
        return run_build_graph_local(storage, cfg, out)
    return run_build_graph(spark(), storage, cfg, out, memory_budget=memory_budget)


def _read(spark: "SparkSession", storage: "Storage", manifest: dict) -> "DataFrame":
    return spark.read.parquet(*[storage.spark_uri(u) for u in storage.manifest_files(manifest)])


def run_build_graph(spark: "SparkSession", storage: "Storage", cfg: BuildConfig,
                    out: "Storage | None" = None, memory_budget: int | None = None) -> dict:
    """Build and publish the graph on Spark from the tables under ``storage``; returns the stats dict.
    ``memory_budget`` (bytes; default: the ``ppr_memory_budget_gb`` setting) decides ``cc_method="auto"``."""
    from pyspark.sql import functions as F

    from g2i_core.graph.engine import cc_method_for, connected_components
    from g2i_core.ppr.api import resolve_memory_budget

    cfg = cfg.check()
    out = out or storage
    # 1. Inputs: nodes and edges of one ingest commit, and node_images when fetch-images has run.
    src = resolve_inputs(storage, out, cfg)
    nodes, edges = _read(spark, storage, src.commit["nodes"]), _read(spark, storage, src.commit["edges"])
    node_images = _read(spark, *src.images) if src.images else None
    if cfg.relations:
        edges = edges.where(F.col("relation").isin(list(cfg.relations)))
    # 2. Clean edges: dangling ends out, optionally both directions.
    kept = drop_dangling(edges, nodes)
    before = {r["relation"]: r["count"] for r in edges.groupBy("relation").count().collect()}
    after = {r["relation"]: r["count"] for r in kept.groupBy("relation").count().collect()}
    dropped = dropped_by_relation(before, after)
    graph_edges = symmetrize(kept) if cfg.symmetrize else kept
    edges_attempt = out.begin("graph_edges", src.run_id)
    edges_uri = storage.spark_uri(edges_attempt.uri)
    graph_edges.write.mode("errorifexists").parquet(edges_uri)
    graph_edges = spark.read.parquet(edges_uri)
    # 3. Node features: degree, component, image status, split.
    cc_method = cfg.cc_method
    if cc_method == "auto":  # from the ingest commit's row counts: no pass over the data to decide
        rows = (src.commit["nodes"].get("rows"), src.commit["edges"].get("rows"))
        cc_method = "graphx" if None in rows else cc_method_for(
            rows[0], rows[1] * (2 if cfg.symmetrize else 1), spark_master=spark.sparkContext.master,
            memory_budget=resolve_memory_budget(memory_budget))
    started = time.monotonic()
    components = connected_components(spark, nodes.select(F.col("node_id").alias("id")), graph_edges,
                                      max_iterations=cfg.cc_max_iterations, method=cc_method).persist()
    components.count()  # computed once, here, so its time is its own; the writes below read it
    cc_seconds = round(time.monotonic() - started, 3)
    graph_nodes = graph_nodes_frame(nodes, degrees(nodes, graph_edges), components,
                                    image_status(nodes, node_images), cfg)
    nodes_attempt = out.begin("graph_nodes", src.run_id)
    nodes_uri = storage.spark_uri(nodes_attempt.uri)
    graph_nodes.write.mode("errorifexists").parquet(nodes_uri)
    # 4. Stats from what was written, then one commit.
    stats = graph_stats(spark.read.parquet(nodes_uri), graph_edges, dropped)
    stats.update(engine="spark", cc_method=cc_method, cc_seconds=cc_seconds)
    components.unpersist()
    return publish_graph(out, src, cfg, [edges_attempt, nodes_attempt], stats)
