"""Download every node's image_url into content-addressed storage and publish the node_images table.

Examples:
  g2i fetch-images --in s3://g2i/goodreads
  g2i fetch-images --in s3://g2i/goodreads --concurrency 64 --per-host-rate 50 --timeout 5

Reads <in>/nodes; writes images to <out>/images/<sha[:2]>/<sha>.<ext> (identical bytes stored once) and
<out>/node_images (one row per node: status ok | no_image | not_found | http_error | timeout | too_large |
too_many_pixels | corrupt | error). Rerunning fetches only what is missing or failed; an interrupted
run resumes from its checkpoints.
"""

from __future__ import annotations

import argparse

NAME = "fetch-images"
SUMMARY = "download node images (bounded concurrency, retries, bomb-safe validation) -> node_images"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--in", dest="inp", default=None, help="storage root holding nodes (default: settings)")
    p.add_argument("--out", default=None, help="storage root for images and node_images (default: --in)")
    p.add_argument("--run-id", default="", help="default: the nodes run id (a rerun replaces it)")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--per-host-rate", type=float, default=20.0, help="requests/s per host; 0 = unlimited")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per request")
    p.add_argument("--retries", type=int, default=2, help="extra attempts for transient failures")
    p.add_argument("--max-bytes", type=int, default=20 << 20)
    p.add_argument("--max-pixels", type=int, default=40_000_000)


def run(args: argparse.Namespace) -> int:
    from g2i_core.config import Settings
    from g2i_core.images import FetchConfig, fetch_images
    from g2i_core.storage import Storage

    settings = Settings.load()
    nodes_storage = Storage.from_settings(settings, root=args.inp)
    out = Storage.from_settings(settings, root=args.out or nodes_storage.root)
    cfg = FetchConfig(run_id=args.run_id, concurrency=args.concurrency, per_host_rate=args.per_host_rate,
                      timeout_s=args.timeout, retries=args.retries, max_bytes=args.max_bytes,
                      max_pixels=args.max_pixels)
    report = fetch_images(nodes_storage, out, cfg)
    print(f"node_images run {report.run_id}: {report.nodes} nodes, fetched {report.fetched}, reused {report.reused}, "
          f"{report.stored_new} new objects, {report.seconds:.1f}s; status {report.by_status}")
    return 0
