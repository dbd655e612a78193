"""The Spark stages (ingest, build-graph) launched as the DAG does with a local master: a plain `g2i` subprocess
that starts Spark only when its engine needs it, against the spark-submit launch the DAG used before.

    .venv/bin/python bench/bench_stage_launch.py                  # 20,000 books, 3 interleaved rounds
    .venv/bin/python bench/bench_stage_launch.py --nodes 200000 --rounds 3

Both launches run the same stage with the same arguments and the default engine (``auto``: local for a dump
that fits), on the local S3 server, in one run, interleaved; each round ingests the same bench_scale-format
dump into its own root, then builds its graph. Wall time and peak RSS of the whole process tree (the JVM
that spark-submit starts included) are medians over the rounds; bench/results/stage_launch.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"
LAUNCHES = ("subprocess", "spark-submit")
STAGES = ("ingest", "build-graph")


def launch_argv(launch: str, stage: str, values: dict, settings) -> list[str]:
    """``subprocess``: what stage_argv gives with the local master; ``spark-submit``: the same stage and
    arguments under spark-submit, as stage_argv gives it for a cluster master (before: for every master)."""
    from g2i_core.orchestration.stages import STAGES as TABLE
    from g2i_core.orchestration.stages import render_args, spark_submit_stage_argv, stage_argv

    if launch == "subprocess":
        return stage_argv(stage, values, settings)
    args = render_args(TABLE[stage].args, values, stage=stage)
    return spark_submit_stage_argv(stage, args, settings, run_id=values["run_id"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from bench.bench_scale import generate_dump, run_measured, stage_env

    bucket_root = os.environ.get("G2I_STORAGE_ROOT", "s3://g2i").rstrip("/")
    base = f"{bucket_root}/bench-launch/n{args.nodes}-{int(time.time())}"
    env = stage_env(base)
    env["G2I_SPARK_DRIVER_MEMORY"] = "2g"  # what a sample-size stage needs, so both launches size their JVM alike
    os.environ.update({k: env[k] for k in ("G2I_STORAGE_ROOT", "G2I_SPARK_DRIVER_MEMORY",
                                           "G2I_SPARK_SHUFFLE_PARTITIONS")})
    subprocess.run([str(ROOT / ".venv" / "bin" / "g2i"), "s3", "start"], check=True, env=env)

    from g2i_core.config import Settings
    from g2i_core.spark import spark_master_is_cluster
    from g2i_core.storage import Storage

    settings = Settings.load()
    if spark_master_is_cluster(settings.spark_master):
        parser.error(f"G2I_SPARK_MASTER is {settings.spark_master!r}: this compares launches with a local master")
    top = Storage.from_settings(settings)
    with tempfile.TemporaryDirectory(prefix="g2i-launch-") as tmp:
        files = generate_dump(Path(tmp), args.nodes, args.seed, workers=os.cpu_count() or 2)
        raw = top.uri("raw", "launch", "goodreads")
        for path in files:
            top.put_bytes(f"{raw}/{path.name}", path.read_bytes())
    RESULTS.mkdir(parents=True, exist_ok=True)
    log_path = RESULTS / "stage_launch.log"
    log_path.write_text("")
    rows = []
    for rnd in range(args.rounds):
        for launch in (LAUNCHES if rnd % 2 == 0 else LAUNCHES[::-1]):  # alternate who goes first
            graph_root = f"{base}/{launch}/r{rnd}/mmag/goodreads"
            values = {"source": "goodreads", "raw": raw, "graph_root": graph_root, "mode": "full",
                      "ds": "2026-11-01", "run_id": "goodreads-20261101"}
            for stage in STAGES:
                row = run_measured(f"{launch} {stage}", launch_argv(launch, stage, values, settings), env, log_path)
                if row["rc"] != 0:
                    print(row.get("error_tail", ""), file=sys.stderr)
                    return 1
                storage = Storage.from_settings(settings, root=graph_root)
                table = "nodes" if stage == "ingest" else "graph_nodes"
                extra = storage.manifest(table, values["run_id"])["extra"]
                engine = extra["report"]["engine"] if stage == "ingest" else extra["stats"]["engine"]
                rows.append({**row, "launch": launch, "name": stage, "round": rnd, "engine": engine})

    def median(launch, stage, key):
        return statistics.median(r[key] for r in rows if r["launch"] == launch and r["name"] == stage)

    summary = {stage: {launch: {key: median(launch, stage, key) for key in ("wall_s", "peak_rss_mb")}
                       for launch in LAUNCHES} for stage in STAGES}
    for by in summary.values():
        by["wall_ratio"] = round(by["spark-submit"]["wall_s"] / by["subprocess"]["wall_s"], 2)
        by["rss_saved_mb"] = round(by["spark-submit"]["peak_rss_mb"] - by["subprocess"]["peak_rss_mb"])
    command = f".venv/bin/python bench/bench_stage_launch.py --nodes {args.nodes} --rounds {args.rounds}"
    result = {"command": command, "nodes": args.nodes, "rounds": args.rounds, "cpus": os.cpu_count(),
              "storage_root": base, "summary": summary, "runs": rows}
    (RESULTS / "stage_launch.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = ["# Spark stages with a local master: `g2i` subprocess vs spark-submit\n",
             f"`{command}` ({os.cpu_count()} CPUs, load average at the end {rows[-1]['load_avg']}). "
             f"A {args.nodes:,}-book bench_scale dump, the default engine (`auto`); medians of {args.rounds} "
             "interleaved rounds; peak RSS is the whole process tree's.\n",
             "| stage | engine | subprocess wall s | spark-submit wall s | spark-submit / subprocess | "
             "subprocess peak MiB | spark-submit peak MiB |", "|---|---|---:|---:|---:|---:|---:|"]
    for stage, by in summary.items():
        engines = sorted({r["engine"] for r in rows if r["name"] == stage})
        lines.append(f"| {stage} | {', '.join(engines)} | {by['subprocess']['wall_s']} | "
                     f"{by['spark-submit']['wall_s']} | {by['wall_ratio']}× | {by['subprocess']['peak_rss_mb']} | "
                     f"{by['spark-submit']['peak_rss_mb']} |")
    (RESULTS / "stage_launch.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
