"""Image fetcher: ``nodes.image_url`` -> content-addressed ``images/`` objects + the ``node_images`` table.

Bounded concurrency, a per-host rate limit, one total deadline per request, retries with exponential
backoff for transient failures only, a byte cap while streaming, and validation with Pillow where the pixel
count is checked from the header *before* decoding, so a decompression bomb costs a few bytes of header
parsing, not gigabytes of RAM.

Two clients, one behaviour (``FetchConfig.client``):

- ``async`` (default): one asyncio event loop with ``concurrency`` downloads in flight on an aiohttp
  session (:mod:`g2i_core.egress_async`) that reuses connections per host. Pillow validation (CPU work;
  decoding releases the GIL) and the storage write (it blocks) run in a thread pool, off the event loop;
  at most a few decodes run at once, since each may hold ``max_pixels`` x 4 bytes.
- ``threads``: the earlier client, ``concurrency`` threads each making one checked connection per request
  (:func:`g2i_core.egress.open_url`); kept for comparison (``bench/bench_fetch.py``).

Either runs in ``FetchConfig.processes`` spawned processes (default: one per CPU, at most 4, from 2,000 URLs
on), each with the nodes whose id hashes to its share and its share of ``concurrency`` and ``per_host_rate``:
one process tops out near one core, since HTTP, Pillow and the S3 client hold the GIL. An image is stored
with one conditional PUT (:meth:`g2i_core.storage.Storage.put_if_absent`).

Image URLs come from untrusted dumps: every request goes through the egress policy of
:mod:`g2i_core.egress` (http/https only, globally routable addresses only, the checked address is the one
connected to, every redirect hop re-checked, at most 3; ``allow_hosts`` opens named hosts). A refused URL
gets status ``blocked`` with the reason and is never retried. Pillow opens only PNG, JPEG, GIF and WEBP
(no other format's parser ever sees the bytes); while the job runs ``Image.MAX_IMAGE_PIXELS`` is
``max_pixels``.

Every node gets exactly one ``node_images`` row whose ``status`` is one of ``STATUSES``. Storage errors
are not row statuses: an exception from storage (an image write, a checkpoint) fails the job and nothing
is published. Nor is a mostly failed fetch published: when more than ``max_failure_fraction`` of the
nodes with a real URL end up not ``ok``, the job raises :class:`FetchFailedError`. Resumable: a rerun keeps
``ok`` rows whose URL is unchanged and fetches the rest; while running, finished rows are checkpointed
under ``_staging/node_images/<run_id>/`` so a killed or failed run restarts where it stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import io
import logging
import math
import os
import pickle
import queue
import random
import threading
import time
import traceback
import zlib
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Iterable
from urllib.parse import urlparse

from g2i_core.egress import EgressPolicy, FetchError, open_url, parse_allow_hosts

if TYPE_CHECKING:
    import pyarrow as pa

    from g2i_core.storage import Storage

log = logging.getLogger(__name__)

STATUSES = ("ok", "no_image", "blocked", "not_found", "http_error", "timeout", "too_large", "too_many_pixels",
            "corrupt", "error")
TRANSIENT = frozenset({"timeout", "error", "http_error_retryable"})  # never "blocked"
EXTENSIONS = {"PNG": "png", "JPEG": "jpg", "GIF": "gif", "WEBP": "webp"}
FORMATS = tuple(EXTENSIONS)  # the only Pillow plugins that ever parse fetched bytes
COLUMNS = ("node_id", "image_url", "image_key", "sha256", "width", "height", "status", "error")
CLIENTS = ("async", "threads")
WORK_THREADS = 32  # async client: threads for validation and storage writes
DECODE_SLOTS = min(4, os.cpu_count() or 1)  # Pillow decodes at once per job (shared out among its processes)
MAX_AUTO_PROCESSES = 4
AUTO_PROCESSES_MIN_URLS = 2000  # fewer URLs than this: one process (starting another costs a second or two)


@dataclass(frozen=True)
class FetchConfig:
    run_id: str = ""  # default: the run id of the nodes table it fetched for
    concurrency: int = 64  # downloads in flight
    per_host_rate: float = 20.0  # requests per second per host; 0 = unlimited
    timeout_s: float = 10.0  # one deadline per request: DNS, connect, headers, body and redirects together
    retries: int = 2  # extra attempts for timeouts, connection errors, 429 and 5xx
    backoff_s: float = 0.5  # first retry delay; doubles per attempt, with jitter
    max_bytes: int = 20 << 20  # larger downloads are cut off: status too_large
    max_pixels: int = 40_000_000  # width*height above this is refused before decoding: too_many_pixels
    checkpoint_every: int = 1000  # finished rows between checkpoints
    user_agent: str = "g2i-image-fetcher/0.1"
    allow_hosts: tuple[str, ...] = ()  # `host` / `host:port` reachable even on loopback/private addresses
    max_failure_fraction: float = 0.2  # more non-ok rows among real URLs than this: fail, publish nothing
    client: str = "async"  # "async" (aiohttp, connections reused) or "threads" (the earlier client)
    # fetch processes, each with a hash share of the nodes, of `concurrency` and of `per_host_rate` (so the
    # per-host limit holds in sum); 0 = auto: one per CPU (at most 4) once there are 2,000 URLs to fetch.
    # More than one because the client's CPU work (HTTP, Pillow, the S3 client) holds the GIL: one process
    # tops out near one core.
    processes: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "allow_hosts", parse_allow_hosts(self.allow_hosts))

    def check(self) -> "FetchConfig":
        for name in ("concurrency", "max_bytes", "max_pixels", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.timeout_s <= 0 or self.retries < 0 or self.per_host_rate < 0:
            raise ValueError(f"timeout_s must be > 0, retries and per_host_rate >= 0; got timeout_s={self.timeout_s}"
                             f", retries={self.retries}, per_host_rate={self.per_host_rate}")
        if not 0 <= self.max_failure_fraction <= 1:
            raise ValueError(f"max_failure_fraction must be in [0, 1], got {self.max_failure_fraction}")
        if self.client not in CLIENTS:
            raise ValueError(f"client must be one of {CLIENTS}, got {self.client!r}")
        if self.processes < 0:
            raise ValueError(f"processes must be >= 0 (0 = auto), got {self.processes}")
        return self

    def processes_for(self, urls: int) -> int:
        """Fetch processes for ``urls`` URLs to fetch (``processes``, or the auto rule for 0)."""
        if self.processes:
            return max(1, min(self.processes, urls))
        if urls < AUTO_PROCESSES_MIN_URLS:
            return 1
        return max(1, min(os.cpu_count() or 1, MAX_AUTO_PROCESSES))

    @property
    def policy(self) -> EgressPolicy:
        return EgressPolicy(allow_hosts=self.allow_hosts)


@dataclass
class FetchReport:
    run_id: str
    nodes: int
    fetched: int  # downloads attempted this run
    reused: int  # ok rows carried over from an earlier run or checkpoint
    by_status: dict[str, int] = field(default_factory=dict)
    stored_new: int = 0  # objects written (others were sha256 dedupe hits)
    seconds: float = 0.0
    processes: int = 1  # fetch processes used


class FetchFailedError(RuntimeError):
    """Too many nodes with a real URL failed to fetch: the job fails and publishes nothing."""


class FetchProcessError(RuntimeError):
    """A fetch process died without a result, or raised an error that could not be sent back as it was."""


class HostRateLimiter:
    """At most ``per_second`` request starts per host, spread evenly (threads wait for their slot)."""

    def __init__(self, per_second: float):
        self.interval = 1.0 / per_second if per_second > 0 else 0.0
        self._next: dict[str, float] = {}
        self._lock = threading.Lock()

    def reserve(self, host: str) -> float:
        """Take the next slot for ``host``; the seconds to wait for it."""
        if not self.interval:
            return 0.0
        with self._lock:
            now = time.monotonic()
            slot = max(now, self._next.get(host, now))
            self._next[host] = slot + self.interval
        return slot - now

    def wait(self, host: str) -> None:
        if (delay := self.reserve(host)) > 0:
            time.sleep(delay)

    async def wait_async(self, host: str) -> None:
        if (delay := self.reserve(host)) > 0:
            await asyncio.sleep(delay)


# ---- one image --------------------------------------------------------------------------------------
def _request_headers(cfg: FetchConfig) -> dict[str, str]:
    return {"User-Agent": cfg.user_agent, "Accept": "image/*"}


def _check_status(status: int) -> None:
    """FetchError for a final HTTP status that is not a success; ``http_error_retryable`` marks 429/5xx."""
    if status in (404, 410):
        raise FetchError("not_found", f"HTTP {status}")
    if not 200 <= status < 300:  # includes a redirect without a Location
        raise FetchError("http_error_retryable" if status == 429 or status >= 500 else "http_error", f"HTTP {status}")


def download(url: str, cfg: FetchConfig) -> bytes:
    """The body of ``url`` under the egress policy and one ``timeout_s`` deadline, through ``cfg.client``
    (the async client in a session of its own); raises FetchError(status): ``blocked`` for a refused URL or
    redirect, ``http_error_retryable`` marks 429/5xx."""
    if cfg.client == "async":
        return _run_async(functools.partial(_download_once_async, url, cfg))
    with open_url(url, cfg.policy, cfg.timeout_s, _request_headers(cfg)) as resp:
        _check_status(resp.status)
        try:
            declared = int(resp.headers.get("Content-Length") or 0)
        except ValueError:
            declared = 0
        if declared > cfg.max_bytes:
            raise FetchError("too_large", f"Content-Length {declared} > max_bytes {cfg.max_bytes}")
        chunks, size = [], 0
        while chunk := resp.read(1 << 16):  # every read runs under the request's deadline
            size += len(chunk)
            if size > cfg.max_bytes:
                raise FetchError("too_large", f"body exceeds max_bytes {cfg.max_bytes}")
            chunks.append(chunk)
        return b"".join(chunks)


def _session(cfg: FetchConfig):
    from g2i_core.egress_async import EgressSession

    return EgressSession(cfg.policy, cfg.timeout_s, max_connections=cfg.concurrency, headers=_request_headers(cfg))


async def download_async(session, url: str, cfg: FetchConfig) -> bytes:
    """:func:`download` on an open :class:`g2i_core.egress_async.EgressSession` (connections reused)."""
    got = await session.get(url, cfg.max_bytes)
    _check_status(got.status)
    return got.body


async def _download_once_async(url: str, cfg: FetchConfig) -> bytes:
    async with _session(cfg) as session:
        return await download_async(session, url, cfg)


def _run_async(make_coroutine):
    """Run a coroutine to its end from synchronous code (in a thread of its own when this thread is
    already running an event loop, e.g. inside a notebook)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make_coroutine())
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="fetch-loop") as runner:
        return runner.submit(lambda: asyncio.run(make_coroutine())).result()


