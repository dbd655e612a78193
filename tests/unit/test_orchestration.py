"""Orchestration helpers: command table, spark-submit builder, planning, coverage, profiles, processes."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import time

import pytest

from g2i_core import orchestration as orch
from g2i_core.config import Settings

SECRET = "s3cr3t-value-xyz"


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings.load(storage_root="s3://bucket", s3_endpoint="http://127.0.0.1:9", s3_access_key="AKIAEXAMPLE",
                         s3_secret_key=SECRET, spark_master="local[2]", jars_dir=str(tmp_path / "nojars"),
                         spark_local_dir=str(tmp_path / "spark"))


INGEST_VALUES = {"source": "goodreads", "raw": "s3://bucket/raw/g.json.gz", "graph_root": "s3://bucket/mmag/goodreads",
                 "mode": "full", "ds": "2024-01-01", "run_id": "goodreads-20240101"}


# ---- templates -------------------------------------------------------------------------------------
def test_render_args_fills_drops_and_expands():
    t = "--root {root} --resume {resume} --fast {fast} --limit {limit} --ids {ids} --tag run-{n}"
    got = orch.render_args(t, {"root": "s3://b/x", "resume": True, "fast": False, "limit": None,
                               "ids": ["a", "b"], "n": 3})
    assert got == ["--root", "s3://b/x", "--resume", "--ids", "a", "b", "--tag", "run-3"]


def test_render_args_names_the_missing_value():
    with pytest.raises(KeyError, match=r"stage 'ppr' needs a value for \{run_id\}"):
        orch.render_args("--root {root} --run-id {run_id}", {"root": "r"}, stage="ppr")


FULL_VALUES = {**INGEST_VALUES, "graph_run_id": "goodreads-20240101", "preset": "tiny", "steps": 5, "batch_size": 8,
               "resume": False, "model": "s3://bucket/mmag/goodreads/models/train-1", "split": "test",
               "backfill": False, "shard": "0/2", "generations": "g", "limit": None}


def test_every_stage_template_parses_with_its_own_command_parser():
    """Each STAGES template, rendered with DAG values, is a valid command line of that very stage, and
    every stage takes its dataset root as --root and (except ingest) the graph run it reads by id."""
    from g2i_core.cli import build_parser

    for name, stage in orch.STAGES.items():
        args = orch.render_args(stage.args, FULL_VALUES, stage=name)
        assert stage.engine in {"spark", "python", "gpu"} and stage.doc
        parsed = build_parser(name).parse_args([name, *args])
        root = getattr(parsed, "root", None) or getattr(parsed, "inp", None) or getattr(parsed, "out", None)
        assert root == "s3://bucket/mmag/goodreads", name
        if name != "ingest":
            assert parsed.graph_run_id == "goodreads-20240101", name


# ---- command lines ---------------------------------------------------------------------------------
INGEST_ARGS = ["--source", "goodreads", "--raw", "s3://bucket/raw/g.json.gz", "--root", "s3://bucket/mmag/goodreads",
               "--mode", "full", "--logical-date", "2024-01-01", "--run-id", "goodreads-20240101"]


def test_spark_stage_on_a_cluster_master_runs_through_spark_submit_with_project_conf_and_no_secrets(settings):
    argv = orch.stage_argv("ingest", INGEST_VALUES, settings.replace(spark_master="spark://spark-master:7077"))
    assert argv[0].endswith("spark-submit")
    assert argv[argv.index("--master") + 1] == "spark://spark-master:7077"  # from the settings only
    confs = [argv[i + 1] for i, a in enumerate(argv) if a == "--conf"]
    assert "spark.hadoop.fs.s3a.endpoint=http://127.0.0.1:9" in confs
    assert "spark.sql.shuffle.partitions=8" in confs
    assert not any("access.key" in c or "secret.key" in c for c in confs)
    assert SECRET not in " ".join(argv)
    script = argv[argv.index("--source") - 1]
    assert script.endswith(("jobs/ingest.py", "g2i_core/cli.py"))
    assert argv[-12:] == INGEST_ARGS


@pytest.mark.parametrize("stage", ["ingest", "build-graph"])
def test_spark_stage_on_a_local_master_is_a_plain_subprocess(settings, stage):
    """No spark-submit JVM up front: the stage's engine choice decides whether Spark starts (in process)."""
    values = {**INGEST_VALUES, "graph_root": "s3://bucket/mmag/goodreads"}
    for master in ("local[2]", "local", "local[*]"):
        argv = orch.stage_argv(stage, values, settings.replace(spark_master=master))
        assert argv[:4] == [sys.executable, "-m", "g2i_core.cli", stage]
        assert not any("spark-submit" in a for a in argv)
        assert SECRET not in " ".join(argv)
    assert orch.stage_argv("ingest", INGEST_VALUES, settings)[4:] == INGEST_ARGS


