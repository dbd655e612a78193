"""The ``attributes`` source: a table of items (CSV or Parquet) whose graph is the projection through
shared attribute values (ART500K-style: works by the same artist, genre or style are linked).

Input: one ``.csv`` / ``.csv.gz`` / ``.parquet`` file or a prefix holding several, with an ``id`` column,
optional ``title`` and ``image_url`` columns, and any attribute columns. ``--link-on artist,genre`` names
the attribute columns that link items; every other column is kept in ``attrs``.

Reading (``read_items``) streams each file once on the driver, like the JSON sources' re-chunk pass, and
validates every row as it is read: memory is bounded by bytes (a CSV line over ``MAX_LINE_BYTES`` is never
held whole, a quoted field over ``MAX_FIELD_CHARS`` is an error of that row), and a bad row becomes a
quarantine row with its 1-based line number (CSV: the physical line the row starts on; Parquet: the row's
position in its file). The parsed rows are written as Parquet chunks in the job's ``PARSED_SCHEMA`` and
read back by Spark, so dedupe, accounting, publishing and delta mode are the job's own.

The graph (``projection_edges``) is built in Spark from the deduplicated (in delta mode: merged) nodes.
Items sharing a value of a link attribute form a group of size n, ordered by ``sha256(attribute, value,
node_id)``. With the cap ``c = --max-links-per-value``:

* n <= c + 1: every pair of the group is linked;
* n > c + 1: item at position p is linked to the items at p +- 1 .. p +- floor(c/2) (mod n) and, when c is
  odd, to p + floor(n/2) or p - floor(n/2) (a perfect matching of the first 2*floor(n/2) positions).

Every link is written in both directions with ``relation`` = the attribute name, so through one value an
item has at most c distinct neighbours, out-degree <= c and in-degree <= c; over all link attributes an
item's out-degree and in-degree in ``edges`` are each <= c x (number of link attributes). A group of size
n makes at most n x c directed edges, never n^2. The order is a hash, so the links are deterministic
(the same input gives identical edges) and a value's sample of links is not biased by id or file order.
``projection_pairs`` is the same rule in plain Python (the sample benchmark and the tests use it).
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import logging
import math
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Iterator
from urllib.parse import urlsplit

from g2i_core.ingest.parsers import MAX_LINE_BYTES, RAW_KEEP_CHARS, RecordError, clean_text, is_real_image

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from g2i_core.storage import Storage

log = logging.getLogger(__name__)

SOURCE = "attributes"
NAMESPACE = "item"  # node ids are item:<id>
TABLE_SUFFIXES = (".csv", ".csv.gz", ".parquet")
RESERVED_COLUMNS = ("id", "title", "image_url")
DEFAULT_MAX_LINKS_PER_VALUE = 10
MAX_FIELD_CHARS = MAX_LINE_BYTES  # one CSV field (a quoted one may span lines) is at most this long
MAX_ID_CHARS = 512
LINK_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_ .-]{0,63}$")
_TOO_LONG = "\x00g2i:line_too_long\x00"  # stands for a CSV line over MAX_LINE_BYTES (never held whole)
_ROWS_PER_CHUNK = 100_000


# ---- options --------------------------------------------------------------------------------------------
def parse_link_on(value: str | Iterable[str]) -> tuple[str, ...]:
    """``"artist,genre"`` (or a list) -> ``("artist", "genre")``; names are column names, checked."""
    names = [v.strip() for v in (value.split(",") if isinstance(value, str) else value)]
    names = [n for n in names if n]
    for name in names:
        if not LINK_NAME.fullmatch(name):
            raise ValueError(f"--link-on column {name!r} must be 1-64 letters, digits, '_', ' ', '.' or '-'")
        if name in ("id", "image_url"):
            raise ValueError(f"--link-on cannot link on {name!r}: items sharing it are not related")
    if len(set(names)) != len(names):
        raise ValueError(f"--link-on names a column twice: {names}")
    return tuple(names)


def check_options(link_on: tuple[str, ...], max_links_per_value: int) -> None:
    if not link_on:
        raise ValueError("--source attributes needs --link-on COLUMN[,COLUMN...] (the attributes that link items)")
    parse_link_on(link_on)
    if not isinstance(max_links_per_value, int) or max_links_per_value < 1:
        raise ValueError(f"--max-links-per-value must be an integer >= 1, got {max_links_per_value!r}")


# ---- one row -> one parsed row ------------------------------------------------------------------------------
def _check_url(url: str | None) -> str | None:
    """An http(s) URL with a host, or None; anything else is a bad_field (hostile data never picks the scheme)."""
    if url is None or not url.strip():
        return None
    url = url.strip()
    if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in url) or len(url) > 4096:
        raise RecordError("bad_field", "image_url has whitespace or control characters, or is over 4096 chars")
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError as exc:
        raise RecordError("bad_field", f"image_url does not parse: {exc}") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise RecordError("bad_field", f"image_url scheme {parts.scheme[:20]!r} is not http or https")
    if not host:
        raise RecordError("bad_field", "image_url has no host")
    return url


def parse_item(row: dict[str, str | None]) -> dict:
    """Node fields of one item (``row``: column -> text or None); raises RecordError for a bad row."""
    for name, value in row.items():
        if value is not None and _TOO_LONG in value:
            raise RecordError("line_too_long", f"a line of this row is over {MAX_LINE_BYTES} bytes")
        if value is not None and any(0xDC80 <= ord(ch) <= 0xDCFF for ch in value):
            raise RecordError("encoding_error", f"column {name[:60]!r} is not valid UTF-8")
    local_id = (row.get("id") or "").strip()
    if not local_id:
        raise RecordError("missing_id")
    if len(local_id) > MAX_ID_CHARS or any(ord(ch) < 32 or ord(ch) == 127 for ch in local_id):
        raise RecordError("bad_field", f"id is over {MAX_ID_CHARS} characters or has control characters")
    image_url = _check_url(row.get("image_url"))
    title = clean_text(row.get("title"))
    attrs = {}
    for name in sorted(k for k in row if k not in RESERVED_COLUMNS):
        value = clean_text(row[name])
        if value:
            attrs[name] = value
    description = attrs.get("description", "")
    attrs_json = json.dumps(attrs, sort_keys=True, ensure_ascii=False)
    return {
        "node_id": f"{NAMESPACE}:{local_id}",
        "title": title,
        "text": title or description[:300],
        "image_url": image_url,
        "has_real_image": is_real_image(image_url),
        "attrs": attrs_json,
        "edges": [],  # the projection is built over all nodes, after dedupe: projection_edges
        "completeness": len(attrs) + bool(title) + bool(image_url),
        "content_hash": hashlib.sha1("\x1f".join([title, image_url or "", attrs_json]).encode()).hexdigest(),
    }


def _cell(value: Any, name: str) -> str | None:
    """A Parquet cell as text: strings as they are, numbers and dates spelled out; nested values are bad."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if not math.isfinite(value):
            raise RecordError("bad_field", f"{name[:60]} is {value}, expected a finite number")
        return repr(value)
    if hasattr(value, "isoformat"):
        return value.isoformat()
    raise RecordError("bad_field", f"{name[:60]} is {type(value).__name__}, expected a string or a number")


