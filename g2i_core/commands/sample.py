"""Generate sample raw dumps in the three real formats, with procedural cover images.

Writes OUT/raw/{goodreads_books,meta_Books_2014,meta_Books_2018}.json.gz, OUT/images/, and
OUT/truth/ (exact expected counts of every injected fault, and node communities). With --upload,
the raw dumps are also copied to <storage_root>/raw/sample/ so Spark stages can read them from S3.
Deterministic by --seed. For huge --nodes, only --render-limit images per dataset are rendered.
"""

from __future__ import annotations

import argparse

NAME = "sample"
SUMMARY = "generate sample raw dumps (Goodreads, Amazon 2014/2018, an artworks table) and procedural images"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--nodes", type=int, default=500, help="nodes per dataset (default 500)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--communities", type=int, default=8)
    p.add_argument("--avg-degree", type=float, default=8.0)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--render-limit", type=int, default=20000, help="max rendered images per dataset")
    p.add_argument("--image-base-url", default="http://127.0.0.1:8765",
                   help="where `g2i serve-images` will serve OUT (default %(default)s)")
    p.add_argument("--formats", default="goodreads,amazon2014,amazon2018",
                   help="comma list of goodreads, amazon2014, amazon2018 and attributes (an ART500K-like CSV "
                        "table of artworks for --source attributes; not in the default)")
    p.add_argument("--upload", action="store_true", help="also upload raw dumps to <storage_root>/raw/sample/")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from g2i_core.sample.generator import generate_sample

    summary = generate_sample(args.out, nodes=args.nodes, seed=args.seed, communities=args.communities,
                              avg_degree=args.avg_degree, image_size=args.image_size,
                              render_limit=args.render_limit, image_base_url=args.image_base_url,
                              formats=tuple(f.strip() for f in args.formats.split(",") if f.strip()))
    for fmt, d in summary["datasets"].items():
        print(f"{fmt}: {d['lines']} lines, {d['nodes_expected']} nodes, "
              f"{sum(d['edges_by_relation'].values())} edges -> {Path(args.out) / d['dump']}")
    if args.upload:
        from g2i_core.config import Settings
        from g2i_core.storage import Storage

        storage = Storage.from_settings(Settings.load())
        for d in summary["datasets"].values():
            src = Path(args.out) / d["dump"]
            dest = storage.uri("raw", "sample", src.name)
            storage.put_bytes(dest, src.read_bytes(), "application/gzip")
            if src.name.endswith(".csv.gz"):  # the attributes table's truth: the evaluation's community labels
                truth = Path(args.out) / "truth" / "attributes_communities.csv.gz"
                storage.put_bytes(storage.uri("raw", "sample", "truth", truth.name), truth.read_bytes(),
                                  "application/gzip")
            print(f"uploaded {dest}")
    return 0
