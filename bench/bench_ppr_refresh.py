"""Nightly PPR refresh: how many sources a delta forces to recompute, by tolerance or by hops.

    .venv/bin/python bench/bench_ppr_refresh.py --root s3://g2i/bench-scale/n2400000-<ts>/goodreads \
        --old-run goodreads-2026-11-01 --new-run goodreads-2026-11-02 [--tols 1e-3,1e-2,1e-1] [--out NAME] \
        [--hops 0,1,2 --old-candidates RUN --new-candidates RUN_OR_MANIFEST_JSON]

Reads the two build-graph commits a bench_scale run leaves (full build and 1% delta), finds the nodes
whose out-edges changed (`changed_nodes`, plus new and removed nodes) and, for each tolerance, the
sources whose PPR vector can move by more than it (`affected_sources`: one reverse push on the old graph,
the bound in g2i_core/ppr/incremental.py). A source outside that set keeps its old candidates in an
incremental refresh; the rest must be recomputed.

``--hops``: the rule the nightly DAG uses (``g2i ppr --incremental``): recompute the sources within h
hops of a changed node, keep the rest. Given every source's candidates computed in full on each graph
(``--old-candidates``, ``--new-candidates``: run ids of ``ppr_candidates``, or a saved manifest JSON),
it reports the refreshed table's top-10 agreement with the full computation on the new graph. With
cold sweeps a recomputed source's rows are those of the full computation, so only the kept sources
can disagree. ``--refreshed``: tables `g2i ppr --incremental` actually published (warm or cold sweeps),
each compared with the full computation as a whole. Writes bench/results/<out>.{md,json}.
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
    ap.add_argument("--hops", default="", help="hop counts of the hops rule (comma separated)")
    ap.add_argument("--old-candidates", default="", help="--hops: ppr_candidates run computed in full on --old-run")
    ap.add_argument("--new-candidates", default="",
                    help="--hops: ppr_candidates run (or a saved manifest .json) computed in full on --new-run")
    ap.add_argument("--refreshed", default="",
                    help="ppr_candidates runs (or saved manifest .json) that `g2i ppr --incremental` published on "
                         "--new-run, comma separated: each one's top-10 agreement with --new-candidates")
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
    for tol in (float(x) for x in args.tols.split(",") if x):
        t = time.monotonic()
        stale = affected_sources(old, changed, args.alpha, tol)
        rows.append({"tol": tol, "affected_sources": int(len(stale)),
                     "fraction": round(len(stale) / max(old.num_nodes, 1), 4),
                     "seconds": round(time.monotonic() - t, 1)})
        print(f"[refresh] tol {tol:g}: {len(stale):,} of {old.num_nodes:,} sources affected "
              f"({rows[-1]['fraction']:.1%}, {rows[-1]['seconds']}s)", flush=True)
    hop_rows = hop_agreement(args, settings, old, new, changed) if args.hops else []
    refreshed = refreshed_agreement(args, settings, new) if args.refreshed else []
    result = {"root": args.root, "hop_rows": hop_rows, "refreshed": refreshed, "old_run": args.old_run,
              "new_run": args.new_run, "alpha": args.alpha,
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
             f"peak RSS {result['peak_rss_mib']:,} MiB; 1-min load average at the end {result['load_avg'][0]}."]
    if rows:
        lines += ["", "| L1 tolerance | sources to recompute | fraction | reverse push s |", "|---:|---:|---:|---:|"]
        lines += [f"| {r['tol']:g} | {r['affected_sources']:,} | {r['fraction']:.1%} | {r['seconds']} |" for r in rows]
    if hop_rows:
        lines += ["", f"Hops rule, against every source computed in full on each graph (`{args.old_candidates}`, "
                  f"`{Path(args.new_candidates).name}`). Agreement: the share of the full computation's top-10 "
                  "entries on the new graph that the refreshed table also has in its top-10.", "",
                  "| hops | sources recomputed | fraction | top-10 agreement | kept sources' agreement |",
                  "|---:|---:|---:|---:|---:|"]
        lines += [f"| {r['hops']} | {r['recomputed']:,} | {r['fraction']:.1%} | {r['agreement']:.4f} | "
                  f"{r['kept_agreement']:.4f} |" for r in hop_rows]
    if refreshed:
        lines += ["", f"Published refreshes against every source computed in full on the new graph "
                  f"(`{Path(args.new_candidates).name}`): the share of its top-10 entries the refresh also has in "
                  "its top-10.", "", "| refresh | rows | sources recomputed | rows swept | top-10 agreement |",
                  "|---|---|---:|---:|---:|"]
        lines += [f"| {r['candidates']} | {r['rows']} | {r['recomputed']:,} | {r['swept']} | {r['agreement']:.4f} |"
                  for r in refreshed]
    hop_args = (f" --hops {args.hops} --old-candidates {args.old_candidates} --new-candidates {args.new_candidates}"
                if args.hops else "")
    hop_args += (f" --refreshed {args.refreshed}" + ("" if args.hops else f" --new-candidates {args.new_candidates}")
                 if args.refreshed else "")
    lines += ["", f"Reproduce: `.venv/bin/python bench/bench_ppr_refresh.py --root {args.root} --old-run "
              f"{args.old_run} --new-run {args.new_run} --tols '{args.tols}'{hop_args}`"]
    (RESULTS / f"{args.out}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def _top10(storage, new_ids, ref: str):
    """(source, neighbour) new-graph indices of every top-10 entry of a ppr_candidates run or saved manifest;
    -1 for a node not in the new graph."""
    import numpy as np
    import pyarrow.compute as pc

    manifest = json.loads(Path(ref).read_text()) if ref.endswith(".json") else storage.manifest("ppr_candidates", ref)
    table = storage.read_table("ppr_candidates", columns=["node_id", "neighbour_id", "rank"], manifest=manifest)
    table = table.filter(pc.less_equal(table.column("rank"), 10))
    return manifest, tuple(pc.fill_null(pc.index_in(table.column(c), value_set=new_ids), -1).to_numpy().astype(np.int64)
                           for c in ("node_id", "neighbour_id"))


def refreshed_agreement(args, settings, new) -> list[dict]:
    """Each published refresh's top-10 agreement with the full computation on the new graph."""
    import numpy as np
    import pyarrow as pa

    from g2i_core.storage import Storage

    storage = Storage(args.root, settings=settings)
    new_ids = pa.array(new.ids.tolist(), pa.string())
    _, (ref_src, ref_dst) = _top10(storage, new_ids, args.new_candidates)
    n = new.num_nodes + 1
    out = []
    for ref in args.refreshed.split(","):
        manifest, (src, dst) = _top10(storage, new_ids, ref)
        hit = np.isin(ref_src * n + ref_dst, src * n + dst).mean()
        info = manifest["extra"].get("incremental", {})
        out.append({"candidates": Path(ref).name, "attempt": manifest["attempt"], "rows": info.get("rows", "cold"),
                    "recomputed": info.get("recomputed", 0), "swept": info.get("swept", "all"),
                    "agreement": round(float(hit), 4), "incremental": info})
        print(f"[refresh] {ref}: {out[-1]}", flush=True)
    return out


