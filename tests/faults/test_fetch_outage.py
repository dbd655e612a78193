"""A failed store must not publish (issue 13: "A failed store still publishes").

- An S3 outage in the middle of ``fetch_images``: a private SeaweedFS server, started for the test, is
  stopped by the image server while a fetch is in flight and brought back before the job would publish.
  The job must fail at the first storage error, and no ``node_images`` run may appear.
- A mostly failed fetch (most URLs answer 404) must fail the job too, above ``max_failure_fraction`` of
  the nodes with a real URL (nodes without an image do not count).
- With several fetch processes, the same outage inside one of them fails the whole job; and a fetch
  process killed outright (the OOM killer's way) fails the job instead of leaving it waiting forever.
  A job killed outright takes its fetch processes with it (they would otherwise go on writing
  checkpoints next to its retry).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from g2i_core.images import FetchConfig, FetchFailedError, FetchProcessError, fetch_images

pytestmark = pytest.mark.s3


def _png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (seed % 256, 100, 50)).save(buf, format="PNG")
    return buf.getvalue()


class _Handler(BaseHTTPRequestHandler):
    """``/img/<i>`` a PNG; ``/slow/<i>`` a PNG after 0.5 s; ``/outage/<i>`` stops the S3 server before
    answering (the first time only); ``/recover/<i>`` starts it again first; ``/kill/<i>`` SIGKILLs the
    fetch processes (spawned children of the test process) and never answers. Anything else: 404."""

    s3 = None

    def do_GET(self):  # noqa: N802 - http.server API
        kind, _, n = self.path.strip("/").partition("/")
        self.server.paths.append(self.path)
        if kind == "outage" and not self.server.outage_done:
            self.server.outage_done = True
            self.s3.stop()
        elif kind == "recover" and not self.s3.is_running():
            self.s3.start(timeout=90)
        elif kind == "kill":
            import psutil

            for child in psutil.Process().children():
                try:
                    if "spawn_main" in " ".join(child.cmdline()):
                        child.kill()
                except psutil.Error:  # another test's child that exited and is not reaped yet (a zombie)
                    continue
            return
        elif kind == "slow":
            time.sleep(0.5)
        if kind not in ("img", "slow", "outage", "recover"):
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = _png(int(n))
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def _serve(s3=None) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", 0), type("H", (_Handler,), {"s3": s3}))
    server.daemon_threads = True
    server.paths = []
    server.outage_done = False
    server.base = f"http://127.0.0.1:{server.server_address[1]}"
    server.entry = f"127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _publish_nodes(storage, urls: list[str | None]) -> None:
    import pyarrow as pa

    table = pa.Table.from_pylist([{"node_id": f"n{i:03d}", "image_url": u, "has_real_image": u is not None}
                                  for i, u in enumerate(urls)])
    storage.publish_table("nodes", table, "nodes-run")


@pytest.fixture
def private_s3(tmp_path, s3_settings):
    """A SeaweedFS server of this test's own (the shared one must never go down) and a Storage on it."""
    from g2i_core.s3server import S3Server, find_free_base_port
    from g2i_core.storage import Storage

    server = S3Server(tmp_path / "s3", base_port=find_free_base_port(), bucket="g2i-outage")
    server.start(timeout=90)
    access, secret = server.credentials()
    settings = s3_settings.replace(storage_root="s3://g2i-outage", s3_endpoint=server.endpoint,
                                   s3_access_key=access, s3_secret_key=secret, s3_max_attempts=2)
    yield server, Storage.from_settings(settings)
    server.stop()


def test_s3_outage_during_fetch_fails_the_job_and_publishes_nothing(s3_storage, private_s3):
    server, out = private_s3
    images = _serve(server)
    try:
        # one worker, in order: 6 images stored, the 7th meets the outage, later ones would meet a
        # recovered server (so a job that shrugged storage errors off would publish)
        urls = ([f"{images.base}/img/{i}" for i in range(6)] + [f"{images.base}/outage/6"]
                + [f"{images.base}/img/{i}" for i in range(7, 9)] + [f"{images.base}/recover/9"]
                + [f"{images.base}/img/{i}" for i in range(10, 12)])
        _publish_nodes(s3_storage, urls)
        cfg = FetchConfig(concurrency=1, per_host_rate=0, retries=0, timeout_s=60, max_failure_fraction=1.0,
                          allow_hosts=(images.entry,), checkpoint_every=10_000)
        with pytest.raises(Exception) as err:
            fetch_images(s3_storage, out, cfg)
        assert not isinstance(err.value, (AssertionError, FetchFailedError)), err.value
        assert f"{images.base}/recover/9" not in images.paths  # it stopped at the outage
        if not server.is_running():
            server.start(timeout=90)
        assert not out.is_published("node_images")
        assert out.list(out.uri("node_images")) == []

        # with storage back, a rerun publishes every image
        report = fetch_images(s3_storage, out, cfg)
        assert report.by_status == {"ok": len(urls)}
        rows = out.read_table("node_images").to_pylist()
        assert all(out.exists(out.uri(r["image_key"])) for r in rows)
    finally:
        images.shutdown()
        images.server_close()


