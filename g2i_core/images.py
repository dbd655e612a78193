"""Image fetcher: ``nodes.image_url`` -> content-addressed ``images/`` objects + the ``node_images`` table.

Bounded concurrency (a thread pool: the work is network wait), a per-host rate limit, timeouts, retries
with exponential backoff for transient failures only, a byte cap while streaming, and validation with
Pillow where the pixel count is checked from the header *before* decoding, so a decompression bomb
costs a few bytes of header parsing, not gigabytes of RAM.

Every node gets exactly one ``node_images`` row whose ``status`` is one of ``STATUSES``. Resumable: a
rerun keeps ``ok`` rows whose URL is unchanged and fetches the rest; while running, finished rows are
checkpointed under ``_staging/node_images/<run_id>/`` so a killed run restarts where it stopped.
"""

from __future__ import annotations

import io
import logging
import random
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Iterable
from urllib.parse import urlparse

if TYPE_CHECKING:
    import pyarrow as pa

    from g2i_core.storage import Storage

log = logging.getLogger(__name__)

STATUSES = ("ok", "no_image", "not_found", "http_error", "timeout", "too_large", "too_many_pixels", "corrupt",
            "error")
TRANSIENT = frozenset({"timeout", "error", "http_error_retryable"})
EXTENSIONS = {"PNG": "png", "JPEG": "jpg", "GIF": "gif", "WEBP": "webp", "BMP": "bmp", "TIFF": "tiff"}
COLUMNS = ("node_id", "image_url", "image_key", "sha256", "width", "height", "status", "error")


