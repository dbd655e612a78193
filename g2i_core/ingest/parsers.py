"""Pure per-line parsers for the three raw formats (no Spark, no I/O).

``parse_line(source, raw_bytes, line_no)`` returns one flat dict: either a node (``reason`` is None)
or a quarantine row (``reason`` set). The Spark job calls it on executors inside ``mapInArrow``; the
benchmark and unit tests call it directly.
"""

from __future__ import annotations

import ast
import hashlib
import html
import json
import re
import unicodedata
from typing import Any, Callable

SOURCES = ("goodreads", "amazon2014", "amazon2018")
NAMESPACE = {"goodreads": "goodreads", "amazon2014": "amazon", "amazon2018": "amazon"}
RELATIONS = {
    "goodreads": ("similar_books",),
    "amazon2014": ("also_bought", "also_viewed", "bought_together", "buy_after_viewing"),
    "amazon2018": ("also_buy", "also_view"),
}
MAX_LINE_BYTES = 1 << 20  # a "line" this long is a broken dump (missing newlines), not a record
RAW_KEEP_CHARS = 2000  # how much of a bad line the quarantine table keeps
NOPHOTO_MARKERS = ("/nophoto/", "no-img", "no_image")

_TAG = re.compile(r"<[^>]{0,200}>")
_SPACE = re.compile(r"\s+")


