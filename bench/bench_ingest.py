"""Ingest throughput: ``g2i ingest`` (local and Spark engines) vs gunzip + ``pyarrow.json.read_json`` on one dump.

    .venv/bin/python bench/bench_ingest.py --nodes 200000     # the issue's target size (dump generated once)
    .venv/bin/python bench/bench_ingest.py                    # 1,000,000 records
    .venv/bin/python bench/bench_ingest.py --quick            # 50,000 records, < 2 min

Contenders, all reading the same generated ``goodreads_books.json.gz`` (or its clean copy), each in its own
process so peak memory (RSS of the whole process tree, sampled every 0.1 s: driver + JVM + Python workers for
Spark) is its own:

* ``ingest_local``: ``g2i ingest --engine local`` end to end on the clean copy (read, parse, dedupe, write the
  tables, commit): the numerator of the target (<= 2x ``pyarrow_read_json``).
* ``ingest_local_raw``: the same on the raw dump, malformed lines included (they go to quarantine).
* ``spark_ingest``: ``g2i ingest --engine spark`` on the raw dump (JVM start, re-chunk, parse, dedupe, publish);
  ``spark_ingest_python_parser`` / ``spark_ingest_native`` name its parser.
* ``python_parse``: one process streaming the raw gz through ``parse_line`` (no dedupe or writing).
* ``pyarrow_read_json``: gunzip + ``pyarrow.json.read_json`` + a zstd Parquet write (C++, multithreaded reader,
  no cleaning, dedupe or edges: a lower bound on "just load it and store it"). It aborts the whole file on the
  first malformed line, so it reads a copy with the malformed lines removed (made once; not timed) —
  ``pyarrow_on_raw_dump`` records that failure on the real file.

``--repeat N`` runs the local engine and the pyarrow baseline N times, interleaved, and reports each one's
median (the machine is shared: the ratio is of medians from the same run). Writes bench/results/<name>.json
and .md.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PY = sys.executable
CONTENDERS = "ingest_local,pyarrow_read_json,ingest_local_raw,spark_ingest"
REPEATED = ("ingest_local", "pyarrow_read_json")

PYTHON_PARSE = """
import gzip, sys
from g2i_core.ingest.parsers import parse_line
ok = bad = 0
with gzip.open(sys.argv[1], "rb") as fh:
    for i, line in enumerate(fh, 1):
        if line.strip():
            row = parse_line("goodreads", line.rstrip(b"\\n"), i)
            ok += row["reason"] is None
            bad += row["reason"] is not None
print(ok + bad)
"""
PYARROW_READ = """
import sys
import pyarrow as pa, pyarrow.json as pj, pyarrow.parquet as pq
table = pj.read_json(pa.input_stream(sys.argv[1], compression="gzip"),
                     parse_options=pj.ParseOptions(newlines_in_values=False, unexpected_field_behavior="infer"))
if len(sys.argv) > 2:
    pq.write_table(table, sys.argv[2], compression="zstd")
