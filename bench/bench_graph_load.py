"""Edges table -> CSR graph: ids numbered with Arrow (graph_from_arrow) vs np.unique over Python strings
(build_graph), on the same table in the same run.

    .venv/bin/python bench/bench_graph_load.py                       # a synthetic 2.4M-node graph
    .venv/bin/python bench/bench_graph_load.py --quick             # 200,000 nodes
    .venv/bin/python bench/bench_graph_load.py --root s3://g2i/bench-scale/<run>/mmag/goodreads --run <graph run>

``--root`` reads a published build-graph commit (graph_edges + graph_nodes, as ``g2i ppr`` does); the
synthetic graph is ``powerlaw_graph`` with Goodreads-like ids. Both paths must give the same graph (checked).
Reading from storage is timed apart and is the same for both. Writes bench/results/graph_load.{md,json}
(graph_load_published with --root, graph_load_quick with --quick).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _timed(fn):
    wall, cpu = time.monotonic(), _cpu()
    out = fn()
    return out, round(time.monotonic() - wall, 2), round(_cpu() - cpu, 2)


def _synthetic(nodes: int):
    import pyarrow as pa

    from g2i_core.ppr.graph import powerlaw_graph

    g = powerlaw_graph(nodes, seed=0)
    ids = np.array([f"goodreads:{i * 7919 % 10**9}" for i in range(nodes)], dtype=object)  # unsorted, as real ids
    src_idx = np.repeat(np.arange(g.num_nodes), g.out_degree)
    edges = pa.table({"src": pa.array(ids[src_idx].tolist(), pa.string()),
                      "dst": pa.array(ids[g.indices].tolist(), pa.string()),
                      "weight": pa.array(np.ones(g.num_edges))})
    return edges, ids[g.out_degree == 0].tolist()[:1000]


def _published(root: str, run: str | None):
    from g2i_core.config import Settings
    from g2i_core.ppr.io import open_storage

    storage = open_storage(root, Settings.load()).pinned(run)
    commit = storage.read_commit("graph_nodes")
    edges = storage.read_table("graph_edges", manifest=commit["graph_edges"])
    extra = storage.read_table("graph_nodes", columns=["node_id"], manifest=commit["graph_nodes"]) \
        .column("node_id").to_pylist()
    return edges, extra


def main(argv: list[str] | None = None) -> int:
    from g2i_core.ppr.graph import build_graph, graph_from_arrow

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=2_400_000, help="synthetic graph size (without --root)")
    parser.add_argument("--root", default=None, help="a graph root with a published build-graph commit")
    parser.add_argument("--run", default=None, help="its graph run id (default: the live one)")
    parser.add_argument("--quick", action="store_true", help="a 200,000-node synthetic graph")
    parser.add_argument("--out", default=None, help="results name (default graph_load[_quick])")
    args = parser.parse_args(argv)
    if args.quick:
        args.nodes = 200_000
    args.out = args.out or ("graph_load_published" if args.root else "graph_load_quick" if args.quick
                            else "graph_load")

    (edges, extra), read_s, _ = _timed(lambda: _published(args.root, args.run) if args.root
                                       else _synthetic(args.nodes))
    print(f"[graph-load] edges: {edges.num_rows:,} rows, {len(extra):,} node ids, read/made in {read_s}s", flush=True)

    def numpy_path():  # what graph_from_arrow did before: Python lists -> np.unique over objects
        src = np.asarray(edges.column("src").to_pylist(), dtype=object)
        dst = np.asarray(edges.column("dst").to_pylist(), dtype=object)
        w = np.asarray(edges.column("weight").to_numpy(), dtype=np.float64)
        return build_graph(src, dst, w, extra_nodes=extra)

    arrow, arrow_s, arrow_cpu = _timed(lambda: graph_from_arrow(edges, extra_nodes=extra))
    print(f"[graph-load] arrow: {arrow_s}s", flush=True)
    ref, numpy_s, numpy_cpu = _timed(numpy_path)
    print(f"[graph-load] numpy: {numpy_s}s", flush=True)
    same = (arrow.ids.tolist() == ref.ids.tolist() and np.array_equal(arrow.indptr, ref.indptr)
            and np.array_equal(arrow.indices, ref.indices) and np.allclose(arrow.probs, ref.probs, rtol=1e-12))
    source = f"published commit under {args.root}" + (f" (run {args.run})" if args.run else "") if args.root \
        else f"synthetic powerlaw_graph({args.nodes:,})"
    command = "python bench/bench_graph_load.py" + (f" --root {args.root}" if args.root else "") \
        + (f" --run {args.run}" if args.run else "") + ("" if args.root or args.nodes == 2_400_000
                                                           else f" --nodes {args.nodes}")
    report = {"benchmark": "graph_load", "source": source, "nodes": arrow.num_nodes, "edges": arrow.num_edges,
              "read_s": read_s, "arrow_s": arrow_s, "arrow_cpu_s": arrow_cpu, "numpy_s": numpy_s,
              "numpy_cpu_s": numpy_cpu, "ratio": round(arrow_s / numpy_s, 3) if numpy_s else None,
              "same_graph": same, "load_avg_1m": round(os.getloadavg()[0], 2), "cpus": os.cpu_count(),
              "command": command}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(report, indent=2))
    md = (f"# Edges table -> CSR graph\n\n{source}: {arrow.num_nodes:,} nodes, {arrow.num_edges:,} edges; "
          f"{os.cpu_count()} CPUs, 1-min load {report['load_avg_1m']} at the end; one run. Reading the table "
          f"({read_s} s) is the same for both and not included.\n\n"
          "| path | wall s | CPU s |\n|---|---:|---:|\n"
          f"| graph_from_arrow (Arrow hash + sort) | {arrow_s} | {arrow_cpu} |\n"
          f"| build_graph (np.unique over Python strings, the earlier path) | {numpy_s} | {numpy_cpu} |\n\n"
          f"Ratio arrow/numpy: **{report['ratio']}×**; same graph: {same}.\n\nReproduce: `{command}`\n")
    (RESULTS / f"{args.out}.md").write_text(md)
    print(md)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
