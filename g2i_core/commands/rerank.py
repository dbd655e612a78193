"""Select each node's final neighbours from its PPR candidates and embeddings -> ``neighbours``
(node_id, rank, neighbour_id, ppr_score, semantic_score, score), top --k (default 5).

Strategies: semantic_ppr (default: candidates re-ranked by target-text similarity blended with PPR,
--ppr-weight), ppr (PPR order only), semantic (all nodes by similarity, graph ignored), random
(seeded). --neighbour-kind text|image|both picks what the target's text is compared with; image
needs CLIP embeddings for text and image. --out-table writes an ablation variant under another name.
"""

from __future__ import annotations

NAME = "rerank"
SUMMARY = "semantic re-ranking of PPR candidates into the final neighbours table"

import argparse  # noqa: E402


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--root", default=None, help="storage root with ppr_candidates + embeddings")
    p.add_argument("--run-id", default=None)
    p.add_argument("--strategy", default="semantic_ppr", choices=["semantic_ppr", "ppr", "semantic", "random"])
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--ppr-weight", type=float, default=0.2)
    p.add_argument("--neighbour-kind", default="text", choices=["text", "image", "both"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-table", default="neighbours", help="table name (default %(default)s)")


def run(args: argparse.Namespace) -> int:
    from g2i_core.config import Settings
    from g2i_core.rerank import RerankConfig, rerank_storage
    from g2i_core.storage import Storage

    settings = Settings.load()
    storage = Storage.from_settings(settings, root=args.root)
    config = RerankConfig(strategy=args.strategy, k=args.k, ppr_weight=args.ppr_weight,
                          neighbour_kind=args.neighbour_kind, seed=args.seed)
    manifest = rerank_storage(storage, config, args.run_id or settings.run_id or "manual", out_table=args.out_table)
    print(f"{args.out_table}: {manifest['rows']} rows ({config.strategy}) under {storage.root}")
    return 0
