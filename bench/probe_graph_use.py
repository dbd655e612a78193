"""Does a trained model read its neighbours? Denoising loss on held-out nodes with (a) their own
neighbours, (b) no graph (∅_G) and (c) another node's neighbours (shuffled), same noise and timesteps.

A model that uses neighbour *content* has loss(true) < loss(shuffled); one that only reacts to the
presence of a graph has loss(true) ≈ loss(shuffled) < loss(none).

    .venv/bin/python bench/probe_graph_use.py --root file://$PWD/.local/bench-paper \\
        --model paper-semantic_ppr-s0-9b6ad6f1 [--neighbours neighbours_semantic_ppr] [--split test]

Prints one JSON line; appends it to bench/results/graph_use.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
RESULTS = Path(__file__).resolve().parent / "results"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", required=True, help="storage root with the tables and models/")
    ap.add_argument("--model", required=True, help="model run id under <root>/models/")
    ap.add_argument("--neighbours", default="neighbours_semantic_ppr")
    ap.add_argument("--nodes-table", default="graph_nodes")
    ap.add_argument("--split", default="test")
    ap.add_argument("--max-nodes", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=8, help="noise/timestep draws per node")
    args = ap.parse_args()

    import torch
    import torch.nn.functional as F

    from g2i_core.model.data import ImageCache, condition_of, load_records
    from g2i_core.model.modeling import G2IModel, make_noise_scheduler, pil_to_tensor
    from g2i_core.storage import Storage

    torch.set_num_threads(1)
    storage = Storage(args.root)
    model = G2IModel.from_pretrained(f"{args.root}/models/{args.model}", storage=storage).eval()
    if not model.config.uses_graph:
        raise SystemExit(f"{args.model} has graph_mode 'none': nothing to probe")
    recs = load_records(storage, nodes_table=args.nodes_table, neighbours_table=args.neighbours,
                        split=args.split)[: args.max_nodes]
    if len(recs) < 2:
        raise SystemExit(f"need >= 2 {args.split!r} nodes with images, found {len(recs)}")
    cache = ImageCache(storage)
    R = model.config.resolution
    x0 = torch.stack([pil_to_tensor(cache.get(r.image_key), R) for r in recs]) * 2 - 1
    ids, att = model.tokenize([r.text for r in recs])
    own = model.prepare_graph([condition_of(r, cache).neighbours for r in recs])
    shifted = recs[1:] + recs[:1]  # every node gets the next node's neighbours
    other = model.prepare_graph([condition_of(r, cache).neighbours for r in shifted])
    alphas = make_noise_scheduler(model.config).alphas_cumprod
    gen = torch.Generator().manual_seed(0)
    loss = {"own_neighbours": 0.0, "no_graph": 0.0, "shuffled_neighbours": 0.0}
    with torch.no_grad():
        for _ in range(args.repeats):
            noise = torch.randn(x0.shape, generator=gen)
            t = torch.randint(0, len(alphas), (len(recs),), generator=gen)
            a = alphas[t].view(-1, 1, 1, 1)
            noisy = a.sqrt() * x0 + (1 - a).sqrt() * noise
            for name, graph in (("own_neighbours", own), ("no_graph", None), ("shuffled_neighbours", other)):
                eps = model(noisy, t, *model.context(ids, att, graph))
                loss[name] += F.mse_loss(eps, noise).item() / args.repeats
    out = {"model": args.model, "graph_mode": model.config.graph_mode, "split": args.split, "nodes": len(recs),
           **{k: round(v, 5) for k, v in loss.items()},
           "shuffled_over_own": round(loss["shuffled_neighbours"] / loss["own_neighbours"], 4)}
    RESULTS.mkdir(exist_ok=True)
    with open(RESULTS / "graph_use.jsonl", "a") as fh:
        fh.write(json.dumps(out) + "\n")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
