"""``g2i evaluate`` on stored generations: read generation manifests and ground truth, score, report.

    evaluate_generations(storage, settings, "eval-20240101",
                         {"graph_guided": "eval-20240101", "text_only": "eval-20240101-text"},
                         backfill_run="backfill-20240101")

Ground truth is each node's 'ok' image in ``node_images``. Community labels, in order of preference:
a CSV (``node_id,community``, gzip allowed; a local path or a storage URI such as the sample's
``truth/<format>_communities.csv.gz`` uploaded under ``raw/``), the nodes table's ``community`` column,
or k-means clusters of the real images (pseudo-labels).

The report shows, per node, its title, the real cover and every method's image side by side, and the
neighbours the graph-guided generation was conditioned on (from that run's manifest, with their titles).
With ``backfill_run`` it also shows the backfill gallery (covers generated for nodes without one, with
title and neighbours), and writes the same gallery as ``generations/<backfill_run>/backfill.html``.
"""

from __future__ import annotations

import csv
import gzip
import io
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from g2i_core.config import Settings
    from g2i_core.storage import Storage

log = logging.getLogger(__name__)

REAL_COLUMN = "real cover"
BASELINE = "text_only"  # the method every other one is compared with, when present
COLUMN_LABELS = {"text_only": "text-only", "graph_guided": "graph-guided"}  # grid headers; other names as given


def read_labels_csv(path: str | Path, storage: "Storage | None" = None) -> dict[str, str]:
    """``node_id -> community`` from a CSV; ``path`` is local, or a ``s3://``/``file://`` URI read
    through ``storage``. A ``.gz`` name is gunzipped."""
    name = str(path)
    if "://" in name:
        if storage is None:
            raise ValueError(f"labels {name!r} is a URI: pass the storage to read it")
        raw = storage.get_bytes(name)
    else:
        raw = Path(name).read_bytes()
    text = (gzip.decompress(raw) if name.endswith(".gz") else raw).decode("utf-8")
    rows = list(csv.DictReader(io.StringIO(text)))
    if not rows or not {"node_id", "community"} <= rows[0].keys():
        raise ValueError(f"{name} must be a CSV with columns node_id,community; got {list(rows[0]) if rows else []}")
    return {r["node_id"]: r["community"] for r in rows}


def _decode(storage: "Storage", key: str) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(storage.get_bytes(storage.uri(key)))) as im:
        return np.asarray(im.convert("RGB"))


def _titles(nodes: list[dict]) -> dict[str, str]:
    return {r["node_id"]: str(r.get("text") or r.get("title") or "") for r in nodes}


def spread_over_labels(nodes: list[str], labels: dict[str, Any], n: int) -> list[str]:
    """Up to ``n`` of ``nodes``, taken round-robin over their labels (sorted), so the shown rows cover
    as many communities as possible; nodes keep their order within a label."""
    groups: dict[str, list[str]] = {}
    for node in nodes:
        groups.setdefault(str(labels.get(node, "")), []).append(node)
    order = [groups[k] for k in sorted(groups)]
    out: list[str] = []
    while len(out) < n and any(order):
        for group in order:
            if group and len(out) < n:
                out.append(group.pop(0))
    return out


def neighbour_strip(ids: list[str], real: dict[str, np.ndarray], titles: dict[str, str]) -> dict[str, list]:
    """The neighbours a generation was conditioned on, as images with their titles (those with an image)."""
    kept = [n for n in ids if n in real]
    return {"neighbours": [real[n] for n in kept], "neighbour_titles": [titles.get(n, "") or n for n in kept],
            "neighbour_ids": kept}


def backfill_gallery(storage: "Storage", run_id: str, real: dict[str, np.ndarray], titles: dict[str, str],
                     limit: int) -> tuple[list[dict], int]:
    """Tiles of a backfill generation run (first seed per node, sorted by node id, at most ``limit``) and
    the number of covers the run generated in all."""
    from g2i_core.generate import read_manifest

    rows = sorted(read_manifest(storage, run_id).to_pylist(), key=lambda r: (r["node_id"], r["seed"]))
    first: dict[str, dict] = {}
    for row in rows:
        first.setdefault(row["node_id"], row)
    tiles = [{"node_id": n, "title": titles.get(n, ""), "image": _decode(storage, row["image_key"]),
              **neighbour_strip(list(row.get("neighbour_ids") or []), real, titles)}
             for n, row in list(first.items())[:limit]]
    return tiles, len(first)