def validate_image(data: bytes, max_pixels: int) -> tuple[str, int, int]:
    """(extension, width, height) of a decodable PNG, JPEG, GIF or WEBP; the pixel limit is checked from the
    header only. Other formats are refused as ``corrupt`` without their Pillow plugin ever seeing the bytes."""
    from PIL import Image, UnidentifiedImageError

    try:
        # formats=: only these plugins parse the header; lazy: decodes nothing yet
        with Image.open(io.BytesIO(data), formats=FORMATS) as im:
            width, height = im.size
            if width * height > max_pixels:
                raise FetchError("too_many_pixels", f"{width}x{height} exceeds max_pixels {max_pixels}")
            fmt = im.format or ""
            im.load()  # full decode: truncated or corrupt bytes fail here
    except Image.DecompressionBombError as exc:
        raise FetchError("too_many_pixels", str(exc)[:200]) from None
    except UnidentifiedImageError:
        raise FetchError("corrupt", f"not a {', '.join(FORMATS)} image (unsupported format or corrupt bytes)") \
            from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise FetchError("corrupt", f"{type(exc).__name__}: {exc}"[:200]) from None
    if fmt not in EXTENSIONS:
        raise FetchError("corrupt", f"unsupported image format {fmt!r}")
    return EXTENSIONS[fmt], width, height


