"""Generate images for a node set from a trained model and the neighbour table.

Node set (choose one): --split test, --ids ID,ID / --ids-file FILE, or --backfill (every node without
a usable real image, e.g. Goodreads /nophoto/ covers). --shard i/n runs one shard of n (stable hash of
the node id), so an orchestrator can fan out; each shard publishes its manifest under
<root>/generations/<run-id>/manifest/ only when complete. Images go to
<root>/generations/<run-id>/images/ (content-addressed). Rerunning skips published shards and
finished batches; a killed run loses at most the batch in flight.

Example:
  g2i generate --model s3://g2i/models/tiny-qformer-s0 --run-id covers-2026-11-26 --backfill \\
      --shard 0/4 --seeds 0,1 --text-scale 7.5 --graph-scale 1.5 --mix goodreads:7327624=0.5
"""

from __future__ import annotations

import argparse

from g2i_core.commands import add_graph_run_arg
from g2i_core.ids import location_arg, run_id_arg

NAME = "generate"
SUMMARY = "generate images for a split, an id list or the cover backfill (sharded, resumable)"


def _shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard must look like i/n (e.g. 0/4), got {text!r}") from None
    return i, n


def _mix(text: str) -> tuple[str, float]:
    node, sep, scale = text.rpartition("=")
    if not sep or not node:
        raise argparse.ArgumentTypeError(f"--mix must look like NODE_ID=SCALE, got {text!r}")
    return node, float(scale)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, type=location_arg,
                   help="model folder: <root>/models/<run> URI or a local path")
    p.add_argument("--run-id", required=True, type=run_id_arg, help="generation run id (generations/<run-id>/)")
    p.add_argument("--root", default=None, help="the dataset's storage root (default: settings.storage_root)")
    add_graph_run_arg(p, "graph_nodes/node_images/neighbours")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--split", help="nodes of this split of the nodes table (e.g. test)")
    which.add_argument("--ids", help="comma-separated node ids")
    which.add_argument("--ids-file", help="file with one node id per line")
    which.add_argument("--backfill", action="store_true", help="every node without a usable real image")
    p.add_argument("--shard", type=_shard, default=(0, 1), help="i/n: run shard i of n (default 0/1)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seeds", default="0", help="comma-separated generator seeds (one image per seed)")
    p.add_argument("--text-scale", type=float, default=None,
                   help="text guidance s_T (default: the model's preset: tiny 3, sd15 and sd15-paper 7.5)")
    p.add_argument("--graph-scale", type=float, default=None,
                   help="graph guidance s_G; 0 = text-only images of the same model (the graph branch is skipped); "
                        "default: the model's preset (tiny 4, sd15 1.5, sd15-paper 7.5)")
    p.add_argument("--steps", type=int, default=50, help="denoising steps")
    p.add_argument("--mix", type=_mix, action="append", default=[],
                   help="style mixing: add NODE_ID's neighbour set as another graph with this scale (repeatable)")
    p.add_argument("--nodes-table", default="graph_nodes")
    p.add_argument("--neighbours-table", default="neighbours")
    p.add_argument("--limit", type=int, default=0, help="only the first N nodes of the set (before sharding)")
    p.add_argument("--device", default="", help="cpu, cuda, ... (default: settings.device)")
    p.add_argument("--variant", default="", help="weight-file variant of the frozen parts' folders, e.g. fp16")
    p.add_argument("--dtype", default="", choices=["", "fp32", "fp16", "bf16"],
                   help="cast the model to this dtype for sampling (default: as saved, float32)")


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from g2i_core.config import Settings
    from g2i_core.generate import GenerateConfig, generate
    from g2i_core.storage import Storage

    settings = Settings.load()
    ids = ()
    if args.ids:
        ids = tuple(x.strip() for x in args.ids.split(",") if x.strip())
    elif args.ids_file:
        ids = tuple(line.strip() for line in Path(args.ids_file).read_text().splitlines() if line.strip())
    cfg = GenerateConfig(run_id=args.run_id, model_uri=args.model, split=args.split or "", node_ids=ids,
                         backfill=args.backfill, shard=args.shard[0], num_shards=args.shard[1],
                         batch_size=args.batch_size, seeds=tuple(int(s) for s in args.seeds.split(",")),
                         text_scale=args.text_scale, graph_scale=args.graph_scale, steps=args.steps,
                         mix=tuple(args.mix), nodes_table=args.nodes_table, neighbours_table=args.neighbours_table,
                         limit=args.limit)
    device = args.device or settings.device
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    settings = settings.replace(storage_root=args.root) if args.root else settings
    storage = Storage.from_settings(settings).pinned(args.graph_run_id)
    summary = generate(storage, cfg, settings=settings, device=device, variant=args.variant, torch_dtype=args.dtype)
    print(json.dumps(summary))
    return 0