class RecordError(ValueError):
    """A line that is not a usable record; ``reason`` becomes the quarantine reason."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def clean_text(value: Any) -> str:
    """Markup-free, entity-decoded, NFC-normalised single-line text ('' for missing)."""
    if value is None:
        return ""
    if isinstance(value, list):  # Amazon 2018 descriptions are lists of paragraphs
        value = " ".join(str(v) for v in value if v)
    # Tags are stripped before entities are decoded, so an escaped "&lt;deluxe&gt;" survives as text.
    text = html.unescape(_TAG.sub(" ", str(value)))
    return _SPACE.sub(" ", unicodedata.normalize("NFC", text)).strip()


def is_real_image(url: str | None) -> bool:
    return bool(url) and not any(m in url for m in NOPHOTO_MARKERS)


def _id_list(rec: dict, key: str) -> list[str]:
    value = rec.get(key) or []
    if not isinstance(value, list):
        raise RecordError("bad_field", f"{key} is {type(value).__name__}, expected a list")
    return [str(v).strip() for v in value if v is not None and str(v).strip()]


def _first_url(value: Any) -> str | None:
    if isinstance(value, list):
        value = next((v for v in value if v), None)
    return str(value).strip() or None if value else None


# ---- one function per format: raw dict -> (local id, title, description, image_url, attrs, related) ----
def _goodreads(rec: dict) -> tuple:
    related = {"similar_books": _id_list(rec, "similar_books")}
    shelves = rec.get("popular_shelves") or []
    attrs = {
        "work_id": rec.get("work_id") or None,
        "authors": [a.get("author_id") for a in rec.get("authors") or [] if isinstance(a, dict)],
        "publication_year": rec.get("publication_year") or None,
        "language_code": rec.get("language_code") or None,
        "is_ebook": rec.get("is_ebook") == "true",
        "average_rating": rec.get("average_rating") or None,
        "ratings_count": rec.get("ratings_count") or None,
        "num_pages": rec.get("num_pages") or None,
        "publisher": rec.get("publisher") or None,
        "shelves": [s.get("name") for s in shelves[:10] if isinstance(s, dict)],
        "series": rec.get("series") or [],
    }
    title = rec.get("title_without_series") or rec.get("title")
    return rec.get("book_id"), title, rec.get("description"), _first_url(rec.get("image_url")), attrs, related


def _amazon2014(rec: dict) -> tuple:
    rel = rec.get("related") or {}
    if not isinstance(rel, dict):
        raise RecordError("bad_field", f"related is {type(rel).__name__}, expected a dict")
    related = {r: _id_list(rel, r) for r in RELATIONS["amazon2014"]}
    attrs = {"price": rec.get("price"), "brand": rec.get("brand") or None, "sales_rank": rec.get("salesRank"),
             "categories": rec.get("categories") or []}
    return rec.get("asin"), rec.get("title"), rec.get("description"), _first_url(rec.get("imUrl")), attrs, related


def _amazon2018(rec: dict) -> tuple:
    related = {r: _id_list(rec, r) for r in RELATIONS["amazon2018"]}
    attrs = {"price": rec.get("price") or None, "brand": clean_text(rec.get("brand")) or None,
             "category": rec.get("category") or [], "main_cat": rec.get("main_cat") or None,
             "rank": rec.get("rank") or None}
    url = _first_url(rec.get("imageURLHighRes")) or _first_url(rec.get("imageURL"))
    return rec.get("asin"), rec.get("title"), rec.get("description"), url, attrs, related


_EXTRACT: dict[str, Callable[[dict], tuple]] = {"goodreads": _goodreads, "amazon2014": _amazon2014,
                                                "amazon2018": _amazon2018}


def decode_record(source: str, text: str) -> dict:
    """The raw dict of one line. Amazon 2014 lines are Python literals: ``ast.literal_eval`` only
    evaluates literals (never names, calls or attributes), so a hostile line cannot run code."""
    try:
        rec = ast.literal_eval(text) if source == "amazon2014" else json.loads(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as exc:
        raise RecordError("parse_error", f"{type(exc).__name__}: {exc}"[:200]) from None
    if not isinstance(rec, dict):
        raise RecordError("not_an_object", type(rec).__name__)
    return rec


def parse_record(source: str, rec: dict) -> dict:
    """Node fields (+ ``edges`` and ``completeness``) from one raw dict; raises RecordError."""
    local_id, title, description, image_url, attrs, related = _EXTRACT[source](rec)
    local_id = str(local_id).strip() if local_id is not None else ""
    if not local_id:
        raise RecordError("missing_id")
    node_id = f"{NAMESPACE[source]}:{local_id}"
    title = clean_text(title)
    description = clean_text(description)
    attrs = {k: v for k, v in attrs.items() if v not in (None, [], {}, "")}
    if description:
        attrs["description"] = description
    edges, links = [], []
    prefix = NAMESPACE[source] + ":"
    for relation in RELATIONS[source]:
        # dict.fromkeys: repeated links collapse, order kept; self-loops carry no neighbour signal
        for target in dict.fromkeys(related.get(relation, ())):
            if target != local_id:
                edges.append({"dst": prefix + target, "relation": relation})
                links.append(f"{relation}>{target}")
    attrs_json = json.dumps(attrs, sort_keys=True, ensure_ascii=False, default=str)
    return {
        "node_id": node_id,
        "title": title,
        # The prompt text is the title; an untitled record falls back to its description.
        "text": title or description[:300],
        "image_url": image_url,
        "has_real_image": is_real_image(image_url),
        "attrs": attrs_json,
        "edges": edges,
        # Duplicate resolution keeps the most complete copy: filled fields + links.
        "completeness": len(attrs) + bool(title) + bool(image_url) + len(edges),
        "content_hash": hashlib.sha1("\x1f".join([title, image_url or "", attrs_json, *sorted(links)])
                                     .encode()).hexdigest(),
    }


def parse_line(source: str, raw: bytes | str, line_no: int) -> dict:
    """One output row for one input line: a node (``reason`` None) or a quarantine row."""
    if source not in _EXTRACT:
        raise ValueError(f"unknown source {source!r}; choose from {SOURCES}")
    try:
        if len(raw) > MAX_LINE_BYTES:
            raise RecordError("line_too_long", f"{len(raw)} bytes")
        try:
            text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        except UnicodeDecodeError as exc:
            raise RecordError("encoding_error", str(exc)[:200]) from None
        row = parse_record(source, decode_record(source, text.strip()))
        row.update(line_no=line_no, reason=None, detail=None, raw=None)
        return row
    except RecordError as exc:
        shown = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
        return {"line_no": line_no, "reason": exc.reason, "detail": str(exc)[:300],
                "raw": shown[:RAW_KEEP_CHARS], "edges": []}