print(table.num_rows)
"""


def measure(cmd: list[str], env: dict | None = None) -> dict:
    """Run ``cmd``; wall seconds, peak RSS of its process tree (MiB), exit code and the last stdout line."""
    import psutil

    started = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, **(env or {})})
    peak, stop = 0, threading.Event()

    def sample():
        nonlocal peak
        root = psutil.Process(proc.pid)
        while not stop.is_set():
            try:
                rss = root.memory_info().rss + sum(c.memory_info().rss for c in root.children(recursive=True))
                peak = max(peak, rss)
            except psutil.Error:
                pass
            stop.wait(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    stop.set()
    sampler.join()
    if proc.returncode:
        raise RuntimeError(f"{cmd[:3]} failed ({proc.returncode}):\n{err[-3000:]}")
    return {"seconds": round(time.monotonic() - started, 2), "peak_rss_mib": round(peak / 2**20, 1),
            "stdout": out.strip().splitlines()[-1] if out.strip() else ""}


def ensure_dump(nodes: int, data_dir: Path) -> tuple[Path, float | None]:
    out = data_dir / f"goodreads-{nodes}"
    dump = out / "raw" / "goodreads_books.json.gz"
    if dump.exists():
        return dump, None
    started = time.monotonic()
    subprocess.run([PY, "-m", "g2i_core.cli", "sample", "--formats", "goodreads", "--nodes", str(nodes),
                    "--render-limit", "0", "--seed", "1", "--out", str(out)], check=True, cwd=ROOT)
    return dump, round(time.monotonic() - started, 1)


def clean_copy(dump: Path) -> Path:
    """The dump without lines that are not JSON objects (pyarrow's reader cannot skip them)."""

    clean = dump.with_name("clean-" + dump.name)
    if not clean.exists():
        with gzip.open(dump, "rb") as src, gzip.open(clean, "wb", compresslevel=6) as dst:
            for line in src:
                try:
                    if isinstance(json.loads(line), dict):
                        dst.write(line)
                except ValueError:
                    pass
    return clean

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="50,000 records instead of 1,000,000")
    parser.add_argument("--nodes", type=int, default=None)
    parser.add_argument("--data-dir", default=str(ROOT / ".local" / "bench"))
    parser.add_argument("--contenders", default=CONTENDERS)
    parser.add_argument("--repeat", type=int, default=3, help="runs of ingest_local and pyarrow_read_json, interleaved")
    args = parser.parse_args(argv)
    nodes = args.nodes or (50_000 if args.quick else 1_000_000)
    data_dir = Path(args.data_dir)

    # 1. The dump (generated once per size, then reused).
    dump, gen_seconds = ensure_dump(nodes, data_dir)
    truth = json.loads((dump.parent.parent / "truth" / "goodreads.json").read_text())
    lines = truth["lines"]
    print(f"dump {dump} ({dump.stat().st_size / 2**20:.0f} MiB gz, {lines} lines)", flush=True)

    # 2. The contenders, one process each.
    out_root = data_dir / f"ingest-out-{nodes}"
    report_path = data_dir / f"ingest-report-{nodes}.json"
    runs: dict[str, list[dict]] = {}
    pyarrow_on_raw = "not run"
    clean = clean_copy(dump)
    clean_lines = sum(1 for _ in gzip.open(clean, "rb"))

    def ingest_cmd(path: Path, engine: str) -> list[str]:
        return [PY, "-m", "g2i_core.cli", "ingest", "--source", "goodreads", "--raw", f"file://{path}",
                "--out", f"file://{out_root}", "--logical-date", "2026-01-01", "--engine", engine, "--json"]

    def run_ingest(contender: str, path: Path, engine: str, extra: list[str]) -> dict:
        shutil.rmtree(out_root, ignore_errors=True)
        result = measure(ingest_cmd(path, engine) + extra, env={"G2I_SPARK_MASTER": "local[2]"})
        report = json.loads((out_root / "nodes" / "_manifests" / "goodreads-2026-01-01.json").read_text())
        report_path.write_text(json.dumps(report["extra"], indent=2))
        result["stages"] = report["extra"]["report"]["seconds"]
        result["records"] = report["extra"]["report"]["lines_in"]
        assert report["extra"]["report"]["nodes_out"] == truth["nodes_expected"], f"{contender} lost or invented nodes"
        return result

    def run(contender: str) -> dict:
        if contender == "ingest_local":
            return run_ingest(contender, clean, "local", [])
        if contender == "ingest_local_raw":
            return run_ingest(contender, dump, "local", [])
        if contender in ("spark_ingest", "spark_ingest_python_parser", "spark_ingest_native"):
            extra = {"spark_ingest_python_parser": ["--python-parser"],
                     "spark_ingest_native": ["--native-parser"]}.get(contender, [])
            return run_ingest(contender, dump, "spark", extra)
        if contender == "python_parse":
            return {**measure([PY, "-c", PYTHON_PARSE, str(dump)]), "records": lines}
        if contender == "pyarrow_read_json":
            return {**measure([PY, "-c", PYARROW_READ, str(clean), str(data_dir / f"pyarrow-{nodes}.parquet")]),
                    "records": clean_lines}
        raise ValueError(f"unknown contender {contender!r}; choose from ingest_local, ingest_local_raw, spark_ingest, "
                         "spark_ingest_python_parser, spark_ingest_native, python_parse, pyarrow_read_json")

    contenders = args.contenders.split(",")
    if "pyarrow_read_json" in contenders:
        try:
            measure([PY, "-c", PYARROW_READ, str(dump)])
            pyarrow_on_raw = "ok"
        except RuntimeError as exc:
            pyarrow_on_raw = "failed: " + str(exc).strip().splitlines()[-1][:200]
    repeated = [c for c in contenders if c in REPEATED]
    for _ in range(args.repeat):  # interleaved, so drift in the machine's load hits both alike
        for contender in repeated:
            runs.setdefault(contender, []).append(run(contender))
            print(contender, runs[contender][-1], flush=True)
    for contender in contenders:
        if contender not in REPEATED:
            runs[contender] = [run(contender)]
            print(contender, runs[contender][-1], flush=True)
    results = {}
    for contender, done in runs.items():
        median = sorted(done, key=lambda r: r["seconds"])[len(done) // 2]
        results[contender] = {**median, "runs_seconds": [r["seconds"] for r in done],
                              "records_per_s": round(median["records"] / median["seconds"])}
    ratio = spark_ratio = None
    if "pyarrow_read_json" in results:
        base = results["pyarrow_read_json"]["seconds"]
        if "ingest_local" in results:
            ratio = round(results["ingest_local"]["seconds"] / base, 2)
        if "spark_ingest" in results:
            spark_ratio = round(results["spark_ingest"]["seconds"] / base, 2)

    # 3. Write JSON + markdown.
    summary = {
        "benchmark": "ingest", "records": lines, "clean_records": clean_lines,
        "dump_mib": round(dump.stat().st_size / 2**20, 1), "generation_seconds": gen_seconds, "cpus": os.cpu_count(),
        "machine": platform.platform(), "load_avg_1m_at_end": round(os.getloadavg()[0], 2), "repeat": args.repeat,
        "results": results, "pyarrow_on_raw_dump": pyarrow_on_raw, "ingest_local_over_pyarrow": ratio,
        "spark_ingest_over_pyarrow": spark_ratio,
        "command": "python bench/bench_ingest.py" + (" --quick" if args.quick else "")
        + (f" --nodes {args.nodes}" if args.nodes else "")
        + (f" --contenders {args.contenders}" if args.contenders != CONTENDERS else "")
        + (f" --repeat {args.repeat}" if args.repeat != 3 else ""),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "ingest_quick" if args.quick else "ingest" if not args.nodes else f"ingest_{nodes}"
    (RESULTS / f"{name}.json").write_text(json.dumps(summary, indent=2))
    rows = ["| contender | input | seconds (median) | runs | records/s | peak RSS (MiB) | stages (s) |",
            "|---|---|---:|---|---:|---:|---|"]
    inputs = {"ingest_local": "clean", "pyarrow_read_json": "clean"}
    rows += [f"| {k} | {inputs.get(k, 'raw')} | {v['seconds']} | {v['runs_seconds']} | {v['records_per_s']:,} | "
             f"{v['peak_rss_mib']:,} | {v.get('stages', '')} |" for k, v in results.items()]
    md = (f"# Ingest benchmark\n\n{lines:,} Goodreads lines ({summary['dump_mib']} MiB gz; the clean copy, without "
          f"the lines that are not JSON objects, has {clean_lines:,}), {os.cpu_count()} CPUs, Spark local[2]; "
          f"1-min load average at the end {summary['load_avg_1m_at_end']} (shared machine).\n\n"
          + "\n".join(rows) + f"\n\npyarrow on the raw dump (with its malformed lines): {pyarrow_on_raw}\n"
          + (f"\n**ingest_local / pyarrow_read_json** (gunzip + read_json + Parquet write): **{ratio}x** "
             "(target <= 2x)\n" if ratio else "")
          + (f"\nspark_ingest / pyarrow_read_json: {spark_ratio}x\n" if spark_ratio else "")
          + f"\nReproduce: `{summary['command']}`\n")
    (RESULTS / f"{name}.md").write_text(md)
    print(md)
    return 0

if __name__ == "__main__":
    sys.exit(main())
