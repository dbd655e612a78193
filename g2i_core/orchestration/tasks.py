"""Task bodies that talk to storage: planning a refresh, preparing and registering training, resolving
models, planning and checking a backfill, publishing a report. Each returns the values (paths and run
ids, never data) that the next task passes on."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

from g2i_core.config import Settings
from g2i_core.ids import check_run_id, resolve_raw_uri
from g2i_core.orchestration.planning import (
    DEFAULT_LINK_ON,
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
                 force: bool = False, link_on: str = DEFAULT_LINK_ON, max_links_per_value: int = 10) -> list[dict]:
    """One ``plan_source`` decision per requested source; returns the values of the sources to refresh.
    ``link_on`` / ``max_links_per_value``: the ``attributes`` source's projection (checked here)."""
    from g2i_core.ingest.attributes import check_options, parse_link_on
    from g2i_core.storage import Storage

    unknown = [s for s in sources if s not in SOURCES]
    if unknown:
        raise ValueError(f"unknown sources {unknown}; valid: {list(SOURCES)}")
    storage = Storage.from_settings(settings)
    items = []
    for source in sources:
        if source not in raw:
            raise ValueError(f"no raw dump URI for source {source!r} in params.raw ({sorted(raw)})")
        # a trigger user's param: only under the storage root's raw/ or the allow-list
        raw_uri = resolve_raw_uri(raw[source], settings)
        facts = _object_facts(storage, raw_uri)
        if not facts:
            raise FileNotFoundError(f"raw dump for {source} not found at {raw_uri}")
        delta = delta_uri(settings.storage_root, source, ds)
        state_path = state_uri(settings.storage_root, source)
        state = SourceState.from_json(storage.get_json(state_path) if storage.exists(state_path) else None)
        root = graph_root(settings.storage_root, source)
        item = plan_source(source, ds=ds, raw=raw_uri, full_fingerprint=fingerprint(facts),
                           delta=delta if _object_facts(storage, delta) else None, state=state,
                           published=Storage.from_settings(settings, root=root).is_published("nodes"), force=force)
        log.info("plan %s: %s", source, item or "nothing new (skipped)")
        if item and source == "attributes":  # a trigger user's param: column names only, checked
            columns = parse_link_on(link_on)
            check_options(columns, int(max_links_per_value))
            item = {**item, "link_on": ",".join(columns), "max_links_per_value": int(max_links_per_value)}
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


def collect_old_runs(settings: Settings, items: Sequence[Mapping[str, Any]], keep_runs: int) -> list[dict]:
    """After a refresh: ``g2i gc`` of each refreshed source's root, keeping its newest ``keep_runs`` runs
    (besides the live, protected and day-old ones; g2i_core.retention). ``keep_runs`` 0 removes nothing."""
    from g2i_core.retention import RetentionPolicy, apply_gc, plan_gc
    from g2i_core.storage import Storage

    if keep_runs <= 0:
        return []
    out = []
    for item in items:
        storage = Storage.from_settings(settings, root=item["graph_root"])
        plan = plan_gc(storage, RetentionPolicy(keep_runs=keep_runs))
        out.append({"source": item["source"], "runs_removed": len(plan.removals),
                    "objects_removed": apply_gc(storage, plan)})
    return out


MODEL_COMMIT_FILE = "_COMMITTED.json"  # = g2i_core.model.train.COMMIT_FILE: written after every other model file


def _root_storage(settings: Settings, dataset: str):
    from g2i_core.storage import Storage

    if dataset not in SOURCES:
        raise ValueError(f"dataset must be one of {list(SOURCES)}, got {dataset!r}")
    return Storage.from_settings(settings, root=graph_root(settings.storage_root, dataset))


def requests_from_events(events: Sequence[Mapping[str, Any]], key: str) -> list[dict]:
    """What a run triggered by asset events must do: one request per dataset, from the newest event of
    each (``events`` are their ``extra`` dicts, oldest first; each names ``dataset`` and ``key``)."""
    latest: dict[str, dict] = {}
    for extra in events:
        if extra.get("dataset") in SOURCES and extra.get(key):
            latest[extra["dataset"]] = dict(extra)
    return [latest[d] for d in sorted(latest)]


def live_run_id(storage, table: str) -> str:
    """The run id ``table`` points at now: resolved once, when a run is planned, then passed on by id."""
    from g2i_core.storage import NotPublishedError

    try:
        return storage.manifest(table)["run_id"]
    except NotPublishedError:
        raise ValueError(f"{table} is not published under {storage.root}: run mmag_refresh for it first") from None


