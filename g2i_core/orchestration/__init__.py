"""Orchestration helpers the Airflow DAGs use, without Airflow: importing this package never imports
Airflow, torch or pyspark, so DAG files stay fast to parse and everything here is unit-tested without
a scheduler.

- ``stages``    the stage table (``STAGES``: one ``g2i <stage>`` argument template each) and command lines
- ``process``   running a stage as a child process (environment, log-safe argv, process group)
- ``planning``  run ids from the logical date, dataset roots, incremental ingest planning, shard coverage
- ``k8s``       the kubernetes execution profile (deployment knobs, GPU pod spec)
- ``tasks``     task bodies that talk to storage (plan, prepare, register, resolve, check, publish)
- ``__main__``  ``python -m g2i_core.orchestration stage|dag-test``

The names below are the package's public surface; import them from here.
"""

from g2i_core.orchestration.k8s import PROFILES, OrchestrationConfig, kubernetes_pod_spec
from g2i_core.orchestration.planning import (
    DEFAULT_LINK_ON,
    DEFAULT_SOURCES,
    SOURCES,
    SourceState,
    coverage_report,
    delta_uri,
    ds_nodash,
    fingerprint,
    graph_root,
    plan_source,
    raw_defaults,
    run_id_for,
    state_uri,
)
from g2i_core.orchestration.process import (
    StageFailed,
    StageProcess,
    coerce_values,
    redact_argv,
    run_stage,
    settings_env,
    settings_with_connection,
    stage_env,
)
from g2i_core.orchestration.stages import (
    SPARK_JOBS_DIR,
    STAGES,
    Stage,
    render_args,
    spark_entry,
    spark_submit_argv,
    stage_argv,
    venv_bin,
)
from g2i_core.orchestration.tasks import (
    MODEL_COMMIT_FILE,
    check_backfill_coverage,
    collect_old_runs,
    headline_metrics,
    live_run_id,
    plan_backfill,
    plan_refresh,
    prepare_evaluate,
    prepare_train,
    publish_report,
    record_refresh,
    register_model,
    requests_from_events,
    resolve_model,
    text_only_values,
)

__all__ = [
    "DEFAULT_LINK_ON", "DEFAULT_SOURCES",
    "MODEL_COMMIT_FILE", "PROFILES", "SOURCES", "SPARK_JOBS_DIR", "STAGES", "OrchestrationConfig", "SourceState",
    "Stage", "StageFailed", "StageProcess", "check_backfill_coverage", "coerce_values", "collect_old_runs",
    "coverage_report",
    "delta_uri", "ds_nodash", "fingerprint", "graph_root", "headline_metrics", "kubernetes_pod_spec",
    "live_run_id", "plan_backfill", "plan_refresh", "plan_source", "prepare_evaluate", "prepare_train",
    "publish_report", "raw_defaults", "record_refresh", "redact_argv", "register_model", "render_args",
    "requests_from_events", "resolve_model", "run_id_for", "run_stage", "settings_env",
    "settings_with_connection", "spark_entry", "spark_submit_argv", "stage_argv", "stage_env", "state_uri",
    "text_only_values", "venv_bin",
]
