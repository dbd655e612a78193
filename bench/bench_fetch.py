"""Image fetch throughput against the loopback sample server: the async client vs the threaded one.

    .venv/bin/python bench/bench_fetch.py           # 3,000 nodes, 0 ms and 20 ms simulated latency
    .venv/bin/python bench/bench_fetch.py --quick   # 600 nodes

Loopback has no network round trip, so each configuration also runs with a fixed per-response server delay
(``--latency-ms``, default 20 ms) standing in for a CDN round trip; that is where concurrency pays. Both
clients (``--client async`` with connections reused per host, and the earlier ``threads`` client) run in
the same invocation against the same server, so their ratio holds even when the shared machine is busy.
The image server runs in a process of its own (a remote CDN does not share the fetcher's interpreter);
``--server thread`` runs it inside the fetching process instead, as the tests do. Every run fetches
into a fresh file store (no resume, no dedupe hits) with the per-host rate limit off; the real egress
policy applies (the server is opened by ``allow_hosts``). Writes bench/results/fetch.json and fetch.md.
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"
SLOW_SECONDS = 2.0  # the sample's /slow/ URLs: each ends as a timeout at --timeout 1 s
# (client, concurrency): the earlier client at its old default, then the async client at several widths
CONFIGS = (("threads", 16), ("threads", 64), ("async", 16), ("async", 64), ("async", 128))


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


def _serve(directory: str, port: int, latency_ms: float) -> int:
    """``--serve``: the image server in this process, until killed (the parent reads the port it printed)."""
    from g2i_core.sample.server import ImageServer

    server = ImageServer(directory, port=port, slow_seconds=SLOW_SECONDS, latency_s=latency_ms / 1000)
    print(server.port, flush=True)
    server.serve_forever()
    return 0


class _ServerProcess:
    """The image server in a child process, bound to 127.0.0.1 on a free port."""

    def __init__(self, directory: Path, port: int, latency_ms: float):
        self.proc = subprocess.Popen([sys.executable, __file__, "--serve", str(directory), "--port", str(port),
                                      "--latency-ms", str(latency_ms)], stdout=subprocess.PIPE, text=True)
        self.port = int(self.proc.stdout.readline())

    def cpu_s(self) -> float:
        import psutil

        times = psutil.Process(self.proc.pid).cpu_times()
        return times.user + times.system

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


class _ServerThread:
    def __init__(self, directory: Path, port: int, latency_ms: float):
        from g2i_core.sample.server import ImageServer

        self.server = ImageServer(directory, port=port, slow_seconds=SLOW_SECONDS, latency_s=latency_ms / 1000)
        self.server.start()
        self.port = self.server.port

    def cpu_s(self) -> float:  # counted in the fetching process
        return 0.0

    def stop(self) -> None:
        self.server.stop()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_one(tmp: Path, sample: Path, server, latency_ms: float, client: str, concurrency: int) -> dict:
    from g2i_core.images import FetchConfig, fetch_images
    from g2i_core.storage import Storage

    name = f"store-{latency_ms:g}-{client}-{concurrency}-{time.monotonic_ns()}"
    store = Storage(f"file://{tmp}/{name}")
    n = _publish_nodes(store, sample)
    # max_failure_fraction 1: a run starved of CPU reports its timeouts instead of failing the bench
    cfg = FetchConfig(client=client, concurrency=concurrency, per_host_rate=0, timeout_s=1.0, retries=0,
                      allow_hosts=(f"127.0.0.1:{server.port}",), max_failure_fraction=1.0)
    cpu_before, server_before = resource.getrusage(resource.RUSAGE_SELF), server.cpu_s()
    report = fetch_images(store, store, cfg)
    cpu_after, server_s = resource.getrusage(resource.RUSAGE_SELF), server.cpu_s() - server_before
    cpu_s = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    stored = [p for p in Path(tmp, name, "images").rglob("*") if p.is_file()]
    return {"latency_ms": latency_ms, "client": client, "concurrency": concurrency, "nodes": n,
            "fetched": report.fetched, "ok": report.by_status.get("ok", 0), "seconds": report.seconds,
            "fetches_per_s": round(report.fetched / report.seconds, 1),
            "fetcher_cpu_ms_per_fetch": round(1000 * cpu_s / max(report.fetched, 1), 3),
            "server_cpu_ms_per_fetch": round(1000 * server_s / max(report.fetched, 1), 3),
            "stored_objects": len(stored), "stored_mib": round(sum(p.stat().st_size for p in stored) / 2**20, 2),
            "by_status": report.by_status}


def main(argv: list[str] | None = None) -> int:
    from g2i_core.sample.generator import generate_sample

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--nodes", type=int, default=None)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=2, help="runs of each configuration (interleaved); best kept")
    parser.add_argument("--server", choices=("process", "thread"), default="process")
    parser.add_argument("--serve", metavar="DIR", help=argparse.SUPPRESS)  # internal: the server child
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        return _serve(args.serve, args.port, args.latency_ms)
    nodes = args.nodes or (600 if args.quick else 3000)
    logging.basicConfig(level=logging.WARNING)
    load_start = os.getloadavg()[0]

    runs: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="g2i-bench-fetch-") as tmp:
        sample = Path(tmp) / "sample"
        sample.mkdir()
        port = _free_port()  # one port for every server: the URLs in the sample name it
        generate_sample(sample, nodes=nodes, seed=3, formats=("goodreads",), image_base_url=f"http://127.0.0.1:{port}")
        for latency_ms in (0.0, args.latency_ms):
            server = (_ServerProcess if args.server == "process" else _ServerThread)(sample, port, latency_ms)
            try:
                for round_ in range(args.rounds):  # interleaved: a burst of load elsewhere hits every config
                    for client, concurrency in CONFIGS:
                        row = _run_one(Path(tmp), sample, server, latency_ms, client, concurrency)
                        row["round"] = round_
                        runs.append(row)
                        print(row, flush=True)
            finally:
                server.stop()
            time.sleep(0.5)  # the port is free again before the next server binds it

    results = [max((r for r in runs if (r["latency_ms"], r["client"], r["concurrency"]) == key),
                   key=lambda r: r["fetches_per_s"])
               for key in dict.fromkeys((r["latency_ms"], r["client"], r["concurrency"]) for r in runs)]
    summary = {"benchmark": "fetch", "cpus": os.cpu_count(), "server": args.server, "rounds": args.rounds,
               "results": results, "all_runs": runs,
               "load_avg_1m_at_start": round(load_start, 2), "load_avg_1m_at_end": round(os.getloadavg()[0], 2),
               "command": "python bench/bench_fetch.py" + (" --quick" if args.quick else "")
               + (f" --nodes {args.nodes}" if args.nodes else "")
               + (" --server thread" if args.server == "thread" else "")
               + (f" --rounds {args.rounds}" if args.rounds != 2 else "")}
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "fetch_quick" if args.quick else "fetch"
    (RESULTS / f"{name}.json").write_text(json.dumps(summary, indent=2))
    base = {r["latency_ms"]: r["fetches_per_s"] for r in results if (r["client"], r["concurrency"]) == CONFIGS[0]}
    lines = ["| simulated latency (ms) | client | concurrency | fetches | ok | timeouts | seconds | fetches/s "
             "| vs threads×16 | fetcher CPU ms/fetch | server CPU ms/fetch |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['latency_ms']:g} | {r['client']} | {r['concurrency']} | {r['fetched']} | {r['ok']} "
              f"| {r['by_status'].get('timeout', 0)} | {r['seconds']} | {r['fetches_per_s']} "
              f"| {r['fetches_per_s'] / base[r['latency_ms']]:.2f}× "
              f"| {r['fetcher_cpu_ms_per_fetch']} | {r['server_cpu_ms_per_fetch']} |" for r in results]
    where = "in a process of its own" if args.server == "process" else "in a thread of the fetching process"
    md = (f"# Image fetch benchmark\n\nLoopback sample server ({where}, HTTP/1.1 keep-alive), {results[0]['nodes']} "
          f"Goodreads nodes (a few slow, 404, corrupt and bomb URLs included; timeout 1 s, no retries, per-host rate "
          f"limit off, the egress policy on with the server allow-listed); best of {args.rounds} interleaved runs "
          f"per row; {os.cpu_count()} CPUs, 1-min load average "
          f"{summary['load_avg_1m_at_start']} at the start and {summary['load_avg_1m_at_end']} at the end (shared "
          f"machine). `async` is the default client (aiohttp, connections reused per host); `threads` is the earlier "
          f"client (one checked connection per request). CPU columns are user+system seconds of the fetching "
          f"process and of the server process per fetch (with `--server thread` the fetcher's include the "
          f"server's); they vary less with the machine's load than fetches/s does.\n\n" + "\n".join(lines)
          + f"\n\nReproduce: `{summary['command']}`\n")
    (RESULTS / f"{name}.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