def _row_result(row: dict[str, str | None] | None, line_no: int, raw: str, error: RecordError | None) -> dict:
    if error is None:
        try:
            parsed = parse_item(row)
            parsed.update(line_no=line_no, reason=None, detail=None, raw=None)
            return parsed
        except RecordError as exc:
            error = exc
        except Exception as exc:  # the safety net: one row never fails the job
            error = RecordError(f"record_error:{type(exc).__name__}", f"{type(exc).__name__}: {exc}")
    return {"line_no": line_no, "reason": error.reason, "detail": _printable(str(error)[:300]),
            "raw": _printable(raw[:RAW_KEEP_CHARS]), "edges": []}


def _printable(text: str) -> str:
    """Invalid UTF-8 (kept as surrogates while reading) shown as U+FFFD, so the quarantine row can be stored."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


# ---- reading the table --------------------------------------------------------------------------------------
def list_table_files(storage: "Storage", raw_uri: str) -> list[str]:
    """``raw_uri`` itself if it names a table file, else every table file under that prefix."""
    if raw_uri.endswith(TABLE_SUFFIXES):
        if not storage.exists(raw_uri):
            raise FileNotFoundError(f"item table {raw_uri} does not exist")
        return [raw_uri]
    files = sorted(u for u in storage.list(raw_uri) if u.endswith(TABLE_SUFFIXES))
    if not files:
        raise FileNotFoundError(f"no item tables ({', '.join(TABLE_SUFFIXES)}) under {raw_uri}")
    return files


def _open(storage: "Storage", uri: str, buffer: int = 8 << 20) -> io.BufferedReader:
    """A seekable binary reader (ranged GETs on S3, so only what is read is fetched)."""
    source = storage.ranged_source(uri)
    return io.BufferedReader(source if not isinstance(source, str) else open(source, "rb"), buffer_size=buffer)


class _LineFeed:
    """Text lines for csv.reader, each at most ``MAX_LINE_BYTES`` characters: a longer line is read and
    dropped in blocks and replaced by a marker that makes its row ``line_too_long``. Counts physical lines
    and keeps the text of the current row for the quarantine."""

    def __init__(self, text: io.TextIOBase):
        self._text = text
        self.lines = 0
        self.row_text: list[str] = []

    def __iter__(self):
        return self

    def __next__(self) -> str:
        line = self._text.readline(MAX_LINE_BYTES + 2)
        if not line:
            raise StopIteration
        self.lines += 1
        if not line.endswith("\n") and len(line) >= MAX_LINE_BYTES + 2:
            head = line[:RAW_KEEP_CHARS]
            while line and not line.endswith("\n"):
                line = self._text.readline(1 << 20)
            line = head + _TOO_LONG + "\n"
        if sum(len(t) for t in self.row_text) < RAW_KEEP_CHARS:
            self.row_text.append(line)
        return line


def _csv_rows(stream: io.BufferedReader, uri: str, columns_needed: tuple[str, ...]) -> Iterator[dict]:
    if stream.peek(2)[:2] == b"\x1f\x8b":
        stream = io.BufferedReader(gzip.GzipFile(fileobj=stream, mode="rb"), buffer_size=1 << 22)
    # surrogateescape: invalid UTF-8 reaches the row (and becomes its encoding_error) instead of failing the file
    text = io.TextIOWrapper(stream, encoding="utf-8", errors="surrogateescape", newline="")
    feed = _LineFeed(text)
    limit = csv.field_size_limit()
    csv.field_size_limit(MAX_FIELD_CHARS)
    try:
        reader = csv.reader(feed, strict=True)
        header = None
        while header is None:
            try:
                first = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                raise ValueError(f"{uri}: the header line does not parse as CSV ({exc})") from None
            header = [h.strip().lstrip("\ufeff") for h in first] if first else None
        _check_columns(header, uri, columns_needed)
        while True:
            start = feed.lines + 1
            feed.row_text = []
            try:
                values = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                yield _row_result(None, start, "".join(feed.row_text), RecordError("parse_error", f"CSV: {exc}"))
                continue
            if not values:
                continue  # a blank line is not a record
            raw = "".join(feed.row_text)
            if any(_TOO_LONG in v for v in values):
                yield _row_result(None, start, raw.replace(_TOO_LONG, ""), RecordError(
                    "line_too_long", f"a line of this row is over {MAX_LINE_BYTES} bytes"))
                continue
            if len(values) != len(header):
                yield _row_result(None, start, raw, RecordError(
                    "parse_error", f"CSV row has {len(values)} fields, the header has {len(header)}"))
                continue
            yield _row_result(dict(zip(header, values, strict=True)), start, raw, None)
    finally:
        csv.field_size_limit(limit)


def _parquet_rows(stream: io.BufferedReader, uri: str, columns_needed: tuple[str, ...]) -> Iterator[dict]:
    import pyarrow.parquet as pq

    try:
        table_file = pq.ParquetFile(stream)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a file that is not Parquet
        raise ValueError(f"{uri} is not a readable Parquet file: {exc}") from None
    header = table_file.schema_arrow.names
    _check_columns(header, uri, columns_needed)
    line_no = 0
    for batch in table_file.iter_batches(batch_size=8192):
        for record in batch.to_pylist():
            line_no += 1
            try:
                row = {name: _cell(value, name) for name, value in record.items()}
            except RecordError as exc:
                yield _row_result(None, line_no, json.dumps(record, default=str, ensure_ascii=False), exc)
                continue
            yield _row_result(row, line_no, "", None)


def _check_columns(header: list[str], uri: str, columns_needed: tuple[str, ...]) -> None:
    if any(_printable(h) != h for h in header):
        raise ValueError(f"{uri}: the header is not valid UTF-8: {[_printable(h) for h in header][:50]}")
    dupes = sorted({h for h in header if header.count(h) > 1})
    if dupes:
        raise ValueError(f"{uri}: columns {dupes} appear more than once in the header")
    for name in ("id", *columns_needed):
        if name not in header:
            what = "'id' column" if name == "id" else f"--link-on column {name!r}"
            raise ValueError(f"{uri} has no {what}; its columns are {header[:50]}")


def iter_parsed(storage: "Storage", uri: str, link_on: tuple[str, ...]) -> Iterator[dict]:
    """Parsed rows (``line_no`` and the node fields, or ``reason``/``detail``/``raw``) of one table file."""
    with _open(storage, uri) as stream:
        rows = _parquet_rows if uri.endswith(".parquet") else _csv_rows
        yield from rows(stream, uri, link_on)


@dataclass(frozen=True)
class ItemChunks:
    """What ``run_ingest``'s accounting needs of the read pass (as the JSON sources' ``ChunkResult``)."""

    chunk_uris: list[str]
    lines_by_source: dict[str, int]

    @property
    def lines_in(self) -> int:
        return sum(self.lines_by_source.values())


_SCALARS = ("node_id", "title", "text", "image_url", "has_real_image", "attrs", "completeness", "content_hash",
            "reason", "detail", "raw")


def _arrow_schema():
    from g2i_core.ingest.job import _arrow_parsed_schema  # one definition of the parsed rows' layout

    return _arrow_parsed_schema()


def write_chunks(storage: "Storage", raw_uri: str, link_on: tuple[str, ...], staging_uri: str,
                 rows_per_chunk: int = _ROWS_PER_CHUNK) -> ItemChunks:
    """Read every table under ``raw_uri`` into parsed Parquet chunks under ``staging_uri``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = _arrow_schema()
    storage.delete_prefix(staging_uri)
    uris, lines_by_source = [], {}
    started = time.monotonic()

    def flush(source_uri: str, rows: list[dict]) -> None:
        cols = {name: [r.get(name) for r in rows] for name in _SCALARS}
        cols.update(source_uri=[source_uri] * len(rows), line_no=[r["line_no"] for r in rows],
                    edges=[[] for _ in rows])
        table = pa.table({f.name: pa.array(cols[f.name], f.type) for f in schema}, schema=schema)
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd", compression_level=1)
        uri = f"{staging_uri.rstrip('/')}/chunk-{len(uris):05d}.parquet"
        storage.put_bytes(uri, buf.getvalue())
        uris.append(uri)

    for source_uri in list_table_files(storage, raw_uri):
        batch: list[dict] = []
        count = 0
        for row in iter_parsed(storage, source_uri, link_on):
            batch.append(row)
            count += 1
            if len(batch) >= rows_per_chunk:
                flush(source_uri, batch)
                batch = []
                log.info("attributes %s: %d rows so far (%.0f rows/s)", source_uri.rsplit("/", 1)[-1], count,
                         count / max(time.monotonic() - started, 1e-6))
        if batch:
            flush(source_uri, batch)
        lines_by_source[source_uri] = count
    return ItemChunks(uris, lines_by_source)


