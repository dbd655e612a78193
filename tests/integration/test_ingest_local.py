"""``g2i ingest --engine local`` publishes what the Spark job publishes: the same nodes, edges, quarantine and
node_changes rows, the same report, in files Spark reads; and it refuses a broken dump the same way."""

from __future__ import annotations

import gzip
import json

import pytest

from g2i_core.ingest.job import IngestConfig, ingest, run_ingest
from g2i_core.ingest.local import run_ingest_local
from g2i_core.sample.generator import DUMP_FILES, generate_sample
from g2i_core.storage import Storage

pytestmark = [pytest.mark.spark]
REPORT_FIELDS = ("lines_in", "nodes_out", "duplicates", "quarantined", "quarantine_reasons", "edges_by_relation",
                 "total_nodes", "changes", "base_run_id", "carried_nodes", "raw_files")


def _rows(storage: Storage, table: str, drop: tuple[str, ...] = ()) -> list[tuple]:
    rows = storage.read_table(table).to_pylist()
    return sorted(tuple((k, str(v)) for k, v in sorted(r.items()) if k not in drop) for r in rows)


def _same_tables(spark_root: Storage, local_root: Storage, tables=("nodes", "edges", "quarantine")) -> None:
    for table in tables:
        assert _rows(local_root, table) == _rows(spark_root, table), table


def _report(report) -> dict:
    return {k: getattr(report, k) for k in REPORT_FIELDS}


@pytest.mark.parametrize("source", ["goodreads", "amazon2014", "amazon2018"])
def test_local_engine_publishes_what_the_spark_job_publishes(spark, sample_dir, tmp_path, source):
    dump = f"file://{sample_dir / 'raw' / DUMP_FILES[source]}"
    cfg = IngestConfig(source=source, raw_uri=dump, logical_date="2026-11-20", max_quarantine_fraction=0.2)
    on_spark, on_local = Storage(f"file://{tmp_path}/spark"), Storage(f"file://{tmp_path}/local")
    want = run_ingest(spark, on_spark, cfg)
    got = run_ingest_local(on_local, cfg)
    assert _report(got) == _report(want) and (got.engine, want.engine) == ("local", "spark")
    assert got.quarantined > 0 and got.duplicates > 0 and got.nodes_out >= 250
    _same_tables(on_spark, on_local)
    # Spark reads the local engine's files with the types it writes itself
    written = spark.read.parquet(*[on_local.spark_uri(u) for u in on_local.published_files("nodes")])
    assert dict(written.dtypes)["ingested_at"] == "timestamp" and written.count() == got.total_nodes
    assert written.where("cast(ingested_at as date) = date'2026-11-20'").count() == got.total_nodes


def test_local_engine_delta_and_redump_match_the_spark_job(spark, tmp_path):
    generate_sample(tmp_path / "s", nodes=80, seed=3, formats=("goodreads",), render_limit=0)
    base_dump = tmp_path / "s" / "raw" / DUMP_FILES["goodreads"]
    records = [json.loads(line) for line in gzip.open(base_dump, "rt") if line.startswith('{"') and '"book_id"' in line]
    records = [r for r in records if isinstance(r.get("book_id"), str) and r["book_id"]]
    changed = dict(records[0], title="Changed", title_without_series="Changed", similar_books=[records[2]["book_id"]])
    delta = tmp_path / "delta.json.gz"
    with gzip.open(delta, "wt") as fh:
        fh.write("\n".join(json.dumps(r) for r in [changed, records[1], dict(records[3], book_id="9001")]) + "\n{bad\n")
    redump = tmp_path / "redump.json.gz"
    with gzip.open(redump, "wt") as fh:
        fh.write("\n".join(json.dumps(r) for r in records[2:]) + "\n")
    steps = [IngestConfig(source="goodreads", raw_uri=f"file://{base_dump}", logical_date="2026-11-01"),
             IngestConfig(source="goodreads", raw_uri=f"file://{delta}", mode="delta", logical_date="2026-11-02",
                          max_quarantine_fraction=0.5),
             IngestConfig(source="goodreads", raw_uri=f"file://{redump}", logical_date="2026-11-03")]
    on_spark, on_local = Storage(f"file://{tmp_path}/spark"), Storage(f"file://{tmp_path}/local")
    for cfg in steps:
        want, got = run_ingest(spark, on_spark, cfg), run_ingest_local(on_local, cfg)
        assert _report(got) == _report(want), cfg.mode
        _same_tables(on_spark, on_local, ("nodes", "edges", "quarantine", "node_changes")
                     if on_local.is_published("node_changes") else ("nodes", "edges", "quarantine"))
        assert _rows(on_local, "nodes", drop=("ingested_at",)) == _rows(on_spark, "nodes", drop=("ingested_at",))
    assert got.changes.get("removed", 0) >= 2  # the re-dump lost records[0] and records[1]


def test_local_engine_refuses_a_broken_dump_and_publishes_nothing(file_storage, tmp_path):
    dump = tmp_path / "broken.json.gz"
    with gzip.open(dump, "wt") as fh:
        fh.write('{"book_id": "1"}\n' + "not json\n" * 3)
    with pytest.raises(RuntimeError, match="above the limit"):
        run_ingest_local(file_storage, IngestConfig(source="goodreads", raw_uri=f"file://{dump}"))
    assert not file_storage.is_published("nodes")
    empty = tmp_path / "empty.json.gz"
    with gzip.open(empty, "wt") as fh:
        fh.write("\n\n")
    with pytest.raises(ValueError, match="holds no lines"):
        run_ingest_local(file_storage, IngestConfig(source="goodreads", raw_uri=f"file://{empty}"))


def test_the_front_runs_the_local_engine_without_a_spark_session(file_storage, sample_dir):
    def no_spark():
        raise AssertionError("the local engine must not start Spark")

    cfg = IngestConfig(source="goodreads", raw_uri=f"file://{sample_dir / 'raw' / DUMP_FILES['goodreads']}",
                       logical_date="2026-11-20", max_quarantine_fraction=0.2)
    report = ingest(file_storage, cfg, spark_master="local[2]", spark=no_spark, memory_budget=8 << 30)
    assert report.nodes_out >= 250
    assert file_storage.manifest("nodes")["extra"]["config"]["engine"] == "auto"
    assert file_storage.manifest("nodes")["extra"]["report"]["engine"] == "local"
    assert set(file_storage.manifest("nodes")["extra"]["report"]["seconds"]) == {"read_and_parse", "dedupe_and_write"}
