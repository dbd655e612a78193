"""Serve a sample folder's images over HTTP on 127.0.0.1 (foreground; Ctrl+C stops).

Paths under /slow/ are answered after --slow-seconds, and missing files with 404, so the image
fetcher meets timeouts and errors for real.
"""

from __future__ import annotations

import argparse

NAME = "serve-images"
SUMMARY = "serve the sample images over HTTP on loopback for fetch-images"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dir", required=True, help="the sample folder given to `g2i sample --out`")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--slow-seconds", type=float, default=3.0)


def run(args: argparse.Namespace) -> int:
    from g2i_core.sample.server import ImageServer

    server = ImageServer(args.dir, port=args.port, slow_seconds=args.slow_seconds)
    print(f"serving {args.dir} on {server.base_url}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0
