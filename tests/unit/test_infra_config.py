"""The deployment files in infra/ leave nothing unauthenticated and no secret optional.

Static checks (no Docker, no cluster here): compose.yaml, the Helm values, spark-defaults.conf,
airflow.cfg and SeaweedFS's security.toml are parsed and held to what docs/security.md promises.
"""

from __future__ import annotations

import configparser
import re
import shlex
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

INFRA = Path(__file__).resolve().parents[2] / "infra"
REQUIRED = re.compile(r"^\$\{(\w+):\?[^}]+\}$")  # ${VAR:?message}: compose stops when VAR is unset or empty


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((INFRA / "compose.yaml").read_text())


@pytest.fixture(scope="module")
def helm() -> dict:
    return yaml.safe_load((INFRA / "k8s" / "airflow-values.yaml").read_text())


def _spark_defaults() -> dict[str, str]:
    conf = {}
    for line in (INFRA / "spark" / "spark-defaults.conf").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.strip().partition(" ")
            conf[key] = value.strip()
    return conf


def _published(service: dict) -> list[tuple[str, str]]:
    """(host address, container port) of every published port; short syntax only, as used here."""
    out = []
    for entry in service.get("ports", []):
        parts = str(entry).split(":")
        assert len(parts) == 3, f"publish on an explicit host address, not {entry!r}"
        out.append((parts[0], parts[2].split("/")[0]))
    return out


def _weed_flags(service: dict) -> dict[str, str]:
    return dict(a.lstrip("-").split("=", 1) if "=" in a else (a.lstrip("-"), "true") for a in service["command"][1:])


def test_seaweedfs_publishes_only_s3_and_keeps_every_other_port_on_loopback(compose):
    services = compose["services"]
    weed = services["seaweedfs"]
    assert weed["command"][0] == "server"
    flags = _weed_flags(weed)
    # master, volume, filer (HTTP and gRPC) and the S3 gateway bind to the container's loopback
    assert flags["ip.bind"] == "127.0.0.1" and flags["ip"] == "127.0.0.1"
    assert "s3.ip.bind" not in flags
    assert flags["disableHttp"] == "true"  # no /dir/assign, /col/delete, filer listings or uploads
    assert flags["s3.port.iceberg"] == "0" and flags["s3.port.lance"] == "0"
    assert flags["master.telemetry"] == "false"
    for off in ("webdav", "sftp", "iam", "mq.broker", "mq.agent"):
        assert flags.get(off, "false") == "false", off
    # exactly one published port: S3, on the host's loopback
    assert _published(weed) == [("127.0.0.1", "8333")]
    # ...served by the relay in the same network namespace, to the gateway's HTTP port only
    relay = services["seaweedfs-s3"]
    assert relay["network_mode"] == "service:seaweedfs"
    assert relay["command"] == ["TCP-LISTEN:8333,fork,reuseaddr", f"TCP:127.0.0.1:{flags['s3.port']}"]
    # no other service exposes a SeaweedFS port or shares its network
    for name, svc in services.items():
        if name not in ("seaweedfs", "seaweedfs-s3"):
            assert "seaweedfs" not in str(svc.get("network_mode", "")), name
            assert "seaweedfs" not in str(svc.get("image", "")), name


def test_seaweedfs_requires_jwt_keys_and_mounts_its_security_config(compose):
    weed = compose["services"]["seaweedfs"]
    env = weed["environment"]
    for key in ("WEED_JWT_SIGNING_KEY", "WEED_JWT_SIGNING_READ_KEY", "WEED_JWT_FILER_SIGNING_KEY",
                "WEED_JWT_FILER_SIGNING_READ_KEY"):
        assert REQUIRED.match(env[key]), key
    targets = {s["target"]: compose["secrets"][s["source"]]["file"] for s in weed["secrets"]}
    assert targets["/etc/seaweedfs/security.toml"] == "./seaweedfs/security.toml"
    assert targets["/etc/seaweedfs/s3.json"] == "./seaweedfs/s3.json"
    assert f"-s3.config={'/etc/seaweedfs/s3.json'}" in weed["command"]
    security = tomllib.loads((INFRA / "seaweedfs" / "security.toml").read_text())
    # keys come only from the environment: an empty key in the file would be a silent "off"
    for section in (security["jwt"]["signing"], security["jwt"]["signing"]["read"],
                    security["jwt"]["filer_signing"], security["jwt"]["filer_signing"]["read"]):
        assert "key" not in section
    assert security["access"]["ui"] is False
    assert security["filer"]["expose_directory_metadata"]["enabled"] is False


