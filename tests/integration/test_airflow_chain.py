"""The asset chain under the live scheduler (``airflow_live``, shared with test_airflow_live.py), driven
only through the REST API, as a data engineer would:

1. a ``mmag_refresh`` for goodreads is triggered; its ``g2i.neighbours`` event triggers ``g2i_train``,
   whose ``g2i.model`` event triggers ``g2i_backfill_covers``: every run names goodreads and the graph
   run id of that refresh, and the covers cover their targets;
2. an amazon2018 refresh trains (and backfills) amazon2018 only; goodreads' model is not touched;
3. the first ``g2i_train`` run, cleared after the second has finished (and after a newer goodreads graph
   version went live), trains again on its own graph run id.

Small samples (80 nodes, images served on loopback by ``live_images``) and a 3-step training run (the
``g2i_train_steps`` Variable, set through the API). The @daily ``mmag_refresh`` run the scheduler creates
on start keeps failing at ``plan`` because no amazon2014 dump is uploaded, so only the runs triggered
here do work. Prints the measured time from the goodreads trigger to the published covers.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import time
from dataclasses import dataclass, field

import pytest

pytestmark = [pytest.mark.airflow, pytest.mark.s3, pytest.mark.spark, pytest.mark.slow,
              pytest.mark.timeout(3600)]

NODES = 80
TRAIN_STEPS = 3
SHARDS = 2  # G2I_BACKFILL_SHARDS of airflow_live
ACTIVE = ("queued", "running")
MODEL_COMMIT = "_COMMITTED.json"


def _when(stamp: str) -> float:
    return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


@dataclass
class Live:
    """The shared instance, its REST client and the storage its tasks write to."""

    af: object
    client: object
    storage: object
    seen_events: dict = field(default_factory=dict)

    def root(self, dataset: str):
        return self.storage.child("mmag", dataset)

    # -- logs and failure reports
    def log_text(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> str:
        """The newest attempt's task log (JSON lines turned into their messages)."""
        folder = self.af.logs_dir / f"dag_id={dag_id}" / f"run_id={run_id}" / f"task_id={task_id}"
        if map_index >= 0:
            folder = folder / f"map_index={map_index}"
        attempts = sorted(folder.glob("attempt=*.log"), key=lambda p: int(p.stem.split("=")[1]))
        if not attempts:
            return f"(no log under {folder})"
        lines = []
        for line in attempts[-1].read_text(errors="replace").splitlines():
            try:
                rec = json.loads(line)
                text = f"{rec.get('level', '')} {rec.get('event', '')}" if isinstance(rec, dict) else line
                lines.append(text)
            except ValueError:
                lines.append(line)
        return "\n".join(lines)

    def report(self, dag_id: str, run_id: str, tail: int = 40) -> str:
        """Every task's state, then the log tail of each failed (or retrying) one."""
        tis = self.client.task_instances(dag_id, run_id)
        out = [f"{dag_id} run {run_id}:"]
        out += [f"  {t['task_id']}[{t['map_index']}] {t['state']} (try {t['try_number']})" for t in tis]
        for t in tis:
            if t["state"] in ("failed", "up_for_retry", "upstream_failed"):
                text = self.log_text(dag_id, run_id, t["task_id"], t["map_index"]).splitlines()
                out.append(f"--- {t['task_id']}[{t['map_index']}] log (last {tail} lines):")
                out += [f"    {ln}" for ln in text[-tail:]]
        return "\n".join(out)

    # -- waiting
    def wait_success(self, dag_id: str, run_id: str, timeout: float) -> dict:
        try:
            run = self.client.wait_for_run(dag_id, run_id, timeout=timeout, poll=3)
        except TimeoutError as exc:
            pytest.fail(f"{exc}\n{self.report(dag_id, run_id)}")
        assert run["state"] == "success", self.report(dag_id, run_id)
        return run

    def triggered_by(self, dag_id: str, source_dag: str, source_run: str, timeout: float,
                     exclude: tuple[str, ...] = ()) -> tuple[dict, list]:
        """The run of ``dag_id`` (other than ``exclude``) created by an asset event of run ``source_run`` of
        ``source_dag``, and the events that triggered it (Airflow may collapse several into one run)."""
        from g2i_core.airflow_local import AirflowError

        deadline = time.monotonic() + timeout
        while True:
            for run in self.client.dag_runs(dag_id):
                if run["dag_run_id"] in exclude:
                    continue
                key = (dag_id, run["dag_run_id"])
                if key not in self.seen_events:  # a run's triggering events never change
                    # Airflow answers 500 while a run an event created has not started (its response model
                    # requires each created run's start_date): ask again on the next poll.
                    if not run.get("start_date"):
                        continue
                    try:
                        self.seen_events[key] = self.client.upstream_asset_events(dag_id, run["dag_run_id"])
                    except AirflowError as exc:
                        if "HTTP 500" not in str(exc):
                            raise
                        continue
                events = self.seen_events[key]
                if any(e["source_dag_id"] == source_dag and e["source_run_id"] == source_run for e in events):
                    return run, events
            if time.monotonic() > deadline:
                runs = [(r["dag_run_id"], r["run_type"], r["state"]) for r in self.client.dag_runs(dag_id)]
                pytest.fail(f"no {dag_id} run was triggered by {source_dag} run {source_run} within "
                            f"{timeout:.0f}s; {dag_id} runs: {runs}\n{self.report(source_dag, source_run)}")
            time.sleep(3)

    def active_runs(self) -> list[tuple[str, str, str]]:
        return [(d["dag_id"], r["dag_run_id"], r["state"]) for d in self.client.dags()
                for r in self.client.dag_runs(d["dag_id"]) if r["state"] in ACTIVE]

    def tasks(self, dag_id: str, run_id: str) -> dict[str, dict]:
        return {(t["task_id"] if t["map_index"] < 0 else f"{t['task_id']}[{t['map_index']}]"): t
                for t in self.client.task_instances(dag_id, run_id)}


