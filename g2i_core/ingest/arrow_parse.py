"""Goodreads lines -> parsed rows with pyarrow's JSON reader and Arrow compute kernels, in this process.

``parse_block`` gives one row per record line in the job's parsed layout (``job._arrow_parsed_schema``), equal
to what ``parsers.parse_line`` gives for that line, ``content_hash`` included: delta mode compares hashes across
versions, so the engines must agree byte for byte. It is the parse of ``g2i ingest --engine local``.

How a block of lines is handled:

1. A line goes to the JSON reader only when nothing about it could make the two parsers disagree: valid UTF-8,
   starts with ``{`` and ends with ``}`` (so no BOM or Unicode space that ``str.strip`` would remove), at most
   ``MAX_LINE_BYTES``, and fewer than ``MAX_OPEN_BRACKETS`` ``[``/``{`` (Python's decoder stops at ~1,000
   levels of nesting; pyarrow follows any depth).
2. pyarrow reads those lines with an explicit schema of the fields the extractor reads. It is stricter than
   Python everywhere it matters: a read field of another JSON type, a key given twice, a lone surrogate escape,
   ``NaN`` or a syntax error fails the line. A failing line is found from the reader's row number and goes to
   Python; a line holding two records (two rows for one line), or an error without a row, is found by halving.
3. Rows whose values Python would reject or spell differently go to Python too: an id that is not visible ASCII
   (``strip`` and coercions), a null author or shelf, control characters in values copied into ``attrs``, a
   list element that ``strip`` would change.
4. Every other row is computed with Arrow kernels: tags and whitespace with RE2 (the whitespace class is
   Python's ``str.isspace`` set), lists to edges with a sort, ``attrs`` as the exact text of
   ``json.dumps(attrs, sort_keys=True, ensure_ascii=False)``, ``content_hash`` with hashlib. Text holding
   ``&`` (HTML entities) or non-ASCII text that is not NFC-normalised is cleaned by ``parsers.clean_text``.
5. Declined lines go through ``parse_line`` itself: they keep its quarantine reasons, details and line numbers.

Other sources (Amazon) have no Arrow parse: every line goes through ``parse_line``.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from g2i_core.ingest.chunking import _decodes
from g2i_core.ingest.parsers import (
    MAX_LINE_BYTES,
    NAMESPACE,
    NOPHOTO_MARKERS,
    RAW_KEEP_CHARS,
    RELATIONS,
    clean_text,
    oversize_marker,
    parse_line,
)

if TYPE_CHECKING:
    import pyarrow as pa

ARROW_SOURCES = ("goodreads",)
MAX_OPEN_BRACKETS = 512  # more [ or { than this in a line: Python's decoder may refuse the nesting; let it decide
WINDOW_LINES = 1024  # after a reader error, lines are parsed in windows of this size to find the bad ones
TEXT_ATTRS = ("work_id", "publication_year", "language_code", "average_rating", "ratings_count", "num_pages",
              "publisher")
TAG = r"<[^>]{0,200}>"  # parsers._TAG: RE2's negated class matches newlines too, as Python's does
# Python's str.isspace() set (what re's \s matches in str patterns); a unit test checks it against Python
PY_SPACE = (r"[\t\n\x{0B}\x{0C}\r\x{1C}-\x{1F} \x{85}\x{A0}\x{1680}\x{2000}-\x{200A}\x{2028}\x{2029}\x{202F}"
            r"\x{205F}\x{3000}]")
SPACE_OR_TAG_RUN = f"(?:{PY_SPACE}|{TAG})+"
VISIBLE_ASCII = r"^[!-~]+$"  # an id Python's strip() leaves as it is, and JSON copies without escapes
CONTROL = r"[\x00-\x1f]"  # JSON escapes these: values holding them go to Python
ODD_CONTROL = r"[\x00-\x08\x0e-\x1b]"  # control characters that survive clean_text's whitespace collapse


def _schema() -> "pa.Schema":
    import pyarrow as pa

    s = pa.string()
    return pa.schema(
        [("book_id", s), ("title", s), ("title_without_series", s), ("description", s), ("image_url", s),
         ("similar_books", pa.list_(s)), ("series", pa.list_(s)),
         ("authors", pa.list_(pa.struct([("author_id", s)]))),
         ("popular_shelves", pa.list_(pa.struct([("name", s)]))), ("is_ebook", s)]
        + [(name, s) for name in TEXT_ATTRS])


# ---- 1 and 2: which lines the JSON reader takes, and reading them -------------------------------------------------
def split_lines(block: bytes) -> "pa.BinaryArray":
    """The physical lines of ``block`` (whole lines; a final line may lack its newline), without the newlines."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if not block:
        return pa.array([], pa.binary())
    one = pa.Array.from_buffers(pa.binary(), 1, [None, pa.py_buffer(np.array([0, len(block)], np.int32)),
                                                 pa.py_buffer(block)])
    lines = pc.split_pattern(one, b"\n").values
    return lines.slice(0, len(lines) - 1) if block.endswith(b"\n") else lines


