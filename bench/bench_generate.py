"""Generation throughput (tiny preset, random weights, CPU) and evaluation time per 1,000 images.

    .venv/bin/python bench/bench_generate.py           # 64 images per setting, 1,000-image evaluation
    .venv/bin/python bench/bench_generate.py --quick   # 16 images, 200-image evaluation (scaled to 1,000)

Generation runs the real path — ``run_shard`` with the diffusion pipeline, PNG encoding,
content-addressed writes, per-batch progress and the shard manifest — on a file:// store. Evaluation
times the offline evaluator (features, style space already fitted, four metrics with 200 bootstrap
resamples) on pairs of procedural sample images. The CPU is whatever this machine has, shared or not;
the thread count and load average are recorded next to the numbers.
Writes bench/results/generate.json and bench/results/generate.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"


def bench_generation(n_images: int, steps: int, resolution_preset: str, batch_size: int) -> dict:
    import numpy as np
    import pyarrow as pa
    import torch

    from g2i_core.evaluate.suite import TINY16
    from g2i_core.generate import GenerateConfig, PipelineGenerator, graph_loader, run_shard
    from g2i_core.model import G2IPipeline, build_model, tiny_config
    from g2i_core.sample.styles import encode_png, make_styles, render
    from g2i_core.storage import Storage

    with tempfile.TemporaryDirectory(prefix="g2i-bench-gen-") as tmp:
        storage = Storage(f"file://{tmp}/store")
        styles = make_styles(4, 0)
        ids = [f"goodreads:{i}" for i in range(n_images)]
        images = [{"node_id": n, "image_key": storage.put_content_addressed(
            encode_png(render(styles[i % 4], i, 32)), prefix="images", ext="png").key, "status": "ok"}
            for i, n in enumerate(ids)]
        storage.publish_table("graph_nodes", pa.table({"node_id": ids, "text": [f"The Dragon Castle {i}" for i in
                                                                                 range(n_images)]}), "b")
        storage.publish_table("node_images", pa.Table.from_pylist(images), "b")
        storage.publish_table("neighbours", pa.Table.from_pylist(
            [{"node_id": n, "rank": r + 1, "neighbour_id": ids[(i + r + 1) % n_images], "ppr_score": 0.1,
              "semantic_score": 0.1, "score": 0.1} for i, n in enumerate(ids) for r in range(5)]), "b")
        torch.manual_seed(0)
        cfg_model = tiny_config(**TINY16) if resolution_preset == "tiny16" else tiny_config()
        model_dir = Path(tmp) / "model"
        build_model(cfg_model).save_pretrained(model_dir)
        cfg = GenerateConfig(run_id="bench", model_uri=str(model_dir), node_ids=tuple(ids), batch_size=batch_size,
                             steps=steps, seeds=(0,))
        gen = PipelineGenerator(G2IPipeline.from_pretrained(model_dir))
        loader = graph_loader(storage, cfg, gen.uses_graph)
        t0 = time.perf_counter()
        summary = run_shard(storage, cfg, gen, loader)
        seconds = time.perf_counter() - t0
        assert summary["rows"] == n_images and np.isfinite(seconds)
    return {"preset": resolution_preset, "resolution": cfg_model.resolution, "images": n_images, "steps": steps,
            "batch_size": batch_size, "branches": 3, "seconds": round(seconds, 2),
            "images_per_s": round(n_images / seconds, 3)}


def bench_evaluation(n_images: int) -> dict:
    import numpy as np

    from g2i_core.evaluate.offline import StyleSpace, offline_metrics
    from g2i_core.sample.styles import make_styles, render

    styles = make_styles(8, 0)
    labels = np.arange(n_images + 400) % 8
    imgs = np.stack([render(styles[c], i, 64) for i, c in enumerate(labels)])
    space = StyleSpace().fit(imgs[:400], labels[:400])
    real, lab = imgs[400:], labels[400:]
    gen = np.roll(real, 1, axis=0)
    t0 = time.perf_counter()
    offline_metrics(space, gen, real, lab)
    seconds = time.perf_counter() - t0
    return {"images": n_images, "seconds": round(seconds, 2),
            "seconds_per_1000_images": round(seconds * 1000 / n_images, 2), "encoder": "g2i-style (offline)"}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--steps", type=int, default=20, help="denoising steps per image")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    args = ap.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    n = 16 if args.quick else 64
    gen = [bench_generation(n, args.steps, "tiny16", 16), bench_generation(n, args.steps, "tiny32", 16)]
    ev = bench_evaluation(200 if args.quick else 1000)
    result = {"generation": gen, "evaluation": ev, "torch_threads": torch.get_num_threads(),
              "cpu_count": os.cpu_count(), "load_average_1m": round(os.getloadavg()[0], 2), "device": "cpu",
              "command": " ".join(["python bench/bench_generate.py", *(argv if argv is not None else sys.argv[1:])])}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "generate.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = ["# Generation and evaluation throughput (CPU)", "",
             f"`{result['command']}` — {result['cpu_count']} CPUs, torch threads {result['torch_threads']}, "
             f"1-min load average {result['load_average_1m']} (a shared machine: numbers are lower bounds).", "",
             "| preset | px | images | DDIM steps | batch | UNet branches | seconds | images/s |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {g['preset']} | {g['resolution']} | {g['images']} | {g['steps']} | {g['batch_size']} | "
              f"{g['branches']} | {g['seconds']} | {g['images_per_s']} |" for g in gen]
    lines += ["", f"Offline evaluation (features + 4 metrics with 200 bootstrap resamples): {ev['images']} image "
                  f"pairs in {ev['seconds']} s = **{ev['seconds_per_1000_images']} s per 1,000 images**.",
              "", "GPU (sd15-sized) throughput: not measured — no GPU was available to this task."]
    (RESULTS / "generate.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