@pytest.fixture(scope="module")
def live(airflow_live, live_images):
    """Sample dumps of goodreads and amazon2018 under the live root's ``raw/sample/`` (the refresh's default
    ``raw`` param), their covers served by ``live_images``, a short training run. At the end, waits until
    nothing runs any more so the other live tests find an idle scheduler."""
    from g2i_core.config import Settings
    from g2i_core.sample.generator import DUMP_FILES, generate_sample
    from g2i_core.storage import Storage

    env = airflow_live.env_overrides
    settings = Settings.load(storage_root=env["G2I_STORAGE_ROOT"], s3_endpoint=env["G2I_S3_ENDPOINT"],
                             s3_access_key=env["G2I_S3_ACCESS_KEY"], s3_secret_key=env["G2I_S3_SECRET_KEY"])
    storage = Storage.from_settings(settings)
    sample = live_images.directory
    generate_sample(sample, nodes=NODES, seed=23, image_base_url=live_images.base_url,
                    formats=("goodreads", "amazon2018"))
    for fmt in ("goodreads", "amazon2018"):
        dump = sample / "raw" / DUMP_FILES[fmt]
        storage.put_bytes(storage.uri("raw", "sample", dump.name), dump.read_bytes())
    client = airflow_live.client()
    client.set_variable("g2i_train_steps", str(TRAIN_STEPS), "live-scheduler test: a short training run")
    live = Live(airflow_live, client, storage)
    yield live
    deadline = time.monotonic() + 900
    while live.active_runs() and time.monotonic() < deadline:
        time.sleep(5)
    assert not live.active_runs(), f"runs still active after the chain tests: {live.active_runs()}"


@dataclass
class Chain:
    refresh: str
    train: str
    backfill: str
    graph_run: str
    train_events: list
    backfill_events: list
    seconds: dict


def run_chain(live: Live, dataset: str, *, backfill_timeout: float = 1200) -> Chain:
    """Trigger mmag_refresh for ``dataset`` and follow the assets: the train run it triggered, then the
    backfill run that train run triggered; each must succeed."""
    t0 = time.time()
    refresh = live.client.trigger("mmag_refresh", conf={"sources": [dataset]})["dag_run_id"]
    done = live.wait_success("mmag_refresh", refresh, timeout=1800)
    planned = live.client.xcom("mmag_refresh", refresh, "plan")
    assert [p["source"] for p in planned] == [dataset], planned
    train, train_events = live.triggered_by("g2i_train", "mmag_refresh", refresh, timeout=300)
    trained = live.wait_success("g2i_train", train["dag_run_id"], timeout=1200)
    backfill, backfill_events = live.triggered_by("g2i_backfill_covers", "g2i_train", train["dag_run_id"],
                                                  timeout=300)
    filled = live.wait_success("g2i_backfill_covers", backfill["dag_run_id"], timeout=backfill_timeout)
    covered = live.tasks("g2i_backfill_covers", backfill["dag_run_id"])["check_coverage"]
    seconds = {"refresh": _when(done["end_date"]) - t0,
               "train": _when(trained["end_date"]) - _when(trained["start_date"]),
               "backfill": _when(filled["end_date"]) - _when(filled["start_date"]),
               "trigger_to_covers": _when(covered["end_date"]) - t0,
               "trigger_to_backfill_success": _when(filled["end_date"]) - t0}
    return Chain(refresh, train["dag_run_id"], backfill["dag_run_id"], planned[0]["run_id"], train_events,
                 backfill_events, seconds)


