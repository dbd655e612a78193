"""
### g2i_train — train the graph-conditioned diffusion model

Runs when `mmag_refresh` publishes a dataset's neighbours (**g2i.neighbours**), or by hand with params.

`prepare` decides what to train: one model per dataset named by the triggering events (each event
carries `dataset` and `graph_run_id`), or `params.dataset` for a manual run. The graph version is pinned
by run id here, once (`params.graph_run_id`, default: the live neighbours now), and every later task
reads exactly that version → `train` (mapped over the datasets) → `register` checks the model's commit
marker, moves `models/_LATEST` forward and emits **g2i.model** with `extra={"dataset", "model_run_id",
"graph_run_id"}` (which triggers `g2i_backfill_covers` for that dataset). A model older (by run key) than
the registered one stays off: `register` is skipped and emits no event, so no backfill runs with it.

* **Run id** `train-<YYYYMMDD>` of the run's logical date (or `params.run_id`): a retry resumes it.
* **Execution profile** (`G2I_PROFILE`): `local` runs `g2i train` as a subprocess on the worker (the
  tiny preset trains on CPU in minutes); `kubernetes` runs it in the trainer image on the GPU node
  pool (`nvidia.com/gpu` request), same command.
* **Steps**: `params.steps`; the Airflow Variable `g2i_train_steps`, when set, overrides it for every
  run (the live-scheduler test uses it for a short run).
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import Param, dag, task

from g2i_core.airflow_ops import MODEL, NEIGHBOURS, default_args, gpu_stage_mapped
from g2i_core.ids import OPTIONAL_RUN_ID_PARAM_PATTERN
from g2i_core.orchestration import SOURCES


@dag(
    dag_id="g2i_train",
    schedule=[NEIGHBOURS],
    start_date=dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc),
    catchup=False,
    max_active_runs=1,
    default_args=default_args(),
    doc_md=__doc__,
    tags=["g2i", "model", "gpu"],
    params={
        "dataset": Param("goodreads", enum=list(SOURCES),
                         description="manual runs: which source's MMAG to train on (asset runs: the event's)"),
        "graph_run_id": Param("", type="string", pattern=OPTIONAL_RUN_ID_PARAM_PATTERN,
                              description="manual runs: the MMAG run id to train on (default: the live one)"),
        "preset": Param("tiny", enum=["tiny", "tiny16", "sd15"],
                        description="tiny: CPU, random init; tiny16: tiny at 16 px, lr 1e-3 (the demo's); "
                                    "sd15: real weights"),
        "steps": Param(300, type="integer", minimum=1, description="optimizer steps"),
        "batch_size": Param(0, type="integer", minimum=0, description="images per step (0 = the trainer's default)"),
        "resume": Param(True, type="boolean", description="continue from the run's latest checkpoint"),
        "run_id": Param("", type="string", pattern=OPTIONAL_RUN_ID_PARAM_PATTERN,
                        description="override the run id (default train-<YYYYMMDD>)"),
    },
)
def g2i_train():
    @task(doc_md="Which datasets to train (events or params), each with its graph run id pinned; "
                 "returns the train stage's values per dataset (paths and run ids).")
    def prepare(params=None, **context) -> list[dict]:
        from g2i_core.airflow_ops import event_extras, run_key, task_settings, variable_int
        from g2i_core.orchestration import prepare_train, requests_from_events

        requests = requests_from_events(event_extras(context, NEIGHBOURS), "graph_run_id") or [
            {"dataset": params["dataset"], "graph_run_id": params["graph_run_id"]}]
        return prepare_train(task_settings(), requests=requests, preset=params["preset"],
                             steps=variable_int("g2i_train_steps", params["steps"]), resume=params["resume"],
                             batch_size=params["batch_size"], run_key=run_key(context), run_id=params["run_id"])

    @task(outlets=[MODEL], doc_md="Checks the model committed; moves models/_LATEST forward; emits "
                                  "g2i.model. Skipped (no event) when a later run key's model is registered.")
    def register(values: dict, **context) -> dict:
        from airflow.sdk.exceptions import AirflowSkipException

        from g2i_core.airflow_ops import task_settings
        from g2i_core.orchestration import register_model

        registered = register_model(task_settings(), values)
        if not registered["live"]:  # a skipped task emits no asset event: no backfill with a superseded model
            raise AirflowSkipException(f"{registered['model_run_id']} is older than the registered model: "
                                       "models/_LATEST unchanged, no g2i.model event")
        context["outlet_events"][MODEL].extra = {
            "dataset": registered["source"], "graph_root": registered["graph_root"],
            "model_run_id": registered["model_run_id"], "graph_run_id": registered["graph_run_id"]}
        return registered

    values = prepare()
    trained = gpu_stage_mapped("train", "train", values, execution_timeout=dt.timedelta(hours=24))
    trained >> register.expand(values=values)


g2i_train()
