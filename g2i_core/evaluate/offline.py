"""The offline evaluator: a style/community feature space and classifier learned from real images.

``StyleSpace.fit(real_images, labels)`` z-scores the hand-crafted features of the real images, keeps
the top principal components as the feature space (where the paired "style score" and the
feature-space FID are computed) and trains a logistic-regression community classifier in it. One
part of the real images is held out, so the classifier's accuracy on unseen real images — the
ceiling any generator can reach — is measured and reported next to its chance level.

Labels are the known community of each real image (the sample's ``truth/*_communities.csv.gz``) or,
when no labels exist, k-means clusters of the real features (``pseudo_labels``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from g2i_core.evaluate.features import colour_histograms, image_features, resize_images
from g2i_core.evaluate.metrics import (
    Estimate,
    bootstrap,
    bootstrap_set,
    class_frechet_distance,
    colour_distance,
    frechet_distance,
    paired_cosine,
)

ENCODER_NAME = "g2i-style (colour+texture features, PCA + logistic regression fitted on the real images)"


def pseudo_labels(images: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """k-means clusters of the real images' standardised features, for data without communities."""
    from sklearn.cluster import KMeans
    from sklearn.preprocessing import StandardScaler

    x = StandardScaler().fit_transform(image_features(images))
    return KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(x)


@dataclass
class StyleSpace:
    dims: int = 24
    holdout: float = 0.25
    seed: int = 0
    classes: list = field(default_factory=list)
    holdout_accuracy: Estimate | None = None
    chance: float = 0.0
    n_train: int = 0
    n_holdout: int = 0

    def fit(self, images: np.ndarray, labels: np.ndarray) -> "StyleSpace":
        from sklearn.decomposition import PCA
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import train_test_split
        from sklearn.preprocessing import StandardScaler

        labels = np.asarray(labels)
        if len(images) != len(labels):
            raise ValueError(f"got {len(images)} images but {len(labels)} labels")
        counts = np.unique(labels, return_counts=True)[1]
        if len(counts) < 2 or counts.min() < 2 or len(images) < 10:
            raise ValueError(f"the style space needs >= 10 real images in >= 2 classes of >= 2 images each, "
                             f"got {len(images)} images, class sizes {sorted(counts.tolist())}")
        feats = image_features(images)
        tr, te = train_test_split(np.arange(len(labels)), test_size=self.holdout, random_state=self.seed,
                                  stratify=labels)
        self._scaler = StandardScaler().fit(feats[tr])
        # A feature almost constant on the training images (a colour bin no community uses) would
        # blow up under plain z-scoring; floor the scale and clip, so one odd image cannot dominate.
        self._scaler.scale_ = np.maximum(self._scaler.scale_, np.median(self._scaler.scale_))
        z = self._standardise(feats)
        self._pca = PCA(n_components=min(self.dims, len(tr) - 1, feats.shape[1]), random_state=self.seed).fit(z[tr])
        emb = self._pca.transform(z)
        self._clf = LogisticRegression(max_iter=2000, C=1.0).fit(emb[tr], labels[tr])
        self.classes = self._clf.classes_.tolist()
        self.holdout_accuracy = bootstrap(self._clf.predict(emb[te]) == labels[te], seed=self.seed)
        self.chance = float(counts.max() / counts.sum())  # majority-class rate
        self.n_train, self.n_holdout = len(tr), len(te)
        return self

    def _standardise(self, feats: np.ndarray) -> np.ndarray:
        return np.clip(self._scaler.transform(feats), -6.0, 6.0)

    def embed(self, images: np.ndarray) -> np.ndarray:
        return self._pca.transform(self._standardise(image_features(images)))

    def predict(self, images: np.ndarray) -> np.ndarray:
        return self._clf.predict(self.embed(images))

    def describe(self) -> dict:
        return {"encoder": ENCODER_NAME, "dims": int(self._pca.n_components_), "classes": len(self.classes),
                "n_train": self.n_train, "n_holdout": self.n_holdout, "chance": self.chance,
                "holdout_accuracy": self.holdout_accuracy.as_dict() if self.holdout_accuracy else None}


def offline_metrics(space: StyleSpace, gen: np.ndarray, real: np.ndarray, labels: np.ndarray, *,
                    seed: int = 0) -> dict[str, Estimate]:
    """Paired offline metrics for generated vs ground-truth images of the same nodes.

    - ``style_score``: cosine of generated and real image in the style space (a DINO-like score).
    - ``community_acc``: share of generated images the classifier assigns to the node's community.
    - ``style_fid``: Fréchet distance between the generated and real sets in the style space.
    - ``community_fid``: the same per community, averaged over communities with >= 10 nodes (omitted
      when none has): a set metric that also sees each node's community, not only the overall mix.
    - ``colour_dist``: total-variation distance between the pair's colour histograms.
    """
    if len(gen) != len(real) or len(gen) != len(labels):
        raise ValueError(f"paired inputs must have equal lengths, got gen={len(gen)} real={len(real)} "
                         f"labels={len(labels)}")
    gen, real = resize_images(gen), resize_images(real)
    eg, er = space.embed(gen), space.embed(real)
    labels = np.asarray(labels)
    out = {
        "style_score": bootstrap(paired_cosine(eg, er), seed=seed),
        "community_acc": bootstrap(space.predict(gen) == labels, seed=seed),
        "style_fid": bootstrap_set(lambda i: frechet_distance(eg[i], er[i]), len(gen), seed=seed),
        "colour_dist": bootstrap(colour_distance(colour_histograms(gen), colour_histograms(real)), seed=seed),
    }
    point = class_frechet_distance(eg, er, labels)
    if np.isfinite(point):
        # resampled sets can leave a community short; those draws fall back to the point value
        out["community_fid"] = bootstrap_set(
            lambda i: _finite_or(class_frechet_distance(eg[i], er[i], labels[i]), point), len(gen), seed=seed)
    return out


def _finite_or(value: float, fallback: float) -> float:
    return value if np.isfinite(value) else fallback
