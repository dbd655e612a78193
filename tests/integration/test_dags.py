"""The DAG files, parsed by a real Airflow DagBag: no import errors, no heavy imports, the expected
structure (tasks, dependencies, Assets, params, retries/timeouts), in both execution profiles."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.airflow

ROOT = Path(__file__).resolve().parents[2]
DAGS = ROOT / "dags"
HEAVY = ("torch", "pyspark", "diffusers", "transformers")


def airflow_env(home: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"AIRFLOW_HOME": str(home), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS), "AIRFLOW__CORE__UNIT_TEST_MODE": "False"})
    env.update(extra)
    return env


PARSE_PROBE = r"""
import json, sys, time
t0 = time.perf_counter()
from airflow.dag_processing.dagbag import DagBag
t1 = time.perf_counter()
bag = DagBag(sys.argv[1])
t2 = time.perf_counter()
out = {
    "import_errors": {k: str(v)[-2000:] for k, v in bag.import_errors.items()},
    "heavy": [m for m in %r if m in sys.modules],
    "airflow_import_s": t1 - t0, "dagbag_s": t2 - t1,
    "per_file_s": {s.file: s.duration.total_seconds() for s in bag.dagbag_stats},
    "dags": {d.dag_id: {t.task_id: t.task_type + ("[]" if type(t).__name__ == "MappedOperator" else "")
                        for t in d.tasks} for d in bag.dags.values()},
    "pools": {d.dag_id: {t.task_id: t.pool for t in d.tasks} for d in bag.dags.values()},
}
def pod(t):
    kw = getattr(t, "partial_kwargs", None) or t.__dict__
    return {"image": kw.get("image"), "node_selector": kw.get("node_selector"),
            "limits": getattr(kw.get("container_resources"), "limits", None),
            "configmap": [e.config_map_ref.name for e in kw.get("env_from") or []],
            "arguments": kw.get("arguments")}
if "g2i_train" in bag.dags:
    out["train"] = pod(bag.dags["g2i_train"].task_dict["train"])
    out["evaluate"] = pod(bag.dags["g2i_evaluate"].task_dict["evaluate"])
