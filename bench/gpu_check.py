"""GPU check for the sd15-sized model (random weights, no download), one short call (< 5 min):

    python bench/gpu_check.py [--batch-size 8] [--steps 10] [--sampling-batch-sizes 4,16]
                              [--sampling-only] [--out bench/results/gpu_check.json]

1. training throughput at 256 px (32x32 latents), bf16 autocast, AdamW on the trainable parts:
   with the graph path (Graph-QFormer over 5 neighbour images + texts) vs without (graph_mode none),
   the graph path both cold and with the frozen image encoder's cache warm (as from the second epoch on);
   target: the graph path costs <= 15% of throughput;
2. sampling throughput: the pipeline's denoising loop with three branches in one UNet batch
   (DDIM, 25 steps) vs two-branch text CFG, plus the per-step ratio (target <= 1.6).

Token ids are random (the random-weight build has no tokenizer); everything else is the real code
path. Prints one JSON object and writes it to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--steps", type=int, default=10, help="timed training steps per variant")
    ap.add_argument("--sampling-steps", type=int, default=25)
    ap.add_argument("--sampling-batch-sizes", default="4", help="comma list: images per sampling batch")
    ap.add_argument("--sampling-only", action="store_true", help="skip the training throughput (part 1)")
    ap.add_argument("--out", default="bench/results/gpu_check.json")
    ap.add_argument("--smoke-cpu", action="store_true",
                    help="check this script on CPU with a miniature sd15-shaped model (no timings worth keeping)")
    args = ap.parse_args()

    import torch

    from g2i_core.model.config import sd15_config
    from g2i_core.model.modeling import GraphInputs, build_model, make_noise_scheduler
    from g2i_core.model.pipeline import combine_guidance, make_scheduler
    from g2i_core.model.train import DiffusionLoss

    if not torch.cuda.is_available() and not args.smoke_cpu:
        print(json.dumps({"error": "no CUDA device"}))
        return 2
    dev, B, N, L = torch.device("cpu" if args.smoke_cpu else "cuda"), args.batch_size, 5, 77
    torch.backends.cuda.matmul.allow_tf32 = True
    small = {}
    if args.smoke_cpu:  # same classes and wiring as sd15, miniature widths
        small = dict(text_encoder_config=dict(model_type="clip_text_model", hidden_size=32, intermediate_size=64,
                                              num_hidden_layers=4, num_attention_heads=4, max_position_embeddings=77,
                                              vocab_size=49408, projection_dim=32),
                     image_encoder_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                               num_attention_heads=4, image_size=224, patch_size=32, projection_dim=32),
                     vae_config=dict(block_out_channels=(8, 8, 8, 8), norm_num_groups=4, latent_channels=4,
                                     down_block_types=("DownEncoderBlock2D",) * 4,
                                     up_block_types=("UpDecoderBlock2D",) * 4),
                     unet_config=dict(sample_size=32, in_channels=4, out_channels=4, layers_per_block=1,
                                      block_out_channels=(8, 16), norm_num_groups=4, cross_attention_dim=32,
                                      attention_head_dim=4, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                      up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")))
        B, args.steps, args.sampling_steps = 2, 1, 2
    g = torch.Generator(device="cpu").manual_seed(0)
    out: dict = {"device": torch.cuda.get_device_name(0) if dev.type == "cuda" else "cpu (smoke)", "batch_size": B,
                 "resolution": 256, "dtype": "bf16-autocast"}

    def graph_inputs(b: int, keyed: bool = False) -> GraphInputs:
        keys = tuple(f"image-{i}" for i in range(b * N)) if keyed else None  # content keys: the image cache
        return GraphInputs(torch.rand(b, N, 3, 224, 224, generator=g), torch.ones(b, N, dtype=torch.bool),
                           torch.randint(1, 49407, (b, N, L), generator=g), torch.ones(b, N, L, dtype=torch.long),
                           torch.ones(b, N, dtype=torch.bool), keys).to(dev)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def sync_time(fn, n: int) -> float:
        fn()  # warm-up
        sync()
        t = time.perf_counter()
        for _ in range(n):
            fn()
        sync()
        return (time.perf_counter() - t) / n

    # 1. Training throughput, with and without the graph path
    def train_throughput(mode: str, model=None, image_cache: bool = False):
        t_build = time.perf_counter()
        if model is None:
            torch.manual_seed(0)
            model = build_model(sd15_config("", "", random_weights=True, graph_mode=mode, **small)).to(dev)
        model.image_cache_size = 10_000 if image_cache else 0
        build_s = time.perf_counter() - t_build
        loss_mod = DiffusionLoss(model).train()
        opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-5, fused=dev.type == "cuda")
        alphas = make_noise_scheduler(model.config).alphas_cumprod.to(dev)
        ids = torch.randint(1, 49407, (B, L), generator=g).to(dev)
        att = torch.ones(B, L, dtype=torch.long, device=dev)
        graph = graph_inputs(B, keyed=image_cache) if mode != "none" else None
        pixels = (torch.rand(B, 3, 256, 256, generator=g) * 2 - 1).to(dev)

        def step():
            with torch.autocast(dev.type, dtype=torch.bfloat16):
                x0 = model.encode_images(pixels)
                noise = torch.randn_like(x0)
                t = torch.randint(0, 1000, (B,), device=dev)
                loss = loss_mod(x0, noise, t, alphas, ids, att, graph, torch.zeros(B, dtype=torch.bool, device=dev))
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        s = sync_time(step, args.steps)
        stats = {"s_per_step": round(s, 4), "images_per_s": round(B / s, 2), "build_s": round(build_s, 1),
                 "trainable_params_m": round(sum(p.numel() for p in model.trainable_parameters()) / 1e6, 1),
                 "max_mem_gb": round(torch.cuda.max_memory_allocated() / 2**30, 1) if dev.type == "cuda" else 0}
        return model, stats

    if args.sampling_only:
        torch.manual_seed(0)
        keep = build_model(sd15_config("", "", random_weights=True, graph_mode="qformer", **small)).to(dev)
    else:
        keep, out["train_qformer"] = train_throughput("qformer")
        # the same with the frozen CLIP image encoder's cache warm: every neighbour image seen once before
        # (training revisits the same images every epoch; g2i train sets image_cache_size)
        _, out["train_qformer_image_cache"] = train_throughput("qformer", keep, image_cache=True)
        if dev.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        _, out["train_none"] = train_throughput("none")
        if dev.type == "cuda":
            torch.cuda.empty_cache()
        for key, variant in (("graph_path_training_cost", "train_qformer"),
                             ("graph_path_training_cost_image_cache", "train_qformer_image_cache")):
            out[key] = round(1 - out[variant]["images_per_s"] / out["train_none"]["images_per_s"], 3)

    # 2. Sampling: the pipeline's loop (3 branches in one batch) vs 2-branch CFG, per batch size
    model = keep.eval()
    sched = make_scheduler("ddim", model.config)
    out["sampling"] = []
    for b in (int(x) for x in args.sampling_batch_sizes.split(",")):
        with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16):
            ids = torch.randint(1, 49407, (b, L), generator=g).to(dev)
            att = torch.ones(b, L, dtype=torch.long, device=dev)
            c_u, m_u = model.context(ids, att, None)
            c_g, m_g = model.context(ids, att, graph_inputs(b))
            ctx3, mask3 = torch.cat([c_u, c_u, c_g]), torch.cat([m_u, m_u, m_g])

            def loop(n_branches: int, b: int = b, ctx3: torch.Tensor = ctx3, mask3: torch.Tensor = mask3):
                sched.set_timesteps(args.sampling_steps, device=dev)
                x = torch.randn(b, 4, 32, 32, device=dev)
                for t in sched.timesteps:
                    eps = model(torch.cat([x] * n_branches), t.expand(n_branches * b), ctx3[:n_branches * b],
                                mask3[:n_branches * b]).chunk(n_branches)
                    e = combine_guidance(eps[0], eps[1], eps[2:], 7.5, [1.5] * (n_branches - 2))
                    x = sched.step(e.float(), t, x).prev_sample
                return model.decode(x)

            t3 = sync_time(lambda: loop(3), 2)
            t2 = sync_time(lambda: loop(2), 2)
        out["sampling"].append({"batch_size": b, "steps": args.sampling_steps,
                                "images_per_s_three_branch": round(b / t3, 2),
                                "images_per_s_two_branch": round(b / t2, 2),
                                "step_ratio_three_vs_two": round(t3 / t2, 3)})
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