def test_python_and_container_stage_command_lines(settings):
    values = {"graph_root": "s3://bucket/mmag/goodreads", "run_id": "train-20240101", "graph_run_id": "goodreads-1",
              "preset": "tiny", "steps": 7, "batch_size": None, "resume": True}
    local = orch.stage_argv("train", values, settings)
    assert local[:4] == [sys.executable, "-m", "g2i_core.cli", "train"]
    assert local[4:] == ["--root", "s3://bucket/mmag/goodreads", "--run-id", "train-20240101", "--graph-run-id",
                         "goodreads-1", "--preset", "tiny", "--steps", "7", "--resume=True"]
    assert orch.stage_argv("train", values, settings, container=True)[:2] == ["g2i", "train"]
    with pytest.raises(KeyError, match="unknown stage 'trian'"):
        orch.stage_argv("trian", values, settings)


def test_settings_env_round_trips_through_settings_load(settings, monkeypatch):
    env = orch.stage_env(settings, base={"PATH": "/usr/bin"})
    for key, value in env.items():
        if key.startswith("G2I_"):
            monkeypatch.setenv(key, value)
    assert Settings.load() == settings
    assert env["PYSPARK_PYTHON"] == sys.executable
    assert orch.redact_argv(["x", f"--key={SECRET}"], settings) == "x --key=***"


def test_coerce_values_after_jinja():
    assert orch.coerce_values({"a": "True", "b": "False", "c": "None", "d": "x", "e": 3}) == \
        {"a": True, "b": False, "c": None, "d": "x", "e": 3}


# ---- run ids and planning ---------------------------------------------------------------------------
def test_run_ids_derive_from_the_logical_date_only():
    assert orch.ds_nodash("2024-03-05") == "20240305"
    assert orch.ds_nodash(dt.datetime(2024, 3, 5, 23, 59, tzinfo=dt.timezone.utc)) == "20240305"
    assert orch.run_id_for("goodreads", dt.date(2024, 3, 5)) == "goodreads-20240305"
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        orch.ds_nodash("yesterday")


def test_fingerprint_is_order_free_and_sensitive_to_content():
    a = [("s3://b/x", 10, "e1"), ("s3://b/y", 5, "e2")]
    assert orch.fingerprint(a) == orch.fingerprint(list(reversed(a)))
    assert orch.fingerprint(a) != orch.fingerprint([("s3://b/x", 10, "e9"), ("s3://b/y", 5, "e2")])


