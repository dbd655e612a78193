"""Orchestration helpers the Airflow DAGs use: one table of stage command lines, the spark-submit
argument builder, execution profiles, run ids from the logical date, ingest planning and shards.

Pure Python (stdlib + ``g2i_core.config``): importing this never imports Airflow, torch or pyspark,
so DAG files stay fast to parse and everything here is unit-tested without a scheduler.

The one place to change when a stage's flags change is ``STAGES`` below: each entry is the stage's
``g2i <stage>`` argument template. A placeholder token ``{name}`` that is ``None``/``False`` drops
itself and the ``--flag`` before it; ``True`` keeps only the flag; a list expands to several tokens.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from g2i_core.config import PROJECT_ROOT, SECRET_FIELDS, Settings
from g2i_core.ids import check_raw_uri, check_run_id

log = logging.getLogger(__name__)

SOURCES = ("goodreads", "amazon2014", "amazon2018")
PROFILES = ("local", "kubernetes")
# spark-submit conf keys that carry secrets: never on a command line (visible in `ps` and task logs);
# the job's own get_spark() sets them from the G2I_* environment instead.
_SECRET_CONF = ("spark.hadoop.fs.s3a.access.key", "spark.hadoop.fs.s3a.secret.key")


# ---- 1. the stage table ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Stage:
    name: str  # the `g2i <name>` subcommand
    engine: str  # "spark": spark-submit; "python": a subprocess; "gpu": subprocess or a GPU pod
    args: str  # argument template, see the module docstring
    doc: str = ""


STAGES: dict[str, Stage] = {s.name: s for s in [
    Stage("ingest", "spark",
          "--source {source} --raw {raw} --out {graph_root} --mode {mode} --logical-date {ds} --run-id {run_id}",
          "Spark: raw dump -> `nodes`, `edges`, `quarantine` (full dump or a delta upserted into the last version)."),
    Stage("fetch-images", "python", "--in {graph_root} --run-id {run_id}",
          "Downloads `nodes.image_url` with bounded concurrency into content-addressed `images/` + `node_images`."),
    Stage("build-graph", "spark", "--in {graph_root} --run-id {run_id}",
          "Spark: cleaned `graph_nodes`, `graph_edges`, split and stats."),
    Stage("ppr", "python", "--edges {graph_root} --out {graph_root} --run-id {run_id}",
          "Personalized PageRank top-K candidates per node (`ppr_candidates`; single-machine propagation by default, "
          "`--method spark-push|graphframes` for the distributed engines)."),
    Stage("embed", "python", "--root {graph_root} --run-id {run_id}",
          "Text/image embeddings of every node (`embeddings/<encoder>`)."),
    Stage("rerank", "python", "--root {graph_root} --run-id {run_id}",
          "Semantic re-rank of the PPR candidates -> publishes `neighbours` (top-k per node), what the model reads."),
    Stage("train", "gpu", "--root {graph_root} --run-id {run_id} --preset {preset} --steps {steps} --batch-size {batch_size} "
          "--resume={resume}",
          "Trains the graph-conditioned diffusion model -> `models/<run_id>/`."),
    Stage("generate", "gpu",
          "--model {model} --run-id {generations} --split {split} --backfill {backfill} --shard {shard} "
          "--steps {steps} --limit {limit}",
          "Generates images for one shard (`i/n`) of a node set -> `generations/<run_id>/`."),
    Stage("evaluate", "gpu", "--run-id {run_id} --generations g2i={generations}",
          "Evaluation suite -> `reports/<run_id>/` (metrics.json, report.html, grids)."),
]}

SPARK_JOBS_DIR = PROJECT_ROOT / "jobs"


def render_args(template: str, values: Mapping[str, Any], *, stage: str = "?") -> list[str]:
    """Fill an argument template; see the module docstring for the None/bool/list rules."""
    out: list[str] = []
    for token in shlex.split(template):
        if token.startswith("{") and token.endswith("}") and token.count("{") == 1:
            key = token[1:-1]
            if key not in values:
                raise KeyError(f"stage {stage!r} needs a value for {{{key}}}; given: {sorted(values)}")
            value = values[key]
            if value is None or value is False:
                if out and out[-1].startswith("--"):
                    out.pop()
                continue
            if value is True:
                continue
            out.extend(str(v) for v in value) if isinstance(value, (list, tuple)) else out.append(str(value))
            continue
        try:
            out.append(token.format(**values))
        except KeyError as exc:
            raise KeyError(f"stage {stage!r} needs a value for {{{exc.args[0]}}}; given: {sorted(values)}") from None
    return out


# ---- 2. command lines: g2i subprocess, spark-submit, container ----------------------------------------
def venv_bin(name: str) -> str:
    """An executable next to the running interpreter (the venv's spark-submit, g2i), else on PATH."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def spark_submit_argv(settings: Settings, script: str, args: Sequence[str], *, app_name: str,
                      deploy_mode: str = "client") -> list[str]:
    """``spark-submit`` with every project Spark setting (master, memory, jars, s3a), secrets left out."""
    from g2i_core.spark import spark_conf  # light: pyspark is imported only inside get_spark()

    conf = spark_conf(settings, app_name)
    argv = [venv_bin("spark-submit"), "--master", conf.pop("spark.master"), "--deploy-mode", deploy_mode,
            "--name", conf.pop("spark.app.name")]
    jars = conf.pop("spark.jars", "")
    if jars:
        argv += ["--jars", jars]
    for key in sorted(conf):
        if key in _SECRET_CONF:
            continue
        argv += ["--conf", f"{key}={conf[key]}"]
    return argv + [script, *args]


