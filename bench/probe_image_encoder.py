"""Does a frozen, randomly initialised tiny image encoder carry community style? (docs/model.md, Presets)

    .venv/bin/python bench/probe_image_encoder.py [--sample DIR] [--seeds 0 1]

Embeds every sample image with the tiny preset's CLIP vision encoder at random init (frozen) and
scores a nearest-centroid community classifier (3/4 train, 1/4 test) on the z-scored embeddings;
mean RGB is the reference. Prints JSON.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def nearest_centroid_accuracy(feats: np.ndarray, labels: np.ndarray) -> float:
    feats = (feats - feats.mean(0)) / (feats.std(0) + 1e-6)
    train = np.arange(len(labels)) % 4 != 0
    classes = np.unique(labels)
    cents = np.stack([feats[train & (labels == c)].mean(0) for c in classes])
    pred = classes[np.argmin(((feats[~train][:, None] - cents[None]) ** 2).sum(-1), 1)]
    return float((pred == labels[~train]).mean())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sample", default="/tmp/g2i-probe-sample", help="generated sample folder (made if missing)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    args = ap.parse_args()

    import torch
    from PIL import Image
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from g2i_core.model.config import tiny_config
    from g2i_core.model.modeling import CLIP_MEAN, CLIP_STD, pil_to_tensor
    from g2i_core.sample.generator import generate_sample

    d = Path(args.sample)
    if not (d / "truth" / "goodreads_communities.csv.gz").exists():
        generate_sample(d, nodes=400, seed=0, formats=("goodreads",))
    with gzip.open(d / "truth" / "goodreads_communities.csv.gz", "rt") as fh:
        community = {r["node_id"]: int(r["community"]) for r in csv.DictReader(fh)}
    images, labels = [], []
    for nid, c in community.items():
        try:
            with Image.open(d / "images" / "goodreads" / f"{nid.split(':', 1)[1]}.png") as im:
                if max(im.size) > 4096:
                    continue
                images.append(pil_to_tensor(im, 32))
                labels.append(c)
        except (OSError, Image.DecompressionBombError):
            continue  # missing or deliberately corrupt sample image (the sample injects both)
    x, y = torch.stack(images), np.array(labels)
    x_norm = (x - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    out = {"images": len(y), "chance": 1 / len(np.unique(y)),
           "mean_rgb": nearest_centroid_accuracy(x.mean((2, 3)).numpy(), y)}
    for seed in args.seeds:
        torch.manual_seed(seed)
        enc = CLIPVisionModelWithProjection(CLIPVisionConfig(**tiny_config().image_encoder_config)).eval()
        with torch.no_grad():
            emb = enc(pixel_values=x_norm).image_embeds.numpy()
        out[f"frozen_random_clip_seed{seed}"] = nearest_centroid_accuracy(emb, y)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
