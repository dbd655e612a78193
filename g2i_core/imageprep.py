"""The one image preprocessing step shared by training, generation and evaluation.

Covers are rarely square (books are about 2:3). Stretching them to a square distorts every shape the
model should learn, so an image is padded to a square with white (centred), then resized to the target
size and centre-cropped, as the InstructG2I reference prepares its images. After the pad the crop is
the identity, so a square image only goes through the resize. Training targets may be flipped
horizontally (the caller draws the flips from its seeded generator); neighbour images and
evaluation images never are.

PIL and numpy only: no torch, so the evaluation code can use it too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from PIL import Image

PAD_COLOUR = (255, 255, 255)


def square_image(img: "Image.Image | np.ndarray", size: int, *, flip: bool = False,
                 resample: str = "bicubic") -> "Image.Image":
    """RGB image -> ``size`` x ``size`` RGB image: white pad to a centred square, resize, centre crop,
    then a horizontal flip when ``flip``. ``resample``: "bicubic" (model inputs) or "bilinear"."""
    from PIL import Image

    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    filters = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST}
    if resample not in filters:
        raise ValueError(f"resample must be one of {sorted(filters)}, got {resample!r}")
    if isinstance(img, np.ndarray):
        img = Image.fromarray(np.asarray(img, np.uint8))
    img = img.convert("RGB")
    w, h = img.size
    if w != h:
        side = max(w, h)
        canvas = Image.new("RGB", (side, side), PAD_COLOUR)
        canvas.paste(img, ((side - w) // 2, (side - h) // 2))
        img = canvas
    if img.size != (size, size):  # a square resized to size x size: the centre crop is the identity
        img = img.resize((size, size), filters[resample])
    if flip:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    return img


def square_array(img: "Image.Image | np.ndarray", size: int, *, resample: str = "bicubic") -> np.ndarray:
    """``square_image`` as an (size, size, 3) uint8 array (evaluation works on arrays)."""
    return np.asarray(square_image(img, size, resample=resample), dtype=np.uint8)
