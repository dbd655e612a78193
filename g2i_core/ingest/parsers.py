"""Pure per-line parsers for the three raw formats (no Spark, no I/O).

``parse_line(source, raw_bytes, line_no)`` returns one flat dict: either a node (``reason`` is None)
or a quarantine row (``reason`` set). The Spark job calls it on executors inside ``mapInArrow``; the
benchmark and unit tests call it directly.

``parse_line`` never raises for a record, whatever the line holds. Quarantine reasons:

* ``parse_error``, ``not_an_object``, ``encoding_error``, ``missing_id``: the line is not a usable record;
* ``bad_field``: a field the extractor reads has the wrong type or shape; ``detail`` names the field
  (``authors is int, expected a list``, ``related.also_bought[2] is dict, expected a string``).
  Only obviously safe coercions are made: integers for ids and strings (``"book_id": 42`` -> ``"42"``),
  finite numbers for text, tuples (Python literals) for lists. Nesting is bounded by the shapes;
* ``line_too_long``: over ``MAX_LINE_BYTES`` (the chunker marks such lines without reading them whole);
* ``record_error:<ExceptionType>`` (``detail`` "<ExceptionType>: message"): the safety net for any other
  exception while handling one record, so a parser bug quarantines the record instead of failing the job.
"""

from __future__ import annotations

import ast
import hashlib
import html
import json
import math
import re
import unicodedata
from typing import Any, Callable

SOURCES = ("goodreads", "amazon2014", "amazon2018", "attributes")  # attributes: g2i_core/ingest/attributes.py
NAMESPACE = {"goodreads": "goodreads", "amazon2014": "amazon", "amazon2018": "amazon"}
RELATIONS = {
    "goodreads": ("similar_books",),
    "amazon2014": ("also_bought", "also_viewed", "bought_together", "buy_after_viewing"),
    "amazon2018": ("also_buy", "also_view"),
}
MAX_LINE_BYTES = 1 << 20  # a "line" this long is a broken dump (missing newlines), not a record
RAW_KEEP_CHARS = 2000  # how much of a bad line the quarantine table keeps
NOPHOTO_MARKERS = ("/nophoto/", "no-img", "no_image")
# The chunker replaces a line over MAX_LINE_BYTES by MARK + b"<bytes>\x00" + its first RAW_KEEP_CHARS bytes.
# No record can start with a NUL byte (neither JSON nor a Python literal may), so a dump that forges the mark
# only relabels a line that would be quarantined as parse_error anyway.
LINE_TOO_LONG_MARK = b"\x00g2i:line_too_long\x00"

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


# ---- typed field access: the right shape, an obviously safe coercion, or RecordError("bad_field") ----------
def _bad(name: str, value: Any, expected: str) -> RecordError:
    return RecordError("bad_field", f"{name} is {type(value).__name__}, expected {expected}")


def _printable_int(value: int, name: str) -> int:
    try:
        str(value)  # CPython refuses to print ints over 4,300 digits (a Python literal can hold one in hex)
    except ValueError:
        raise RecordError("bad_field", f"{name} is an int of {value.bit_length()} bits, too large") from None
    return value


def _number(value: Any, name: str) -> int | float:
    if isinstance(value, int) and not isinstance(value, bool):
        return _printable_int(value, name)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise RecordError("bad_field", f"{name} is {value}, expected a finite number")
        return value
    raise _bad(name, value, "a number")


def _text(value: Any, name: str, numbers: bool = True) -> str | None:
    """A string; integers (and finite floats when ``numbers``) as their decimal spelling; None for missing."""
    if value is None or type(value) is str:
        return value
    if isinstance(value, str):  # a str subclass (never from the decoders)
        return str(value)
    if isinstance(value, int) and not isinstance(value, bool) or numbers and isinstance(value, float):
        return str(_number(value, name))
    raise _bad(name, value, "a string")


def _get_id(rec: dict, key: str) -> str | None:
    return _text(rec.get(key), key, numbers=False)


