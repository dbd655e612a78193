"""Procedural community styles and the image renderer for the sample MMAG.

Every community has a palette (background, pattern and motif colours), a background pattern and a
motif shape. A node's image is its community's style with per-node jitter (colour, pattern
frequency/phase, motif position and size), so images of one community look alike but never equal.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass

import numpy as np

PATTERNS = ("stripes", "dots", "checker", "rings", "diagonal", "grid", "waves", "plain")
MOTIFS = ("circle", "square", "triangle", "cross", "diamond", "bar", "ring", "none")


@dataclass(frozen=True)
class Style:
    community: int
    background: tuple[int, int, int]
    ink: tuple[int, int, int]
    motif_color: tuple[int, int, int]
    pattern: str
    motif: str
    frequency: float


def make_styles(n_communities: int, seed: int) -> list[Style]:
    rng = np.random.default_rng([seed, 7919])
    styles = []
    hues = rng.permutation(n_communities) / max(n_communities, 1)
    for c in range(n_communities):
        h = float(hues[c])
        bg = _hsv(h, 0.55 + 0.3 * rng.random(), 0.85)
        ink = _hsv((h + 0.5) % 1.0, 0.7, 0.35 + 0.3 * rng.random())
        motif = _hsv((h + 0.25) % 1.0, 0.9, 0.95)
        styles.append(Style(c, bg, ink, motif, PATTERNS[c % len(PATTERNS)],
                            MOTIFS[(c * 3 + c // len(PATTERNS)) % len(MOTIFS)], 2.0 + 4.0 * rng.random()))
    return styles


def _hsv(h: float, s: float, v: float) -> tuple[int, int, int]:
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    r, g, b = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return int(r * 255), int(g * 255), int(b * 255)


def render(style: Style, node_seed: int, size: int = 64) -> np.ndarray:
    """(size, size, 3) uint8 image of a node in ``style`` with jitter drawn from ``node_seed``."""
    rng = np.random.default_rng(node_seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    freq = style.frequency * (0.8 + 0.4 * rng.random())
    phase = rng.random()
    mask = _pattern(style.pattern, xx, yy, freq, phase)
    jitter = lambda c: np.clip(np.array(c, np.float32) + rng.normal(0, 12, 3), 0, 255)  # noqa: E731
    img = np.where(mask[..., None], jitter(style.ink), jitter(style.background))
    cx, cy = 0.5 + rng.uniform(-0.15, 0.15), 0.5 + rng.uniform(-0.15, 0.15)
    r = rng.uniform(0.15, 0.28)
    shape = _motif(style.motif, xx - cx, yy - cy, r)
    img = np.where(shape[..., None], jitter(style.motif_color), img)
    img = img + rng.normal(0, 4, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _pattern(name: str, x, y, f, ph):
    if name == "stripes":
        return np.sin(2 * np.pi * (f * x + ph)) > 0
    if name == "dots":
        return (np.sin(2 * np.pi * (f * x + ph)) * np.sin(2 * np.pi * (f * y + ph))) > 0.5
    if name == "checker":
        return (np.floor(f * x + ph) + np.floor(f * y + ph)) % 2 == 0
    if name == "rings":
        return np.sin(2 * np.pi * (f * np.hypot(x - 0.5, y - 0.5) * 2 + ph)) > 0
    if name == "diagonal":
        return np.sin(2 * np.pi * (f * (x + y) / 1.4 + ph)) > 0.3
    if name == "grid":
        return (np.abs(np.sin(np.pi * (f * x + ph))) < 0.2) | (np.abs(np.sin(np.pi * (f * y + ph))) < 0.2)
    if name == "waves":
        return np.sin(2 * np.pi * (f * y + 0.15 * np.sin(2 * np.pi * 2 * x) + ph)) > 0
    return np.zeros_like(x, dtype=bool)


def _motif(name: str, dx, dy, r):
    if name == "circle":
        return np.hypot(dx, dy) < r
    if name == "square":
        return (np.abs(dx) < r * 0.8) & (np.abs(dy) < r * 0.8)
    if name == "triangle":
        return (dy < r * 0.7) & (dy > -r) & (np.abs(dx) < (dy + r) * 0.6)
    if name == "cross":
        return ((np.abs(dx) < r * 0.25) & (np.abs(dy) < r)) | ((np.abs(dy) < r * 0.25) & (np.abs(dx) < r))
    if name == "diamond":
        return (np.abs(dx) + np.abs(dy)) < r
    if name == "bar":
        return (np.abs(dy) < r * 0.3) & (np.abs(dx) < r * 1.3)
    if name == "ring":
        d = np.hypot(dx, dy)
        return (d < r) & (d > r * 0.6)
    return np.zeros_like(dx, dtype=bool)


def encode_png(img: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG", optimize=False, compress_level=3)
    return buf.getvalue()


def decompression_bomb_png(side: int = 16384) -> bytes:
    """A valid 1-bit PNG of side x side pixels (268M px at 16384) that compresses to a few tens of KB."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    row = b"\x00" + b"\x00" * (side // 8)
    comp = zlib.compressobj(9)
    body = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b"")
