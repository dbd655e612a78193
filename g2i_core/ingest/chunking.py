"""Re-chunk raw dumps so Spark can parse them in parallel.

A ``.gz`` file is one unsplittable stream: Spark would give a 10 GB dump to a single task. The first
pass here streams it once (gunzip only, no parsing) and writes Parquet chunks of ``(source_uri,
line_no, raw, valid_utf8)``; every chunk is its own Spark task, so parsing uses every core and every executor.
Raw lines stay bytes so invalid UTF-8 reaches the parser (and the quarantine) instead of failing here.

Memory is bounded by bytes, never by what the dump holds: a line is read with ``readline(limit)``, and
one over ``MAX_LINE_BYTES`` is skipped to its newline in 1 MiB blocks and stored as a small marker
(its size and first bytes, see ``parsers.oversize_marker``) that the parser quarantines as
``line_too_long``. A chunk holds at most ``chunk_lines`` lines and ``chunk_bytes`` bytes of lines.
``line_no`` is the 1-based physical line number in its file (blank lines are counted but are not records).
"""

from __future__ import annotations

import gzip
import io
import logging
import time
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Iterator

from g2i_core.ingest.parsers import MAX_LINE_BYTES, RAW_KEEP_CHARS, oversize_marker

if TYPE_CHECKING:
    from g2i_core.storage import Storage

log = logging.getLogger(__name__)
RAW_SUFFIXES = (".json.gz", ".jsonl.gz", ".json", ".jsonl", ".gz")
DEFAULT_CHUNK_BYTES = 64 << 20  # bytes of lines per chunk (with at most MAX_LINE_BYTES more for the last line)
UTF8_CHECK_LINES = 4096  # lines per UTF-8 validity check
SKIP_BLOCK_BYTES = 1 << 20  # the rest of an oversized line is read and dropped in blocks of this size


@dataclass(frozen=True)
class ChunkResult:
    chunk_uris: list[str]
    lines_by_source: dict[str, int]

    @property
    def lines_in(self) -> int:
        return sum(self.lines_by_source.values())


def list_raw_files(storage: "Storage", raw_uri: str) -> list[str]:
    """``raw_uri`` itself if it names a dump file, else every dump file under that prefix."""
    if raw_uri.endswith(RAW_SUFFIXES):
        if not storage.exists(raw_uri):
            raise FileNotFoundError(f"raw dump {raw_uri} does not exist")
        return [raw_uri]
    files = [u for u in storage.list(raw_uri) if u.endswith(RAW_SUFFIXES)]
    if not files:
        raise FileNotFoundError(f"no dump files ({', '.join(RAW_SUFFIXES)}) under {raw_uri}")
    return files


class _BodyReader(io.RawIOBase):
    """botocore's StreamingBody as a raw io stream (so it can be buffered and gunzipped lazily)."""

    def __init__(self, body):
        self._body = body

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self._body.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self._body.close()
        super().close()


def open_raw(storage: "Storage", uri: str) -> IO[bytes]:
    """A streaming binary reader over a local or S3 object, gunzipped when it starts with gzip magic."""
    if uri.startswith("s3://"):
        bucket, key = storage._split_s3(uri)
        stream: IO[bytes] = _BodyReader(storage.s3.get_object(Bucket=bucket, Key=key)["Body"])
    else:
        stream = open(storage._local(uri), "rb")
    buffered = io.BufferedReader(stream, buffer_size=1 << 20) if not isinstance(stream, io.BufferedReader) else stream
    if buffered.peek(2)[:2] == b"\x1f\x8b":
        return io.BufferedReader(_gunzip(buffered), buffer_size=1 << 22)
    return buffered


def _gunzip(stream: IO[bytes]) -> IO[bytes]:
    """ISA-L's igzip when installed (same format and checks, ~3x zlib's inflate speed), else the gzip module."""
    try:
        from isal import igzip
    except ImportError:  # pragma: no cover - isal is a dependency; a bare install still reads gzip
        return gzip.GzipFile(fileobj=stream, mode="rb")
    return igzip.IGzipFile(fileobj=stream, mode="rb")