def _get_text(rec: dict, key: str, paragraphs: bool = False) -> str | None:
    """Text field; with ``paragraphs`` a list of strings is joined (Amazon 2018 descriptions)."""
    value = rec.get(key)
    if paragraphs and isinstance(value, (list, tuple)):
        return " ".join(p for p in _texts(value, key) if p)
    return _text(value, key)


def _get_list(container: dict, key: str, name: str | None = None) -> list:
    """A list (a tuple in a Python literal counts); missing, null or "" is empty; anything else is bad."""
    value = container.get(key)
    if type(value) is list:
        return value
    if value is None or value == "":
        return []
    if not isinstance(value, (list, tuple)):
        raise _bad(name or key, value, "a list")
    return list(value)


def _texts(values: list, name: str, numbers: bool = True) -> list[str | None]:
    """``_text`` of every element (the element's name is only spelled out for an error: this is hot)."""
    return [v if v is None or type(v) is str else _text(v, f"{name}[{i}]", numbers) for i, v in enumerate(values)]


def _get_id_list(container: dict, key: str, name: str | None = None) -> list[str]:
    name = name or key
    ids = _texts(_get_list(container, key, name), name, numbers=False)
    return [t for t in (v.strip() for v in ids if v is not None) if t]


def _get_sub_ids(rec: dict, key: str, sub: str) -> list[str | None]:
    """``sub`` of every object in the list ``key`` (Goodreads authors' author_id, shelves' name)."""
    out = []
    for i, item in enumerate(_get_list(rec, key)):
        if not isinstance(item, dict):
            raise _bad(f"{key}[{i}]", item, "an object")
        value = item.get(sub)
        out.append(value if value is None or type(value) is str else _text(value, f"{key}[{i}].{sub}"))
    return out


def _get_text_tree(rec: dict, key: str) -> list:
    """A list of strings or of lists of strings (Amazon categories: ``[["Books", "Fiction"], ...]``)."""
    out: list = []
    for i, item in enumerate(_get_list(rec, key)):
        if isinstance(item, (list, tuple)):
            out.append(_texts(item, f"{key}[{i}]"))
        else:
            out.append(_text(item, f"{key}[{i}]"))
    return out


def _get_mapping(rec: dict, key: str) -> dict | None:
    """An object of numbers or strings (Amazon 2014 salesRank: ``{"Books": 3}``)."""
    value = rec.get(key)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _bad(key, value, "an object")
    out = {}
    for k, v in value.items():
        if not isinstance(k, str):
            raise _bad(f"{key} key", k, "a string")
        out[k] = v if v is None or isinstance(v, str) else _number(v, f"{key}.{k}")
    return out


def _get_scalar(rec: dict, key: str) -> str | int | float | None:
    """A string or a number, kept as it is (Amazon prices are numbers in 2014 and strings in 2018)."""
    value = rec.get(key)
    return value if value is None or isinstance(value, str) else _number(value, key)


def _get_flag(rec: dict, key: str) -> bool:
    value = rec.get(key)
    if value is None or isinstance(value, (str, bool)):
        return value in ("true", True)
    raise _bad(key, value, "a string")


def _get_url(rec: dict, key: str) -> str | None:
    """A URL string, or the first non-empty one of a list of them."""
    value = rec.get(key)
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            if v is not None and not isinstance(v, str):
                raise _bad(f"{key}[{i}]", v, "a string")
        value = next((v for v in value if v and v.strip()), None)
    elif value is not None and not isinstance(value, str):
        raise _bad(key, value, "a string or a list of strings")
    return value.strip() or None if value else None


