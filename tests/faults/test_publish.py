"""Retries, reruns, clears and concurrent writers never break the published version (issue 13, item 3).

Each test is a fault the old publish could not survive: it deleted ``run=<id>/`` before rewriting a
run, overwrote ``_LATEST`` unconditionally, and flipped each table's pointer on its own."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pyarrow as pa
import pytest

from g2i_core.storage import PublishConflictError, Storage

pytestmark = pytest.mark.s3


@pytest.fixture(params=["file", "s3"])
def storage(request, file_storage) -> Storage:
    return file_storage if request.param == "file" else request.getfixturevalue("s3_storage")


def _env(s3_settings) -> dict:
    return dict(os.environ, G2I_S3_ENDPOINT=s3_settings.s3_endpoint, G2I_S3_ACCESS_KEY=s3_settings.s3_access_key,
                G2I_S3_SECRET_KEY=s3_settings.s3_secret_key)


_RERUN_KILLED_MID_DATA = textwrap.dedent("""
    import sys, time
    import pyarrow as pa
    from g2i_core.config import Settings
    from g2i_core.storage import Storage
    s = Storage(sys.argv[1], settings=Settings.load())
    orig, calls = Storage.write_parquet, []
    def parked(self, uri, table):  # timing only: park after the first new file so the test can SIGKILL here
        calls.append(uri)
        if len(calls) == 2:
            print("PARKED", flush=True); time.sleep(60)
        return orig(self, uri, table)
    Storage.write_parquet = parked
    s.publish_table("t", pa.table({"id": [f"new{i}" for i in range(6)]}), "day1", max_rows_per_file=2)
""")


def test_killed_same_id_rerun_never_disturbs_a_reader(storage, s3_settings, tmp_path):
    """A retry reuses the live run id. While it writes, and after it is SIGKILLed, a reader that keeps
    reading the table gets the complete published version every time."""
    old = {"id": [f"old{i}" for i in range(6)]}
    storage.publish_table("t", pa.table(old), "day1", max_rows_per_file=2)
    reads, errors, stop = [], [], threading.Event()

    def reader():
        while not stop.is_set():
            try:
                reads.append(storage.read_table("t").to_pydict())
            except Exception as exc:  # noqa: BLE001 - every failure is the finding
                errors.append(repr(exc))

    script = tmp_path / "rerun.py"
    script.write_text(_RERUN_KILLED_MID_DATA)
    thread = threading.Thread(target=reader)
    proc = subprocess.Popen([sys.executable, str(script), storage.root], stdout=subprocess.PIPE, text=True,
                            env=_env(s3_settings))
    try:
        assert proc.stdout.readline().strip() == "PARKED"
        thread.start()
        while len(reads) + len(errors) < 5:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        n = len(reads) + len(errors)
        while len(reads) + len(errors) < n + 5:
            time.sleep(0.01)
    finally:
        stop.set()
        proc.kill()
        thread.join(timeout=30)
    assert errors == [] and reads and all(r == old for r in reads)
    # the retry that follows completes, and the debris of the killed attempt is cleaned up (once it is
    # older than the grace that protects writers still at work; here: at once)
    storage.attempt_grace_s = 0
    storage.publish_table("t", pa.table({"id": ["new"]}), "day1")
    assert storage.read_table("t").to_pydict() == {"id": ["new"]}
    attempts = {u.split("attempt=")[1].split("/")[0] for u in storage.list(storage.uri("t", "run=day1"))}
    assert len(attempts) == 2  # the new attempt, and the one published before it (kept for readers in flight)


def test_pointer_moves_forward_only(storage):
    """Clearing an old DagRun after a newer one: the old run is republished by its run id, and readers
    of the table keep the newer one; --force is the only way back."""
    storage.publish_table("t", pa.table({"v": [1]}), "day1", logical_date="2026-11-01")
    storage.publish_table("t", pa.table({"v": [2]}), "day2", logical_date="2026-11-02")
    m = storage.publish_table("t", pa.table({"v": [10]}), "day1", logical_date="2026-11-01")  # the cleared run
    assert storage.read_table("t").to_pydict() == {"v": [2]}
    assert storage.read_table("t", run_id="day1").to_pydict() == {"v": [10]}
    assert m["live"] is False
    m = storage.publish_table("t", pa.table({"v": [11]}), "day1", logical_date="2026-11-01", force=True)
    assert m["live"] is True and storage.read_table("t").to_pydict() == {"v": [11]}


def test_concurrent_publishers_do_not_interleave(storage):
    """Two writers of one table: while one holds the publish lease, the other fails with a clear error
    and publishes nothing; afterwards the table is exactly the winner's version."""
    entered, release = threading.Event(), threading.Event()
    winner = Storage(storage.root, settings=storage._settings, s3_client=storage._client)
    orig = winner.put_json

    def slow_put_json(uri, obj):  # timing only: while publishing, hold on until the rival has tried
        if "/_manifests/" in uri and not entered.is_set():
            entered.set()
            assert release.wait(30)
        return orig(uri, obj)

    winner.put_json = slow_put_json
    results = {}

    def publish_winner():
        results["winner"] = winner.publish_table("t", pa.table({"who": ["winner"] * 3}), "run-a")

    thread = threading.Thread(target=publish_winner)
    thread.start()
    try:
        assert entered.wait(30)
        with pytest.raises(PublishConflictError, match="being published by"):
            storage.publish_table("t", pa.table({"who": ["rival"]}), "run-b")
    finally:
        release.set()
        thread.join(timeout=30)
    assert results["winner"]["run_id"] == "run-a"
    assert storage.read_table("t").to_pydict() == {"who": ["winner"] * 3}
    assert not storage.is_published("t", "run-b")
    assert not storage.exists(storage.uri("t", "_lease"))  # released
    storage.publish_table("t", pa.table({"who": ["rival"]}), "run-b")  # the rival's retry goes through
    assert storage.read_table("t").to_pydict() == {"who": ["rival"]}


