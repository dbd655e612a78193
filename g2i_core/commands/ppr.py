"""Personalized PageRank candidates: the top-K neighbours of every node, written as ``ppr_candidates``
(node_id, rank, neighbour_id, ppr_score) under --out.

Restart probability --alpha to the source node; nodes without out-edges restart to the source; the
source itself is never its own candidate; edge weights are used when the table has a weight column.

Methods (see docs/neighbours.md for the measured speed/precision of each):
  auto         (default) propagate when the sources are all nodes or >= 10% of them, else push; their Spark
               versions (spark-propagate, spark-push) when spark_master is a cluster (not local[N]) or
               propagate would not fit ppr_memory_budget_gb (G2I_PPR_MEMORY_BUDGET_GB; 0: 75% of RAM)
  push         single-machine numba forward push, one source at a time; knob --eps (smaller = more precise)
  propagate    single-machine, for all (or most) nodes at once: every node's top-K' row is built from
               its out-neighbours' rows (--row-k, --sweeps), then a short push per source
               (--refine-eps) resolves its leftover residual with those rows
  exact        power iteration to --tol, the reference; small graphs only
  spark-push   the same push on Spark: sources spread over partitions, each worker loads the graph
               itself from staged Parquet (never through the driver); knob --eps
  spark-propagate  propagate as Spark jobs, for graphs past one machine: node blocks, each sweep a
               shuffle of rows to the blocks that read them; the refinement is partition-local on sources
               (--row-k, --sweeps, --refine-eps; --partitions = node blocks)
  graphframes  GraphFrames/GraphX parallelPersonalizedPageRank (fixed --iterations); the Spark anchor

Incremental refresh (the nightly delta path): --incremental refreshes the live ppr_candidates
for this graph. It diffs the graph against the one that version was computed from, recomputes the
new and changed nodes and the sources within --refresh-hops edges of them (--refresh-rule hops), or
every source whose candidates can move by more than --refresh-tol (--refresh-rule bound), and copies
the rest. It computes every source instead when there is no usable previous version (none, other
settings, a subset, Spark), or after --refresh-max-age refreshes in a row; the manifest says which
and why. With propagate, the sweeps continue from the rows the previous version committed (ppr_rows)
and cover only the nodes within --refresh-hops + 1 edges of a change. --previous-edges URI
[--changed URI] refreshes against explicitly given old edges.

Examples:
  g2i ppr --edges s3://g2i --out s3://g2i --top-k 50
  g2i ppr --edges file:///data/edges.parquet --out file:///data/out --method exact --top-k 10
"""

from __future__ import annotations

NAME = "ppr"
SUMMARY = "personalized PageRank top-K candidates for every node (ppr_candidates)"

import argparse  # noqa: E402

