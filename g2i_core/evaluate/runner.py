"""Evaluate generated images against the ground truth of the same nodes, for one or many methods.

Inputs are plain arrays keyed by node id, so the same code serves ``g2i evaluate`` (images read from
the object store) and the ``--suite paper`` runner (images generated in-process):

    methods = {"text_only": {seed: {node_id: (H, W, 3) uint8}}, "ours": {...}}
    doc = evaluate_methods(methods, real={node_id: image}, labels={node_id: community}, space=space)

The returned document is ``metrics.json``: per method and seed every metric with its 95% bootstrap
interval over nodes, and per method the spread of each metric across training seeds.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from g2i_core.evaluate.features import resize_images
from g2i_core.evaluate.metrics import seed_spread
from g2i_core.evaluate.offline import ENCODER_NAME, StyleSpace, offline_metrics

METRIC_INFO: dict[str, dict[str, Any]] = {
    "style_score": {"label": "style score (cosine)", "encoder": "g2i-style", "higher_is_better": True},
    "community_acc": {"label": "community accuracy", "encoder": "g2i-style classifier", "higher_is_better": True},
    "style_fid": {"label": "FID (style space)", "encoder": "g2i-style", "higher_is_better": False},
    "colour_dist": {"label": "colour distance (TV)", "encoder": "RGB histogram", "higher_is_better": False},
    "community_fid": {"label": "FID per community (mean)", "encoder": "g2i-style", "higher_is_better": False},
}
OFFLINE_KEYS = tuple(METRIC_INFO)


def _encoder_info(encoders: list) -> dict[str, dict[str, Any]]:
    info = {}
    for enc in encoders:
        if enc.kind == "inception":
            info["inception_fid"] = {"label": "FID (Inception, the paper's)", "encoder": f"{enc.name} via torchmetrics",
                                     "higher_is_better": False}
            continue
        info[f"{enc.kind}_score"] = {"label": f"{'CLIP' if enc.kind == 'clip' else 'DINOv2'} score (cosine)",
                                     "encoder": enc.name, "higher_is_better": True}
        info[f"{enc.kind}_fid"] = {"label": f"FID ({'CLIP' if enc.kind == 'clip' else 'DINOv2'} features)",
                                   "encoder": f"{enc.name} via torchmetrics", "higher_is_better": False}
    return info


def at_resolution(images: "np.ndarray | list[np.ndarray]", resolution: int) -> np.ndarray:
    """Bring images to the generator's resolution, so real and generated images carry the same detail
    (covers of any aspect through the shared pad-to-square preprocessing)."""
    return resize_images(images, resolution) if resolution else np.stack(images)


def evaluate_one(gen: dict[str, np.ndarray], real: dict[str, np.ndarray], labels: dict[str, Any],
                 space: StyleSpace, encoders: list = (), *, resolution: int = 0, seed: int = 0) -> dict:
    """All metrics of one generated set; nodes without a ground-truth image or label are skipped."""
    nodes = sorted(n for n in gen if n in real and n in labels)
    if len(nodes) < 2:
        raise ValueError(f"need >= 2 generated nodes with ground truth and a label, got {len(nodes)} "
                         f"(generated {len(gen)}, with real image {sum(n in real for n in gen)})")
    g = at_resolution([gen[n] for n in nodes], resolution)
    r = at_resolution([real[n] for n in nodes], resolution)
    out = offline_metrics(space, g, r, np.array([labels[n] for n in nodes]), seed=seed)
    for enc in encoders:
        from g2i_core.evaluate.encoders import encoder_metrics

        out.update(encoder_metrics(enc, g, r, seed=seed))
    return {k: v.as_dict() for k, v in out.items()}


def fit_space(real: dict[str, np.ndarray], labels: dict[str, Any], *, resolution: int = 0, seed: int = 0,
              exclude: set[str] = frozenset()) -> StyleSpace:
    """The style space, fitted on real images with labels (excluding e.g. the evaluated nodes)."""
    nodes = sorted(n for n in real if n in labels and n not in exclude)
    imgs = at_resolution([real[n] for n in nodes], resolution)
    return StyleSpace(seed=seed).fit(imgs, np.array([labels[n] for n in nodes]))


def evaluate_methods(methods: dict[str, dict[int, dict[str, np.ndarray]]], real: dict[str, np.ndarray],
                     labels: dict[str, Any], space: StyleSpace, *, encoders: list = (), resolution: int = 0,
                     run_id: str = "", label_source: str = "", descriptions: dict[str, str] | None = None,
                     description: str = "") -> dict:
    """metrics.json for several methods, each with one or more training seeds."""
    info = dict(METRIC_INFO)
    info.update(_encoder_info(list(encoders)))
    started = time.time()
    out_methods = []
    for name, per_seed in methods.items():
        runs = [{"seed": s, "metrics": evaluate_one(gen, real, labels, space, encoders, resolution=resolution)}
                for s, gen in sorted(per_seed.items())]
        if len(runs) > 1:
            summary = {k: seed_spread([r["metrics"][k]["mean"] for r in runs]) for k in runs[0]["metrics"]}
        else:
            summary = dict(runs[0]["metrics"])
        out_methods.append({"name": name, "description": (descriptions or {}).get(name, ""),
                            "seeds": [r["seed"] for r in runs], "per_seed": runs, "summary": summary})
    return {"run_id": run_id, "description": description, "label_source": label_source,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "evaluation_seconds": round(time.time() - started, 2),
            "resolution": resolution, "style_space": space.describe(),
            "encoders": {"style": ENCODER_NAME, **{e.kind: e.path for e in encoders}},
            "metric_info": info, "methods": out_methods, "checks": []}


def compare(doc: dict, better: str, worse: str, claim: str, *, strict: bool,
            keys: tuple[str, ...] = OFFLINE_KEYS) -> dict:
    """Does method ``better`` beat ``worse`` on every metric in ``keys``?

    strict: by more than the seed spread (difference of means > sum of the two standard deviations);
    otherwise "at least as good": not worse by more than that spread."""
    by_name = {m["name"]: m for m in doc["methods"]}
    if better not in by_name or worse not in by_name:
        return {"claim": claim, "passed": False, "detail": f"methods {better!r}/{worse!r} not both evaluated",
                "per_metric": {}}
    per_metric, ok = {}, True
    for k in keys:
        a, b = by_name[better]["summary"].get(k), by_name[worse]["summary"].get(k)
        if a is None or b is None:
            continue
        sign = 1 if doc["metric_info"][k]["higher_is_better"] else -1
        gain = sign * (a["mean"] - b["mean"])
        spread = a.get("std", 0.0) + b.get("std", 0.0)
        passed = gain > spread if strict else gain >= -spread
        ok &= passed
        per_metric[k] = {"gain": gain, "spread": spread, "passed": passed}
    detail = "; ".join(f"{k}: gain {v['gain']:+.3f} vs spread {v['spread']:.3f}" for k, v in per_metric.items())
    return {"claim": claim, "passed": bool(ok and per_metric), "detail": detail, "per_metric": per_metric}
