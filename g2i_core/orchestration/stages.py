"""The stage table: one ``g2i <stage>`` argument template per stage, and the command lines built from it
(a ``g2i`` subprocess, ``spark-submit`` for Spark stages on a cluster master, or the argv of a container).

A placeholder token ``{name}`` that is ``None``/``False`` drops itself and the ``--flag`` before it;
``True`` keeps only the flag; a list expands to several tokens. ``{name?}`` is an optional placeholder:
a values dict without ``name`` counts as ``None`` (values planned before the option existed still
render). Every stage takes its dataset's storage root as ``--root``.
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from g2i_core.config import PROJECT_ROOT, Settings
from g2i_core.spark import spark_master_is_cluster

# spark-submit conf keys that carry secrets: never on a command line (visible in `ps` and task logs);
# the job's own get_spark() sets them from the G2I_* environment instead.
_SECRET_CONF = ("spark.hadoop.fs.s3a.access.key", "spark.hadoop.fs.s3a.secret.key")


@dataclass(frozen=True)
class Stage:
    name: str  # the `g2i <name>` subcommand
    # "spark": spark-submit on a cluster master, else a subprocess that starts local Spark only if its engine needs it;
    # "python": a subprocess; "gpu": a subprocess or a GPU pod
    engine: str
    args: str  # argument template, see the module docstring
    doc: str = ""
    # Sizes itself to the whole machine (its memory budget and engine choice assume nothing else runs beside
    # it): on one machine such stages share the one-slot pool named by G2I_MACHINE_POOL.
    whole_machine: bool = False


STAGES: dict[str, Stage] = {s.name: s for s in [
    Stage("ingest", "spark",
          "--source {source} --raw {raw} --root {graph_root} --mode {mode} --logical-date {ds} --run-id {run_id} "
          "--link-on {link_on?} --max-links-per-value {max_links_per_value?}",
          "Raw dump -> `nodes`, `edges`, `quarantine` (full dump or a delta upserted into the last version); in the "
          "job's own process with pyarrow when the dump fits one machine and the master is not a cluster, else Spark.",
          whole_machine=True),
    Stage("fetch-images", "python", "--root {graph_root} --run-id {run_id} --graph-run-id {run_id}",
          "Downloads `nodes.image_url` with bounded concurrency into content-addressed `images/` + `node_images`."),
    Stage("build-graph", "spark", "--root {graph_root} --run-id {run_id} --graph-run-id {run_id}",
          "Cleaned `graph_nodes`, `graph_edges`, split and stats (in the job's own process when the graph fits one "
          "machine and the master is not a cluster, else as Spark jobs).", whole_machine=True),
    Stage("ppr", "python", "--root {graph_root} --run-id {run_id} --graph-run-id {run_id} --incremental {incremental?}",
          "Personalized PageRank top-K candidates per node (`ppr_candidates`; single-machine propagation by default, "
          "`--method spark-push|graphframes` for the distributed engines; a delta night refreshes the last version).",
          whole_machine=True),
    Stage("embed", "python", "--root {graph_root} --run-id {run_id} --graph-run-id {run_id}",
          "Text/image embeddings of every node (`embeddings`).", whole_machine=True),
    Stage("rerank", "python", "--root {graph_root} --run-id {run_id} --graph-run-id {run_id}",
          "Semantic re-rank of the PPR candidates -> publishes `neighbours` (top-k per node), what the model reads.",
          whole_machine=True),
    Stage("train", "gpu",
          "--root {graph_root} --run-id {run_id} --graph-run-id {graph_run_id} --preset {preset} --steps {steps} "
          "--batch-size {batch_size} --resume={resume}",
          "Trains the graph-conditioned diffusion model -> `models/<run_id>/`."),
    Stage("generate", "gpu",
          "--root {graph_root} --graph-run-id {graph_run_id} --model {model} --run-id {generations} --split {split} "
          "--backfill {backfill} --shard {shard} --steps {steps} --limit {limit} --text-scale {text_scale?} "
          "--graph-scale {graph_scale?}",
          "Generates images for one shard (`i/n`) of a node set -> `generations/<run_id>/` (graph scale 0: "
          "text-only images of the same model)."),
    Stage("evaluate", "gpu",
          "--root {graph_root} --graph-run-id {graph_run_id} --run-id {run_id} "
          "--generations graph_guided={generations} --generations {baseline?} --labels {labels?} "
          "--backfill-run {backfill_run?}",
          "Scores the graph-guided generations (and the text-only baseline) -> `reports/<run_id>/` (metrics.json, "
          "report.html with samples and the backfill gallery)."),
]}

SPARK_JOBS_DIR = PROJECT_ROOT / "jobs"


def render_args(template: str, values: Mapping[str, Any], *, stage: str = "?") -> list[str]:
    """Fill an argument template; see the module docstring for the None/bool/list rules."""
    out: list[str] = []
    for token in shlex.split(template):
        if token.startswith("{") and token.endswith("}") and token.count("{") == 1:
            key, optional = token[1:-1].rstrip("?"), token.endswith("?}")
            if key not in values and not optional:
                raise KeyError(f"stage {stage!r} needs a value for {{{key}}}; given: {sorted(values)}")
            value = values.get(key)
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
    # With a local master a Spark stage is a plain subprocess: its engine choice (ingest and build-graph run on
    # one machine when the data fits) decides whether a JVM starts at all, and get_spark() gives a local session
    # the same spark_conf as spark-submit would.
    if spec.engine == "spark" and spark_master_is_cluster(settings.spark_master):
        return spark_submit_stage_argv(stage, args, settings, run_id=values.get("run_id", ""))
    return [sys.executable, "-m", "g2i_core.cli", stage, *args]


def spark_submit_stage_argv(stage: str, args: Sequence[str], settings: Settings, *, run_id: str = "") -> list[str]:
    """``stage`` with its rendered ``args`` under spark-submit (what a cluster master gets)."""
    script, prefix = spark_entry(stage)
    return spark_submit_argv(settings, script, [*prefix, *args], app_name=f"g2i-{stage}-{run_id}")


def _stage(stage: str) -> Stage:
    if stage not in STAGES:
        raise KeyError(f"unknown stage {stage!r}; known stages: {sorted(STAGES)}")
    return STAGES[stage]