def test_racing_publishers_leave_one_consistent_version(storage):
    """Eight retries of one run publish at the same moment: each either wins or fails cleanly, and the
    live version is one winner's complete table (the old publish deleted each other's files)."""
    barrier = threading.Barrier(8)
    won, lost = [], []

    def publish(i):
        s = Storage(storage.root, settings=storage._settings, s3_client=storage._client)
        table = pa.table({"writer": [i] * (i + 1)})
        barrier.wait()
        try:
            s.publish_table("t", table, "run-x", max_rows_per_file=2)
            won.append(i)
        except PublishConflictError:
            lost.append(i)

    threads = [threading.Thread(target=publish, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(won) + len(lost) == 8 and won
    live = storage.read_table("t").column("writer").to_pylist()
    assert live and set(live) == {live[0]} and len(live) == live[0] + 1 and live[0] in won
    assert storage.manifest("t")["rows"] == len(live)


def test_expired_lease_of_a_killed_publisher_is_taken_over(storage):
    storage.put_json(storage.uri("t", "_lease"), {"owner": "dead-host:1:abc", "acquired_at": 0, "expires_at": 1})
    storage.publish_table("t", pa.table({"v": [1]}), "r1")
    assert storage.read_table("t").to_pydict() == {"v": [1]}
    storage.put_json(storage.uri("t", "_lease"), {"owner": "live-host:2:def", "acquired_at": 0,
                                                  "expires_at": 4_000_000_000})
    with pytest.raises(PublishConflictError, match="live-host"):
        storage.publish_table("t", pa.table({"v": [2]}), "r2")


# ---- whole stages on Spark ----------------------------------------------------------------------------
def _dump(path, records):
    with gzip.open(path, "wt") as fh:
        fh.write("".join(json.dumps(r) + "\n" for r in records))
    return f"file://{path}"


def _book(book_id, similar=()):
    return {"book_id": str(book_id), "title": f"Book {book_id}", "image_url": "", "similar_books": list(similar)}


@pytest.mark.spark
def test_cleared_old_ingest_does_not_lose_later_deltas(spark, file_storage, tmp_path):
    """Full ingest on day 1, a delta on day 2, then day 1's run is cleared and rerun: readers keep day 2,
    and day 3's delta merges onto day 2 (the old code pointed _LATEST back at day 1, and day 3 lost day 2)."""
    from g2i_core.ingest.job import IngestConfig, run_ingest

    full = _dump(tmp_path / "full.json.gz", [_book(1, [2]), _book(2, [1])])
    day2 = _dump(tmp_path / "d2.json.gz", [_book(3, [1])])
    day3 = _dump(tmp_path / "d3.json.gz", [_book(4, [3])])
    run_ingest(spark, file_storage, IngestConfig(source="goodreads", raw_uri=full, logical_date="2026-11-01"))
    run_ingest(spark, file_storage, IngestConfig(source="goodreads", raw_uri=day2, logical_date="2026-11-02",
                                                 mode="delta"))
    rerun = run_ingest(spark, file_storage, IngestConfig(source="goodreads", raw_uri=full,
                                                         logical_date="2026-11-01"))
    assert file_storage.manifest("nodes")["run_id"] == "goodreads-2026-11-02"
    assert rerun.live is False
    last = run_ingest(spark, file_storage, IngestConfig(source="goodreads", raw_uri=day3, logical_date="2026-11-03",
                                                        mode="delta"))
    assert last.base_run_id == "goodreads-2026-11-02"
    ids = sorted(file_storage.read_table("nodes", columns=["node_id"]).column("node_id").to_pylist())
    assert ids == ["goodreads:1", "goodreads:2", "goodreads:3", "goodreads:4"]


@pytest.mark.spark
def test_build_graph_reads_one_ingest_commit(spark, file_storage, tmp_path):
    """A newer edges table made live on its own (what a concurrent ingest did between its table flips)
    must not be paired with the live nodes: build-graph reads the edges committed with those nodes."""
    from g2i_core.graph.build import BuildConfig, run_build_graph
    from g2i_core.ingest.job import IngestConfig, run_ingest

    dump = _dump(tmp_path / "g.json.gz", [_book(1, [2, 3]), _book(2, [3]), _book(3, [1])])
    run_ingest(spark, file_storage, IngestConfig(source="goodreads", raw_uri=dump, logical_date="2026-11-01"))
    committed = file_storage.read_table("edges").num_rows
    file_storage.publish_table("edges", pa.table({"src": ["goodreads:9"], "dst": ["goodreads:1"],
                                                  "relation": ["similar_books"], "weight": [1.0]}),
                               "goodreads-2026-11-02")
    stats = run_build_graph(spark, file_storage, BuildConfig())
    assert stats["edges"] == committed == 4 and stats["inputs"]["edges"] == "goodreads-2026-11-01"
    assert stats["dangling_dropped_by_relation"] == {}
    assert file_storage.read_commit("graph_nodes")["graph_edges"]["rows"] == 4
