"""One storage API over ``s3://`` (boto3) and ``file://`` (local disk).

Layout of a published table ``<root>/<name>/``::

    run=<run_id>/part-*.parquet        data, written first (by pyarrow here or by Spark)
    _manifests/<run_id>.json           files + row counts of that run, written after all data
    _LATEST                            {"run_id": ...}, written last: the only thing readers follow

Readers resolve ``_LATEST`` -> manifest -> the exact files it lists, so a killed writer (missing
manifest, stray part files) is invisible, and a rerun of the same run_id replaces its data before
re-pointing. Single-object PUTs are atomic on S3; on disk we write a temp file and ``os.replace``.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import random
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, TypeVar
from urllib.parse import urlparse

if TYPE_CHECKING:
    import pyarrow as pa

    from g2i_core.config import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")


class StorageError(RuntimeError):
    pass


class NotPublishedError(StorageError, FileNotFoundError):
    pass


_TRANSIENT_CODES = {"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "503", "500", "Throttling"}


def _is_transient(exc: BaseException) -> bool:
    from botocore.exceptions import ClientError, ReadTimeoutError
    from botocore.exceptions import ConnectionError as BotoConnectionError

    if isinstance(exc, (BotoConnectionError, ReadTimeoutError, ConnectionError, TimeoutError)):
        return True
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = str(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
        return code in _TRANSIENT_CODES or status in {"500", "502", "503", "504"}
    return False


def with_retries(fn: Callable[[], T], *, attempts: int = 6, base_delay: float = 0.2, what: str = "s3 call") -> T:
    """Call ``fn`` retrying transient S3 errors with exponential backoff and full jitter."""
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - filtered by _is_transient
            if attempt == attempts or not _is_transient(exc):
                raise
            delay = random.uniform(0, base_delay * 2 ** (attempt - 1))
            log.warning("%s failed (%s); retry %d/%d in %.2fs", what, type(exc).__name__, attempt, attempts - 1, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class ContentRef:
    key: str  # relative to the storage root, e.g. images/ab/ab12....png
    sha256: str
    size: int
    created: bool  # False when the object already existed (dedupe hit)


class Storage:
    """Objects, listings, Parquet tables and atomic publishes under one root URI."""

    def __init__(self, root: str, *, settings: "Settings | None" = None, s3_client: Any = None):
        parsed = urlparse(root)
        if parsed.scheme not in {"s3", "file"}:
            raise ValueError(f"storage root must be s3://bucket[/prefix] or file:///path, got {root!r}")
        self.root = root.rstrip("/")
        self.scheme = parsed.scheme
        self._settings = settings
        self._client = s3_client
        self._attempts = settings.s3_max_attempts if settings else 6

    @classmethod
    def from_settings(cls, settings: "Settings", root: str | None = None) -> "Storage":
        return cls(root or settings.storage_root, settings=settings)

    # ---- addressing ------------------------------------------------------------------------
    def uri(self, *parts: str) -> str:
        rel = "/".join(p.strip("/") for p in parts if p)
        return f"{self.root}/{rel}" if rel else self.root

    def child(self, *parts: str) -> "Storage":
        return Storage(self.uri(*parts), settings=self._settings, s3_client=self._client)

    def spark_uri(self, uri: str) -> str:
        """The URI Spark's Hadoop filesystem understands (s3a:// for S3)."""
        return "s3a://" + uri[len("s3://"):] if uri.startswith("s3://") else uri

    @property
    def s3(self):
        if self._client is None:
            self._client = make_s3_client(self._settings)
        return self._client

    @staticmethod
    def _split_s3(uri: str) -> tuple[str, str]:
        p = urlparse(uri)
        return p.netloc, p.path.lstrip("/")

    @staticmethod
    def _local(uri: str) -> Path:
        return Path(urlparse(uri).path)

    def _is_s3(self, uri: str) -> bool:
        if uri.startswith("s3://"):
            return True
        if uri.startswith("file://"):
            return False
        raise ValueError(f"not an s3:// or file:// URI: {uri!r}")

    # ---- objects ---------------------------------------------------------------------------
    def put_bytes(self, uri: str, data: bytes, content_type: str | None = None) -> None:
        if self._is_s3(uri):
            bucket, key = self._split_s3(uri)
            extra = {"ContentType": content_type} if content_type else {}
            with_retries(lambda: self.s3.put_object(Bucket=bucket, Key=key, Body=data, **extra),
                         attempts=self._attempts, what=f"PUT {uri}")
            return
        path = self._local(uri)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)  # atomic on POSIX: readers see old or new, never half

    def get_bytes(self, uri: str) -> bytes:
        if self._is_s3(uri):
            bucket, key = self._split_s3(uri)

            def get():
                try:
                    return self.s3.get_object(Bucket=bucket, Key=key)["Body"].read()
                except self.s3.exceptions.NoSuchKey:
                    raise FileNotFoundError(uri) from None

            return with_retries(get, attempts=self._attempts, what=f"GET {uri}")
        return self._local(uri).read_bytes()

    def put_json(self, uri: str, obj: Any) -> None:
        self.put_bytes(uri, json.dumps(obj, indent=2, sort_keys=True, default=str).encode(), "application/json")

    def get_json(self, uri: str) -> Any:
        return json.loads(self.get_bytes(uri))

    def exists(self, uri: str) -> bool:
        if self._is_s3(uri):
            from botocore.exceptions import ClientError

            bucket, key = self._split_s3(uri)
            try:
                with_retries(lambda: self.s3.head_object(Bucket=bucket, Key=key), attempts=self._attempts,
                             what=f"HEAD {uri}")
                return True
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in {"404", "NoSuchKey", "NotFound"}:
                    return False
                raise
        return self._local(uri).exists()

    def list(self, prefix_uri: str) -> list[str]:
        """All object URIs under a prefix (recursive), sorted."""
        if self._is_s3(prefix_uri):
            bucket, key = self._split_s3(prefix_uri.rstrip("/") + "/")
            out: list[str] = []
            paginator = self.s3.get_paginator("list_objects_v2")
            pages = with_retries(lambda: list(paginator.paginate(Bucket=bucket, Prefix=key)),
                                 attempts=self._attempts, what=f"LIST {prefix_uri}")
            for page in pages:
                out.extend(f"s3://{bucket}/{o['Key']}" for o in page.get("Contents", []))
            return sorted(out)
        base = self._local(prefix_uri)
        if not base.exists():
            return []
        return sorted(f"file://{p}" for p in base.rglob("*") if p.is_file() and not p.name.endswith(".tmp"))

    def delete_prefix(self, prefix_uri: str) -> int:
        if self._is_s3(prefix_uri):
            uris = self.list(prefix_uri)
            bucket, _ = self._split_s3(prefix_uri)
            for i in range(0, len(uris), 1000):
                batch = [{"Key": self._split_s3(u)[1]} for u in uris[i:i + 1000]]
                with_retries(lambda b=batch: self.s3.delete_objects(Bucket=bucket, Delete={"Objects": b}),
                             attempts=self._attempts, what=f"DELETE {prefix_uri}")
            return len(uris)
        base = self._local(prefix_uri)
        if not base.exists():
            return 0
        n = sum(1 for p in base.rglob("*") if p.is_file())
        shutil.rmtree(base)
        return n

    def put_content_addressed(self, data: bytes, prefix: str = "images", ext: str = "bin",
                              content_type: str | None = None) -> ContentRef:
        """Store bytes at ``<prefix>/<sha[:2]>/<sha>.<ext>``; identical bytes are stored once."""
        sha = hashlib.sha256(data).hexdigest()
        key = f"{prefix.strip('/')}/{sha[:2]}/{sha}.{ext.lstrip('.')}"
        uri = self.uri(key)
        if self.exists(uri):
            return ContentRef(key, sha, len(data), created=False)
        self.put_bytes(uri, data, content_type)
        return ContentRef(key, sha, len(data), created=True)

    # ---- parquet ---------------------------------------------------------------------------
    def write_parquet(self, uri: str, table: "pa.Table") -> None:
        import pyarrow.parquet as pq

        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd")
        self.put_bytes(uri, buf.getvalue(), "application/vnd.apache.parquet")

    def read_parquet(self, uris: str | Iterable[str], columns: list[str] | None = None) -> "pa.Table":
        """Read one Parquet file, a list of files, or every *.parquet under a prefix."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        if isinstance(uris, str):
            uris = [uris] if uris.endswith(".parquet") else [u for u in self.list(uris) if u.endswith(".parquet")]
        tables = [pq.read_table(io.BytesIO(self.get_bytes(u)), columns=columns) for u in uris]
        if not tables:
            raise FileNotFoundError(f"no parquet files in {uris!r}")
        return pa.concat_tables(tables, promote_options="default") if len(tables) > 1 else tables[0]

    def parquet_footer_source(self, uri: str):
        """A seekable file for ``uri`` that reads only the byte ranges asked for (S3 ranged GETs),
        so Parquet footers are read without downloading whole files."""
        if not self._is_s3(uri):
            return str(self._local(uri))
        bucket, key = self._split_s3(uri)
        size = with_retries(lambda: self.s3.head_object(Bucket=bucket, Key=key), attempts=self._attempts,
                            what=f"HEAD {uri}")["ContentLength"]
        return _S3RangeFile(self.s3, bucket, key, size, self._attempts)

    # ---- atomic publish --------------------------------------------------------------------
    def table_uri(self, name: str) -> str:
        return self.uri(name)

    def run_data_uri(self, name: str, run_id: str) -> str:
        _check_run_id(run_id)
        return self.uri(name, f"run={run_id}")

    def publish_table(self, name: str, table: "pa.Table", run_id: str, *, extra: dict | None = None,
                      max_rows_per_file: int = 1_000_000) -> dict:
        """Write a pyarrow table as run ``run_id`` of ``name`` and publish it (replaces a previous
        attempt of the same run_id)."""
        data_uri = self.run_data_uri(name, run_id)
        self.delete_prefix(data_uri)
        files = []
        n = max(table.num_rows, 1)
        for i, start in enumerate(range(0, n, max_rows_per_file)):
            part = table.slice(start, max_rows_per_file)
            uri = f"{data_uri}/part-{i:05d}.parquet"
            self.write_parquet(uri, part)
            files.append({"uri": uri, "rows": part.num_rows})
        return self._write_manifest(name, run_id, files, schema=str(table.schema), extra=extra)

    def publish_written(self, name: str, run_id: str, *, rows: int | None = None, extra: dict | None = None) -> dict:
        """Publish data that another writer (Spark) already put under ``run_data_uri(name, run_id)``.

        Per-file row counts are read from the Parquet footers, so the manifest is exact."""
        import pyarrow.parquet as pq

        data_uri = self.run_data_uri(name, run_id)
        files = []
        for uri in self.list(data_uri):
            if not uri.endswith(".parquet"):
                continue
            meta = pq.read_metadata(self.parquet_footer_source(uri))
            files.append({"uri": uri, "rows": meta.num_rows})
        total = sum(f["rows"] for f in files)
        if rows is not None and rows != total:
            raise StorageError(f"{name} run {run_id}: writer reported {rows} rows but files hold {total}")
        return self._write_manifest(name, run_id, files, schema=None, extra=extra)

    def _write_manifest(self, name: str, run_id: str, files: list[dict], schema: str | None,
                        extra: dict | None) -> dict:
        manifest = {
            "table": name,
            "run_id": run_id,
            "files": [f["uri"][len(self.root) + 1:] for f in files],  # relative: the root may be moved
            "file_rows": [f["rows"] for f in files],
            "rows": sum(f["rows"] for f in files),
            "schema": schema,
            "published_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "extra": extra or {},
        }
        self.put_json(self.uri(name, "_manifests", f"{run_id}.json"), manifest)
        self.put_json(self.uri(name, "_LATEST"), {"run_id": run_id})  # the commit point
        log.info("published %s run=%s rows=%d files=%d", name, run_id, manifest["rows"], len(files))
        return manifest

    def manifest(self, name: str, run_id: str | None = None) -> dict:
        if run_id is None:
            try:
                run_id = self.get_json(self.uri(name, "_LATEST"))["run_id"]
            except FileNotFoundError:
                raise NotPublishedError(f"table {name!r} has no published run under {self.root}") from None
        try:
            return self.get_json(self.uri(name, "_manifests", f"{run_id}.json"))
        except FileNotFoundError:
            raise NotPublishedError(f"table {name!r} has no published run {run_id!r} under {self.root}") from None

    def published_files(self, name: str, run_id: str | None = None) -> list[str]:
        return [self.uri(f) for f in self.manifest(name, run_id)["files"]]

    def is_published(self, name: str, run_id: str | None = None) -> bool:
        try:
            self.manifest(name, run_id)
            return True
        except NotPublishedError:
            return False

    def read_table(self, name: str, run_id: str | None = None, columns: list[str] | None = None) -> "pa.Table":
        """The latest (or a given) published run of a table."""
        m = self.manifest(name, run_id)
        table = self.read_parquet([self.uri(f) for f in m["files"]], columns=columns)
        if table.num_rows != m["rows"]:
            raise StorageError(f"{name} run {m['run_id']}: manifest says {m['rows']} rows, files hold {table.num_rows}")
        return table


class _S3RangeFile(io.RawIOBase):
    """Read-only, seekable view of one S3 object; each read is one ranged GET."""

    def __init__(self, client, bucket: str, key: str, size: int, attempts: int):
        self._client, self._bucket, self._key, self._size, self._attempts = client, bucket, key, size, attempts
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer) -> int:
        n = min(len(buffer), self._size - self._pos)
        if n <= 0:
            return 0
        rng = f"bytes={self._pos}-{self._pos + n - 1}"
        data = with_retries(lambda: self._client.get_object(Bucket=self._bucket, Key=self._key, Range=rng)["Body"].read(),
                            attempts=self._attempts, what=f"GET {self._key} {rng}")
        buffer[: len(data)] = data
        self._pos += len(data)
        return len(data)


def _check_run_id(run_id: str) -> None:
    if not run_id or "/" in run_id or run_id.startswith("."):
        raise ValueError(f"run_id must be a non-empty name without '/', got {run_id!r}")


def make_s3_client(settings: "Settings | None"):
    import boto3
    from botocore.config import Config

    from g2i_core.config import Settings

    settings = settings or Settings.load()
    cfg = Config(
        retries={"max_attempts": settings.s3_max_attempts, "mode": "standard"},
        s3={"addressing_style": "path" if settings.s3_path_style else "auto"},
        connect_timeout=5,
        read_timeout=60,
        signature_version="s3v4",
    )
    return boto3.client(
        "s3",
        endpoint_url=settings.s3_endpoint or None,
        region_name=settings.s3_region,
        aws_access_key_id=settings.s3_access_key or None,
        aws_secret_access_key=settings.s3_secret_key or None,
        config=cfg,
    )