@pytest.fixture(scope="module")
def goodreads(live):
    chain = run_chain(live, "goodreads")
    s = chain.seconds
    print(f"\n[live chain] goodreads ({NODES} nodes, {TRAIN_STEPS} train steps, {SHARDS} shards): trigger -> "
          f"covers checked {s['trigger_to_covers']:.0f}s, -> backfill success "
          f"{s['trigger_to_backfill_success']:.0f}s (refresh incl. queueing {s['refresh']:.0f}s, "
          f"train {s['train']:.0f}s, backfill {s['backfill']:.0f}s)")
    return chain


@pytest.fixture(scope="module")
def amazon(live, goodreads):
    g = live.root("goodreads")
    before = {"latest": g.get_json(g.uri("models", "_LATEST")),
              "marker": g.get_json(g.uri("models", live_model_run(live, goodreads), MODEL_COMMIT))}
    chain = run_chain(live, "amazon2018")
    return chain, before


def live_model_run(live: Live, chain: Chain) -> str:
    return live.client.xcom("g2i_train", chain.train, "prepare")[0]["run_id"]


def test_goodreads_refresh_trains_and_backfills_goodreads_with_its_graph_run(live, goodreads):
    from g2i_core.generate import GenerateConfig, read_manifest, select_nodes

    graph_run = goodreads.graph_run
    assert re.fullmatch(r"goodreads-\d{8}", graph_run), graph_run
    key = graph_run.split("-", 1)[1]
    # g2i_train was triggered by the refresh's g2i.neighbours event, which names goodreads and its graph run.
    events = {(e["name"], e["extra"]["dataset"], e["extra"]["graph_run_id"]) for e in goodreads.train_events}
    assert events == {("g2i.neighbours", "goodreads", graph_run)}, goodreads.train_events
    prepared = live.client.xcom("g2i_train", goodreads.train, "prepare")
    assert [(p["source"], p["graph_run_id"], p["steps"]) for p in prepared] == \
        [("goodreads", graph_run, TRAIN_STEPS)]
    model_run = prepared[0]["run_id"]
    assert model_run == f"train-{key}"
    tasks = live.tasks("g2i_train", goodreads.train)
    assert sorted(t for t in tasks if t.startswith("train")) == ["train[0]"], tasks  # one dataset trained
    registered = live.client.xcom("g2i_train", goodreads.train, "register", map_index=0)
    assert (registered["source"], registered["model_run_id"], registered["graph_run_id"]) == \
        ("goodreads", model_run, graph_run)
    # The model is goodreads' and committed: its marker (written last) names the graph run it trained on.
    g = live.root("goodreads")
    marker = g.get_json(g.uri("models", model_run, MODEL_COMMIT))
    assert (marker["run_id"], marker["graph_run_id"], marker["steps"]) == (model_run, graph_run, TRAIN_STEPS)
    assert g.get_json(g.uri("models", "_LATEST")) == \
        {"run_id": model_run, "run_key": key, "graph_run_id": graph_run}
    assert not live.storage.list(live.root("amazon2018").uri("models"))

    # g2i_backfill_covers was triggered by register's g2i.model event, and planned that model and graph run.
    assert [(e["name"], e["extra"]["dataset"], e["extra"]["model_run_id"], e["extra"]["graph_run_id"])
            for e in goodreads.backfill_events] == [("g2i.model", "goodreads", model_run, graph_run)]
    shards = live.client.xcom("g2i_backfill_covers", goodreads.backfill, "plan_shards")
    assert {(s["source"], s["model"], s["graph_run_id"]) for s in shards} == \
        {("goodreads", g.uri("models", model_run), graph_run)}
    assert sorted(s["shard"] for s in shards) == [f"{i}/{SHARDS}" for i in range(SHARDS)]
    tasks = live.tasks("g2i_backfill_covers", goodreads.backfill)
    assert {t: tasks[t]["state"] for t in tasks} == dict.fromkeys(tasks, "success"), tasks
    assert sorted(t for t in tasks if t.startswith("generate[")) == [f"generate[{i}]" for i in range(SHARDS)]
    checks = live.client.xcom("g2i_backfill_covers", goodreads.backfill, "check_coverage")
    assert [(c["source"], c["graph_run_id"]) for c in checks] == [("goodreads", graph_run)]
    generations = checks[0]["backfill_run"]
    # Independently of check_coverage: the published shard manifests are the targets, once each.
    pinned = g.pinned(graph_run)
    generated = read_manifest(pinned, generations).column("node_id").to_pylist()
    targets = select_nodes(pinned, GenerateConfig(run_id=generations, model_uri=g.uri("models", model_run),
                                                  backfill=True))
    assert targets and len(targets) == checks[0]["targets"]
    assert sorted(generated) == sorted(targets)
    assert g.exists(g.uri("reports", checks[0]["run_id"], "report.html"))