@contextlib.contextmanager
def pillow_pixel_limit(max_pixels: int):
    """Pillow's own bomb guard (``Image.MAX_IMAGE_PIXELS``, process-wide) at ``max_pixels`` while the job
    runs: it also covers what the header check cannot see, such as GIF frames larger than the canvas."""
    from PIL import Image

    before = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = before


def _new_row(node_id: str, url: str) -> dict:
    return {"node_id": node_id, "image_url": url, "image_key": None, "sha256": None, "width": None,
            "height": None, "status": "ok", "error": None}


def _retry_delay(exc: Exception, attempt: int, cfg: FetchConfig) -> float | None:
    """Seconds to wait before the next attempt, or None when ``exc`` ends the node (its row is final)."""
    if isinstance(exc, FetchError) and exc.status in TRANSIENT and attempt < cfg.retries:
        return cfg.backoff_s * 2 ** attempt * random.uniform(0.5, 1.0)
    return None


def _fail(row: dict, exc: Exception, attempt: int) -> tuple[dict, bool]:
    if isinstance(exc, FetchError):
        status = "http_error" if exc.status == "http_error_retryable" else exc.status
        row.update(status=status, error=f"{exc} (attempt {attempt + 1})")
    else:  # one unparseable node must not stop the run
        row.update(status="error", error=f"{type(exc).__name__}: {exc}"[:300])
    return row, False


