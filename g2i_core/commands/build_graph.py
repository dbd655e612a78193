"""Clean and enrich the ingested graph: drop dangling edges, optional symmetrize, degrees, connected
components, image status and a stable hash-based train/val/test split.

Examples:
  g2i build-graph --in s3://g2i/goodreads
  g2i build-graph --in s3://g2i/amazon --symmetrize --relations also_buy,also_view

Reads <in>/nodes, <in>/edges and (if published) <out or in>/node_images; writes <out>/graph_nodes,
<out>/graph_edges and <out>/graph_stats/<run_id>.json (counts per relation, degree quantiles,
component sizes, image coverage, split sizes; also in the graph_nodes manifest).
"""

from __future__ import annotations

import argparse

from g2i_core.commands import add_graph_run_arg
from g2i_core.ids import optional_run_id_arg

NAME = "build-graph"
SUMMARY = "nodes + edges + node_images -> graph_nodes, graph_edges, stats (Spark, or local when it fits)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--root", "--in", dest="inp", default=None,
                   help="the dataset's storage root holding nodes/edges (default: settings.storage_root)")
    p.add_argument("--out", default=None, help="storage root for the graph tables (default: --root)")
    p.add_argument("--run-id", default="", type=optional_run_id_arg,
                   help="default: the nodes run id (a rerun replaces it)")
    add_graph_run_arg(p, "the ingest commit to build from (default: --run-id's own if published, else the live one)")
    p.add_argument("--force", action="store_true",
                   help="make this run live even when a newer logical date is live (moves _LATEST back)")
    p.add_argument("--symmetrize", action="store_true", help="add the reverse of every edge")
    p.add_argument("--relations", default="", help="comma-separated relations to keep (default: all)")
    p.add_argument("--train-fraction", type=float, default=0.8)
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--cc-method", choices=("auto", "graphx", "local"), default="auto",
                   help="connected components: graphx on the executors, local (scipy on the driver), or auto: "
                        "local unless the master is a cluster or the graph exceeds the memory budget "
                        "(setting ppr_memory_budget_gb)")
    p.add_argument("--engine", choices=("auto", "spark", "local"), default="auto",
                   help="spark, local (pyarrow + scipy in this process, no Spark jobs), or auto: local unless the "
                        "master is a cluster, --cc-method is graphx or the graph exceeds the memory budget "
                        "(setting ppr_memory_budget_gb)")
    p.add_argument("--json", action="store_true", help="print the stats as JSON")


def run(args: argparse.Namespace) -> int:
    import json

    from g2i_core.config import Settings
    from g2i_core.graph.build import BuildConfig, build_graph
    from g2i_core.spark import get_spark
    from g2i_core.storage import Storage

    settings = Settings.load()
    cfg = BuildConfig(run_id=args.run_id, input_run_id=args.graph_run_id, force=args.force, symmetrize=args.symmetrize,
                      relations=tuple(r.strip() for r in args.relations.split(",") if r.strip()),
                      train_fraction=args.train_fraction, val_fraction=args.val_fraction,
                      cc_method=args.cc_method, engine=args.engine).check()
    storage = Storage.from_settings(settings, root=args.inp)
    out = Storage.from_settings(settings, root=args.out) if args.out else storage
    stats = build_graph(storage, cfg, out, spark_master=settings.spark_master,
                        spark=lambda: get_spark(settings, "g2i-build-graph"))
    if args.json:
        print(json.dumps(stats, indent=2, sort_keys=True))
    else:
        print(f"graph run {stats['run_id']}: {stats['nodes']} nodes, {stats['edges']} edges "
              f"{stats['edges_by_relation']}; dropped dangling {stats['dangling_dropped_by_relation']}; "
              f"{stats['components']} components; image coverage {stats['image_coverage']:.1%}; "
              f"split {stats['split']} -> {out.root}")
    return 0
