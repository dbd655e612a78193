"""Semantic-PPR blend weight on a sample: neighbour community purity and the label-free tuning criterion.

For every weight w of ``g2i_core.rerank.PPR_WEIGHT_GRID`` it selects each node's 5 neighbours from its
top-50 exact-PPR candidates (``g2i_core.rerank.select_neighbours``, titles embedded with MiniLM) and
reports (a) purity: the share of neighbours in the node's own community (the sample's ground truth) and
(b) the criterion ``--ppr-weight auto`` maximises without labels: the mean colorhist-v1 cosine between a
node's cover and its neighbours' covers (over all nodes with a cover here, not only a validation split).

    python bench/rerank_weight.py .local/bench-paper-sample --out bench/results/rerank_weight_500.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def main() -> None:
    from g2i_core.embed import colorhist_image
    from g2i_core.evaluate.benchdata import (
        _usable_png,
        candidate_table,
        exact_ppr,
        image_index,
        read_goodreads_sample,
        text_embeddings,
    )
    from g2i_core.rerank import PPR_WEIGHT_GRID, RerankConfig, VectorIndex, select_neighbours, tune_ppr_weight

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sample_dir", type=Path)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    titles, similar, community = read_goodreads_sample(args.sample_dir)
    ids = sorted(n for n in community if n in titles)
    covers = {n: b for n in ids if (b := _usable_png(args.sample_dir / "images" / "goodreads" /
                                                     f"{n.split(':', 1)[1]}.png")) is not None}
    cands = candidate_table(ids, set(covers), exact_ppr(ids, similar))
    text = VectorIndex(ids, text_embeddings([titles[n] for n in ids]))
    images = image_index(dict(zip(covers, colorhist_image(list(covers.values())), strict=True)))
    purity = {}
    for w in PPR_WEIGHT_GRID:
        rows = select_neighbours(cands, text, {"text": text}, RerankConfig(ppr_weight=w))
        purity[w] = float(np.mean([community[a] == community[b] for a, b in
                                   zip(rows["node_id"].to_pylist(), rows["neighbour_id"].to_pylist(), strict=True)]))
    best, curve = tune_ppr_weight(cands, text, {"text": text}, images, sorted(covers), RerankConfig())
    doc = {"sample": str(args.sample_dir), "nodes": len(ids), "with_cover": len(covers), "chosen_on_all_covers": best,
           "rows": [{"ppr_weight": w, "purity": round(purity[w], 4), "neighbour_cover_cosine": round(curve[w], 4)}
                    for w in PPR_WEIGHT_GRID]}
    print("| w | purity | neighbour cover cosine |\n|---:|---:|---:|")
    for r in doc["rows"]:
        print(f"| {r['ppr_weight']:.1f} | {r['purity']:.3f} | {r['neighbour_cover_cosine']:.4f} |")
    if args.out:
        args.out.write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()
