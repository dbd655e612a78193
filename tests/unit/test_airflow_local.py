"""`g2i airflow`'s pure parts: the airflow.cfg merge, the environment, pid-file identity, and the CLI's
import weight."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from g2i_core.airflow_local import LocalAirflow, read_config_value, update_config_text

GENERATED = """[core]
# The folder where your airflow pipelines live
dags_folder = /home/u/airflow/dags

# Whether to load the DAG examples
load_examples = True
fernet_key = KEEP-ME

[logging]
base_log_folder = /home/u/airflow/logs
"""


def test_config_merge_replaces_managed_keys_in_place_and_keeps_the_rest():
    out = update_config_text(GENERATED, {"core": {"dags_folder": "/repo/dags", "load_examples": "False",
                                                  "executor": "LocalExecutor"},
                                         "api": {"host": "127.0.0.1"}})
    assert "# The folder where your airflow pipelines live" in out  # comments stay
    assert read_config_value(out, "core", "dags_folder") == "/repo/dags"
    assert read_config_value(out, "core", "load_examples") == "False"
    assert read_config_value(out, "core", "executor") == "LocalExecutor"  # a new key, in its section
    assert read_config_value(out, "core", "fernet_key") == "KEEP-ME"
    assert read_config_value(out, "api", "host") == "127.0.0.1"  # a new section
    assert read_config_value(out, "logging", "base_log_folder") == "/home/u/airflow/logs"
    assert out.count("dags_folder") == 1 and out.count("[core]") == 1
    assert update_config_text(out, {"core": {"dags_folder": "/repo/dags"}}) == out  # idempotent


def test_write_config_keeps_secrets_across_ups_and_is_private(tmp_path):
    af = LocalAirflow(tmp_path / "home", port=18123)
    af.write_config()
    first = af.config_file.read_text()
    fernet = read_config_value(first, "core", "fernet_key")
    jwt = read_config_value(first, "api_auth", "jwt_secret")
    assert fernet and jwt
    assert af.config_file.stat().st_mode & 0o077 == 0
    af.port = 18124
    af.write_config()
    second = af.config_file.read_text()
    assert read_config_value(second, "core", "fernet_key") == fernet
    assert read_config_value(second, "api_auth", "jwt_secret") == jwt
    assert read_config_value(second, "api", "port") == "18124"
    assert read_config_value(second, "core", "execution_api_server_url") == "http://127.0.0.1:18124/execution/"


def test_environment_puts_the_venv_first_and_overrides_a_foreign_airflow_setup(tmp_path):
    af = LocalAirflow(tmp_path / "home", port=18125, env_overrides={"G2I_STORAGE_ROOT": "s3://b/p"})
    env = af.environment({"PATH": "/usr/bin", "AIRFLOW_HOME": "/elsewhere", "AIRFLOW_CONFIG": "/x/a.cfg",
                          "AIRFLOW__CORE__DAGS_FOLDER": "/elsewhere/dags",
                          "G2I_SPARK_DRIVER_MEMORY": "3g"})
    assert env["PATH"].split(os.pathsep)[0] == os.path.dirname(sys.executable)
    assert env["AIRFLOW_HOME"] == str(af.home) and "AIRFLOW_CONFIG" not in env
    assert env["AIRFLOW__CORE__DAGS_FOLDER"] == str(af.dags_folder)
    assert env["AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION"] == "False"
    assert env["AIRFLOW__API__HOST"] == "127.0.0.1"
    assert env["PYSPARK_PYTHON"] == sys.executable
    assert env["G2I_STORAGE_ROOT"] == "s3://b/p"
    assert env["G2I_SPARK_DRIVER_MEMORY"] == "3g"  # the caller's value wins over the local default
    assert env["G2I_SPARK_SHUFFLE_PARTITIONS"] == "4"


def test_a_pid_file_names_our_process_only(tmp_path):
    af = LocalAirflow(tmp_path / "home")
    af.run_dir.mkdir(parents=True)
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        af.pid_file("scheduler").write_text(f"{proc.pid}\n")
        assert af.pid("scheduler") == proc.pid
        # A pid file older than the process it names: the pid was reused, the process is not ours.
        old = time.time() - 3600
        os.utime(af.pid_file("scheduler"), (old, old))
        assert af.pid("scheduler") is None
    finally:
        proc.kill()
        proc.wait()
    af.pid_file("triggerer").write_text("not a pid")
    assert af.pid("triggerer") is None and af.pid("dag-processor") is None
    assert af.down() == []  # nothing of ours runs: nothing is signalled


def test_the_cli_module_imports_nothing_heavy():
    probe = ("import sys, g2i_core.commands.airflow as m, g2i_core.airflow_local; "
             "print(sorted(k for k in ('airflow', 'torch', 'pyspark') if k in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_api_client_goes_only_where_the_egress_policy_allows():
    """The REST client's base URL passes the same egress policy as the image fetcher: loopback only as the
    address `up` binds (127.0.0.1), private and metadata addresses only when named; no other schemes."""
    import http.server
    import threading

    from g2i_core.airflow_local import AirflowClient

    hits = []

    class Canary(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            hits.append(self.path)
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Canary)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    try:
        for url in (f"http://localhost:{port}", "http://169.254.169.254", "http://10.0.0.1:8080",
                    "http://[::1]:8080", "file:///etc/passwd", f"http://user:pw@127.0.0.1:{port}"):
            with pytest.raises(ValueError, match="refused"):
                AirflowClient(url)
        AirflowClient(f"http://10.0.0.1:{port}", allow_hosts=("10.0.0.1",))  # named on purpose: accepted
        client = AirflowClient(f"http://127.0.0.1:{port}", timeout=5)  # the address `up` binds
        client._send("GET", "/api/v2/monitor/health", auth=False)
        assert hits == ["/api/v2/monitor/health"]  # the refused URLs never reached the canary either
    finally:
        server.shutdown()


def test_a_busy_metadata_database_is_tried_again_when_setting_a_variable(monkeypatch):
    """A real api-server answers HTTP 500 "Database error" when its database is busy (seen once in a full
    test run); a fake server gives it on demand: twice, then the variable exists (409) and is replaced."""
    import http.server
    import json
    import threading

    from g2i_core import airflow_local
    from g2i_core.airflow_local import AirflowClient, AirflowError

    monkeypatch.setattr(airflow_local.time, "sleep", lambda s: None)
    calls = []

    class Busy(http.server.BaseHTTPRequestHandler):
        def _answer(self, code: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self):  # noqa: N802
            self.rfile.read(int(self.headers["Content-Length"]))
            calls.append("POST")
            if len(calls) <= 2:
                return self._answer(500, {"detail": {"reason": "Database error"}})
            return self._answer(409, {"detail": "exists"})

        def do_PATCH(self):  # noqa: N802
            self.rfile.read(int(self.headers["Content-Length"]))
            calls.append("PATCH")
            return self._answer(200, {"key": "k", "value": "v"})

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Busy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = AirflowClient(f"http://127.0.0.1:{server.server_address[1]}", timeout=5)
        client._token = "t"
        assert client.set_variable("k", "v") == {"key": "k", "value": "v"}
        assert calls == ["POST", "POST", "POST", "PATCH"]
        calls.clear()
        with pytest.raises(AirflowError, match="Database error"):
            client.set_variable("k", "v", attempts=2)  # still busy after its tries: the error is raised
        assert calls == ["POST", "POST"]
    finally:
        server.shutdown()
