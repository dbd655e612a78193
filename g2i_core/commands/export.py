"""Export a training set in the InstructG2I reference implementation's layout, so results can be
compared with it: ``metadata.jsonl`` lines ``{"center", "text", "neighbors"}`` (image paths; neighbours
in rank order from the ``neighbours`` table), written to --out (default <root>/exports/<run-id>/).
--copy-images also copies every referenced image to <out>/images/ and makes the paths relative to it.
"""

from __future__ import annotations

NAME = "export"
SUMMARY = "export metadata.jsonl (center, text, neighbors) in the reference layout"

import argparse  # noqa: E402

from g2i_core.ids import optional_run_id_arg  # noqa: E402


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--root", default=None, help="storage root with graph_nodes, node_images, neighbours")
    p.add_argument("--run-id", default=None, type=optional_run_id_arg)
    p.add_argument("--out", default=None, help="export folder URI (default <root>/exports/<run-id>)")
    p.add_argument("--neighbours-table", default="neighbours")
    p.add_argument("--split", default="", help="only nodes of this split (default: all)")
    p.add_argument("--max-neighbours", type=int, default=5)
    p.add_argument("--copy-images", action="store_true")


def run(args: argparse.Namespace) -> int:
    from g2i_core.config import Settings
    from g2i_core.export import ExportConfig, export_metadata
    from g2i_core.storage import Storage

    settings = Settings.load()
    storage = Storage.from_settings(settings, root=args.root)
    run_id = args.run_id or settings.run_id or "manual"
    out = Storage.from_settings(settings, root=args.out or storage.uri("exports", run_id))
    stats = export_metadata(storage, out, ExportConfig(neighbours_table=args.neighbours_table, split=args.split,
                                                       max_neighbours=args.max_neighbours,
                                                       copy_images=args.copy_images))
    print(f"metadata.jsonl: {stats['lines']} lines ({stats['skipped_without_image']} nodes without image skipped) "
          f"-> {out.uri('metadata.jsonl')}")
    return 0
