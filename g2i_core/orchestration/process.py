"""Running one stage as a child process: its environment (settings as ``G2I_*``), log-safe command
lines, a process group that dies with the task, and ``run_stage``."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from g2i_core.config import PROJECT_ROOT, SECRET_FIELDS, Settings
from g2i_core.ids import check_raw_uri
from g2i_core.orchestration.stages import stage_argv


def settings_env(settings: Settings) -> dict[str, str]:
    """``G2I_*`` variables that reproduce ``settings`` in a child process (secrets included: env only)."""
    env = {}
    for f in fields(settings):
        value = getattr(settings, f.name)
        env[f"G2I_{f.name.upper()}"] = str(value).lower() if isinstance(value, bool) else str(value)
    return env


def stage_env(settings: Settings, base: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    env.update(settings_env(settings))
    env.setdefault("PYSPARK_PYTHON", sys.executable)
    env.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def redact_argv(argv: Sequence[str], settings: Settings) -> str:
    """The command line as a string safe for logs (no secret values)."""
    secrets = [getattr(settings, n) for n in SECRET_FIELDS if getattr(settings, n)]
    text = shlex.join(argv)
    for s in secrets:
        text = text.replace(s, "***")
    return text


class StageFailed(RuntimeError):
    pass


@dataclass
class StageProcess:
    """One stage as a child process in its own process group, its output streamed line by line.

    ``kill()`` ends the whole group (a Spark JVM and its Python workers included), which is what
    Airflow's ``on_kill`` calls when a task is stopped or times out."""

    argv: list[str]
    env: dict[str, str]
    on_line: Callable[[str], None] = print
    cwd: str = str(PROJECT_ROOT)
    proc: subprocess.Popen | None = field(default=None, init=False)

    def run(self, timeout_s: float | None = None) -> int:
        self.proc = subprocess.Popen(self.argv, env=self.env, cwd=self.cwd, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
                                     errors="replace", preexec_fn=_own_group_dies_with_parent)
        start = time.monotonic()
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.on_line(line.rstrip("\n"))
            if timeout_s and time.monotonic() - start > timeout_s:
                self.kill()
                raise StageFailed(f"stage exceeded {timeout_s:.0f}s and was killed")
        return self.proc.wait()

    def kill(self, grace_s: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        except ProcessLookupError:
            pass


def _own_group_dies_with_parent() -> None:
    """In the child before exec: own process group (so ``kill()`` reaches every descendant) and, on
    Linux, SIGKILL when the task process dies — even by SIGKILL — so no orphaned job keeps writing."""
    os.setsid()
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)


def settings_with_connection(settings: Settings, conn: Mapping[str, Any] | None) -> Settings:
    """Apply an Airflow S3 connection (login/password = keys, extra.endpoint_url/region_name)."""
    if not conn:
        return settings
    extra = conn.get("extra") or {}
    if isinstance(extra, str):
        extra = json.loads(extra or "{}")
    changes = {"s3_access_key": conn.get("login") or settings.s3_access_key,
               "s3_secret_key": conn.get("password") or settings.s3_secret_key,
               "s3_endpoint": extra.get("endpoint_url", settings.s3_endpoint),
               "s3_region": extra.get("region_name", settings.s3_region)}
    return settings.replace(**changes)


def coerce_values(values: Mapping[str, Any]) -> dict[str, Any]:
    """Values that went through Jinja come back as strings: 'True'/'False'/'None' -> Python values."""
    table = {"True": True, "true": True, "False": False, "false": False, "None": None, "": None}
    return {k: table.get(v, v) if isinstance(v, str) else v for k, v in values.items()}


def run_stage(stage: str, values: Mapping[str, Any], settings: Settings, *,
              on_line: Callable[[str], None] = print, on_start: Callable[[StageProcess], None] | None = None,
              timeout_s: float | None = None) -> None:
    """Run one stage to completion; raise ``StageFailed`` (with the exit code) when it fails. Every
    stage gets its dataset's root as ``--root {graph_root}`` from its template."""
    if stage == "ingest":  # the DAG path reads only the storage root's raw/ or the allow-list (g2i_core.ids)
        check_raw_uri(str(values.get("raw", "")), settings)
    argv = stage_argv(stage, coerce_values(values), settings)
    on_line(f"[g2i] {redact_argv(argv, settings)}")
    proc = StageProcess(argv, stage_env(settings), on_line=on_line)
    if on_start:
        on_start(proc)
    try:
        rc = proc.run(timeout_s)
    finally:
        proc.kill()  # no-op when it ended; ends the process group when we are interrupted
    if rc != 0:
        raise StageFailed(f"g2i {stage} exited with code {rc} (command: {redact_argv(argv, settings)})")