print("PROBE" + json.dumps(out))
""" % (HEAVY,)


def parse_in_subprocess(tmp_path: Path, **env: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", PARSE_PROBE, str(DAGS)], env=airflow_env(tmp_path, **env),
                          capture_output=True, text=True, timeout=180)
    line = next((s for s in proc.stdout.splitlines() if s.startswith("PROBE")), None)
    assert line, f"parse probe failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return json.loads(line[len("PROBE"):])


@pytest.fixture(scope="module")
def dagbag(tmp_path_factory):
    os.environ.update({k: v for k, v in airflow_env(tmp_path_factory.mktemp("airflow-home")).items()
                       if k.startswith("AIRFLOW")})
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(str(DAGS))


def test_dagbag_parses_fast_with_no_errors_and_no_heavy_imports(tmp_path):
    probe = parse_in_subprocess(tmp_path)
    assert probe["import_errors"] == {}
    assert probe["heavy"] == [], f"DAG files imported {probe['heavy']} at parse time"
    assert set(probe["dags"]) == {"mmag_refresh", "g2i_train", "g2i_backfill_covers", "g2i_evaluate"}
    # Airflow's default dagbag_import_timeout is 30 s; our files are pure wiring (~0.1-0.2 s each on an idle
    # machine; the first one also pays for importing g2i_core.airflow_ops). 5 s leaves room for a busy CI box.
    assert all(t < 5.0 for t in probe["per_file_s"].values()), probe["per_file_s"]
    print(f"\nDagBag parse: {probe['dagbag_s']:.2f}s for 4 files "
          f"({', '.join(f'{k} {v * 1000:.0f}ms' for k, v in probe['per_file_s'].items())}); "
          f"airflow import {probe['airflow_import_s']:.2f}s")


def test_kubernetes_profile_runs_gpu_stages_as_gpu_pods(tmp_path):
    probe = parse_in_subprocess(tmp_path, G2I_PROFILE="kubernetes", G2I_TRAINER_IMAGE="registry.example/g2i-trainer:7",
                                G2I_GPU_COUNT="2")
    assert probe["import_errors"] == {}
    assert probe["heavy"] == []
    # Every GPU stage of every DAG is a GPU pod (mapped where it runs per dataset or shard) ...
    assert probe["dags"]["g2i_train"]["train"] == "KubernetesPodOperator[]"
    for tid in ("generate", "generate_text_only", "evaluate"):
        assert probe["dags"]["g2i_evaluate"][tid] == "KubernetesPodOperator", tid
    for tid in ("generate", "generate_sample", "generate_sample_text_only", "evaluate_sample"):
        assert probe["dags"]["g2i_backfill_covers"][tid] == "KubernetesPodOperator[]", tid
    for spec in (probe["train"], probe["evaluate"]):
        assert spec["image"] == "registry.example/g2i-trainer:7"
        assert spec["limits"] == {"nvidia.com/gpu": "2"}
        assert spec["node_selector"] == {"g2i.io/pool": "gpu"}
        assert spec["configmap"] == ["g2i-settings"]  # settings come from the cluster, not the parsing machine
    assert "xcom_pull(task_ids='prepare')" in probe["evaluate"]["arguments"][1]
    # Spark stages do not change with the GPU profile: they stay stage subprocesses.
    assert probe["dags"]["mmag_refresh"]["refresh.ingest"] == "StageOperator"


def test_whole_machine_stages_share_the_pool_the_setting_names(tmp_path):
    """G2I_MACHINE_POOL (set by `g2i airflow up`, which creates the pool with one slot) puts the stages that
    size themselves to the whole machine in one pool; without it every task stays in default_pool."""
    whole_machine = {"refresh." + t for t in ("ingest", "build_graph", "ppr", "embed", "rerank")}
    pooled = parse_in_subprocess(tmp_path, G2I_MACHINE_POOL="g2i_machine")
    assert pooled["import_errors"] == {}
    refresh = pooled["pools"]["mmag_refresh"]
    assert {t for t, pool in refresh.items() if pool == "g2i_machine"} == whole_machine, refresh
    assert {pool for t, pool in refresh.items() if t not in whole_machine} == {"default_pool"}, refresh
    # GPU stages are not in it: they are pods on the kubernetes profile
    assert {pool for d in ("g2i_train", "g2i_backfill_covers", "g2i_evaluate")
            for pool in pooled["pools"][d].values()} == {"default_pool"}
    plain = parse_in_subprocess(tmp_path, G2I_MACHINE_POOL="")
    assert {pool for tasks in plain["pools"].values() for pool in tasks.values()} == {"default_pool"}


def _edges(dag) -> set[tuple[str, str]]:
    return {(t.task_id, d) for t in dag.tasks for d in t.downstream_task_ids}


def _assets(task) -> set[str]:
    return {a.name for a in task.outlets}


def test_mmag_refresh_structure(dagbag):
    dag = dagbag.dags["mmag_refresh"]
    g = "refresh."
    assert set(dag.task_dict) == {"plan", "record_state", "collect_old_runs"} | {g + t for t in (
        "ingest", "fetch_images", "build_graph", "ppr", "embed", "rerank")}
    stages = ("ingest", "fetch_images", "build_graph", "ppr", "embed", "rerank")
    # plan feeds every task of the mapped group (its values are the group's mapped argument)
    assert {("plan", g + t) for t in stages} | {
            (g + "ingest", g + "fetch_images"), (g + "fetch_images", g + "build_graph"),
            (g + "build_graph", g + "ppr"), (g + "build_graph", g + "embed"), (g + "ppr", g + "rerank"),
            (g + "embed", g + "rerank"), (g + "rerank", "record_state"),
            ("plan", "record_state"), ("plan", "collect_old_runs"), ("record_state", "collect_old_runs")} == _edges(dag)
    assert _assets(dag.task_dict[g + "build_graph"]) == {"g2i.graph"}
    assert _assets(dag.task_dict[g + "rerank"]) == {"g2i.neighbours"}
    assert dag.schedule == "@daily" and dag.catchup is False and dag.max_active_runs == 1
    assert set(dag.params) == {"sources", "raw", "force", "link_on", "max_links_per_value", "keep_runs"}
    assert dag.params["keep_runs"] == 7
    assert dag.params["sources"] == ["goodreads", "amazon2014", "amazon2018"]
    assert dag.params["raw"]["goodreads"] == "raw/sample/goodreads_books.json.gz"  # resolved by plan at run time
    for task in dag.tasks:
        assert task.retries >= 1 and task.retry_exponential_backoff, task.task_id
        assert task.doc_md, f"{task.task_id} has no doc_md for the UI"
    for tid in stages:
        assert dag.task_dict[g + tid].execution_timeout is not None, tid
    # The whole per-source chain is one mapped task group over plan's output.
    assert dag.task_group_dict["refresh"].__class__.__name__ == "MappedTaskGroup"


def test_g2i_train_structure(dagbag):
    dag = dagbag.dags["g2i_train"]
    assert _edges(dag) == {("prepare", "train"), ("prepare", "register"), ("train", "register")}
    assert [a.name for a in dag.schedule] == ["g2i.neighbours"]  # asset-triggered by mmag_refresh
    assert _assets(dag.task_dict["register"]) == {"g2i.model"}
    train = dag.task_dict["train"]
    assert train.task_type == "StageOperator" and type(train).__name__ == "MappedOperator"  # one per dataset
    assert train.partial_kwargs["execution_timeout"].total_seconds() == 24 * 3600
    assert {k: dag.params[k] for k in ("dataset", "graph_run_id", "preset", "steps", "batch_size", "resume",
                                       "run_id")} == {"dataset": "goodreads", "graph_run_id": "", "preset": "tiny",
                                                      "steps": 300, "batch_size": 0, "resume": True, "run_id": ""}


def test_g2i_backfill_covers_structure(dagbag):
    dag = dagbag.dags["g2i_backfill_covers"]
    assert _edges(dag) == {("plan_shards", "generate"), ("plan_shards", "check_coverage"),
                           ("generate", "check_coverage"), ("check_coverage", "generate_sample"),
                           ("check_coverage", "evaluate_sample"), ("generate_sample", "evaluate_sample"),
                           # the text-only baseline of the quality check, generated in the same run
                           ("check_coverage", "text_only"), ("text_only", "generate_sample_text_only"),
                           ("generate_sample_text_only", "evaluate_sample")}
    generate = dag.task_dict["generate"]
    assert type(generate).__name__ == "MappedOperator"  # dynamic task mapping over the shards
    assert type(dag.task_dict["generate_sample_text_only"]).__name__ == "MappedOperator"
    assert _assets(dag.task_dict["evaluate_sample"]) == {"g2i.report"}
    assert [a.name for a in dag.schedule] == ["g2i.model"]  # a new model backfills covers
    assert set(dag.params) == {"dataset", "model", "shards", "steps", "sample", "text_scale", "graph_scale",
                               "labels"}


def test_g2i_evaluate_structure(dagbag):
    dag = dagbag.dags["g2i_evaluate"]
    assert _edges(dag) == {("prepare", "generate"), ("prepare", "evaluate"), ("prepare", "publish_report"),
                           ("generate", "evaluate"), ("evaluate", "publish_report"),
                           # graph-guided and text-only are generated in the same run, then scored together
                           ("prepare", "text_only"), ("text_only", "generate_text_only"),
                           ("generate_text_only", "evaluate")}
    assert dag.schedule is None  # run by hand
    assert set(dag.params) == {"dataset", "model", "split", "steps", "limit", "text_scale", "graph_scale", "labels",
                               "backfill_run"}
    assert _assets(dag.task_dict["evaluate"]) == {"g2i.report"}