def read_items(spark: "SparkSession", storage: "Storage", cfg, staging_uri: str) -> tuple[ItemChunks, "DataFrame"]:
    """The read pass of ``run_ingest`` for ``--source attributes``: (accounting, parsed rows in
    ``PARSED_SCHEMA``, one per data row). ``cfg`` is the resolved ``IngestConfig``."""
    from g2i_core.ingest.job import PARSED_SCHEMA

    chunks = write_chunks(storage, cfg.raw_uri, tuple(cfg.link_on), staging_uri)
    if not chunks.chunk_uris:
        return chunks, spark.createDataFrame([], PARSED_SCHEMA)
    return chunks, spark.read.schema(PARSED_SCHEMA).parquet(*[storage.spark_uri(u) for u in chunks.chunk_uris])


# ---- the projection -----------------------------------------------------------------------------------------
def _order_key(relation: str, value: str, node_id: str) -> str:
    return hashlib.sha256("\x1f".join((relation, value, node_id)).encode("utf-8")).hexdigest()


def link_offsets(pos: int, n: int, cap: int) -> list[int]:
    """Positions (in a group of ``n`` ordered items) that the item at ``pos`` links to, as offsets mod n."""
    if n <= cap + 1:
        return list(range(1, n))
    half = cap // 2
    out = [j for j in range(1, half + 1)] + [n - j for j in range(1, half + 1)]
    m = n // 2
    if cap % 2 and pos < 2 * m:
        out.append(m if pos < m else n - m)
    return out


