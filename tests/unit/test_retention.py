"""`g2i gc`: old runs go, the live, newest, protected and young ones stay, and a killed gc leaves nothing a
reader could trip on."""

from __future__ import annotations

import pyarrow as pa
import pytest

from g2i_core.retention import RetentionPolicy, apply_gc, plan_gc
from g2i_core.storage import NotPublishedError

OLD = "20200101T000000000000Z-deadbeef"  # an attempt started long ago


def _nightly(storage, tables=("nodes", "graph_nodes"), nights=range(1, 6)) -> list[str]:
    runs = []
    for night in nights:
        run_id = f"goodreads-202611{night:02d}"
        for table in tables:
            storage.publish_table(table, pa.table({"night": [night]}), run_id, logical_date=f"2026-11-{night:02d}")
        runs.append(run_id)
    return runs


def _runs(storage, table) -> list[str]:
    return sorted(d[len("run="):] for d in storage.list_dirs(storage.uri(table)) if d.startswith("run="))


def test_old_runs_go_and_the_newest_live_and_protected_stay(file_storage, capsys):
    runs = _nightly(file_storage)
    # the registered model trained on the first night's graph: backfills read it pinned
    file_storage.put_json(file_storage.uri("models", "_LATEST"), {"run_id": "train-1", "graph_run_id": runs[0]})
    file_storage.put_json(file_storage.uri("models", "train-1", "_COMMITTED.json"), {"graph_run_id": runs[0]})
    policy = RetentionPolicy(keep_runs=2, grace_s=0)
    plan = plan_gc(file_storage, policy)
    assert plan.protected == (runs[0],)
    assert sorted((r.table, r.run_id) for r in plan.removals) == sorted(
        (t, r) for t in ("graph_nodes", "nodes") for r in runs[1:3])
    assert plan.kept["nodes"] == [runs[4], runs[3], runs[0]]
    assert _runs(file_storage, "nodes") == runs  # planning deletes nothing

    assert apply_gc(file_storage, plan) == 8  # 2 tables x 2 runs x (manifest + one Parquet file)
    for table in ("nodes", "graph_nodes"):
        assert _runs(file_storage, table) == [runs[0], runs[3], runs[4]]
        assert file_storage.read_table(table).column("night").to_pylist() == [5]
        assert file_storage.read_table(table, runs[0]).column("night").to_pylist() == [1]
        with pytest.raises(NotPublishedError):
            file_storage.read_table(table, runs[1])
    assert file_storage.exists(file_storage.uri("models", "train-1", "_COMMITTED.json"))  # models untouched
    again = plan_gc(file_storage, policy)
    assert again.removals == [] and again.staging == []  # a second gc has nothing to do


def test_the_live_run_stays_even_when_it_is_the_oldest(file_storage):
    runs = _nightly(file_storage, tables=("nodes",))
    file_storage.publish_table("nodes", pa.table({"night": [1]}), runs[0], logical_date="2026-11-01", force=True)
    plan = plan_gc(file_storage, RetentionPolicy(keep_runs=1, grace_s=0))
    assert {r.run_id for r in plan.removals} == set(runs[1:4])
    apply_gc(file_storage, plan)
    assert file_storage.read_table("nodes").column("night").to_pylist() == [1]  # still the live run


def test_young_runs_and_writers_at_work_are_not_touched(file_storage):
    runs = _nightly(file_storage, tables=("nodes",))
    # an attempt written a moment ago and not committed yet: its writer may still be at work
    file_storage.write_attempt("nodes", pa.table({"night": [30]}), "goodreads-20261130")
    plan = plan_gc(file_storage, RetentionPolicy(keep_runs=1))  # the default grace: a day
    assert plan.removals == []
    assert set(plan.kept["nodes"]) == set(runs) | {"goodreads-20261130"}