def test_spark_requires_its_shared_secret(compose, helm):
    conf = _spark_defaults()
    assert conf["spark.authenticate"] == "true"
    assert conf["spark.network.crypto.enabled"] == "true"
    assert conf["spark.master.rest.enabled"] == "false"
    assert conf["spark.ui.killEnabled"] == "false"
    assert not any("secret" in k for k in conf), "the secret never goes in spark-defaults.conf"
    services = compose["services"]
    for name in ("spark-master", "spark-worker"):
        assert REQUIRED.match(services[name]["environment"]["_SPARK_AUTH_SECRET"]), name
    # the driver (spark-submit on the Airflow scheduler) carries the same secret, required
    opts = compose["x-g2i-env"]["SPARK_SUBMIT_OPTS"]
    match = re.fullmatch(r"-Dspark\.authenticate\.secret=(\$\{\w+:\?[^}]+\})", opts)
    assert match and REQUIRED.match(match.group(1))
    assert match.group(1).split(":")[0] == services["spark-master"]["environment"]["_SPARK_AUTH_SECRET"].split(":")[0]
    # the master's RPC port stays inside the network; its UI only on the host's loopback
    assert _published(services["spark-master"]) == [("127.0.0.1", "8080")]
    assert "ports" not in services["spark-worker"]
    # Kubernetes: Spark makes a secret per application once authentication is on
    env = {e["name"]: e.get("value") for e in helm["env"]}
    assert "-Dspark.authenticate=true" in env["SPARK_SUBMIT_OPTS"].split()


def test_fernet_key_is_required_everywhere(compose, helm):
    assert REQUIRED.match(compose["x-g2i-env"]["AIRFLOW__CORE__FERNET_KEY"])
    assert not re.search(r"\$\{\w+:?-", (INFRA / "compose.yaml").read_text()), "no variable may fall back to a default"
    # Helm: from an existing Secret, never a literal or a chart-generated key
    assert helm["fernetKeySecretName"]
    assert "fernetKey" not in helm
    # airflow.cfg (compose mounts it): no empty key; a missing variable fails loudly, a set one is used
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read(INFRA / "airflow" / "airflow.cfg")
    assert not cfg.has_option("core", "fernet_key")
    argv = shlex.split(cfg.get("core", "fernet_key_cmd"))
    unset = subprocess.run(argv, capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
    assert unset.returncode != 0 and "AIRFLOW__CORE__FERNET_KEY" in unset.stderr
    set_ = subprocess.run(argv, capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "AIRFLOW__CORE__FERNET_KEY": "k3y"})
    assert set_.returncode == 0 and set_.stdout.strip() == "k3y"


def test_new_dags_start_paused(helm):
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read(INFRA / "airflow" / "airflow.cfg")
    assert cfg.getboolean("core", "dags_are_paused_at_creation") is True
    assert helm["config"]["core"]["dags_are_paused_at_creation"] == "True"


def test_every_required_variable_is_in_env_example(compose):
    text = "\n".join(line for line in (INFRA / "compose.yaml").read_text().splitlines()
                     if not line.lstrip().startswith("#"))
    required = set(re.findall(r"\$\{(\w+):\?", text))
    example = {line.split("=", 1)[0] for line in (INFRA / ".env.example").read_text().splitlines()
               if line and not line.startswith("#")}
    assert required <= example, required - example
    # and every host-published port of every service is bound to the host's loopback
    for name, svc in compose["services"].items():
        for host, _ in _published(svc):
            assert host == "127.0.0.1", name
