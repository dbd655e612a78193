"""The native (Spark JSON reader) parse gives, line for line, what the Python parser gives: the same nodes,
cleaned text, attrs JSON and content hashes (delta mode compares hashes across versions), and the same
quarantine rows with their line numbers and reasons."""

from __future__ import annotations

import gzip
import json

import pytest

from g2i_core.ingest.chunking import utf8_flags
from g2i_core.ingest.job import parse_lines
from tests.ingest_cases import RAW_LINES, TRICKY_GOODREADS

pytestmark = [pytest.mark.spark]

def _frame(spark, lines: list[bytes]):
    rows = [("u", i, line, ok) for i, (line, ok) in enumerate(zip(lines, utf8_flags(lines), strict=True), 1)]
    return spark.createDataFrame(rows, "source_uri string, line_no long, raw binary, valid_utf8 boolean")


def _by_line(df) -> dict[int, dict]:
    return {r["line_no"]: r.asDict(recursive=True) for r in df.collect()}


def _both(spark, source: str, lines: list[bytes]):
    df = _frame(spark, lines).repartition(2)
    return _by_line(parse_lines(df, source, native=True)), _by_line(parse_lines(df, source, native=False))


def test_native_parse_equals_python_parse_on_tricky_records(spark):
    lines = [json.dumps(r, ensure_ascii=i % 2 == 0).encode("utf-8", "surrogatepass")
             for i, r in enumerate(TRICKY_GOODREADS)] + RAW_LINES
    native, python = _both(spark, "goodreads", lines)
    assert native.keys() == python.keys() == set(range(1, len(lines) + 1))
    diffs = {n: {k: (native[n][k], python[n][k]) for k in python[n] if native[n][k] != python[n][k]}
             for n in python if native[n] != python[n]}
    assert not diffs
    reasons = {n: r["reason"] for n, r in python.items() if r["reason"]}
    assert len(reasons) >= 12  # the set exercises the quarantine
    assert all(python[n]["raw"] for n in reasons if lines[n - 1].strip())  # each non-blank bad line kept raw
    assert reasons[len(TRICKY_GOODREADS) + 1] == "parse_error"  # '{...} {...}' is one bad line


def test_native_parse_equals_python_parse_on_a_sample_dump(spark, sample_dir):
    from g2i_core.sample.generator import DUMP_FILES

    with gzip.open(sample_dir / "raw" / DUMP_FILES["goodreads"], "rb") as fh:
        lines = [line.rstrip(b"\n") for line in fh]
    native, python = _both(spark, "goodreads", lines)
    assert native == python
    assert sum(r["reason"] is None for r in python.values()) > 100


def test_malformed_line_goes_to_quarantine_with_its_line_number(spark, file_storage, tmp_path):
    from g2i_core.ingest.job import IngestConfig, run_ingest

    good = [json.dumps({"book_id": str(i), "title": f"B&amp;{i}", "similar_books": [str(i + 1)]}) for i in range(8)]
    lines = good[:3] + ['{"book_id": "x", "title": "unterminated'] + good[3:] + ['{"book_id": "9"}{"book_id": "10"}']
    dump = tmp_path / "d.json.gz"
    with gzip.open(dump, "wt") as fh:
        fh.write("\n".join(lines) + "\n")
    report = run_ingest(spark, file_storage, IngestConfig(source="goodreads", raw_uri=f"file://{dump}",
                                                          logical_date="2026-11-26", max_quarantine_fraction=0.5,
                                                          native_parse=True))
    assert (report.lines_in, report.nodes_out, report.quarantined) == (10, 8, 2)
    quarantine = {q["line_no"]: q for q in file_storage.read_table("quarantine").to_pylist()}
    assert {n: q["reason"] for n, q in quarantine.items()} == {4: "parse_error", 10: "parse_error"}
    assert quarantine[4]["raw"].startswith('{"book_id": "x"') and "JSONDecodeError" in quarantine[4]["detail"]
    titles = {n["node_id"]: n["title"] for n in file_storage.read_table("nodes").to_pylist()}
    assert titles["goodreads:3"] == "B&3"