@dataclass(frozen=True)
class FetchConfig:
    run_id: str = ""  # default: the run id of the nodes table it fetched for
    concurrency: int = 16  # parallel downloads
    per_host_rate: float = 20.0  # requests per second per host; 0 = unlimited
    timeout_s: float = 10.0  # connect / per-read timeout, and the cap on one whole download
    retries: int = 2  # extra attempts for timeouts, connection errors, 429 and 5xx
    backoff_s: float = 0.5  # first retry delay; doubles per attempt, with jitter
    max_bytes: int = 20 << 20  # larger downloads are cut off: status too_large
    max_pixels: int = 40_000_000  # width*height above this is refused before decoding: too_many_pixels
    checkpoint_every: int = 1000  # finished rows between checkpoints
    user_agent: str = "g2i-image-fetcher/0.1"

    def check(self) -> "FetchConfig":
        for name in ("concurrency", "max_bytes", "max_pixels", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.timeout_s <= 0 or self.retries < 0 or self.per_host_rate < 0:
            raise ValueError(f"timeout_s must be > 0, retries and per_host_rate >= 0; got timeout_s={self.timeout_s}"
                             f", retries={self.retries}, per_host_rate={self.per_host_rate}")
        return self


@dataclass
class FetchReport:
    run_id: str
    nodes: int
    fetched: int  # downloads attempted this run
    reused: int  # ok rows carried over from an earlier run or checkpoint
    by_status: dict[str, int] = field(default_factory=dict)
    stored_new: int = 0  # objects written (others were sha256 dedupe hits)
    seconds: float = 0.0


class FetchError(Exception):
    def __init__(self, status: str, detail: str):
        super().__init__(detail)
        self.status = status


class HostRateLimiter:
    """At most ``per_second`` request starts per host, spread evenly (threads wait for their slot)."""

    def __init__(self, per_second: float):
        self.interval = 1.0 / per_second if per_second > 0 else 0.0
        self._next: dict[str, float] = {}
        self._lock = threading.Lock()

    def wait(self, host: str) -> None:
        if not self.interval:
            return
        with self._lock:
            now = time.monotonic()
            slot = max(now, self._next.get(host, now))
            self._next[host] = slot + self.interval
        if slot > now:
            time.sleep(slot - now)


# ---- one image --------------------------------------------------------------------------------------
def download(url: str, cfg: FetchConfig) -> bytes:
    """The body of ``url``; raises FetchError(status) — ``http_error_retryable`` marks 429/5xx."""
    request = urllib.request.Request(url, headers={"User-Agent": cfg.user_agent})
    deadline = time.monotonic() + cfg.timeout_s
    try:
        with urllib.request.urlopen(request, timeout=cfg.timeout_s) as resp:
            declared = int(resp.headers.get("Content-Length") or 0)
            if declared > cfg.max_bytes:
                raise FetchError("too_large", f"Content-Length {declared} > max_bytes {cfg.max_bytes}")
            chunks, size = [], 0
            while chunk := resp.read(1 << 16):
                size += len(chunk)
                if size > cfg.max_bytes:
                    raise FetchError("too_large", f"body exceeds max_bytes {cfg.max_bytes}")
                if time.monotonic() > deadline:  # a server trickling bytes must not hold a worker forever
                    raise FetchError("timeout", f"download took longer than {cfg.timeout_s}s")
                chunks.append(chunk)
            return b"".join(chunks)
    except urllib.error.HTTPError as exc:
        if exc.code in (404, 410):
            raise FetchError("not_found", f"HTTP {exc.code}") from None
        status = "http_error_retryable" if exc.code == 429 or exc.code >= 500 else "http_error"
        raise FetchError(status, f"HTTP {exc.code}") from None
    except (TimeoutError, urllib.error.URLError, ConnectionError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, TimeoutError) or "timed out" in str(reason):
            raise FetchError("timeout", f"no response within {cfg.timeout_s}s") from None
        raise FetchError("error", f"{type(reason).__name__}: {reason}"[:200]) from None


def validate_image(data: bytes, max_pixels: int) -> tuple[str, int, int]:
    """(extension, width, height) of a decodable image; the pixel limit is checked from the header only."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:  # lazy: parses the header, decodes nothing yet
            width, height = im.size
            if width * height > max_pixels:
                raise FetchError("too_many_pixels", f"{width}x{height} exceeds max_pixels {max_pixels}")
            fmt = im.format or ""
            im.load()  # full decode: truncated or corrupt bytes fail here
    except Image.DecompressionBombError as exc:
        raise FetchError("too_many_pixels", str(exc)[:200]) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise FetchError("corrupt", f"{type(exc).__name__}: {exc}"[:200]) from None
    if fmt not in EXTENSIONS:
        raise FetchError("corrupt", f"unsupported image format {fmt!r}")
    return EXTENSIONS[fmt], width, height


def fetch_one(node_id: str, url: str, storage: "Storage", cfg: FetchConfig,
              limiter: HostRateLimiter) -> tuple[dict, bool]:
    """(node_images row, whether a new object was stored) for one node; never raises."""
    row = {"node_id": node_id, "image_url": url, "image_key": None, "sha256": None, "width": None,
           "height": None, "status": "ok", "error": None}
    host = urlparse(url).netloc
    for attempt in range(cfg.retries + 1):
        try:
            limiter.wait(host)
            data = download(url, cfg)
            ext, row["width"], row["height"] = validate_image(data, cfg.max_pixels)
            ref = storage.put_content_addressed(data, prefix="images", ext=ext, content_type=f"image/{ext}")
            row.update(image_key=ref.key, sha256=ref.sha256)
            return row, ref.created
        except FetchError as exc:
            if exc.status in TRANSIENT and attempt < cfg.retries:
                time.sleep(cfg.backoff_s * 2 ** attempt * random.uniform(0.5, 1.0))
                continue
            status = "http_error" if exc.status == "http_error_retryable" else exc.status
            row.update(status=status, error=f"{exc} (attempt {attempt + 1})", width=None, height=None)
            return row, False
        except Exception as exc:  # noqa: BLE001 - one bad node (or storage hiccup) must not stop the run
            row.update(status="error", error=f"{type(exc).__name__}: {exc}"[:300])
            return row, False
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
    """Fetch images for every node of ``nodes_storage``'s ``nodes``; publish ``node_images`` under ``storage``."""
    cfg = cfg.check()
    started = time.monotonic()
    # 1. Read what to fetch, and what earlier runs already fetched.
    nodes = nodes_storage.read_table("nodes", columns=["node_id", "image_url", "has_real_image"]).to_pylist()
    run_id = cfg.run_id or nodes_storage.manifest("nodes")["run_id"]
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
    # 2. Download with bounded concurrency, checkpointing as rows finish.
    fetched, stored_new = _fetch_all(todo, storage, cfg, staging)
    rows.extend(fetched)
    # 3. Publish one row per node.
    report = FetchReport(run_id, len(nodes), len(todo), reused, stored_new=stored_new)
    for r in rows:
        report.by_status[r["status"]] = report.by_status.get(r["status"], 0) + 1
    report.by_status = dict(sorted(report.by_status.items()))
    report.seconds = round(time.monotonic() - started, 3)
    storage.publish_table("node_images", node_images_table(rows), run_id,
                          extra={"report": asdict(report), "config": asdict(cfg)})
    storage.delete_prefix(staging)
    log.info("fetch-images run=%s done in %.1fs: %s", run_id, report.seconds, report.by_status)
    return report


def _fetch_all(todo: list[tuple[str, str]], storage: "Storage", cfg: FetchConfig,
               staging: str) -> tuple[list[dict], int]:
    if storage.scheme == "s3":
        _ = storage.s3  # create the (thread-safe) client once, before the threads race to do it
    limiter = HostRateLimiter(cfg.per_host_rate)
    results: list[dict] = []
    pending: set[Future] = set()
    stored_new, checkpointed, last_log = 0, 0, time.monotonic()
    started = time.monotonic()
    queue = iter(todo)
    with ThreadPoolExecutor(max_workers=cfg.concurrency, thread_name_prefix="fetch") as pool:
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
                row, created = f.result()
                results.append(row)
                stored_new += created
            if len(results) - checkpointed >= cfg.checkpoint_every:
                part = f"{staging}/checkpoint-{len(results):09d}.parquet"
                storage.write_parquet(part, node_images_table(results[checkpointed:]))
                checkpointed = len(results)
            if time.monotonic() - last_log > 5 or len(results) == len(todo):
                rate = len(results) / max(time.monotonic() - started, 1e-6)
                ok = sum(r["status"] == "ok" for r in results)
                log.info("fetched %d/%d (ok %d), %.1f/s, eta %.0fs", len(results), len(todo), ok, rate,
                         (len(todo) - len(results)) / max(rate, 1e-6))
                last_log = time.monotonic()
    return results, stored_new
