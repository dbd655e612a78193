"""``python -m g2i_core.orchestration stage|dag-test``: run one stage from a JSON dict of values (what a
GPU pod runs), or one DAG run in-process with ``dag.test()``."""

from __future__ import annotations

import json
import logging
import signal
import sys
import time
from typing import Any, Mapping, Sequence

from g2i_core.config import PROJECT_ROOT, Settings
from g2i_core.orchestration.process import StageFailed, run_stage
from g2i_core.orchestration.stages import STAGES


def dag_test(dag_id: str, logical_date: str, conf: Mapping[str, Any] | None = None,
             dags_folder: str | None = None) -> int:
    """Run one DAG run in-process with ``dag.test()`` (needs AIRFLOW_HOME with a migrated database);
    prints each task's state and duration and returns 0 only when the run succeeded."""
    import datetime as dt

    from airflow.dag_processing.dagbag import DagBag

    folder = dags_folder or str(PROJECT_ROOT / "dags")
    bag = DagBag(folder)
    if bag.import_errors:
        for path, err in bag.import_errors.items():
            print(f"import error in {path}:\n{err}", file=sys.stderr)
        return 2
    if dag_id not in bag.dags:
        print(f"no DAG {dag_id!r} in {folder}; found {sorted(bag.dags)}", file=sys.stderr)
        return 2
    when = dt.datetime.fromisoformat(logical_date).replace(tzinfo=dt.timezone.utc)
    start = time.monotonic()
    dr = bag.dags[dag_id].test(logical_date=when, run_conf=dict(conf or {}))
    wall = time.monotonic() - start
    for ti in sorted(dr.get_task_instances(), key=lambda t: (t.start_date is None, t.start_date or 0, t.map_index)):
        took = (ti.end_date - ti.start_date).total_seconds() if ti.start_date and ti.end_date else 0.0
        idx = f"[{ti.map_index}]" if ti.map_index >= 0 else ""
        print(f"[dag-test] {dag_id} {ti.task_id}{idx}: {ti.state} in {took:.1f}s (try {ti.try_number})")
    for name, extra in _asset_events(dr):
        print(f"[dag-test] {dag_id} asset event {name} {json.dumps(extra, sort_keys=True)}")
    print(f"[dag-test] {dag_id} logical_date={logical_date}: {dr.state} in {wall:.1f}s")
    return 0 if str(dr.state) in {"success", "DagRunState.SUCCESS"} else 1


def _asset_events(dr) -> list[tuple[str, dict]]:
    """(asset name, extra) of every asset event this DAG run emitted, from the metadata DB."""
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.execute(
            select(AssetModel.name, AssetEvent.extra).join(AssetModel, AssetEvent.asset_id == AssetModel.id)
            .where(AssetEvent.source_dag_id == dr.dag_id, AssetEvent.source_run_id == dr.run_id)
            .order_by(AssetEvent.id)).all()
    return [(name, extra or {}) for name, extra in rows]


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m g2i_core.orchestration", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    st = sub.add_parser("stage", help="run one stage from a JSON dict of template values (used inside pods)")
    st.add_argument("stage", choices=sorted(STAGES))
    st.add_argument("--values", required=True, help="JSON object of template values")
    dt_ = sub.add_parser("dag-test", help="run a DAG once with dag.test() and report task times")
    dt_.add_argument("dag_id")
    dt_.add_argument("--logical-date", required=True, help="YYYY-MM-DD")
    dt_.add_argument("--conf", default="{}", help="JSON run conf (DAG params)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # SIGTERM (pod eviction, `kill`) unwinds through run_stage's finally, which ends the job's group.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.cmd == "stage":
        try:
            run_stage(args.stage, json.loads(args.values), Settings.load(), on_line=lambda s: print(s, flush=True))
        except StageFailed as exc:
            print(str(exc), file=sys.stderr)
            return 1
        return 0
    return dag_test(args.dag_id, args.logical_date, json.loads(args.conf))





if __name__ == "__main__":
    sys.exit(main())