def test_runs_never_published_and_their_staging_go(file_storage):
    runs = _nightly(file_storage, tables=("nodes",), nights=range(1, 4))
    file_storage.write_parquet(file_storage.uri("nodes", "run=goodreads-20261020", f"attempt={OLD}", "part-0.parquet"),
                               pa.table({"night": [0]}))
    for run_id in (runs[0], "goodreads-20261020", runs[2]):
        file_storage.put_bytes(file_storage.uri("_staging", "ingest", run_id, OLD, "block-0"), b"x")
    plan = plan_gc(file_storage, RetentionPolicy(keep_runs=2, grace_s=0))
    assert sorted((r.run_id, r.reason == "never published") for r in plan.removals) == [
        ("goodreads-20261020", True), (runs[0], False)]
    assert sorted(plan.staging) == sorted(file_storage.uri("_staging", "ingest", r) for r in
                                          ("goodreads-20261020", runs[0]))
    apply_gc(file_storage, plan)
    assert _runs(file_storage, "nodes") == runs[1:]
    assert file_storage.list_dirs(file_storage.uri("_staging", "ingest")) == [runs[2]]


def test_a_gc_killed_between_manifest_and_data_is_finished_by_the_next(file_storage, monkeypatch):
    runs = _nightly(file_storage, tables=("nodes",), nights=range(1, 4))
    policy = RetentionPolicy(keep_runs=1, grace_s=0)
    real = file_storage.delete_prefix

    def killed(prefix):
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(file_storage, "delete_prefix", killed)
    plan = plan_gc(file_storage, policy)
    assert [r.run_id for r in plan.removals] == [runs[1], runs[0]]
    with pytest.raises(KeyboardInterrupt):
        apply_gc(file_storage, plan)
    # the manifest went first: the half-removed run is "not published", never a manifest without its files
    with pytest.raises(NotPublishedError):
        file_storage.read_table("nodes", runs[1])
    assert runs[1] in _runs(file_storage, "nodes")
    monkeypatch.setattr(file_storage, "delete_prefix", real)
    plan = plan_gc(file_storage, policy)
    assert sorted((r.run_id, r.reason == "never published") for r in plan.removals) == [
        (runs[0], False), (runs[1], True)]
    apply_gc(file_storage, plan)
    assert _runs(file_storage, "nodes") == [runs[2]]


def test_a_run_made_live_after_the_plan_is_kept(file_storage):
    runs = _nightly(file_storage, tables=("nodes",), nights=range(1, 4))
    plan = plan_gc(file_storage, RetentionPolicy(keep_runs=1, grace_s=0))
    file_storage.publish_table("nodes", pa.table({"night": [1]}), runs[0], logical_date="2026-11-01", force=True)
    apply_gc(file_storage, plan)
    assert file_storage.read_table("nodes").column("night").to_pylist() == [1]
    assert _runs(file_storage, "nodes") == [runs[0], runs[2]]


def test_the_policy_refuses_to_keep_nothing():
    with pytest.raises(ValueError, match="keep_runs"):
        RetentionPolicy(keep_runs=0).check()


def test_the_command_prints_the_plan_and_deletes_only_with_apply(file_storage, capsys):
    from g2i_core.cli import main

    runs = _nightly(file_storage, tables=("nodes",), nights=range(1, 4))
    for path in file_storage.list(file_storage.uri("nodes", "_manifests")):  # as if published long ago
        file_storage.put_json(path, {**file_storage.get_json(path), "published_at": "2026-01-01T00:00:00Z"})
    assert main(["gc", "--root", file_storage.root, "--keep-runs", "1", "--protect", runs[0]]) == 0
    out = capsys.readouterr().out
    assert f"nodes: keep {runs[2]}, {runs[0]}; remove {runs[1]}" in out and "dry run: 1 runs" in out
    assert _runs(file_storage, "nodes") == runs
    assert main(["gc", "--root", file_storage.root, "--keep-runs", "1", "--protect", runs[0], "--apply"]) == 0
    assert "removed 2 objects" in capsys.readouterr().out
    assert _runs(file_storage, "nodes") == [runs[0], runs[2]]
    with pytest.raises(SystemExit):
        main(["gc", "--root", file_storage.root, "--protect", "../x"])  # run ids are checked like everywhere
