"""
### g2i_train — train the graph-conditioned diffusion model

Runs when `mmag_refresh` publishes new neighbour tables (**g2i.neighbours**) or by hand with params.

`prepare` checks that the dataset's graph and neighbours are published and fixes the run id
(`train-<YYYYMMDD>` of the logical date, or params.run_id) → `train` → emits **g2i.model**
(which triggers `g2i_backfill_covers`).

* **Execution profile** (`G2I_PROFILE`): `local` runs `g2i train` as a subprocess on the worker (the
  tiny preset trains on CPU in minutes); `kubernetes` runs it in the trainer image on the GPU node
  pool (`nvidia.com/gpu` request), same command.
* **Resume**: `resume=true` continues from the run's latest `checkpoint-<step>`; a retried task
  resumes too, so a lost pod costs at most one checkpoint interval.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import Param, dag, task

from g2i_core.airflow_ops import MODEL, NEIGHBOURS, default_args, gpu_stage
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
        "dataset": Param("goodreads", enum=list(SOURCES), description="which source's MMAG to train on"),
        "preset": Param("tiny", enum=["tiny", "sd15"], description="tiny: CPU, random init; sd15: real weights"),
        "steps": Param(300, type="integer", minimum=1, description="optimizer steps"),
        "batch_size": Param(0, type="integer", minimum=0, description="images per step (0 = the trainer's default)"),
        "resume": Param(True, type="boolean", description="continue from the run's latest checkpoint"),
        "run_id": Param("", type="string", pattern=OPTIONAL_RUN_ID_PARAM_PATTERN,
                        description="override the run id (default train-<YYYYMMDD>)"),
    },
)
def g2i_train():
    @task(doc_md="Checks the inputs are published; returns the train stage's values (paths, run id).")
    def prepare(params=None, **context) -> dict:
        from g2i_core.airflow_ops import run_key, task_settings
        from g2i_core.orchestration import prepare_train

        return prepare_train(task_settings(), dataset=params["dataset"], preset=params["preset"],
                             steps=params["steps"], resume=params["resume"], batch_size=params["batch_size"],
                             run_id=params["run_id"] or f"train-{run_key(context)}")

    @task(outlets=[MODEL], doc_md="Points models/_LATEST at the finished run (the default for generation).")
    def register(values: dict) -> dict:
        from g2i_core.airflow_ops import task_settings
        from g2i_core.orchestration import register_model

        return register_model(task_settings(), values)

    values = prepare()
    trained = gpu_stage("train", "train", values, execution_timeout=dt.timedelta(hours=24))
    trained >> register(values)


g2i_train()