def test_the_whole_machine_stages_of_a_refresh_ran_one_at_a_time(live, goodreads):
    """`up` created the one-slot pool G2I_MACHINE_POOL names; the scheduler ran ingest, build_graph, ppr,
    embed and rerank through it, so ppr and embed (parallel in the DAG) did not overlap."""
    pool = live.client.request("GET", "/api/v2/pools/g2i_machine")
    assert pool["slots"] == 1, pool
    tasks = live.tasks("mmag_refresh", goodreads.refresh)
    names = [f"refresh.{t}[0]" for t in ("ingest", "build_graph", "ppr", "embed", "rerank")]
    assert {t: tasks[t]["pool"] for t in names} == dict.fromkeys(names, "g2i_machine"), tasks
    assert tasks["refresh.fetch_images[0]"]["pool"] == "default_pool"
    spans = sorted((_when(tasks[t]["start_date"]), _when(tasks[t]["end_date"]), t) for t in names)
    for (_, end, first), (start, _, second) in zip(spans, spans[1:], strict=False):
        assert start >= end, f"{second} started before {first} ended: {spans}"


def test_an_amazon2018_refresh_trains_and_backfills_amazon2018_only(live, goodreads, amazon):
    chain, before = amazon
    graph_run = chain.graph_run
    assert re.fullmatch(r"amazon2018-\d{8}", graph_run), graph_run
    assert {(e["extra"]["dataset"], e["extra"]["graph_run_id"]) for e in chain.train_events} == \
        {("amazon2018", graph_run)}, chain.train_events
    prepared = live.client.xcom("g2i_train", chain.train, "prepare")
    assert [(p["source"], p["graph_run_id"]) for p in prepared] == [("amazon2018", graph_run)], prepared
    tasks = live.tasks("g2i_train", chain.train)
    assert sorted(t for t in tasks if t.startswith("train")) == ["train[0]"], tasks
    a = live.root("amazon2018")
    model_run = prepared[0]["run_id"]
    marker = a.get_json(a.uri("models", model_run, MODEL_COMMIT))
    assert (marker["run_id"], marker["graph_run_id"]) == (model_run, graph_run)
    assert a.get_json(a.uri("models", "_LATEST"))["run_id"] == model_run
    # goodreads was not retrained: its pointer and its model's commit marker are exactly as before.
    g = live.root("goodreads")
    assert g.get_json(g.uri("models", "_LATEST")) == before["latest"]
    assert g.get_json(g.uri("models", before["latest"]["run_id"], MODEL_COMMIT)) == before["marker"]
    # ... and the backfill this model triggered generated amazon2018 covers only.
    shards = live.client.xcom("g2i_backfill_covers", chain.backfill, "plan_shards")
    assert {(s["source"], s["graph_run_id"]) for s in shards} == {("amazon2018", graph_run)}
    checks = live.client.xcom("g2i_backfill_covers", chain.backfill, "check_coverage")
    assert [c["source"] for c in checks] == ["amazon2018"] and checks[0]["targets"] > 0


