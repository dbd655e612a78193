"""Metric arithmetic shared by every encoder: Fréchet distance, paired cosine, colour distance and
bootstrap confidence intervals. Pure numpy/scipy; no I/O, no model weights.

Conventions: ``gen[i]`` and ``real[i]`` belong to the same node (paired), so paired metrics and the
bootstrap resample node indices, not images independently.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np

BOOTSTRAP = 200


@dataclass(frozen=True)
class Estimate:
    """A point estimate with a 95% interval; ``n`` is the number of nodes it was computed on."""

    mean: float
    lo: float
    hi: float
    n: int

    def as_dict(self) -> dict:
        return asdict(self)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Squared Fréchet distance between Gaussians fitted to feature rows ``a`` and ``b``:
    ``|mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2))`` (the FID formula, any feature space).

    Covariances are unbiased (n-1), as torchmetrics computes them. ``Tr (S_a S_b)^(1/2)`` is the sum of
    the square roots of the eigenvalues of ``S_a S_b``. With fewer rows than dimensions (2048-d Inception
    features of a few hundred nodes) they are taken from the n x n symmetric matrix
    ``X_a X_b^T X_b X_a^T / ((n_a-1)(n_b-1))`` (X: centred rows), which has the same non-zero eigenvalues:
    exact, and O(n^2 D) instead of O(D^3), so bootstrapping a 2048-d FID stays cheap."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"features must be (N, D) arrays of the same D, got {a.shape} and {b.shape}")
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"Fréchet distance needs >= 2 rows per set, got {len(a)} and {len(b)}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    xa, xb = a - mu_a, b - mu_b
    na, nb = len(a) - 1, len(b) - 1
    tr_a, tr_b = float((xa ** 2).sum()) / na, float((xb ** 2).sum()) / nb
    if min(len(a), len(b)) < a.shape[1]:
        if len(b) < len(a):
            xa, xb = xb, xa  # Tr (S_a S_b)^(1/2) is symmetric in a and b: work in the smaller set's space
        m = xa @ xb.T  # (n_a, n_b)
        eig = np.linalg.eigvalsh(m @ m.T) / (na * nb)
        tr_sqrt = np.sqrt(np.clip(eig, 0, None)).sum()
    else:
        s_a, s_b = np.atleast_2d(np.cov(a, rowvar=False, ddof=1)), np.atleast_2d(np.cov(b, rowvar=False, ddof=1))
        eig = np.linalg.eigvals(s_a @ s_b)
        tr_sqrt = np.sqrt(eig.astype(np.complex128)).real.sum()
    return float(max(((mu_a - mu_b) ** 2).sum() + tr_a + tr_b - 2 * tr_sqrt, 0.0))


def class_frechet_distance(a: np.ndarray, b: np.ndarray, labels: np.ndarray, min_per_class: int = 10) -> float:
    """Mean over classes of the Fréchet distance between the class's rows of ``a`` and ``b`` (paired
    rows, one label each): "intra-class FID". Unlike FID it sees a generator that draws the right
    overall mix but the wrong style for each node. Classes with fewer than ``min_per_class`` rows are
    skipped (their covariance is not estimable); NaN when none is left."""
    labels = np.asarray(labels)
    if not len(a) == len(b) == len(labels):
        raise ValueError(f"paired inputs must have equal lengths, got {len(a)}, {len(b)} and {len(labels)}")
    classes, counts = np.unique(labels, return_counts=True)
    dists = [frechet_distance(a[labels == c], b[labels == c]) for c, k in zip(classes, counts, strict=True)
             if k >= max(min_per_class, 2)]
    return float(np.mean(dists)) if dists else float("nan")


def paired_cosine(gen: np.ndarray, real: np.ndarray) -> np.ndarray:
    """Per-node cosine similarity between rows (the CLIP/DINOv2 image-image score)."""
    g = gen / (np.linalg.norm(gen, axis=1, keepdims=True) + 1e-12)
    r = real / (np.linalg.norm(real, axis=1, keepdims=True) + 1e-12)
    return (g * r).sum(axis=1)


def colour_distance(gen_hist: np.ndarray, real_hist: np.ndarray) -> np.ndarray:
    """Per-node total-variation distance between joint colour histograms: 0 identical palettes,
    1 disjoint ones."""
    return 0.5 * np.abs(gen_hist - real_hist).sum(axis=1)


def bootstrap(values: np.ndarray, *, n_boot: int = BOOTSTRAP, seed: int = 0) -> Estimate:
    """Mean of per-node values with a percentile bootstrap 95% interval."""
    values = np.asarray(values, np.float64)
    if values.size == 0:
        raise ValueError("cannot estimate a metric on zero nodes")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), (n_boot, len(values)))
    means = values[idx].mean(axis=1)
    return Estimate(float(values.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5)),
                    len(values))


def bootstrap_set(stat: Callable[[np.ndarray], float], n: int, *, n_boot: int = BOOTSTRAP, seed: int = 0,
                  lower_bound: float | None = 0.0) -> Estimate:
    """A set-level statistic (e.g. FID) on all ``n`` nodes, with a 95% interval from resampling nodes.

    Resampled sets repeat nodes, which biases FID upward; the interval is the bootstrap spread
    re-centred on the full-set value (bias-corrected percentile), clipped at ``lower_bound``."""
    if n < 2:
        raise ValueError(f"set-level metrics need >= 2 nodes, got {n}")
    rng = np.random.default_rng(seed)
    point = float(stat(np.arange(n)))
    boots = np.array([stat(rng.integers(0, n, n)) for _ in range(n_boot)], np.float64)
    boots -= boots.mean() - point
    lo, hi = float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))
    if lower_bound is not None:
        lo, hi = max(lo, lower_bound), max(hi, lower_bound)
    return Estimate(point, lo, hi, n)


def seed_spread(values: list[float]) -> dict:
    """Mean, sample standard deviation and range across training seeds."""
    v = np.asarray(values, np.float64)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
            "min": float(v.min()), "max": float(v.max()), "values": [float(x) for x in v]}
