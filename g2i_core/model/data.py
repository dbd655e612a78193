"""Conditioning examples from the storage tables: one function for training and generation alike.

Tables read (latest published run of each):
    nodes table       node_id, text[, split]                  (``graph_nodes``, else ``nodes``)
    node_images       node_id, image_key, status              (status 'ok' rows are usable)
    neighbours        node_id, rank, neighbour_id, ...        (top-k per node, ascending rank)
Image bytes live at ``<root>/<image_key>``.
"""

from __future__ import annotations

import io
import logging
import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterable

from g2i_core.model.modeling import NeighbourSet

if TYPE_CHECKING:
    from PIL import Image

    from g2i_core.storage import Storage

log = logging.getLogger(__name__)


@dataclass
class NodeRecord:
    """A node with its text, image key and ranked neighbours (ids, texts, image keys)."""

    node_id: str
    text: str
    image_key: str | None
    neighbour_ids: list[str] = field(default_factory=list)
    neighbour_texts: list[str | None] = field(default_factory=list)
    neighbour_image_keys: list[str | None] = field(default_factory=list)


@dataclass
class NodeCondition:
    """What the pipeline needs for one node: prompt text and its neighbour set (images decoded)."""

    node_id: str
    text: str
    image_key: str | None
    neighbours: NeighbourSet


def resolve_nodes_table(storage: "Storage", name: str) -> str:
    """``graph_nodes`` when published, else ``nodes`` (the cleaned table is preferred)."""
    if storage.is_published(name):
        return name
    if name == "graph_nodes" and storage.is_published("nodes"):
        return "nodes"
    raise FileNotFoundError(f"table {name!r} is not published under {storage.root} (nor 'nodes')")


def load_records(storage: "Storage", *, nodes_table: str = "graph_nodes", images_table: str = "node_images",
                 neighbours_table: str = "neighbours", max_neighbours: int = 5, split: str = "",
                 node_ids: Iterable[str] | None = None, require_image: bool = True) -> list[NodeRecord]:
    """Join the three tables into NodeRecords. ``split`` filters target nodes by the nodes table's
    split column ("" = all); ``require_image`` keeps only targets with an 'ok' image (training)."""
    nodes = storage.read_table(resolve_nodes_table(storage, nodes_table)).to_pylist()
    images = storage.read_table(images_table, columns=["node_id", "image_key", "status"]).to_pylist()
    nbrs = storage.read_table(neighbours_table, columns=["node_id", "rank", "neighbour_id"]).to_pylist()

    text = {r["node_id"]: (r.get("text") or r.get("title") or "") for r in nodes}
    image = {r["node_id"]: r["image_key"] for r in images if r.get("status") == "ok" and r.get("image_key")}
    ranked: dict[str, list[tuple[int, str]]] = {}
    for r in nbrs:
        ranked.setdefault(r["node_id"], []).append((r["rank"], r["neighbour_id"]))

    if node_ids is not None:
        wanted = list(node_ids)
        missing = [n for n in wanted if n not in text]
        if missing:
            raise KeyError(f"{len(missing)} node ids are not in the nodes table, e.g. {missing[:3]}")
    else:
        wanted = [r["node_id"] for r in nodes if not split or r.get("split", split) == split]
    out = []
    for nid in wanted:
        if require_image and nid not in image:
            continue
        neigh = [n for _, n in sorted(ranked.get(nid, [])) if n != nid][:max_neighbours]
        out.append(NodeRecord(nid, text[nid], image.get(nid), neigh, [text.get(n) for n in neigh],
                              [image.get(n) for n in neigh]))
    return out


class ImageCache:
    """Decoded images by key, read through the storage layer; bounded LRU, thread-safe."""

    def __init__(self, storage: "Storage", capacity: int = 50_000):
        self.storage, self.capacity = storage, capacity
        self._items: OrderedDict[str, "Image.Image"] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> "Image.Image":
        from PIL import Image

        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        try:
            img = Image.open(io.BytesIO(self.storage.get_bytes(self.storage.uri(key))))
            img.load()
            img = img.convert("RGB")
        except OSError as exc:
            raise ValueError(f"image {key} is marked 'ok' in node_images but does not decode: {exc}") from exc
        with self._lock:
            self._items[key] = img
            if len(self._items) > self.capacity:
                self._items.popitem(last=False)
        return img


def condition_of(record: NodeRecord, images: ImageCache) -> NodeCondition:
    nset = NeighbourSet(images=[images.get(k) if k else None for k in record.neighbour_image_keys],
                        texts=list(record.neighbour_texts), image_keys=list(record.neighbour_image_keys))
    return NodeCondition(record.node_id, record.text, record.image_key, nset)


def load_conditions(storage: "Storage", node_ids: Iterable[str], *, nodes_table: str = "graph_nodes",
                    images_table: str = "node_images", neighbours_table: str = "neighbours",
                    max_neighbours: int = 5) -> list[NodeCondition]:
    """Prompt text + neighbour images/texts of the given nodes (in the given order). A node needs no
    image of its own (generation targets usually have none)."""
    records = load_records(storage, nodes_table=nodes_table, images_table=images_table,
                           neighbours_table=neighbours_table, max_neighbours=max_neighbours,
                           node_ids=node_ids, require_image=False)
    cache = ImageCache(storage)
    return [condition_of(r, cache) for r in records]


class Prefetcher:
    """Builds batches ``make(step)`` on worker threads, ``depth`` steps ahead of the training loop.

    Batches depend only on the step number, so order and content are the same with or without
    prefetching and after a resume."""

    def __init__(self, make, start: int, stop: int, depth: int = 4, workers: int = 2):
        self.make, self.stop, self.depth = make, stop, depth
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="g2i-data")
        self.pending: dict[int, Future] = {}
        self.next_to_submit = start

    def get(self, step: int):
        while self.next_to_submit < min(step + 1 + self.depth, self.stop + 1):
            self.pending[self.next_to_submit] = self.pool.submit(self.make, self.next_to_submit)
            self.next_to_submit += 1
        return self.pending.pop(step).result()

    def close(self) -> None:
        for f in self.pending.values():
            f.cancel()
        self.pool.shutdown(wait=True)
