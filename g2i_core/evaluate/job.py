"""``g2i evaluate`` on stored generations: read generation manifests and ground truth, score, report.

    evaluate_generations(storage, settings, "eval-2026-11-26", {"ours": "gen-run-1", "text_only": "gen-run-2"})

Ground truth is each node's 'ok' image in ``node_images``. Community labels, in order of preference:
a CSV (``node_id,community``, gzip allowed; the sample's ``truth/<format>_communities.csv.gz``), the
nodes table's ``community`` column, or k-means clusters of the real images (pseudo-labels).
"""

from __future__ import annotations

import csv
import gzip
import io
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from g2i_core.config import Settings
    from g2i_core.storage import Storage

log = logging.getLogger(__name__)


def read_labels_csv(path: str | Path) -> dict[str, str]:
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or not {"node_id", "community"} <= rows[0].keys():
        raise ValueError(f"{path} must be a CSV with columns node_id,community; got {list(rows[0]) if rows else []}")
    return {r["node_id"]: r["community"] for r in rows}


def _decode(storage: "Storage", key: str) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(storage.get_bytes(storage.uri(key)))) as im:
        return np.asarray(im.convert("RGB"))


def evaluate_generations(storage: "Storage", settings: "Settings", run_id: str, generations: dict[str, str], *,
                         labels_csv: str = "", clusters: int = 8, encoders: tuple[str, ...] = (),
                         nodes_table: str = "graph_nodes", images_table: str = "node_images",
                         grid_nodes: int = 6) -> dict:
    """Score each generation run against the ground truth; publish reports/<run_id>/; return metrics."""
    from g2i_core.evaluate.features import resize_images
    from g2i_core.evaluate.offline import pseudo_labels
    from g2i_core.evaluate.report import publish_report, render_report
    from g2i_core.evaluate.runner import evaluate_methods, fit_space
    from g2i_core.evaluate.suite import _load_encoders
    from g2i_core.generate import read_manifest
    from g2i_core.model.data import resolve_nodes_table

    if not generations:
        raise ValueError("give at least one generation run: --generations NAME=RUN_ID")
    # 1. Generated images per method (one seed = the generator seed of the manifest rows).
    methods: dict[str, dict[int, dict[str, np.ndarray]]] = {}
    for name, gen_run in generations.items():
        for row in read_manifest(storage, gen_run).to_pylist():
            methods.setdefault(name, {}).setdefault(int(row["seed"]), {})[row["node_id"]] = \
                _decode(storage, row["image_key"])
    evaluated = sorted({n for per_seed in methods.values() for imgs in per_seed.values() for n in imgs})
    # 2. Ground truth of every node with a usable image (the style space learns from the others).
    keys = {r["node_id"]: r["image_key"] for r in storage.read_table(images_table).to_pylist() if r["status"] == "ok"}
    real = {n: _decode(storage, k) for n, k in sorted(keys.items())}
    # 3. Labels.
    if labels_csv:
        labels, source = read_labels_csv(labels_csv), f"labels file {Path(labels_csv).name}"
    else:
        nodes = storage.read_table(resolve_nodes_table(storage, nodes_table))
        if "community" in nodes.column_names:
            labels = dict(zip(nodes.column("node_id").to_pylist(), nodes.column("community").to_pylist(),
                              strict=True))
            source = "the nodes table's community column"
        else:
            ids = sorted(real)
            clusters_of = pseudo_labels(resize_images(np.stack([real[n] for n in ids])), clusters)
            labels = dict(zip(ids, clusters_of, strict=True))
            source = f"k-means pseudo-labels ({clusters} clusters of the real images' features)"
    resolution = next(iter(next(iter(methods.values())).values()))
    resolution = next(iter(resolution.values())).shape[0]
    held_out = set(evaluated) if len([n for n in real if n not in evaluated and n in labels]) >= 20 else set()
    space = fit_space(real, labels, resolution=resolution, exclude=held_out)
    doc = evaluate_methods(methods, real, labels, space, encoders=_load_encoders(settings, encoders),
                           resolution=resolution, run_id=run_id, label_source=source,
                           description=f"generation runs {generations}; {len(evaluated)} nodes at {resolution}px")
    columns = ["ground truth", *methods]
    grids = [{"node_id": n, "images": {"ground truth": real[n],
                                       **{m: per[min(per)][n] for m, per in methods.items() if n in per[min(per)]}}}
             for n in evaluated[:grid_nodes] if n in real]
    uris = publish_report(storage, run_id, doc, render_report(doc, grids, columns))
    log.info("report: %s", uris["report"])
    return doc
