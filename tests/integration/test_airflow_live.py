"""`g2i airflow up` for real: the api-server, scheduler, dag-processor and triggerer of Airflow 3 from this
venv, on free loopback ports with a private AIRFLOW_HOME and the test S3 server (``airflow_live`` fixture
in tests/conftest.py, shared by the live-scheduler tests). Everything goes through the REST API."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request

import pytest

pytestmark = [pytest.mark.airflow, pytest.mark.s3, pytest.mark.slow]

G2I_DAGS = {"mmag_refresh", "g2i_train", "g2i_backfill_covers", "g2i_evaluate"}


def listening(pids: list[int]) -> list[tuple[int, str, int]]:
    import psutil

    out = []
    for pid in pids:
        try:
            conns = psutil.Process(pid).net_connections(kind="inet")
        except psutil.NoSuchProcess:
            continue
        out += [(pid, c.laddr.ip, c.laddr.port) for c in conns if c.status == psutil.CONN_LISTEN]
    return out


def test_health_reports_every_component_and_the_api_needs_a_token(airflow_live):
    from g2i_core.airflow_local import AirflowClient, AirflowError

    health = airflow_live.client().health()
    assert health["metadatabase"]["status"] == "healthy"
    assert health["scheduler"]["status"] == "healthy", health
    assert health["dag_processor"]["status"] == "healthy", health
    assert set(airflow_live.pids()) == {"api-server", "scheduler", "dag-processor", "triggerer"}
    assert all(airflow_live.pids().values()), airflow_live.pids()
    # The REST API refuses a request without a token and a login with a wrong password.
    with pytest.raises(AirflowError, match="HTTP 401"):
        airflow_live.client()._send("GET", "/api/v2/dags", auth=False)
    with pytest.raises(AirflowError, match="HTTP 401"):
        AirflowClient(airflow_live.url, "admin", "not-the-password").token()
    # The UI is served at the root.
    with urllib.request.urlopen(airflow_live.url + "/", timeout=10) as resp:
        assert resp.status == 200 and "text/html" in resp.headers["Content-Type"]
    # The generated password is readable by its owner only.
    assert airflow_live.password_file.stat().st_mode & 0o077 == 0


def test_every_process_listens_on_loopback_only(airflow_live):
    tree = airflow_live.tree()
    sockets = listening([p for pids in tree.values() for p in pids])
    assert (airflow_live.pids()["api-server"], "127.0.0.1", airflow_live.port) in sockets
    assert {ip for _, ip, _ in sockets} == {"127.0.0.1"}, sockets


def test_the_four_dags_are_imported_with_no_errors_and_unpaused(airflow_live):
    client = airflow_live.client()
    assert client.import_errors() == []
    dags = {d["dag_id"]: d for d in client.dags()}
    assert set(dags) == G2I_DAGS
    assert {d: dags[d]["is_paused"] for d in G2I_DAGS} == dict.fromkeys(G2I_DAGS, False)
    files = {str(airflow_live.dags_folder / f"{d}.py") for d in G2I_DAGS}
    assert {d["fileloc"] for d in dags.values()} == files


def test_a_manual_trigger_through_the_rest_api_runs_to_success(airflow_live):
    """mmag_refresh with no sources: ``plan`` runs on a LocalExecutor worker against the test S3 server and
    returns nothing to refresh, so the mapped chain is skipped and the run succeeds without Spark."""
    client = airflow_live.client()
    run = client.trigger("mmag_refresh", conf={"sources": []})
    assert run["run_type"] == "manual" and run["conf"] == {"sources": []}
    done = client.wait_for_run("mmag_refresh", run["dag_run_id"], timeout=300)
    tasks = {t["task_id"]: t for t in client.task_instances("mmag_refresh", run["dag_run_id"])}
    assert done["state"] == "success", {k: t["state"] for k, t in tasks.items()}
    assert tasks["plan"]["state"] == "success" and tasks["plan"]["try_number"] == 1
    assert tasks["record_state"]["state"] == "skipped"
    assert client.xcom("mmag_refresh", run["dag_run_id"], "plan") == []  # plan's XCom: nothing to refresh
    # The task's log was written under AIRFLOW_HOME/logs.
    run_logs = airflow_live.logs_dir / "dag_id=mmag_refresh" / f"run_id={run['dag_run_id']}"
    assert list(run_logs.glob("task_id=plan/*.log"))


def test_down_stops_exactly_what_up_started(airflow_live, s3_server, tmp_path):
    """A second instance (own home, own port) is brought up and down while the shared one keeps running and
    an unrelated process in its own session keeps running too: down ends every process of the second
    instance's trees, a hung (SIGSTOPped) executor worker included, and nothing else."""
    import psutil

    from g2i_core.airflow_local import LocalAirflow, free_port

    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"],
                                 start_new_session=True)
    shared_before = airflow_live.tree()
    try:
        second = LocalAirflow(tmp_path / "home", port=free_port(),
                              env_overrides={**airflow_live.env_overrides,
                                             "G2I_STORAGE_ROOT": f"s3://{s3_server.bucket}/airflow-live-down"})
        result = second.up(timeout=300)
        assert not result.already_up and set(result.pids) == set(airflow_live.pids())
        again = second.up(timeout=60)  # idempotent: same processes
        assert again.already_up and again.pids == result.pids
        tree = second.tree()
        ours = [psutil.Process(p) for pids in tree.values() for p in pids]
        workers = [p for p in ours if "LocalExecutor" in " ".join(p.cmdline())]
        assert workers, [p.cmdline() for p in ours]
        os.kill(workers[0].pid, signal.SIGSTOP)  # a hung worker: it cannot act on SIGTERM
        stopped = second.down(timeout=10)
        assert sorted(stopped) == sorted(result.pids)
        gone, alive = psutil.wait_procs(ours, timeout=10)
        assert alive == [], [(p.pid, p.cmdline()) for p in alive]
        assert not list((second.run_dir).glob("*.pid"))
        assert second.status()["pids"] == dict.fromkeys(result.pids)
        # Nothing else was touched: the bystander and the shared instance still run.
        assert bystander.poll() is None
        assert all(airflow_live.pids().values())
        for pids in shared_before.values():
            assert psutil.pid_exists(pids[0])
        assert second.down() == []  # a second down has nothing to stop
    finally:
        os.killpg(bystander.pid, signal.SIGKILL)
        bystander.wait()
    assert airflow_live.client().health()["scheduler"]["status"] == "healthy"