def _as_text(lines: "pa.BinaryArray") -> tuple["pa.StringArray", np.ndarray]:
    """(the lines as text, invalid UTF-8 as ""; which lines are valid UTF-8): one validating cast per block."""
    import pyarrow as pa
    import pyarrow.compute as pc

    try:
        return lines.cast(pa.string()), np.ones(len(lines), bool)
    except pa.ArrowInvalid:
        valid = np.array([_decodes(b) for b in lines.to_pylist()], bool)
        return pc.if_else(pa.array(valid), lines, b"").cast(pa.string()), valid


def reader_lines(lines: "pa.BinaryArray", block: bytes | bytearray) -> tuple["pa.StringArray", np.ndarray, bool]:
    """(the lines as text, trailing ``\\r`` removed; which of them the JSON reader may take; whether the text is
    the lines as they came). ``lines`` are ``split_lines(block)``."""
    import pyarrow.compute as pc

    text, valid = _as_text(lines)
    unchanged = bool(valid.all())
    if pc.any(pc.ends_with(text, "\r")).as_py():
        text, unchanged = pc.utf8_rtrim(text, "\r"), False  # iter_lines strips a line's "\r\n"
    ok = valid & pc.starts_with(text, "{").to_numpy(zero_copy_only=False) \
        & pc.ends_with(text, "}").to_numpy(zero_copy_only=False)
    starts = np.frombuffer(lines.buffers()[1], np.int32)[lines.offset:lines.offset + len(lines) + 1]
    lengths = np.diff(starts)
    ok &= lengths <= MAX_LINE_BYTES
    deep = np.flatnonzero(ok & (lengths >= 2 * MAX_OPEN_BRACKETS))  # an accepted line holds its closers too
    at = starts - starts[0] + np.arange(len(starts))  # line i's bytes in the block: one "\n" before each line
    for i, a, b in zip(deep.tolist(), at[deep].tolist(), (at[deep] + lengths[deep]).tolist(), strict=True):
        if block.count(b"{", a, b) + block.count(b"[", a, b) >= MAX_OPEN_BRACKETS:
            ok[i] = False
    return text, ok, unchanged


def _read_json(data: bytes | bytearray, schema: "pa.Schema") -> "pa.Table":
    import pyarrow as pa
    import pyarrow.json as pj

    return pj.read_json(pa.BufferReader(data), read_options=pj.ReadOptions(use_threads=False, block_size=len(data) + 1),
                        parse_options=pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore",
                                                      newlines_in_values=False))


def _join(text: "pa.StringArray", ok: np.ndarray) -> bytes:
    """The lines the reader takes, one per line; "{}" stands in for the others so rows stay aligned."""
    import pyarrow as pa
    import pyarrow.compute as pc

    chosen = text if ok.all() else pc.if_else(pa.array(ok), text, "{}")
    joined = pc.binary_join(pa.ListArray.from_arrays(pa.array([0, len(chosen)], pa.int32()), chosen), "\n")
    return joined[0].as_buffer().to_pybytes() + b"\n"