def iter_lines(reader: IO[bytes], max_line_bytes: int = MAX_LINE_BYTES) -> Iterator[tuple[int, bytes]]:
    """``(line_no, line)`` for every non-blank line, without its line ending. A line over ``max_line_bytes``
    is never held whole: what is past the bound is read in ``SKIP_BLOCK_BYTES`` blocks and dropped, and
    the line comes back as ``oversize_marker(size, first bytes)``."""
    limit = max_line_bytes + 2  # room for the "\r\n" after a line of exactly the bound
    line_no = 0
    while True:
        line = reader.readline(limit)
        if not line:
            return
        line_no += 1
        if line.endswith(b"\n") or len(line) < limit:  # the whole line (or the file's last, unterminated one)
            body = line.rstrip(b"\r\n")
            if len(body) <= max_line_bytes:
                if body.strip():  # blank lines (a trailing newline) are not records
                    yield line_no, body
                continue
            yield line_no, oversize_marker(len(body), body[:RAW_KEEP_CHARS])
            continue
        head, size, tail = line[:RAW_KEEP_CHARS], len(line), line[-2:]
        del line
        while not tail.endswith(b"\n"):
            block = reader.readline(SKIP_BLOCK_BYTES)
            if not block:
                break
            size += len(block)
            tail = (tail + block[-2:])[-2:]
        size -= 2 if tail == b"\r\n" else 1 if tail.endswith(b"\n") else 0
        log.warning("line %d is %d bytes, over the %d-byte bound: skipped (quarantined as line_too_long)",
                    line_no, size, max_line_bytes)
        yield line_no, oversize_marker(size, head)


def iter_line_batches(reader: IO[bytes], batch_lines: int,
                      batch_bytes: int = DEFAULT_CHUNK_BYTES) -> Iterator[tuple[list[int], list[bytes]]]:
    """``(line numbers, lines)`` in batches of at most ``batch_lines`` lines and ``batch_bytes`` bytes (a
    single line longer than ``batch_bytes`` is a batch of its own)."""
    numbers: list[int] = []
    batch: list[bytes] = []
    size = 0
    for line_no, line in iter_lines(reader):
        if batch and size + len(line) > batch_bytes:
            yield numbers, batch
            numbers, batch, size = [], [], 0
        numbers.append(line_no)
        batch.append(line)
        size += len(line)
        if len(batch) >= batch_lines:
            yield numbers, batch
            numbers, batch, size = [], [], 0
    if batch:
        yield numbers, batch


def utf8_flags(lines: list[bytes]) -> list[bool]:
    """Whether each line is valid UTF-8 (the native parser takes only those). One decode per slice of lines
    (a few MiB at most held twice), line by line only in a slice that holds a bad one."""
    flags: list[bool] = []
    for start in range(0, len(lines), UTF8_CHECK_LINES):
        part = lines[start:start + UTF8_CHECK_LINES]
        try:
            b"\n".join(part).decode("utf-8")
            flags.extend([True] * len(part))
        except UnicodeDecodeError:
            flags.extend(_decodes(line) for line in part)
    return flags


def _decodes(line: bytes) -> bool:
    try:
        line.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def rechunk(storage: "Storage", raw_uri: str, staging_uri: str, chunk_lines: int = 100_000,
            chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> ChunkResult:
    """Stream every dump under ``raw_uri`` into Parquet chunks under ``staging_uri``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if chunk_lines < 1:
        raise ValueError(f"chunk_lines must be >= 1, got {chunk_lines}")
    if chunk_bytes < 1:
        raise ValueError(f"chunk_bytes must be >= 1, got {chunk_bytes}")
    storage.delete_prefix(staging_uri)  # a rerun never mixes in chunks of an earlier attempt
    uris, lines_by_source = [], {}
    started = time.monotonic()
    for source_uri in list_raw_files(storage, raw_uri):
        lines = 0
        with open_raw(storage, source_uri) as reader:
            for numbers, batch in iter_line_batches(reader, chunk_lines, chunk_bytes):
                table = pa.table({
                    "source_uri": pa.array([source_uri] * len(batch), pa.string()),
                    "line_no": pa.array(numbers, pa.int64()),
                    "raw": pa.array(batch, pa.binary()),
                    "valid_utf8": pa.array(utf8_flags(batch), pa.bool_()),
                })
                lines += len(batch)
                del batch
                buf = io.BytesIO()
                pq.write_table(table, buf, compression="zstd", compression_level=1)
                del table
                uri = f"{staging_uri.rstrip('/')}/chunk-{len(uris):05d}.parquet"
                storage.put_bytes(uri, buf.getvalue())
                uris.append(uri)
                log.info("rechunk %s: %d lines so far (%.0f lines/s)", source_uri.rsplit("/", 1)[-1], lines,
                         lines / max(time.monotonic() - started, 1e-6))
        lines_by_source[source_uri] = lines
    return ChunkResult(uris, lines_by_source)
