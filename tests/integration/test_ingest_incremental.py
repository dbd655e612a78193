"""Nightly refresh: a delta dump is upserted into the latest version without re-reading the full dump,
and node_changes lists exactly what changed; a full re-dump reports removed nodes too."""

import gzip
import json

import pytest

from g2i_core.ingest.job import IngestConfig, run_ingest
from g2i_core.sample.generator import DUMP_FILES, generate_sample

pytestmark = [pytest.mark.spark]


def _write_dump(path, records, extra_lines=()):
    with gzip.open(path, "wt") as fh:
        fh.write("".join(json.dumps(r) + "\n" for r in records) + "".join(line + "\n" for line in extra_lines))
    return f"file://{path}"


def test_delta_upsert_then_full_redump(spark, file_storage, tmp_path):
    generate_sample(tmp_path / "s", nodes=60, seed=2, formats=("goodreads",), render_limit=0)
    base_dump = tmp_path / "s" / "raw" / DUMP_FILES["goodreads"]
    base = run_ingest(spark, file_storage, IngestConfig(source="goodreads", raw_uri=f"file://{base_dump}",
                                                         logical_date="2026-11-01"))
    records = {}
    for line in gzip.open(base_dump, "rt"):
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if rec.get("book_id"):
            records.setdefault(rec["book_id"], rec)
    old_edges = file_storage.read_table("edges").to_pylist()
    ids = sorted(records)
    changed, same = dict(records[ids[0]]), dict(records[ids[1]])
    changed["title"] = changed["title_without_series"] = "A Brand New Title"
    changed["similar_books"] = [ids[2]]
    new = dict(records[ids[3]], book_id="777", title="Fresh", title_without_series="Fresh", similar_books=[ids[0]])

    # 1. Delta: one updated, one unchanged, one new record and one broken line.
    delta = _write_dump(tmp_path / "delta.json.gz", [changed, same, new], ["{broken"])
    report = run_ingest(spark, file_storage, IngestConfig(source="goodreads", raw_uri=delta, mode="delta",
                                                           logical_date="2026-11-02", max_quarantine_fraction=0.3))
    assert (report.lines_in, report.nodes_out, report.quarantined) == (4, 3, 1)
    assert report.base_run_id == base.run_id and report.total_nodes == base.nodes_out + 1
    changes = {r["node_id"]: r["change"] for r in file_storage.read_table("node_changes").to_pylist()}
    assert changes == {f"goodreads:{ids[0]}": "updated", "goodreads:777": "new"}
    nodes = {n["node_id"]: n for n in file_storage.read_table("nodes").to_pylist()}
    assert nodes[f"goodreads:{ids[0]}"]["text"] == "A Brand New Title"
    assert str(nodes[f"goodreads:{ids[4]}"]["ingested_at"])[:10] == "2026-11-01"  # untouched rows kept as they were
    edges = file_storage.read_table("edges").to_pylist()
    touched = {f"goodreads:{i}" for i in (ids[0], ids[1], "777")}
    assert sorted((e["src"], e["dst"]) for e in edges if e["src"] not in touched) == sorted(
        (e["src"], e["dst"]) for e in old_edges if e["src"] not in touched)
    assert [e["dst"] for e in edges if e["src"] == f"goodreads:{ids[0]}"] == [f"goodreads:{ids[2]}"]

    # 2. A full dump without those two nodes: both are reported as removed.
    full = _write_dump(tmp_path / "full.json.gz", [records[i] for i in ids[1:]])
    again = run_ingest(spark, file_storage, IngestConfig(source="goodreads", raw_uri=full, logical_date="2026-11-03"))
    changes = {}
    for r in file_storage.read_table("node_changes").to_pylist():
        changes.setdefault(r["change"], set()).add(r["node_id"])
    assert changes == {"removed": {f"goodreads:{ids[0]}", "goodreads:777"}}
    assert again.base_run_id == report.run_id and again.total_nodes == len(ids) - 1