@pytest.mark.parametrize("case, state, published, delta, force, expect", [
    ("first run", None, False, None, False, "full"),
    ("unchanged dump", ("2024-01-01", "fp1", "full"), True, None, False, None),
    ("changed dump", ("2024-01-01", "fp0", "full"), True, None, False, "full"),
    ("delta arrived", ("2024-01-01", "fp1", "full"), True, "s3://b/raw/delta/goodreads/20240102", False, "delta"),
    ("delta but nothing published", None, False, "s3://b/raw/delta/goodreads/20240102", False, "full"),
    ("rerun of the same date", ("2024-01-02", "fp1", "full"), True, None, False, "full"),
    ("forced", ("2024-01-01", "fp1", "full"), True, "s3://b/raw/delta/goodreads/20240102", True, "full"),
])
def test_plan_source(case, state, published, delta, force, expect):
    plan = orch.plan_source("goodreads", ds="2024-01-02", raw="s3://b/raw/g.json.gz", full_fingerprint="fp1",
                            delta=delta, state=orch.SourceState(*state) if state else None, published=published,
                            force=force)
    if expect is None:
        assert plan is None, case
        return
    assert plan["mode"] == expect, case
    assert plan["run_id"] == "goodreads-20240102" and plan["ds"] == "2024-01-02"
    assert plan["raw"] == (delta if expect == "delta" else "s3://b/raw/g.json.gz")
    # a delta night refreshes the previous neighbour candidates; a full dump recomputes them
    ppr_argv = orch.render_args(orch.STAGES["ppr"].args, {**plan, "graph_root": "s3://b/mmag/goodreads"})
    assert ("--incremental" in ppr_argv) == (expect == "delta"), case


def test_coverage_report_finds_duplicates_gaps_and_strays():
    assert orch.coverage_report(["a", "b", "c"], ["c", "a", "b"]) == {"duplicated": [], "missing": [], "unexpected": []}
    assert orch.coverage_report(["a", "b", "c"], ["a", "a", "d"]) == \
        {"duplicated": ["a"], "missing": ["b", "c"], "unexpected": ["d"]}


def test_headline_metrics_reads_method_summaries_and_encoders():
    doc = {"methods": [{"name": "g2i", "summary": {"style_fid": {"mean": 151.74, "lo": 108.8, "hi": 193.2, "n": 8},
                                                   "community_acc": {"mean": 0.25, "n": 8}}}],
           "encoders": {"style": "g2i-style"}, "checks": [{"passed": True}, {"passed": False}], "resolution": 32}
    assert orch.headline_metrics(doc) == {"g2i.community_acc": "0.25 (n=8)",
                                          "g2i.style_fid": "151.7 [108.8, 193.2] (n=8)",
                                          "encoder.style": "g2i-style", "checks passed": "1/2"}


# ---- profiles ----------------------------------------------------------------------------------------
def test_orchestration_config_from_env_and_its_errors():
    cfg = orch.OrchestrationConfig.from_env({"G2I_PROFILE": "kubernetes", "G2I_BACKFILL_SHARDS": "16",
                                             "G2I_GPU_NODE_SELECTOR": "cloud.google.com/gke-accelerator=nvidia-l4"})
    assert (cfg.profile, cfg.backfill_shards) == ("kubernetes", 16)
    assert cfg.node_selector() == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert orch.OrchestrationConfig.from_env({}).profile == "local"
    with pytest.raises(ValueError, match="G2I_PROFILE must be one of"):
        orch.OrchestrationConfig.from_env({"G2I_PROFILE": "slurm"})
    with pytest.raises(ValueError, match="G2I_RETRIES must be an integer"):
        orch.OrchestrationConfig.from_env({"G2I_RETRIES": "many"})


def test_kubernetes_pod_spec_requests_a_gpu_and_keeps_settings_out(settings):
    cfg = orch.OrchestrationConfig(profile="kubernetes", gpu_count=2, trainer_image="registry/g2i-trainer:1")
    spec = orch.kubernetes_pod_spec("train", "{{ values }}", cfg)
    assert spec["image"] == "registry/g2i-trainer:1" and spec["gpu"] == "2"
    assert spec["cmds"] == ["python", "-m", "g2i_core.orchestration", "stage", "train"]
    assert spec["arguments"] == ["--values", "{{ values }}"]
    # settings come from the cluster (ConfigMap + Secret), never from the machine that parses the DAG
    assert spec["configmap"] == "g2i-settings" and spec["secret"] == "g2i-s3"
    assert SECRET not in repr(spec) and "s3://bucket" not in repr(spec)
    assert spec["tolerations"][0]["key"] == "nvidia.com/gpu"


