"""Train one 16-px tiny model (the evaluation suite's architecture, ``TINY16``) on the sample
benchmark tables, with optional config overrides: the diagnostic runs behind docs/model.md
("Does the graph path learn?").

    export G2I_STORAGE_ROOT=file://$PWD/.local/bench-paper   # tables from g2i evaluate --suite ... --prepare-sample
    .venv/bin/python bench/train_tiny16.py --run-id d-qf1 --graph-mode qformer --steps 600 \\
        --override '{"qformer_num_layers": 1}'
    .venv/bin/python bench/probe_graph_use.py --root $G2I_STORAGE_ROOT --model d-qf1
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run-id", required=True)
    ap.add_argument("--graph-mode", default="qformer")
    ap.add_argument("--neighbours", default="neighbours_semantic_ppr")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--override", default="{}", help="JSON of G2IConfig fields applied on top of TINY16")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    from g2i_core.config import Settings
    from g2i_core.evaluate.suite import TINY16
    from g2i_core.model.train import TrainConfig, train

    settings = Settings.load()
    overrides = {**TINY16, **json.loads(args.override)}
    cfg = TrainConfig(run_id=args.run_id, preset="tiny", graph_mode=args.graph_mode, storage_root=settings.storage_root,
                      neighbours_table=args.neighbours, split="train", steps=args.steps, batch_size=16, lr=args.lr,
                      lr_warmup_steps=max(args.steps // 20, 1), seed=args.seed, p_drop_text=0.1, p_drop_graph=0.1,
                      p_drop_both=0.1, checkpoint_every=args.steps, checkpoints_keep=1, log_every=100, num_threads=1,
                      model_overrides=overrides)
    result = train(cfg, settings)
    print(json.dumps({"model": result.model_uri, "steps_per_s": round(result.steps_per_s, 3),
                      "final_loss": list(result.losses.values())[-1]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
