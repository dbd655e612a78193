"""
### g2i_evaluate — evaluation report for a model

Run by hand (or from CI) for a model: `prepare` pins the model (default: the registered one) and
the graph version it was trained on, by run id → `generate` images for the test nodes → `evaluate`
(CLIP / DINOv2 / FID with the sd15 preset, the offline style space and feature-FID with the tiny
preset; the report says which encoder made each number) → `publish_report` points `reports/_LATEST`
at the report and returns its location and headline metrics (shown in the task's XCom). Emits
**g2i.report**.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import Param, dag, task

from g2i_core.airflow_ops import REPORT, default_args, gpu_stage
from g2i_core.ids import OPTIONAL_RUN_ID_PARAM_PATTERN
from g2i_core.orchestration import SOURCES


@dag(
    dag_id="g2i_evaluate",
    schedule=None,
    start_date=dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc),
    catchup=False,
    default_args=default_args(),
    doc_md=__doc__,
    tags=["g2i", "evaluate"],
    params={
        "dataset": Param("goodreads", enum=list(SOURCES)),
        "model": Param("", type="string", pattern=OPTIONAL_RUN_ID_PARAM_PATTERN,
                       description="model run id (default: the latest trained model)"),
        "split": Param("test", enum=["test", "val"]),
        "steps": Param(20, type="integer", minimum=1, description="denoising steps"),
        "limit": Param(0, type="integer", minimum=0, description="only the first N nodes of the split (0 = all)"),
    },
)
def g2i_evaluate():
    @task(doc_md="Resolves the model and the evaluation run id (eval-<YYYYMMDD>).")
    def prepare(params=None, **context) -> dict:
        from g2i_core.airflow_ops import run_key, task_settings
        from g2i_core.orchestration import prepare_evaluate

        return prepare_evaluate(task_settings(), dataset=params["dataset"], model=params["model"],
                                split=params["split"], steps=params["steps"], limit=params["limit"],
                                run_id=f"eval-{run_key(context)}")

    @task(doc_md="Publishes the report pointer; returns the report URI and headline metrics.")
    def publish_report(values: dict) -> dict:
        from g2i_core.airflow_ops import task_settings
        from g2i_core.orchestration import publish_report as publish

        return publish(task_settings(), values)

    values = prepare()
    generated = gpu_stage("generate", "generate", values, execution_timeout=dt.timedelta(hours=6))
    evaluated = gpu_stage("evaluate", "evaluate", values, outlets=[REPORT], execution_timeout=dt.timedelta(hours=2))
    generated >> evaluated >> publish_report(values)


g2i_evaluate()