def hop_agreement(args, settings, old, new, changed: list[str]) -> list[dict]:
    """Per hop count: sources recomputed, and the refreshed top-10's agreement with the full one."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    from g2i_core.ppr.incremental import sources_within_hops
    from g2i_core.storage import Storage

    storage = Storage(args.root, settings=settings)
    new_ids = pa.array(new.ids.tolist(), pa.string())

    _, (old_src, old_dst) = _top10(storage, new_ids, args.old_candidates)
    _, (new_src, new_dst) = _top10(storage, new_ids, args.new_candidates)
    n = new.num_nodes
    in_old = np.isin(new_src * (n + 1) + new_dst + 1, old_src * (n + 1) + old_dst + 1)
    agree = np.bincount(new_src, weights=in_old, minlength=n)  # per source: full top-10 entries kept from old
    total = np.bincount(new_src, minlength=n).astype(float)
    changed_at = pc.fill_null(pc.index_in(pa.array(changed, pa.string()), value_set=new_ids), -1).to_numpy()
    is_new = pc.invert(pc.is_in(new_ids, value_set=pa.array(old.ids.tolist(), pa.string()))).to_numpy(
        zero_copy_only=False)
    seeds = np.union1d(changed_at[changed_at >= 0], np.flatnonzero(is_new))
    out = []
    for hops in (int(x) for x in args.hops.split(",")):
        redo = sources_within_hops(new, seeds, hops)
        kept = ~redo & (total > 0)
        hit = total[redo].sum() + agree[kept].sum()  # recomputed sources agree by construction (cold sweeps)
        out.append({"hops": hops, "recomputed": int(redo.sum()), "fraction": round(float(redo.mean()), 4),
                    "agreement": round(float(hit / total.sum()), 4),
                    "kept_agreement": round(float(agree[kept].sum() / max(total[kept].sum(), 1)), 4)})
        print(f"[refresh] hops {hops}: {out[-1]}", flush=True)
    return out


if __name__ == "__main__":
    sys.exit(main())
