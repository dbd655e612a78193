"""build-graph on the ingested Goodreads sample (real Spark): dangling edges dropped, components checked
against networkx, split equal to the Python hash, image status attached, stats published."""

import json

import networkx as nx
import pyarrow as pa
import pytest

from g2i_core.graph.build import BuildConfig, run_build_graph, split_for
from g2i_core.ingest.job import IngestConfig, run_ingest
from g2i_core.sample.generator import DUMP_FILES
from g2i_core.storage import Storage

pytestmark = [pytest.mark.spark, pytest.mark.slow]


@pytest.fixture(scope="module")
def ingested(spark, sample_dir, tmp_path_factory):
    storage = Storage(f"file://{tmp_path_factory.mktemp('graph')}/store")
    raw = f"file://{sample_dir / 'raw' / DUMP_FILES['goodreads']}"
    run_ingest(spark, storage, IngestConfig(source="goodreads", raw_uri=raw, logical_date="2026-11-26"))
    truth = json.loads((sample_dir / "truth" / "goodreads.json").read_text())
    return storage, truth


def test_build_graph_on_sample(spark, ingested):
    storage, truth = ingested
    some = sorted(r["node_id"] for r in storage.read_table("nodes", columns=["node_id"]).to_pylist())[:3]
    storage.publish_table("node_images", pa.Table.from_pylist([
        {"node_id": some[0], "image_key": "images/ab/abc.png", "status": "ok"},
        {"node_id": some[1], "image_key": None, "status": "not_found"},
        {"node_id": some[2], "image_key": None, "status": "too_many_pixels"}]), "imgs")
    stats = run_build_graph(spark, storage, BuildConfig())
    assert stats["cc_method"] == "local"  # auto: a local master and a graph far inside the memory budget

    expected_edges = {r: n - truth["dangling_by_relation"].get(r, 0) for r, n in truth["edges_by_relation"].items()}
    assert stats["edges_by_relation"] == expected_edges
    assert stats["dangling_dropped_by_relation"] == truth["dangling_by_relation"]
    nodes = storage.read_table("graph_nodes").to_pylist()
    edges = storage.read_table("graph_edges").to_pylist()
    ids = {n["node_id"] for n in nodes}
    assert len(nodes) == truth["nodes_expected"] == stats["nodes"]
    assert all(e["src"] in ids and e["dst"] in ids for e in edges)
    assert sum(n["in_degree"] for n in nodes) == sum(n["out_degree"] for n in nodes) == len(edges)

    g = nx.Graph()
    g.add_nodes_from(ids)
    g.add_edges_from((e["src"], e["dst"]) for e in edges)
    truth_components = sorted((sorted(c) for c in nx.connected_components(g)), key=lambda c: c[0])
    assert stats["components"] == len(truth_components)
    by_component = {}
    for n in nodes:
        by_component.setdefault(n["component"], []).append(n["node_id"])
    assert sorted(sorted(v) for v in by_component.values()) == sorted(truth_components)
    assert all(n["component"] == min(by_component[n["component"]]) for n in nodes)

    assert all(n["split"] == split_for(n["node_id"]) for n in nodes)
    status = {n["node_id"]: n["image_status"] for n in nodes}
    assert [status[i] for i in some] == ["ok", "not_found", "too_many_pixels"]
    assert stats["image_status"]["not_fetched"] == len(nodes) - 3
    assert storage.get_json(storage.uri("graph_stats", f"{stats['run_id']}.json")) == json.loads(
        json.dumps(stats))
    assert storage.manifest("graph_nodes")["extra"]["stats"]["edges"] == len(edges)


def test_symmetrize_adds_every_reverse_edge_once(spark, ingested, tmp_path):
    storage, _ = ingested
    out = Storage(f"file://{tmp_path}/sym")
    stats = run_build_graph(spark, storage, BuildConfig(symmetrize=True, relations=("similar_books",)), out)
    edges = {(e["src"], e["dst"]) for e in out.read_table("graph_edges").to_pylist()}
    ids = {r["node_id"] for r in storage.read_table("nodes", columns=["node_id"]).to_pylist()}
    directed = {(e["src"], e["dst"]) for e in storage.read_table("edges").to_pylist()
                if e["src"] in ids and e["dst"] in ids}
    assert edges == directed | {(d, s) for s, d in directed}
    assert stats["edges"] == len(edges) and all((d, s) in edges for s, d in edges)


def test_vertex_index_is_dense_and_in_id_order_across_partitions(spark):
    from pyspark.sql import functions as F

    from g2i_core.graph.engine import index_vertices

    ids = [f"n{i:05d}" for i in range(3000)]
    # duplicates and several input partitions: the index must still be one row per id, 0..n-1 by id
    frame = spark.createDataFrame([(i,) for i in ids + ids[:500]], "id string").repartition(7, F.rand(seed=3))
    got = sorted((r["id"], r["vid"]) for r in index_vertices(frame).collect())
    assert got == [(node_id, n) for n, node_id in enumerate(sorted(ids))]
    assert index_vertices(spark.createDataFrame([], "id string")).count() == 0


