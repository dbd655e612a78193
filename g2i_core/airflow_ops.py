"""The Airflow side of g2i's orchestration: one operator that runs a stage, the GPU-profile switch (the
only place a ``KubernetesPodOperator`` is built), default task arguments, and the Assets the DAGs
publish, whose events say which dataset and which run ids changed.

Imports only ``airflow.sdk`` and ``g2i_core.orchestration`` at module level (no torch/pyspark), and
reads no settings file while a DAG is parsed: asset names are constants, deployment knobs come from
``G2I_*`` environment variables, storage settings are resolved inside tasks (``task_settings``). The
pure logic (command lines, planning, shards) lives in ``g2i_core.orchestration``.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any, Mapping

from airflow.sdk import Asset, BaseOperator, XComArg

from g2i_core.orchestration import (
    STAGES,
    OrchestrationConfig,
    StageProcess,
    coerce_values,
    ds_nodash,
    kubernetes_pod_spec,
    run_stage,
)

log = logging.getLogger(__name__)
CFG = OrchestrationConfig.from_env()


# ---- Assets -----------------------------------------------------------------------------------------
# One asset per kind of output, for every dataset: each event's ``extra`` names the dataset and the run
# ids it produced ({"dataset", "graph_root", "graph_run_id"[, "model_run_id"]}), and consumers read them
# from ``triggering_asset_events`` (docs/orchestration.md says why this rather than one asset per source).
def _asset(name: str, what: str) -> Asset:
    return Asset(name=f"g2i.{name}", uri=f"g2i://{name}", group="g2i", extra={"what": what})


GRAPH = _asset("graph", "published graph_nodes/graph_edges of a refreshed dataset")
NEIGHBOURS = _asset("neighbours", "published neighbours table of a refreshed dataset (the model's input)")
MODEL = _asset("model", "a trained graph-conditioned diffusion model under <dataset root>/models/<run_id>/")
REPORT = _asset("report", "an evaluation report under <dataset root>/reports/<run_id>/")


# ---- task defaults ----------------------------------------------------------------------------------
def default_args(**overrides: Any) -> dict[str, Any]:
    """Retries with exponential backoff (S3 and network hiccups), owner, no e-mails."""
    args = {
        "owner": "g2i",
        "retries": CFG.retries,
        "retry_delay": dt.timedelta(seconds=CFG.retry_delay_s),
        "retry_exponential_backoff": 2.0,
        "max_retry_delay": dt.timedelta(minutes=30),
        "depends_on_past": False,
    }
    args.update(overrides)
    return args


def task_settings():
    """Settings for a running task: ``G2I_*`` environment, then the ``g2i_s3`` Airflow connection when
    one is defined (``AIRFLOW_CONN_G2I_S3`` or the metadata DB): login/password = S3 keys,
    extra ``endpoint_url`` / ``region_name``."""
    from g2i_core.config import Settings
    from g2i_core.orchestration import settings_with_connection

    settings = Settings.load()
    try:
        from airflow.sdk import BaseHook

        conn = BaseHook.get_connection(CFG.conn_id)
    except Exception:  # noqa: BLE001 - no connection defined: the environment is the whole truth
        return settings
    log.info("using Airflow connection %r for S3", CFG.conn_id)
    return settings_with_connection(settings, {"login": conn.login, "password": conn.password,
                                               "extra": conn.extra_dejson})


def run_key(context: Mapping[str, Any]) -> str:
    """``YYYYMMDD`` of the run's logical date; asset-triggered and manual runs without one use the day
    the run was scheduled for (``run_after``), so reruns of a run keep their ids."""
    when = context.get("logical_date") or context["dag_run"].run_after
    return ds_nodash(when)


def run_day(context: Mapping[str, Any]) -> str:
    """``YYYY-MM-DD`` of ``run_key``: the logical date every DAG keys its run ids by."""
    key = run_key(context)
    return f"{key[:4]}-{key[4:6]}-{key[6:]}"


def event_extras(context: Mapping[str, Any], asset: Asset) -> list[dict]:
    """The ``extra`` of every ``asset`` event that triggered this run, oldest first ([] for a manual run)."""
    events = context.get("triggering_asset_events") or {}
    found = []
    for key, evs in events.items():
        if getattr(key, "name", None) == asset.name:
            found += [(ev.timestamp, dict(ev.extra or {})) for ev in evs]
    return [extra for _, extra in sorted(found, key=lambda t: t[0])]


def variable_int(name: str, default: int) -> int:
    """An Airflow Variable as an integer (e.g. ``g2i_train_steps`` caps asset-triggered training)."""
    from airflow.sdk import Variable

    value = Variable.get(name, default=None)
    return int(value) if value not in (None, "") else int(default)


# ---- the stage operator ------------------------------------------------------------------------------
class StageOperator(BaseOperator):
    """Runs ``g2i <stage>`` (spark-submit for Spark stages on a cluster master) with values rendered for this run.

    ``values`` is templated (Jinja, XCom or a mapped argument) and holds every placeholder of the
    stage's argument template in ``g2i_core.orchestration.STAGES``. The task returns ``values`` so the
    next task receives paths and run ids, never data. Killing the task ends the whole process group."""

    template_fields = ("values",)
    template_fields_renderers = {"values": "json"}
    ui_color = "#e8f0fe"

    def __init__(self, *, stage: str, values: Any, stage_timeout: dt.timedelta | None = None, **kwargs: Any):
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; known: {sorted(STAGES)}")
        kwargs.setdefault("doc_md", f"**g2i {stage}** ({STAGES[stage].engine}). {STAGES[stage].doc}")
        kwargs.setdefault("execution_timeout", stage_timeout)
        if STAGES[stage].whole_machine and CFG.machine_pool:
            kwargs.setdefault("pool", CFG.machine_pool)  # one at a time where the pool has one slot
        super().__init__(**kwargs)
        self.stage = stage
        self.values = values
        self._proc: StageProcess | None = None

    def execute(self, context: Any) -> dict[str, Any]:
        values = coerce_values(dict(self.values))
        settings = task_settings()
        run_stage(self.stage, values, settings, on_line=self.log.info, on_start=self._remember)
        for asset in self.outlets or []:
            if isinstance(asset, Asset):
                context["outlet_events"][asset].extra = stage_event_extra(self.stage, values)
        return values

    def _remember(self, proc: StageProcess) -> None:
        self._proc = proc

    def on_kill(self) -> None:
        if self._proc is not None:
            self._proc.kill()


def stage_event_extra(stage: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """What an asset event of ``stage`` tells its consumers: the dataset and the run ids it produced."""
    extra = {"dataset": values.get("source"), "graph_root": values.get("graph_root"), "stage": stage}
    if stage in {"build-graph", "rerank"}:  # the refresh chain: its run id is the graph version
        extra["graph_run_id"] = values.get("run_id")
    else:
        extra["graph_run_id"] = values.get("graph_run_id")
        extra["run_id"] = values.get("run_id")
    return extra


def gpu_stage(task_id: str, stage: str, values: XComArg, **kwargs: Any) -> BaseOperator:
    """A GPU stage for one values dict (the output of ``values``' task) under the configured execution
    profile (``G2I_PROFILE``): ``local`` runs ``StageOperator`` on the worker; ``kubernetes`` runs the
    same command in a GPU pod (``orchestration.kubernetes_pod_spec``)."""
    if CFG.profile == "local":
        return StageOperator(task_id=task_id, stage=stage, values=values, **kwargs)
    source_task = values.operator.task_id
    pod = _PodFactory(stage, **kwargs).single(
        task_id=task_id, arguments=["--values", f"{{{{ ti.xcom_pull(task_ids='{source_task}') | tojson }}}}"])
    values >> pod
    return pod


def gpu_stage_mapped(task_id: str, stage: str, values: XComArg, **kwargs: Any) -> BaseOperator:
    """Like ``gpu_stage`` but mapped: one task (or GPU pod) per values dict in ``values`` (a list XCom)."""
    if CFG.profile == "local":
        return StageOperator.partial(task_id=task_id, stage=stage, **kwargs).expand(values=values)
    from airflow.sdk import task

    @task(task_id=f"{task_id}_arguments")
    def as_arguments(items: list[dict]) -> list[list[str]]:
        import json

        return [["--values", json.dumps(item)] for item in items]

    return _PodFactory(stage, **kwargs).mapped(task_id=task_id, arguments=as_arguments(values))


class _PodFactory:
    """The one place a ``KubernetesPodOperator`` is built (kubernetes profile): trainer image, GPU request
    on the GPU node pool, settings from the ConfigMap, S3 keys from the Secret, the weights PVC."""

    def __init__(self, stage: str, **kwargs: Any):
        # Imported only with the kubernetes profile, so the local profile never pays for it at parse time.
        from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
        from airflow.providers.cncf.kubernetes.secret import Secret
        from kubernetes.client import models as k8s

        spec = kubernetes_pod_spec(stage, "", CFG)
        kwargs.update(_models_volume(spec, k8s))
        kwargs.setdefault("doc_md", f"**g2i {stage}** on a GPU pod ({spec['image']}). {STAGES[stage].doc}")
        self.operator = KubernetesPodOperator
        self.common = dict(
            name=spec["name"], namespace=spec["namespace"], image=spec["image"], cmds=spec["cmds"],
            env_from=[k8s.V1EnvFromSource(config_map_ref=k8s.V1ConfigMapEnvSource(name=spec["configmap"]))],
            secrets=[Secret("env", None, spec["secret"])],
            container_resources=k8s.V1ResourceRequirements(limits={"nvidia.com/gpu": spec["gpu"]},
                                                           requests={"nvidia.com/gpu": spec["gpu"]}),
            node_selector=spec["node_selector"], tolerations=[k8s.V1Toleration(**t) for t in spec["tolerations"]],
            get_logs=True, do_xcom_push=False, on_finish_action="delete_succeeded_pod", **kwargs)

    def single(self, *, task_id: str, arguments: list[str]) -> BaseOperator:
        return self.operator(task_id=task_id, arguments=arguments, **self.common)

    def mapped(self, *, task_id: str, arguments: XComArg) -> BaseOperator:
        return self.operator.partial(task_id=task_id, **self.common).expand(arguments=arguments)


def _models_volume(spec: dict, k8s: Any) -> dict[str, Any]:
    """Read-only /models mount of the weights PVC (sd15 preset), when one is configured."""
    if not spec["models_pvc"]:
        return {}
    claim = k8s.V1PersistentVolumeClaimVolumeSource(claim_name=spec["models_pvc"], read_only=True)
    return {"volumes": [k8s.V1Volume(name="models", persistent_volume_claim=claim)],
            "volume_mounts": [k8s.V1VolumeMount(name="models", mount_path="/models", read_only=True)]}
