"""Loopback HTTP server for the sample images (``g2i serve-images``).

Serves files under a sample folder. Paths under ``/slow/`` are served after a delay, so the
fetcher's timeouts are exercised for real; missing files answer 404. HTTP/1.1 with keep-alive, as image
CDNs serve; ``latency_s`` delays every response (a stand-in for a network round trip in benchmarks).
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

log = logging.getLogger(__name__)


class _Handler(SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: a client may reuse its connection (files carry Content-Length)
    # headers and body are two writes: with Nagle on, a reused connection waits for the client's delayed
    # ACK (40 ms) between them; image CDNs send with TCP_NODELAY
    disable_nagle_algorithm = True
    slow_seconds = 3.0
    latency_s = 0.0

    def do_GET(self):  # noqa: N802 - http.server API
        if self.latency_s:
            time.sleep(self.latency_s)
        if self.path.startswith("/slow/"):
            time.sleep(self.slow_seconds)
            self.path = self.path[len("/slow"):]
        return super().do_GET()

    def log_message(self, fmt, *args):  # keep test output quiet; errors still reach the log
        log.debug("%s " + fmt, self.address_string(), *args)


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        """A client that hung up (a fetcher's deadline passed on a /slow/ path) is expected, not an error."""
        import sys

        if isinstance(sys.exc_info()[1], ConnectionError):
            log.debug("client %s hung up", client_address)
            return
        super().handle_error(request, client_address)


class ImageServer:
    """``with ImageServer(dir, port=0) as srv: srv.base_url`` — a threaded static server on 127.0.0.1."""

    def __init__(self, directory: str | Path, port: int = 8765, slow_seconds: float = 3.0, latency_s: float = 0.0):
        directory = Path(directory)
        if not directory.is_dir():
            raise FileNotFoundError(f"image directory {directory} does not exist (run `g2i sample` first)")
        handler = type("Handler", (_Handler,), {"slow_seconds": slow_seconds, "latency_s": latency_s})
        # a listen backlog of 5 (socketserver's default) drops concurrent fetchers' SYNs into 1 s retransmits
        server = type("Server", (_QuietServer,), {"request_queue_size": 128})
        self.httpd = server(("127.0.0.1", port), functools.partial(handler, directory=str(directory)))
        self.httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "ImageServer":
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="image-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def serve_forever(self) -> None:
        log.info("serving images on %s", self.base_url)
        try:
            self.httpd.serve_forever()
        finally:
            self.httpd.server_close()

    def __enter__(self) -> "ImageServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