def _store(storage: "Storage", row: dict, data: bytes, ext: str, width: int, height: int) -> tuple[dict, bool]:
    ref = storage.put_content_addressed(data, prefix="images", ext=ext, content_type=f"image/{ext}")
    row.update(image_key=ref.key, sha256=ref.sha256, width=width, height=height)
    return row, ref.created


def fetch_one(node_id: str, url: str, storage: "Storage", cfg: FetchConfig,
              limiter: HostRateLimiter) -> tuple[dict, bool]:
    """(node_images row, whether a new object was stored) for one node. A failed download or validation
    becomes the row's status; a storage error propagates (it must fail the job, not become a row)."""
    row = _new_row(node_id, url)
    host = urlparse(url).netloc
    for attempt in range(cfg.retries + 1):
        try:
            limiter.wait(host)
            data = download(url, cfg)
            ext, width, height = validate_image(data, cfg.max_pixels)
        except Exception as exc:  # noqa: BLE001 - becomes the row's status
            if (delay := _retry_delay(exc, attempt, cfg)) is not None:
                time.sleep(delay)
                continue
            return _fail(row, exc, attempt)
        return _store(storage, row, data, ext, width, height)
    raise AssertionError("unreachable")


@dataclass
class _AsyncWork:
    """What every download task of one async job shares."""

    session: object  # g2i_core.egress_async.EgressSession
    storage: "Storage"
    cfg: FetchConfig
    limiter: HostRateLimiter
    pool: ThreadPoolExecutor  # validation (CPU) and storage writes (blocking) run here, off the event loop
    decode_slots: threading.BoundedSemaphore  # decodes at once: each may hold max_pixels x 4 bytes