def prepare_train(settings: Settings, *, requests: Sequence[Mapping[str, Any]], preset: str, steps: int,
                  resume: bool, run_key: str, run_id: str = "", batch_size: int | None = None) -> list[dict]:
    """Values of one train stage per requested dataset, with the graph version pinned by run id.

    A request is ``{"dataset", "graph_run_id"}`` (from a ``g2i.neighbours`` event or the params; an
    empty graph run id means the live one now, resolved here once)."""
    out = []
    for req in requests:
        storage = _root_storage(settings, req["dataset"])
        graph_run = req.get("graph_run_id") or live_run_id(storage, "neighbours")
        check_run_id(graph_run, "graph_run_id")
        pinned = storage.pinned(graph_run)
        for table in ("neighbours", "node_images"):
            if not pinned.is_published(table):
                raise ValueError(f"{table} run {graph_run} is not published under {storage.root}")
        model_run = check_run_id(run_id or f"train-{run_key}")
        out.append({"source": req["dataset"], "graph_root": storage.root, "graph_run_id": graph_run,
                    "run_id": model_run, "preset": preset, "steps": int(steps),
                    "batch_size": int(batch_size) if batch_size else None, "resume": bool(resume),
                    "run_key": run_key})
    return out


def register_model(settings: Settings, values: Mapping[str, Any]) -> dict:
    """Check the training run committed, and move ``models/_LATEST`` to it unless a model of a later
    run key is registered already (clearing an old run never makes its model the default). ``live`` in
    the result says whether it is the registered model now; the DAG emits ``g2i.model`` only then."""
    storage = _root_storage(settings, values["source"])
    run_uri = storage.uri("models", values["run_id"])
    marker = _model_commit(storage, values["run_id"])
    pointer_uri = storage.uri("models", "_LATEST")
    current = storage.get_json(pointer_uri) if storage.exists(pointer_uri) else {}
    key = values.get("run_key", "")
    live = not current.get("run_key") or not key or key >= current["run_key"]
    if live:
        storage.put_json(pointer_uri, {"run_id": values["run_id"], "run_key": key,
                                       "graph_run_id": marker["graph_run_id"]})
    else:
        log.warning("model %s (run key %s) is older than the registered %s (%s): models/_LATEST unchanged",
                    values["run_id"], key, current["run_id"], current["run_key"])
    return {**values, "model": run_uri, "model_run_id": values["run_id"],
            "graph_run_id": marker["graph_run_id"], "live": live}


def _model_commit(storage, model: str) -> dict:
    check_run_id(model, "model")
    uri = storage.uri("models", model, MODEL_COMMIT_FILE)
    if not storage.exists(uri):
        finished = sorted({u.split("/models/")[1].split("/")[0] for u in storage.list(storage.uri("models"))
                           if u.endswith("/" + MODEL_COMMIT_FILE)})
        raise FileNotFoundError(f"model run {model!r} under {storage.uri('models')} is not a finished model (no "
                                f"{MODEL_COMMIT_FILE}; did `g2i train` finish?); finished runs: {finished}")
    return storage.get_json(uri)


def resolve_model(storage, model: str) -> tuple[str, dict]:
    """(model URI, its commit marker) for a run id, or for the registered model when ``model`` is
    empty: resolved once when a run is planned, then passed on by id."""
    if not model:
        pointer = storage.uri("models", "_LATEST")
        if not storage.exists(pointer):
            raise FileNotFoundError(f"no trained model under {storage.uri('models')}: run g2i_train first")
        model = storage.get_json(pointer)["run_id"]
    return storage.uri("models", model), _model_commit(storage, model)


def _scale(value: Any) -> float | None:
    return None if value is None or value == "" else float(value)


def plan_backfill(settings: Settings, *, requests: Sequence[Mapping[str, Any]], shards: int, steps: int,
                  run_key: str, text_scale: float | None = None, graph_scale: float | None = None) -> list[dict]:
    """One values dict per (dataset, shard) of the cover backfill (``g2i generate --backfill --shard i/n``).

    A request is ``{"dataset", "model_run_id"}`` (from a ``g2i.model`` event or the params; an empty
    model means the registered one now). The graph version is the one the model was trained on. Scales
    left ``None`` are the generator's defaults."""
    out = []
    for req in requests:
        storage = _root_storage(settings, req["dataset"])
        model_uri, marker = resolve_model(storage, req.get("model_run_id") or "")
        base = {"source": req["dataset"], "graph_root": storage.root, "model": model_uri,
                "graph_run_id": marker["graph_run_id"], "split": None, "backfill": True, "steps": int(steps),
                "limit": None, "generations": f"backfill-{run_key}", "text_scale": _scale(text_scale),
                "graph_scale": _scale(graph_scale)}
        out += [{**base, "shard": f"{i}/{int(shards)}"} for i in range(int(shards))]
    return out


