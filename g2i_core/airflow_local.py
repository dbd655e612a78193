"""A real Airflow 3 on the embedded default: ``g2i airflow up | down | status``.

Four processes run from this venv's ``airflow``: the api-server (UI + REST API, bound to 127.0.0.1),
the scheduler (LocalExecutor), the dag-processor (parses this repo's ``dags/``) and the triggerer, on a
SQLite metadata DB. Everything lives under one folder, ``AIRFLOW_HOME`` (default ``.local/airflow``)::

    airflow.cfg      the keys g2i manages (rewritten on every ``up``; other keys are kept) + secrets
    airflow.db       SQLite metadata DB
    run/<name>.pid   one pid per process; each process leads its own process group
    run/instance.json   the port of the running instance
    logs/<name>.log  each process's output; task logs under logs/dag_id=.../
    simple_auth_manager_passwords.json.generated   the generated admin password (mode 0600)

``down`` stops exactly the process groups in ``run/`` (and the descendants that left them), nothing
else. The g2i DAGs come up unpaused here (``dags_are_paused_at_creation = False``), so the ``@daily``
refresh runs; production keeps Airflow's default (``infra/airflow/airflow.cfg``).

``AirflowClient`` talks to the REST API with a JWT from ``POST /auth/token``::

    client = AirflowClient.for_home(".local/airflow")
    run = client.trigger("mmag_refresh", conf={"sources": ["goodreads"]})
    client.wait_for_run("mmag_refresh", run["dag_run_id"], timeout=3600)

Nothing here imports Airflow: the processes are children, the API is plain HTTP.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from g2i_core.config import PROJECT_ROOT

log = logging.getLogger(__name__)

DEFAULT_HOME = PROJECT_ROOT / ".local" / "airflow"
DEFAULT_PORT = 8080
HOST = "127.0.0.1"
USER = "admin"  # simple auth manager's default user (``[core] simple_auth_manager_users = admin:admin``)
PASSWORDS_FILE = "simple_auth_manager_passwords.json.generated"
# name -> airflow subcommand. The log servers of the scheduler and triggerer would bind every interface
# (Airflow offers no host setting for them); on one machine the api-server reads task logs from the files.
COMPONENTS: dict[str, list[str]] = {
    "api-server": ["api-server"],  # host and port added at start
    "scheduler": ["scheduler", "--skip-serve-logs"],
    "dag-processor": ["dag-processor"],
    "triggerer": ["triggerer", "--skip-serve-logs"],
}
TERMINAL_RUN_STATES = frozenset({"success", "failed"})
# What scripts/demo.sh sets for the pipeline on the embedded default; the caller's environment wins.
LOCAL_DEFAULTS = {
    "G2I_SPARK_DRIVER_MEMORY": "2g", "G2I_SPARK_SHUFFLE_PARTITIONS": "4", "G2I_RETRY_DELAY_S": "5",
    "G2I_BACKFILL_SHARDS": "2", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
    # ingest, build-graph, ppr, embed and rerank each size themselves to the whole machine (ppr and embed
    # peaked at 10 + 18 GB side by side at 2.4M nodes): one at a time, in a pool `up` creates with one slot
    "G2I_MACHINE_POOL": "g2i_machine",
}


def venv_bin() -> Path:
    return Path(sys.executable).parent


def airflow_binary() -> str:
    path = venv_bin() / "airflow"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run `make setup` (installs apache-airflow into .venv)")
    return str(path)


def port_free(port: int, host: str = HOST) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
            return True
        except OSError:
            return False


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


# ---- airflow.cfg ------------------------------------------------------------------------------------------
def update_config_text(text: str, values: Mapping[str, Mapping[str, str]]) -> str:
    """``text`` (an ini file) with ``values[section][key]`` set: a key's line is replaced in place, a missing
    key goes right after its section header, a missing section at the end. Comments and other keys stay."""
    lines = text.splitlines()
    for section, keys in values.items():
        pending = dict(keys)
        start = next((i for i, ln in enumerate(lines) if ln.strip() == f"[{section}]"), None)
        if start is None:
            lines += ["", f"[{section}]"] + [f"{k} = {v}" for k, v in pending.items()]
            continue
        end = next((i for i in range(start + 1, len(lines)) if lines[i].lstrip().startswith("[")), len(lines))
        for i in range(start + 1, end):
            key = lines[i].split("=", 1)[0].strip()
            if "=" in lines[i] and not lines[i].lstrip().startswith(("#", ";")) and key in pending:
                lines[i] = f"{key} = {pending.pop(key)}"
        lines[start + 1:start + 1] = [f"{k} = {v}" for k, v in pending.items()]
    return "\n".join(lines) + "\n"


def read_config_value(text: str, section: str, key: str) -> str | None:
    current = None
    for ln in text.splitlines():
        s = ln.strip()
        if s.startswith("["):
            current = s.strip("[]")
        elif current == section and "=" in s and not s.startswith(("#", ";")):
            k, v = (p.strip() for p in s.split("=", 1))
            if k == key:
                return v
    return None


# ---- the REST API ----------------------------------------------------------------------------------------
class AirflowError(RuntimeError):
    pass


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # a redirect is an error here, never followed
        return None


# No proxy (this API is local) and no redirects: requests go only to the checked base URL.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirects())


def _check_api_url(base_url: str, allow_hosts: tuple[str, ...]) -> None:
    """The egress policy (g2i_core.egress) for the Airflow API: http/https, no credentials, and a host that
    is globally routable unless ``allow_hosts`` names it (by default only ``HOST``, where `up` binds)."""
    from g2i_core.egress import EgressPolicy, FetchError, check_url, refusal

    try:
        target = check_url(base_url)
    except FetchError as exc:
        raise ValueError(f"Airflow API URL {base_url!r} refused: {exc}") from None
    if EgressPolicy(allow_hosts=allow_hosts).allowed(target.host, target.port):
        return
    for row in socket.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM):
        reason = refusal(row[4][0])
        if reason:
            raise ValueError(f"Airflow API URL {base_url!r} refused: {reason} (name the host in allow_hosts "
                             "to reach a private Airflow on purpose)")


class AirflowClient:
    """The Airflow 3 REST API (``/api/v2``) with a JWT from the simple auth manager (``POST /auth/token``).

    Only what g2i needs: health, DAGs and import errors, trigger, DAG runs, task instances, clear, pause."""

    def __init__(self, base_url: str, username: str = USER, password: str | None = None,
                 timeout: float = 15.0, allow_hosts: tuple[str, ...] = (HOST,)):
        _check_api_url(base_url, allow_hosts)
        self.base_url = base_url.rstrip("/")
        self.username, self.password, self.timeout = username, password, timeout
        self._token: str | None = None

    @classmethod
    def for_home(cls, home: str | os.PathLike = DEFAULT_HOME, port: int | None = None) -> "AirflowClient":
        """A client for the instance ``g2i airflow up`` runs under ``home`` (port from run/instance.json)."""
        af = LocalAirflow(Path(home))
        port = port or af.running_port() or DEFAULT_PORT
        return cls(f"http://{HOST}:{port}", USER, af.password())

    # -- plumbing
    def _send(self, method: str, path: str, body: Any = None, params: Mapping[str, Any] | None = None,
              auth: bool = True) -> Any:
        url = self.base_url + path + (f"?{urllib.parse.urlencode(params, doseq=True)}" if params else "")
        data = None if body is None else json.dumps(body).encode()
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        if auth:
            headers["Authorization"] = f"Bearer {self.token()}"
        req = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            with _DIRECT.open(req, timeout=self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:2000]
            raise AirflowError(f"{method} {path}: HTTP {exc.code}: {detail}") from None
        return json.loads(raw) if raw else None

    def request(self, method: str, path: str, body: Any = None,
                params: Mapping[str, Any] | None = None) -> Any:
        try:
            return self._send(method, path, body, params)
        except AirflowError as exc:
            if "HTTP 401" not in str(exc):
                raise
            self._token = None  # expired: one new token, one more try
            return self._send(method, path, body, params)

    def token(self) -> str:
        if self._token is None:
            if not self.password:
                raise AirflowError("no password: is the api-server up (it generates the passwords file)?")
            out = self._send("POST", "/auth/token", {"username": self.username, "password": self.password},
                             auth=False)
            self._token = out["access_token"]
        return self._token

    # -- endpoints
    def health(self) -> dict:
        return self._send("GET", "/api/v2/monitor/health", auth=False)

    def dags(self) -> list[dict]:
        return self.request("GET", "/api/v2/dags", params={"limit": 1000})["dags"]

    def import_errors(self) -> list[dict]:
        return self.request("GET", "/api/v2/importErrors", params={"limit": 1000})["import_errors"]

    def set_paused(self, dag_id: str, paused: bool) -> dict:
        return self.request("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": paused})

    def trigger(self, dag_id: str, conf: Mapping[str, Any] | None = None, *, logical_date: str | None = None,
                run_id: str | None = None) -> dict:
        """A manual run; ``logical_date`` (ISO 8601 with a zone) is optional in Airflow 3."""
        body: dict[str, Any] = {"logical_date": logical_date, "conf": dict(conf or {})}
        if run_id:
            body["dag_run_id"] = run_id
        return self.request("POST", f"/api/v2/dags/{dag_id}/dagRuns", body)

    def dag_run(self, dag_id: str, run_id: str) -> dict:
        return self.request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}")

    def dag_runs(self, dag_id: str, **params: Any) -> list[dict]:
        path = f"/api/v2/dags/{dag_id}/dagRuns"
        return self.request("GET", path, params={"limit": 100, **params})["dag_runs"]

    def task_instances(self, dag_id: str, run_id: str) -> list[dict]:
        path = f"/api/v2/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}/taskInstances"
        return self.request("GET", path, params={"limit": 1000})["task_instances"]

    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str = "return_value",
             map_index: int = -1) -> Any:
        """A task's XCom value (a returned dict of run ids, for instance), as stored."""
        path = (f"/api/v2/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}/taskInstances/{task_id}"
                f"/xcomEntries/{key}")
        return self.request("GET", path, params={"map_index": map_index})["value"]

    def upstream_asset_events(self, dag_id: str, run_id: str) -> list[dict]:
        """The asset events that triggered an asset-triggered run (each with ``extra``, ``source_dag_id``,
        ``source_run_id``); [] for other runs."""
        path = f"/api/v2/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}/upstreamAssetEvents"
        return self.request("GET", path)["asset_events"]

    def asset_events(self, **filters: Any) -> list[dict]:
        """Asset events, filtered by ``source_dag_id``, ``source_run_id``, ``source_task_id``..."""
        return self.request("GET", "/api/v2/assets/events", params={"limit": 1000, **filters})["asset_events"]

    def set_variable(self, key: str, value: str, description: str | None = None, attempts: int = 5) -> dict:
        """Create or replace an Airflow Variable (``g2i_train_steps``, for instance), trying again while the
        metadata database is busy."""
        body = {"key": key, "value": value, "description": description}

        def put() -> dict:
            try:
                return self.request("POST", "/api/v2/variables", body)
            except AirflowError as exc:
                if "HTTP 409" not in str(exc):
                    raise
                return self.request("PATCH", f"/api/v2/variables/{urllib.parse.quote(key, safe='')}", body)

        return self._while_database_busy(put, f"setting variable {key}", attempts)

    def ensure_pool(self, name: str, slots: int, description: str, attempts: int = 5) -> dict:
        """The pool ``name``, created with ``slots`` if absent; an existing pool keeps its slots (an operator
        who resized it meant to)."""
        quoted = urllib.parse.quote(name, safe="")

        def create() -> dict:
            try:
                return self.request("POST", "/api/v2/pools", {"name": name, "slots": slots, "description": description})
            except AirflowError as exc:
                if "HTTP 409" not in str(exc):
                    raise
                return self.request("GET", f"/api/v2/pools/{quoted}")

        return self._while_database_busy(create, f"creating pool {name}", attempts)

    @staticmethod
    def _while_database_busy(call: Callable[[], dict], what: str, attempts: int) -> dict:
        """``call`` (an idempotent write), tried again on HTTP 500 "Database error" (the metadata database
        busy, as SQLite is while the scheduler writes), up to ``attempts`` times."""
        for attempt in range(attempts):
            try:
                return call()
            except AirflowError as exc:
                if "HTTP 500" not in str(exc) or "Database error" not in str(exc) or attempt == attempts - 1:
                    raise
                log.warning("%s: %s; trying again", what, str(exc)[:200])
                time.sleep(0.5 * 2**attempt)
        raise AssertionError("unreachable")

    def clear(self, dag_id: str, run_id: str, *, only_failed: bool = False) -> Any:
        """Clear a run's task instances so the scheduler runs them again (the run goes back to queued)."""
        path = f"/api/v2/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}/clear"
        return self.request("POST", path, {"dry_run": False, "only_failed": only_failed})

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float = 600, poll: float = 2.0) -> dict:
        """Poll until the run is success or failed; returns the run."""
        deadline = time.monotonic() + timeout
        while True:
            run = self.dag_run(dag_id, run_id)
            if run["state"] in TERMINAL_RUN_STATES:
                return run
            if time.monotonic() > deadline:
                states = {t["task_id"]: t["state"] for t in self.task_instances(dag_id, run_id)}
                raise TimeoutError(f"{dag_id} run {run_id} still {run['state']} after {timeout:.0f}s; "
                                   f"tasks {states}")
            time.sleep(poll)


