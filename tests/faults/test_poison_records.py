"""Poison records: every field every extractor reads, with every wrong type, for all three formats.

Each poison line must come back from ``parse_line`` as one quarantine row (never an exception), and a
real Spark ingest of a dump holding such lines must publish the good lines, quarantine exactly the poison
ones with their reasons, and keep the accounting identity.
"""

from __future__ import annotations

import gzip
import json

import pytest

from g2i_core.ingest.parsers import parse_line

HUGE_INT = "__huge_int__"  # written as a 5,000-hex-digit literal: str() of that int raises ValueError
HUGE_LITERAL = "0x" + "f" * 5000  # (Python literals only: JSON has no hex, and a long decimal is a parse error)
DEEP = 100  # under both decoders' nesting limits (Python literals: 200), far over any real record's


def _deep(depth: int = DEEP):
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


def _goodreads(**over) -> dict:
    rec = {"book_id": "42", "title": "T", "title_without_series": "T", "description": "D",
           "image_url": "https://img.example/42.jpg", "similar_books": ["7"], "series": ["9"],
           "authors": [{"author_id": "5", "role": ""}], "popular_shelves": [{"count": "3", "name": "to-read"}],
           "work_id": "9", "publication_year": "2001", "language_code": "eng", "is_ebook": "false",
           "average_rating": "3.9", "ratings_count": "10", "num_pages": "200", "publisher": "P"}
    rec.update(over)
    return rec


def _amazon2014(**over) -> dict:
    rec = {"asin": "B1", "title": "T", "description": "D", "imUrl": "http://i/1.jpg", "price": 3.5, "brand": "Br",
           "salesRank": {"Books": 3}, "categories": [["Books", "Fiction"]],
           "related": {"also_bought": ["B2"], "also_viewed": ["B3"], "bought_together": ["B2"],
                       "buy_after_viewing": ["B4"]}}
    rec.update(over)
    return rec


def _amazon2018(**over) -> dict:
    rec = {"asin": "B9", "title": "T", "description": ["a", "b"], "imageURL": ["http://i/s.jpg"],
           "imageURLHighRes": ["http://i/L.jpg"], "also_buy": ["B1"], "also_view": ["B2"], "price": "$3.00",
           "brand": "Br", "category": ["Books", "Fiction"], "main_cat": "Books", "rank": "1 in Books"}
    rec.update(over)
    return rec


BUILD = {"goodreads": _goodreads, "amazon2014": _amazon2014, "amazon2018": _amazon2018}


def _line(source: str, rec: dict) -> bytes:
    if source == "amazon2014":
        return repr(rec).replace(repr(HUGE_INT), HUGE_LITERAL).encode()
    return json.dumps(rec).encode()


# (field, the kinds of value it accepts). Every other kind of value must be quarantined as bad_field.
FIELDS = {
    "goodreads": {
        "book_id": "id", "title": "text", "title_without_series": "text", "description": "text",
        "image_url": "url", "similar_books": "id_list", "series": "id_list", "authors": "records",
        "popular_shelves": "records", "work_id": "scalar", "publication_year": "scalar", "language_code": "scalar",
        "is_ebook": "scalar", "average_rating": "scalar", "ratings_count": "scalar", "num_pages": "scalar",
        "publisher": "scalar",
    },
    "amazon2014": {
        "asin": "id", "title": "text", "description": "text", "imUrl": "url", "related": "relations",
        "price": "scalar", "brand": "scalar", "salesRank": "mapping", "categories": "nested_list",
    },
    "amazon2018": {
        "asin": "id", "title": "text", "description": "text", "imageURL": "url", "imageURLHighRes": "url",
        "also_buy": "id_list", "also_view": "id_list", "price": "scalar", "brand": "scalar",
        "category": "nested_list", "main_cat": "scalar", "rank": "text",
    },
}

