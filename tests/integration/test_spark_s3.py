"""Spark reads and writes Parquet on s3a:// against the local server, and runs a graph algorithm."""

import pytest

pytestmark = [pytest.mark.spark, pytest.mark.s3]


def test_spark_parquet_roundtrip_on_s3a_and_publish(spark, s3_storage):
    df = spark.createDataFrame([(f"n{i}", i % 3) for i in range(100)], "node_id string, bucket int")
    attempt = s3_storage.begin("spark_table", "r1")
    target = s3_storage.spark_uri(attempt.uri)
    assert target.startswith("s3a://")
    df.repartition(3).write.mode("errorifexists").parquet(target)
    manifest = s3_storage.publish_written(attempt, rows=100)
    assert manifest["rows"] == 100 and len(manifest["files"]) >= 1
    # pyarrow reads what Spark wrote through the published manifest ...
    table = s3_storage.read_table("spark_table")
    assert sorted(table.column("node_id").to_pylist()) == sorted(f"n{i}" for i in range(100))
    # ... and Spark reads the published files back
    back = spark.read.parquet(*[s3_storage.spark_uri(u) for u in s3_storage.published_files("spark_table")])
    assert back.groupBy("bucket").count().orderBy("bucket").collect()[0]["count"] == 34


def test_connected_components_on_a_small_graph(spark):
    from g2i_core.graph.engine import backend, connected_components

    assert backend(spark) in {"graphframes", "graphx-bridge"}
    v = spark.createDataFrame([(x,) for x in "abcdefg"], "id string")
    e = spark.createDataFrame([("a", "b"), ("b", "c"), ("c", "a"), ("d", "e")], "src string, dst string")
    comps = {r["id"]: r["component"] for r in connected_components(spark, v, e).collect()}
    assert comps == {"a": "a", "b": "a", "c": "a", "d": "d", "e": "d", "f": "f", "g": "g"}
