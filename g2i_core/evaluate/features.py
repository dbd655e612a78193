"""Hand-crafted colour and texture features: the offline encoder that needs no downloaded weights.

``image_features(images)`` maps ``(N, H, W, 3)`` uint8 images (any size; resized to 64 px) to
``(N, FEATURE_DIM)`` float64 rows. The blocks describe what the sample communities differ in —
palette (joint colour histogram, channel moments, centre vs border colour), pattern (gradient
orientations, radial frequency bands) — and what real covers differ in too, so the learned feature
space on top of them (``offline.StyleSpace``) measures something true on any data set.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

SIZE = 64
HIST_BINS = 4  # per channel: 4^3 = 64 joint colour bins
ORIENT_BINS = 8
FREQ_BANDS = 8
FEATURE_DIM = HIST_BINS ** 3 + 6 + 6 + ORIENT_BINS + FREQ_BANDS + 1


def resize_images(images: "np.ndarray | Sequence[np.ndarray]", size: int = SIZE) -> np.ndarray:
    """(N, H, W, 3) uint8, or a list of (H_i, W_i, 3) images of any sizes -> (N, size, size, 3) uint8.

    Non-square images go through the shared preprocessing (``imageprep.square_image``: white pad to a
    square, then resize), so a 2:3 cover is compared undistorted, as the model saw it."""
    from g2i_core.imageprep import square_array

    if isinstance(images, np.ndarray) and (images.ndim != 4 or images.shape[-1] != 3):
        raise ValueError(f"images must be (N, H, W, 3) uint8, got shape {images.shape}")
    if any(np.ndim(im) != 3 or np.shape(im)[-1] != 3 for im in images):
        raise ValueError("images must be (H, W, 3) uint8 arrays")
    if isinstance(images, np.ndarray) and images.shape[1:3] == (size, size):
        return images.astype(np.uint8, copy=False)
    if not len(images):
        return np.zeros((0, size, size, 3), np.uint8)
    return np.stack([square_array(im, size, resample="bilinear") for im in images])


def colour_histograms(images: np.ndarray) -> np.ndarray:
    """(N, 64) normalised joint RGB histograms with 4 bins per channel."""
    q = (images.astype(np.int64) * HIST_BINS) // 256  # (N, H, W, 3) in [0, 4)
    idx = (q[..., 0] * HIST_BINS + q[..., 1]) * HIST_BINS + q[..., 2]  # (N, H, W)
    n = images.shape[0]
    flat = idx.reshape(n, -1) + np.arange(n)[:, None] * HIST_BINS ** 3
    hist = np.bincount(flat.ravel(), minlength=n * HIST_BINS ** 3).reshape(n, -1).astype(np.float64)
    return hist / hist.sum(axis=1, keepdims=True)


def image_features(images: np.ndarray) -> np.ndarray:
    images = resize_images(images)
    x = images.astype(np.float64) / 255.0  # (N, S, S, 3)
    n = x.shape[0]
    hist = colour_histograms(images)
    moments = np.concatenate([x.mean(axis=(1, 2)), x.std(axis=(1, 2))], axis=1)  # (N, 6)
    c = SIZE // 4
    centre = x[:, c:-c, c:-c].mean(axis=(1, 2))
    border = (x.sum(axis=(1, 2)) - x[:, c:-c, c:-c].sum(axis=(1, 2))) / (SIZE * SIZE - (SIZE - 2 * c) ** 2)
    gray = x @ np.array([0.299, 0.587, 0.114])  # (N, S, S)
    gy, gx = np.gradient(gray, axis=(1, 2))
    mag = np.hypot(gx, gy)
    ang = np.mod(np.arctan2(gy, gx), np.pi)  # orientation, sign-free
    obin = np.minimum((ang / np.pi * ORIENT_BINS).astype(np.int64), ORIENT_BINS - 1)
    orient = np.stack([(mag * (obin == b)).sum(axis=(1, 2)) for b in range(ORIENT_BINS)], axis=1)
    orient = orient / (orient.sum(axis=1, keepdims=True) + 1e-12)
    power = np.abs(np.fft.fftshift(np.fft.fft2(gray - gray.mean(axis=(1, 2), keepdims=True)), axes=(1, 2))) ** 2
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] - SIZE // 2
    radius = np.hypot(yy, xx) / (SIZE // 2)  # 0 at DC, 1 at Nyquist along the axes
    band = np.minimum((radius * FREQ_BANDS).astype(np.int64), FREQ_BANDS - 1)
    bands = np.stack([power[:, band == b].sum(axis=1) for b in range(FREQ_BANDS)], axis=1)
    bands = np.log1p(bands / (bands.sum(axis=1, keepdims=True) + 1e-12) * 100)
    edges = (mag > 0.1).mean(axis=(1, 2))[:, None]
    feats = np.concatenate([hist, moments, centre, border, orient, bands, edges], axis=1)
    assert feats.shape == (n, FEATURE_DIM), feats.shape
    return feats
