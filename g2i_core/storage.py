"""One storage API over ``s3://`` (boto3) and ``file://`` (local disk).

Layout of a published table ``<root>/<name>/``::

    run=<run_id>/attempt=<attempt>/part-*.parquet   data of one attempt, written first (pyarrow or Spark)
    _manifests/<run_id>.json                        the run's published attempt: files + row counts
    _LATEST                                         the live run, moved last and forward only (CAS)
    _lease                                          held by the one publisher at work

Readers resolve ``_LATEST`` -> manifest -> the exact files it lists, so a killed writer (missing
manifest, stray attempt) is invisible, and a rerun of the same run_id writes a new attempt beside the
published one, so readers never see a gap. Tables written together are one commit (``commit``).
Single-object PUTs are atomic on S3; on disk we write a temp file and ``os.replace``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import random
import shutil
import socket
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, TypeVar
from urllib.parse import urlparse

if TYPE_CHECKING:
    import pyarrow as pa

    from g2i_core.config import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")
PARALLEL_READS = 4  # Parquet files read at once by read_parquet
PARALLEL_WRITES = 2  # and written at once by publish_table (each holds its compressed file in memory)
MAX_FILE_BYTES = 256 * 2**20  # Arrow bytes per file publish_table writes: several files to write in parallel


class StorageError(RuntimeError):
    pass


class NotPublishedError(StorageError, FileNotFoundError):
    pass


class PublishConflictError(StorageError):
    """Another publisher holds the table, or a newer attempt of the same run is already published."""


DEFAULT_LEASE_SECONDS = 600.0  # a killed publisher's lease expires after this
# An unpublished attempt younger than this may still be writing (an ingest of a large dump takes hours),
# so cleanup leaves it; it fails as superseded when it tries to commit, and a later commit removes it.
ATTEMPT_GRACE_SECONDS = 24 * 3600.0


# ConditionalRequestConflict (409): a conditional PUT raced another write of the same key; a retry settles it
_TRANSIENT_CODES = {"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "503", "500", "Throttling",
                    "ConditionalRequestConflict"}


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
        self.attempt_grace_s = ATTEMPT_GRACE_SECONDS

    def __getstate__(self) -> dict:
        # pickled for another process (fetch-images' workers): boto3 clients do not pickle, and each
        # process makes its own on first use
        return {**self.__dict__, "_client": None}

    @classmethod
    def from_settings(cls, settings: "Settings", root: str | None = None) -> "Storage":
        return cls(root or settings.storage_root, settings=settings)

    # ---- addressing ------------------------------------------------------------------------
    def uri(self, *parts: str) -> str:
        rel = "/".join(p.strip("/") for p in parts if p)
        # No part may leave the root ('..') or change what the URI names ('#', '?', '\\', control chars).
        if any(seg == ".." for seg in rel.split("/")) or any(c in rel for c in "#?\\") or \
                any(ord(c) < 32 for c in rel):
            raise ValueError(f"storage path {rel!r} has a '..' segment, '#', '?', '\\' or a control character")
        return f"{self.root}/{rel}" if rel else self.root

    def child(self, *parts: str) -> "Storage":
        return Storage(self.uri(*parts), settings=self._settings, s3_client=self._client)

    _pin: str | None = None

    def pinned(self, run_id: str | None) -> "Storage":
        """A view of this root that reads run ``run_id`` of every table whenever a caller asks for the
        live one: a task reads exactly the version it was given, never what ``_LATEST`` says at the
        time (a cleared old run reproduces its outputs). ``None`` or "" gives this storage unchanged.
        A table without that run is reported as not published. Writes are unaffected."""
        if not run_id:
            return self
        _check_run_id(run_id)
        view = Storage(self.root, settings=self._settings, s3_client=self._client)
        view._pin = run_id
        return view

    @property
    def unpinned(self) -> "Storage":
        """This root's live view (for caches, which may read any version)."""
        return self if self._pin is None else Storage(self.root, settings=self._settings, s3_client=self._client)

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

    def list_dirs(self, prefix_uri: str) -> list[str]:
        """Names of the folders right under a prefix (one level: ``images/`` is not walked), sorted."""
        if self._is_s3(prefix_uri):
            bucket, key = self._split_s3(prefix_uri.rstrip("/") + "/")
            paginator = self.s3.get_paginator("list_objects_v2")
            pages = with_retries(lambda: list(paginator.paginate(Bucket=bucket, Prefix=key, Delimiter="/")),
                                 attempts=self._attempts, what=f"LIST {prefix_uri}/")
            return sorted(p["Prefix"][len(key):].rstrip("/") for page in pages for p in page.get("CommonPrefixes", []))
        base = self._local(prefix_uri)
        return sorted(p.name for p in base.iterdir() if p.is_dir()) if base.is_dir() else []

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
        return ContentRef(key, sha, len(data), created=self.put_if_absent(self.uri(key), data, content_type))

    _conditional_put = True  # False once the S3 server has answered that it does not implement If-None-Match

    def put_if_absent(self, uri: str, data: bytes, content_type: str | None = None) -> bool:
        """Write ``uri`` unless an object is already there; whether this call wrote it.

        For keys whose content is fixed by the key (content-addressed objects): on S3 it is one conditional
        PUT (``If-None-Match: *``, answered 412 when the key exists) instead of a HEAD and a PUT, which halves
        the requests of an image fetch. A server that does not implement it (501) gets a HEAD and a PUT
        from then on; one that ignores the header overwrites the object with the same bytes, which
        readers cannot tell apart."""
        if not self._is_s3(uri) or not self._conditional_put:
            if self.exists(uri):
                return False
            self.put_bytes(uri, data, content_type)
            return True
        from botocore.exceptions import ClientError

        bucket, key = self._split_s3(uri)
        extra = {"ContentType": content_type} if content_type else {}
        try:
            with_retries(lambda: self.s3.put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*", **extra),
                         attempts=self._attempts, what=f"PUT {uri} (if absent)")
            return True
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code == "PreconditionFailed" or status == 412:
                return False
            if code == "NotImplemented" or status == 501:
                log.warning("S3 server does not implement conditional PUT (If-None-Match); using HEAD + PUT")
                self._conditional_put = False
                return self.put_if_absent(uri, data, content_type)
            raise

    # ---- parquet ---------------------------------------------------------------------------
    def write_parquet(self, uri: str, table: "pa.Table", **options: Any) -> None:
        """One Parquet file (zstd); ``options`` go to ``pyarrow.parquet.write_table``."""
        import pyarrow.parquet as pq

        buf = io.BytesIO()
        pq.write_table(table, buf, **{"compression": "zstd", **options})
        self.put_bytes(uri, buf.getvalue(), "application/vnd.apache.parquet")

    def read_parquet(self, uris: str | Iterable[str], columns: list[str] | None = None,
                     dictionary: list[str] | None = None) -> "pa.Table":
        """Read one Parquet file, a list of files, or every *.parquet under a prefix. Columns named in
        ``dictionary`` come back dictionary-encoded (one dictionary per file: repeated ids cost 4 bytes)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        if isinstance(uris, str):
            uris = [uris] if uris.endswith(".parquet") else [u for u in self.list(uris) if u.endswith(".parquet")]
        uris = list(uris)

        def read(uri: str) -> "pa.Table":
            return pq.read_table(io.BytesIO(self.get_bytes(uri)), columns=columns, read_dictionary=dictionary)

        # a few files at once: one file's GET overlaps another's decode (both release the GIL)
        if any(self._is_s3(u) for u in uris[:1]):
            self.s3  # noqa: B018 -- one client, made before the threads share it
        with ThreadPoolExecutor(max_workers=min(PARALLEL_READS, max(len(uris), 1))) as pool:
            tables = list(pool.map(read, uris))
        if not tables:
            raise FileNotFoundError(f"no parquet files in {uris!r}")
        return pa.concat_tables(tables, promote_options="default") if len(tables) > 1 else tables[0]

    def size(self, uri: str) -> int:
        """The size of one object or file in bytes (a HEAD on S3)."""
        if not self._is_s3(uri):
            return self._local(uri).stat().st_size
        bucket, key = self._split_s3(uri)
        return with_retries(lambda: self.s3.head_object(Bucket=bucket, Key=key), attempts=self._attempts,
                            what=f"HEAD {uri}")["ContentLength"]

    def ranged_source(self, uri: str):
        """A seekable file for ``uri`` that reads only the byte ranges asked for (S3 ranged GETs): Parquet
        footers, or the head of a dump, without downloading whole files. A local path for local storage."""
        if not self._is_s3(uri):
            return str(self._local(uri))
        bucket, key = self._split_s3(uri)
        return _S3RangeFile(self.s3, bucket, key, self.size(uri), self._attempts)

    # ---- atomic publish --------------------------------------------------------------------
    # Layout of a table (see docs/architecture.md, "Storage contract"):
    #   run=<run_id>/attempt=<attempt>/part-*.parquet   data of one attempt; never rewritten
    #   _manifests/<run_id>.json                        the published attempt of a run, its files and rows
    #   _LATEST                                         {"run_id", "logical_date", ...}: moves forward only
    #   _lease                                          held by the one publisher at a time (expires)
    def table_uri(self, name: str) -> str:
        return self.uri(name)

    def begin(self, name: str, run_id: str) -> "Attempt":
        """A fresh, empty data directory for one attempt at run ``run_id`` of table ``name``.

        Every attempt (a retry, a rerun of the same logical date) writes beside the published one, so
        readers keep reading the published attempt until the new one is committed."""
        _check_run_id(run_id)
        attempt = new_attempt_id()
        return Attempt(name, run_id, attempt, self.uri(name, f"run={run_id}", f"attempt={attempt}"))

    def publish_table(self, name: str, table: "pa.Table", run_id: str, *, extra: dict | None = None,
                      max_rows_per_file: int = 1_000_000, logical_date: str | None = None,
                      force: bool = False) -> dict:
        """Write a pyarrow table as a new attempt of run ``run_id`` of ``name`` and publish it."""
        attempt = self.write_attempt(name, table, run_id, max_rows_per_file=max_rows_per_file)
        return self.commit([attempt], extra={name: extra or {}}, schemas={name: str(table.schema)},
                           rows={name: table.num_rows}, logical_date=logical_date, force=force)[name]

    def write_attempt(self, name: str, table: "pa.Table", run_id: str, *,
                      max_rows_per_file: int = 1_000_000, **options: Any) -> "Attempt":
        """Write a pyarrow table as a new, unpublished attempt (``commit`` publishes it, alone or with others).

        Files hold at most ``max_rows_per_file`` rows and about MAX_FILE_BYTES of Arrow data, and
        PARALLEL_WRITES of them are encoded and uploaded at once (zstd and the PUT release the GIL).
        ``options`` go to ``write_parquet``."""
        attempt = self.begin(name, run_id)
        n = max(table.num_rows, 1)
        rows_per_file = max(1, min(max_rows_per_file, n * MAX_FILE_BYTES // max(table.nbytes, 1)))
        starts = range(0, n, rows_per_file)
        if starts and self._is_s3(attempt.uri):
            self.s3  # noqa: B018 -- one client, made before the threads share it
        with ThreadPoolExecutor(max_workers=min(PARALLEL_WRITES, len(starts))) as pool:
            for done in [pool.submit(self.write_parquet, f"{attempt.uri}/part-{i:05d}.parquet",
                                     table.slice(start, rows_per_file), **options) for i, start in enumerate(starts)]:
                done.result()
        return attempt

    def publish_written(self, attempt: "Attempt", *, rows: int | None = None, extra: dict | None = None,
                        logical_date: str | None = None, force: bool = False) -> dict:
        """Publish data another writer (Spark) put under ``attempt.uri``; row counts come from the
        Parquet footers, and ``rows`` (what the writer says it wrote) must match them."""
        rows_by = {attempt.table: rows} if rows is not None else {}
        return self.commit([attempt], extra={attempt.table: extra or {}}, rows=rows_by,
                           logical_date=logical_date, force=force)[attempt.table]

    def commit(self, attempts: list["Attempt"], *, extra: dict[str, dict] | None = None,
               rows: dict[str, int] | None = None, schemas: dict[str, str] | None = None,
               logical_date: str | None = None, force: bool = False,
               lease_seconds: float = DEFAULT_LEASE_SECONDS) -> dict[str, dict]:
        """Publish several tables' attempts as one version; returns each table's manifest.

        The last attempt's table is the *primary*: its manifest embeds every member's manifest under
        ``commit``, and its ``_LATEST`` moves last, so a reader that resolves the primary reads one
        consistent set of tables (``read_commit``). Under the primary's lease: data is checked against
        the writer's row counts, manifests are written, pointers move forward only (a run whose
        ``logical_date`` is older than the live one keeps the pointer where it is unless ``force``), and
        attempts older than the previous published one are removed."""
        if not attempts:
            raise ValueError("commit needs at least one attempt")
        if len({a.run_id for a in attempts}) != 1:
            raise ValueError(f"one commit is one run id; got {sorted({a.run_id for a in attempts})}")
        extra, rows, schemas = extra or {}, rows or {}, schemas or {}
        primary = attempts[-1]
        manifests: dict[str, dict] = {}
        short: list[str] = []
        for a in attempts:  # listing and footers first: nothing is locked while we read
            files = self._attempt_files(a)
            total = sum(f["rows"] for f in files)
            if a.table in rows and rows[a.table] != total:
                short.append(f"{a.table} run {a.run_id} attempt {a.attempt}: the writer reported "
                             f"{rows[a.table]} rows but its files hold {total}")
            manifests[a.table] = {
                "table": a.table, "run_id": a.run_id, "attempt": a.attempt, "logical_date": logical_date,
                "files": [f["uri"][len(self.root) + 1:] for f in files],  # relative: the root may move
                "file_rows": [f["rows"] for f in files], "rows": total, "schema": schemas.get(a.table),
                "extra": extra.get(a.table, {}),
            }
        with self.lease(primary.table, seconds=lease_seconds):
            published_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            previous = {}
            for a in attempts:
                previous[a.table] = self._manifest_or_none(a.table, a.run_id)
                prev_attempt = (previous[a.table] or {}).get("attempt")
                if prev_attempt and prev_attempt > a.attempt:
                    raise PublishConflictError(
                        f"{a.table} run {a.run_id}: a newer attempt ({prev_attempt}) is already published; this "
                        f"attempt ({a.attempt}) is superseded and publishes nothing")
            if short:  # checked after "superseded": a newer attempt's cleanup may have removed our files
                raise StorageError("; ".join(short))
            live, live_etag = self._pointer(primary.table)
            stale = bool(live and logical_date and live.get("logical_date") and live["run_id"] != primary.run_id
                         and logical_date < live["logical_date"])
            moves = not stale or force
            if stale:
                log.warning("%s: run %s (logical date %s) is older than the live run %s (%s); %s", primary.table,
                            primary.run_id, logical_date, live["run_id"], live["logical_date"],
                            "moving _LATEST back because force=True" if force else
                            "it is published by run id only and _LATEST stays (pass force to move it back)")
            for m in manifests.values():
                m.update(published_at=published_at, live=moves)
            manifests[primary.table]["commit"] = {t: m for t, m in manifests.items() if t != primary.table}
            for a in attempts:  # members first, the primary (which names them all) last
                self.put_json(self.uri(a.table, "_manifests", f"{a.run_id}.json"), manifests[a.table])
            if moves:
                for a in attempts:
                    pointer = {"run_id": a.run_id, "attempt": a.attempt, "logical_date": logical_date,
                               "published_at": published_at}
                    if a is primary:
                        self._move_pointer(a.table, pointer, live_etag)  # the commit point
                    else:
                        self.put_json(self.uri(a.table, "_LATEST"), pointer)
        for a in attempts:  # outside the lease: cleanup is idempotent and may be slow
            keep = {a.attempt, (previous[a.table] or {}).get("attempt")}
            self._remove_old_attempts(a, keep)
        for t, m in manifests.items():
            log.info("published %s run=%s attempt=%s rows=%d files=%d%s", t, m["run_id"], m["attempt"], m["rows"],
                     len(m["files"]), "" if moves else " (not live: older than the live run)")
        return manifests

    def _attempt_files(self, attempt: "Attempt") -> list[dict]:
        import pyarrow.parquet as pq

        files = []
        for uri in self.list(attempt.uri):
            rel = uri[len(attempt.uri) + 1:]
            if not uri.endswith(".parquet") or any(p.startswith(("_", ".")) for p in rel.split("/")):
                continue  # Spark's _temporary/ and hidden files are not data
            try:
                rows = pq.read_metadata(self.ranged_source(uri)).num_rows
            except Exception as exc:  # noqa: BLE001 - only a vanished file is re-raised as a conflict
                if not _is_missing(exc):
                    raise
                raise PublishConflictError(
                    f"{attempt.table} run {attempt.run_id} attempt {attempt.attempt}: its files vanished while it was "
                    "being published: a newer attempt of this run was published and removed older ones; this "
                    "attempt is superseded and publishes nothing") from None
            files.append({"uri": uri, "rows": rows})
        return files

    def _remove_old_attempts(self, attempt: "Attempt", keep: set) -> None:
        """Delete this run's attempts older than the one just published, except those in ``keep`` and
        those started less than ``attempt_grace_s`` ago.

        The attempt published just before stays, so a reader that resolved it a moment ago can still
        finish; newer attempts are never touched; a recent older one may be a writer still at work: it
        is left alone, fails at commit as superseded, and a later commit removes it."""
        run_prefix = self.uri(attempt.table, f"run={attempt.run_id}")
        for uri in self.list(run_prefix):
            part = uri[len(run_prefix) + 1:].split("/", 1)[0]
            if part.startswith("attempt="):
                found = part[len("attempt="):]
                if found not in keep and found < attempt.attempt and attempt_age_s(found) >= self.attempt_grace_s:
                    self.delete_prefix(f"{run_prefix}/{part}")
                    keep.add(found)  # deleted once; list() still names its other files

    def _pointer(self, name: str) -> tuple[dict | None, str | None]:
        try:
            data, etag = self._get_with_etag(self.uri(name, "_LATEST"))
        except FileNotFoundError:
            return None, None
        return json.loads(data), etag

    def _move_pointer(self, name: str, pointer: dict, expected_etag: str | None) -> None:
        """Compare-and-swap ``_LATEST``: fails if anyone moved it since we read it (S3 conditional write)."""
        body = json.dumps(pointer, indent=2, sort_keys=True).encode()
        uri = self.uri(name, "_LATEST")
        if not self._put_conditional(uri, body, if_match=expected_etag, if_none_match=expected_etag is None):
            raise PublishConflictError(f"{name}: _LATEST changed while run {pointer['run_id']} was being "
                                       "published (another publisher?); nothing of this run was made live")

    @contextlib.contextmanager
    def lease(self, name: str, *, seconds: float = DEFAULT_LEASE_SECONDS):
        """Exclusive right to publish table ``name`` for at most ``seconds``; raises PublishConflictError
        at once if another publisher holds an unexpired lease (a lease left by a killed publisher expires)."""
        uri = self.uri(name, "_lease")
        token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        now = time.time()
        body = json.dumps({"owner": token, "acquired_at": now, "expires_at": now + seconds}).encode()
        if not self._put_conditional(uri, body, if_none_match=True):
            try:
                held, etag = self._get_with_etag(uri)
                holder = json.loads(held)
            except FileNotFoundError:  # released between our two calls: one more try
                holder, etag = {"expires_at": 0}, None
            mine = holder.get("owner") == token  # our PUT landed but its reply was lost, and the retry saw it
            if not mine and (holder.get("expires_at", 0) > time.time() or not self._take_over(uri, body, etag)):
                raise PublishConflictError(
                    f"table {name!r} is being published by {holder.get('owner', '?')} (lease expires in "
                    f"{max(0, holder.get('expires_at', 0) - time.time()):.0f}s); concurrent publishers do not "
                    "interleave: retry after it finishes")
            if not mine:
                log.warning("%s: took over an expired publish lease of %s", name, holder.get("owner"))
        if json.loads(self.get_bytes(uri)).get("owner") != token:  # a store that ignored the condition
            raise PublishConflictError(f"table {name!r}: lost the publish lease to a concurrent publisher")
        try:
            yield token
        finally:
            try:
                if json.loads(self.get_bytes(uri)).get("owner") == token:
                    self.delete(uri)
            except FileNotFoundError:
                pass

    def _take_over(self, uri: str, body: bytes, etag: str | None) -> bool:
        if self._is_s3(uri):
            return self._put_conditional(uri, body, if_match=etag) if etag else \
                self._put_conditional(uri, body, if_none_match=True)
        path = self._local(uri)
        try:  # rename is atomic: of two publishers taking over one expired lease, one rename succeeds
            os.rename(path, path.with_name(f".{path.name}.{uuid.uuid4().hex}.expired"))
        except FileNotFoundError:
            pass
        return self._put_conditional(uri, body, if_none_match=True)

    def _put_conditional(self, uri: str, data: bytes, *, if_match: str | None = None,
                         if_none_match: bool = False) -> bool:
        """PUT only if the object is absent (``if_none_match``) or unchanged (``if_match`` = its ETag);
        False when the condition fails. On disk, absence is checked by an atomic hard link; an ETag
        there is the file's (mtime_ns, size), checked under the lease that guards every caller."""
        if self._is_s3(uri):
            from botocore.exceptions import ClientError

            bucket, key = self._split_s3(uri)
            cond = {"IfNoneMatch": "*"} if if_none_match else ({"IfMatch": if_match} if if_match else {})
            try:
                with_retries(lambda: self.s3.put_object(Bucket=bucket, Key=key, Body=data, **cond),
                             attempts=self._attempts, what=f"conditional PUT {uri}")
                return True
            except ClientError as exc:
                code = str(exc.response.get("Error", {}).get("Code", ""))
                status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
                if code in {"PreconditionFailed", "ConditionalRequestConflict"} or status in (409, 412):
                    return False
                raise
        path = self._local(uri)
        path.parent.mkdir(parents=True, exist_ok=True)
        if if_match and self._local_etag(path) != if_match:
            return False
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        tmp.write_bytes(data)
        try:
            if if_none_match:
                try:
                    os.link(tmp, path)  # fails if the name exists: create-if-absent, complete or not at all
                except FileExistsError:
                    return False
            else:
                os.replace(tmp, path)
            return True
        finally:
            tmp.unlink(missing_ok=True)

    def _get_with_etag(self, uri: str) -> tuple[bytes, str | None]:
        if self._is_s3(uri):
            bucket, key = self._split_s3(uri)

            def get():
                try:
                    resp = self.s3.get_object(Bucket=bucket, Key=key)
                except self.s3.exceptions.NoSuchKey:
                    raise FileNotFoundError(uri) from None
                return resp["Body"].read(), resp.get("ETag")

            return with_retries(get, attempts=self._attempts, what=f"GET {uri}")
        path = self._local(uri)
        return path.read_bytes(), self._local_etag(path)

    @staticmethod
    def _local_etag(path: Path) -> str | None:
        try:
            st = path.stat()
        except FileNotFoundError:
            return None
        return f"{st.st_mtime_ns}-{st.st_size}"

    def delete(self, uri: str) -> None:
        """Remove one object (no error when it is absent)."""
        if self._is_s3(uri):
            bucket, key = self._split_s3(uri)
            with_retries(lambda: self.s3.delete_object(Bucket=bucket, Key=key), attempts=self._attempts,
                         what=f"DELETE {uri}")
        else:
            self._local(uri).unlink(missing_ok=True)

    def _manifest_or_none(self, name: str, run_id: str) -> dict | None:
        try:
            return self.get_json(self.uri(name, "_manifests", f"{run_id}.json"))
        except FileNotFoundError:
            return None

    def manifest(self, name: str, run_id: str | None = None) -> dict:
        run_id = run_id or self._pin
        if run_id is None:
            pointer, _ = self._pointer(name)
            if pointer is None:
                raise NotPublishedError(f"table {name!r} has no published run under {self.root}")
            run_id = pointer["run_id"]
        m = self._manifest_or_none(name, run_id)
        if m is None:
            raise NotPublishedError(f"table {name!r} has no published run {run_id!r} under {self.root}")
        return m

    def read_commit(self, primary: str, run_id: str | None = None) -> dict[str, dict]:
        """The manifests of every table committed together with ``primary`` (latest or a given run):
        ``{primary: manifest, member: manifest, ...}``, all of one version."""
        m = self.manifest(primary, run_id)
        return {**m.get("commit", {}), primary: m}

    def published_files(self, name: str, run_id: str | None = None) -> list[str]:
        return [self.uri(f) for f in self.manifest(name, run_id)["files"]]

    def manifest_files(self, manifest: dict) -> list[str]:
        return [self.uri(f) for f in manifest["files"]]

    def is_published(self, name: str, run_id: str | None = None) -> bool:
        try:
            self.manifest(name, run_id)
            return True
        except NotPublishedError:
            return False

    def read_table(self, name: str, run_id: str | None = None, columns: list[str] | None = None,
                   manifest: dict | None = None, dictionary: list[str] | None = None) -> "pa.Table":
        """The latest (or a given) published run of a table, or exactly the files of ``manifest``.

        A file that vanished while we read (a concurrent rerun removed an attempt two publishes old)
        makes us resolve the manifest again, once."""
        for again in (False, True):
            m = manifest or self.manifest(name, run_id)
            try:
                table = self.read_parquet(self.manifest_files(m), columns=columns, dictionary=dictionary)
                break
            except FileNotFoundError:
                if again or manifest is not None:
                    raise
                log.warning("%s run %s: a file vanished while reading; resolving the manifest again", name,
                            m["run_id"])
        if table.num_rows != m["rows"]:
            raise StorageError(f"{name} run {m['run_id']}: manifest says {m['rows']} rows, files hold {table.num_rows}")
        return table