# ---- the local instance ----------------------------------------------------------------------------------
@dataclass
class UpResult:
    url: str
    user: str
    password_file: Path
    pids: dict[str, int]
    already_up: bool
    seconds: float
    dags: list[dict] = field(default_factory=list)


@dataclass
class LocalAirflow:
    home: Path = DEFAULT_HOME
    port: int = DEFAULT_PORT
    dags_folder: Path = PROJECT_ROOT / "dags"
    # Extra environment for every process (G2I_* settings of the tests, for instance); wins over os.environ.
    env_overrides: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.home = Path(self.home).resolve()
        self.dags_folder = Path(self.dags_folder).resolve()

    # -- paths
    @property
    def run_dir(self) -> Path:
        return self.home / "run"

    @property
    def logs_dir(self) -> Path:
        return self.home / "logs"

    @property
    def config_file(self) -> Path:
        return self.home / "airflow.cfg"

    @property
    def password_file(self) -> Path:
        return self.home / PASSWORDS_FILE

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def log_file(self, name: str) -> Path:
        return self.logs_dir / f"{name}.log"

    def pid_file(self, name: str) -> Path:
        return self.run_dir / f"{name}.pid"

    # -- configuration
    def config_values(self) -> dict[str, dict[str, str]]:
        """The keys g2i manages in ``airflow.cfg``; the same values go into the processes' environment."""
        return {
            "core": {
                "dags_folder": str(self.dags_folder),
                "load_examples": "False",
                "executor": "LocalExecutor",
                # The embedded default runs the @daily refresh; a fresh Airflow would create the DAGs paused.
                "dags_are_paused_at_creation": "False",
                "execution_api_server_url": f"{self.url}/execution/",
                # LocalExecutor starts `parallelism` worker processes up front (~130 MB each; 32 by default).
                "parallelism": str(max(4, 2 * (os.cpu_count() or 2))),
            },
            "database": {"sql_alchemy_conn": f"sqlite:///{self.home / 'airflow.db'}"},
            "api": {"host": HOST, "port": str(self.port)},
            "logging": {"base_log_folder": str(self.logs_dir)},
        }

    def write_config(self) -> None:
        """Write the managed keys into ``airflow.cfg`` (kept otherwise), generating the secrets once, so that
        ``AIRFLOW_HOME=<home> airflow ...`` in a shell sees the same configuration as the processes."""
        self.home.mkdir(parents=True, exist_ok=True)
        text = self.config_file.read_text() if self.config_file.exists() else (
            "# Written by `g2i airflow up` (g2i_core/airflow_local.py): the keys it manages are rewritten\n"
            "# on every `up`; keys you add are kept. Secrets stay in this file (mode 0600).\n")
        values = self.config_values()
        if not read_config_value(text, "core", "fernet_key"):
            from cryptography.fernet import Fernet  # an Airflow dependency

            values["core"]["fernet_key"] = Fernet.generate_key().decode()
        if not read_config_value(text, "api_auth", "jwt_secret"):
            values["api_auth"] = {"jwt_secret": secrets.token_urlsafe(32)}
        fd = os.open(self.config_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(update_config_text(text, values))
        os.chmod(self.config_file, 0o600)

    def environment(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """The processes' environment: the caller's, demo.sh's local defaults, ``env_overrides``, then the
        managed Airflow keys, the venv's ``bin/`` first on PATH and the venv's Python for PySpark."""
        env = dict(os.environ if base is None else base)
        env.pop("AIRFLOW_CONFIG", None)  # the config is <home>/airflow.cfg
        for k, v in LOCAL_DEFAULTS.items():
            env.setdefault(k, v)
        env.update(self.env_overrides)
        env["AIRFLOW_HOME"] = str(self.home)
        for section, keys in self.config_values().items():
            for key, value in keys.items():
                env[f"AIRFLOW__{section.upper()}__{key.upper()}"] = value
        env["AIRFLOW__CORE__UNIT_TEST_MODE"] = "False"
        env["PATH"] = f"{venv_bin()}{os.pathsep}{env.get('PATH', '')}"
        env["PYSPARK_PYTHON"] = env["PYSPARK_DRIVER_PYTHON"] = sys.executable
        return env

    # -- processes
    def pid(self, name: str) -> int | None:
        """The pid in ``run/<name>.pid`` if that process still runs and is the one we started (a process
        created after the pid file was written is a reused pid, not ours)."""
        import psutil

        path = self.pid_file(name)
        try:
            pid = int(path.read_text().strip())
            proc = psutil.Process(pid)
            if proc.create_time() > path.stat().st_mtime + 1.0 or proc.status() == psutil.STATUS_ZOMBIE:
                return None
        except (FileNotFoundError, ValueError, psutil.NoSuchProcess, psutil.AccessDenied):
            return None
        return pid

    def pids(self) -> dict[str, int | None]:
        return {name: self.pid(name) for name in COMPONENTS}

    def running_port(self) -> int | None:
        """The api-server port of the instance started under this home, if it still runs."""
        if self.pid("api-server") is None:
            return None
        try:
            return int(json.loads((self.run_dir / "instance.json").read_text())["port"])
        except (FileNotFoundError, ValueError, KeyError):
            return None

    def password(self) -> str | None:
        try:
            return json.loads(self.password_file.read_text()).get(USER)
        except (FileNotFoundError, ValueError):
            return None

    def client(self) -> AirflowClient:
        return AirflowClient(self.url, USER, self.password())

    def _airflow(self, args: list[str], env: Mapping[str, str], log_name: str, timeout: float) -> None:
        """A one-off airflow command (db migrate), output appended to logs/<log_name>.log."""
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        with self.log_file(log_name).open("ab") as logf:
            logf.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} airflow {' '.join(args)}\n".encode())
            logf.flush()
            proc = subprocess.run([airflow_binary(), *args], env=env, cwd=self.home, stdout=logf,
                                  stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"airflow {' '.join(args)} failed (exit {proc.returncode}):\n"
                               f"{self.log_tail(log_name)}")

    def _start(self, name: str, env: Mapping[str, str]) -> int:
        argv = [airflow_binary(), *COMPONENTS[name]]
        if name == "api-server":
            argv += ["--host", HOST, "--port", str(self.port)]
        with self.log_file(name).open("ab") as logf:
            logf.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(argv[1:])}\n".encode())
            logf.flush()
            proc = subprocess.Popen(argv, env=env, cwd=self.home, stdout=logf, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        self.pid_file(name).write_text(f"{proc.pid}\n")
        return proc.pid

    def log_tail(self, name: str, lines: int = 30) -> str:
        try:
            text = self.log_file(name).read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return f"({self.log_file(name)} does not exist)"
        return "\n".join(f"  {ln}" for ln in text[-lines:])

    def _logs_report(self, names: list[str] | None = None) -> str:
        return "\n".join(f"--- {self.log_file(n)} (last lines):\n{self.log_tail(n)}"
                         for n in names or COMPONENTS)

    # -- lifecycle
    def up(self, timeout: float = 240.0) -> UpResult:
        """Start whatever is not running, then wait until the health endpoint reports a healthy scheduler
        and dag-processor and every DAG file in ``dags_folder`` is either a listed DAG or an import error."""
        t0 = time.monotonic()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        pids = self.pids()
        running_port = self.running_port()
        if running_port is not None and running_port != self.port:
            raise RuntimeError(f"Airflow under {self.home} already runs on port {running_port}; "
                               f"`g2i airflow down` first to change the port")
        already_up = all(pids.values())
        if not already_up:
            if pids["api-server"] is None and not port_free(self.port):
                raise RuntimeError(f"port {self.port} on {HOST} is in use by another process: "
                                   f"choose another with --port")
            self.write_config()
            env = self.environment()
            self._airflow(["db", "migrate"], env, "db-migrate", timeout=max(60.0, timeout))
            (self.run_dir / "instance.json").write_text(json.dumps({"port": self.port}) + "\n")
            for name, pid in pids.items():
                if pid is None:
                    self._start(name, env)
        try:
            self.wait_healthy(t0 + timeout)
            client = self.client()
            self.ensure_machine_pool(client)
            dags = self.wait_for_dags(client, t0 + timeout)
        except Exception:
            if not already_up:
                self.down()
            raise
        self._unpause_new_dags(client, dags)
        self._protect_password_file()
        return UpResult(self.url, USER, self.password_file, {k: v for k, v in self.pids().items() if v},
                        already_up, time.monotonic() - t0, dags)

    def ensure_machine_pool(self, client: AirflowClient) -> dict | None:
        """The pool G2I_MACHINE_POOL names (``g2i_machine`` by default here), with one slot: the stages that
        size themselves to the whole machine run one at a time. Tasks of a missing pool would never start."""
        name = self.environment().get("G2I_MACHINE_POOL", "")
        if not name:
            return None
        return client.ensure_pool(name, 1, "g2i stages that size themselves to the whole machine (ingest, "
                                           "build-graph, ppr, embed, rerank): one at a time on this machine")

    def _check_alive(self) -> None:
        dead = [name for name, pid in self.pids().items() if pid is None]
        if dead:
            raise RuntimeError(f"Airflow {', '.join(dead)} exited during start-up\n{self._logs_report(dead)}")

    def wait_healthy(self, deadline: float) -> dict:
        last: Any = None
        while True:
            self._check_alive()
            try:
                health = AirflowClient(self.url, timeout=5).health()
                last = health
                if all((health.get(k) or {}).get("status") == "healthy"
                       for k in ("metadatabase", "scheduler", "dag_processor")):
                    return health
            except (OSError, AirflowError, ValueError) as exc:
                last = repr(exc)
            if time.monotonic() > deadline:
                raise RuntimeError(f"Airflow at {self.url} not healthy in time; last health: {last}\n"
                                   f"{self._logs_report()}")
            time.sleep(1.0)

    def dag_files(self) -> set[str]:
        return {p.name for p in self.dags_folder.glob("*.py") if not p.name.startswith("_")}

    def wait_for_dags(self, client: AirflowClient, deadline: float) -> list[dict]:
        """Until every DAG file is parsed: each file either defines a listed DAG or has an import error.
        Import errors in our files raise, with the errors."""
        while True:
            self._check_alive()
            try:
                dags = client.dags()
                errors = client.import_errors()
            except (OSError, AirflowError) as exc:
                dags, errors, missing = [], [], {f"(API not ready: {exc})"}
            else:
                listed = {Path(d.get("relative_fileloc") or d.get("fileloc") or "").name for d in dags}
                failed = {Path(e.get("filename") or "").name: e.get("stack_trace", "") for e in errors}
                ours = {n: t for n, t in failed.items() if n in self.dag_files()}
                if ours:
                    detail = "\n".join(f"--- {n}:\n{t.strip()[-3000:]}" for n, t in sorted(ours.items()))
                    raise RuntimeError(f"Airflow is up at {self.url} but {len(ours)} DAG file(s) failed to "
                                       f"import (GET /api/v2/importErrors):\n{detail}")
                missing = self.dag_files() - listed
                if not missing:
                    return sorted(dags, key=lambda d: d["dag_id"])
            if time.monotonic() > deadline:
                raise RuntimeError(f"Airflow at {self.url} is healthy but has not listed DAGs from "
                                   f"{sorted(missing)} in time\n{self._logs_report(['dag-processor'])}")
            time.sleep(2.0)

    def _unpause_new_dags(self, client: AirflowClient, dags: list[dict]) -> None:
        """DAGs this home has not seen under ``up`` come up unpaused once, even if something else created them
        paused before (``make demo``'s dag.test() runs share this home); later pauses are the user's."""
        seen_file = self.home / "g2i_seen_dags.json"
        try:
            seen = set(json.loads(seen_file.read_text()))
        except (FileNotFoundError, ValueError):
            seen = set()
        ours = {d["dag_id"] for d in dags if Path(d.get("fileloc") or "").parent == self.dags_folder}
        for dag in dags:
            if dag["dag_id"] in ours - seen and dag.get("is_paused"):
                client.set_paused(dag["dag_id"], False)
                dag["is_paused"] = False
                log.info("unpaused %s (first seen by g2i airflow up)", dag["dag_id"])
        seen_file.write_text(json.dumps(sorted(seen | ours)) + "\n")

    def _protect_password_file(self) -> None:
        if self.password_file.exists():
            os.chmod(self.password_file, 0o600)

    def tree(self) -> dict[str, list[int]]:
        """Each running component's pid and every descendant of it (LocalExecutor workers, tasks, jobs)."""
        import psutil

        out = {}
        for name, pid in self.pids().items():
            if pid is None:
                continue
            try:
                out[name] = [pid] + [c.pid for c in psutil.Process(pid).children(recursive=True)]
            except psutil.NoSuchProcess:
                continue
        return out

    def down(self, timeout: float = 30.0) -> list[str]:
        """SIGTERM each component's process group, SIGKILL what is left after ``timeout``, and then any
        descendant that had left its group (a task's own session). Returns the names stopped."""
        import psutil

        stopped: list[str] = []
        procs: list[psutil.Process] = []
        groups: list[int] = []
        for name in COMPONENTS:
            pid = self.pid(name)
            if pid is None:
                self.pid_file(name).unlink(missing_ok=True)
                continue
            try:
                leader = psutil.Process(pid)
                procs += [leader, *leader.children(recursive=True)]
            except psutil.NoSuchProcess:
                continue
            if os.getpgid(pid) == pid:  # started with its own session: the group is ours alone
                groups.append(pid)
                _signal_group(pid, signal.SIGTERM)
            else:
                leader.terminate()
            stopped.append(name)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(_group_alive(g) for g in groups):
            for g in groups:
                _reap(g)
            time.sleep(0.2)
        for g in groups:
            _signal_group(g, signal.SIGKILL)
        for p in procs:  # descendants outside the groups (a task's own session), same process only
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(procs, timeout=5)
        for g in groups:
            _reap(g)
        for name in stopped:
            self.pid_file(name).unlink(missing_ok=True)
        (self.run_dir / "instance.json").unlink(missing_ok=True)
        return stopped

    def status(self) -> dict[str, Any]:
        port = self.running_port()
        if port is not None:
            self.port = port
        health: Any = None
        if self.pid("api-server") is not None:
            try:
                health = AirflowClient(self.url, timeout=5).health()
            except (OSError, AirflowError, ValueError) as exc:
                health = f"unreachable: {exc}"
        return {"url": self.url, "home": str(self.home), "pids": self.pids(), "health": health}


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def _reap(pid: int) -> None:
    """Collect the exit status when the leader is our child (the tests start it in-process)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
