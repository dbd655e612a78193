"""The kubernetes execution profile: deployment knobs from the environment and the GPU pod spec that
``airflow_ops`` turns into a ``KubernetesPodOperator``."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from typing import Any, Mapping

from g2i_core.orchestration.stages import _stage

PROFILES = ("local", "kubernetes")


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
    k8s_configmap: str = "g2i-settings"  # ConfigMap with the non-secret G2I_* settings (infra/k8s/g2i-base.yaml)
    models_pvc: str = ""  # PVC with sd15/CLIP/DINOv2 weights, mounted read-only at /models in GPU pods
    retries: int = 2
    retry_delay_s: int = 60  # first retry delay; doubles each retry (exponential backoff)
    backfill_shards: int = 4
    backfill_sample: int = 64  # generated covers scored by the backfill's evaluate step
    conn_id: str = "g2i_s3"  # Airflow connection with the S3 endpoint and keys (optional)
    # Airflow pool of the stages that size themselves to the whole machine (Stage.whole_machine); "" leaves
    # them in default_pool. `g2i airflow up` sets "g2i_machine" and creates it with one slot.
    machine_pool: str = ""

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


def kubernetes_pod_spec(stage: str, values_template: str, cfg: OrchestrationConfig) -> dict[str, Any]:
    """What a GPU pod for one stage needs: the trainer image runs
    ``python -m g2i_core.orchestration stage <stage> --values <json>`` (the same command table as the
    local profile), asks for ``cfg.gpu_count`` GPUs on the GPU node pool, gets the non-secret settings
    from the ``cfg.k8s_configmap`` ConfigMap and the S3 keys from the ``cfg.k8s_secret`` Secret. Nothing
    here reads settings: the spec is built while the DAG file is parsed."""
    _stage(stage)
    return {
        "namespace": cfg.k8s_namespace,
        "image": cfg.trainer_image,
        "name": f"g2i-{stage}",
        "cmds": ["python", "-m", "g2i_core.orchestration", "stage", stage],
        "arguments": ["--values", values_template],
        "configmap": cfg.k8s_configmap,
        "secret": cfg.k8s_secret,
        "gpu": str(cfg.gpu_count),
        "node_selector": cfg.node_selector(),
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "models_pvc": cfg.models_pvc,
    }
