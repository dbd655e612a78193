"""Download every node's image_url into content-addressed storage and publish the node_images table.

Examples:
  g2i fetch-images --in s3://g2i/goodreads
  g2i fetch-images --in s3://g2i/goodreads --concurrency 128 --per-host-rate 50 --timeout 5
  g2i fetch-images --in s3://g2i/goodreads --processes 1   # one process (the default uses one per CPU)

  G2I_FETCH_ALLOW_HOSTS=127.0.0.1:8765 g2i fetch-images --in s3://g2i/goodreads   # a loopback test server

Reads <in>/nodes; writes images to <out>/images/<sha[:2]>/<sha>.<ext> (identical bytes stored once) and
<out>/node_images (one row per node: status ok | no_image | blocked | not_found | http_error | timeout |
too_large | too_many_pixels | corrupt | error). Rerunning fetches only what is missing or failed; an
interrupted or failed run resumes from its checkpoints.

Egress policy (g2i_core/egress.py): only http/https to globally routable addresses, every redirect hop
re-checked (at most 3), one deadline (--timeout) per request; a refused URL gets status blocked.
--client async (default) keeps --concurrency downloads in flight on one event loop and reuses connections
per host (g2i_core/egress_async.py); --client threads is the earlier one-connection-per-request client.
--processes splits the nodes by a hash of their id over several such clients (the GIL caps one near a core).
--allow-hosts (default: the fetch_allow_hosts setting, G2I_FETCH_ALLOW_HOSTS) opens named hosts.
The job fails and publishes nothing on a storage error, or when more than --max-failure-fraction of the
nodes with an image URL are not ok.
"""

from __future__ import annotations

import argparse

from g2i_core.commands import add_graph_run_arg
from g2i_core.ids import optional_run_id_arg

NAME = "fetch-images"
SUMMARY = "download node images (bounded concurrency, retries, bomb-safe validation) -> node_images"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--root", "--in", dest="inp", default=None,
                   help="the dataset's storage root holding nodes (default: settings.storage_root)")
    p.add_argument("--out", default=None, help="storage root for images and node_images (default: --root)")
    add_graph_run_arg(p, "the nodes to fetch for (default: --run-id's own ingest run if published, else the live one)")
    p.add_argument("--run-id", default="", type=optional_run_id_arg,
                   help="default: the nodes run id (a rerun replaces it)")
    p.add_argument("--concurrency", type=int, default=64, help="downloads in flight")
    p.add_argument("--processes", type=int, default=0,
                   help="fetch processes, each with a hash share of the nodes, of --concurrency and of "
                        "--per-host-rate; 0 = one per CPU (at most 4) once there are 2,000 URLs to fetch")
    p.add_argument("--client", choices=("async", "threads"), default="async",
                   help="async: one event loop, connections reused per host; threads: the earlier client")
    p.add_argument("--per-host-rate", type=float, default=20.0, help="requests/s per host; 0 = unlimited")
    p.add_argument("--timeout", type=float, default=10.0,
                   help="seconds per request, in total: DNS, connect, headers, body and redirects")
    p.add_argument("--retries", type=int, default=2, help="extra attempts for transient failures")
    p.add_argument("--max-bytes", type=int, default=20 << 20)
    p.add_argument("--max-pixels", type=int, default=40_000_000)
    p.add_argument("--max-failure-fraction", type=float, default=0.2,
                   help="fail (publish nothing) when more than this share of nodes with an image URL is not ok")
    p.add_argument("--allow-hosts", default=None,
                   help="comma-separated host or host:port reachable even on loopback/private addresses "
                        "(default: setting fetch_allow_hosts / G2I_FETCH_ALLOW_HOSTS)")


def run(args: argparse.Namespace) -> int:
    from g2i_core.config import Settings
    from g2i_core.egress import parse_allow_hosts
    from g2i_core.images import FetchConfig, fetch_images
    from g2i_core.storage import Storage

    settings = Settings.load()
    nodes_storage = Storage.from_settings(settings, root=args.inp).pinned(args.graph_run_id)
    out = Storage.from_settings(settings, root=args.out or nodes_storage.root)
    cfg = FetchConfig(run_id=args.run_id, concurrency=args.concurrency, client=args.client, processes=args.processes,
                      per_host_rate=args.per_host_rate,
                      timeout_s=args.timeout, retries=args.retries, max_bytes=args.max_bytes,
                      max_pixels=args.max_pixels, max_failure_fraction=args.max_failure_fraction,
                      allow_hosts=parse_allow_hosts(settings.fetch_allow_hosts if args.allow_hosts is None
                                                    else args.allow_hosts))
    report = fetch_images(nodes_storage, out, cfg)
    print(f"node_images run {report.run_id}: {report.nodes} nodes, fetched {report.fetched}, reused {report.reused}, "
          f"{report.stored_new} new objects, {report.seconds:.1f}s; status {report.by_status}")
    return 0
