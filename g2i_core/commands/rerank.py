"""Select each node's final neighbours from its PPR candidates and embeddings -> ``neighbours``
(node_id, rank, neighbour_id, ppr_score, semantic_score, score), top --k (default 5).

Strategies: semantic_ppr (default: candidates re-ranked by target-text similarity blended with PPR,
--ppr-weight, default 0.5; ``--ppr-weight auto`` picks it on up to --tune-nodes nodes with covers by
how much their neighbours' images resemble their own, which needs image embeddings), ppr (PPR order
only), semantic (all nodes by similarity, graph ignored), random (seeded). --neighbour-kind
text|image|both picks what the target's text is compared with; image needs CLIP embeddings for text
and image. --out-table writes an ablation variant under another name.
"""

from __future__ import annotations

NAME = "rerank"
SUMMARY = "semantic re-ranking of PPR candidates into the final neighbours table"

import argparse  # noqa: E402

from g2i_core.commands import add_graph_run_arg  # noqa: E402
from g2i_core.ids import optional_run_id_arg  # noqa: E402


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--root", default=None, help="storage root with ppr_candidates + embeddings")
    p.add_argument("--run-id", default=None, type=optional_run_id_arg)
    add_graph_run_arg(p, "ppr_candidates and embeddings")
    p.add_argument("--strategy", default="semantic_ppr", choices=["semantic_ppr", "ppr", "semantic", "random"])
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--ppr-weight", type=_weight, default=0.5,
                   help="semantic_ppr blend weight in [0, 1], or 'auto' (default %(default)s)")
    p.add_argument("--tune-nodes", type=int, default=2000, help="validation nodes for --ppr-weight auto")
    p.add_argument("--neighbour-kind", default="text", choices=["text", "image", "both"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-table", default="neighbours", help="table name (default %(default)s)")


def _weight(text: str) -> float | str:
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1] or 'auto', got {text!r}") from None


def run(args: argparse.Namespace) -> int:
    from g2i_core.config import Settings
    from g2i_core.rerank import RerankConfig, rerank_storage
    from g2i_core.storage import Storage

    settings = Settings.load()
    storage = Storage.from_settings(settings, root=args.root).pinned(args.graph_run_id)
    tune = args.ppr_weight == "auto"
    config = RerankConfig(strategy=args.strategy, k=args.k, ppr_weight=0.5 if tune else args.ppr_weight,
                          neighbour_kind=args.neighbour_kind, seed=args.seed, tune_ppr_weight=tune,
                          tune_nodes=args.tune_nodes)
    manifest = rerank_storage(storage, config, args.run_id or settings.run_id or "manual", out_table=args.out_table)
    tuning = manifest.get("extra", {}).get("ppr_weight_tuning")
    chosen = f", ppr_weight {tuning['chosen']:.1f} chosen on {tuning['nodes']} nodes" if tuning else ""
    print(f"{args.out_table}: {manifest['rows']} rows ({config.strategy}{chosen}) under {storage.root}")
    return 0
