"""Goodreads lines that two parsers must treat alike: the Python parser (``parsers.parse_line``) is the reference
for Spark's native reader (tests/integration/test_ingest_native.py) and the local Arrow parse
(tests/unit/test_ingest_arrow.py)."""

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
