"""The paper's encoders, loaded from local directories only (no download): CLIP image–image score
(``Settings.clip_eval_path``, e.g. openai/clip-vit-large-patch14), DINOv2 score
(``Settings.dinov2_path``, e.g. facebook/dinov2-large), and FID computed by torchmetrics in each
encoder's feature space (Inception weights are a download, so FID uses the configured encoder;
the report names the encoder of every number).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from g2i_core.evaluate.metrics import Estimate, bootstrap, bootstrap_set, frechet_distance, paired_cosine

KINDS = ("clip", "dinov2")


@dataclass
class Encoder:
    kind: str
    path: str
    model: Any
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    batch_size: int = 32

    @property
    def name(self) -> str:
        return f"{self.kind}:{Path(self.path).name}"

    def encode(self, images: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 -> (N, D) float64 embeddings (CLIP projected image embeds; DINOv2 CLS)."""
        import torch

        out = []
        with torch.no_grad():
            for i in range(0, len(images), self.batch_size):
                out.append(self.forward(torch.from_numpy(np.ascontiguousarray(images[i:i + self.batch_size]))
                                        .permute(0, 3, 1, 2)).double().numpy())
        return np.concatenate(out) if out else np.zeros((0, 0))

    def forward(self, x):
        """(N, 3, H, W) uint8 tensor -> (N, D) float tensor; also the torchmetrics FID feature model."""
        import torch
        import torch.nn.functional as F

        x = F.interpolate(x.float() / 255.0, size=(self.image_size, self.image_size), mode="bicubic",
                          align_corners=False, antialias=True).clamp(0, 1)
        x = (x - torch.tensor(self.mean).view(1, 3, 1, 1)) / torch.tensor(self.std).view(1, 3, 1, 1)
        if self.kind == "clip":
            return self.model(pixel_values=x).image_embeds
        return self.model(pixel_values=x).pooler_output


def load_encoder(kind: str, path: str, device: str = "cpu") -> Encoder:
    """Load a CLIP vision (with projection) or DINOv2 model saved with ``save_pretrained`` at ``path``."""
    if kind not in KINDS:
        raise ValueError(f"encoder kind must be one of {KINDS}, got {kind!r}")
    if not path or not Path(path).is_dir():
        raise FileNotFoundError(f"{kind} encoder path {path!r} is not a local directory "
                                f"(set G2I_{'CLIP_EVAL' if kind == 'clip' else 'DINOV2'}_PATH)")
    if kind == "clip":
        from transformers import CLIPVisionModelWithProjection

        from g2i_core.model.modeling import _clip_vision_config  # a full CLIPModel folder's projection size

        model = CLIPVisionModelWithProjection.from_pretrained(path, local_files_only=True, **_clip_vision_config(path))
        mean, std = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
    else:
        from transformers import AutoModel

        model = AutoModel.from_pretrained(path, local_files_only=True)
        mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    return Encoder(kind, path, model.eval().to(device), int(model.config.image_size), mean, std)


def torchmetrics_fid(encoder: Encoder, gen: np.ndarray, real: np.ndarray) -> float:
    """FID by torchmetrics' FrechetInceptionDistance with ``encoder`` as its feature model."""
    import torch
    from torchmetrics.image.fid import FrechetInceptionDistance

    class _Features(torch.nn.Module):
        def __init__(self, enc: Encoder):
            super().__init__()
            self.enc = enc
            self.num_features = int(enc.encode(real[:1]).shape[1])

        def forward(self, x):
            return self.enc.forward(x)

    fid = FrechetInceptionDistance(feature=_Features(encoder), reset_real_features=True)
    to_t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).permute(0, 3, 1, 2)  # noqa: E731
    fid.update(to_t(real), real=True)
    fid.update(to_t(gen), real=False)
    return float(fid.compute())


def encoder_metrics(encoder: Encoder, gen: np.ndarray, real: np.ndarray, *, seed: int = 0) -> dict[str, Estimate]:
    """``<kind>_score`` (paired cosine) and ``<kind>_fid`` (torchmetrics; bootstrap interval)."""
    if hasattr(encoder, "metrics"):  # a metric used like an encoder (inception.InceptionFID)
        return encoder.metrics(gen, real, seed=seed)
    eg, er = encoder.encode(gen), encoder.encode(real)
    fid = bootstrap_set(lambda i: frechet_distance(eg[i], er[i]), len(gen), seed=seed)
    point = torchmetrics_fid(encoder, gen, real)
    shift = point - fid.mean  # torchmetrics (float64 sums) and numpy agree to rounding; keep its value
    return {f"{encoder.kind}_score": bootstrap(paired_cosine(eg, er), seed=seed),
            f"{encoder.kind}_fid": Estimate(point, max(fid.lo + shift, 0.0), max(fid.hi + shift, 0.0), fid.n)}
