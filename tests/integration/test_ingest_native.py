"""The native (Spark JSON reader) parse gives, line for line, what the Python parser gives: the same nodes,
cleaned text, attrs JSON and content hashes (delta mode compares hashes across versions), and the same
quarantine rows with their line numbers and reasons."""

from __future__ import annotations

import gzip
import json

import pytest

from g2i_core.ingest.chunking import utf8_flags
from g2i_core.ingest.job import parse_lines

pytestmark = [pytest.mark.spark]

TRICKY_GOODREADS = [
    # cleaning: entities, markup, NFC, Unicode and ASCII whitespace, escaped brackets
    {"book_id": "1", "title": "Tom &amp; Jerry&#39;s <b>Night</b>", "description": "<p>Desc</p>\n\n two\tthree "},
    {"book_id": "2", "title_without_series": "Cafe\u0301 \u00a0 x", "title": "ignored",
     "description": "L&#x27;É &lt;d&gt;"},
    {"book_id": "3", "title": "", "title_without_series": "", "description": "d" * 400},
    {"book_id": "4", "title": "   ", "title_without_series": "  <i> </i> ", "description": "Ελληνικά\u2003x"},
    {"book_id": "5", "title": "a\x0bb\x1cc", "description": "ctl \x01 char"},
    # lists to edges: repeats, self-loops, blanks, numbers; attrs kept in shape
    {"book_id": "6", "similar_books": ["7", "7", "6", "", None, 8], "series": ["9", "", "10"],
     "authors": [{"author_id": "5"}, {"role": "x"}], "popular_shelves": [{"name": f"s{i}"} for i in range(14)]},
    {"book_id": "11", "is_ebook": True, "publisher": 'a"b\\c', "average_rating": 3.5, "num_pages": 200},
    {"book_id": "12", "image_url": "https://x/nophoto/a.png", "work_id": "", "language_code": None},
    {"book_id": "13", "image_url": " https://x/a.png ", "ratings_count": 1e20, "publication_year": 0.0001},
    {"book_id": 14, "title": 1984, "description": 3.25},
    {"book_id": "15", "series": [" 9 "], "authors": [{"author_id": 1.5}]},
    {"book_id": "16", "title": "true", "publisher": "[x]", "average_rating": "4.10"},
    {"book_id": "17", "title": "emoji \U0001f600", "description": "surrogates \ud83d\ude00 ok"},
    # typed trouble: every one of these is a quarantine row (bad_field) from the Python parser
    {"book_id": "18", "title": {"a": 1}}, {"book_id": "19", "similar_books": [1.5]}, {"book_id": True},
    {"book_id": "20", "is_ebook": 1}, {"book_id": "21", "image_url": ["x"]}, {"book_id": "22", "authors": [None]},
    {"book_id": "23", "description": float("nan")}, {"book_id": "24", "popular_shelves": "x"},
]
RAW_LINES = [
    b'{"book_id": "30"} {"book_id": "31"}',  # two records on one line: a parse error, not a silent drop
    b'{"book_id": "32"}}', b"{'book_id': '33'}", b'  {"book_id": "34"}  ', b"[1]", b"", b"\xff{}",
    b'{"book_id": "35", "title": "\\ud800"}', b'{"book_id": "36", "x": ' + b"9" * 1200 + b"}",
    b'{"book_id": "37", "title": "x"', b'{"title": "no id"}', b'{"book_id": "38", "a": "' + b"q" * 500 + b'"}',
]


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