def test_airflow_connection_overrides_endpoint_and_keys(settings):
    got = orch.settings_with_connection(settings, {"login": "AK", "password": "SK",
                                                   "extra": '{"endpoint_url": "https://s3.eu", "region_name": "eu-1"}'})
    got_fields = (got.s3_access_key, got.s3_secret_key, got.s3_endpoint, got.s3_region)
    assert got_fields == ("AK", "SK", "https://s3.eu", "eu-1")
    assert orch.settings_with_connection(settings, None) is settings


# ---- processes ---------------------------------------------------------------------------------------
def test_stage_process_streams_output_and_reports_the_exit_code():
    lines = []
    proc = orch.StageProcess([sys.executable, "-c", "print('one'); print('two'); raise SystemExit(3)"],
                             dict(os.environ), on_line=lines.append)
    assert proc.run() == 3
    assert lines == ["one", "two"]


def test_stage_process_kill_ends_the_whole_process_group(tmp_path):
    pidfile = tmp_path / "grandchild.pid"
    code = ("import subprocess, sys, time; p = subprocess.Popen(['sleep', '60']); "
            f"open({str(pidfile)!r}, 'w').write(str(p.pid)); print('ready', flush=True); time.sleep(60)")
    proc = orch.StageProcess([sys.executable, "-c", code], dict(os.environ), on_line=lambda s: None)
    import threading

    t = threading.Thread(target=proc.run, daemon=True)
    t.start()
    deadline = time.monotonic() + 20
    while not pidfile.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    grandchild = int(pidfile.read_text())
    proc.kill(grace_s=5)
    t.join(10)
    assert proc.proc.poll() is not None
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.kill(grandchild, 0)
        except ProcessLookupError:
            break
        subprocess.run(["true"])  # give init a moment to reap
        time.sleep(0.05)
    else:
        pytest.fail("grandchild (the stage's own subprocess) survived the kill")


def test_run_stage_failure_names_the_stage_and_code(settings, monkeypatch):
    monkeypatch.setitem(orch.STAGES, "boom", orch.Stage("boom", "python", "--x {x}", "test stage"))
    monkeypatch.setattr(orch.process, "stage_argv",
                        lambda stage, values, s, container=False: [sys.executable, "-c", "raise SystemExit(7)"])
    with pytest.raises(orch.StageFailed, match="g2i boom exited with code 7"):
        orch.run_stage("boom", {"x": 1}, settings, on_line=lambda s: None)


# ---- planning and registration against a file:// store -------------------------------------------------
def _file_settings(tmp_path) -> Settings:
    return Settings.load(storage_root=f"file://{tmp_path}/store", s3_access_key="", s3_secret_key="")


def test_plan_refresh_full_then_skip_then_changed_then_delta(tmp_path):
    import pyarrow as pa

    from g2i_core.storage import Storage

    settings = _file_settings(tmp_path)
    store = Storage.from_settings(settings)
    raw = {"goodreads": store.uri("raw", "g.json.gz")}
    store.put_bytes(raw["goodreads"], b"dump-v1")

    first = orch.plan_refresh(settings, ds="2024-01-01", sources=["goodreads"], raw=raw)
    assert [(p["source"], p["mode"], p["run_id"]) for p in first] == [("goodreads", "full", "goodreads-20240101")]
    assert first[0]["graph_root"] == store.uri("mmag", "goodreads")
    Storage(first[0]["graph_root"]).publish_table("nodes", pa.table({"node_id": ["a"]}), "goodreads-20240101")
    assert orch.record_refresh(settings, first) == ["goodreads"]

    assert orch.plan_refresh(settings, ds="2024-01-02", sources=["goodreads"], raw=raw) == []
    assert orch.plan_refresh(settings, ds="2024-01-01", sources=["goodreads"], raw=raw)[0]["mode"] == "full"  # rerun

    store.put_bytes(store.uri("raw", "delta", "goodreads", "20240103", "d.json.gz"), b"delta")
    delta = orch.plan_refresh(settings, ds="2024-01-03", sources=["goodreads"], raw=raw)
    assert [(p["mode"], p["raw"]) for p in delta] == [("delta", store.uri("raw", "delta", "goodreads", "20240103"))]

    store.put_bytes(raw["goodreads"], b"dump-v2, longer")
    assert orch.plan_refresh(settings, ds="2024-01-04", sources=["goodreads"], raw=raw)[0]["mode"] == "full"