def _validate_and_store(work: _AsyncWork, row: dict, data: bytes, attempt: int) -> tuple[dict, bool]:
    """The part of :func:`fetch_one` after the download, in one trip to the pool; a storage error propagates."""
    try:
        with work.decode_slots:
            ext, width, height = validate_image(data, work.cfg.max_pixels)
    except Exception as exc:  # noqa: BLE001 - becomes the row's status (validation failures are final)
        return _fail(row, exc, attempt)
    return _store(work.storage, row, data, ext, width, height)


async def fetch_one_async(node_id: str, url: str, work: _AsyncWork) -> tuple[dict, bool]:
    """:func:`fetch_one` on the event loop: same statuses, retries and backoff; a storage error propagates."""
    cfg, row, host = work.cfg, _new_row(node_id, url), urlparse(url).netloc
    for attempt in range(cfg.retries + 1):
        try:
            await work.limiter.wait_async(host)
            data = await download_async(work.session, url, cfg)
        except Exception as exc:  # noqa: BLE001 - becomes the row's status (a cancellation is not an Exception)
            if (delay := _retry_delay(exc, attempt, cfg)) is not None:
                await asyncio.sleep(delay)
                continue
            return _fail(row, exc, attempt)
        return await asyncio.get_running_loop().run_in_executor(work.pool, _validate_and_store, work, row, data,
                                                                attempt)
    raise AssertionError("unreachable")


# ---- the job --------------------------------------------------------------------------------------------
def node_images_table(rows: Iterable[dict]) -> "pa.Table":
    import pyarrow as pa

    schema = pa.schema([("node_id", pa.string()), ("image_url", pa.string()), ("image_key", pa.string()),
                        ("sha256", pa.string()), ("width", pa.int32()), ("height", pa.int32()),
                        ("status", pa.string()), ("error", pa.string())])
    return pa.Table.from_pylist(sorted(rows, key=lambda r: r["node_id"]), schema=schema)


def _previous_rows(storage: "Storage", staging: str) -> dict[str, dict]:
    """ok rows from the latest published node_images and from this run's checkpoints (newest wins)."""
    from g2i_core.storage import NotPublishedError

    rows: dict[str, dict] = {}
    try:
        rows.update((r["node_id"], r) for r in storage.read_table("node_images").to_pylist())
    except NotPublishedError:
        pass
    checkpoints = [u for u in storage.list(staging) if u.endswith(".parquet")]
    if checkpoints:
        rows.update((r["node_id"], r) for r in storage.read_parquet(checkpoints).to_pylist())
    return {k: r for k, r in rows.items() if r["status"] == "ok"}


