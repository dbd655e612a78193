"""Offline evaluator and metric arithmetic on real procedural sample images (no weights needed)."""

from __future__ import annotations

import numpy as np
import pytest

from g2i_core.evaluate.metrics import bootstrap, bootstrap_set, frechet_distance
from g2i_core.evaluate.offline import StyleSpace, offline_metrics, pseudo_labels
from g2i_core.sample.styles import make_styles, render


@pytest.fixture(scope="module")
def sample_images():
    """160 real sample covers in 8 communities (the sample generator's renderer), with labels."""
    styles = make_styles(8, seed=3)
    labels = np.arange(160) % 8
    images = np.stack([render(styles[c], 1000 + i, 64) for i, c in enumerate(labels)])
    return images, labels


@pytest.fixture(scope="module")
def space(sample_images):
    images, labels = sample_images
    return StyleSpace(seed=0).fit(images[:120], labels[:120])


def test_frechet_distance_matches_torchmetrics_on_the_same_features():
    import torch
    from torchmetrics.image.fid import FrechetInceptionDistance

    class Identity(torch.nn.Module):
        num_features = 6

        def forward(self, x):
            return x

    rng = np.random.default_rng(0)
    a = rng.normal(size=(80, 6))
    b = rng.normal(0.4, 1.3, size=(70, 6)) @ rng.normal(size=(6, 6))
    fid = FrechetInceptionDistance(feature=Identity())
    fid.update(torch.from_numpy(a), real=True)
    fid.update(torch.from_numpy(b), real=False)
    expected = float(fid.compute())
    assert expected > 1.0
    assert frechet_distance(b, a) == pytest.approx(expected, rel=1e-6)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)


def test_style_classifier_is_far_above_chance_on_held_out_real_images(space):
    acc = space.holdout_accuracy
    assert space.chance == pytest.approx(1 / 8, abs=0.02)
    assert acc.mean > 0.8 and acc.lo > 3 * space.chance
    assert acc.lo <= acc.mean <= acc.hi and acc.n == space.n_holdout


def test_identical_sets_score_perfectly_and_shuffled_pairs_score_worse(space, sample_images):
    images, labels = sample_images
    real, lab = images[120:], labels[120:]  # never seen by the space
    same = offline_metrics(space, real.copy(), real, lab)
    assert same["style_score"].mean == pytest.approx(1.0, abs=1e-9)
    assert same["colour_dist"].mean == 0.0 and same["colour_dist"].hi == 0.0
    assert same["style_fid"].mean == pytest.approx(0.0, abs=1e-6) and same["style_fid"].hi < 1e-6
    assert same["community_acc"].mean >= 0.8

    perm = np.roll(np.arange(len(real)), 3)  # every node paired with a node of another community
    shuffled = offline_metrics(space, real[perm], real, lab)
    assert shuffled["style_score"].hi < same["style_score"].lo
    assert shuffled["colour_dist"].lo > 0.3
    assert shuffled["community_acc"].hi < 0.3  # predictions follow the image, not the node


def test_community_fid_sees_community_swaps_that_fid_cannot(space, sample_images):
    from g2i_core.evaluate.metrics import class_frechet_distance

    real, lab = sample_images  # 20 per community (the metric needs >= 10)
    perm = np.roll(np.arange(len(real)), 3)  # the same set of images, each paired with another community
    same, swapped = offline_metrics(space, real.copy(), real, lab), offline_metrics(space, real[perm], real, lab)
    assert same["community_fid"].mean == pytest.approx(0.0, abs=1e-6)
    assert swapped["style_fid"].mean == pytest.approx(0.0, abs=1e-6)  # a set statistic: blind to the swap
    assert swapped["community_fid"].lo > 5.0
    assert swapped["community_fid"].lo <= swapped["community_fid"].mean <= swapped["community_fid"].hi
    # communities below the minimum size are skipped; none left -> NaN, and the metric is omitted
    assert np.isnan(class_frechet_distance(space.embed(real[:8]), space.embed(real[:8]), lab[:8]))
    assert "community_fid" not in offline_metrics(space, real[:8], real[:8], lab[:8])


def test_fid_grows_when_the_generated_set_misses_communities(space, sample_images):
    images, labels = sample_images
    real = images[120:]
    half = np.concatenate([real[labels[120:] < 4]] * 2)[: len(real)]  # only 4 of 8 communities
    other_half = real.copy()
    assert frechet_distance(space.embed(half), space.embed(real)) > 5 * frechet_distance(
        space.embed(other_half[::-1]), space.embed(real)) + 1.0


def test_pseudo_labels_recover_communities_without_truth(sample_images):
    from sklearn.metrics import adjusted_rand_score

    images, labels = sample_images
    assert adjusted_rand_score(labels, pseudo_labels(images, 8)) > 0.6


def test_bootstrap_intervals_bracket_the_estimate_and_reject_bad_input():
    rng = np.random.default_rng(0)
    v = rng.normal(2.0, 1.0, 400)
    est = bootstrap(v)
    assert est.lo < est.mean < est.hi and est.hi - est.lo < 0.4 and est.n == 400
    a, b = rng.normal(size=(60, 3)), rng.normal(1.0, size=(60, 3))
    fid = bootstrap_set(lambda i: frechet_distance(a[i], b[i]), 60)
    assert fid.mean == pytest.approx(frechet_distance(a, b)) and fid.lo <= fid.mean <= fid.hi
    with pytest.raises(ValueError, match="zero nodes"):
        bootstrap(np.array([]))
    with pytest.raises(ValueError, match="same D"):
        frechet_distance(a, b[:, :2])
    with pytest.raises(ValueError, match=">= 10 real images"):
        StyleSpace().fit(np.zeros((4, 64, 64, 3), np.uint8), np.array([0, 0, 1, 1]))
