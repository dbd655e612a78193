"""Nightly PPR refresh: how many sources a delta forces to recompute, by tolerance.

    .venv/bin/python bench/bench_ppr_refresh.py --root s3://g2i/bench-scale/n2400000-<ts>/goodreads \
        --old-run goodreads-2026-11-01 --new-run goodreads-2026-11-02 [--tols 1e-3,1e-2,1e-1] [--out NAME]

Reads the two build-graph commits a bench_scale run leaves (full build and 1% delta), finds the nodes
whose out-edges changed (`changed_nodes`, plus new and removed nodes) and, for each tolerance, the
sources whose PPR vector can move by more than it (`affected_sources`: one reverse push on the old graph,
the bound in g2i_core/ppr/incremental.py). A source outside that set keeps its old candidates in an
incremental refresh; the rest must be recomputed. Writes bench/results/<out>.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", required=True, help="graph root holding both build-graph commits")
    ap.add_argument("--old-run", required=True, help="run id of the previous build-graph commit")
    ap.add_argument("--new-run", required=True, help="run id of the delta's build-graph commit")
    ap.add_argument("--tols", default="1e-3,1e-2,1e-1", help="L1 tolerances (comma separated)")
    ap.add_argument("--alpha", type=float, default=0.15)
    ap.add_argument("--out", default="ppr_refresh")
    args = ap.parse_args(argv)

    from g2i_core.config import Settings
    from g2i_core.ppr.incremental import affected_sources, changed_nodes
    from g2i_core.ppr.io import load_graph

    settings = Settings.load()
    t = time.monotonic()
    old = load_graph(args.root, settings, pin=args.old_run)
    new = load_graph(args.root, settings, pin=args.new_run)
    load_s = time.monotonic() - t
    t = time.monotonic()
    changed = changed_nodes(old, new)
    changed_s = time.monotonic() - t
    print(f"[refresh] old {old.num_nodes:,} nodes / {old.num_edges:,} edges, new {new.num_nodes:,} / "
          f"{new.num_edges:,}; {len(changed):,} changed nodes ({changed_s:.1f}s)", flush=True)
    rows = []
    for tol in (float(x) for x in args.tols.split(",")):
        t = time.monotonic()
        stale = affected_sources(old, changed, args.alpha, tol)
        rows.append({"tol": tol, "affected_sources": int(len(stale)),
                     "fraction": round(len(stale) / max(old.num_nodes, 1), 4),
                     "seconds": round(time.monotonic() - t, 1)})
        print(f"[refresh] tol {tol:g}: {len(stale):,} of {old.num_nodes:,} sources affected "
              f"({rows[-1]['fraction']:.1%}, {rows[-1]['seconds']}s)", flush=True)
    result = {"root": args.root, "old_run": args.old_run, "new_run": args.new_run, "alpha": args.alpha,
              "old_nodes": old.num_nodes, "old_edges": old.num_edges, "new_nodes": new.num_nodes,
              "new_edges": new.num_edges, "changed_nodes": len(changed), "load_s": round(load_s, 1),
              "changed_nodes_s": round(changed_s, 1), "rows": rows,
              "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
              "load_avg": [round(x, 2) for x in os.getloadavg()]}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"# PPR refresh: sources a delta forces to recompute ({old.num_nodes:,} nodes)", "",
             f"Graphs: `{args.old_run}` ({old.num_nodes:,} nodes, {old.num_edges:,} edges) -> `{args.new_run}` "
             f"({new.num_nodes:,} nodes, {new.num_edges:,} edges), loaded in {load_s:.0f} s. Changed nodes "
             f"(out-edges differ, or new/removed): **{len(changed):,}** "
             f"({len(changed) / max(old.num_nodes, 1):.2%}), found in {changed_s:.1f} s. alpha {args.alpha}; "
             f"peak RSS {result['peak_rss_mib']:,} MiB; 1-min load average at the end {result['load_avg'][0]}.", "",
             "| L1 tolerance | sources to recompute | fraction | reverse push s |", "|---:|---:|---:|---:|"]
    lines += [f"| {r['tol']:g} | {r['affected_sources']:,} | {r['fraction']:.1%} | {r['seconds']} |" for r in rows]
    lines += ["", f"Reproduce: `.venv/bin/python bench/bench_ppr_refresh.py --root {args.root} --old-run "
              f"{args.old_run} --new-run {args.new_run} --tols {args.tols}`"]
    (RESULTS / f"{args.out}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
