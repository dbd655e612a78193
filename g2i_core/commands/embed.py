"""Text and image embeddings of every node under --root, published as ``embeddings``
(node_id, encoder, kind text|image, content_hash, vector).

Text comes from graph_nodes (or nodes); images from node_images rows with status 'ok'. Vectors of
unchanged content are reused from the previous run (cache by content hash), so nightly reruns only
encode new or edited nodes. Encoders: minilm-l6-v2 (text, offline, pretrained), colorhist-v1 (image,
offline, a deterministic colour-histogram + thumbnail feature, not a learned model), clip (text and/or
image from a local CLIP directory given by --clip-path). See g2i_core/embed.py.
"""

from __future__ import annotations

NAME = "embed"
SUMMARY = "text/image embeddings of every node, cached by content hash (embeddings)"

import argparse  # noqa: E402

from g2i_core.commands import add_graph_run_arg  # noqa: E402
from g2i_core.ids import optional_run_id_arg  # noqa: E402


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--root", default=None, help="storage root with graph_nodes/node_images (default: storage_root)")
    p.add_argument("--run-id", default=None, type=optional_run_id_arg)
    add_graph_run_arg(p, "graph_nodes/node_images to embed")
    p.add_argument("--text-encoder", default="minilm-l6-v2", choices=["minilm-l6-v2", "clip"])
    p.add_argument("--image-encoder", default="colorhist-v1", choices=["colorhist-v1", "clip", "none"])
    p.add_argument("--clip-path", default=None, help="local CLIP directory (default: settings.clip_vision_path)")
    p.add_argument("--batch-size", type=int, default=256, help="items per encoder call (default %(default)s)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                   help="MiniLM matmul precision; auto: bf16 on CUDA or a CPU with AMX/AVX512-BF16, else fp32")


def run(args: argparse.Namespace) -> int:
    from g2i_core.config import Settings
    from g2i_core.embed import EmbedConfig, embed_nodes
    from g2i_core.storage import Storage

    settings = Settings.load()
    storage = Storage.from_settings(settings, root=args.root).pinned(args.graph_run_id)
    config = EmbedConfig(text_encoder=args.text_encoder, image_encoder=args.image_encoder,
                         clip_path=args.clip_path or settings.clip_vision_path, batch_size=args.batch_size,
                         device=args.device, precision=args.precision)
    manifest = embed_nodes(storage, config, args.run_id or settings.run_id or "manual")
    print(f"embeddings: {manifest['rows']} rows ({manifest['extra']['stats']}) under {storage.root}")
    return 0