def projection_pairs(items: dict[str, dict[str, str]], link_on: tuple[str, ...], cap: int) -> list[tuple]:
    """The edges ``projection_edges`` builds, in plain Python: ``items`` is node_id -> attrs (as stored in
    ``nodes.attrs``); returns sorted (src, dst, relation) triples."""
    out = []
    for relation in link_on:
        groups: dict[str, list[str]] = {}
        for node_id, attrs in items.items():
            value = attrs.get(relation)
            if value:
                groups.setdefault(value, []).append(node_id)
        for value, members in groups.items():
            ordered = sorted(members, key=lambda node: (_order_key(relation, value, node), node))
            n = len(ordered)
            for pos, src in enumerate(ordered):
                out += [(src, ordered[(pos + j) % n], relation) for j in link_offsets(pos, n, cap)]
    return sorted(out)


def projection_edges(nodes: "DataFrame", link_on: Iterable[str], cap: int) -> "DataFrame":
    """(src, dst, relation, weight) of the bounded projection of ``nodes`` (needs node_id and attrs) through
    the ``link_on`` attributes; see the module docstring for the rule and the degree bound."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    link_on = tuple(link_on)
    check_options(link_on, cap)
    values = nodes.select("node_id", F.from_json("attrs", "map<string,string>").alias("a"))
    members = None
    for relation in link_on:
        part = values.select("node_id", F.lit(relation).alias("relation"), F.col("a")[relation].alias("value"))
        members = part if members is None else members.unionByName(part)
    members = members.where(F.col("value").isNotNull() & (F.col("value") != ""))
    group = Window.partitionBy("relation", "value")
    order = F.sha2(F.concat_ws("\x1f", "relation", "value", "node_id"), 256)
    ranked = (members.withColumn("pos", F.row_number().over(group.orderBy(order, "node_id")) - 1)
              .withColumn("n", F.count(F.lit(1)).over(group)).where("n > 1"))
    half, m = cap // 2, F.floor(F.col("n") / 2)
    ring = [F.lit(j) for j in range(1, half + 1)] + [F.col("n") - j for j in range(1, half + 1)]
    if cap % 2:  # the matching: p <-> p + floor(n/2) for p < floor(n/2)
        match = F.when(F.col("pos") < m, F.array(m)).when(F.col("pos") < 2 * m, F.array(F.col("n") - m))
        sparse = F.concat(F.array(*ring) if ring else F.array().cast("array<bigint>"),
                          F.coalesce(match, F.array().cast("array<bigint>")).cast("array<bigint>"))
    else:
        sparse = F.array(*ring).cast("array<bigint>")
    offsets = F.when(F.col("n") <= cap + 1, F.sequence(F.lit(1).cast("bigint"), (F.col("n") - 1).cast("bigint"))
                     ).otherwise(sparse.cast("array<bigint>"))
    links = ranked.select("relation", "value", "n", F.col("node_id").alias("src"),
                          F.explode(offsets).alias("offset"), "pos")
    links = links.select("relation", "value", "src", ((F.col("pos") + F.col("offset")) % F.col("n")).alias("pos"))
    targets = ranked.select("relation", "value", "pos", F.col("node_id").alias("dst"))
    return (links.join(targets, ["relation", "value", "pos"])
            .select("src", "dst", "relation", F.lit(1.0).alias("weight")))