from g2i_core.commands import add_graph_run_arg  # noqa: E402
from g2i_core.ids import optional_run_id_arg  # noqa: E402
from g2i_core.ppr.pipeline import DEFAULT_REFRESH_MAX_AGE  # noqa: E402


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--root", default=None,
                   help="the dataset's storage root: reads its graph_edges and publishes ppr_candidates there")
    add_graph_run_arg(p, "graph_edges/graph_nodes under --root")
    p.add_argument("--edges", default=None,
                   help="Parquet edges file/prefix (src, dst[, weight]) or a storage root with graph_edges")
    p.add_argument("--out", default=None, help="storage root to publish ppr_candidates under (default: storage_root)")
    p.add_argument("--nodes", default=None, help="restrict sources to the node_id column of this Parquet/table URI")
    p.add_argument("--method", default="auto",
                   choices=["auto", "push", "propagate", "exact", "spark-push", "spark-propagate", "graphframes"])
    p.add_argument("--top-k", type=int, default=50)
    p.add_argument("--alpha", type=float, default=0.15, help="restart probability (default %(default)s)")
    p.add_argument("--eps", type=float, default=1e-6, help="push: residual threshold (default %(default)s)")
    p.add_argument("--row-k", type=int, default=128, help="propagate: entries kept per node row (default %(default)s)")
    p.add_argument("--sweeps", type=int, default=8, help="propagate: sweeps over all rows (default %(default)s)")
    p.add_argument("--refine-eps", type=float, default=1e-3,
                   help="propagate: per-source push threshold (default %(default)s)")
    p.add_argument("--partitions", type=int, default=0,
                   help="spark-push: source partitions (0: 4 x cores); "
                        "spark-propagate: node blocks (0: default parallelism)")
    p.add_argument("--iterations", type=int, default=20, help="graphframes: fixed iterations (default %(default)s)")
    p.add_argument("--tol", type=float, default=1e-10, help="exact: tolerance (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=256, help="sources per batch for exact/graphframes")
    p.add_argument("--ignore-weights", action="store_true", help="treat every edge as weight 1")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--run-id", default=None, type=optional_run_id_arg,
                   help="run id of the output (default: settings.run_id or 'manual')")
    p.add_argument("--previous-edges", default=None, help="incremental: the edges the previous run used")
    p.add_argument("--changed", default=None,
                   help="incremental: Parquet/table URI with node_id of changed/new nodes (default: diff of edges)")
    p.add_argument("--incremental", action="store_true",
                   help="refresh the live ppr_candidates for this graph instead of computing every source")
    p.add_argument("--refresh-rule", choices=["hops", "bound"], default="hops",
                   help="incremental: which sources to recompute besides new and changed nodes: those within "
                        "--refresh-hops edges of them, or those the L1 bound cannot rule out (--refresh-tol); "
                        "default %(default)s")
    p.add_argument("--refresh-hops", type=int, default=1,
                   help="incremental, rule hops: path length into a changed node (default %(default)s)")
    p.add_argument("--refresh-tol", type=float, default=1e-3,
                   help="incremental, rule bound: max L1 change of a kept node's ppr vector (default %(default)s)")
    p.add_argument("--cold-sweeps", action="store_true",
                   help="incremental, propagate: sweep every row from the cold start even when the previous "
                        "version committed its rows (slower; the comparison the warm start is measured against)")
    p.add_argument("--refresh-max-age", type=int, default=DEFAULT_REFRESH_MAX_AGE,
                   help="--incremental: refreshes in a row before a run computes every source (default %(default)s)")


def run(args: argparse.Namespace) -> int:
    from g2i_core.config import Settings
    from g2i_core.ppr.api import PprConfig
    from g2i_core.ppr.pipeline import run_ppr

    settings = Settings.load()
    config = PprConfig(method=args.method, alpha=args.alpha, top_k=args.top_k, eps=args.eps, row_k=args.row_k,
                       sweeps=args.sweeps, refine_eps=args.refine_eps, partitions=args.partitions,
                       iterations=args.iterations, tol=args.tol, batch_size=args.batch_size,
                       use_weights=not args.ignore_weights, seed=args.seed)
    edges = args.edges or args.root
    if not edges:
        raise SystemExit("g2i ppr: give --root (a storage root with graph_edges) or --edges")
    out = args.out or args.root or settings.storage_root
    manifest = run_ppr(settings, config, edges_uri=edges, out_uri=out, graph_run_id=args.graph_run_id or None,
                       nodes_uri=args.nodes, run_id=args.run_id or settings.run_id or "manual",
                       previous_edges_uri=args.previous_edges, changed_uri=args.changed,
                       refresh_tol=args.refresh_tol, incremental=args.incremental,
                       refresh_hops=args.refresh_hops if args.refresh_rule == "hops" else None,
                       refresh_max_age=args.refresh_max_age, warm_start=not args.cold_sweeps)
    print(f"ppr_candidates: {manifest['rows']} rows, run {manifest['run_id']} under {out}")
    return 0
