"""A local-engine ingest SIGKILLed while it writes its tables leaves the published version readable and whole,
and its rerun publishes the same tables as an uninterrupted run."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time

from g2i_core.ingest.job import IngestConfig
from g2i_core.ingest.local import run_ingest_local
from g2i_core.storage import Storage

TABLES = ("nodes", "edges", "quarantine", "node_changes")


def _dump(path, n: int, version: int) -> str:
    with gzip.open(path, "wt", compresslevel=1) as fh:
        for i in range(n):
            fh.write(json.dumps({"book_id": str(i), "title": f"Book {i} v{version}", "description": "d" * 300,
                                 "similar_books": [str((i * 7 + k) % n) for k in range(1, 6)]}) + "\n")
        fh.write("not json\n")
    return f"file://{path}"


def _rows(storage: Storage, table: str) -> list[str]:
    return sorted(json.dumps(r, sort_keys=True, default=str) for r in storage.read_table(table).to_pylist())


def test_killed_local_ingest_keeps_the_published_version_and_its_rerun_publishes(tmp_path):
    root = f"file://{tmp_path}/store"
    storage = Storage(root)
    old = run_ingest_local(storage, IngestConfig(source="goodreads", raw_uri=_dump(tmp_path / "v1.json.gz", 2_000, 1),
                                                 logical_date="2026-11-01"))
    before = {t: _rows(storage, t) for t in ("nodes", "edges", "quarantine")}
    big = _dump(tmp_path / "v2.json.gz", 300_000, 2)
    cmd = [sys.executable, "-m", "g2i_core.cli", "ingest", "--source", "goodreads", "--raw", big, "--out", root,
           "--logical-date", "2026-11-02", "--engine", "local"]
    job = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    written = tmp_path / "store" / "edges" / "run=goodreads-2026-11-02"
    deadline = time.monotonic() + 300
    while not any(written.rglob("*.parquet")) and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    os.killpg(job.pid, signal.SIGKILL)  # mid-write: the new attempt has files, and no commit yet
    assert job.wait(timeout=30) == -signal.SIGKILL, "the ingest finished before it could be killed"
    assert any(written.rglob("*.parquet"))

    # the published version is the old one, whole: every table of the same commit, readable
    assert storage.manifest("nodes")["run_id"] == old.run_id
    assert not storage.is_published("nodes", "goodreads-2026-11-02")
    assert {t: _rows(storage, t) for t in before} == before

    # the rerun (what a task retry does) publishes what an uninterrupted run publishes
    redo = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    assert redo.returncode == 0, redo.stderr[-3000:]
    clean = Storage(f"file://{tmp_path}/clean")
    run_ingest_local(clean, IngestConfig(source="goodreads", raw_uri=f"file://{tmp_path}/v1.json.gz",
                                         logical_date="2026-11-01"))
    run_ingest_local(clean, IngestConfig(source="goodreads", raw_uri=big, logical_date="2026-11-02"))
    assert storage.manifest("nodes")["run_id"] == "goodreads-2026-11-02"
    for table in TABLES:
        assert _rows(storage, table) == _rows(clean, table), table