def spark_entry(stage: str) -> tuple[str, list[str]]:
    """The script spark-submit runs for a stage: ``jobs/<stage>.py`` when it exists, else the g2i CLI
    (both take the same flags; the CLI needs the subcommand name first)."""
    job = SPARK_JOBS_DIR / f"{stage.replace('-', '_')}.py"
    if job.exists():
        return str(job), []
    return str(PROJECT_ROOT / "g2i_core" / "cli.py"), [stage]


def stage_argv(stage: str, values: Mapping[str, Any], settings: Settings, *, container: bool = False) -> list[str]:
    """The full command line of one stage.

    ``container=True`` gives the argv for a pod whose image has ``g2i`` installed (kubernetes profile)."""
    spec = _stage(stage)
    args = render_args(spec.args, values, stage=stage)
    if container:
        return ["g2i", stage, *args]
    if spec.engine == "spark":
        script, prefix = spark_entry(stage)
        return spark_submit_argv(settings, script, [*prefix, *args], app_name=f"g2i-{stage}-{values.get('run_id', '')}")
    return [sys.executable, "-m", "g2i_core.cli", stage, *args]


def _stage(stage: str) -> Stage:
    if stage not in STAGES:
        raise KeyError(f"unknown stage {stage!r}; known stages: {sorted(STAGES)}")
    return STAGES[stage]


def settings_env(settings: Settings) -> dict[str, str]:
    """``G2I_*`` variables that reproduce ``settings`` in a child process (secrets included: env only)."""
    env = {}
    for f in fields(settings):
        value = getattr(settings, f.name)
        env[f"G2I_{f.name.upper()}"] = str(value).lower() if isinstance(value, bool) else str(value)
    return env


