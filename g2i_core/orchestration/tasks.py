"""Task bodies that talk to storage: planning a refresh, preparing and registering training, resolving
models, planning and checking a backfill, publishing a report. Each returns the values (paths and run
ids, never data) that the next task passes on."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

from g2i_core.config import Settings
from g2i_core.ids import check_raw_uri, check_run_id
from g2i_core.orchestration.planning import (
    SOURCES,
    SourceState,
    coverage_report,
    delta_uri,
    fingerprint,
    graph_root,
    plan_source,
    state_uri,
)
from g2i_core.orchestration.process import StageFailed

log = logging.getLogger(__name__)


def _object_facts(storage, uri: str) -> list[tuple[str, int, str]]:
    """(uri, size, etag-or-mtime) of a dump file or of every object under a prefix; [] when absent."""
    if uri.startswith("s3://"):
        from urllib.parse import urlparse

        p = urlparse(uri)
        bucket, key = p.netloc, p.path.lstrip("/")
        pages = storage.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key)
        return [(f"s3://{bucket}/{o['Key']}", int(o["Size"]), o["ETag"]) for page in pages
                for o in page.get("Contents", []) if o["Key"] == key or o["Key"].startswith(key.rstrip("/") + "/")]
    path = Path(uri[len("file://"):])
    files = [path] if path.is_file() else sorted(q for q in path.rglob("*") if q.is_file()) if path.exists() else []
    return [(f"file://{q}", q.stat().st_size, str(q.stat().st_mtime_ns)) for q in files]


def plan_refresh(settings: Settings, *, ds: str, sources: Sequence[str], raw: Mapping[str, str],
                 force: bool = False) -> list[dict]:
    """One ``plan_source`` decision per requested source; returns the values of the sources to refresh."""
    from g2i_core.storage import Storage

    unknown = [s for s in sources if s not in SOURCES]
    if unknown:
        raise ValueError(f"unknown sources {unknown}; valid: {list(SOURCES)}")
    storage = Storage.from_settings(settings)
    items = []
    for source in sources:
        if source not in raw:
            raise ValueError(f"no raw dump URI for source {source!r} in params.raw ({sorted(raw)})")
        check_raw_uri(raw[source], settings)  # a trigger user's param: only under raw/ or the allow-list
        facts = _object_facts(storage, raw[source])
        if not facts:
            raise FileNotFoundError(f"raw dump for {source} not found at {raw[source]}")
        delta = delta_uri(settings.storage_root, source, ds)
        state_path = state_uri(settings.storage_root, source)
        state = SourceState.from_json(storage.get_json(state_path) if storage.exists(state_path) else None)
        root = graph_root(settings.storage_root, source)
        item = plan_source(source, ds=ds, raw=raw[source], full_fingerprint=fingerprint(facts),
                           delta=delta if _object_facts(storage, delta) else None, state=state,
                           published=Storage.from_settings(settings, root=root).is_published("nodes"), force=force)
        log.info("plan %s: %s", source, item or "nothing new (skipped)")
        if item:
            items.append({**item, "graph_root": root})
    return items


def record_refresh(settings: Settings, items: Sequence[Mapping[str, Any]]) -> list[str]:
    """After a successful refresh: remember what each source consumed (the next run's baseline)."""
    from g2i_core.storage import Storage

    storage = Storage.from_settings(settings)
    done = []
    for item in items:
        storage.put_json(state_uri(settings.storage_root, item["source"]),
                         {"logical_date": item["ds"], "full_fingerprint": item["full_fingerprint"],
                          "mode": item["mode"], "run_id": item["run_id"]})
        done.append(item["source"])
    return done


FINAL_MODEL_FILE = "model.safetensors"  # written by `g2i train` after the last step (checkpoints live deeper)


def _root_storage(settings: Settings, dataset: str):
    from g2i_core.storage import Storage

    if dataset not in SOURCES:
        raise ValueError(f"dataset must be one of {list(SOURCES)}, got {dataset!r}")
    return Storage.from_settings(settings, root=graph_root(settings.storage_root, dataset))


def prepare_train(settings: Settings, *, dataset: str, preset: str, steps: int, resume: bool, run_id: str,
                  batch_size: int | None = None) -> dict:
    """Values of the train stage, after checking its inputs are published."""
    check_run_id(run_id)
    storage = _root_storage(settings, dataset)
    for table in ("nodes", "neighbours"):
        if not storage.is_published(table):
            raise ValueError(f"{table} is not published under {storage.root}: run mmag_refresh for {dataset} first")
    return {"source": dataset, "graph_root": storage.root, "run_id": run_id, "preset": preset, "steps": int(steps),
            "batch_size": int(batch_size) if batch_size else None, "resume": bool(resume)}


def register_model(settings: Settings, values: Mapping[str, Any]) -> dict:
    """Point ``models/_LATEST`` at a finished training run (the backfill/evaluate default model)."""
    storage = _root_storage(settings, values["source"])
    run_uri = storage.uri("models", values["run_id"])
    if not storage.exists(f"{run_uri}/{FINAL_MODEL_FILE}"):
        raise FileNotFoundError(f"training run {values['run_id']} has no final model ({FINAL_MODEL_FILE}) under "
                                f"{run_uri}: did `g2i train` finish?")
    storage.put_json(storage.uri("models", "_LATEST"), {"run_id": values["run_id"]})
    return {**values, "model": run_uri}


def resolve_model(storage, model: str) -> str:
    """Model URI for a run id, or for the latest registered model when ``model`` is empty."""
    if not model:
        pointer = storage.uri("models", "_LATEST")
        if not storage.exists(pointer):
            raise FileNotFoundError(f"no trained model under {storage.uri('models')}: run g2i_train first")
        model = storage.get_json(pointer)["run_id"]
    uri = storage.uri("models", check_run_id(model, "model"))
    if not storage.exists(f"{uri}/{FINAL_MODEL_FILE}"):
        raise FileNotFoundError(f"model run {model!r} has no final model under {uri} (finished runs: "
                                f"{sorted({u.split('/models/')[1].split('/')[0] for u in storage.list(storage.uri('models')) if u.endswith(FINAL_MODEL_FILE)})})")
    return uri


def plan_backfill(settings: Settings, *, dataset: str, model: str, shards: int, steps: int, run_id: str) -> list[dict]:
    """One values dict per shard of the cover backfill (``g2i generate --backfill --shard i``)."""
    storage = _root_storage(settings, dataset)
    model_uri = resolve_model(storage, model)
    base = {"source": dataset, "graph_root": storage.root, "model": model_uri, "split": None, "backfill": True,
            "steps": int(steps), "limit": None, "generations": run_id}
    return [{**base, "shard": f"{i}/{int(shards)}"} for i in range(int(shards))]


def check_backfill_coverage(settings: Settings, shards: Sequence[Mapping[str, Any]], *, sample: int) -> dict:
    """The published shard manifests cover every backfill target exactly once; returns evaluate values."""
    from g2i_core.generate import GenerateConfig, read_manifest, select_nodes

    first = shards[0]
    storage = _root_storage(settings, first["source"])
    run_id = first["generations"]
    generated = read_manifest(storage, run_id).column("node_id").to_pylist()
    targets = select_nodes(storage, GenerateConfig(run_id=run_id, model_uri=first["model"], backfill=True))
    problems = coverage_report(targets, generated)
    if any(problems.values()):
        raise StageFailed(f"backfill {run_id} does not cover its targets exactly once: "
                          + ", ".join(f"{len(v)} {k} (e.g. {v[:3]})" for k, v in problems.items() if v))
    log.info("backfill %s: %d targets covered exactly once by %d shards", run_id, len(targets), len(shards))
    # Covers have no ground truth, so quality is measured on a sample of test nodes that do have a real
    # image, generated with the same model and settings as the backfill.
    check_run = f"{run_id}-check"
    return {"source": first["source"], "graph_root": storage.root, "model": first["model"], "split": "test",
            "backfill": False, "shard": None, "steps": first["steps"], "limit": int(sample),
            "generations": check_run, "run_id": check_run, "targets": len(targets)}


def prepare_evaluate(settings: Settings, *, dataset: str, model: str, split: str, steps: int, run_id: str,
                     limit: int = 0) -> dict:
    storage = _root_storage(settings, dataset)
    return {"source": dataset, "graph_root": storage.root, "model": resolve_model(storage, model), "split": split,
            "backfill": False, "shard": None, "steps": int(steps), "generations": run_id, "run_id": run_id,
            "limit": int(limit) if limit else None}


def publish_report(settings: Settings, values: Mapping[str, Any]) -> dict:
    """Point ``reports/_LATEST`` at this report; returns its location and headline metrics."""
    storage = _root_storage(settings, values["source"])
    report = storage.uri("reports", values["run_id"])
    metrics = storage.get_json(f"{report}/metrics.json")
    storage.put_json(storage.uri("reports", "_LATEST"), {"run_id": values["run_id"]})
    return {"report": f"{report}/report.html", "metrics_uri": f"{report}/metrics.json",
            "headline": headline_metrics(metrics)}


def headline_metrics(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The numbers worth printing from a report's metrics.json: each method's metric means (with the
    bootstrap interval when there is one), the number of nodes, and which encoders produced them."""
    out: dict[str, Any] = {}
    for method in metrics.get("methods", []):
        for name, est in sorted(method.get("summary", {}).items()):
            if isinstance(est, Mapping) and "mean" in est:
                ci = f" [{est['lo']:.4g}, {est['hi']:.4g}]" if "lo" in est and "hi" in est else ""
                out[f"{method['name']}.{name}"] = f"{est['mean']:.4g}{ci} (n={est.get('n', '?')})"
    for key, value in (metrics.get("encoders") or {}).items():
        out[f"encoder.{key}"] = value
    checks = metrics.get("checks") or []
    if checks:
        out["checks passed"] = f"{sum(bool(c.get('passed')) for c in checks)}/{len(checks)}"
    return out
