"""Model benchmarks on CPU, tiny preset: training steps/s, sampling images/s, and the cost of graph
guidance (three UNet branches in one batch vs plain two-branch text CFG, same UNet, batch and run).

    .venv/bin/python bench/bench_model.py            # full (a few minutes)
    .venv/bin/python bench/bench_model.py --quick    # < 2 minutes

Writes bench/results/model.json and bench/results/model.md. Timings are medians over repeats, with
the 1-minute load average recorded: on a shared machine absolute numbers move, ratios much less.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
RESULTS = Path(__file__).resolve().parent / "results"


def timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    args = ap.parse_args()

    import torch
    from PIL import Image

    from g2i_core.model.config import tiny_config
    from g2i_core.model.modeling import NeighbourSet, build_model, make_noise_scheduler
    from g2i_core.model.pipeline import G2IPipeline
    from g2i_core.model.train import DiffusionLoss

    if args.threads:
        torch.set_num_threads(args.threads)
    q = args.quick
    train_bs, train_steps = 16, (3 if q else 10)
    sample_bs, sample_steps, repeats = 4, (5 if q else 20), (2 if q else 3)
    torch.manual_seed(0)
    cfg = tiny_config()
    model = build_model(cfg)
    model.text_cache_size = 10_000
    R = cfg.resolution
    rng = torch.Generator().manual_seed(0)
    palette = [(255, 40, 40), (40, 200, 60), (40, 80, 255), (240, 200, 30), (160, 60, 200)]
    nsets = [NeighbourSet([Image.new("RGB", (64, 64), palette[(b + n) % 5]) for n in range(5)],
                          [f"neighbour {b}-{n} title" for n in range(5)]) for b in range(max(train_bs, sample_bs))]
    prompts = [f"a book about topic {b}" for b in range(max(train_bs, sample_bs))]

    # 1. Training: full steps (data already on device: measures the model, not the loader)
    loss_mod = DiffusionLoss(model).train()
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-4)
    alphas = make_noise_scheduler(cfg).alphas_cumprod
    ids, att = model.tokenize(prompts[:train_bs])
    graph = model.prepare_graph(nsets[:train_bs])
    x0 = torch.rand(train_bs, 3, R, R, generator=rng) * 2 - 1

    def train_step():
        noise = torch.randn(x0.shape, generator=rng)
        t = torch.randint(0, cfg.num_train_timesteps, (train_bs,), generator=rng)
        loss = loss_mod(x0, noise, t, alphas, ids, att, graph, torch.zeros(train_bs, dtype=torch.bool))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    train_step()  # warm-up (also fills the frozen-text cache, as in real training)
    train_times = timed(train_step, train_steps)
    train_sps = 1 / statistics.median(train_times)

    # 2. Sampling and 3. three-branch vs two-branch CFG: interleaved, same pipeline, batch and steps
    pipe = G2IPipeline(model.eval())
    three, two = [], []
    pipe(prompts[:sample_bs], nsets[:sample_bs], num_inference_steps=2, seed=0)  # warm-up
    for _ in range(repeats):
        three += timed(lambda: pipe(prompts[:sample_bs], nsets[:sample_bs], text_scale=7.5, graph_scale=1.5,
                                    num_inference_steps=sample_steps, seed=0), 1)
        two += timed(lambda: pipe(prompts[:sample_bs], None, text_scale=7.5, num_inference_steps=sample_steps,
                                  seed=0), 1)
    t3, t2 = statistics.median(three), statistics.median(two)

    # UNet-only ratio (no prompt/graph encoding): one step's batched call, 3B vs 2B
    x = torch.randn(sample_bs, 3, R, R, generator=rng)
    with torch.no_grad():
        c_t, m_t = model.context(*model.tokenize(prompts[:sample_bs]), None)
        c_g, m_g = model.context(*model.tokenize(prompts[:sample_bs]), model.prepare_graph(nsets[:sample_bs]))
        ctx3, mask3 = torch.cat([c_t, c_t, c_g]), torch.cat([m_t, m_t, m_g])
        tt = torch.full((3 * sample_bs,), 500)
        u3 = statistics.median(timed(lambda: model(torch.cat([x] * 3), tt, ctx3, mask3), 5 if q else 15))
        u2 = statistics.median(timed(lambda: model(torch.cat([x] * 2), tt[:2 * sample_bs], ctx3[:2 * sample_bs],
                                                   mask3[:2 * sample_bs]), 5 if q else 15))

    res = {
        "preset": "tiny", "device": "cpu", "threads": torch.get_num_threads(), "quick": q,
        "cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
        "load_avg_1min": round(os.getloadavg()[0], 2),
        "train": {"batch_size": train_bs, "resolution": R, "steps_timed": train_steps,
                  "steps_per_s": round(train_sps, 3), "images_per_s": round(train_sps * train_bs, 2)},
        "sampling": {"batch_size": sample_bs, "steps": sample_steps, "scheduler": "ddim",
                     "images_per_s_three_branch": round(sample_bs / t3, 3),
                     "images_per_s_two_branch": round(sample_bs / t2, 3),
                     "s_per_step_three_branch": round(t3 / sample_steps, 4),
                     "s_per_step_two_branch": round(t2 / sample_steps, 4)},
        "guidance_cost_ratio_pipeline": round(t3 / t2, 3),
        "guidance_cost_ratio_unet_call": round(u3 / u2, 3),
        "target_ratio": 1.6,
        "command": "python bench/bench_model.py" + (" --quick" if q else "") +
                   (f" --threads {args.threads}" if args.threads else ""),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "model.json").write_text(json.dumps(res, indent=2))
    three_branch = res['sampling']['images_per_s_three_branch']
    md = f"""# Model benchmarks (tiny preset, CPU)

`{res['command']}` — {res['cpus']} CPUs, {res['threads']} torch threads, load average {res['load_avg_1min']}.

| measure | value |
|---|---|
| training steps/s (batch {train_bs}, {R}px) | {res['train']['steps_per_s']} ({res['train']['images_per_s']} img/s) |
| sampling images/s, 3-branch graph guidance ({sample_steps} DDIM steps, batch {sample_bs}) | {three_branch} |
| sampling images/s, 2-branch text CFG | {res['sampling']['images_per_s_two_branch']} |
| time per step, 3-branch / 2-branch (whole pipeline) | {res['guidance_cost_ratio_pipeline']} (target ≤ 1.6) |
| time per UNet call, 3B / 2B batch | {res['guidance_cost_ratio_unet_call']} |
"""
    (RESULTS / "model.md").write_text(md)
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
