"""Manage the embedded S3 server (SeaweedFS `weed mini`, bound to 127.0.0.1).

Data, generated credentials and logs live in G2I_S3_SERVER_DIR (default .local/s3), so data
survives a restart. `g2i s3 env` prints the G2I_* variables for other shells, with the secret
only when --show-secret is given.
"""

from __future__ import annotations

import argparse

NAME = "s3"
SUMMARY = "start/stop/status of the embedded S3 server (SeaweedFS on 127.0.0.1)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["start", "stop", "restart", "status", "env"])
    p.add_argument("--show-secret", action="store_true", help="with env: include the secret key")


def run(args: argparse.Namespace) -> int:
    from g2i_core.config import Settings
    from g2i_core.s3server import default_server

    server = default_server(Settings.load())
    if args.action in {"stop", "restart"}:
        server.stop()
        print(f"S3 server on {server.endpoint} stopped")
    if args.action in {"start", "restart"}:
        server.start()
        print(f"S3 server healthy at {server.endpoint}, bucket '{server.bucket}', data in {server.root / 'data'}")
    if args.action == "status":
        up = server.is_running()
        print(f"S3 server {'running' if up else 'stopped'} ({server.endpoint}, data in {server.root / 'data'})")
        return 0 if up else 3
    if args.action == "env":
        for k, v in server.env().items():
            if k == "G2I_S3_SECRET_KEY" and not args.show_secret:
                v = "***"
            print(f"export {k}={v}")
    return 0
