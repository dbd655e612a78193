"""Export a training set in the InstructG2I reference layout: ``metadata.jsonl`` with one line per
node, ``{"center": <image path>, "text": <prompt text>, "neighbors": [<image paths>]}``, neighbours
in rank order. Paths are relative to the export folder when images are copied (``images/...``),
else relative to the storage root (the ``image_key``). Nodes without a usable image are skipped;
neighbours without an image are left out of their list.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from g2i_core.storage import Storage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExportConfig:
    neighbours_table: str = "neighbours"
    split: str = ""  # "" = every node; else only graph_nodes.split == split
    max_neighbours: int = 5
    copy_images: bool = False


def export_metadata(storage: "Storage", out: "Storage", config: ExportConfig) -> dict:
    """Write ``metadata.jsonl`` (and images when asked) under ``out``; returns counts."""
    # 1. node texts and splits, usable images, ranked neighbours
    nodes_name = "graph_nodes" if storage.is_published("graph_nodes") else "nodes"
    nodes = storage.read_table(nodes_name).to_pylist()
    images = {r["node_id"]: r["image_key"] for r in storage.read_table("node_images").to_pylist()
              if r.get("status") == "ok" and r.get("image_key")}
    ranked: dict[str, list[tuple[int, str]]] = {}
    for r in storage.read_table(config.neighbours_table, columns=["node_id", "rank", "neighbour_id"]).to_pylist():
        ranked.setdefault(r["node_id"], []).append((r["rank"], r["neighbour_id"]))
    # 2. one line per node with an image
    lines, used, skipped = [], set(), 0
    for node in sorted(nodes, key=lambda r: r["node_id"]):
        nid = node["node_id"]
        if config.split and node.get("split") != config.split:
            continue
        if nid not in images:
            skipped += 1
            continue
        nbrs = [images[n] for _, n in sorted(ranked.get(nid, [])) if n in images][: config.max_neighbours]
        used.update([images[nid], *nbrs])
        path = _path if config.copy_images else (lambda k: k)
        lines.append({"center": path(images[nid]), "text": node.get("text") or node.get("title") or "",
                      "neighbors": [path(k) for k in nbrs]})
    # 3. images first, metadata last: a reader never sees a line whose image is missing
    if config.copy_images:
        for key in sorted(used):
            out.put_bytes(out.uri(_path(key)), storage.get_bytes(storage.uri(key)))
    body = "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines)
    out.put_bytes(out.uri("metadata.jsonl"), body.encode(), "application/x-ndjson")
    stats = {"lines": len(lines), "skipped_without_image": skipped, "images": len(used) if config.copy_images else 0}
    log.info("export: %s", stats)
    return stats


def _path(image_key: str) -> str:
    return "images/" + image_key.split("/")[-1]