def _error_row(exc: Exception, n: int) -> int | None:
    """The row a reader error names ("... in row 5"), when it is one of the ``n`` rows."""
    text = str(exc)
    at = text.rfind(" in row ")
    if at < 0:
        return None
    try:
        row = int(text[at + 8:].strip())
    except ValueError:
        return None
    return row if 0 <= row < n else None


def read_records(text: "pa.StringArray", ok: np.ndarray, block: bytes | bytearray | None = None) -> "pa.Table":
    """One row per line (null fields for lines not taken); ``ok`` is cleared for every line the reader fails.
    ``block``: the lines as they came, when every line is taken as it is (saves joining them again)."""
    import pyarrow as pa

    schema = _schema()
    try:
        table = _read_json(block if block is not None and ok.all() else _join(text, ok), schema)
        if table.num_rows == len(text):
            return table
    except pa.ArrowInvalid:
        pass
    parts = [_read_window(text, ok, start, min(start + WINDOW_LINES, len(text)), schema)
             for start in range(0, len(text), WINDOW_LINES)]
    return pa.concat_tables(parts) if parts else schema.empty_table()


def _read_window(text: "pa.StringArray", ok: np.ndarray, start: int, stop: int, schema: "pa.Schema") -> "pa.Table":
    import pyarrow as pa

    while True:
        window, taken = text.slice(start, stop - start), ok[start:stop]  # taken is a view: clearing it clears ok
        try:
            table = _read_json(_join(window, taken), schema)
        except pa.ArrowInvalid as exc:
            row = _error_row(exc, stop - start)
            if row is not None and taken[row]:
                taken[row] = False  # the line the error names goes to Python; read the rest again
                continue
            table = None  # no usable row number ("The document is empty." after a stray "}"): halve the window
        if table is not None and table.num_rows == stop - start:
            return table
        if stop - start == 1:  # a line the reader refuses, or two records on one line: Python decides
            taken[:] = False
            continue
        mid = (start + stop) // 2
        return pa.concat_tables([_read_window(text, ok, start, mid, schema),
                                 _read_window(text, ok, mid, stop, schema)])


# ---- 3: rows Python must parse ---------------------------------------------------------------------------------------
def _rows_of(values_parent: np.ndarray, bad: "pa.Array", n: int) -> np.ndarray:
    out = np.zeros(n, bool)
    out[values_parent[np.asarray(bad.to_numpy(zero_copy_only=False), bool)]] = True
    return out


