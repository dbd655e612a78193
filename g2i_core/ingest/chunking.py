"""Re-chunk raw dumps so Spark can parse them in parallel.

A ``.gz`` file is one unsplittable stream: Spark would give a 10 GB dump to a single task. The first
pass here streams it once (gunzip only, no parsing) and writes Parquet chunks of ``(source_uri,
line_no, raw)``; every chunk is its own Spark task, so parsing uses every core and every executor.
Raw lines stay bytes so invalid UTF-8 reaches the parser (and the quarantine) instead of failing here.
"""

from __future__ import annotations

import gzip
import io
import logging
import time
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Iterator

if TYPE_CHECKING:
    from g2i_core.storage import Storage

log = logging.getLogger(__name__)
RAW_SUFFIXES = (".json.gz", ".jsonl.gz", ".json", ".jsonl", ".gz")


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
        return io.BufferedReader(gzip.GzipFile(fileobj=buffered, mode="rb"), buffer_size=1 << 22)
    return buffered


def iter_line_batches(reader: IO[bytes], batch_lines: int) -> Iterator[list[bytes]]:
    batch: list[bytes] = []
    for line in reader:
        line = line.rstrip(b"\r\n")
        if not line.strip():  # blank lines (a trailing newline) are not records
            continue
        batch.append(line)
        if len(batch) >= batch_lines:
            yield batch
            batch = []
    if batch:
        yield batch


def rechunk(storage: "Storage", raw_uri: str, staging_uri: str, chunk_lines: int = 100_000) -> ChunkResult:
    """Stream every dump under ``raw_uri`` into Parquet chunks under ``staging_uri``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if chunk_lines < 1:
        raise ValueError(f"chunk_lines must be >= 1, got {chunk_lines}")
    storage.delete_prefix(staging_uri)  # a rerun never mixes in chunks of an earlier attempt
    uris, lines_by_source = [], {}
    started = time.monotonic()
    for source_uri in list_raw_files(storage, raw_uri):
        line_no = 0
        with open_raw(storage, source_uri) as reader:
            for batch in iter_line_batches(reader, chunk_lines):
                table = pa.table({
                    "source_uri": pa.array([source_uri] * len(batch), pa.string()),
                    "line_no": pa.array(range(line_no + 1, line_no + len(batch) + 1), pa.int64()),
                    "raw": pa.array(batch, pa.binary()),
                })
                line_no += len(batch)
                buf = io.BytesIO()
                pq.write_table(table, buf, compression="zstd", compression_level=1)
                uri = f"{staging_uri.rstrip('/')}/chunk-{len(uris):05d}.parquet"
                storage.put_bytes(uri, buf.getvalue())
                uris.append(uri)
                log.info("rechunk %s: %d lines so far (%.0f lines/s)", source_uri.rsplit("/", 1)[-1], line_no,
                         line_no / max(time.monotonic() - started, 1e-6))
        lines_by_source[source_uri] = line_no
    return ChunkResult(uris, lines_by_source)
