"""Model-ready tables straight from the sample generator, without Spark: for tests, the tiny-preset
learning demo and benchmarks.

``publish_sample_tables(storage, sample_dir)`` publishes ``nodes`` (node_id, text, split, community),
``node_images`` (node_id, image_key, status) and ``neighbours`` (node_id, rank, neighbour_id, ppr_score,
semantic_score, score) for the Goodreads part of a generated sample. Neighbours are drawn from the
node's ground-truth community with probability ``within`` (else any node), which is what semantic
PPR approximates on the sample graph.
"""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from g2i_core.storage import Storage


def publish_sample_tables(storage: "Storage", sample_dir: str | Path, *, k: int = 5, within: float = 0.9,
                          seed: int = 0, val_fraction: float = 0.1, run_id: str = "sample") -> dict:
    """Publish the three tables; returns {"nodes": n, "communities": {node_id: community}}."""
    import pyarrow as pa

    sample_dir = Path(sample_dir)
    with gzip.open(sample_dir / "truth" / "goodreads_communities.csv.gz", "rt") as fh:
        community = {r["node_id"]: int(r["community"]) for r in csv.DictReader(fh)}
    titles = {}
    with gzip.open(sample_dir / "raw" / "goodreads_books.json.gz", "rt") as fh:
        for line in fh:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # the sample injects malformed lines on purpose
            if isinstance(rec, dict) and rec.get("book_id") and rec.get("title"):
                titles.setdefault(f"goodreads:{rec['book_id']}", rec["title"])
    rng = np.random.default_rng(seed)
    ids = sorted(n for n in community if n in titles and (sample_dir / "images" / "goodreads" /
                                                             f"{n.split(':', 1)[1]}.png").exists())
    nodes, images = [], []
    for nid in ids:
        png = (sample_dir / "images" / "goodreads" / f"{nid.split(':', 1)[1]}.png").read_bytes()
        if not _decodes(png):  # the sample injects corrupt images on purpose; the fetcher marks them too
            continue
        ref = storage.put_content_addressed(png, prefix="images", ext="png", content_type="image/png")
        images.append({"node_id": nid, "image_key": ref.key, "status": "ok"})
        split = "val" if rng.random() < val_fraction else "train"
        nodes.append({"node_id": nid, "text": titles[nid], "split": split, "community": community[nid]})
    ids = [r["node_id"] for r in nodes]
    by_comm: dict[int, list[str]] = {}
    for nid in ids:
        by_comm.setdefault(community[nid], []).append(nid)
    neighbours = []
    for nid in ids:
        same = [n for n in by_comm[community[nid]] if n != nid]
        others = [n for n in ids if n != nid]
        chosen: list[str] = []
        while len(chosen) < min(k, len(others)):
            pool = same if (same and rng.random() < within) else others
            cand = pool[int(rng.integers(len(pool)))]
            if cand not in chosen:
                chosen.append(cand)
        for rank, n in enumerate(chosen):
            score = float(1.0 / (rank + 1))
            neighbours.append({"node_id": nid, "rank": rank, "neighbour_id": n, "ppr_score": score,
                               "semantic_score": score, "score": score})
    storage.publish_table("nodes", pa.Table.from_pylist(nodes), run_id)
    storage.publish_table("node_images", pa.Table.from_pylist(images), run_id)
    storage.publish_table("neighbours", pa.Table.from_pylist(neighbours), run_id)
    return {"nodes": len(ids), "communities": {n: community[n] for n in ids}}


def _decodes(data: bytes) -> bool:
    import io

    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return im.size[0] <= 4096 and im.size[1] <= 4096
    except Exception:  # noqa: BLE001 - any decode failure means "not usable"
        return False
