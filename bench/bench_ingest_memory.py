"""The local ingest engine's memory estimate (what ``--engine auto`` holds against the memory budget) against
the peak that engine really reaches, per dump.

    .venv/bin/python bench/bench_ingest_memory.py                       # the 200k and 1M sample dumps
    .venv/bin/python bench/bench_ingest_memory.py --dump s3://g2i/bench-scale/n2400000-<ts>/raw/scale/goodreads

For each dump: its stored size, what the sampled head keeps per stored byte, the estimate
(``local_ingest_memory_estimate`` for a first run: no base version), the rule it replaced (320 MiB + 2 × the
text, gzip taken as 8×), and the peak RSS of ``g2i ingest --engine local`` on it (sampled every 0.1 s; the
output goes to a scratch root that is deleted after). The sample dumps are bench_ingest's (generated once
under .local/bench). Writes bench/results/ingest_memory.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"


def old_rule_bytes(stored_bytes: int, compressed: bool) -> int:
    """The estimate before the head was sampled: 320 MiB + 2 × the text, gzip taken to expand 8×."""
    return (320 << 20) + 2 * stored_bytes * (8 if compressed else 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", default="200000,1000000", help="sample dumps to generate and measure ('' for none)")
    parser.add_argument("--dump", action="append", default=[], help="a further dump: file or prefix, file:// or s3://")
    parser.add_argument("--data-dir", default=str(ROOT / ".local" / "bench"))
    args = parser.parse_args(argv)

    from bench.bench_ingest import PY, ensure_dump, measure
    from g2i_core.config import Settings
    from g2i_core.ingest.chunking import list_raw_files
    from g2i_core.ingest.job import IngestConfig
    from g2i_core.ingest.local import local_ingest_memory_estimate, sample_dump
    from g2i_core.storage import Storage

    dumps = [f"file://{ensure_dump(int(n), Path(args.data_dir))[0]}" for n in args.nodes.split(",") if n]
    dumps += args.dump
    settings = Settings.load()
    rows = []
    for dump in dumps:
        scratch = (f"file://{Path(args.data_dir) / 'memory-scratch'}" if dump.startswith("file://") else
                   f"{settings.storage_root.rstrip('/')}/bench-ingest-memory/{int(time.time())}")
        storage = Storage.from_settings(settings, root=scratch)
        cfg = IngestConfig(source="goodreads", raw_uri=dump).resolved()
        files = list_raw_files(storage, dump)
        sample = sample_dump(storage, files[0], "goodreads")[1]
        started = time.monotonic()
        estimate = local_ingest_memory_estimate(storage, cfg)
        estimate_s = time.monotonic() - started
        stored = sum(storage.size(u) for u in files)
        run = measure([PY, "-m", "g2i_core.cli", "ingest", "--source", "goodreads", "--raw", dump, "--out", scratch,
                       "--logical-date", "2026-01-01", "--engine", "local", "--json"])
        storage.delete_prefix(scratch)
        old = old_rule_bytes(stored, any(u.endswith(".gz") for u in files))
        row = {"dump": dump, "files": len(files), "stored_mib": round(stored / 2**20, 1),
               "kept_per_stored_byte": round(sample.kept_per_stored_byte, 2) if sample else None,
               "estimate_gib": round(estimate / 2**30, 2), "estimate_s": round(estimate_s, 2),
               "old_rule_gib": round(old / 2**30, 2), "peak_gib": round(run["peak_rss_mib"] / 1024, 2),
               "ingest_s": run["seconds"]}
        row["estimate_over_peak"] = round(row["estimate_gib"] / row["peak_gib"], 2)
        row["old_rule_over_peak"] = round(row["old_rule_gib"] / row["peak_gib"], 2)
        print(json.dumps(row), flush=True)
        rows.append(row)
    command = ".venv/bin/python bench/bench_ingest_memory.py" + "".join(f" --dump {d}" for d in args.dump)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "ingest_memory.json").write_text(json.dumps({"command": command, "rows": rows}, indent=2) + "\n")
    lines = ["# Local ingest: the memory estimate of `--engine auto` against the measured peak\n",
             f"`{command}` ({os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d')}). Peak: RSS of the "
             "`g2i ingest --engine local` process, sampled every 0.1 s. Old rule: 320 MiB + 2 × text (gz × 8).\n",
             "| dump | stored MiB | kept B per stored B | estimate GiB | old rule GiB | peak GiB | estimate / peak | "
             "old rule / peak | estimate s |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {'/'.join(r['dump'].split('/')[-4:])} ({r['files']} files) | {r['stored_mib']} | "
              f"{r['kept_per_stored_byte']} | "
              f"{r['estimate_gib']} | {r['old_rule_gib']} | {r['peak_gib']} | {r['estimate_over_peak']} | "
              f"{r['old_rule_over_peak']} | {r['estimate_s']} |" for r in rows]
    (RESULTS / "ingest_memory.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
