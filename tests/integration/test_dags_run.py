"""``dag.test()`` runs of the DAGs on sample data, against the real local S3 server and local Spark.

Each run is a real Airflow DAG run (SQLite metadata DB in a temporary AIRFLOW_HOME) started in a child
process by ``python -m g2i_core.orchestration dag-test``, so the test process never imports Airflow's
configuration and a stuck run can be killed. One module fixture runs ``mmag_refresh`` once — with a
job killed mid-run — and the tests below read what it published.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

pytestmark = [pytest.mark.airflow, pytest.mark.spark, pytest.mark.s3, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
DAY1, DAY2 = "2024-01-01", "2024-01-02"
SOURCE = "goodreads"
NODES = 120
# Tables mmag_refresh publishes under <root>/mmag/<source>/ (each: _LATEST -> manifest -> files).
GRAPH_TABLES = ("nodes", "edges", "quarantine", "node_images", "graph_nodes", "graph_edges")
NEIGHBOUR_TABLES = ("ppr_candidates", "neighbours")


@dataclass
class DagRun:
    rc: int
    log: str
    wall_s: float
    tasks: dict[str, dict] = field(default_factory=dict)
    killed: list[int] = field(default_factory=list)  # process groups the test SIGKILLed
    assets: list[tuple[str, dict]] = field(default_factory=list)
    state: str = ""


def parse_report(rc: int, log: str, wall: float) -> DagRun:
    run = DagRun(rc, log, wall)
    for m in re.finditer(r"^\[dag-test\] \S+ (\S+): (\S+) in ([\d.]+)s \(try (\d+)\)$", log, re.M):
        run.tasks[m[1]] = {"state": m[2], "s": float(m[3]), "try": int(m[4])}
    for m in re.finditer(r"^\[dag-test\] \S+ asset event (\S+) (.*)$", log, re.M):
        run.assets.append((m[1], json.loads(m[2])))
    m = re.search(r"^\[dag-test\] \S+ logical_date=\S+: (\S+) in", log, re.M)
    run.state = m[1] if m else "?"
    return run


class Airflow:
    """A private Airflow home + the G2I_* environment that points every stage at the test S3 server."""

    def __init__(self, home: Path, env: dict[str, str]):
        self.home, self.env = home, env
        subprocess.run([str(ROOT / ".venv/bin/airflow"), "db", "migrate"], env=env, check=True,
                       capture_output=True, timeout=300)

    def run(self, dag_id: str, day: str, conf: dict, *, kill: tuple[str, str] | None = None,
            timeout: float = 900) -> DagRun:
        """Run ``dag_id`` for ``day``. ``kill=(command marker, log marker)`` SIGKILLs the job whose command
        line contains the first marker once the second appears in the log after it (a job dying mid-run)."""
        logf = self.home / f"{dag_id}-{day}-{time.monotonic_ns()}.log"
        killed: list[int] = []
        start = time.monotonic()
        with logf.open("w") as fh:
            proc = subprocess.Popen([sys.executable, "-m", "g2i_core.orchestration", "dag-test", dag_id,
                                     "--logical-date", day, "--conf", json.dumps(conf)],
                                    env=self.env, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT)
            killer = (threading.Thread(target=_kill_when, args=(proc, logf, killed, *kill), daemon=True)
                      if kill else None)
            if killer:
                killer.start()
            try:
                rc = proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                raise
        if killer:
            killer.join(5)
        run = parse_report(rc, logf.read_text(), time.monotonic() - start)
        run.killed = killed
        return run


def _kill_when(proc: subprocess.Popen, logf: Path, killed: list[int], cmd_marker: str, log_marker: str) -> None:
    import psutil

    deadline = time.monotonic() + 600
    while proc.poll() is None and time.monotonic() < deadline:
        text = logf.read_text(errors="replace")
        cut = text.find(cmd_marker)
        if cut >= 0 and log_marker in text[cut:]:
            for child in psutil.Process(proc.pid).children(recursive=True):
                try:
                    if cmd_marker in " ".join(child.cmdline()) and child.pid == os.getpgid(child.pid):
                        os.killpg(child.pid, signal.SIGKILL)  # the job's whole process group: JVM included
                        killed.append(child.pid)
                        return
                except (psutil.NoSuchProcess, ProcessLookupError):
                    continue
        time.sleep(0.2)


@pytest.fixture(scope="module")
def airflow(s3_server, tmp_path_factory):
    from g2i_core.sample.generator import generate_sample
    from g2i_core.sample.server import ImageServer

    sample = tmp_path_factory.mktemp("dag-sample")
    images = ImageServer(sample, port=0, slow_seconds=0.5).start()
    generate_sample(sample, nodes=NODES, seed=11, image_base_url=images.base_url, formats=(SOURCE,))
    access, secret = s3_server.credentials()
    home = tmp_path_factory.mktemp("airflow-home")
    root = f"s3://{s3_server.bucket}/dagtests"
    env = {**os.environ,
           "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
           "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"), "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
           "G2I_STORAGE_ROOT": root, "G2I_S3_ENDPOINT": s3_server.endpoint, "G2I_S3_ACCESS_KEY": access,
           "G2I_S3_SECRET_KEY": secret, "G2I_S3_MAX_ATTEMPTS": "3", "G2I_SPARK_DRIVER_MEMORY": "1g",
           "G2I_SPARK_SHUFFLE_PARTITIONS": "2", "G2I_SPARK_LOCAL_DIR": str(home / "spark"),
           "G2I_INGEST_ENGINE": "spark",  # the killed job below is the Spark one (its re-chunk pass is the marker)
           "G2I_RETRIES": "1", "G2I_RETRY_DELAY_S": "1", "G2I_BACKFILL_SHARDS": "3",
           "G2I_FETCH_ALLOW_HOSTS": f"127.0.0.1:{images.port}",  # the fetcher refuses loopback otherwise
           "PYSPARK_PYTHON": sys.executable, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    from g2i_core.config import Settings
    from g2i_core.storage import Storage

    storage = Storage.from_settings(Settings.load(storage_root=root, s3_endpoint=s3_server.endpoint,
                                                  s3_access_key=access, s3_secret_key=secret))
    dump = sample / "raw" / "goodreads_books.json.gz"
    storage.put_bytes(storage.uri("raw", "sample", dump.name), dump.read_bytes())
    af = Airflow(home, env)
    af.storage = storage
    af.truth = json.loads((sample / "truth" / f"{SOURCE}.json").read_text())
    yield af
    images.stop()


@pytest.fixture(scope="module")
def first_run(airflow):
    """mmag_refresh for DAY1; the ingest stage (its process group: the Spark JVM included) is SIGKILLed once it
    is reading the dump."""
    run = airflow.run("mmag_refresh", DAY1, {"sources": [SOURCE]}, kill=("g2i_core.cli ingest", "rechunk"))
    print(f"\nmmag_refresh {DAY1} (with a killed ingest): {run.state} in {run.wall_s:.0f}s; "
          + ", ".join(f"{k} {v['s']:.0f}s" for k, v in run.tasks.items()))
    return run


def graph(airflow):
    return airflow.storage.child("mmag", SOURCE)


def snapshot(storage) -> dict[str, list[str]]:
    out = {}
    for name in GRAPH_TABLES + NEIGHBOUR_TABLES:
        rows = storage.read_table(name).to_pylist()
        out[name] = sorted(json.dumps(r, sort_keys=True, default=str) for r in rows)
    return out


def test_mmag_refresh_publishes_every_table_and_recovers_from_a_killed_job(airflow, first_run):
    assert first_run.rc == 0 and first_run.state == "success", first_run.log[-5000:]
    assert len(first_run.killed) == 1  # the ingest job really was killed mid-run ...
    ingest = first_run.tasks["refresh.ingest[0]"]
    assert (ingest["state"], ingest["try"]) == ("success", 2)  # ... and its retry completed
    assert all(t["state"] == "success" for t in first_run.tasks.values()), first_run.tasks
    g = graph(airflow)
    for name in GRAPH_TABLES + NEIGHBOUR_TABLES:
        assert g.manifest(name)["run_id"] == f"{SOURCE}-20240101", name
    nodes = g.read_table("nodes").column("node_id").to_pylist()
    assert len(nodes) == len(set(nodes)) == airflow.truth["nodes_expected"]
    neighbours = g.read_table("neighbours").to_pylist()
    keys = [(r["node_id"], r["rank"]) for r in neighbours]
    assert len(keys) == len(set(keys)) and {r["node_id"] for r in neighbours} <= set(nodes)
    assert {name for name, _ in first_run.assets} >= {"g2i.graph", "g2i.neighbours"}
    # the event names the dataset and the graph run it produced: consumers train that dataset at that run
    assert ("g2i.neighbours", {"dataset": SOURCE, "graph_root": g.root, "graph_run_id": f"{SOURCE}-20240101",
                               "stage": "rerank"}) in first_run.assets
    state = airflow.storage.get_json(airflow.storage.uri("_state", "mmag_refresh", f"{SOURCE}.json"))
    assert state["logical_date"] == DAY1 and state["mode"] == "full"


def test_rerun_of_the_same_logical_date_replaces_and_never_duplicates(airflow, first_run):
    assert first_run.rc == 0
    before = snapshot(graph(airflow))
    rerun = airflow.run("mmag_refresh", DAY1, {"sources": [SOURCE]})
    print(f"\nmmag_refresh rerun {DAY1}: {rerun.state} in {rerun.wall_s:.0f}s")
    assert rerun.rc == 0 and rerun.tasks["refresh.ingest[0]"]["state"] == "success", rerun.log[-5000:]
    after = snapshot(graph(airflow))
    for name in before:
        assert after[name] == before[name], f"{name} changed on a rerun of the same logical date"
    for name in ("nodes", "neighbours"):
        runs = {u.split("/run=")[1].split("/")[0] for u in graph(airflow).list(graph(airflow).uri(name))
                if "/run=" in u}
        assert runs == {f"{SOURCE}-20240101"}, f"{name} has run folders {runs}"


def test_next_day_with_an_unchanged_dump_skips_the_source(airflow, first_run):
    assert first_run.rc == 0
    run = airflow.run("mmag_refresh", DAY2, {"sources": [SOURCE]})
    assert run.rc == 0 and run.state == "success", run.log[-5000:]
    assert run.tasks["plan"]["state"] == "success"
    assert "nothing new (skipped)" in run.log
    assert not any(k.startswith("refresh.") and v["state"] == "success" for k, v in run.tasks.items())
    assert graph(airflow).manifest("nodes")["run_id"] == f"{SOURCE}-20240101"
    assert run.assets == []  # no new neighbours: g2i_train is not triggered


def test_train_then_backfill_shards_cover_every_target_exactly_once(airflow, first_run):
    from g2i_core.generate import GenerateConfig, read_manifest, select_nodes, shard_of

    assert first_run.rc == 0
    train = airflow.run("g2i_train", DAY1, {"dataset": SOURCE, "preset": "tiny", "steps": 2, "resume": False})
    print(f"\ng2i_train (tiny, 2 steps): {train.state} in {train.wall_s:.0f}s")
    assert train.rc == 0 and train.state == "success", train.log[-5000:]
    assert [name for name, _ in train.assets] == ["g2i.model"]
    g = graph(airflow)
    assert g.get_json(g.uri("models", "_LATEST")) == {"run_id": "train-20240101", "run_key": "20240101",
                                                       "graph_run_id": f"{SOURCE}-20240101"}
    assert g.exists(g.uri("models", "train-20240101", "_COMMITTED.json"))  # written last by g2i train

    shards = 3
    backfill = airflow.run("g2i_backfill_covers", DAY1, {"dataset": SOURCE, "shards": shards, "steps": 2, "sample": 8})
    print(f"g2i_backfill_covers ({shards} shards): {backfill.state} in {backfill.wall_s:.0f}s; "
          + ", ".join(f"{k} {v['s']:.0f}s" for k, v in backfill.tasks.items()))
    assert backfill.rc == 0 and backfill.state == "success", backfill.log[-5000:]
    assert {k for k in backfill.tasks if k.startswith("generate[")} == {f"generate[{i}]" for i in range(shards)}
    # the quality check runs per dataset (mapped), like every GPU stage
    assert all(backfill.tasks[t]["state"] == "success" for t in ("check_coverage", "generate_sample[0]",
                                                                   "evaluate_sample[0]"))
    assert g.exists(g.uri("reports", "backfill-20240101-check", "report.html"))
    assert ("g2i.report", {"dataset": SOURCE, "graph_root": g.root, "graph_run_id": f"{SOURCE}-20240101",
                           "run_id": "backfill-20240101-check", "stage": "evaluate"}) in backfill.assets

    # Independently of the DAG's own check: the union of the shard manifests is the target set, once each.
    generated = read_manifest(g, "backfill-20240101").to_pylist()
    targets = select_nodes(g, GenerateConfig(run_id="backfill-20240101", model_uri=g.uri("models", "train-20240101"),
                                             backfill=True))
    assert targets, "the sample has nodes without covers"
    ids = [r["node_id"] for r in generated]
    assert sorted(ids) == sorted(targets) and len(ids) == len(set(ids))
    assert all(str(shard_of(r["node_id"], shards)) in str(r["shard"]) for r in generated)