def check_backfill_coverage(settings: Settings, shards: Sequence[Mapping[str, Any]], *, sample: int,
                            labels: str = "") -> list[dict]:
    """Per dataset: the published shard manifests cover every backfill target exactly once, and the
    model's backfill pointer moves to this run. Returns the values of the quality check (generate a
    sample of test nodes with the graph and text-only, evaluate both; the report shows the backfill
    gallery), one per dataset. ``labels``: a community CSV under the storage root's ``raw/``."""
    from g2i_core.generate import GenerateConfig, read_manifest, select_nodes

    by_dataset: dict[str, list[Mapping[str, Any]]] = {}
    for shard in shards:
        by_dataset.setdefault(shard["source"], []).append(shard)
    checks = []
    for dataset, group in sorted(by_dataset.items()):
        first = group[0]
        storage = _root_storage(settings, dataset).pinned(first["graph_run_id"])
        run_id = first["generations"]
        generated = read_manifest(storage, run_id).column("node_id").to_pylist()
        targets = select_nodes(storage, GenerateConfig(run_id=run_id, model_uri=first["model"], backfill=True))
        problems = coverage_report(targets, generated)
        if any(problems.values()):
            raise StageFailed(f"{dataset} backfill {run_id} does not cover its targets exactly once: "
                              + ", ".join(f"{len(v)} {k} (e.g. {v[:3]})" for k, v in problems.items() if v))
        log.info("%s backfill %s: %d targets covered exactly once by %d shards", dataset, run_id, len(targets),
                 len(group))
        # Covers have no ground truth, so quality is measured on a sample of test nodes that do have a
        # real image, generated with the same model, graph version and settings as the backfill.
        record_backfill(storage, first["model"], run_id)
        check_run = f"{run_id}-check"
        checks.append({"source": dataset, "graph_root": first["graph_root"], "graph_run_id": first["graph_run_id"],
                       "model": first["model"], "split": "test", "backfill": False, "shard": None,
                       "steps": first["steps"], "limit": int(sample), "generations": check_run, "run_id": check_run,
                       "targets": len(targets), "backfill_run": run_id, "text_scale": first.get("text_scale"),
                       "graph_scale": first.get("graph_scale"), **_baseline(check_run),
                       "labels": resolve_raw_uri(labels, settings) if labels else None})
    return checks


def _baseline(generations: str) -> dict[str, str]:
    """The text-only baseline of a graph-guided generation run: its run id and the evaluate argument."""
    return {"text_only_generations": f"{generations}-text", "baseline": f"text_only={generations}-text"}


def text_only_values(values: Mapping[str, Any]) -> dict:
    """The ``generate`` values of the text-only baseline of ``values``: the same model, nodes, seeds and
    text scale with graph guidance 0, published as its own generation run (``text_only_generations``).

    Why this baseline: with s_G = 0 the guidance formula is the model's text-only prediction
    ε(c_T, ∅_G), which condition dropout trains; it costs one generation in the same DAG run and no
    second model. A text-only fine-tune (the paper suite's ``text_only``) is the stronger baseline."""
    return {**values, "generations": values["text_only_generations"], "graph_scale": 0.0}


BACKFILL_POINTERS = "generations/_backfills"  # <model run>.json: the model's newest checked backfill run


def record_backfill(storage, model_uri: str, run_id: str) -> None:
    """Point ``generations/_backfills/<model run>.json`` at ``run_id`` (forward only, by run id, so a
    cleared old backfill never hides a newer one)."""
    from g2i_core.generate import model_id_of

    uri = storage.uri(BACKFILL_POINTERS, f"{check_run_id(model_id_of(model_uri), 'model')}.json")
    current = storage.get_json(uri) if storage.exists(uri) else {}
    if current.get("run_id", "") <= run_id:
        storage.put_json(uri, {"run_id": run_id, "model": model_uri})


def backfill_of(storage, model_uri: str) -> str:
    """The newest checked backfill run of a model ("" when it has none): resolved once, then passed on."""
    from g2i_core.generate import model_id_of

    uri = storage.uri(BACKFILL_POINTERS, f"{check_run_id(model_id_of(model_uri), 'model')}.json")
    return storage.get_json(uri)["run_id"] if storage.exists(uri) else ""


def prepare_evaluate(settings: Settings, *, dataset: str, model: str, split: str, steps: int, run_id: str,
                     limit: int = 0, text_scale: float | None = None, graph_scale: float | None = None,
                     labels: str = "", backfill_run: str = "") -> dict:
    """Values of the evaluation: graph-guided and text-only generations of the split (same model, same
    run), scored together; the report shows the model's backfill gallery (``backfill_run``, default its
    newest checked backfill) and uses ``labels`` (a community CSV under ``raw/``) when given."""
    storage = _root_storage(settings, dataset)
    model_uri, marker = resolve_model(storage, model)
    backfill = check_run_id(backfill_run, "backfill_run") if backfill_run else backfill_of(storage, model_uri)
    return {"source": dataset, "graph_root": storage.root, "model": model_uri, "graph_run_id": marker["graph_run_id"],
            "split": split, "backfill": False, "shard": None, "steps": int(steps), "generations": run_id,
            "run_id": check_run_id(run_id), "limit": int(limit) if limit else None,
            "text_scale": _scale(text_scale), "graph_scale": _scale(graph_scale), **_baseline(run_id),
            "labels": resolve_raw_uri(labels, settings) if labels else None, "backfill_run": backfill or None}


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