def fetch_images(nodes_storage: "Storage", storage: "Storage", cfg: FetchConfig) -> FetchReport:
    """Fetch images for every node of ``nodes_storage``'s ``nodes``; publish ``node_images`` under ``storage``.

    Raises (and publishes nothing) on any storage error, and with :class:`FetchFailedError` when the share
    of non-``ok`` rows among nodes with a real URL exceeds ``cfg.max_failure_fraction``."""
    cfg = cfg.check()
    started = time.monotonic()
    # 1. Read what to fetch, and what earlier runs already fetched.
    # The nodes of the run being fetched for (its own ingest run when published, else the live one).
    pinned = cfg.run_id if cfg.run_id and nodes_storage.is_published("nodes", cfg.run_id) else None
    nodes_manifest = nodes_storage.manifest("nodes", pinned)
    nodes = nodes_storage.read_table("nodes", columns=["node_id", "image_url", "has_real_image"],
                                     manifest=nodes_manifest).to_pylist()
    run_id = cfg.run_id or nodes_manifest["run_id"]
    staging = storage.uri("_staging", "node_images", run_id)
    done = _previous_rows(storage, staging)
    rows: list[dict] = []
    todo: list[tuple[str, str]] = []
    for n in nodes:
        if not n["has_real_image"]:
            rows.append({c: None for c in COLUMNS} | {"node_id": n["node_id"], "image_url": n["image_url"],
                                                       "status": "no_image"})
        elif n["node_id"] in done and done[n["node_id"]]["image_url"] == n["image_url"]:
            rows.append(done[n["node_id"]])
        else:
            todo.append((n["node_id"], n["image_url"]))
    reused = sum(1 for r in rows if r["status"] == "ok")
    log.info("fetch-images run=%s: %d nodes, %d to fetch, %d already fetched, %d without a real image",
             run_id, len(nodes), len(todo), reused, len(rows) - reused)
    # 2. Download with bounded concurrency, checkpointing as rows finish (a storage error ends the job here).
    processes = cfg.processes_for(len(todo))
    with pillow_pixel_limit(cfg.max_pixels):
        if processes > 1:
            fetched, stored_new, checkpointed = _fetch_all_processes(todo, storage, cfg, staging, processes)
        else:
            fetched, stored_new, checkpointed = _fetch_all(todo, storage, cfg, staging)
    rows.extend(fetched)
    report = FetchReport(run_id, len(nodes), len(todo), reused, stored_new=stored_new, processes=processes)
    for r in rows:
        report.by_status[r["status"]] = report.by_status.get(r["status"], 0) + 1
    report.by_status = dict(sorted(report.by_status.items()))
    report.seconds = round(time.monotonic() - started, 3)
    # 3. Refuse to publish a mostly failed fetch (an outage, a dead host, a hostile dump).
    real = [r for r in rows if r["status"] != "no_image"]
    failed = sum(r["status"] != "ok" for r in real)
    if real and failed / len(real) > cfg.max_failure_fraction:
        _checkpoint(storage, staging, fetched, checkpointed)  # a rerun keeps what did succeed
        raise FetchFailedError(
            f"fetch-images run={run_id}: {failed} of {len(real)} nodes with an image URL failed "
            f"({failed / len(real):.1%} > max_failure_fraction {cfg.max_failure_fraction:.1%}); "
            f"status {report.by_status}; node_images not published (ok rows are kept for a rerun)")
    # 4. Publish one row per node.
    storage.publish_table("node_images", node_images_table(rows), run_id,
                          logical_date=nodes_manifest.get("logical_date"),
                          extra={"report": asdict(report), "config": asdict(cfg)})
    storage.delete_prefix(staging)
    log.info("fetch-images run=%s done in %.1fs: %s", run_id, report.seconds, report.by_status)
    return report


class _Progress:
    """Collects finished rows; logs progress every 5 s."""

    def __init__(self, total: int):
        self.total, self.results, self.stored_new, self.checkpointed = total, [], 0, 0
        self.started = self.last_log = time.monotonic()

    def add(self, row: dict, created: bool) -> None:
        self.results.append(row)
        self.stored_new += created

    def log(self) -> None:
        if time.monotonic() - self.last_log > 5 or len(self.results) == self.total:
            done = len(self.results)
            rate = done / max(time.monotonic() - self.started, 1e-6)
            ok = sum(r["status"] == "ok" for r in self.results)
            log.info("fetched %d/%d (ok %d), %.1f/s, eta %.0fs", done, self.total, ok, rate,
                     (self.total - done) / max(rate, 1e-6))
            self.last_log = time.monotonic()


