"""
### g2i_evaluate — evaluation report for a model

Run by hand (or from CI) for a model: `prepare` pins the model (default: the registered one), the
graph version it was trained on and the model's newest checked backfill run, by run id → `generate`
images for the test nodes with the graph, and `generate_text_only` the same nodes with graph guidance 0
(the text-only baseline, same model, same run) → `evaluate` scores both (CLIP / DINOv2 / FID with the
sd15 preset, the offline style space and feature-FID with the tiny presets; community labels from
`params.labels` when given) and writes the report: per node its title, real cover | text-only |
graph-guided and the neighbours, the metrics table, and the backfill gallery → `publish_report` points
`reports/_LATEST` at the report and returns its location and headline metrics (shown in the task's
XCom). Emits **g2i.report**.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import Param, dag, task

from g2i_core.airflow_ops import REPORT, default_args, gpu_stage
from g2i_core.ids import OPTIONAL_RAW_URI_PARAM_PATTERN, OPTIONAL_RUN_ID_PARAM_PATTERN
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
        # None: the model's preset decides (sd15 7.5/1.5, sd15-paper 7.5/7.5, tiny 3/4; docs/model.md)
        "text_scale": Param(None, type=["null", "number"], minimum=0,
                            description="text guidance s_T (empty: the model preset's)"),
        "graph_scale": Param(None, type=["null", "number"], minimum=0,
                             description="graph guidance s_G (empty: the model preset's; text-only uses 0)"),
        "labels": Param("", type="string", pattern=OPTIONAL_RAW_URI_PARAM_PATTERN,
                        description="node_id,community CSV under the storage root's raw/ (e.g. "
                                    "raw/sample/truth/goodreads_communities.csv.gz); default: the nodes "
                                    "table's community column, else k-means pseudo-labels"),
        "backfill_run": Param("", type="string", pattern=OPTIONAL_RUN_ID_PARAM_PATTERN,
                              description="backfill run shown as a gallery (default: the model's newest)"),
    },
)
def g2i_evaluate():
    @task(doc_md="Resolves the model and the evaluation run id (eval-<YYYYMMDD>).")
    def prepare(params=None, **context) -> dict:
        from g2i_core.airflow_ops import run_key, task_settings
        from g2i_core.orchestration import prepare_evaluate

        return prepare_evaluate(task_settings(), dataset=params["dataset"], model=params["model"],
                                split=params["split"], steps=params["steps"], limit=params["limit"],
                                run_id=f"eval-{run_key(context)}", text_scale=params.get("text_scale"),
                                graph_scale=params.get("graph_scale"), labels=params.get("labels") or "",
                                backfill_run=params.get("backfill_run") or "")

    @task(doc_md="The text-only baseline's generate values: the same model and nodes, graph guidance 0.")
    def text_only(values: dict) -> dict:
        from g2i_core.orchestration import text_only_values

        return text_only_values(values)

    @task(doc_md="Publishes the report pointer; returns the report URI and headline metrics.")
    def publish_report(values: dict) -> dict:
        from g2i_core.airflow_ops import task_settings
        from g2i_core.orchestration import publish_report as publish

        return publish(task_settings(), values)

    values = prepare()
    generated = gpu_stage("generate", "generate", values, execution_timeout=dt.timedelta(hours=6))
    generated_text = gpu_stage("generate_text_only", "generate", text_only(values),
                               execution_timeout=dt.timedelta(hours=6))
    evaluated = gpu_stage("evaluate", "evaluate", values, outlets=[REPORT], execution_timeout=dt.timedelta(hours=2))
    [generated, generated_text] >> evaluated >> publish_report(values)


g2i_evaluate()