def test_local_components_equal_graphx(spark, ingested):
    """scipy on the driver and GraphX on the executors label every vertex alike (isolated ones included)."""
    from g2i_core.graph.engine import connected_components

    storage, _ = ingested
    nodes = spark.read.parquet(*[storage.spark_uri(u) for u in storage.published_files("nodes")])
    edges = spark.read.parquet(*[storage.spark_uri(u) for u in storage.published_files("edges")])
    extra = spark.createDataFrame([("zz-isolated",), ("zz-pair-a",), ("zz-pair-b",)], "id string")
    vertices = nodes.selectExpr("node_id AS id").unionByName(extra)
    pair = spark.createDataFrame([("zz-pair-b", "zz-pair-a")], "src string, dst string")
    edges = edges.select("src", "dst").join(nodes.selectExpr("node_id AS dst"), "dst").unionByName(pair)

    by_method = {m: {r["id"]: r["component"] for r in connected_components(spark, vertices, edges,
                                                                           method=m).collect()}
                 for m in ("graphx", "local")}
    assert by_method["local"] == by_method["graphx"]
    assert len(by_method["local"]) == vertices.count()
    assert by_method["local"]["zz-isolated"] == "zz-isolated"
    assert by_method["local"]["zz-pair-b"] == by_method["local"]["zz-pair-a"] == "zz-pair-a"
    assert len(set(by_method["local"].values())) > 1


def test_cc_method_auto_rule():
    from g2i_core.graph.engine import cc_method_for, local_cc_memory_bytes

    need = local_cc_memory_bytes(1_000_000, 10_000_000)
    assert cc_method_for(1_000_000, 10_000_000, spark_master="local[2]", memory_budget=need) == "local"
    assert cc_method_for(1_000_000, 10_000_000, spark_master="local[2]", memory_budget=need - 1) == "graphx"
    assert cc_method_for(1_000, 10_000, spark_master="spark://head:7077", memory_budget=need) == "graphx"
    with pytest.raises(ValueError, match="cc_method"):
        BuildConfig(cc_method="networkx").check()


def _rows(storage, table):
    return sorted(storage.read_table(table).to_pylist(), key=lambda r: tuple(str(v) for v in r.values()))


@pytest.mark.parametrize("cfg", [BuildConfig(), BuildConfig(symmetrize=True, relations=("similar_books",),
                                                            train_fraction=0.5, val_fraction=0.25)],
                         ids=["default", "symmetrized"])
def test_local_engine_writes_what_the_spark_job_writes(spark, ingested, tmp_path, cfg):
    """The same rows, types and stats from both engines, and Spark reads the local engine's tables."""
    from g2i_core.graph.local import run_build_graph_local

    storage, _ = ingested
    some = sorted(r["node_id"] for r in storage.read_table("nodes", columns=["node_id"]).to_pylist())[:2]
    images = Storage(f"file://{tmp_path}/images")
    images.publish_table("node_images", pa.Table.from_pylist([
        {"node_id": some[0], "image_key": "images/ab/abc.png", "status": "ok"},
        {"node_id": some[1], "image_key": None, "status": "not_found"}]), "imgs")
    outs = {engine: Storage(f"file://{tmp_path}/{engine}") for engine in ("spark", "local")}
    for out in outs.values():  # node_images is read from the output root when published there
        out.publish_table("node_images", images.read_table("node_images"), "imgs")
    stats = {"spark": run_build_graph(spark, storage, cfg, outs["spark"]),
             "local": run_build_graph_local(storage, cfg, outs["local"])}

    assert [s.pop("engine") for s in stats.values()] == ["spark", "local"]
    for s in stats.values():
        s.pop("cc_seconds")
    assert stats["spark"]["cc_method"] == "local"  # scipy inside the Spark job too: same component labels
    assert stats["local"] == stats["spark"]
    for table in ("graph_nodes", "graph_edges"):
        local, by_spark = outs["local"].read_table(table), outs["spark"].read_table(table)
        assert local.schema.remove_metadata() == by_spark.schema.remove_metadata()
        assert _rows(outs["local"], table) == _rows(outs["spark"], table)
    local_nodes = _rows(outs["local"], "graph_nodes")
    assert {r["image_status"] for r in local_nodes} == {"ok", "not_found", "not_fetched"}
    assert len({r["split"] for r in local_nodes}) == 3
    # Spark (ppr's distributed methods) reads the local engine's files with the same types
    frame = spark.read.parquet(*[outs["local"].spark_uri(u) for u in outs["local"].published_files("graph_nodes")])
    assert dict(frame.dtypes)["ingested_at"] == "timestamp" and frame.count() == stats["local"]["nodes"]


def test_engine_auto_rule(ingested):
    from g2i_core.graph.build import build_graph
    from g2i_core.graph.local import engine_for, local_build_memory_bytes, uncompressed_bytes

    storage, _ = ingested
    commit = storage.read_commit("nodes")
    need = local_build_memory_bytes(uncompressed_bytes(storage, commit["nodes"]), commit["nodes"]["rows"],
                                    commit["edges"]["rows"])
    assert need > uncompressed_bytes(storage, commit["nodes"]) > 0
    cfg = BuildConfig()
    assert engine_for(storage, commit, cfg, spark_master="local[2]", memory_budget=need) == "local"
    assert engine_for(storage, commit, cfg, spark_master="local[2]", memory_budget=need - 1) == "spark"
    assert engine_for(storage, commit, cfg, spark_master="spark://head:7077", memory_budget=need) == "spark"
    assert engine_for(storage, commit, BuildConfig(cc_method="graphx"), spark_master="local[2]",
                      memory_budget=need) == "spark"

    def no_spark():
        raise AssertionError("the local engine started Spark")

    out = Storage(storage.root.replace("/store", "/auto-out"))
    stats = build_graph(storage, cfg, out, spark_master="local[2]", spark=no_spark, memory_budget=need)
    assert stats["engine"] == "local" and out.is_published("graph_nodes")
    with pytest.raises(ValueError, match="engine"):
        BuildConfig(engine="pandas").check()
