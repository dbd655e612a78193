"""Run a real Airflow 3 on the embedded default: api-server (UI + REST API), scheduler (LocalExecutor),
dag-processor and triggerer, with SQLite under AIRFLOW_HOME (default .local/airflow), bound to 127.0.0.1.

`up` starts what is not running (and the embedded S3 server when the settings point at it), then waits
until the scheduler and dag-processor are healthy and the DAGs in dags/ are listed. `down` stops exactly
the processes `up` started (pid files in AIRFLOW_HOME/run/). `status` prints health and pids.
Logs: AIRFLOW_HOME/logs/. Logic: g2i_core/airflow_local.py.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

NAME = "airflow"
SUMMARY = "up/down/status of a local Airflow 3 (UI, scheduler, dag-processor, triggerer) on 127.0.0.1"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["up", "down", "status"])
    p.add_argument("--home", type=Path, default=None,
                   help="AIRFLOW_HOME (default: .local/airflow of this repo)")
    p.add_argument("--port", type=int, default=None,
                   help="api-server port (default: the running instance's, else 8080)")
    p.add_argument("--timeout", type=float, default=240.0, help="seconds `up` waits for a healthy Airflow")
    p.add_argument("--no-s3", action="store_true", help="with up: do not start the embedded S3 server")


def run(args: argparse.Namespace) -> int:
    from g2i_core.airflow_local import DEFAULT_HOME, DEFAULT_PORT, LocalAirflow

    af = LocalAirflow(args.home or DEFAULT_HOME)
    af.port = args.port or af.running_port() or DEFAULT_PORT
    if args.action == "up":
        if not args.no_s3:
            _embedded_s3()
        result = af.up(timeout=args.timeout)
        verb = "already up" if result.already_up else f"up in {result.seconds:.0f}s"
        print(f"Airflow {verb}: {result.url}  (AIRFLOW_HOME={af.home})")
        print(f"  user: {result.user}   password: in {result.password_file}")
        for dag in result.dags:
            print(f"  DAG {dag['dag_id']:<22} {'paused' if dag.get('is_paused') else 'active'}")
        print(f"  pids: {', '.join(f'{k} {v}' for k, v in result.pids.items())}   logs: {af.logs_dir}")
        return 0
    if args.action == "down":
        stopped = af.down()
        print(f"Airflow under {af.home}: " + (f"stopped {', '.join(stopped)}" if stopped else "not running"))
        return 0
    st = af.status()
    health = st["health"]
    print(f"Airflow {st['url']}  (AIRFLOW_HOME={st['home']})")
    for name, pid in st["pids"].items():
        key = name.replace("-", "_")
        state = (health.get(key) or {}).get("status") if isinstance(health, dict) else None
        if name == "api-server" and isinstance(health, dict):
            state = "serving"
        print(f"  {name:<14} {'pid ' + str(pid) if pid else 'not running':<14} {state or ''}")
    if isinstance(health, str):
        print(f"  api: {health}")
    healthy = isinstance(health, dict) and all(
        (health.get(k) or {}).get("status") == "healthy" for k in ("scheduler", "dag_processor"))
    return 0 if all(st["pids"].values()) and healthy else 3


def _embedded_s3() -> None:
    """Start the embedded S3 server when the settings point at it (idempotent), so the first DAG run works."""
    from g2i_core.config import Settings
    from g2i_core.s3server import default_server

    settings = Settings.load()
    if not settings.storage_root.startswith("s3://"):
        return
    server = default_server(settings)
    if settings.s3_endpoint.rstrip("/") != server.endpoint or os.environ.get("G2I_S3_ACCESS_KEY"):
        return  # another S3: nothing of ours to start
    server.start()
    print(f"S3 server healthy at {server.endpoint}, bucket '{server.bucket}'")