# ---- one function per format: raw dict -> (local id, title, description, image_url, attrs, related) ----
# Every field an extractor reads goes through a typed getter above, so a wrong type is a bad_field row.
def _goodreads(rec: dict) -> tuple:
    related = {"similar_books": _get_id_list(rec, "similar_books")}
    text_attrs = ("work_id", "publication_year", "language_code", "average_rating", "ratings_count", "num_pages",
                  "publisher")
    attrs: dict[str, Any] = {k: _text(rec.get(k), k) or None for k in text_attrs}
    attrs.update(authors=_get_sub_ids(rec, "authors", "author_id"), is_ebook=_get_flag(rec, "is_ebook"),
                 shelves=_get_sub_ids(rec, "popular_shelves", "name")[:10], series=_get_id_list(rec, "series"))
    short_title, title = _get_text(rec, "title_without_series"), _get_text(rec, "title")
    return (_get_id(rec, "book_id"), short_title or title, _get_text(rec, "description", paragraphs=True),
            _get_url(rec, "image_url"), attrs, related)


def _amazon2014(rec: dict) -> tuple:
    rel = rec.get("related") or {}
    if not isinstance(rel, dict):
        raise _bad("related", rel, "an object")
    related = {r: _get_id_list(rel, r, f"related.{r}") for r in RELATIONS["amazon2014"]}
    attrs = {"price": _get_scalar(rec, "price"), "brand": _get_text(rec, "brand") or None,
             "sales_rank": _get_mapping(rec, "salesRank"), "categories": _get_text_tree(rec, "categories")}
    return (_get_id(rec, "asin"), _get_text(rec, "title"), _get_text(rec, "description", paragraphs=True),
            _get_url(rec, "imUrl"), attrs, related)


def _amazon2018(rec: dict) -> tuple:
    related = {r: _get_id_list(rec, r) for r in RELATIONS["amazon2018"]}
    rank = rec.get("rank")  # a string, or a list of them in part of the dump: keep the shape
    rank = _get_text_tree(rec, "rank") if isinstance(rank, (list, tuple)) else _get_text(rec, "rank")
    attrs = {"price": _get_scalar(rec, "price") or None, "brand": clean_text(_get_text(rec, "brand")) or None,
             "category": _get_text_tree(rec, "category"), "main_cat": _get_text(rec, "main_cat") or None,
             "rank": rank or None}
    high_res, low_res = _get_url(rec, "imageURLHighRes"), _get_url(rec, "imageURL")
    return (_get_id(rec, "asin"), _get_text(rec, "title"), _get_text(rec, "description", paragraphs=True),
            high_res or low_res, attrs, related)


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


def oversize_marker(n_bytes: int, prefix: bytes) -> bytes:
    """What the chunker stores instead of a line over MAX_LINE_BYTES: its size and its first bytes."""
    return LINE_TOO_LONG_MARK + str(n_bytes).encode() + b"\x00" + prefix[:RAW_KEEP_CHARS]


def parse_line(source: str, raw: bytes | str, line_no: int) -> dict:
    """One output row for one input line: a node (``reason`` None) or a quarantine row. Never raises
    for the line's content (only for an unknown ``source``)."""
    if source not in _EXTRACT:
        raise ValueError(f"unknown source {source!r}; choose from {SOURCES}")
    try:
        if isinstance(raw, bytes) and raw.startswith(LINE_TOO_LONG_MARK):
            size, _, raw = raw[len(LINE_TOO_LONG_MARK):].partition(b"\x00")
            raise RecordError("line_too_long", f"{size.decode('ascii', 'replace')[:20]} bytes")
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
        return _quarantine_row(raw, line_no, exc.reason, str(exc))
    except Exception as exc:  # the safety net: one record never fails the job
        kind = type(exc).__name__
        try:
            detail = f"{kind}: {exc}"
        except Exception:  # an exception that cannot even describe itself
            detail = kind
        return _quarantine_row(raw, line_no, f"record_error:{kind}", detail)


def _quarantine_row(raw: bytes | str | None, line_no: int, reason: str, detail: str) -> dict:
    head = (raw or b"")[: RAW_KEEP_CHARS * 4]  # a character is at most 4 UTF-8 bytes
    shown = head.decode("utf-8", "replace") if isinstance(head, bytes) else head
    return {"line_no": line_no, "reason": reason, "detail": detail[:300], "raw": shown[:RAW_KEEP_CHARS],
            "edges": []}