def test_plan_refresh_errors_teach(tmp_path):
    settings = _file_settings(tmp_path)
    with pytest.raises(ValueError, match="unknown sources"):
        orch.plan_refresh(settings, ds="2024-01-01", sources=["imdb"], raw={})
    with pytest.raises(ValueError, match="no raw dump URI for source 'goodreads'"):
        orch.plan_refresh(settings, ds="2024-01-01", sources=["goodreads"], raw={})
    with pytest.raises(FileNotFoundError, match="raw dump for goodreads not found"):
        orch.plan_refresh(settings, ds="2024-01-01", sources=["goodreads"],
                          raw={"goodreads": f"file://{tmp_path}/store/raw/missing.json.gz"})
    with pytest.raises(ValueError, match="outside the allowed prefixes"):  # a trigger user's raw param
        orch.plan_refresh(settings, ds="2024-01-01", sources=["goodreads"],
                          raw={"goodreads": f"file://{tmp_path}/missing.json.gz"})


def test_train_inputs_registration_and_model_resolution(tmp_path):
    import pyarrow as pa

    from g2i_core.storage import Storage

    settings = _file_settings(tmp_path)
    request = [{"dataset": "goodreads", "graph_run_id": ""}]
    with pytest.raises(ValueError, match="run mmag_refresh for it first"):
        orch.prepare_train(settings, requests=request, preset="tiny", steps=3, resume=True, run_key="20240101")
    root = Storage(orch.graph_root(settings.storage_root, "goodreads"))
    for run in ("goodreads-20240101", "goodreads-20240102"):
        for table in ("nodes", "node_images", "neighbours"):
            root.publish_table(table, pa.table({"node_id": ["a"]}), run)
    # "" pins the live graph run once, at planning time; a named run is checked to exist
    [values] = orch.prepare_train(settings, requests=request, preset="tiny", steps=3, resume=True, run_key="20240101")
    assert values == {"source": "goodreads", "graph_root": root.root, "graph_run_id": "goodreads-20240102",
                      "run_id": "train-20240101", "preset": "tiny", "steps": 3, "batch_size": None, "resume": True,
                      "run_key": "20240101"}
    with pytest.raises(ValueError, match="neighbours run goodreads-2023 is not published"):
        orch.prepare_train(settings, requests=[{"dataset": "goodreads", "graph_run_id": "goodreads-2023"}],
                           preset="tiny", steps=3, resume=True, run_key="20240101")

    with pytest.raises(FileNotFoundError, match="run g2i_train first"):
        orch.resolve_model(root, "")
    # the final weights exist but the commit marker (written last) does not: not a finished model
    root.put_bytes(root.uri("models", "train-20240101", "model.safetensors"), b"weights")
    with pytest.raises(FileNotFoundError, match="did `g2i train` finish"):
        orch.register_model(settings, values)
    root.put_json(root.uri("models", "train-20240101", orch.MODEL_COMMIT_FILE), {"graph_run_id": "goodreads-20240102"})
    registered = orch.register_model(settings, values)
    assert registered["model"] == root.uri("models", "train-20240101")
    assert registered["graph_run_id"] == "goodreads-20240102"
    uri, marker = orch.resolve_model(root, "")
    assert uri == orch.resolve_model(root, "train-20240101")[0] == root.uri("models", "train-20240101")
    # an older run key registered later does not move models/_LATEST back
    root.put_json(root.uri("models", "train-20231231", orch.MODEL_COMMIT_FILE), {"graph_run_id": "goodreads-20240101"})
    older = orch.register_model(settings, {**values, "run_id": "train-20231231", "run_key": "20231231"})
    assert older["live"] is False and registered["live"] is True  # the DAG skips `register`: no g2i.model event
    assert orch.resolve_model(root, "")[0] == root.uri("models", "train-20240101")

    shards = orch.plan_backfill(settings, requests=[{"dataset": "goodreads", "model_run_id": ""}], shards=3,
                                steps=4, run_key="20240103")
    assert [s["shard"] for s in shards] == ["0/3", "1/3", "2/3"]
    assert all(s["backfill"] is True and s["split"] is None and s["generations"] == "backfill-20240103"
               and s["graph_run_id"] == "goodreads-20240102" for s in shards)
    argv = orch.stage_argv("generate", shards[1], settings)
    assert argv[3:] == ["generate", "--root", root.root, "--graph-run-id", "goodreads-20240102", "--model",
                        root.uri("models", "train-20240101"), "--run-id", "backfill-20240103", "--backfill",
                        "--shard", "1/3", "--steps", "4"]