def _flat(lists: "pa.Array") -> tuple["pa.Array", np.ndarray, np.ndarray]:
    """(flattened values, the row of each value, values per row); a null list is empty."""
    import pyarrow.compute as pc

    lengths = pc.fill_null(pc.list_value_length(lists), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    return pc.list_flatten(lists), np.repeat(np.arange(len(lists)), lengths), lengths


def _matches(values: "pa.Array", pattern: str) -> "pa.Array":
    import pyarrow.compute as pc

    return pc.fill_null(pc.match_substring_regex(values, pattern), False)


def python_rows(rec: "pa.Table") -> np.ndarray:
    """Rows whose values Python would reject, coerce or spell differently (point 3 of the module docstring)."""
    import pyarrow.compute as pc

    n = rec.num_rows
    bad = ~pc.fill_null(pc.match_substring_regex(rec["book_id"], VISIBLE_ASCII), False).to_numpy(zero_copy_only=False)
    url = rec["image_url"]
    bad |= (pc.is_valid(url).to_numpy(zero_copy_only=False)
            & ~pc.fill_null(pc.match_substring_regex(url, r"^[!-~]*$"), True).to_numpy(zero_copy_only=False))
    joined = pc.binary_join_element_wise(*[pc.fill_null(rec[name], "") for name in TEXT_ATTRS], "")
    bad |= _matches(joined, CONTROL).to_numpy(zero_copy_only=False)  # one pass over the seven short values
    bad |= _matches(rec["description"], ODD_CONTROL).to_numpy(zero_copy_only=False)
    for name, field in (("authors", "author_id"), ("popular_shelves", "name")):
        items, parent, _ = _flat(rec[name].combine_chunks())
        bad |= _rows_of(parent, pc.is_null(items), n)  # Python: "authors[i] is NoneType, expected an object"
        bad |= _rows_of(parent, _matches(pc.struct_field(items, field), CONTROL), n)
    for name in ("similar_books", "series"):
        values, parent, _ = _flat(rec[name].combine_chunks())
        bad |= _rows_of(parent, pc.invert(pc.fill_null(pc.match_substring_regex(values, r"^[!-~]*$"), True)), n)
    return bad


# ---- 4: the columns -------------------------------------------------------------------------------------------------
def clean_texts(values: "pa.Array") -> "pa.Array":
    """``parsers.clean_text`` of every value (null -> "").

    One RE2 pass replaces each run of whitespace and tags by one space: the same text as Python's two passes
    (tags to spaces, then whitespace runs to one space), since a tag never starts with whitespace and the
    tag pass does not rescan what it replaced. Values holding ``&`` or non-ASCII text are checked in Python:
    entities need ``html.unescape``, and non-ASCII text needs NFC unless it is normalised already."""
    import pyarrow as pa
    import pyarrow.compute as pc

    original = pc.fill_null(values, "")
    cleaned = pc.utf8_trim(pc.replace_substring_regex(original, SPACE_OR_TAG_RUN, " "), " ")
    entities = pc.match_substring(original, "&").to_numpy(zero_copy_only=False)
    hard = np.flatnonzero(entities | ~pc.string_is_ascii(original).to_numpy(zero_copy_only=False))
    if not len(hard):
        return cleaned
    at = pa.array(hard)
    fixed = [clean_text(o) if amp or not unicodedata.is_normalized("NFC", c) else c for o, c, amp in
             zip(original.take(at).to_pylist(), cleaned.take(at).to_pylist(), entities[hard], strict=True)]
    mask = np.zeros(len(values), bool)
    mask[hard] = True
    return pc.replace_with_mask(cleaned, pa.array(mask), pa.array(fixed, pa.string()))


def json_escaped(values: "pa.Array") -> "pa.Array":
    """The inside of ``json.dumps(v, ensure_ascii=False)`` for strings without control characters."""
    import pyarrow.compute as pc

    return pc.replace_substring(pc.replace_substring(values, "\\", "\\\\"), '"', '\\"')


def json_string(values: "pa.Array") -> "pa.Array":
    """``json.dumps(v, ensure_ascii=False)`` of strings without control characters (null -> "null")."""
    import pyarrow.compute as pc

    return pc.fill_null(pc.binary_join_element_wise('"', json_escaped(values), '"', ""), "null")


def json_list(values: "pa.Array", lengths: np.ndarray) -> "pa.Array":
    """``json.dumps`` of each row's list of strings or nulls (``values`` flattened, ``lengths`` per row)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
    joined = pc.binary_join(pa.ListArray.from_arrays(offsets, json_string(values)), ", ")
    return pc.binary_join_element_wise("[", joined, "]", "")


def constant(value: str, n: int) -> "pa.Array":
    """``n`` copies of ``value`` as a string array (built from buffers: no per-row work)."""
    import pyarrow as pa

    data = value.encode()
    offsets = np.arange(n + 1, dtype=np.int64) * len(data)
    kind = pa.large_string() if offsets[-1] >= 2**31 else pa.string()
    offsets = offsets.astype(np.int32) if kind == pa.string() else offsets
    return pa.Array.from_buffers(kind, n, [None, pa.py_buffer(offsets), pa.py_buffer(data * n)]).cast(pa.string())


def with_nulls(values: "pa.Array", valid: np.ndarray) -> "pa.Array":
    """``values`` null where ``valid`` is False (and where they were null), without copying their data."""
    import pyarrow as pa

    if values.null_count:
        valid = valid & ~np.asarray(values.is_null().to_numpy(zero_copy_only=False), bool)
    bits = np.concatenate([np.zeros(values.offset, bool), valid])  # the bitmap shares the data's offset
    return pa.Array.from_buffers(values.type, len(values), [pa.py_buffer(np.packbits(bits, bitorder="little")),
                                                            *values.buffers()[1:]], offset=values.offset)


def prefixed(prefix: str, values: "pa.Array") -> "pa.Array":
    import pyarrow.compute as pc

    return pc.binary_replace_slice(values, 0, 0, prefix)


def _present(mask: np.ndarray, piece: "pa.Array") -> "pa.Array":
    import pyarrow as pa
    import pyarrow.compute as pc

    return pc.if_else(pa.array(mask), piece, pa.scalar(None, pa.string()))


def _targets(rec: "pa.Table", local_id: "pa.Array") -> tuple["pa.Array", np.ndarray, "pa.Array", np.ndarray]:
    """similar_books as edges: (targets in first-appearance order, per-row counts; sorted targets, per-row counts).
    Blank ids, repeats and self-loops dropped, as ``parse_record`` does."""
    import pyarrow as pa
    import pyarrow.compute as pc

    n = rec.num_rows
    values, parent, _ = _flat(rec["similar_books"].combine_chunks())
    keep = pc.fill_null(pc.not_equal(values, ""), False).to_numpy(zero_copy_only=False)
    keep &= pc.fill_null(pc.not_equal(values, local_id.take(pa.array(parent))), True).to_numpy(zero_copy_only=False)
    kept_at = np.flatnonzero(keep)
    values, parent = values.take(pa.array(kept_at)), parent[kept_at]
    order = pc.sort_indices(pa.record_batch({"p": parent, "v": values}),  # stable: equal ids keep their order
                            sort_keys=[("p", "ascending"), ("v", "ascending")]).to_numpy()
    p_sorted = parent[order]
    v_sorted = values.take(pa.array(order))
    first = np.ones(len(p_sorted), bool)
    if len(p_sorted) > 1:
        same_row = p_sorted[1:] == p_sorted[:-1]
        same_value = pc.equal(v_sorted.slice(1), v_sorted.slice(0, len(v_sorted) - 1)).to_numpy(zero_copy_only=False)
        first[1:] = ~(same_row & same_value)
    sorted_kept = v_sorted.filter(pa.array(first))
    sorted_counts = np.bincount(p_sorted[first], minlength=n)
    in_order = np.sort(order[first])
    return values.take(pa.array(in_order)), np.bincount(parent[in_order], minlength=n), sorted_kept, sorted_counts


def _sha1_hex(joined: "pa.Array") -> list[str]:
    import pyarrow as pa

    width = np.int64 if joined.type == pa.large_string() else np.int32
    offsets = np.frombuffer(joined.buffers()[1], width)[joined.offset:joined.offset + len(joined) + 1].tolist()
    data = memoryview(joined.buffers()[2]) if joined.buffers()[2] is not None else memoryview(b"")
    sha1 = hashlib.sha1
    return [sha1(data[a:b]).hexdigest() for a, b in zip(offsets[:-1], offsets[1:], strict=True)]


def goodreads_columns(rec: "pa.Table") -> dict[str, "pa.Array"]:
    """The parsed columns of rows ``python_rows`` leaves to Arrow (every row of ``rec``)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    n = rec.num_rows
    col = {name: rec[name].combine_chunks() for name in rec.column_names}
    local_id = col["book_id"]
    short_title = col["title_without_series"]
    title = clean_texts(pc.if_else(pc.fill_null(pc.not_equal(short_title, ""), False), short_title, col["title"]))
    description = clean_texts(col["description"])
    url = pc.if_else(pc.fill_null(pc.equal(col["image_url"], ""), True), pa.scalar(None, pa.string()),
                     col["image_url"])
    has_url = pc.is_valid(url).to_numpy(zero_copy_only=False)

    targets, target_counts, sorted_targets, sorted_counts = _targets(rec, local_id)
    relation = RELATIONS["goodreads"][0]
    pieces, present = {}, {}
    authors, _, author_counts = _flat(col["authors"])
    present["authors"] = author_counts > 0
    pieces["authors"] = json_list(pc.struct_field(authors, "author_id"), author_counts)
    for name in TEXT_ATTRS:
        present[name] = pc.fill_null(pc.not_equal(col[name], ""), False).to_numpy(zero_copy_only=False)
        pieces[name] = col[name]
    present["description"] = pc.not_equal(description, "").to_numpy(zero_copy_only=False)
    pieces["description"] = description
    present["is_ebook"] = np.ones(n, bool)
    pieces["is_ebook"] = pc.if_else(pc.fill_null(pc.equal(col["is_ebook"], "true"), False), "true", "false")
    series, series_parent, _ = _flat(col["series"])
    series_kept = np.flatnonzero(pc.fill_null(pc.not_equal(series, ""), False).to_numpy(zero_copy_only=False))
    series_counts = np.bincount(series_parent[series_kept], minlength=n)
    present["series"] = series_counts > 0
    pieces["series"] = json_list(series.take(pa.array(series_kept)), series_counts)
    shelves = pc.list_slice(col["popular_shelves"], 0, 10)
    shelf_items, _, shelf_counts = _flat(shelves)
    present["shelves"] = shelf_counts > 0
    pieces["shelves"] = json_list(pc.struct_field(shelf_items, "name"), shelf_counts)
    # json.dumps(attrs, sort_keys=True) in one join: is_ebook is always there, so the entries before it carry
    # the ", " after them and the ones after it the ", " before them; an absent entry is null, joined as "".
    keys = sorted(pieces)
    anchor = keys.index("is_ebook")
    quoted = set(TEXT_ATTRS) | {"description"}  # strings: quoted and escaped here, the others are JSON already
    parts = []
    for i, k in enumerate(keys):
        value = json_escaped(pieces[k]) if k in quoted else pieces[k]
        value = with_nulls(value, present[k]) if k != "is_ebook" else value
        left = ("" if i <= anchor else ", ") + f'"{k}": ' + ('"' if k in quoted else "")
        right = ('"' if k in quoted else "") + (", " if i < anchor else "")
        parts.append(pc.binary_join_element_wise(left, value, right, ""))
    attrs = pc.binary_join_element_wise("{", *parts, "}", "", null_handling="replace", null_replacement="")
    attr_count = np.sum([present[k] for k in keys], axis=0)

    link_offsets = pa.array(np.concatenate([[0], np.cumsum(sorted_counts)]).astype(np.int32))
    links = pc.binary_join(pa.ListArray.from_arrays(link_offsets, sorted_targets), f"\x1f{relation}>")
    links = prefixed(f"{relation}>", _present(sorted_counts > 0, links))  # "<relation>>target", sorted, \x1f-joined
    hashed = pc.binary_join_element_wise(title, pc.fill_null(url, ""), attrs, links, "\x1f", null_handling="skip")
    markers = "|".join(re.escape(m) for m in NOPHOTO_MARKERS)
    real_image = has_url & ~pc.fill_null(pc.match_substring_regex(url, markers), False).to_numpy(zero_copy_only=False)
    titled = pc.not_equal(title, "").to_numpy(zero_copy_only=False)
    edge_offsets = pa.array(np.concatenate([[0], np.cumsum(target_counts)]).astype(np.int32))
    edge_values = pa.StructArray.from_arrays(
        [prefixed(NAMESPACE["goodreads"] + ":", targets), constant(relation, len(targets))],
        names=["dst", "relation"])
    return {
        "node_id": prefixed(NAMESPACE["goodreads"] + ":", local_id),
        "title": title,
        "text": pc.if_else(pa.array(titled), title, pc.utf8_slice_codeunits(description, 0, 300)),
        "image_url": url,
        "has_real_image": pa.array(real_image),
        "attrs": attrs,
        "completeness": pa.array((attr_count + titled + has_url + target_counts).astype(np.int32)),
        "content_hash": pa.array(_sha1_hex(hashed), pa.string()),
        "edges": pa.ListArray.from_arrays(edge_offsets, edge_values),
    }


# ---- the block -------------------------------------------------------------------------------------------------------
class ParsedBlock(NamedTuple):
    nodes: "pa.Table"  # parsed rows that are nodes (reason null), in the job's parsed layout
    quarantine: "pa.Table"  # parsed rows with a reason, same layout
    lines: int  # physical lines in the block
    records: int  # non-blank lines: one parsed row each


def parse_block(source: str, source_uri: str, block: bytes | bytearray, first_line_no: int = 1) -> ParsedBlock:
    """The parsed rows of the records in ``block`` (whole lines; a file's last line may lack its newline).
    ``first_line_no`` is the physical line number of its first line. Blank lines are not records."""
    import pyarrow as pa

    from g2i_core.ingest.job import _arrow_parsed_schema

    schema = _arrow_parsed_schema()
    lines = split_lines(block)
    n = len(lines)
    line_nos = np.arange(first_line_no, first_line_no + n, dtype=np.int64)
    if source in ARROW_SOURCES and n:
        text, ok, unchanged = reader_lines(lines, block)
        rec = read_records(text, ok, (block if block.endswith(b"\n") else bytes(block) + b"\n") if unchanged else None)
        taken = np.flatnonzero(ok)
        if len(taken) < n:
            rec = rec.take(pa.array(taken))
        declined = python_rows(rec)
        if declined.any():
            ok[taken[declined]] = False
            rec = rec.filter(pa.array(~declined))
    else:
        ok = np.zeros(n, bool)
    nodes = [_arrow_rows(goodreads_columns(rec), source_uri, line_nos[ok], schema)] if ok.any() else []
    good, bad = [], []
    if not ok.all():
        at = np.flatnonzero(~ok)
        last_terminated = block.endswith(b"\n")
        for i, line in zip(at.tolist(), lines.take(pa.array(at)).to_pylist(), strict=True):
            body = _as_iter_lines_reads(line, i + 1 < n or last_terminated)
            if not body.strip():
                continue  # a blank line is not a record (as chunking.iter_lines)
            row = parse_line(source, body, int(line_nos[i]))
            (good if row["reason"] is None else bad).append(row)
    nodes += [_python_rows(good, source_uri)] if good else []
    return ParsedBlock(_concat(nodes, schema), _concat([_python_rows(bad, source_uri)] if bad else [], schema), n,
                       int(ok.sum()) + len(good) + len(bad))


def _as_iter_lines_reads(line: bytes, terminated: bool) -> bytes:
    """The line as ``chunking.iter_lines`` hands it on: without its line ending, or, over MAX_LINE_BYTES, its
    marker (the same size it reports for a line it read past the bound)."""
    if len(line) + terminated > MAX_LINE_BYTES + 2 or (not terminated and len(line) == MAX_LINE_BYTES + 2):
        size = len(line) - (1 if terminated and line.endswith(b"\r") else 0)  # iter_lines drops one "\r\n"
        return oversize_marker(size, line[:min(RAW_KEEP_CHARS, MAX_LINE_BYTES + 2)])  # what iter_lines had read
    body = line.rstrip(b"\r\n")
    return oversize_marker(len(body), body[:RAW_KEEP_CHARS]) if len(body) > MAX_LINE_BYTES else body


def _arrow_rows(cols: dict, source_uri: str, line_nos: np.ndarray, schema: "pa.Schema") -> "pa.Table":
    import pyarrow as pa

    nulls = pa.nulls(len(line_nos), pa.string())
    cols.update(source_uri=constant(source_uri, len(line_nos)),
                line_no=pa.array(line_nos), reason=nulls, detail=nulls, raw=nulls)
    return pa.Table.from_arrays([cols[f.name].cast(f.type) for f in schema], schema=schema)


def _python_rows(rows: list[dict], source_uri: str) -> "pa.Table":
    import pyarrow as pa

    from g2i_core.ingest.job import _rows_to_batch

    return pa.Table.from_batches([_rows_to_batch(rows, [source_uri] * len(rows), [r["line_no"] for r in rows])])


def _concat(tables: list, schema: "pa.Schema") -> "pa.Table":
    import pyarrow as pa

    return pa.concat_tables(tables) if tables else schema.empty_table()


def parse_marker(source: str, source_uri: str, marker: bytes, line_no: int = 1) -> ParsedBlock:
    """The quarantine row of a line the reader did not hold whole (``parsers.oversize_marker``)."""
    from g2i_core.ingest.job import _arrow_parsed_schema

    schema = _arrow_parsed_schema()
    return ParsedBlock(schema.empty_table(), _python_rows([parse_line(source, marker, line_no)], source_uri), 1, 1)
