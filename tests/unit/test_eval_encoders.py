"""Paper metrics (CLIP / DINOv2 score, FID by torchmetrics) with tiny random encoders saved locally,
loaded through the same code path as the real checkpoints."""

from __future__ import annotations

import numpy as np
import pytest

from g2i_core.evaluate.encoders import encoder_metrics, load_encoder, torchmetrics_fid
from g2i_core.evaluate.metrics import frechet_distance
from g2i_core.sample.styles import make_styles, render


@pytest.fixture(scope="module")
def encoder_dirs(tmp_path_factory):
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection, Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("encoders")
    CLIPVisionModelWithProjection(CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                                   num_attention_heads=4, image_size=32, patch_size=8,
                                                   projection_dim=16)).save_pretrained(root / "clip")
    Dinov2Model(Dinov2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                             image_size=32, patch_size=8)).save_pretrained(root / "dinov2")
    return root


@pytest.fixture(scope="module")
def images():
    styles = make_styles(4, seed=1)
    return np.stack([render(styles[i % 4], 50 + i, 64) for i in range(24)])


@pytest.mark.parametrize("kind", ["clip", "dinov2"])
def test_encoder_scores_identical_sets_perfectly_and_shuffled_worse(encoder_dirs, images, kind):
    enc = load_encoder(kind, str(encoder_dirs / kind))
    same = encoder_metrics(enc, images, images.copy())
    assert same[f"{kind}_score"].mean == pytest.approx(1.0, abs=1e-5)
    assert same[f"{kind}_fid"].mean == pytest.approx(0.0, abs=1e-3)
    shuffled = encoder_metrics(enc, np.roll(images, 1, axis=0), images)
    assert shuffled[f"{kind}_score"].mean < same[f"{kind}_score"].mean - 1e-4
    assert enc.name.startswith(f"{kind}:")


def test_torchmetrics_fid_equals_our_frechet_distance_on_encoder_features(encoder_dirs, images):
    enc = load_encoder("dinov2", str(encoder_dirs / "dinov2"))
    gen, real = images[:12], images[12:]
    ours = frechet_distance(enc.encode(gen), enc.encode(real))
    assert ours > 0
    assert torchmetrics_fid(enc, gen, real) == pytest.approx(ours, rel=1e-4, abs=1e-6)


def test_missing_encoder_path_says_which_setting_to_set(tmp_path):
    with pytest.raises(FileNotFoundError, match="G2I_DINOV2_PATH"):
        load_encoder("dinov2", str(tmp_path / "nope"))
    with pytest.raises(ValueError, match="one of"):
        load_encoder("inception", str(tmp_path))
