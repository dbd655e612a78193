"""Image fetch throughput against the loopback sample server: concurrent vs sequential.

    .venv/bin/python bench/bench_fetch.py           # 2,000 nodes, 0 ms and 20 ms simulated latency
    .venv/bin/python bench/bench_fetch.py --quick   # 300 nodes

Loopback has no network round trip, so each configuration is also run with a fixed per-request server
delay (``--latency-ms``, default 20 ms) standing in for a CDN round trip; that is where concurrency pays.
Every run fetches into a fresh store (no resume, no dedupe hits) with per-host rate limiting off.
Writes bench/results/fetch.json and bench/results/fetch.md.
"""

from __future__ import annotations

import argparse
import functools
import gzip
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"


def _publish_nodes(storage, sample: Path) -> int:
    import pyarrow as pa

    from g2i_core.ingest.parsers import parse_line

    rows = {}
    with gzip.open(sample / "raw" / "goodreads_books.json.gz", "rb") as fh:
        for i, line in enumerate(fh, 1):
            row = parse_line("goodreads", line.rstrip(b"\n"), i)
            if row["reason"] is None:
                rows.setdefault(row["node_id"], {k: row[k] for k in ("node_id", "image_url", "has_real_image")})
    storage.publish_table("nodes", pa.Table.from_pylist(list(rows.values())), "bench")
    return len(rows)


def _with_latency(server, directory: Path, latency_s: float) -> None:
    """Make every response of ``server`` wait ``latency_s`` first (a stand-in for network round trips)."""
    base = server.httpd.RequestHandlerClass.func

    class Delayed(base):
        def do_GET(self):  # noqa: N802 - http.server API
            time.sleep(latency_s)
            return super().do_GET()

    server.httpd.RequestHandlerClass = functools.partial(Delayed, directory=str(directory))


def main(argv: list[str] | None = None) -> int:
    from g2i_core.images import FetchConfig, fetch_images
    from g2i_core.sample.generator import generate_sample
    from g2i_core.sample.server import ImageServer
    from g2i_core.storage import Storage

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--nodes", type=int, default=None)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    args = parser.parse_args(argv)
    nodes = args.nodes or (300 if args.quick else 2000)
    logging.basicConfig(level=logging.WARNING)

    results = []
    with tempfile.TemporaryDirectory(prefix="g2i-bench-fetch-") as tmp:
        sample = Path(tmp) / "sample"
        sample.mkdir()
        with ImageServer(sample, port=0, slow_seconds=2.0) as server:
            generate_sample(sample, nodes=nodes, seed=3, formats=("goodreads",), image_base_url=server.base_url)
            for latency_ms in (0.0, args.latency_ms):
                _with_latency(server, sample, latency_ms / 1000)
                for concurrency in (1, args.concurrency):
                    store = Storage(f"file://{tmp}/store-{latency_ms}-{concurrency}")
                    n = _publish_nodes(store, sample)
                    cfg = FetchConfig(concurrency=concurrency, per_host_rate=0, timeout_s=1.0, retries=0,
                                      allow_hosts=(f"127.0.0.1:{server.port}",))
                    report = fetch_images(store, store, cfg)
                    mib = sum(p.stat().st_size for p in Path(tmp, f"store-{latency_ms}-{concurrency}", "images")
                              .rglob("*") if p.is_file()) / 2**20
                    row = {"latency_ms": latency_ms, "concurrency": concurrency, "nodes": n,
                           "fetched": report.fetched, "ok": report.by_status.get("ok", 0),
                           "seconds": report.seconds, "fetches_per_s": round(report.fetched / report.seconds, 1),
                           "stored_mib": round(mib, 2), "by_status": report.by_status}
                    results.append(row)
                    print(row, flush=True)

    summary = {"benchmark": "fetch", "cpus": os.cpu_count(), "results": results,
               "load_avg_1m_at_end": round(os.getloadavg()[0], 2),
               "command": "python bench/bench_fetch.py" + (" --quick" if args.quick else "")}
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "fetch_quick" if args.quick else "fetch"
    (RESULTS / f"{name}.json").write_text(json.dumps(summary, indent=2))
    lines = ["| simulated latency (ms) | concurrency | fetches | ok | seconds | fetches/s |",
             "|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['latency_ms']:g} | {r['concurrency']} | {r['fetched']} | {r['ok']} | {r['seconds']} | "
              f"{r['fetches_per_s']} |" for r in results]
    md = (f"# Image fetch benchmark\n\nLoopback sample server, {results[0]['nodes']} Goodreads nodes (a few slow, "
          f"404, corrupt and bomb URLs included; timeout 1 s, no retries); {os.cpu_count()} CPUs, 1-min load "
          f"average at the end {summary['load_avg_1m_at_end']} (shared machine).\n\n" + "\n".join(lines)
          + f"\n\nReproduce: `{summary['command']}`\n")
    (RESULTS / f"{name}.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