# wrong values by the kind of field they poison (scalars where containers are expected, containers where
# scalars are expected, wrong element types, runaway nesting, non-finite and unprintable numbers)
WRONG = {
    "id": [{"a": 1}, ["1"], True, 1.5, HUGE_INT],
    "text": [{"a": 1}, True, [{"a": 1}], HUGE_INT, float("nan")],
    "url": [5, {"a": 1}, True, [5], [{"a": 1}]],
    "id_list": [5, "7", {"a": 1}, True, [{"a": 1}], [1.5], [HUGE_INT], _deep()],
    "records": [5, "x", {"a": 1}, True, [5], ["x"], [{"author_id": {"a": 1}, "name": {"a": 1}}], _deep()],
    "scalar": [{"a": 1}, ["x"], HUGE_INT, float("inf"), _deep()],
    "mapping": [5, "x", ["x"], {"Books": {"a": _deep()}}, {"Books": HUGE_INT}],
    "nested_list": [5, "x", {"a": 1}, [{"a": 1}], [[{"a": 1}]], _deep()],
    "relations": [5, "x", ["x"], {"also_bought": 5}, {"also_viewed": [{"a": 1}]}, {"bought_together": "B2"}],
}
# amazon2014 lines are Python literals: they can hold values JSON cannot
LITERAL_ONLY = [b"bytes", {1, 2}, 1j]



def _expressible(source: str, value) -> bool:
    """Huge ints only as Python literals; NaN/inf only in JSON (a Python literal has no spelling for them)."""
    shown = repr(value)
    if source == "amazon2014":
        return "nan" not in shown and "inf" not in shown
    return HUGE_INT not in shown


CASES = [(source, fld, value) for source, fields in FIELDS.items() for fld, kind in fields.items()
         for value in WRONG[kind] if _expressible(source, value)]
CASES += [("amazon2014", fld, value) for fld in FIELDS["amazon2014"] for value in LITERAL_ONLY]


def _case_id(case) -> str:
    source, fld, value = case
    shown = "huge_int" if HUGE_INT in repr(value) else ("deep" if isinstance(value, list) and value and
                                                   isinstance(value[0], list) else repr(value)[:20])
    return f"{source}-{fld}-{shown}"


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_wrong_field_type_is_quarantined_as_bad_field_naming_the_field(case):
    source, fld, value = case
    row = parse_line(source, _line(source, BUILD[source](**{fld: value})), 7)
    assert row["reason"] == "bad_field", (row.get("reason"), row.get("detail"), row.get("node_id"))
    assert fld in row["detail"] and row["line_no"] == 7 and row["raw"]


def test_huge_json_int_is_a_parse_error_not_a_crash():
    line = b'{"book_id": ' + b"9" * 5000 + b"}"  # over Python's 4,300-digit int parsing limit
    row = parse_line("goodreads", line, 1)
    assert row["reason"] == "parse_error" and "ValueError" in row["detail"]


