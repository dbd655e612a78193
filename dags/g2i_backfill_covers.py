"""
### g2i_backfill_covers — generate covers for nodes that have none

Runs when a new model is published (**g2i.model**) or by hand.

`plan_shards` resolves the model and the dataset's target set (every node without a usable real
image) and fans out `generate` over `shards` mapped tasks (dynamic task mapping; each shard is a
stable hash partition of the target ids, so the shards cover every target exactly once) →
`check_coverage` asserts exactly that on the published shard manifests. Covers have no ground
truth, so `generate_sample` + `evaluate_sample` measure the same model and settings on a sample of
test nodes that do have a real cover (report under `reports/backfill-<YYYYMMDD>-check/`).

Idempotent: the generation run id is `backfill-<YYYYMMDD>`; a retried or rerun shard skips what it
already published and only generates the missing requests.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import Param, dag, task

from g2i_core.airflow_ops import MODEL, REPORT, StageOperator, default_args, gpu_stage_mapped
from g2i_core.ids import OPTIONAL_RUN_ID_PARAM_PATTERN
from g2i_core.orchestration import SOURCES, OrchestrationConfig

CFG = OrchestrationConfig.from_env()


@dag(
    dag_id="g2i_backfill_covers",
    schedule=[MODEL],
    start_date=dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc),
    catchup=False,
    max_active_runs=1,
    default_args=default_args(),
    doc_md=__doc__,
    tags=["g2i", "generate", "gpu"],
    params={
        "dataset": Param("goodreads", enum=list(SOURCES)),
        "model": Param("", type="string", pattern=OPTIONAL_RUN_ID_PARAM_PATTERN,
                       description="model run id (default: the latest trained model)"),
        "shards": Param(CFG.backfill_shards, type="integer", minimum=1, maximum=1024),
        "steps": Param(20, type="integer", minimum=1, description="denoising steps"),
        "sample": Param(CFG.backfill_sample, type="integer", minimum=2,
                        description="test nodes (with a real cover) generated and scored as the quality check"),
    },
)
def g2i_backfill_covers():
    @task(doc_md="Resolves the model; returns one values dict per shard (the mapped generate tasks).")
    def plan_shards(params=None, **context) -> list[dict]:
        from g2i_core.airflow_ops import run_key, task_settings
        from g2i_core.orchestration import plan_backfill

        return plan_backfill(task_settings(), dataset=params["dataset"], model=params["model"],
                             shards=params["shards"], steps=params["steps"], run_id=f"backfill-{run_key(context)}")

    @task(doc_md="Every target generated exactly once across the shards; returns the quality-check values.")
    def check_coverage(shards: list[dict], params=None) -> dict:
        from g2i_core.airflow_ops import task_settings
        from g2i_core.orchestration import check_backfill_coverage

        return check_backfill_coverage(task_settings(), shards, sample=params["sample"])

    shards = plan_shards()
    generated = gpu_stage_mapped("generate", "generate", shards, execution_timeout=dt.timedelta(hours=6))
    checked = check_coverage(shards)
    generated >> checked
    sample = StageOperator(task_id="generate_sample", stage="generate", values=checked,
                           execution_timeout=dt.timedelta(hours=2))
    evaluate = StageOperator(task_id="evaluate_sample", stage="evaluate", values=checked, outlets=[REPORT],
                             execution_timeout=dt.timedelta(hours=2))
    sample >> evaluate


g2i_backfill_covers()