def test_clearing_the_first_train_run_retrains_on_its_own_graph_run(live, goodreads, amazon):
    """Cleared after the amazon2018 run finished, and after a newer goodreads graph version went live, the
    first run reads its own triggering event again: same prepare values, the same graph run id on the
    command line and in the model's commit marker. ``models/_LATEST`` moves forward only by run key; the
    rerun has the same run key, so it re-registers the same model run and the pointer is unchanged."""
    first = goodreads.train
    graph_run = goodreads.graph_run
    g = live.root("goodreads")
    prepared_before = live.client.xcom("g2i_train", first, "prepare")
    model_run = prepared_before[0]["run_id"]
    latest_before = g.get_json(g.uri("models", "_LATEST"))
    marker_before = g.get_json(g.uri("models", model_run, MODEL_COMMIT))
    # A newer goodreads graph version goes live (it stands in for a later refresh, which would cost a full
    # Spark refresh): every table the train stage reads now has a newer _LATEST than the run's own.
    newer = "goodreads-29991231"
    for name in ("graph_nodes", "node_images", "neighbours"):
        g.publish_table(name, g.pinned(graph_run).read_table(name), newer, logical_date="2999-12-31")
        assert g.manifest(name)["run_id"] == newer

    live.client.clear("g2i_train", first)
    live.wait_success("g2i_train", first, timeout=1200)
    tasks = live.tasks("g2i_train", first)
    assert tasks["prepare"]["try_number"] == 2 and tasks["train[0]"]["try_number"] == 2, tasks
    assert live.client.xcom("g2i_train", first, "prepare") == prepared_before
    used = re.findall(r"--graph-run-id (\S+)", live.log_text("g2i_train", first, "train", 0))
    assert used == [graph_run], used
    marker = g.get_json(g.uri("models", model_run, MODEL_COMMIT))
    assert marker["graph_run_id"] == graph_run
    assert marker["committed_at"] > marker_before["committed_at"]  # rewritten by the rerun
    assert g.get_json(g.uri("models", "_LATEST")) == latest_before
    # The rerun's register emitted g2i.model again: that backfill also reads the model's own graph run.
    backfill, _ = live.triggered_by("g2i_backfill_covers", "g2i_train", first, timeout=300,
                                    exclude=(goodreads.backfill,))
    live.wait_success("g2i_backfill_covers", backfill["dag_run_id"], timeout=1200)
    shards = live.client.xcom("g2i_backfill_covers", backfill["dag_run_id"], "plan_shards")
    assert {(s["source"], s["graph_run_id"]) for s in shards} == {("goodreads", graph_run)}


def test_a_model_older_than_the_registered_one_stays_off_and_triggers_no_backfill(live, goodreads, amazon):
    """A g2i_train run of an earlier day (a late or backfilled run, triggered by hand with its logical
    date) finishes after today's model was registered. ``models/_LATEST`` stays on today's model (forward
    only, by run key), and ``register`` is skipped: it emits no ``g2i.model`` event, so no backfill runs with
    the older model (it would write under today's generation run id, which today's covers already hold)."""
    g = live.root("goodreads")
    latest = g.get_json(g.uri("models", "_LATEST"))
    today = dt.datetime.strptime(latest["run_key"], "%Y%m%d").replace(tzinfo=dt.timezone.utc)
    day = today - dt.timedelta(days=1)
    run = live.client.trigger("g2i_train", conf={"dataset": "goodreads", "graph_run_id": goodreads.graph_run},
                              logical_date=day.isoformat())["dag_run_id"]
    live.wait_success("g2i_train", run, timeout=1200)
    older = f"train-{day:%Y%m%d}"
    prepared = live.client.xcom("g2i_train", run, "prepare")
    assert [(p["source"], p["run_id"], p["graph_run_id"]) for p in prepared] == \
        [("goodreads", older, goodreads.graph_run)]
    assert g.get_json(g.uri("models", older, MODEL_COMMIT))["graph_run_id"] == goodreads.graph_run  # trained
    assert g.get_json(g.uri("models", "_LATEST")) == latest  # ... and not the default
    register = live.tasks("g2i_train", run)["register[0]"]
    events = live.client.asset_events(source_dag_id="g2i_train", source_run_id=run)
    assert (register["state"], events) == ("skipped", []), live.report("g2i_train", run)