@pytest.mark.parametrize("source, line", [
    ("goodreads", b'{"book_id": "1", "series": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
    ("amazon2018", b'{"asin": "B1", "also_buy": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
    ("amazon2014", b"{'asin': 'B1', 'categories': " + b"[" * 100_000 + b"]" * 100_000 + b"}"),
])
def test_nesting_deeper_than_the_decoder_can_follow_is_quarantined(source, line):
    row = parse_line(source, line, 3)
    assert row["reason"] in ("parse_error", "bad_field") and row["line_no"] == 3


@pytest.mark.parametrize("source, fld, value, check", [
    ("goodreads", "book_id", 42, lambda r: r["node_id"] == "goodreads:42"),
    ("amazon2018", "asin", 123, lambda r: r["node_id"] == "amazon:123"),
    ("goodreads", "similar_books", [7, "8"], lambda r: [e["dst"] for e in r["edges"]] == ["goodreads:7",
                                                                                          "goodreads:8"]),
    ("goodreads", "title_without_series", 1984, lambda r: r["title"] == "1984"),
    ("goodreads", "authors", [{"author_id": 5}], lambda r: json.loads(r["attrs"])["authors"] == ["5"]),
    ("goodreads", "work_id", 9, lambda r: json.loads(r["attrs"])["work_id"] == "9"),
    ("amazon2014", "related", {"also_bought": ("B2", "B3")}, lambda r: len(r["edges"]) == 2),  # tuple = list
    ("amazon2018", "imageURL", "http://i/one.jpg", lambda r: r["image_url"] == "http://i/L.jpg"),
    ("amazon2018", "rank", ["1 in Books"], lambda r: r["reason"] is None),
])
def test_obviously_safe_coercions_keep_the_record(source, fld, value, check):
    row = parse_line(source, _line(source, BUILD[source](**{fld: value})), 1)
    assert row["reason"] is None, row.get("detail")
    assert check(row)


def test_missing_and_empty_fields_are_not_poison():
    for source in FIELDS:
        id_field = "book_id" if source == "goodreads" else "asin"
        rec = {id_field: "X1"}
        row = parse_line(source, _line(source, rec), 1)
        assert row["reason"] is None and row["node_id"].endswith(":X1")
        rec = {k: None for k in FIELDS[source]} | {id_field: "X2"}
        assert parse_line(source, _line(source, rec), 1)["reason"] is None


def test_unexpected_exception_becomes_a_quarantine_row_named_by_its_type(monkeypatch):
    """The safety net behind the field checks: a bug in an extractor quarantines the record, never the night.
    (No real record reaches this path any more, so the fault is injected.)"""
    from g2i_core.ingest import parsers

    def broken(_rec):
        raise KeyError("boom")

    monkeypatch.setitem(parsers._EXTRACT, "goodreads", broken)
    row = parse_line("goodreads", _line("goodreads", _goodreads()), 11)
    assert row["reason"] == "record_error:KeyError" and "boom" in row["detail"] and row["line_no"] == 11


# ---- through the real Spark ingest ---------------------------------------------------------------------
GOOD = 40
POISON = [  # (line, reason)
    (b'{"book_id": "1", "popular_shelves": 5}', "bad_field"),
    (b'{"book_id": "2", "authors": 5}', "bad_field"),
    (b'{"book_id": "3", "similar_books": {"a": 1}}', "bad_field"),
    (b'{"book_id": "4", "title": {"text": "x"}}', "bad_field"),
    (b'{"book_id": ["5"]}', "bad_field"),
    (b'{"book_id": "6", "image_url": 5}', "bad_field"),
    (b'{"book_id": "7", "series": "abc"}', "bad_field"),
    (b'{"book_id": "8", "authors": [{"author_id": {"id": 1}}]}', "bad_field"),
    (b'{"book_id": "9", "series": ' + json.dumps(_deep()).encode() + b"}", "bad_field"),
    (b'{"book_id": "10", "title": "' + b"x" * (2 << 20) + b'"}', "line_too_long"),
]


@pytest.mark.spark
def test_spark_ingest_quarantines_poison_lines_and_publishes_the_rest(spark, file_storage, tmp_path):
    from g2i_core.ingest.job import IngestConfig, run_ingest

    good = [json.dumps({"book_id": str(1000 + i), "title": f"Book {i}", "similar_books": [str(1001 + i)]}).encode()
            for i in range(GOOD - 1)]
    good.append(b'{"book_id": 2000, "title": "numeric id"}')  # coerced, not quarantined
    lines, expected = [], {}
    for i, line in enumerate(good):
        lines.append(line)
        if i % 4 == 0 and POISON:
            k = len(expected)
            if k < len(POISON):
                lines.append(POISON[k][0])
                expected[len(lines)] = POISON[k][1]
    assert len(expected) == len(POISON)
    dump = tmp_path / "poison.json.gz"
    with gzip.open(dump, "wb") as fh:
        fh.write(b"\n".join(lines) + b"\n")

    report = run_ingest(spark, file_storage, IngestConfig(source="goodreads", raw_uri=f"file://{dump}",
                                                          logical_date="2026-11-26", chunk_lines=7,
                                                          max_quarantine_fraction=0.5))
    assert (report.lines_in, report.nodes_out, report.duplicates, report.quarantined) == (
        GOOD + len(POISON), GOOD, 0, len(POISON))
    assert report.quarantine_reasons == {"bad_field": len(POISON) - 1, "line_too_long": 1}
    report.check_identity()
    quarantine = file_storage.read_table("quarantine").to_pylist()
    assert {q["line_no"]: q["reason"] for q in quarantine} == expected
    assert all(q["raw"] and len(q["raw"]) <= 2000 for q in quarantine)
    fields = {"popular_shelves", "authors", "similar_books", "title", "book_id", "image_url", "series"}
    assert all(any(f in q["detail"] for f in fields) for q in quarantine if q["reason"] == "bad_field")
    nodes = file_storage.read_table("nodes").to_pylist()
    assert len(nodes) == GOOD and "goodreads:2000" in {n["node_id"] for n in nodes}
