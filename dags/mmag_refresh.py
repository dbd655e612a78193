"""
### mmag_refresh — nightly MMAG + neighbour refresh

For every source whose raw input changed, one mapped chain (a task group per source):

`ingest` (Spark) → `fetch_images` → `build_graph` (Spark, emits **g2i.graph**) → `ppr` ∥ `embed` →
`rerank` (publishes `neighbours`, emits **g2i.neighbours**, which triggers `g2i_train`) → `record_state` →
`collect_old_runs` (`g2i gc`: each refreshed source keeps its newest `keep_runs` runs of every table).

* **Incremental**: `plan` fingerprints each raw dump. Unchanged sources are skipped; a delta dump
  dropped under `raw/delta/<source>/<YYYYMMDD>/` is upserted into the last version (`--mode delta`).
* **Idempotent and pinned**: run ids are `<source>-<YYYYMMDD>` of the run's logical date (`run_key`);
  every stage reads the tables of exactly that run (`--graph-run-id`), and every table is committed
  atomically (a retry writes a new attempt; `_LATEST` moves last and only forward), so a rerun or a
  cleared old run reproduces its own outputs and never moves readers back.
* Emits **g2i.neighbours** per dataset with `extra={"dataset", "graph_root", "graph_run_id"}`: only that
  dataset's model is retrained.
* Params: `sources` (default the three JSON dumps; `attributes` adds the item table), `raw` (source →
  dump under the storage root's `raw/`, as `raw/...` or a full URI; other prefixes only via
  `G2I_RAW_ALLOW_PREFIXES`), `force` (re-ingest unchanged dumps), `link_on` and `max_links_per_value`
  (the `attributes` source's projection: the columns that link items, and the links per item per value).
* **Retention**: runs beyond the newest `keep_runs` (default 7; 0 keeps everything) are removed, except the
  live run, the registered model's graph run and anything published less than a day ago (g2i_core/retention.py).
* Storage root and S3 endpoint are configuration (`G2I_*` env or the `g2i_s3` connection).
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import Param, dag, task, task_group

from g2i_core.airflow_ops import GRAPH, NEIGHBOURS, StageOperator, default_args, task_settings
from g2i_core.ids import LINK_ON_PARAM_PATTERN, RAW_URI_PARAM_PATTERN
from g2i_core.orchestration import DEFAULT_LINK_ON, DEFAULT_SOURCES, SOURCES, raw_defaults

HOUR = dt.timedelta(hours=1)


@dag(
    dag_id="mmag_refresh",
    schedule="@daily",
    start_date=dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc),
    catchup=False,
    max_active_runs=1,
    default_args=default_args(),
    dagrun_timeout=12 * HOUR,
    doc_md=__doc__,
    tags=["g2i", "graph"],
    params={
        "sources": Param(list(DEFAULT_SOURCES), type="array", items={"type": "string", "enum": list(SOURCES)},
                         description="sources to refresh"),
        # Where a dump may be read from (<storage_root>/raw/ or G2I_RAW_ALLOW_PREFIXES) is checked by `plan`.
        "raw": Param(raw_defaults(), type="object",
                     propertyNames={"enum": list(SOURCES)},
                     additionalProperties={"type": "string", "pattern": RAW_URI_PARAM_PATTERN},
                     description="source -> raw dump URI (file or prefix) under the storage root's raw/"),
        "force": Param(False, type="boolean", description="re-ingest even if the dump did not change"),
        "link_on": Param(DEFAULT_LINK_ON, type="string", pattern=LINK_ON_PARAM_PATTERN,
                         description="attributes source: comma list of the columns whose shared values link items"),
        "max_links_per_value": Param(10, type="integer", minimum=1, maximum=1000,
                                     description="attributes source: links per item through one value"),
        "keep_runs": Param(7, type="integer", minimum=0,
                           description="runs kept per table of each refreshed source (0: remove nothing)"),
    },
)
def mmag_refresh():
    @task(doc_md="Fingerprints raw dumps and delta drops; returns the values of each source to refresh.")
    def plan(params=None, **context) -> list[dict]:
        from g2i_core.airflow_ops import run_day
        from g2i_core.orchestration import plan_refresh

        return plan_refresh(task_settings(), ds=run_day(context), sources=params["sources"], raw=params["raw"],
                            force=params["force"], link_on=params["link_on"],
                            max_links_per_value=params["max_links_per_value"])

    @task_group(group_id="refresh")
    def refresh(item):
        ingest = StageOperator(task_id="ingest", stage="ingest", values=item, stage_timeout=4 * HOUR)
        fetch = StageOperator(task_id="fetch_images", stage="fetch-images", values=item, stage_timeout=6 * HOUR)
        build = StageOperator(task_id="build_graph", stage="build-graph", values=item, stage_timeout=4 * HOUR,
                              outlets=[GRAPH])
        ppr = StageOperator(task_id="ppr", stage="ppr", values=item, stage_timeout=6 * HOUR)
        embed = StageOperator(task_id="embed", stage="embed", values=item, stage_timeout=6 * HOUR)
        rerank = StageOperator(task_id="rerank", stage="rerank", values=item, stage_timeout=2 * HOUR,
                               outlets=[NEIGHBOURS])
        ingest >> fetch >> build >> [ppr, embed] >> rerank

    @task(doc_md="Records what each refreshed source consumed: the next run's incremental baseline.")
    def record_state(items: list[dict]) -> list[str]:
        from g2i_core.orchestration import record_refresh

        return record_refresh(task_settings(), items)

    @task(doc_md="Removes each refreshed source's runs beyond the newest `keep_runs` (`g2i gc`; 0 keeps all).")
    def collect_old_runs(items: list[dict], params=None) -> list[dict]:
        from g2i_core.orchestration import collect_old_runs as collect

        return collect(task_settings(), items, keep_runs=params["keep_runs"])

    planned = plan()
    recorded = record_state(planned)
    refresh.expand(item=planned) >> recorded >> collect_old_runs(planned)


mmag_refresh()