def _fetch_all(todo: list[tuple[str, str]], storage: "Storage", cfg: FetchConfig, staging: str,
               decode_slots: int = DECODE_SLOTS) -> tuple[list[dict], int, int]:
    """(rows, objects newly stored, rows already checkpointed) in this process; any storage error
    propagates at once."""
    if storage.scheme == "s3":
        _ = storage.s3  # create the (thread-safe) client once, before the threads race to do it
    if cfg.client == "async":
        return _run_async(functools.partial(_fetch_all_async, todo, storage, cfg, staging, decode_slots))
    limiter = HostRateLimiter(cfg.per_host_rate)
    progress = _Progress(len(todo))
    pending: set[Future] = set()
    queue = iter(todo)
    with ThreadPoolExecutor(max_workers=cfg.concurrency, thread_name_prefix="fetch") as pool:
        try:
            while True:
                # keep a bounded window of work in flight: millions of URLs never become millions of futures
                for node_id, url in queue:
                    pending.add(pool.submit(fetch_one, node_id, url, storage, cfg, limiter))
                    if len(pending) >= cfg.concurrency * 4:
                        break
                if not pending:
                    break
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for f in finished:
                    progress.add(*f.result())  # re-raises a storage error from the worker
                if len(progress.results) - progress.checkpointed >= cfg.checkpoint_every:
                    progress.checkpointed = _checkpoint(storage, staging, progress.results, progress.checkpointed)
                progress.log()
        except BaseException:  # a storage error (or a kill): drop the queued work instead of running it
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    return progress.results, progress.stored_new, progress.checkpointed


async def _fetch_all_async(todo: list[tuple[str, str]], storage: "Storage", cfg: FetchConfig,
                           staging: str, decode_slots: int) -> tuple[list[dict], int, int]:
    """:func:`_fetch_all` on one event loop: ``cfg.concurrency`` workers, each taking the next URL when its
    last one is done, share one session (connections reused per host)."""
    loop = asyncio.get_running_loop()
    progress = _Progress(len(todo))
    pool = ThreadPoolExecutor(max_workers=min(WORK_THREADS, cfg.concurrency), thread_name_prefix="fetch-work")
    queue = iter(todo)  # shared by the workers: one event loop, so no lock

    async def worker(work: _AsyncWork) -> None:
        for node_id, url in queue:
            progress.add(*await fetch_one_async(node_id, url, work))  # a storage error ends the worker, and the job
            if len(progress.results) - progress.checkpointed >= cfg.checkpoint_every:
                rows, upto = progress.results[progress.checkpointed:], len(progress.results)
                progress.checkpointed = upto  # claimed before the write: no other worker writes these rows
                await loop.run_in_executor(pool, _write_checkpoint, storage, staging, rows, upto)
            progress.log()

    workers: list[asyncio.Task] = []
    try:
        async with _session(cfg) as session:
            work = _AsyncWork(session, storage, cfg, HostRateLimiter(cfg.per_host_rate), pool,
                              threading.BoundedSemaphore(decode_slots))
            workers = [asyncio.create_task(worker(work)) for _ in range(min(cfg.concurrency, len(todo)))]
            await asyncio.gather(*workers)
    except BaseException:  # a storage error (or a kill): drop the work in flight instead of finishing it
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        raise
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    return progress.results, progress.stored_new, progress.checkpointed


def _write_checkpoint(storage: "Storage", staging: str, rows: list[dict], upto: int) -> None:
    storage.write_parquet(f"{staging}/checkpoint-{upto:09d}.parquet", node_images_table(rows))


def _checkpoint(storage: "Storage", staging: str, results: list[dict], checkpointed: int) -> int:
    """Write ``results[checkpointed:]`` as one staging part; returns the new checkpointed count."""
    if len(results) > checkpointed:
        _write_checkpoint(storage, staging, results[checkpointed:], len(results))
    return len(results)


# ---- several processes ------------------------------------------------------------------------------
def share_of(node_id: str, shares: int) -> int:
    """The fetch process (0..shares-1) that fetches ``node_id``: a stable hash, the same in every process."""
    return zlib.crc32(node_id.encode("utf-8", "surrogatepass")) % shares


