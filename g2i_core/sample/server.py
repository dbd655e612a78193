"""Loopback HTTP server for the sample images (``g2i serve-images``).

Serves files under a sample folder. Paths under ``/slow/`` are served after a delay, so the
fetcher's timeouts are exercised for real; missing files answer 404.
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
    slow_seconds = 3.0

    def do_GET(self):  # noqa: N802 - http.server API
        if self.path.startswith("/slow/"):
            time.sleep(self.slow_seconds)
            self.path = self.path[len("/slow"):]
        return super().do_GET()

    def log_message(self, fmt, *args):  # keep test output quiet; errors still reach the log
        log.debug("%s " + fmt, self.address_string(), *args)


class ImageServer:
    """``with ImageServer(dir, port=0) as srv: srv.base_url`` — a threaded static server on 127.0.0.1."""

    def __init__(self, directory: str | Path, port: int = 8765, slow_seconds: float = 3.0):
        directory = Path(directory)
        if not directory.is_dir():
            raise FileNotFoundError(f"image directory {directory} does not exist (run `g2i sample` first)")
        handler = type("Handler", (_Handler,), {"slow_seconds": slow_seconds})
        # a listen backlog of 5 (socketserver's default) drops concurrent fetchers' SYNs into 1 s retransmits
        server = type("Server", (ThreadingHTTPServer,), {"request_queue_size": 128})
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
