"""Evaluate generated images against the ground truth, or run the paper's suite, and write the report.

Scores stored generation runs (--generations NAME=RUN_ID, repeatable) against each node's real image,
or with --suite paper trains, generates and scores the paper's baselines and ablations (text-only,
random / PPR-only / semantic-only / semantic-PPR neighbours, Graph-QFormer ablations) with several
training seeds. Writes <root>/reports/<run-id>/metrics.json and report.html (self-contained).

Offline metrics (always): style score, community accuracy, FID in a feature space trained on the real
images, colour distance. Paper metrics (CLIP / DINOv2 score, FID via torchmetrics) with --encoders
clip,dinov2 when G2I_CLIP_EVAL_PATH / G2I_DINOV2_PATH point at local checkpoints.

Examples:
  g2i evaluate --run-id eval1 --generations ours=gen-ours --generations text_only=gen-text \\
      --labels sample/truth/goodreads_communities.csv.gz --backfill-run backfill-20240101
  g2i evaluate --suite paper --run-id paper --prepare-sample .local/bench/sample --seeds 0,1,2
"""

from __future__ import annotations

import argparse

from g2i_core.commands import add_graph_run_arg
from g2i_core.ids import location_arg, optional_run_id_arg, run_id_arg

NAME = "evaluate"
SUMMARY = "score generations against ground truth (or --suite paper) and write the HTML report"


def _pair(text: str) -> tuple[str, str]:
    name, sep, run = text.partition("=")
    if not sep or not name or not run:
        raise argparse.ArgumentTypeError(f"--generations must look like NAME=RUN_ID, got {text!r}")
    return name, run_id_arg(run)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run-id", required=True, type=run_id_arg, help="report run id (reports/<run-id>/)")
    p.add_argument("--root", default=None, help="the dataset's storage root (default: settings.storage_root)")
    add_graph_run_arg(p, "graph_nodes/node_images the generations are scored against")
    p.add_argument("--generations", type=_pair, action="append", default=[], help="NAME=GENERATION_RUN_ID")
    p.add_argument("--labels", default="", type=lambda v: v and location_arg(v),
                   help="CSV node_id,community (gzip ok) for the community metrics: a local path or an s3:// / "
                        "file:// URI (e.g. the sample's truth file uploaded under raw/)")
    p.add_argument("--backfill-run", default="", type=optional_run_id_arg,
                   help="a backfill generation run: its covers as a gallery in the report, also written as "
                        "generations/<run>/backfill.html")
    p.add_argument("--grid-nodes", type=int, default=8, help="nodes shown side by side in the report")
    p.add_argument("--gallery-nodes", type=int, default=48, help="backfill covers shown in the gallery")
    p.add_argument("--clusters", type=int, default=8, help="k-means pseudo-labels when no labels exist")
    p.add_argument("--encoders", default="",
                   help="comma list of clip,dinov2,inception (local paths from settings; inception = the paper's "
                        "Inception FID, weights file from G2I_INCEPTION_PATH)")
    p.add_argument("--suite", choices=["paper"], help="train, generate and score the paper's methods")
    p.add_argument("--prepare-sample", default="", metavar="DIR",
                   help="suite: first publish the benchmark tables from this sample (generated if missing)")
    p.add_argument("--sample-format", choices=("goodreads", "attributes"), default="goodreads",
                   help="suite: which sample part is the benchmark: the Goodreads dump, or the artworks table "
                        "(--source attributes, linked on artist,genre; community = style)")
    p.add_argument("--sample-nodes", type=int, default=2000,
                   help="suite: nodes of a newly generated sample (default %(default)s: ~356 test nodes)")
    p.add_argument("--methods", default="", help="suite: comma list of methods (default: all)")
    p.add_argument("--seeds", default="0,1,2", help="suite: training seeds of the headline methods")
    p.add_argument("--ablation-seeds", default="0", help="suite: training seeds of the other methods")
    p.add_argument("--steps", type=int, default=100, help="suite: training steps per model")
    p.add_argument("--lr-schedule", choices=("cosine", "constant"), default="cosine",
                   help="suite: lr after the warmup (constant: the suites run before cosine existed)")
    p.add_argument("--max-test-nodes", type=int, default=0)
    p.add_argument("--text-scale", type=float, default=None, help="suite: text guidance s_T (default 3.0)")
    p.add_argument("--graph-scale", type=float, default=None,
                   help="suite: graph guidance s_G (default: the lowest-FID one of 1.5..8 on the val split; "
                        "given, InstructPix2Pix's s_I is not chosen on val either but diffusers' 1.5)")


def run(args: argparse.Namespace) -> int:
    import json

    from g2i_core.config import Settings
    from g2i_core.storage import Storage

    settings = Settings.load()
    settings = settings.replace(storage_root=args.root) if args.root else settings
    storage = Storage.from_settings(settings).pinned(args.graph_run_id)
    encoders = tuple(e for e in args.encoders.split(",") if e)
    if args.suite:
        from pathlib import Path

        from g2i_core.evaluate.suite import PAPER_METHODS, SuiteConfig, run_suite

        if args.prepare_sample:
            from g2i_core.evaluate.benchdata import publish_benchmark_tables

            sample, fmt = Path(args.prepare_sample), args.sample_format
            if not (sample / "truth" / f"{fmt}_communities.csv.gz").exists():
                from g2i_core.sample.generator import generate_sample

                generate_sample(sample, nodes=args.sample_nodes, seed=0, formats=(fmt,))
            print(json.dumps(publish_benchmark_tables(storage, sample, dataset=fmt)))
        ints = lambda s: tuple(int(x) for x in s.split(",") if x)  # noqa: E731
        given = (("text_scale", args.text_scale), ("graph_scale", args.graph_scale))
        scales = {k: v for k, v in given if v is not None}
        if args.graph_scale is not None:
            # a given s_G is used as is, and skips every val choice (InstructPix2Pix's s_I: diffusers' 1.5)
            scales["graph_scale_candidates"] = scales["image_scale_candidates"] = ()
        cfg = SuiteConfig(run_id=args.run_id, seeds=ints(args.seeds), ablation_seeds=ints(args.ablation_seeds),
                          **scales, steps=args.steps, lr_schedule=args.lr_schedule, max_test_nodes=args.max_test_nodes,
                          encoders=encoders,
                          methods=tuple(m for m in args.methods.split(",") if m) or
                          tuple(m.name for m in PAPER_METHODS))
        doc = run_suite(storage, settings, cfg)
    else:
        from g2i_core.evaluate.job import evaluate_generations

        doc = evaluate_generations(storage, settings, args.run_id, dict(args.generations), labels_csv=args.labels,
                                   clusters=args.clusters, encoders=encoders, grid_nodes=args.grid_nodes,
                                   backfill_run=args.backfill_run, gallery_nodes=args.gallery_nodes)
    for m in doc["methods"]:
        print(m["name"], json.dumps({k: round(v["mean"], 4) for k, v in m["summary"].items()}))
    for c in doc["checks"]:
        print(("PASS " if c["passed"] else "FAIL ") + c["claim"] + ": " + c["detail"])
    print(f"report: {storage.uri('reports', args.run_id, 'report.html')}")
    return 0