def evaluate_generations(storage: "Storage", settings: "Settings", run_id: str, generations: dict[str, str], *,
                         labels_csv: str = "", clusters: int = 8, encoders: tuple[str, ...] = (),
                         nodes_table: str = "graph_nodes", images_table: str = "node_images",
                         grid_nodes: int = 8, backfill_run: str = "", gallery_nodes: int = 48) -> dict:
    """Score each generation run against the ground truth; publish reports/<run_id>/; return metrics."""
    from g2i_core.evaluate.features import resize_images
    from g2i_core.evaluate.offline import pseudo_labels
    from g2i_core.evaluate.report import publish_report, render_gallery_page, render_report
    from g2i_core.evaluate.runner import compare, evaluate_methods, fit_space
    from g2i_core.evaluate.suite import _load_encoders
    from g2i_core.generate import read_manifest
    from g2i_core.model.data import resolve_nodes_table

    if not generations:
        raise ValueError("give at least one generation run: --generations NAME=RUN_ID")
    # 1. Generated images per method (one seed = the generator seed of the manifest rows), and the
    #    neighbours each node was conditioned on.
    methods: dict[str, dict[int, dict[str, np.ndarray]]] = {}
    conditioned: dict[str, dict[str, list[str]]] = {}
    settings_of: dict[str, str] = {}
    for name, gen_run in generations.items():
        for row in sorted(read_manifest(storage, gen_run).to_pylist(), key=lambda r: r["seed"]):
            settings_of.setdefault(name, f"{row['model_id']}, s_T={row['text_scale']:g}, s_G={row['graph_scale']:g}, "
                                         f"{row['steps']} denoising steps")
            methods.setdefault(name, {}).setdefault(int(row["seed"]), {})[row["node_id"]] = \
                _decode(storage, row["image_key"])
            if row.get("neighbour_ids") and row.get("graph_scale", 1.0) != 0.0:
                conditioned.setdefault(name, {}).setdefault(row["node_id"], list(row["neighbour_ids"]))
    evaluated = sorted({n for per_seed in methods.values() for imgs in per_seed.values() for n in imgs})
    # 2. Ground truth of every node with a usable image (the style space learns from the others), titles.
    keys = {r["node_id"]: r["image_key"] for r in storage.read_table(images_table).to_pylist() if r["status"] == "ok"}
    real = {n: _decode(storage, k) for n, k in sorted(keys.items())}
    nodes = storage.read_table(resolve_nodes_table(storage, nodes_table)).to_pylist()
    titles = _titles(nodes)
    # 3. Labels.
    if labels_csv:
        labels, source = read_labels_csv(labels_csv, storage), f"labels file {labels_csv.rsplit('/', 1)[-1]}"
    elif nodes and "community" in nodes[0]:
        labels = {r["node_id"]: r["community"] for r in nodes}
        source = "the nodes table's community column"
    else:
        ids = sorted(real)
        clusters_of = pseudo_labels(resize_images([real[n] for n in ids]), clusters)
        labels = dict(zip(ids, clusters_of, strict=True))
        source = f"k-means pseudo-labels ({clusters} clusters of the real images' features)"
    resolution = next(iter(next(iter(methods.values())).values()))
    resolution = next(iter(resolution.values())).shape[0]
    held_out = set(evaluated) if len([n for n in real if n not in evaluated and n in labels]) >= 20 else set()
    space = fit_space(real, labels, resolution=resolution, exclude=held_out)
    scored = sorted(n for n in evaluated if n in real and n in labels)
    descriptions = {m: f"{gen} ({settings_of.get(m, '')})" for m, gen in generations.items()}
    if BASELINE in methods:
        descriptions[BASELINE] += ": the same model with graph guidance 0, so text condition only"
    doc = evaluate_methods(methods, real, labels, space, encoders=_load_encoders(settings, encoders),
                           resolution=resolution, run_id=run_id, label_source=source, descriptions=descriptions,
                           description=f"generation runs {generations}; {len(scored)} nodes with a real cover scored "
                                       f"at {resolution}px")
    doc["generation_runs"] = dict(generations)
    for name in methods:
        if name != BASELINE and BASELINE in methods:
            doc["checks"].append(compare(doc, name, BASELINE, f"{name} beats {BASELINE} (one training seed, so "
                                         "the spread is 0: better on every metric)", strict=True))
    # 4. Report: per node its title, real cover | text-only | graph-guided, and the graph condition.
    order = sorted(methods, key=lambda m: (m != BASELINE, list(methods).index(m)))
    label = {m: COLUMN_LABELS.get(m, m) for m in order}
    columns = [REAL_COLUMN, *(label[m] for m in order)]
    graph_method = next((m for m in order if m in conditioned), None)
    grids = []
    for n in spread_over_labels(scored, labels, grid_nodes):
        images = {REAL_COLUMN: real[n], **{label[m]: per[min(per)][n] for m, per in methods.items()
                                           if n in per[min(per)]}}
        row = {"node_id": n, "text": titles.get(n, ""), "images": images,
               "community": str(labels.get(n, ""))}
        if graph_method:
            row.update(neighbour_strip(conditioned[graph_method].get(n, []), real, titles))
        grids.append(row)
    gallery = None
    if backfill_run:
        tiles, total = backfill_gallery(storage, backfill_run, real, titles, gallery_nodes)
        gallery = {"run_id": backfill_run, "tiles": tiles, "total": total}
        doc["backfill"] = {"run_id": backfill_run, "covers": total, "shown": len(tiles)}
        page = storage.uri("generations", backfill_run, "backfill.html")
        storage.put_bytes(page, render_gallery_page(gallery).encode(), "text/html; charset=utf-8")
        doc["backfill"]["page"] = page
        log.info("backfill gallery: %s", page)
    uris = publish_report(storage, run_id, doc, render_report(doc, grids, columns, gallery=gallery))
    log.info("report: %s", uris["report"])
    return doc
