"""build-graph: the whole stage on Spark vs the local engine, or its connected components (GraphX vs scipy on
the driver), or the vertex index (JVM vs Python RDD).

    .venv/bin/python bench/bench_build_graph.py --compare engine --root s3://.../mmag/goodreads --run-id RUN
    .venv/bin/python bench/bench_build_graph.py [--nodes 200000] [--degree 10]            # --compare cc
    .venv/bin/python bench/bench_build_graph.py --compare index                           # the index

``--compare engine``: `g2i build-graph` as the DAG runs it (`stage_argv`), with ``--engine spark`` and then
``--engine local``, on the published ingest commit ``--run-id`` under ``--root``; each writes to its own
scratch root beside it (``<root>-bench-build-graph/<engine>``), so the dataset's graph is not touched.
Wall, CPU and peak RSS of each process tree, and whether both wrote the same graph
(bench/results/build_graph_engine.{json,md}).

One Spark session (local[2]), one synthetic power-law-ish graph with string ids, both contenders in the
same run, interleaved over ``--rounds`` (best kept); each is timed on the full ``connected_components``
call (index + CC + the joins back to string ids, collected) and checked to give identical components.
``--compare cc``: ``method="graphx"`` vs ``method="local"`` (bench/results/build_graph_cc.{json,md});
``--compare index``: the JVM vertex index vs the old Python-RDD one (bench/results/build_graph.{json,md}).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"


def python_rdd_index(vertices, id_col: str = "id"):
    """The previous implementation (kept here only as the contender): zipWithIndex through Python."""
    from pyspark.sql import functions as F

    ids = vertices.select(F.col(id_col).alias("id")).distinct()
    rdd = ids.orderBy("id").rdd.zipWithIndex().map(lambda t: (t[0][0], t[1]))
    return ids.sparkSession.createDataFrame(rdd, "id string, vid long")


def synthetic_edges(n: int, degree: int, seed: int = 0) -> tuple[list[str], np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    src = rng.integers(0, n, n * degree)
    dst = np.minimum((rng.pareto(1.2, n * degree) * n / 50).astype(np.int64), n - 1)  # heavy-tailed in-degree
    ids = [f"b{i:09d}" for i in range(n)]
    return ids, src, dst


GRAPH_COLUMNS = ["node_id", "in_degree", "out_degree", "component", "component_size", "split", "image_status"]


def compare_engines(root: str, run_id: str, rounds: int) -> None:
    """Both engines of the whole stage on the same published input, one after the other."""
    import pyarrow.compute as pc

    from bench.bench_scale import run_measured, stage_env
    from g2i_core.config import Settings
    from g2i_core.graph.local import local_build_memory_bytes, uncompressed_bytes
    from g2i_core.orchestration.stages import stage_argv
    from g2i_core.storage import Storage

    env = stage_env(root)
    os.environ.update({k: env[k] for k in ("G2I_SPARK_DRIVER_MEMORY", "G2I_SPARK_SHUFFLE_PARTITIONS")})
    settings = Settings.load()  # with the bench's Spark sizes: spark-submit gets them from the settings
    log_path = RESULTS / "build_graph_engine.log"
    log_path.write_text("")
    storage = Storage.from_settings(settings, root=root)
    commit = storage.read_commit("nodes", run_id)
    rows, outs = [], {}
    for _ in range(rounds):
        for engine in ("spark", "local"):
            outs[engine] = Storage.from_settings(settings, root=f"{root}-bench-build-graph/{engine}")
            argv = stage_argv("build-graph", {"graph_root": root, "run_id": run_id}, settings) + [
                "--engine", engine, "--out", outs[engine].root]
            row = run_measured(engine, argv, env, log_path)
            stats = outs[engine].manifest("graph_nodes", run_id)["extra"]["stats"]
            row.update(engine=stats["engine"], nodes=stats["nodes"], edges=stats["edges"])
            rows.append(row)
    tables = {e: out.read_table("graph_nodes", run_id, columns=GRAPH_COLUMNS) for e, out in outs.items()}
    tables = {e: t.take(pc.sort_indices(t["node_id"])) for e, t in tables.items()}
    same = tables["spark"].equals(tables["local"])
    edges = {e: out.manifest("graph_edges", run_id)["rows"] for e, out in outs.items()}
    best = {e: min((r for r in rows if r["stage"] == e), key=lambda r: r["wall_s"]) for e in ("spark", "local")}
    model = local_build_memory_bytes(uncompressed_bytes(storage, commit["nodes"]), commit["nodes"]["rows"],
                                     commit["edges"]["rows"])
    result = {"root": root, "run_id": run_id, "runs": rows, "identical_graph_nodes": same, "edges_rows": edges,
              "spark_over_local": round(best["spark"]["wall_s"] / best["local"]["wall_s"], 2),
              "local_memory_model_mb": round(model / 2**20)}
    (RESULTS / "build_graph_engine.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = ["# build-graph: Spark job vs the local engine, the whole stage\n",
             f"`.venv/bin/python bench/bench_build_graph.py --compare engine --root {root} --run-id {run_id}`"
             f" (2 CPUs; load average at the end {rows[-1]['load_avg']}). Each is `g2i build-graph` as the DAG runs "
             "it (`stage_argv`, local[2]), on the same published ingest commit, writing to its own scratch root.\n",
             "| engine | wall s | CPU s | peak RSS MiB | nodes | edges |", "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['engine']} | {r['wall_s']} | {r['cpu_s']} | {r['peak_rss_mb']} | {r['nodes']:,} | {r['edges']:,} |"
              for r in rows]
    lines += ["", f"Spark's time over the local engine's: **{result['spark_over_local']}×**. Same graph_nodes "
              f"({', '.join(GRAPH_COLUMNS)}, every row): {same}; graph_edges rows {edges}. The local engine's "
              f"memory model (`local_build_memory_bytes`): {result['local_memory_model_mb']:,} MiB."]
    (RESULTS / "build_graph_engine.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=200_000)
    ap.add_argument("--degree", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--compare", choices=("cc", "index", "engine"), default="cc")
    ap.add_argument("--root", help="--compare engine: a dataset's storage root with a published ingest commit")
    ap.add_argument("--run-id", help="--compare engine: the ingest run to build from")
    args = ap.parse_args()
    if args.compare == "engine":
        if not (args.root and args.run_id):
            ap.error("--compare engine needs --root and --run-id")
        compare_engines(args.root, args.run_id, rounds=1 if args.rounds == 2 else args.rounds)
        return
    import pyarrow as pa
    import pyarrow.parquet as pq

    from g2i_core.graph import engine
    from g2i_core.spark import get_spark

    spark = get_spark(app_name="bench-build-graph")
    ids, src, dst = synthetic_edges(args.nodes, args.degree)
    work = ROOT / ".local" / "bench_build_graph"
    work.mkdir(parents=True, exist_ok=True)
    names = np.array(ids, dtype=object)
    pq.write_table(pa.table({"src": names[src], "dst": names[dst]}), work / "edges.parquet")
    pq.write_table(pa.table({"id": names}), work / "nodes.parquet")
    edges = spark.read.parquet(str(work / "edges.parquet"))
    nodes = spark.read.parquet(str(work / "nodes.parquet"))
    answers = {}
    if args.compare == "cc":  # (name, index function, CC method): the first is the baseline
        contenders = (("graphx", engine.index_vertices, "graphx"), ("local", engine.index_vertices, "local"))
    else:
        contenders = (("jvm_index", engine.index_vertices, "graphx"),
                      ("python_rdd_index", python_rdd_index, "graphx"))
    best: dict[str, dict] = {}
    for name, index_fn, method in contenders * args.rounds:  # interleaved; best of the rounds (warm-up, load drift)
        original, engine.index_vertices = engine.index_vertices, index_fn
        try:
            t0, c0 = time.perf_counter(), time.process_time()
            comps = engine.connected_components(spark, nodes, edges, method=method)
            out = comps.toPandas()
            wall = time.perf_counter() - t0
        finally:
            engine.index_vertices = original
        answers[name] = dict(zip(out["id"], out["component"], strict=True))
        row = {"contender": name, "seconds": round(wall, 2), "components": int(out["component"].nunique()),
               "driver_cpu_s": round(time.process_time() - c0, 2)}
        print(row, flush=True)
        if name not in best or row["seconds"] < best[name]["seconds"]:
            best[name] = row
    rows = [best[name] for name, _, _ in contenders]
    first, second = (name for name, _, _ in contenders)
    same = answers[first] == answers[second]
    ratio = rows[1]["seconds"] / rows[0]["seconds"] if args.compare == "index" else \
        rows[0]["seconds"] / rows[1]["seconds"]
    result = {"nodes": args.nodes, "edges": int(len(src)), "rows": rows, "identical_components": same,
              "speedup": round(ratio, 2), "load_avg": [round(x, 2) for x in os.getloadavg()]}
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "build_graph" if args.compare == "index" else "build_graph_cc"
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    title = "vertex index" if args.compare == "index" else "GraphX vs scipy on the driver"
    lines = [f"# build-graph connected components: {title}\n",
             f"{args.nodes:,} nodes, {len(src):,} edges, Spark local[2], 2 CPUs; 1-min load average at the end "
             f"{result['load_avg'][0]} (shared machine). Same components from both: {same}.\n",
             "| contender | seconds | components |", "|---|---:|---:|"]
    lines += [f"| {r['contender']} | {r['seconds']} | {r['components']:,} |" for r in rows]
    lines += ["", f"Time of the Python-RDD index over the JVM index: {ratio:.2f} (above 1: the JVM one is faster)."
              if args.compare == "index" else f"Time of GraphX over local (scipy): {ratio:.2f}.", "",
              f"Reproduce: `.venv/bin/python bench/bench_build_graph.py --nodes {args.nodes} --compare {args.compare}`"]
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
