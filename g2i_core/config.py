"""One typed settings object for every stage.

Precedence (lowest to highest): dataclass defaults < TOML file (``G2I_CONFIG`` or ``g2i.toml`` in
the working directory) < environment variables ``G2I_<FIELD>`` < explicit keyword overrides.

Secrets (S3 keys) come only from the environment or an Airflow connection; they are never written
to the TOML file, never logged, and ``Settings.redacted()`` masks them for display.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SECRET_FIELDS = frozenset({"s3_access_key", "s3_secret_key"})


def _local_dir(name: str) -> str:
    return str(PROJECT_ROOT / ".local" / name)


@dataclass(frozen=True)
class Settings:
    # Root URI every stage reads from and writes under: s3://bucket/prefix or file:///abs/path.
    storage_root: str = "s3://g2i"
    # S3 endpoint; empty means the AWS default endpoint (real S3).
    s3_endpoint: str = "http://127.0.0.1:8333"
    s3_region: str = "us-east-1"
    s3_access_key: str = field(default="", repr=False)
    s3_secret_key: str = field(default="", repr=False)
    # Path-style addressing is required by SeaweedFS/MinIO; real S3 works with either.
    s3_path_style: bool = True
    s3_max_attempts: int = 6

    # Spark: local[2] on this machine; spark://host:7077, yarn or k8s://... on a cluster.
    spark_master: str = "local[2]"
    spark_driver_memory: str = "6g"
    spark_executor_memory: str = "4g"
    spark_shuffle_partitions: int = 8
    # Comma-separated local jar paths; empty means "every jar in jars_dir".
    spark_jars: str = ""
    # Maven coordinates for users with network access (spark.jars.packages); empty by default.
    spark_packages: str = ""
    jars_dir: str = field(default_factory=lambda: _local_dir("jars"))
    spark_local_dir: str = field(default_factory=lambda: _local_dir("spark"))
    # Memory (GB) the single-machine PPR (`propagate`) may use; `g2i ppr --method auto` moves to
    # spark-propagate above it. 0: 75% of this machine's physical memory.
    ppr_memory_budget_gb: int = 0
    # `g2i ingest`'s engine when --engine is not given: auto (local when the dump fits that budget and the
    # master is not a cluster), local or spark.
    ingest_engine: str = "auto"

    # Model preset: "tiny" (CPU, random init + offline MiniLM), "tiny16" (the same at 16 px, what the demo
    # trains) or "sd15" (local checkpoints).
    model_preset: str = "tiny"
    sd15_path: str = ""
    clip_vision_path: str = ""
    clip_eval_path: str = ""
    dinov2_path: str = ""
    # Local folders of the frozen parts a saved model names by role (its config.json holds roles, never
    # paths): "role=path,role=path" or a JSON object (G2I_MODEL_PATHS), or a [model_paths] table in
    # g2i.toml. Roles: base (an SD-1.5 pipeline folder), image_encoder (a CLIP vision folder); sd15_path
    # and clip_vision_path serve as base and image_encoder when the role is not named here.
    model_paths: str = ""
    # Inception weights for the paper's FID (torchmetrics' FrechetInceptionDistance), a local file.
    inception_path: str = ""
    device: str = "auto"

    # Local S3 server (SeaweedFS) data and credentials live here.
    s3_server_dir: str = field(default_factory=lambda: _local_dir("s3"))
    run_id: str = ""
    # Hosts the image fetcher may reach even on loopback/private addresses: comma-separated `host` or
    # `host:port` (exact match). Empty by default; the demo and tests set it for their loopback server.
    fetch_allow_hosts: str = ""
    # Where a DAG run (mmag_refresh's `raw` param) may read raw dumps besides <storage_root>/raw/:
    # comma-separated s3:// or file:// URI prefixes, matched on whole path segments. Empty by default.
    raw_allow_prefixes: str = ""

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def load(cls, toml_path: str | os.PathLike | None = None, **overrides: Any) -> "Settings":
        values: dict[str, Any] = {}
        path = toml_path or os.environ.get("G2I_CONFIG") or ("g2i.toml" if Path("g2i.toml").exists() else None)
        if path:
            values.update(_read_toml(Path(path)))
        for f in fields(cls):
            env = os.environ.get(f"G2I_{f.name.upper()}")
            if env is not None:
                values[f.name] = _coerce(f, env)
        if not values.get("s3_access_key") and not values.get("s3_secret_key"):
            values.update(_local_server_credentials(values.get("s3_server_dir") or _local_dir("s3")))
        values.update({k: v for k, v in overrides.items() if v is not None})
        if isinstance(values.get("model_paths"), dict):  # a [model_paths] table in g2i.toml
            values["model_paths"] = json.dumps(values["model_paths"], sort_keys=True)
        unknown = set(values) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown settings {sorted(unknown)}; valid names: {sorted(f.name for f in fields(cls))}")
        settings = cls(**values)
        settings.validate()
        return settings

    def replace(self, **changes: Any) -> "Settings":
        return dataclasses.replace(self, **changes)

    def validate(self) -> None:
        if not (self.storage_root.startswith("s3://") or self.storage_root.startswith("file://")):
            raise ValueError(f"storage_root must start with s3:// or file://, got {self.storage_root!r}")
        if self.model_preset not in {"tiny", "tiny16", "sd15", "sd15-paper"}:
            raise ValueError(f"model_preset must be 'tiny', 'tiny16', 'sd15' or 'sd15-paper', "
                             f"got {self.model_preset!r}")
        if self.spark_shuffle_partitions < 1:
            raise ValueError(f"spark_shuffle_partitions must be >= 1, got {self.spark_shuffle_partitions}")
        if self.ingest_engine not in ("auto", "local", "spark"):
            raise ValueError(f"ingest_engine must be auto, local or spark, got {self.ingest_engine!r}")
        if self.ppr_memory_budget_gb < 0:
            raise ValueError(f"ppr_memory_budget_gb must be >= 0 (0: 75% of physical memory), "
                             f"got {self.ppr_memory_budget_gb}")
        parse_model_paths(self.model_paths)

    def model_part_paths(self) -> dict[str, str]:
        """role -> local folder on this machine: ``model_paths``, then sd15_path (base) and clip_vision_path
        (image_encoder) for roles it does not name."""
        out = {"base": self.sd15_path, "image_encoder": self.clip_vision_path}
        out.update(parse_model_paths(self.model_paths))
        return {k: v for k, v in out.items() if v}

    def redacted(self) -> dict[str, Any]:
        """Settings as a dict with secrets masked: safe to log or save next to an artifact."""
        out = dataclasses.asdict(self)
        for name in SECRET_FIELDS:
            out[name] = "***" if out[name] else ""
        return out

    def jar_paths(self) -> list[str]:
        if self.spark_jars:
            return [p for p in self.spark_jars.split(",") if p]
        d = Path(self.jars_dir)
        return sorted(str(p) for p in d.glob("*.jar")) if d.is_dir() else []


def parse_model_paths(text: str) -> dict[str, str]:
    """``G2I_MODEL_PATHS``: a JSON object {"role": "path"} or "role=path,role=path" -> {role: path}."""
    text = (text or "").strip()
    if not text:
        return {}
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"model_paths (G2I_MODEL_PATHS) is not valid JSON: {exc}") from None
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
            raise ValueError("model_paths (G2I_MODEL_PATHS) must map role names to path strings")
        return {k.strip(): v.strip() for k, v in data.items()}
    out = {}
    for item in text.split(","):
        role, sep, path = item.partition("=")
        if not sep or not role.strip() or not path.strip():
            raise ValueError(f"model_paths (G2I_MODEL_PATHS) must look like role=path,role=path or be a JSON "
                             f"object, got item {item!r}")
        out[role.strip()] = path.strip()
    return out


def _read_toml(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise FileNotFoundError(f"config file {path} does not exist (set G2I_CONFIG or create g2i.toml)")
    with path.open("rb") as fh:
        data = tomllib.load(fh)
    if "g2i" in data:
        top = data
        data = dict(data["g2i"])
        if "model_paths" in top:  # a top-level [model_paths] table next to [g2i]
            data.setdefault("model_paths", top["model_paths"])
    leaked = SECRET_FIELDS & set(data)
    if leaked:
        raise ValueError(f"{path}: {sorted(leaked)} must come from the environment (G2I_S3_ACCESS_KEY/...), not a file")
    return data


def _coerce(f: dataclasses.Field, raw: str) -> Any:
    kind = f.type if isinstance(f.type, type) else {"bool": bool, "int": int, "str": str}.get(str(f.type), str)
    if kind is bool:
        if raw.lower() in {"1", "true", "yes", "on"}:
            return True
        if raw.lower() in {"0", "false", "no", "off"}:
            return False
        raise ValueError(f"G2I_{f.name.upper()} must be a boolean (true/false), got {raw!r}")
    if kind is int:
        try:
            return int(raw)
        except ValueError:
            raise ValueError(f"G2I_{f.name.upper()} must be an integer, got {raw!r}") from None
    return raw


def _local_server_credentials(server_dir: str) -> dict[str, str]:
    """Credentials generated by `g2i s3 start` for the embedded server, if present."""
    cred = Path(server_dir) / "credentials.toml"
    if not cred.exists():
        return {}
    with cred.open("rb") as fh:
        data = tomllib.load(fh)
    return {"s3_access_key": data["access_key"], "s3_secret_key": data["secret_key"]}
