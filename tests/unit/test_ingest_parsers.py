"""Per-line parsers of the three raw formats: ids, text cleaning, relations, quarantine reasons."""

import json

import pytest

from g2i_core.ingest.parsers import clean_text, is_real_image, parse_line


def _goodreads(**over):
    rec = {"book_id": "42", "title": "The Title", "title_without_series": "The Title", "description": "<p>Desc</p>",
           "image_url": "https://img.example/42.jpg", "similar_books": ["7", "8", "8", "42"],
           "authors": [{"author_id": "5", "role": ""}], "popular_shelves": [{"count": "3", "name": "to-read"}],
           "publication_year": "", "work_id": "9"}
    rec.update(over)
    return json.dumps(rec).encode()


@pytest.mark.parametrize("raw, expected", [
    ("Tom &amp; Jerry&#39;s <b>Night</b>", "Tom & Jerry's Night"),
    ("L&#x27;Étranger &lt;deluxe&gt;", "L'Étranger <deluxe>"),  # escaped brackets are text, not markup
    ("Ελληνικά <i>Ποιήματα</i>", "Ελληνικά Ποιήματα"),
    ("  many \n  spaces\t", "many spaces"),
    ("Cafe\u0301", "Café"),  # NFC: combining accent folded into one code point
    (["para one", "", "para <br/>two"], "para one para two"),
    (None, ""),
])
def test_clean_text(raw, expected):
    assert clean_text(raw) == expected


def test_goodreads_record_becomes_namespaced_node_with_deduped_edges_and_no_self_loop():
    row = parse_line("goodreads", _goodreads(), 3)
    assert row["reason"] is None and row["line_no"] == 3
    assert row["node_id"] == "goodreads:42"
    assert row["text"] == "The Title" and row["has_real_image"] is True
    assert row["edges"] == [{"dst": "goodreads:7", "relation": "similar_books"},
                            {"dst": "goodreads:8", "relation": "similar_books"}]
    attrs = json.loads(row["attrs"])
    assert attrs["description"] == "Desc" and attrs["work_id"] == "9" and "publication_year" not in attrs


def test_nophoto_and_missing_images_are_not_real():
    assert not parse_line("goodreads", _goodreads(image_url="https://s.gr-assets.com/assets/nophoto/book/111x148.png"),
                          1)["has_real_image"]
    assert not parse_line("goodreads", _goodreads(image_url=""), 1)["has_real_image"]
    assert is_real_image("https://x/y.jpg") and not is_real_image(None)


def test_untitled_record_falls_back_to_description_for_text():
    row = parse_line("goodreads", _goodreads(title="", title_without_series=""), 1)
    assert row["title"] == "" and row["text"] == "Desc"


def test_amazon2014_python_literal_with_all_four_relations():
    rec = {"asin": "B1", "title": "It's <i>here</i>", "imUrl": "http://i/1.jpg", "salesRank": {"Books": 3},
           "related": {"also_bought": ["B2"], "also_viewed": ["B3", "B1"], "bought_together": ["B2"],
                       "buy_after_viewing": ["B4"]}}
    row = parse_line("amazon2014", repr(rec).encode(), 1)
    assert row["node_id"] == "amazon:B1" and row["title"] == "It's here"
    assert sorted((e["relation"], e["dst"]) for e in row["edges"]) == [
        ("also_bought", "amazon:B2"), ("also_viewed", "amazon:B3"), ("bought_together", "amazon:B2"),
        ("buy_after_viewing", "amazon:B4")]


def test_amazon2014_never_evaluates_code(tmp_path):
    marker = tmp_path / "pwned"
    line = f"__import__('pathlib').Path({str(marker)!r}).write_text('x')".encode()
    row = parse_line("amazon2014", line, 9)
    assert row["reason"] == "parse_error" and not marker.exists()


def test_amazon2018_flat_lists_and_highres_image():
    rec = {"asin": "B9", "title": "T", "also_buy": ["B1"], "also_view": ["B2"], "imageURL": ["http://i/s.jpg"],
           "imageURLHighRes": ["http://i/L.jpg"], "description": ["a", "b"]}
    row = parse_line("amazon2018", json.dumps(rec), 1)
    assert row["image_url"] == "http://i/L.jpg"
    assert {e["relation"] for e in row["edges"]} == {"also_buy", "also_view"}


@pytest.mark.parametrize("source, raw, reason", [
    ("goodreads", b'{"book_id": "1", "title": "trunc', "parse_error"),
    ("goodreads", b"<<<not a record>>>", "parse_error"),
    ("goodreads", b'["a", "list"]', "not_an_object"),
    ("goodreads", b'{"book_id": "", "title": "no id"}', "missing_id"),
    ("goodreads", b'{"book_id": "1", "similar_books": "7"}', "bad_field"),
    ("amazon2018", b'{"asin": "B1", "title": "\xff\xfe"}', "encoding_error"),
    ("amazon2014", b"{'asin': 'B1', 'related': ['x']}", "bad_field"),
    ("amazon2014", b"{'asin': 'B1'" + b" " * (1 << 20) + b"}", "line_too_long"),
])
def test_bad_lines_become_quarantine_rows(source, raw, reason):
    row = parse_line(source, raw, 5)
    assert row["reason"] == reason and row["line_no"] == 5
    assert row["raw"] and len(row["raw"]) <= 2000


def test_duplicate_copies_rank_by_completeness():
    full = parse_line("goodreads", _goodreads(), 1)
    partial = parse_line("goodreads", _goodreads(description="", similar_books=["7"]), 2)
    assert full["completeness"] > partial["completeness"]
    assert full["content_hash"] != partial["content_hash"]
    assert parse_line("goodreads", _goodreads(), 99)["content_hash"] == full["content_hash"]


def test_unknown_source_is_rejected():
    with pytest.raises(ValueError, match="unknown source"):
        parse_line("amazon2099", b"{}", 1)