def test_requests_from_events_keep_the_newest_per_dataset():
    events = [{"dataset": "goodreads", "graph_run_id": "goodreads-1"},
              {"dataset": "amazon2018", "graph_run_id": "amazon2018-1"},
              {"dataset": "goodreads", "graph_run_id": "goodreads-2"},
              {"dataset": "../etc", "graph_run_id": "x"}, {"dataset": "goodreads"}]
    assert orch.requests_from_events(events, "graph_run_id") == [
        {"dataset": "amazon2018", "graph_run_id": "amazon2018-1"},
        {"dataset": "goodreads", "graph_run_id": "goodreads-2"}]
    assert orch.requests_from_events([], "graph_run_id") == []


def test_model_commit_file_is_the_one_train_writes():
    from g2i_core.model.train import COMMIT_FILE

    assert orch.MODEL_COMMIT_FILE == COMMIT_FILE


def test_a_job_dies_with_its_task_process_even_on_sigkill():
    """The task process is SIGKILLed (no on_kill runs): its job must not live on as an orphan."""
    job_code = "import os, time; print(os.getpid(), flush=True); time.sleep(60)"
    task = ("import os, sys; from g2i_core.orchestration import StageProcess; "
            f"StageProcess([sys.executable, '-c', {job_code!r}], dict(os.environ), "
            "on_line=lambda s: print('job', s, flush=True)).run()")
    parent = subprocess.Popen([sys.executable, "-c", task], stdout=subprocess.PIPE, text=True)
    job = int(parent.stdout.readline().split()[1])
    assert not _gone(job, 0.2)  # running
    parent.kill()
    parent.wait()
    alive = not _gone(job, 10)
    if alive:
        os.kill(job, 9)
    assert not alive, "the job outlived its SIGKILLed task process"


def _gone(pid: int, within_s: float) -> bool:
    import psutil

    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:  # dead, waiting for init to reap it
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


