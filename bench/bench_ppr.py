"""PPR candidates: speed, memory and precision@10 of every method on synthetic power-law graphs.

    .venv/bin/python bench/bench_ppr.py            # 10k, 100k, 1M nodes (~10 edges/node)
    .venv/bin/python bench/bench_ppr.py --quick    # 10k nodes only, < 2-3 min

For each size: 200 sampled sources; precision@10 (tie-aware, see candidates.precision_at_k) against a
reference: exact power iteration (tol 1e-9) at 10k nodes; at 100k and 1M exact iteration is too slow
here, so the reference is forward push at eps=1e-8 (1e-7 at 1M; a lower bound whose top-10 matches exact at 10k,
recorded as ``reference_check``). Contenders on the same sources:

* ``push`` (ours, numba, top-K kept) at several eps; ``get_ppr`` = torch_geometric.utils.get_ppr at
  the same eps (returns every non-zero entry; top-10 taken afterwards; eps < 1e-5 only at 10k);
* ``spark-push`` (ours on Spark local[2]) and ``graphframes`` (GraphX parallel PPR through the g2i
  bridge, 20 iterations; fewer sources because it is slow) — Spark start-up excluded;
* all-node top-50 with ``propagate`` (ours: top-K' row propagation + a short push per source),
  measured at every size; p@10 on the same 200 sources taken from the all-node output. ``push``
  all-node is measured at 10k and extrapolated from its per-source cost elsewhere (``extrapolated``).

Peak memory: RSS above the pre-call baseline, sampled every 5 ms (numba allocates outside Python).
CPU seconds are process CPU time: on a shared machine they are steadier than wall time.
Writes bench/results/ppr[_quick].json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"
ALPHA = 0.15


class PeakRss:
    """Context manager: peak RSS above the starting RSS, in MiB, sampled every 5 ms."""

    def __enter__(self):
        import psutil

        self.proc = psutil.Process()
        self.base = self.peak = self.proc.memory_info().rss
        self.stop = False
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()
        self.t0, self.c0 = time.perf_counter(), time.process_time()
        return self

    def _poll(self):
        while not self.stop:
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.005)

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.t0, time.process_time() - self.c0
        self.stop = True
        self.thread.join()
        self.mib = (self.peak - self.base) / 2**20


def get_ppr_top(graph, sources, eps, k):
    """torch_geometric get_ppr on the same graph, top-k per source from its full sparse output."""
    import torch
    from torch_geometric.utils import get_ppr

    from g2i_core.ppr.candidates import Candidates

    src_idx = np.repeat(np.arange(graph.num_nodes), graph.out_degree)
    edge_index = torch.from_numpy(np.stack([src_idx, graph.indices]))
    (rows, cols), vals = get_ppr(edge_index, alpha=ALPHA, eps=eps, target=torch.from_numpy(sources),
                                 num_nodes=graph.num_nodes)
    rows, cols, vals = rows.numpy(), cols.numpy(), vals.numpy()
    rows = np.searchsorted(sources, rows)  # get_ppr names the source node itself; sources are sorted
    nbrs = np.full((len(sources), k), -1, np.int64)
    scores = np.zeros((len(sources), k))
    order = np.lexsort((cols, -vals, rows))
    rows, cols, vals = rows[order], cols[order], vals[order]
    starts = np.searchsorted(rows, np.arange(len(sources)))
    ends = np.searchsorted(rows, np.arange(len(sources)), side="right")
    for i, (a, b) in enumerate(zip(starts, ends, strict=False)):
        sel = [(c, v) for c, v in zip(cols[a:b], vals[a:b], strict=False) if c != sources[i]][:k]
        for j, (c, v) in enumerate(sel):
            nbrs[i, j], scores[i, j] = c, v
    return Candidates(sources, nbrs, scores), int(len(vals))


def bench_size(n, args, spark, storage):
    from g2i_core.ppr.candidates import precision_at_k
    from g2i_core.ppr.exact import ppr_rows
    from g2i_core.ppr.graph import powerlaw_graph
    from g2i_core.ppr.push import push_candidates

    out = {"nodes": n}
    t = time.perf_counter()
    graph = powerlaw_graph(n, 10.0, seed=0)
    out.update(edges=graph.num_edges, dangling=int((graph.out_degree == 0).sum()),
               generate_s=round(time.perf_counter() - t, 1))
    sources = np.sort(np.random.default_rng(1).choice(n, args.sources, replace=False)).astype(np.int64)
    # reference vectors
    with PeakRss() as m:
        if n <= 20_000:
            ref = ppr_rows(graph, sources, ALPHA, tol=1e-9)
            out["reference"] = "exact power iteration, tol 1e-9"
            check = push_candidates(graph, sources, top_k=10, eps=1e-8)
            out["reference_check"] = {"push_1e-8_p@10_vs_exact": precision_at_k(check, ref, 10)}
        else:
            ref_eps = 1e-8 if n <= 200_000 else 1e-7  # 1e-8 on 1M nodes costs ~a full solve per source
            ref_c = push_candidates(graph, sources, top_k=200, eps=ref_eps)
            ref = np.zeros((len(sources), n))
            for i in range(len(sources)):
                ok = ref_c.neighbours[i] >= 0
                ref[i, ref_c.neighbours[i, ok]] = ref_c.scores[i, ok]
            out["reference"] = f"push eps {ref_eps:g} (top-200 kept)"
    out["reference_s"] = round(m.wall, 1)
    print(f"[{n}] reference {out['reference']} in {m.wall:.1f}s", flush=True)
    rows = []

    def record(method, knob, cand, meas, nsrc, extra=None):
        rows.append({"method": method, "knob": knob, "sources": nsrc,
                     "ms_per_source": round(1000 * meas.wall / nsrc, 3),
                     "cpu_ms_per_source": round(1000 * meas.cpu / nsrc, 3),
                     "peak_mib": round(meas.mib, 1), "p@10": round(precision_at_k(cand, ref[: nsrc], 10), 4),
                     **(extra or {})})
        print(f"[{n}] {rows[-1]}", flush=True)

    for eps in ([] if args.only_all_node else args.eps):
        with PeakRss() as m:
            cand = push_candidates(graph, sources, top_k=50, eps=eps)
        record("push", f"eps={eps:g}", cand, m, len(sources))
        if eps < args.get_ppr_min_eps and n > 10_000:
            continue  # minutes per size on this machine; the 10k row shows the trend
        with PeakRss() as m:
            cand, nnz = get_ppr_top(graph, sources, eps, 50)
        record("get_ppr", f"eps={eps:g}", cand, m, len(sources), {"entries_returned": nnz})
    if spark is not None and not args.only_all_node:
        bench_spark(graph, sources, ref, spark, storage, record, n, args)
    out["methods"] = rows
    # all-node top-50 with propagate: always measured
    from g2i_core.ppr.api import PprConfig
    from g2i_core.ppr.propagate import propagate_candidates

    pc = PprConfig(method="propagate", row_k=args.row_k, sweeps=args.sweeps, refine_eps=args.refine_eps)
    with PeakRss() as m:
        allc = propagate_candidates(graph, None, top_k=50, row_k=pc.row_k, sweeps=pc.sweeps, refine_eps=pc.refine_eps)
    sub = type(allc)(sources, allc.neighbours[sources], allc.scores[sources])
    knob = f"row_k={pc.row_k} sweeps={pc.sweeps} refine_eps={pc.refine_eps:g}"
    record("propagate (all nodes)", knob, sub, m, n)
    out["all_node_propagate"] = {"knob": knob, "seconds": round(m.wall, 1), "cpu_s": round(m.cpu, 1),
                                 "peak_mib": round(m.mib, 1), "p@10": rows[-1]["p@10"], "measured": True}
    print(f"[{n}] all-node propagate {out['all_node_propagate']}", flush=True)
    del allc, sub
    # all-node top-50 with push: measured at the smallest size, extrapolated elsewhere
    eps_all = args.all_node_eps
    if n <= args.all_node_max:
        with PeakRss() as m:
            push_candidates(graph, None, top_k=50, eps=eps_all)
        out["all_node"] = {"eps": eps_all, "seconds": round(m.wall, 1), "cpu_s": round(m.cpu, 1),
                           "peak_mib": round(m.mib, 1), "measured": True}
    else:
        per = next((r for r in rows if r["method"] == "push" and r["knob"] == f"eps={eps_all:g}"), None)
        out["all_node"] = {"eps": eps_all, "seconds": round(per["ms_per_source"] * n / 1000, 1) if per else None,
                           "measured": False, "extrapolated": "ms_per_source x nodes"}
    print(f"[{n}] all-node {out['all_node']}", flush=True)
    return out


def bench_spark(graph, sources, ref, spark, storage, record, n, args):
    from g2i_core.ppr.api import PprConfig
    from g2i_core.ppr.graph import edges_table
    from g2i_core.ppr.spark_ppr import candidates_from_rows, spark_candidates

    storage.publish_table("bench_edges", edges_table(graph), f"n{n}")
    edges = spark.read.parquet(*[storage.spark_uri(u) for u in storage.published_files("bench_edges")])
    runs = [("spark-push", PprConfig(method="spark-push", top_k=50, eps=args.spark_eps), sources)]
    if n <= args.graphframes_max:
        runs.append(("graphframes", PprConfig(method="graphframes", top_k=50, iterations=20,
                                              batch_size=args.graphframes_sources),
                     sources[: args.graphframes_sources if n <= 10_000 else 10]))
    for method, config, srcs in runs:
        src_df = spark.createDataFrame([(graph.ids[s],) for s in srcs], "node_id string")
        with PeakRss() as m:
            res = spark_candidates(spark, edges, config, storage.child("staging", method), sources=src_df).collect()
        cand = candidates_from_rows(graph, [tuple(r) for r in res], 50, srcs)
        knob = f"eps={config.eps:g}" if method == "spark-push" else "20 iterations"
        record(method, knob, cand, m, len(srcs), {"includes": "index + stage + job (no JVM start)"})


def spark_propagate_run(spark, storage, graph, sources, args, tag):
    """All-node top-50 with spark-propagate, output written as Parquet (as the pipeline does); returns the
    seconds (Spark start-up excluded) and the candidates of ``sources`` read back from the output."""
    import pyarrow.parquet as pq

    from g2i_core.ppr.api import PprConfig
    from g2i_core.ppr.candidates import Candidates
    from g2i_core.ppr.spark_ppr import spark_candidates

    config = PprConfig(method="spark-propagate", top_k=50, row_k=args.row_k, sweeps=args.sweeps,
                       refine_eps=args.refine_eps, partitions=args.blocks)
    edges = spark.read.parquet(*[storage.spark_uri(u) for u in storage.published_files("bench_edges")])
    out = storage.uri("spark_propagate_out", tag)
    t = time.perf_counter()
    spark_candidates(spark, edges, config, storage.child("staging", tag)).write.parquet(storage.spark_uri(out))
    seconds = time.perf_counter() - t
    wanted = set(graph.ids[sources].tolist())
    table = pq.read_table(out[len("file://"):], filters=[("node_id", "in", wanted)])
    nbrs = np.full((len(sources), 50), -1, np.int64)
    scores = np.zeros((len(sources), 50))
    pos = {s: i for i, s in enumerate(sources.tolist())}
    src = graph.index_of(table.column("node_id").to_pylist())
    dst = graph.index_of(table.column("neighbour_id").to_pylist())
    for s, r, d, v in zip(src, table.column("rank").to_pylist(), dst, table.column("ppr_score").to_pylist(),
                          strict=True):
        nbrs[pos[int(s)], r - 1], scores[pos[int(s)], r - 1] = d, v
    storage.delete_prefix(storage.uri("staging", tag))
    storage.delete_prefix(out)
    return seconds, Candidates(sources, nbrs, scores)


def bench_spark_propagate(args) -> int:
    """propagate vs spark-propagate (local[2]) on all nodes, then spark-propagate on 1 and 2 executors
    (local-cluster); one size after the other, results rewritten after every measurement."""
    import tempfile

    from g2i_core.config import Settings
    from g2i_core.ppr.candidates import Candidates, precision_at_k
    from g2i_core.ppr.graph import edges_table, powerlaw_graph
    from g2i_core.ppr.propagate import propagate_candidates
    from g2i_core.ppr.push import push_candidates
    from g2i_core.spark import get_spark
    from g2i_core.storage import Storage

    tmp = tempfile.mkdtemp(prefix="g2i-bench-spp-")
    settings = Settings.load(storage_root=f"file://{tmp}", s3_endpoint="")
    storage = Storage(f"file://{tmp}", settings=settings)
    result = {"command": "python " + " ".join(sys.argv), "sizes": [],
              "machine": f"{os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}",
              "knob": f"row_k={args.row_k} sweeps={args.sweeps} refine_eps={args.refine_eps:g} top_k=50"}

    def save():
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / f"{args.results_name}.json").write_text(json.dumps(result, indent=2))
        (RESULTS / f"{args.results_name}.md").write_text(spark_propagate_markdown(result))

    push_candidates(powerlaw_graph(200, seed=0), top_k=5)  # numba caches warm
    for n in args.sizes:
        graph = powerlaw_graph(n, 10.0, seed=0)
        sources = np.sort(np.random.default_rng(1).choice(n, args.sources, replace=False)).astype(np.int64)
        ref_eps = 1e-8 if n <= 200_000 else 1e-7  # as the per-source table: push at a tiny eps
        ref_c = push_candidates(graph, sources, top_k=200, eps=ref_eps)
        ref = np.zeros((len(sources), n))
        for i in range(len(sources)):
            ok = ref_c.neighbours[i] >= 0
            ref[i, ref_c.neighbours[i, ok]] = ref_c.scores[i, ok]
        size = {"nodes": n, "edges": graph.num_edges, "reference": f"push eps {ref_eps:g} (top-200 kept)", "runs": []}
        result["sizes"].append(size)
        storage.publish_table("bench_edges", edges_table(graph), f"n{n}")

        def record(method, master, seconds, cand, extra=None, size=size, ref=ref, n=n):
            size["runs"].append({"method": method, "master": master, "seconds": round(seconds, 1),
                                 "p@10": round(precision_at_k(cand, ref, 10), 4),
                                 "load_avg_1m": round(os.getloadavg()[0], 1), **(extra or {})})
            print(f"[{n}] {size['runs'][-1]}", flush=True)
            save()

        if not args.no_propagate:
            with PeakRss() as m:
                allc = propagate_candidates(graph, None, top_k=50, row_k=args.row_k, sweeps=args.sweeps,
                                            refine_eps=args.refine_eps)
            record("propagate", "one process, 2 numba threads", m.wall,
                   Candidates(sources, allc.neighbours[sources], allc.scores[sources]), {"peak_mib": round(m.mib, 1)})
            del allc
        for master in args.masters:
            spark = get_spark(settings.replace(spark_master=master, spark_driver_memory="4g",
                                               spark_executor_memory=args.executor_memory), "g2i-bench-spp")
            try:
                seconds, cand = spark_propagate_run(spark, storage, graph, sources, args, f"n{n}")
            finally:
                spark.stop()
            record("spark-propagate", master, seconds, cand, {"includes": "index + stage + sweeps + refine + write"})
    print(spark_propagate_markdown(result))
    return 0


def spark_propagate_markdown(result) -> str:
    lines = ["# propagate vs spark-propagate (all-node top-50)", "",
             f"Machine: {result['machine']}. Command: `{result['command']}`. Knobs: {result['knob']}.", "",
             "Spark times exclude the Spark start-up and include indexing, staging, sweeps, refinement and "
             "writing the output Parquet; p@10 on 200 sampled sources against the reference. The machine was "
             "shared: `load` is the 1-minute load average when the run ended (2 cores).", "",
             "| nodes | edges | method | master | seconds (wall) | vs propagate | p@10 | load |",
             "|---:|---:|---|---|---:|---:|---:|---:|"]
    for s in result["sizes"]:
        base = next((r["seconds"] for r in s["runs"] if r["method"] == "propagate"), None)
        for r in s["runs"]:
            ratio = f"{r['seconds'] / base:.2f}x" if base else ""
            lines.append(f"| {s['nodes']:,} | {s['edges']:,} | {r['method']} | {r['master']} | {r['seconds']} | "
                         f"{ratio} | {r['p@10']} | {r['load_avg_1m']} |")
    lines += ["", "References: " + "; ".join(f"{s['nodes']:,}: {s['reference']}" for s in result["sizes"])]
    return "\n".join(lines) + "\n"


def to_markdown(result) -> str:
    kind = "quick" if result["quick"] else ("all-node only" if result.get("only_all_node") else "full")
    lines = [f"# PPR benchmark ({kind})", "",
             f"Machine: {result['machine']}. Command: `{result['command']}`.", "",
             "| nodes | edges | method | knob | sources | ms/source (wall) | CPU ms/source | peak MiB | p@10 |",
             "|---:|---:|---|---|---:|---:|---:|---:|---:|"]
    for s in result["sizes"]:
        for r in s["methods"]:
            lines.append(f"| {s['nodes']:,} | {s['edges']:,} | {r['method']} | {r['knob']} | {r['sources']} | "
                         f"{r['ms_per_source']} | {r['cpu_ms_per_source']} | {r['peak_mib']} | {r['p@10']} |")
    lines += ["", "| nodes | all-node top-50 | knob | seconds (wall) | CPU s | peak MiB | p@10 | measured |",
              "|---:|---|---|---:|---:|---:|---:|---|"]
    for s in result["sizes"]:
        a = s["all_node_propagate"]
        lines.append(f"| {s['nodes']:,} | propagate | {a['knob']} | {a['seconds']} | {a['cpu_s']} | {a['peak_mib']} | "
                     f"{a['p@10']} | yes |")
        a = s["all_node"]
        if a["seconds"] is None:  # --only-all-node: no per-source push row to extrapolate from
            continue
        lines.append(f"| {s['nodes']:,} | push | eps={a['eps']:g} | {a['seconds']} | {a.get('cpu_s', '')} | "
                     f"{a.get('peak_mib', '')} | | {'yes' if a['measured'] else 'extrapolated'} |")
    lines += ["", "References: " + "; ".join(f"{s['nodes']:,}: {s['reference']} ({s['reference_s']} s)"
                                             + (f", check {s['reference_check']}" if 'reference_check' in s else "")
                                             for s in result["sizes"])]
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--sizes", default=None, help="comma list of node counts (default 10000,100000,1000000)")
    p.add_argument("--no-spark", action="store_true")
    p.add_argument("--only-all-node", action="store_true", help="skip the per-source methods (reference + propagate)")
    p.add_argument("--row-k", type=int, default=None, help="propagate: K' (default: PprConfig's)")
    p.add_argument("--sweeps", type=int, default=None, help="propagate: sweeps (default: PprConfig's)")
    p.add_argument("--refine-eps", type=float, default=None, help="propagate: refine eps (default: PprConfig's)")
    p.add_argument("--spark-propagate", action="store_true",
                   help="all nodes: propagate vs spark-propagate on each --masters entry (ppr_spark_propagate.md)")
    p.add_argument("--masters", default="local[2],local-cluster[1,1,3072],local-cluster[2,1,3072]",
                   help="--spark-propagate: Spark masters to run on, in order (';'-separated)")
    p.add_argument("--no-propagate", action="store_true",
                   help="--spark-propagate: skip the propagate baseline (e.g. an executor-scaling run)")
    p.add_argument("--blocks", type=int, default=0, help="spark-propagate: node blocks (0: default parallelism)")
    p.add_argument("--executor-memory", default="3g", help="spark-propagate on local-cluster: executor memory")
    p.add_argument("--route-counts", type=int, default=0, metavar="N",
                   help="print spark-propagate's routed rows per node on the N-node graph for several block counts")
    p.add_argument("--results-name", default="ppr_spark_propagate", help="--spark-propagate: results file name")
    args = p.parse_args()
    args.masters = [m for m in args.masters.replace(";", ",").split(",") if m]
    args.masters = _rejoin_masters(args.masters)
    args.sizes = [int(x) for x in (args.sizes or ("10000" if args.quick else "10000,100000,1000000")).split(",")]
    from g2i_core.ppr.api import PprConfig

    defaults = PprConfig()
    args.row_k = args.row_k or defaults.row_k
    args.sweeps = defaults.sweeps if args.sweeps is None else args.sweeps
    args.refine_eps = args.refine_eps or defaults.refine_eps
    args.sources = 200
    args.eps = [1e-4, 1e-5] if args.quick else [1e-4, 1e-5, 1e-6]
    args.spark_eps = 1e-5
    args.all_node_eps = 1e-5
    args.all_node_max = 0 if args.quick else 10_000
    args.graphframes_max = 100_000
    args.graphframes_sources = 10 if args.quick else 20
    args.get_ppr_min_eps = 1e-5
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.route_counts:
        print(json.dumps(route_counts(args.route_counts)))
        return 0
    if args.spark_propagate:
        args.sources = 200
        return bench_spark_propagate(args)
    # warm the numba caches so compile time is not charged to the first measurement
    from g2i_core.ppr.graph import powerlaw_graph
    from g2i_core.ppr.push import push_candidates

    g = powerlaw_graph(200, seed=0)
    push_candidates(g, top_k=5)
    get_ppr_top(g, np.arange(5), 1e-4, 5)
    spark = storage = None
    if not args.no_spark:
        import tempfile

        from g2i_core.config import Settings
        from g2i_core.spark import get_spark
        from g2i_core.storage import Storage

        tmp = tempfile.mkdtemp(prefix="g2i-bench-ppr-")
        settings = Settings.load(storage_root=f"file://{tmp}", s3_endpoint="")
        spark = get_spark(settings.replace(spark_driver_memory="4g"), "g2i-bench-ppr")
        storage = Storage(f"file://{tmp}", settings=settings)
    result = {"quick": args.quick, "only_all_node": args.only_all_node, "command": "python " + " ".join(sys.argv),
              "machine": f"{os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}",
              "sizes": [bench_size(n, args, spark, storage) for n in args.sizes]}
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "ppr_quick" if args.quick else ("ppr_all_node" if args.only_all_node else "ppr")
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2))
    (RESULTS / f"{name}.md").write_text(to_markdown(result))
    print(to_markdown(result))
    return 0


def route_counts(n: int) -> dict:
    """spark-propagate's routed row copies R (block t reads node v of another block) on the benchmark
    graph for several block counts: the shuffle of a sweep is (n + R) rows."""
    from g2i_core.ppr.graph import powerlaw_graph

    graph = powerlaw_graph(n, 10.0, seed=0)
    s, d = np.repeat(np.arange(n), graph.out_degree), graph.indices
    out = {"nodes": n, "edges": graph.num_edges}
    for blocks in (2, 4, 8, 16, 64, 256):
        block = -(-n // blocks)
        foreign = s // block != d // block
        out[f"R/n at {blocks} blocks"] = round(len(np.unique(d[foreign] * blocks + s[foreign] // block)) / n, 2)
    return out


def _rejoin_masters(parts: list[str]) -> list[str]:
    """Undo the comma split inside brackets: local-cluster[1,1,3072] is one master."""
    out: list[str] = []
    for part in parts:
        if out and out[-1].count("[") > out[-1].count("]"):
            out[-1] += "," + part
        else:
            out.append(part)
    return out


if __name__ == "__main__":
    sys.exit(main())
