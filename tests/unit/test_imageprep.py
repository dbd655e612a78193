"""Pad-to-square preprocessing, shared by training, generation and evaluation."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image


def cover(width: int = 40, height: int = 60, colour=(200, 30, 30)) -> Image.Image:
    """A solid 2:3 cover with a dark stripe on its left edge (shows flips)."""
    arr = np.zeros((height, width, 3), np.uint8)
    arr[:] = colour
    arr[:, : width // 8] = (0, 0, 0)
    return Image.fromarray(arr)


def test_a_2_3_cover_keeps_its_aspect_between_white_bars():
    from g2i_core.imageprep import square_image

    out = np.asarray(square_image(cover(), 30))
    assert out.shape == (30, 30, 3)
    # the cover is 20 px wide in the 30 px square: 5 px white bars left and right, full height
    assert (out[:, :4] == 255).all() and (out[:, -4:] == 255).all()
    assert np.abs(out[:, 10:21].astype(int) - (200, 30, 30)).max() <= 2  # the cover's colour, not stretched
    assert (out[:, 5:7] < 30).all()  # the stripe sits where the cover's left edge is, 1/8 of 20 px wide


def test_model_inputs_and_evaluation_use_the_same_function():
    """Training/generation tensors (pil_to_tensor) and evaluation arrays (resize_images) of one cover agree."""
    from g2i_core.evaluate.features import resize_images
    from g2i_core.model.modeling import pil_to_tensor

    img = cover()
    tensor = (pil_to_tensor(img, 32).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    assert (tensor[:, :4] == 255).all()  # padded, not stretched (a stretch has no white)
    evaluated = resize_images([np.asarray(img), np.asarray(cover(50, 50))], 32)
    assert evaluated.shape == (2, 32, 32, 3) and (evaluated[0, :, :4] == 255).all()


def test_square_images_only_get_resized():
    from g2i_core.imageprep import square_image

    img = Image.fromarray((np.random.default_rng(0).random((16, 16, 3)) * 255).astype(np.uint8))
    assert np.array_equal(np.asarray(square_image(img, 16)), np.asarray(img))
    assert np.array_equal(np.asarray(square_image(img, 8)), np.asarray(img.resize((8, 8), Image.BICUBIC)))


def test_flip_mirrors_only_when_asked():
    from g2i_core.imageprep import square_image

    plain, flipped = np.asarray(square_image(cover(), 30)), np.asarray(square_image(cover(), 30, flip=True))
    assert np.array_equal(flipped, plain[:, ::-1])
    with pytest.raises(ValueError, match="resample"):
        square_image(cover(), 30, resample="lanczos")


def test_targets_flip_at_random_under_the_seed_and_neighbours_never(file_storage):
    import io

    import torch

    from g2i_core.model.config import tiny16_config
    from g2i_core.model.data import ImageCache, NodeRecord
    from g2i_core.model.modeling import build_model
    from g2i_core.model.train import BatchMaker

    buf = io.BytesIO()
    cover(16, 24).save(buf, format="PNG")
    key = file_storage.put_content_addressed(buf.getvalue(), prefix="images", ext="png").key
    records = [NodeRecord(f"n{i}", f"book {i}", key, ["m"], ["other"], [key]) for i in range(8)]
    torch.manual_seed(0)
    model = build_model(tiny16_config(max_neighbours=1))
    cache = ImageCache(file_storage)

    def batch(seed, flip=True):
        return BatchMaker(model, records, cache, batch_size=8, seed=seed, random_flip=flip)(1)

    a, again = batch(0), batch(0)
    assert torch.equal(a["pixels"], again["pixels"])  # a function of (seed, step)
    flips = BatchMaker(model, records, cache, 8, 0, random_flip=True).flips(1)
    assert True in flips and False in flips  # seed 0's 8 draws hold both outcomes: flips are random, not all-or-none
    assert flips != BatchMaker(model, records, cache, 8, 1, random_flip=True).flips(1)  # the seed decides
    unflipped = batch(0, flip=False)["pixels"][0]
    for i, flip in enumerate(flips):  # each target is the cover, or its mirror image where drawn
        assert torch.equal(a["pixels"][i], unflipped.flip(-1) if flip else unflipped)
    # neighbour images are never flipped
    assert torch.equal(a["graph"].pixels, batch(0, flip=False)["graph"].pixels)
    # data-parallel ranks split the same draws
    assert [BatchMaker(model, records, cache, 8, 0, rank=r, world=2, random_flip=True).flips(1)
            for r in (0, 1)] == [flips[0::2], flips[1::2]]
