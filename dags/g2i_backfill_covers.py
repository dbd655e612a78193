"""
### g2i_backfill_covers — generate covers for nodes that have none

Runs when a model is registered (**g2i.model**, whose event names the dataset, the model run id and
the graph run id it was trained on), or by hand with params.

`plan_shards` pins the model and graph version per dataset (events, or `params.dataset` /
`params.model`, default the registered model now) and fans out `generate` over `shards` mapped tasks
per dataset (each shard is a stable hash partition of the target ids, so the shards cover every target
exactly once) → `check_coverage` asserts exactly that on the published shard manifests. Covers have no
ground truth, so `generate_sample` + `evaluate_sample` measure the same model, graph and settings on a
sample of test nodes that do have a real cover, against the text-only baseline (`generate_sample_text_only`:
the same model with graph guidance 0). The report (`reports/backfill-<YYYYMMDD>-check/`) shows the
backfill gallery: every new cover with its title and neighbours, also written as
`generations/backfill-<YYYYMMDD>/backfill.html`.
All GPU stages go through `gpu_stage_mapped`: GPU pods under the kubernetes profile.

Idempotent: the generation run id is `backfill-<YYYYMMDD>`; a retried or rerun shard skips what it
already published and only generates the missing requests.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import Param, dag, task

from g2i_core.airflow_ops import CFG, MODEL, REPORT, default_args, gpu_stage_mapped
from g2i_core.ids import OPTIONAL_RAW_URI_PARAM_PATTERN, OPTIONAL_RUN_ID_PARAM_PATTERN
from g2i_core.orchestration import SOURCES


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
        "dataset": Param("goodreads", enum=list(SOURCES),
                         description="manual runs: which dataset (asset runs: the event's)"),
        "model": Param("", type="string", pattern=OPTIONAL_RUN_ID_PARAM_PATTERN,
                       description="manual runs: model run id (default: the registered model)"),
        "shards": Param(CFG.backfill_shards, type="integer", minimum=1, maximum=1024),
        "steps": Param(20, type="integer", minimum=1, description="denoising steps"),
        "sample": Param(CFG.backfill_sample, type="integer", minimum=2,
                        description="test nodes (with a real cover) generated and scored as the quality check"),
        # None: the model's preset decides (sd15 7.5/1.5, sd15-paper 7.5/7.5, tiny 3/4; docs/model.md)
        "text_scale": Param(None, type=["null", "number"], minimum=0,
                            description="text guidance s_T (empty: the model preset's)"),
        "graph_scale": Param(None, type=["null", "number"], minimum=0,
                             description="graph guidance s_G (empty: the model preset's)"),
        "labels": Param("", type="string", pattern=OPTIONAL_RAW_URI_PARAM_PATTERN,
                        description="node_id,community CSV under the storage root's raw/ for the quality check"),
    },
)
def g2i_backfill_covers():
    @task(doc_md="Pins model and graph run ids per dataset; returns one values dict per (dataset, shard).")
    def plan_shards(params=None, **context) -> list[dict]:
        from g2i_core.airflow_ops import event_extras, run_key, task_settings
        from g2i_core.orchestration import plan_backfill, requests_from_events

        requests = requests_from_events(event_extras(context, MODEL), "model_run_id") or [
            {"dataset": params["dataset"], "model_run_id": params["model"]}]
        return plan_backfill(task_settings(), requests=requests, shards=params["shards"], steps=params["steps"],
                             run_key=run_key(context), text_scale=params.get("text_scale"),
                             graph_scale=params.get("graph_scale"))

    @task(doc_md="Every target generated exactly once across the shards; returns the quality-check values.")
    def check_coverage(shards: list[dict], params=None) -> list[dict]:
        from g2i_core.airflow_ops import task_settings
        from g2i_core.orchestration import check_backfill_coverage

        return check_backfill_coverage(task_settings(), shards, sample=params["sample"],
                                       labels=params.get("labels") or "")

    @task(doc_md="The text-only baseline of each quality check: the same model and nodes, graph guidance 0.")
    def text_only(checks: list[dict]) -> list[dict]:
        from g2i_core.orchestration import text_only_values

        return [text_only_values(c) for c in checks]

    shards = plan_shards()
    generated = gpu_stage_mapped("generate", "generate", shards, execution_timeout=dt.timedelta(hours=6))
    checked = check_coverage(shards)
    generated >> checked
    sample = gpu_stage_mapped("generate_sample", "generate", checked, execution_timeout=dt.timedelta(hours=2))
    sample_text = gpu_stage_mapped("generate_sample_text_only", "generate", text_only(checked),
                                   execution_timeout=dt.timedelta(hours=2))
    evaluate = gpu_stage_mapped("evaluate_sample", "evaluate", checked, outlets=[REPORT],
                                execution_timeout=dt.timedelta(hours=2))
    [sample, sample_text] >> evaluate


g2i_backfill_covers()
