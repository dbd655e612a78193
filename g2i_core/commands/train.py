"""Train the InstructG2I graph-conditioned diffusion model on the tables under a storage root.

Reads <root>/{graph_nodes|nodes, node_images, neighbours} and the images they point at; writes
checkpoints to <root>/models/<run-id>/checkpoint-<step>/ every --checkpoint-every steps and the final
model (config.json + model.safetensors + metrics.json) to <root>/models/<run-id>/. A rerun of the same
--run-id resumes from its newest complete checkpoint (disable with --resume false).

  g2i train --run-id tiny-qformer-s0 --preset tiny --steps 3000
  g2i train --run-id demo --preset tiny16 --steps 800 --batch-size 16     # the demo's model (lr 1e-3, cosine)
  g2i train --root s3://g2i/graphs/goodreads --run-id sd15-r1 --preset sd15 --steps 20000 --batch-size 64
  accelerate launch jobs/train.py --preset sd15 ...        # several GPUs (data-parallel)

Ablations: --graph-mode qformer|no_qformer|images_only|texts_only|none (see docs/model.md).
"""

from __future__ import annotations

import argparse

from g2i_core.commands import add_graph_run_arg
from g2i_core.ids import run_id_arg

NAME = "train"
SUMMARY = "train the graph-conditioned diffusion model (tiny on CPU, sd15 on GPU) -> models/<run_id>/"


def _bool(v: str) -> bool:
    if v.lower() in {"1", "true", "yes", "on"}:
        return True
    if v.lower() in {"0", "false", "no", "off"}:
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {v!r}")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from g2i_core.model.config import GRAPH_MODES

    p.add_argument("--root", default="", help="storage root holding the tables (default: settings.storage_root)")
    p.add_argument("--run-id", required=True, type=run_id_arg, help="models/<run-id>/ under the root")
    add_graph_run_arg(p, "graph_nodes/node_images/neighbours to train on")
    p.add_argument("--preset", default="", choices=["", "tiny", "tiny16", "sd15", "sd15-paper", "paper"],
                   help="default: settings.model_preset; tiny16 = tiny at 16 px (what `make demo` trains); "
                        "sd15-paper (alias paper) = sd15 with the paper's settings (images_only, 5 neighbours, 256 px)")
    p.add_argument("--graph-mode", default=None, choices=GRAPH_MODES,
                   help="default: the preset's (sd15-paper images_only), else qformer")
    p.add_argument("--nodes-table", default="graph_nodes", help="falls back to 'nodes' (default %(default)s)")
    p.add_argument("--images-table", default="node_images")
    p.add_argument("--neighbours-table", default="neighbours")
    p.add_argument("--split", default="train", help="train on nodes of this split ('' = all)")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=None, help="default: the preset's (tiny16 1e-3, sd15 1e-5), else 3e-4")
    p.add_argument("--lr-schedule", choices=("cosine", "constant"), default="cosine",
                   help="after the warmup: cosine decay to 0 at the last step, or constant (default %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resolution", type=int, default=0, help="0 = the preset's (tiny 32, sd15 256)")
    p.add_argument("--max-neighbours", type=int, default=5)
    for what in ("text", "graph", "both"):
        p.add_argument(f"--p-drop-{what}", type=float, default=None,
                       help="condition dropout; default: the preset's (tiny16 0.1), else 0.05")
    p.add_argument("--mixed-precision", default="auto", choices=["auto", "no", "fp16", "bf16"])
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--checkpoint-every", type=int, default=500)
    p.add_argument("--checkpoints-keep", type=int, default=2)
    p.add_argument("--resume", type=_bool, default=True, help="true/false (default true)")
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    p.add_argument("--random-flip", type=_bool, default=None,
                   help="flip training targets horizontally at random (default: the preset's: sd15 true, tiny false)")
    p.add_argument("--variant", default="", help="weight-file variant of the base folders, e.g. fp16 (UNet upcast)")
    p.add_argument("--dtype", default="", choices=["", "fp32", "fp16", "bf16"],
                   help="dtype of the frozen parts (text encoder, VAE, CLIP vision); trainable parts stay fp32")


def run(args: argparse.Namespace) -> int:
    import json

    from g2i_core.config import Settings
    from g2i_core.model.config import PRESET_TRAIN_DEFAULTS
    from g2i_core.model.train import TrainConfig, train

    settings = Settings.load()
    # A flag given wins; else the preset's training defaults (PRESET_TRAIN_DEFAULTS); else TrainConfig's.
    preset = {"paper": "sd15-paper"}.get(args.preset, args.preset)
    preset_defaults = PRESET_TRAIN_DEFAULTS.get(preset or settings.model_preset, {})
    tuned = {k: getattr(args, k) if getattr(args, k) is not None else preset_defaults.get(k)
             for k in ("lr", "p_drop_text", "p_drop_graph", "p_drop_both", "random_flip", "graph_mode")}
    tuned = {k: v for k, v in tuned.items() if v is not None}
    cfg = TrainConfig(
        run_id=args.run_id, preset=preset, storage_root=args.root,
        nodes_table=args.nodes_table, images_table=args.images_table, neighbours_table=args.neighbours_table,
        split=args.split, resolution=args.resolution, max_neighbours=args.max_neighbours, steps=args.steps,
        batch_size=args.batch_size, lr_schedule=args.lr_schedule, seed=args.seed, **tuned,
        mixed_precision=args.mixed_precision, gradient_checkpointing=args.gradient_checkpointing,
        checkpoint_every=args.checkpoint_every, checkpoints_keep=args.checkpoints_keep, resume=args.resume,
        log_every=args.log_every, num_threads=args.threads, graph_run_id=args.graph_run_id, variant=args.variant,
        torch_dtype=args.dtype)
    result = train(cfg, settings)
    last = result.losses[max(result.losses)] if result.losses else None
    print(json.dumps({"model_uri": result.model_uri, "steps": cfg.steps, "resumed_from": result.resumed_from,
                      "final_loss": last, "steps_per_s": round(result.steps_per_s, 3),
                      "train_seconds": round(result.train_seconds, 1)}))
    return 0
