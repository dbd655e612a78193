"""Spark ingest of the sample dumps (real local Spark, real S3 server): exact counts from the truth files."""

import gzip
import json

import pytest

from g2i_core.ingest.job import IngestConfig, run_ingest
from g2i_core.sample.generator import DUMP_FILES

pytestmark = [pytest.mark.spark, pytest.mark.s3]
DAY = "2026-11-26"


def _upload_dump(sample_dir, storage, fmt):
    uri = storage.uri("raw", DUMP_FILES[fmt])
    storage.put_bytes(uri, (sample_dir / "raw" / DUMP_FILES[fmt]).read_bytes())
    return uri


@pytest.mark.parametrize("fmt", ["goodreads", "amazon2014", "amazon2018"])
def test_ingest_matches_truth_exactly(spark, s3_storage, sample_dir, fmt):
    truth = json.loads((sample_dir / "truth" / f"{fmt}.json").read_text())
    raw = _upload_dump(sample_dir, s3_storage, fmt)
    report = run_ingest(spark, s3_storage, IngestConfig(source=fmt, raw_uri=raw, logical_date=DAY, chunk_lines=100))

    assert (report.lines_in, report.nodes_out, report.duplicates, report.quarantined) == (
        truth["lines"], truth["nodes_expected"], truth["duplicates"], truth["quarantined"])
    assert report.quarantine_reasons == truth["quarantine_reasons"]
    assert report.edges_by_relation == truth["edges_by_relation"]
    manifest = s3_storage.manifest("nodes")
    assert manifest["rows"] == truth["nodes_expected"]
    assert manifest["extra"]["report"]["lines_in"] == report.nodes_out + report.duplicates + report.quarantined
    # the published manifest carries the stage timings (the benchmarks read them from there)
    assert set(manifest["extra"]["report"]["seconds"]) == {"rechunk", "parse_and_count", "dedupe_and_write"}

    nodes = s3_storage.read_table("nodes").to_pylist()
    ids = {n["node_id"] for n in nodes}
    prefix = "goodreads:" if fmt == "goodreads" else "amazon:"
    assert len(ids) == len(nodes) and all(i.startswith(prefix) for i in ids)
    assert not any(("&amp;" in n["text"] or "<i>" in n["text"] or "<b>" in n["text"]) for n in nodes)
    assert sum("Café & Crème" in n["text"] or "Tom & Jerry's Night" in n["text"] for n in nodes) > 0
    assert sum(not n["has_real_image"] for n in nodes) == truth["no_image"] + truth["nophoto"]
    assert {str(n["ingested_at"])[:10] for n in nodes} == {DAY}

    edges = s3_storage.read_table("edges").to_pylist()
    assert not any(e["src"] == e["dst"] for e in edges)
    dangling = {}
    for e in edges:
        if e["dst"] not in ids:
            dangling[e["relation"]] = dangling.get(e["relation"], 0) + 1
    assert dangling == truth["dangling_by_relation"]
    quarantine = s3_storage.read_table("quarantine").to_pylist()
    assert sorted(q["reason"] for q in quarantine) == sorted(
        r for r, k in truth["quarantine_reasons"].items() for _ in range(k))
    assert all(q["raw"] and q["line_no"] >= 1 for q in quarantine)


def _sorted_rows(storage, name):
    return sorted(json.dumps(r, sort_keys=True, default=str) for r in storage.read_table(name).to_pylist())


def test_rerun_replaces_and_keeps_tables_identical(spark, file_storage, tmp_path):
    from g2i_core.sample.generator import generate_sample

    generate_sample(tmp_path / "s", nodes=60, seed=1, formats=("amazon2018",), render_limit=0)
    raw = f"file://{tmp_path / 's' / 'raw' / DUMP_FILES['amazon2018']}"
    cfg = IngestConfig(source="amazon2018", raw_uri=raw, logical_date=DAY, chunk_lines=20)
    run_ingest(spark, file_storage, cfg)
    first = {t: _sorted_rows(file_storage, t) for t in ("nodes", "edges", "quarantine")}
    run_ingest(spark, file_storage, cfg)
    assert {t: _sorted_rows(file_storage, t) for t in ("nodes", "edges", "quarantine")} == first
    assert len({u.split("/run=")[1].split("/")[0] for u in file_storage.list(file_storage.uri("nodes"))
                if "/run=" in u}) == 1
    assert not file_storage.list(file_storage.uri("_staging"))  # chunks are cleaned up


def test_broken_dump_fails_above_quarantine_threshold_and_publishes_nothing(spark, file_storage, tmp_path):
    dump = tmp_path / "broken.json.gz"
    good = [json.dumps({"book_id": str(i), "title": f"B{i}"}) for i in range(6)]
    with gzip.open(dump, "wt") as fh:
        fh.write("\n".join(good + ["{{{ garbage"] * 4) + "\n")
    cfg = IngestConfig(source="goodreads", raw_uri=f"file://{dump}", logical_date=DAY, max_quarantine_fraction=0.2)
    with pytest.raises(RuntimeError, match=r"4 of 10 lines \(40.0%\) were quarantined"):
        run_ingest(spark, file_storage, cfg)
    assert not file_storage.is_published("nodes") and not file_storage.is_published("quarantine")
    # the same dump passes when the operator accepts that share of bad lines
    report = run_ingest(spark, file_storage, IngestConfig(**{**cfg.__dict__, "max_quarantine_fraction": 0.5}))
    assert (report.nodes_out, report.quarantined) == (6, 4)
