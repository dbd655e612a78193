"""Does the tiny preset learn community style? Train on the sample data, then generate for held-out
(val) nodes and look at the images and a simple style score.

    .venv/bin/python bench/learn_tiny.py --steps 1500 --threads 1

Writes bench/results/tiny_grid.png (one row per community: 3 real images | 4 generated with graph
guidance | 2 generated text-only) and bench/results/tiny_learning.json (loss curve, training time,
style accuracy). Style accuracy = how often a generated image's nearest community centroid (in a
colour-histogram space fitted on the real training images) is the target node's true community.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
RESULTS = Path(__file__).resolve().parent / "results"


def colour_features(img) -> np.ndarray:
    """4x4x4 RGB histogram of a 32x32 image, L1-normalised."""
    a = np.asarray(img.convert("RGB").resize((32, 32)), dtype=np.int64) // 64
    h = np.bincount((a[..., 0] * 16 + a[..., 1] * 4 + a[..., 2]).ravel(), minlength=64).astype(np.float64)
    return h / h.sum()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--nodes", type=int, default=400)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--sampling-steps", type=int, default=50)
    ap.add_argument("--scheduler", default="ddpm", choices=["ddim", "dpm", "ddpm"])
    ap.add_argument("--text-scale", type=float, default=1.0)
    ap.add_argument("--graph-scale", type=float, default=1.0)
    ap.add_argument("--run-id", default="", help="default learn-<steps>; an existing run resumes from its checkpoint")
    ap.add_argument("--work", default="/tmp/g2i-learn-tiny")
    ap.add_argument("--model", default="", help="skip training; evaluate this model or checkpoint folder URI "
                                                "(e.g. file:///tmp/g2i-learn-tiny/store/models/learn-600/checkpoint-400)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    import torch
    from PIL import Image

    from g2i_core.config import Settings
    from g2i_core.model.data import ImageCache, load_conditions, load_records
    from g2i_core.model.pipeline import G2IPipeline
    from g2i_core.model.sample_data import publish_sample_tables
    from g2i_core.model.train import TrainConfig, train
    from g2i_core.sample.generator import generate_sample
    from g2i_core.storage import Storage

    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(args.work)
    root = f"file://{work}/store"
    storage = Storage(root)
    if not storage.is_published("neighbours"):
        generate_sample(work / "sample", nodes=args.nodes, seed=0, formats=("goodreads",))
        publish_sample_tables(storage, work / "sample", seed=0)
    communities = {r["node_id"]: r["community"] for r in storage.read_table("nodes").to_pylist()}
    settings = Settings.load(storage_root=root)

    t0 = time.time()
    if args.model:  # evaluate an existing model/checkpoint (loss history from its trainer_state/metrics)
        state = f"{args.model}/trainer_state.json" if "checkpoint-" in args.model else f"{args.model}/metrics.json"
        losses = {int(k): v for k, v in storage.get_json(state)["losses"].items()}
        model_uri, steps_per_s, done = args.model, float("nan"), max(losses)
    else:
        result = train(TrainConfig(run_id=args.run_id or f"learn-{args.steps}", preset="tiny", nodes_table="nodes",
                                   steps=args.steps, batch_size=args.batch_size, lr=args.lr, lr_warmup_steps=50,
                                   checkpoint_every=100, log_every=50, seed=0), settings)
        losses, model_uri, steps_per_s, done = result.losses, result.model_uri, result.steps_per_s, args.steps
    train_s = time.time() - t0

    # Style classifier: nearest community centroid of colour histograms of real training images.
    cache = ImageCache(storage)
    train_recs = load_records(storage, nodes_table="nodes", split="train")
    feats = {}
    for r in train_recs:
        feats.setdefault(communities[r.node_id], []).append(colour_features(cache.get(r.image_key)))
    comms = sorted(feats)
    centroids = np.stack([np.mean(feats[c], 0) for c in comms])

    def classify(img) -> int:
        return comms[int(np.argmin(((centroids - colour_features(img)) ** 2).sum(1)))]

    # Held-out nodes: up to 4 per community.
    val = [r for r in load_records(storage, nodes_table="nodes", split="val")]
    per_comm: dict[int, list[str]] = {}
    for r in val:
        per_comm.setdefault(communities[r.node_id], []).append(r.node_id)
    pipe = G2IPipeline.from_pretrained(model_uri, scheduler=args.scheduler)
    rows, hits_g, hits_t, n = [], 0, 0, 0
    for c in comms:
        ids = (per_comm.get(c, []) * 4)[:4]
        if not ids:
            continue
        conds = load_conditions(storage, ids, nodes_table="nodes")
        g_imgs = pipe([x.text for x in conds], [x.neighbours for x in conds], text_scale=args.text_scale,
                      graph_scale=args.graph_scale, num_inference_steps=args.sampling_steps, seed=0)
        t_imgs = pipe([x.text for x in conds], None, text_scale=args.text_scale,
                      num_inference_steps=args.sampling_steps, seed=0)
        hits_g += sum(classify(im) == c for im in g_imgs)
        hits_t += sum(classify(im) == c for im in t_imgs)
        n += len(ids)
        real = [cache.get(r.image_key) for r in train_recs if communities[r.node_id] == c][:3]
        rows.append(real + g_imgs + t_imgs[:2])
    cell = 64
    grid = Image.new("RGB", (cell * 9 + 16, cell * len(rows)), "white")
    for i, row in enumerate(rows):
        for j, im in enumerate(row):
            x = j * cell + (8 if j >= 3 else 0) + (8 if j >= 7 else 0)
            grid.paste(im.convert("RGB").resize((cell, cell), Image.NEAREST), (x, i * cell))
    RESULTS.mkdir(exist_ok=True)
    grid.save(RESULTS / "tiny_grid.png")
    curve = {s: float(np.mean([losses[k] for k in range(max(1, s - 49), s + 1)])) for s in losses if s % 50 == 0}
    out = {"steps": done, "batch_size": args.batch_size, "lr": args.lr, "model": model_uri,
           "train_seconds": None if args.model else round(train_s, 1),
           "steps_per_s": round(steps_per_s, 3), "loss_mean50_by_step": curve,
           "style_accuracy_graph_guided": hits_g / n, "style_accuracy_text_only": hits_t / n,
           "chance": 1 / len(comms), "val_images": n, "threads": torch.get_num_threads(),
           "command": "python " + " ".join(sys.argv)}
    (RESULTS / "tiny_learning.json").write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