@dataclass(frozen=True)
class Attempt:
    """One attempt at writing run ``run_id`` of ``table``: its own data directory ``uri``."""

    table: str
    run_id: str
    attempt: str
    uri: str


def new_attempt_id() -> str:
    """Sortable by start time (UTC, microseconds), unique by a random suffix."""
    now = time.time()
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f"{int(now % 1 * 1e6):06d}Z-{uuid.uuid4().hex[:8]}"


def attempt_age_s(attempt: str) -> float:
    """Seconds since an attempt started (from its id); infinite for an id we cannot read."""
    import calendar

    try:
        start = calendar.timegm(time.strptime(attempt[:15], "%Y%m%dT%H%M%S")) + int(attempt[15:21]) / 1e6
    except ValueError:
        return float("inf")
    return time.time() - start


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
        data = with_retries(lambda: self._client.get_object(Bucket=self._bucket, Key=self._key,
                                                             Range=rng)["Body"].read(),
                            attempts=self._attempts, what=f"GET {self._key} {rng}")
        buffer[: len(data)] = data
        self._pos += len(data)
        return len(data)


def _is_missing(exc: BaseException) -> bool:
    """A file or object that is not there (local FileNotFoundError, S3 404/NoSuchKey)."""
    if isinstance(exc, FileNotFoundError):
        return True
    response = getattr(exc, "response", None) or {}
    code = str(response.get("Error", {}).get("Code", ""))
    return code in {"404", "NoSuchKey", "NotFound"}


def _check_run_id(run_id: str) -> None:
    from g2i_core.ids import check_run_id

    check_run_id(run_id)


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
        # connections kept per client: fetch-images writes from 32 threads, and the default (10) makes it
        # open and discard a connection for most writes
        max_pool_connections=32,
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