def stage_env(settings: Settings, base: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    env.update(settings_env(settings))
    env.setdefault("PYSPARK_PYTHON", sys.executable)
    env.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def redact_argv(argv: Sequence[str], settings: Settings) -> str:
    """The command line as a string safe for logs (no secret values)."""
    secrets = [getattr(settings, n) for n in SECRET_FIELDS if getattr(settings, n)]
    text = shlex.join(argv)
    for s in secrets:
        text = text.replace(s, "***")
    return text


# ---- 3. running a stage ------------------------------------------------------------------------------
class StageFailed(RuntimeError):
    pass


@dataclass
class StageProcess:
    """One stage as a child process in its own process group, its output streamed line by line.

    ``kill()`` ends the whole group (spark-submit's JVM and its Python workers included), which is what
    Airflow's ``on_kill`` calls when a task is stopped or times out."""

    argv: list[str]
    env: dict[str, str]
    on_line: Callable[[str], None] = print
    cwd: str = str(PROJECT_ROOT)
    proc: subprocess.Popen | None = field(default=None, init=False)

    def run(self, timeout_s: float | None = None) -> int:
        self.proc = subprocess.Popen(self.argv, env=self.env, cwd=self.cwd, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
                                     errors="replace", preexec_fn=_own_group_dies_with_parent)
        start = time.monotonic()
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.on_line(line.rstrip("\n"))
            if timeout_s and time.monotonic() - start > timeout_s:
                self.kill()
                raise StageFailed(f"stage exceeded {timeout_s:.0f}s and was killed")
        return self.proc.wait()

    def kill(self, grace_s: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        except ProcessLookupError:
            pass


def _own_group_dies_with_parent() -> None:
    """In the child before exec: own process group (so ``kill()`` reaches every descendant) and, on
    Linux, SIGKILL when the task process dies — even by SIGKILL — so no orphaned job keeps writing."""
    os.setsid()
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)


# ---- 4. run ids, roots, planning ---------------------------------------------------------------------
def ds_nodash(logical_date: Any) -> str:
    """``YYYYMMDD`` of a logical date (datetime/date or ``YYYY-MM-DD`` string)."""
    text = logical_date.isoformat() if hasattr(logical_date, "isoformat") else str(logical_date)
    day = text[:10]
    if len(day) != 10 or day[4] != "-" or day[7] != "-":
        raise ValueError(f"logical date must look like YYYY-MM-DD..., got {logical_date!r}")
    return day.replace("-", "")


def run_id_for(prefix: str, logical_date: Any) -> str:
    """Run id of a task's output for its logical date: a rerun of the same date replaces it."""
    return f"{prefix}-{ds_nodash(logical_date)}"


def graph_root(storage_root: str, source: str) -> str:
    """Where one source's MMAG (nodes ... neighbours) lives."""
    return f"{storage_root.rstrip('/')}/mmag/{source}"


def raw_defaults(storage_root: str) -> dict[str, str]:
    """The sample dumps `g2i sample --upload` puts in storage, per source."""
    base = f"{storage_root.rstrip('/')}/raw/sample"
    return {"goodreads": f"{base}/goodreads_books.json.gz", "amazon2014": f"{base}/meta_Books_2014.json.gz",
            "amazon2018": f"{base}/meta_Books_2018.json.gz"}


def delta_uri(storage_root: str, source: str, logical_date: Any) -> str:
    """Where an incremental dump for one day is dropped: ``raw/delta/<source>/<YYYYMMDD>/``."""
    return f"{storage_root.rstrip('/')}/raw/delta/{source}/{ds_nodash(logical_date)}"


def state_uri(storage_root: str, source: str) -> str:
    return f"{storage_root.rstrip('/')}/_state/mmag_refresh/{source}.json"


def fingerprint(objects: Iterable[tuple[str, int, str]]) -> str:
    """Stable digest of (uri, size, etag) triples: changes iff the raw input changed."""
    h = hashlib.sha256()
    for uri, size, etag in sorted(objects):
        h.update(f"{uri}\0{size}\0{etag}\n".encode())
    return h.hexdigest()[:32]


@dataclass(frozen=True)
class SourceState:
    """What the last successful refresh of a source consumed (stored at ``state_uri``)."""

    logical_date: str
    full_fingerprint: str
    mode: str

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> "SourceState | None":
        if not data:
            return None
        return cls(data["logical_date"], data["full_fingerprint"], data["mode"])


def plan_source(source: str, *, ds: str, raw: str, full_fingerprint: str, delta: str | None,
                state: SourceState | None, published: bool, force: bool = False) -> dict | None:
    """Decide what the refresh does for one source on logical date ``ds`` (YYYY-MM-DD).

    - a delta dropped for ``ds`` and a published graph to merge it into -> ``delta`` ingest of it;
    - a changed full dump, nothing published yet, ``force``, or a rerun of the date that last processed
      this source -> ``full`` ingest (a rerun replaces the same run id: no duplicates);
    - otherwise ``None``: nothing new arrived, the source is skipped.
    """
    rerun = state is not None and state.logical_date == ds
    if delta and published and not force:
        mode, uri = "delta", delta
    elif force or not published or rerun or state is None or state.full_fingerprint != full_fingerprint:
        mode, uri = "full", raw
    else:
        return None
    return {"source": source, "raw": uri, "mode": mode, "ds": ds, "run_id": run_id_for(source, ds),
            "full_fingerprint": full_fingerprint}


def coverage_report(targets: Iterable[str], generated: Iterable[str]) -> dict[str, list[str]]:
    """How a sharded run covered its targets: ``duplicated`` (generated more than once), ``missing``
    (never generated) and ``unexpected`` (not a target). All empty means exactly-once coverage."""
    targets, generated = list(targets), list(generated)
    seen: dict[str, int] = {}
    for node in generated:
        seen[node] = seen.get(node, 0) + 1
    return {"duplicated": sorted(n for n, c in seen.items() if c > 1),
            "missing": sorted(set(targets) - set(seen)),
            "unexpected": sorted(set(seen) - set(targets))}


# ---- 5. execution profiles ---------------------------------------------------------------------------
@dataclass(frozen=True)
class OrchestrationConfig:
    """Deployment knobs of the DAGs, from the environment (``G2I_*``) so that the DAG files stay the
    same on a laptop and a cluster."""

    profile: str = "local"  # where GPU stages run: "local" subprocess or "kubernetes" pod
    k8s_namespace: str = "g2i"
    trainer_image: str = "ghcr.io/g2i/g2i-trainer:latest"
    gpu_count: int = 1
    gpu_node_selector: str = "g2i.io/pool=gpu"  # key=value of the GPU node pool
    k8s_secret: str = "g2i-s3"  # Kubernetes Secret holding G2I_S3_ACCESS_KEY / G2I_S3_SECRET_KEY
    models_pvc: str = ""  # PVC with sd15/CLIP/DINOv2 weights, mounted read-only at /models in GPU pods
    retries: int = 2
    retry_delay_s: int = 60  # first retry delay; doubles each retry (exponential backoff)
    backfill_shards: int = 4
    backfill_sample: int = 64  # generated covers scored by the backfill's evaluate step
    conn_id: str = "g2i_s3"  # Airflow connection with the S3 endpoint and keys (optional)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "OrchestrationConfig":
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(f"G2I_{f.name.upper()}")
            if raw is None:
                continue
            if f.type in ("int", int):
                try:
                    values[f.name] = int(raw)
                except ValueError:
                    raise ValueError(f"G2I_{f.name.upper()} must be an integer, got {raw!r}") from None
            else:
                values[f.name] = raw
        cfg = cls(**values)
        if cfg.profile not in PROFILES:
            raise ValueError(f"G2I_PROFILE must be one of {PROFILES}, got {cfg.profile!r}")
        if cfg.backfill_shards < 1:
            raise ValueError(f"G2I_BACKFILL_SHARDS must be >= 1, got {cfg.backfill_shards}")
        return cfg

    def node_selector(self) -> dict[str, str]:
        key, _, value = self.gpu_node_selector.partition("=")
        return {key: value} if key else {}


def kubernetes_pod_spec(stage: str, values_template: str, settings: Settings,
                        cfg: OrchestrationConfig) -> dict[str, Any]:
    """What a GPU pod for one stage needs: the trainer image runs
    ``python -m g2i_core.orchestration stage <stage> --values <json>`` (the same command table as the
    local profile), asks for ``cfg.gpu_count`` GPUs on the GPU node pool, gets non-secret settings as
    env values and the S3 keys from the ``cfg.k8s_secret`` Secret."""
    _stage(stage)
    secret_env = {f"G2I_{n.upper()}" for n in SECRET_FIELDS}
    return {
        "namespace": cfg.k8s_namespace,
        "image": cfg.trainer_image,
        "name": f"g2i-{stage}",
        "cmds": ["python", "-m", "g2i_core.orchestration", "stage", stage],
        "arguments": ["--values", values_template],
        "env": {k: v for k, v in settings_env(settings).items() if k not in secret_env},
        "secret": cfg.k8s_secret,
        "gpu": str(cfg.gpu_count),
        "node_selector": cfg.node_selector(),
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "models_pvc": cfg.models_pvc,
    }


def settings_with_connection(settings: Settings, conn: Mapping[str, Any] | None) -> Settings:
    """Apply an Airflow S3 connection (login/password = keys, extra.endpoint_url/region_name)."""
    if not conn:
        return settings
    extra = conn.get("extra") or {}
    if isinstance(extra, str):
        extra = json.loads(extra or "{}")
    changes = {"s3_access_key": conn.get("login") or settings.s3_access_key,
               "s3_secret_key": conn.get("password") or settings.s3_secret_key,
               "s3_endpoint": extra.get("endpoint_url", settings.s3_endpoint),
               "s3_region": extra.get("region_name", settings.s3_region)}
    return settings.replace(**changes)


# ---- 6. entry points: `python -m g2i_core.orchestration stage|dag-test` --------------------------------
def coerce_values(values: Mapping[str, Any]) -> dict[str, Any]:
    """Values that went through Jinja come back as strings: 'True'/'False'/'None' -> Python values."""
    table = {"True": True, "true": True, "False": False, "false": False, "None": None, "": None}
    return {k: table.get(v, v) if isinstance(v, str) else v for k, v in values.items()}


def run_stage(stage: str, values: Mapping[str, Any], settings: Settings, *,
              on_line: Callable[[str], None] = print, on_start: Callable[[StageProcess], None] | None = None,
              timeout_s: float | None = None) -> None:
    """Run one stage to completion; raise ``StageFailed`` (with the exit code) when it fails.

    The stage's storage root is the dataset's graph root (``values['graph_root']``), so stages that take
    no root flag (generate, evaluate) read and write the same MMAG as the others."""
    if stage == "ingest":  # the DAG path reads only the storage root's raw/ or the allow-list (g2i_core.ids)
        check_raw_uri(str(values.get("raw", "")), settings)
    if values.get("graph_root"):
        settings = settings.replace(storage_root=values["graph_root"])
    argv = stage_argv(stage, coerce_values(values), settings)
    on_line(f"[g2i] {redact_argv(argv, settings)}")
    proc = StageProcess(argv, stage_env(settings), on_line=on_line)
    if on_start:
        on_start(proc)
    try:
        rc = proc.run(timeout_s)
    finally:
        proc.kill()  # no-op when it ended; ends the process group when we are interrupted
    if rc != 0:
        raise StageFailed(f"g2i {stage} exited with code {rc} (command: {redact_argv(argv, settings)})")


def dag_test(dag_id: str, logical_date: str, conf: Mapping[str, Any] | None = None,
             dags_folder: str | None = None) -> int:
    """Run one DAG run in-process with ``dag.test()`` (needs AIRFLOW_HOME with a migrated database);
    prints each task's state and duration and returns 0 only when the run succeeded."""
    import datetime as dt

    from airflow.dag_processing.dagbag import DagBag

    folder = dags_folder or str(PROJECT_ROOT / "dags")
    bag = DagBag(folder)
    if bag.import_errors:
        for path, err in bag.import_errors.items():
            print(f"import error in {path}:\n{err}", file=sys.stderr)
        return 2
    if dag_id not in bag.dags:
        print(f"no DAG {dag_id!r} in {folder}; found {sorted(bag.dags)}", file=sys.stderr)
        return 2
    when = dt.datetime.fromisoformat(logical_date).replace(tzinfo=dt.timezone.utc)
    start = time.monotonic()
    dr = bag.dags[dag_id].test(logical_date=when, run_conf=dict(conf or {}))
    wall = time.monotonic() - start
    for ti in sorted(dr.get_task_instances(), key=lambda t: (t.start_date is None, t.start_date or 0, t.map_index)):
        took = (ti.end_date - ti.start_date).total_seconds() if ti.start_date and ti.end_date else 0.0
        idx = f"[{ti.map_index}]" if ti.map_index >= 0 else ""
        print(f"[dag-test] {dag_id} {ti.task_id}{idx}: {ti.state} in {took:.1f}s (try {ti.try_number})")
    for name, extra in _asset_events(dr):
        print(f"[dag-test] {dag_id} asset event {name} {json.dumps(extra, sort_keys=True)}")
    print(f"[dag-test] {dag_id} logical_date={logical_date}: {dr.state} in {wall:.1f}s")
    return 0 if str(dr.state) in {"success", "DagRunState.SUCCESS"} else 1


def _asset_events(dr) -> list[tuple[str, dict]]:
    """(asset name, extra) of every asset event this DAG run emitted, from the metadata DB."""
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.execute(
            select(AssetModel.name, AssetEvent.extra).join(AssetModel, AssetEvent.asset_id == AssetModel.id)
            .where(AssetEvent.source_dag_id == dr.dag_id, AssetEvent.source_run_id == dr.run_id)
            .order_by(AssetEvent.id)).all()
    return [(name, extra or {}) for name, extra in rows]


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m g2i_core.orchestration", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    st = sub.add_parser("stage", help="run one stage from a JSON dict of template values (used inside pods)")
    st.add_argument("stage", choices=sorted(STAGES))
    st.add_argument("--values", required=True, help="JSON object of template values")
    dt_ = sub.add_parser("dag-test", help="run a DAG once with dag.test() and report task times")
    dt_.add_argument("dag_id")
    dt_.add_argument("--logical-date", required=True, help="YYYY-MM-DD")
    dt_.add_argument("--conf", default="{}", help="JSON run conf (DAG params)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # SIGTERM (pod eviction, `kill`) unwinds through run_stage's finally, which ends the job's group.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.cmd == "stage":
        try:
            run_stage(args.stage, json.loads(args.values), Settings.load(), on_line=lambda s: print(s, flush=True))
        except StageFailed as exc:
            print(str(exc), file=sys.stderr)
            return 1
        return 0
    return dag_test(args.dag_id, args.logical_date, json.loads(args.conf))


if __name__ == "__main__":
    sys.exit(main())


# ---- 7. task bodies that talk to storage (imported lazily inside tasks) ------------------------------------
def _object_facts(storage, uri: str) -> list[tuple[str, int, str]]:
    """(uri, size, etag-or-mtime) of a dump file or of every object under a prefix; [] when absent."""
    if uri.startswith("s3://"):
        from urllib.parse import urlparse

        p = urlparse(uri)
        bucket, key = p.netloc, p.path.lstrip("/")
        pages = storage.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key)
        return [(f"s3://{bucket}/{o['Key']}", int(o["Size"]), o["ETag"]) for page in pages
                for o in page.get("Contents", []) if o["Key"] == key or o["Key"].startswith(key.rstrip("/") + "/")]
    path = Path(uri[len("file://"):])
    files = [path] if path.is_file() else sorted(q for q in path.rglob("*") if q.is_file()) if path.exists() else []
    return [(f"file://{q}", q.stat().st_size, str(q.stat().st_mtime_ns)) for q in files]


def plan_refresh(settings: Settings, *, ds: str, sources: Sequence[str], raw: Mapping[str, str],
                 force: bool = False) -> list[dict]:
    """One ``plan_source`` decision per requested source; returns the values of the sources to refresh."""
    from g2i_core.storage import Storage

    unknown = [s for s in sources if s not in SOURCES]
    if unknown:
        raise ValueError(f"unknown sources {unknown}; valid: {list(SOURCES)}")
    storage = Storage.from_settings(settings)
    items = []
    for source in sources:
        if source not in raw:
            raise ValueError(f"no raw dump URI for source {source!r} in params.raw ({sorted(raw)})")
        check_raw_uri(raw[source], settings)  # a trigger user's param: only under raw/ or the allow-list
        facts = _object_facts(storage, raw[source])
        if not facts:
            raise FileNotFoundError(f"raw dump for {source} not found at {raw[source]}")
        delta = delta_uri(settings.storage_root, source, ds)
        state_path = state_uri(settings.storage_root, source)
        state = SourceState.from_json(storage.get_json(state_path) if storage.exists(state_path) else None)
        root = graph_root(settings.storage_root, source)
        item = plan_source(source, ds=ds, raw=raw[source], full_fingerprint=fingerprint(facts),
                           delta=delta if _object_facts(storage, delta) else None, state=state,
                           published=Storage.from_settings(settings, root=root).is_published("nodes"), force=force)
        log.info("plan %s: %s", source, item or "nothing new (skipped)")
        if item:
            items.append({**item, "graph_root": root})
    return items


def record_refresh(settings: Settings, items: Sequence[Mapping[str, Any]]) -> list[str]:
    """After a successful refresh: remember what each source consumed (the next run's baseline)."""
    from g2i_core.storage import Storage

    storage = Storage.from_settings(settings)
    done = []
    for item in items:
        storage.put_json(state_uri(settings.storage_root, item["source"]),
                         {"logical_date": item["ds"], "full_fingerprint": item["full_fingerprint"],
                          "mode": item["mode"], "run_id": item["run_id"]})
        done.append(item["source"])
    return done


FINAL_MODEL_FILE = "model.safetensors"  # written by `g2i train` after the last step (checkpoints live deeper)


def _root_storage(settings: Settings, dataset: str):
    from g2i_core.storage import Storage

    if dataset not in SOURCES:
        raise ValueError(f"dataset must be one of {list(SOURCES)}, got {dataset!r}")
    return Storage.from_settings(settings, root=graph_root(settings.storage_root, dataset))


def prepare_train(settings: Settings, *, dataset: str, preset: str, steps: int, resume: bool, run_id: str,
                  batch_size: int | None = None) -> dict:
    """Values of the train stage, after checking its inputs are published."""
    check_run_id(run_id)
    storage = _root_storage(settings, dataset)
    for table in ("nodes", "neighbours"):
        if not storage.is_published(table):
            raise ValueError(f"{table} is not published under {storage.root}: run mmag_refresh for {dataset} first")
    return {"source": dataset, "graph_root": storage.root, "run_id": run_id, "preset": preset, "steps": int(steps),
            "batch_size": int(batch_size) if batch_size else None, "resume": bool(resume)}


def register_model(settings: Settings, values: Mapping[str, Any]) -> dict:
    """Point ``models/_LATEST`` at a finished training run (the backfill/evaluate default model)."""
    storage = _root_storage(settings, values["source"])
    run_uri = storage.uri("models", values["run_id"])
    if not storage.exists(f"{run_uri}/{FINAL_MODEL_FILE}"):
        raise FileNotFoundError(f"training run {values['run_id']} has no final model ({FINAL_MODEL_FILE}) under "
                                f"{run_uri}: did `g2i train` finish?")
    storage.put_json(storage.uri("models", "_LATEST"), {"run_id": values["run_id"]})
    return {**values, "model": run_uri}


def resolve_model(storage, model: str) -> str:
    """Model URI for a run id, or for the latest registered model when ``model`` is empty."""
    if not model:
        pointer = storage.uri("models", "_LATEST")
        if not storage.exists(pointer):
            raise FileNotFoundError(f"no trained model under {storage.uri('models')}: run g2i_train first")
        model = storage.get_json(pointer)["run_id"]
    uri = storage.uri("models", check_run_id(model, "model"))
    if not storage.exists(f"{uri}/{FINAL_MODEL_FILE}"):
        raise FileNotFoundError(f"model run {model!r} has no final model under {uri} (finished runs: "
                                f"{sorted({u.split('/models/')[1].split('/')[0] for u in storage.list(storage.uri('models')) if u.endswith(FINAL_MODEL_FILE)})})")
    return uri


def plan_backfill(settings: Settings, *, dataset: str, model: str, shards: int, steps: int, run_id: str) -> list[dict]:
    """One values dict per shard of the cover backfill (``g2i generate --backfill --shard i``)."""
    storage = _root_storage(settings, dataset)
    model_uri = resolve_model(storage, model)
    base = {"source": dataset, "graph_root": storage.root, "model": model_uri, "split": None, "backfill": True,
            "steps": int(steps), "limit": None, "generations": run_id}
    return [{**base, "shard": f"{i}/{int(shards)}"} for i in range(int(shards))]


def check_backfill_coverage(settings: Settings, shards: Sequence[Mapping[str, Any]], *, sample: int) -> dict:
    """The published shard manifests cover every backfill target exactly once; returns evaluate values."""
    from g2i_core.generate import GenerateConfig, read_manifest, select_nodes

    first = shards[0]
    storage = _root_storage(settings, first["source"])
    run_id = first["generations"]
    generated = read_manifest(storage, run_id).column("node_id").to_pylist()
    targets = select_nodes(storage, GenerateConfig(run_id=run_id, model_uri=first["model"], backfill=True))
    problems = coverage_report(targets, generated)
    if any(problems.values()):
        raise StageFailed(f"backfill {run_id} does not cover its targets exactly once: "
                          + ", ".join(f"{len(v)} {k} (e.g. {v[:3]})" for k, v in problems.items() if v))
    log.info("backfill %s: %d targets covered exactly once by %d shards", run_id, len(targets), len(shards))
    # Covers have no ground truth, so quality is measured on a sample of test nodes that do have a real
    # image, generated with the same model and settings as the backfill.
    check_run = f"{run_id}-check"
    return {"source": first["source"], "graph_root": storage.root, "model": first["model"], "split": "test",
            "backfill": False, "shard": None, "steps": first["steps"], "limit": int(sample),
            "generations": check_run, "run_id": check_run, "targets": len(targets)}


def prepare_evaluate(settings: Settings, *, dataset: str, model: str, split: str, steps: int, run_id: str,
                     limit: int = 0) -> dict:
    storage = _root_storage(settings, dataset)
    return {"source": dataset, "graph_root": storage.root, "model": resolve_model(storage, model), "split": split,
            "backfill": False, "shard": None, "steps": int(steps), "generations": run_id, "run_id": run_id,
            "limit": int(limit) if limit else None}


def publish_report(settings: Settings, values: Mapping[str, Any]) -> dict:
    """Point ``reports/_LATEST`` at this report; returns its location and headline metrics."""
    storage = _root_storage(settings, values["source"])
    report = storage.uri("reports", values["run_id"])
    metrics = storage.get_json(f"{report}/metrics.json")
    storage.put_json(storage.uri("reports", "_LATEST"), {"run_id": values["run_id"]})
    return {"report": f"{report}/report.html", "metrics_uri": f"{report}/metrics.json",
            "headline": headline_metrics(metrics)}


def headline_metrics(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The numbers worth printing from a report's metrics.json: each method's metric means (with the
    bootstrap interval when there is one), the number of nodes, and which encoders produced them."""
    out: dict[str, Any] = {}
    for method in metrics.get("methods", []):
        for name, est in sorted(method.get("summary", {}).items()):
            if isinstance(est, Mapping) and "mean" in est:
                ci = f" [{est['lo']:.4g}, {est['hi']:.4g}]" if "lo" in est and "hi" in est else ""
                out[f"{method['name']}.{name}"] = f"{est['mean']:.4g}{ci} (n={est.get('n', '?')})"
    for key, value in (metrics.get("encoders") or {}).items():
        out[f"encoder.{key}"] = value
    checks = metrics.get("checks") or []
    if checks:
        out["checks passed"] = f"{sum(bool(c.get('passed')) for c in checks)}/{len(checks)}"
    return out