def test_evaluate_values_add_the_text_only_baseline_labels_and_the_models_backfill(tmp_path):
    """g2i_evaluate and the backfill's check generate graph-guided and text-only (graph scale 0) in the same
    run, score both, read the labels under raw/, and show the model's newest checked backfill."""
    import numpy as np
    import pyarrow as pa

    from g2i_core.cli import build_parser
    from g2i_core.storage import Storage

    settings = _file_settings(tmp_path)
    root = Storage(orch.graph_root(settings.storage_root, "goodreads"))
    root.put_json(root.uri("models", "train-20240101", orch.MODEL_COMMIT_FILE), {"graph_run_id": "goodreads-1"})
    root.put_json(root.uri("models", "_LATEST"), {"run_id": "train-20240101"})
    values = orch.prepare_evaluate(settings, dataset="goodreads", model="", split="test", steps=10,
                                   run_id="eval-20240105", text_scale=3, graph_scale=4,
                                   labels="raw/sample/truth/goodreads_communities.csv.gz")
    assert values["backfill_run"] is None  # the model has no checked backfill yet: no gallery
    assert values["labels"] == f"{settings.storage_root}/raw/sample/truth/goodreads_communities.csv.gz"
    text = orch.text_only_values(values)
    graph_argv = orch.stage_argv("generate", values, settings)
    text_argv = orch.stage_argv("generate", text, settings)
    assert graph_argv[graph_argv.index("--run-id") + 1] == "eval-20240105"
    assert graph_argv[graph_argv.index("--graph-scale") + 1] == "4.0"
    assert text_argv[text_argv.index("--run-id") + 1] == "eval-20240105-text"
    assert text_argv[text_argv.index("--graph-scale") + 1] == "0.0"
    assert text_argv[text_argv.index("--text-scale") + 1] == graph_argv[graph_argv.index("--text-scale") + 1] == "3.0"
    assert [a for a in graph_argv if a not in {"4.0", "eval-20240105"}] == \
        [a for a in text_argv if a not in {"0.0", "eval-20240105-text"}]  # same model, nodes, seeds, steps
    eval_argv = orch.stage_argv("evaluate", values, settings)
    parsed = build_parser("evaluate").parse_args(eval_argv[3:])
    assert parsed.generations == [("graph_guided", "eval-20240105"), ("text_only", "eval-20240105-text")]
    assert parsed.labels == values["labels"] and parsed.backfill_run == ""
    with pytest.raises(ValueError, match="outside the allowed prefixes"):
        orch.prepare_evaluate(settings, dataset="goodreads", model="", split="test", steps=10, run_id="e",
                              labels="file:///etc/passwd")

    # the backfill's coverage check points the model at its backfill run (forward only) ...
    nodes = pa.table({"node_id": ["a", "b"], "text": ["A", "B"], "has_real_image": [True, False]})
    root.publish_table("graph_nodes", nodes, "goodreads-1")
    root.publish_table("node_images", pa.table({"node_id": ["a"], "image_key": ["k"], "status": ["ok"]}),
                       "goodreads-1")
    for key in ("20240102", "20240101"):
        [shard] = orch.plan_backfill(settings, requests=[{"dataset": "goodreads", "model_run_id": ""}], shards=1,
                                     steps=2, run_key=key, text_scale=3, graph_scale=4)
        from g2i_core.generate import GenerateConfig, run_shard

        run_shard(root, GenerateConfig(run_id=shard["generations"], model_uri=shard["model"], backfill=True),
                  lambda p, g, s, c: [np.zeros((8, 8, 3), np.uint8)] * len(p))
        [check] = orch.check_backfill_coverage(settings, [shard], sample=4,
                                               labels="raw/sample/truth/goodreads_communities.csv.gz")
        assert check["backfill_run"] == f"backfill-{key}" and check["labels"] == values["labels"]
        assert orch.text_only_values(check)["generations"] == f"backfill-{key}-check-text"
        check_argv = orch.stage_argv("evaluate", check, settings)
        assert build_parser("evaluate").parse_args(check_argv[3:]).backfill_run == f"backfill-{key}"
    # ... so g2i_evaluate shows the newest one (an older backfill checked later does not take it back)
    again = orch.prepare_evaluate(settings, dataset="goodreads", model="", split="test", steps=10, run_id="e")
    assert again["backfill_run"] == "backfill-20240102"
    assert orch.prepare_evaluate(settings, dataset="goodreads", model="", split="test", steps=10, run_id="e",
                                 backfill_run="backfill-20240101")["backfill_run"] == "backfill-20240101"
    # values planned before these options existed still render (optional placeholders)
    old = {k: v for k, v in values.items() if k not in {"text_scale", "graph_scale", "baseline", "labels",
                                                        "backfill_run", "text_only_generations"}}
    assert "--graph-scale" not in orch.stage_argv("generate", old, settings)
    assert orch.stage_argv("evaluate", old, settings)[-2:] == ["--generations", "graph_guided=eval-20240105"]