def test_mostly_failed_fetch_fails_the_job_and_publishes_nothing(s3_storage):
    images = _serve()
    try:
        # 10 real URLs, 3 of them 404 (30% > 20%); 20 nodes without an image would dilute it to 10%
        urls = ([f"{images.base}/img/{i}" for i in range(7)] + [f"{images.base}/gone/{i}" for i in range(3)]
                + [None] * 20)
        _publish_nodes(s3_storage, urls)
        cfg = FetchConfig(per_host_rate=0, retries=0, timeout_s=5, allow_hosts=(images.entry,),
                          max_failure_fraction=0.2)
        with pytest.raises(FetchFailedError, match=r"3 of 10 nodes with an image URL failed"):
            fetch_images(s3_storage, s3_storage, cfg)
        assert not s3_storage.is_published("node_images")

        # the same fetch at a tolerance it meets publishes, and reuses the 7 images already fetched
        report = fetch_images(s3_storage, s3_storage, dataclasses.replace(cfg, max_failure_fraction=0.3))
        assert report.by_status == {"no_image": 20, "not_found": 3, "ok": 7}
        assert report.reused == 7 and report.fetched == 3
    finally:
        images.shutdown()
        images.server_close()


def test_s3_outage_in_one_of_several_fetch_processes_fails_the_job(s3_storage, private_s3):
    server, out = private_s3
    images = _serve(server)
    try:
        urls = [f"{images.base}/img/{i}" for i in range(20)] + [f"{images.base}/outage/20"] \
            + [f"{images.base}/img/{i}" for i in range(21, 40)]
        _publish_nodes(s3_storage, urls)
        cfg = FetchConfig(concurrency=2, per_host_rate=0, retries=0, timeout_s=60, max_failure_fraction=1.0,
                          allow_hosts=(images.entry,), processes=2)
        with pytest.raises(Exception) as err:
            fetch_images(s3_storage, out, cfg)
        assert not isinstance(err.value, (AssertionError, FetchFailedError, FetchProcessError)), err.value
        # the other process met the outage while the handler was still stopping the server: let it finish
        deadline = time.monotonic() + 60
        while server.is_running() and time.monotonic() < deadline:
            time.sleep(0.2)
        server.start(timeout=90)
        assert not out.is_published("node_images")
        assert out.list(out.uri("node_images")) == []
        report = fetch_images(s3_storage, out, cfg)  # storage back: a rerun publishes every image
        assert report.by_status == {"ok": len(urls)} and report.processes == 2
    finally:
        images.shutdown()
        images.server_close()


def test_killed_fetch_process_fails_the_job(s3_storage):
    images = _serve()
    try:
        urls = [f"{images.base}/img/{i}" for i in range(10)] + [f"{images.base}/kill/10"]
        _publish_nodes(s3_storage, urls)
        cfg = FetchConfig(per_host_rate=0, retries=0, timeout_s=120, allow_hosts=(images.entry,), processes=2)
        with pytest.raises(FetchProcessError, match="exited with code -9 and sent no result"):
            fetch_images(s3_storage, s3_storage, cfg)
        assert not s3_storage.is_published("node_images")
    finally:
        images.shutdown()
        images.server_close()


def test_killed_job_takes_its_fetch_processes_with_it(file_storage, tmp_path):
    import psutil

    images = _serve()
    try:
        _publish_nodes(file_storage, [f"{images.base}/slow/{i}" for i in range(400)])  # 100 s at 2 x 1 in flight
        script = textwrap.dedent(f"""
            from g2i_core.images import FetchConfig, fetch_images
            from g2i_core.storage import Storage
            storage = Storage({file_storage.root!r})
            fetch_images(storage, storage, FetchConfig(concurrency=2, per_host_rate=0, retries=0, processes=2,
                                                       allow_hosts=({images.entry!r},)))
        """)
        job = subprocess.Popen([sys.executable, "-c", script])
        children: list = []
        try:
            deadline = time.monotonic() + 60
            while len(children) < 2 and time.monotonic() < deadline:
                time.sleep(0.2)
                children = [c for c in psutil.Process(job.pid).children()
                            if "spawn_main" in " ".join(c.cmdline())]
            assert len(children) == 2, "the fetch processes did not start"
            while len(images.paths) < 4 and time.monotonic() < deadline:  # both are fetching
                time.sleep(0.1)
            os.kill(job.pid, signal.SIGKILL)
            job.wait(timeout=10)
            gone, alive = psutil.wait_procs(children, timeout=10)
            assert not alive, f"fetch processes outlived the killed job: {[p.pid for p in alive]}"
            assert len(images.paths) < 100  # they stopped fetching, not finished
        finally:  # orphans belong to init, not to this test: kill them by pid
            for c in children:
                with contextlib.suppress(psutil.NoSuchProcess):
                    c.kill()
            if job.poll() is None:
                job.kill()
    finally:
        images.shutdown()
        images.server_close()
