"""Training and sampling cost of the paper suite's baselines and GNN ablations against ours, side by side.

One process builds every model of the tiny16 preset and times, round-robin over the models (so a load
change hits all of them alike): an optimizer step on a batch of random data through the training loss
(``predict_noise`` + backward + AdamW), and sampling a batch through each model's own pipeline (ours and
the GNN ablations: three branches; InstructPix2Pix: three; ControlNet: two, each through ControlNet + UNet).
Reported: median s/step and s/image, and each as a ratio to ours.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_baselines.py [--rounds 3] [--batch 16] [--sample-steps 10]

Writes bench/results/baselines_cost.md and .json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

METHODS = {"semantic_ppr (ours)": "qformer", "instructpix2pix": "instructpix2pix", "controlnet": "controlnet",
           "gnn_sage": "gnn_sage", "gnn_gat": "gnn_gat"}


def main() -> None:
    import torch
    from PIL import Image

    from g2i_core.model.baselines import own_pipeline
    from g2i_core.model.config import tiny16_config
    from g2i_core.model.modeling import NeighbourSet, build_model
    from g2i_core.model.pipeline import G2IPipeline

    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--sample-steps", type=int, default=10)
    ap.add_argument("--out", default="bench/results/baselines_cost")
    args = ap.parse_args()
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)

    def image():
        return Image.fromarray((torch.rand(16, 16, 3, generator=gen) * 255).byte().numpy())

    sets = [NeighbourSet([image() for _ in range(5)], [f"neighbour {i}" for i in range(5)])
            for _ in range(args.batch)]
    prompts = [f"a book cover {i}" for i in range(args.batch)]
    models, opts, pipes, params = {}, {}, {}, {}
    for name, mode in METHODS.items():
        torch.manual_seed(0)
        m = build_model(tiny16_config(graph_mode=mode))
        models[name], opts[name] = m, torch.optim.AdamW(m.trainable_parameters(), lr=1e-4)
        pipes[name] = own_pipeline(G2IPipeline(m))
        params[name] = sum(p.numel() for p in m.trainable_parameters())
    x0 = torch.rand(args.batch, 3, 16, 16, generator=gen) * 2 - 1
    train_s = {n: [] for n in METHODS}
    sample_s = {n: [] for n in METHODS}
    for _ in range(args.rounds + 1):  # the first round warms up and is not counted
        for name, m in models.items():
            m.train()
            ids, att = m.tokenize(prompts)
            graph = m.prepare_graph(sets)
            t0 = time.perf_counter()
            eps = m.predict_noise(x0, torch.randint(0, 1000, (args.batch,), generator=gen), ids, att, graph,
                                  torch.rand(args.batch, generator=gen) < 0.1)
            eps.pow(2).mean().backward()
            opts[name].step()
            opts[name].zero_grad(set_to_none=True)
            train_s[name].append(time.perf_counter() - t0)
            m.eval()
            t0 = time.perf_counter()
            pipes[name](prompts, sets, text_scale=3.0, graph_scale=1.5, num_inference_steps=args.sample_steps,
                        output_type="pt")
            sample_s[name].append((time.perf_counter() - t0) / args.batch)
    rows = {}
    ours = "semantic_ppr (ours)"
    for name in METHODS:
        tr, sa = statistics.median(train_s[name][1:]), statistics.median(sample_s[name][1:])
        rows[name] = {"trainable_params": params[name], "train_s_per_step": tr, "sample_s_per_image": sa}
    for r in rows.values():
        r["train_vs_ours"] = r["train_s_per_step"] / rows[ours]["train_s_per_step"]
        r["sample_vs_ours"] = r["sample_s_per_image"] / rows[ours]["sample_s_per_image"]
    meta = {"batch": args.batch, "rounds": args.rounds, "sample_steps": args.sample_steps, "preset": "tiny16",
            "threads": 1, "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    Path(args.out + ".json").write_text(json.dumps({"meta": meta, "methods": rows}, indent=2))
    lines = [f"# Baselines' cost against ours (tiny16, batch {args.batch}, {args.sample_steps} DDIM steps, "
             f"1 thread, median of {args.rounds} interleaved rounds)", "",
             "Command: `OMP_NUM_THREADS=1 .venv/bin/python bench/bench_baselines.py`", "",
             "| method | trainable params | training s/step | vs ours | sampling s/image | vs ours |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['trainable_params']:,} | {r['train_s_per_step']:.3f} | {r['train_vs_ours']:.2f}× "
                     f"| {r['sample_s_per_image']:.4f} | {r['sample_vs_ours']:.2f}× |")
    Path(args.out + ".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