def _fetch_all_processes(todo: list[tuple[str, str]], storage: "Storage", cfg: FetchConfig, staging: str,
                         processes: int) -> tuple[list[dict], int, int]:
    """:func:`_fetch_all` over ``processes`` spawned processes. Each takes the nodes whose id hashes to its
    share, 1/processes of ``concurrency``, of ``per_host_rate`` and of the decode slots, and checkpoints
    under ``<staging>/share-<i>/`` (a rerun reads every share's checkpoints, whatever its process count).
    The first error in any process terminates the others and is raised here, as in one process."""
    import multiprocessing

    shares: list[list[tuple[str, str]]] = [[] for _ in range(processes)]
    for node_id, url in todo:
        shares[share_of(node_id, processes)].append((node_id, url))
    share_cfg = dataclasses.replace(cfg, concurrency=max(1, math.ceil(cfg.concurrency / processes)),
                                    per_host_rate=cfg.per_host_rate / processes)
    decode_slots = max(1, DECODE_SLOTS // processes)
    log.info("fetching %d URLs in %d processes (%s per process: concurrency %d, per-host rate %g/s)", len(todo),
             processes, "/".join(str(len(s)) for s in shares), share_cfg.concurrency, share_cfg.per_host_rate)
    # spawn, not fork: the parent holds threads (S3 client pools) that a forked child would inherit mid-call
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    level = logging.getLogger().getEffectiveLevel()
    procs = [ctx.Process(target=_fetch_share, name=f"fetch-share-{i}", daemon=True,
                         args=(i, share, storage, share_cfg, f"{staging}/share-{i}", decode_slots, results, level,
                               os.getpid()))
             for i, share in enumerate(shares)]
    rows: list[dict] = []
    stored_new = 0
    pending = set(range(processes))
    exited_at: dict[int, float] = {}
    try:
        for proc in procs:
            proc.start()
        while pending:
            try:
                index, outcome, *payload = results.get(timeout=1.0)
            except queue.Empty:
                now = time.monotonic()
                for i in pending:
                    if procs[i].exitcode is not None:
                        exited_at.setdefault(i, now)
                        if now - exited_at[i] > 5:  # its result, had it sent one, would be here by now
                            raise FetchProcessError(f"fetch process {i} exited with code {procs[i].exitcode} "
                                                    f"and sent no result (killed? out of memory?)") from None
                continue
            if outcome == "error":
                raise payload[0]
            share_rows, share_new = payload
            rows.extend(share_rows)
            stored_new += share_new
            pending.discard(index)
    finally:  # an error (or a kill of this process): the other processes stop too
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
        for proc in procs:
            if proc.pid is not None:
                proc.join(timeout=30)
        results.close()
    return rows, stored_new, len(rows)  # every share checkpointed its rows before sending them


def _exit_with_parent(parent: int) -> None:
    """On Linux, have the kernel send this process SIGTERM when its parent dies: a job killed outright
    (SIGKILL, the OOM killer) must not leave its fetch processes writing checkpoints next to its retry."""
    import ctypes
    import signal

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM))  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the parent's terminate() on error still applies
        return
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def _fetch_share(index: int, todo: list[tuple[str, str]], storage: "Storage", cfg: FetchConfig, staging: str,
                 decode_slots: int, results, log_level: int, parent: int) -> None:
    """One fetch process: its share fetched and checkpointed to the last row, then the rows sent back."""
    _exit_with_parent(parent)
    logging.basicConfig(level=log_level, format=f"%(asctime)s %(levelname)s fetch-share-{index}: %(message)s")
    try:
        with pillow_pixel_limit(cfg.max_pixels):
            rows, stored_new, checkpointed = _fetch_all(todo, storage, cfg, staging, decode_slots)
        _checkpoint(storage, staging, rows, checkpointed)  # the parent never needs to write this share's rows
        results.put((index, "ok", rows, stored_new))
    except BaseException as exc:  # noqa: BLE001 - sent to the parent, which raises it
        log.error("fetch process %d failed: %s", index, "".join(traceback.format_exception(exc)).rstrip())
        try:
            pickle.loads(pickle.dumps(exc))  # the round trip: some exceptions pickle but do not unpickle
            sent = exc
        except Exception:  # noqa: BLE001 - an exception that does not pickle goes back as its text
            sent = FetchProcessError(f"fetch process {index}: {type(exc).__name__}: {exc}")
        results.put((index, "error", sent))
