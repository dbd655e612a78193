"""Tables of the sample benchmark, built in-process from a generated sample (no Spark), so the
``--suite paper`` run is self-contained and fast.

``publish_benchmark_tables(storage, sample_dir)`` publishes, for the Goodreads part of a sample:

    graph_nodes          node_id, text (the title), split (train/test), has_real_image, community
    node_images          node_id, image_key, status ('ok' for every decodable cover)
    neighbours_<s>       node_id, rank, neighbour_id, ppr_score, semantic_score, score
                         for each strategy s in STRATEGIES; ``neighbours`` is semantic_ppr

Strategies (neighbours always have an image and are never the node itself):
    ppr           top-k by exact personalized PageRank over the ``similar_books`` graph
                  (``g2i_core.ppr``: the neighbours stage's reference engine)
    semantic      top-k by text similarity (all-MiniLM-L6-v2 cosine of the titles) over all nodes
    semantic_ppr  the top-K (50) PPR candidates re-ranked by that similarity: the paper's method
    random        k nodes drawn uniformly
The ``community`` column is ground truth from the sample generator, used only by the evaluator.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from g2i_core.storage import Storage

STRATEGIES = ("semantic_ppr", "ppr", "semantic", "random")


def read_goodreads_sample(sample_dir: Path) -> tuple[dict[str, str], dict[str, list[str]], dict[str, int]]:
    """titles, similar_books edges and communities of the Goodreads sample (malformed lines skipped)."""
    with gzip.open(sample_dir / "truth" / "goodreads_communities.csv.gz", "rt") as fh:
        community = {r["node_id"]: int(r["community"]) for r in csv.DictReader(fh)}
    titles, similar = {}, {}
    with gzip.open(sample_dir / "raw" / "goodreads_books.json.gz", "rt") as fh:
        for line in fh:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if not isinstance(rec, dict) or not rec.get("book_id"):
                continue
            nid = f"goodreads:{rec['book_id']}"
            if rec.get("title"):
                titles.setdefault(nid, rec["title"])
            similar.setdefault(nid, [f"goodreads:{b}" for b in rec.get("similar_books", [])])
    return titles, similar, community


def _usable_png(path: Path) -> bytes | None:
    from PIL import Image

    if not path.exists() or path.stat().st_size > 2_000_000:
        return None
    data = path.read_bytes()
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.width * im.height > 4096 * 4096:
                return None  # decompression bomb: refuse before decoding
            im.convert("RGB").load()
    except Exception:  # noqa: BLE001 - corrupt covers are what the sample injects
        return None
    return data


def text_embeddings(texts: list[str], batch_size: int = 128) -> np.ndarray:
    """L2-normalised mean-pooled all-MiniLM-L6-v2 embeddings (the offline text model of the tiny preset)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from g2i_core.model.config import minilm_path

    tok = AutoTokenizer.from_pretrained(minilm_path())
    model = AutoModel.from_pretrained(minilm_path()).eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(texts), batch_size):
            enc = tok(texts[i:i + batch_size], padding=True, truncation=True, max_length=32, return_tensors="pt")
            h = model(**enc).last_hidden_state
            m = enc["attention_mask"].unsqueeze(-1).float()
            out.append(torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1).numpy())
    return np.concatenate(out).astype(np.float64)


def neighbour_tables(ids: list[str], with_image: set[str], edges: dict[str, list[str]], emb: np.ndarray, *,
                     k: int = 5, candidates: int = 50, seed: int = 0) -> dict[str, list[dict]]:
    """Rows of each strategy's neighbours table for every node in ``ids``."""
    from g2i_core.ppr.exact import ppr_rows
    from g2i_core.ppr.graph import build_graph

    index = {n: i for i, n in enumerate(ids)}
    pairs = [(s, d) for s in ids for d in edges.get(s, []) if d in index and d != s]
    graph = build_graph([s for s, _ in pairs], [d for _, d in pairs], extra_nodes=ids)
    assert list(graph.ids) == ids  # both sorted: graph index == position in ids
    img_mask = np.array([n in with_image for n in ids])
    sim = emb @ emb.T  # (n, n) cosine
    rng = np.random.default_rng(seed)
    out: dict[str, list[dict]] = {s: [] for s in STRATEGIES}
    ppr_all = np.concatenate([ppr_rows(graph, np.arange(a, min(a + 256, len(ids)))) for a in range(0, len(ids), 256)])
    for i, n in enumerate(ids):
        ppr = ppr_all[i]  # (n,) PPR from node i
        eligible = img_mask.copy()
        eligible[i] = False
        cand = [j for j in np.argsort(-ppr, kind="stable") if eligible[j] and ppr[j] > 0][:candidates]
        picks = {
            "ppr": cand[:k],
            "semantic_ppr": sorted(cand, key=lambda j: (-sim[i, j], -ppr[j]))[:k],
            "semantic": [j for j in np.argsort(-sim[i], kind="stable") if eligible[j]][:k],
            "random": rng.choice(np.flatnonzero(eligible), size=min(k, int(eligible.sum())), replace=False).tolist(),
        }
        for s, chosen in picks.items():
            for rank, j in enumerate(chosen, start=1):
                score = float(sim[i, j]) if s in ("semantic", "semantic_ppr") else float(ppr[j])
                out[s].append({"node_id": n, "rank": rank, "neighbour_id": ids[j], "ppr_score": float(ppr[j]),
                               "semantic_score": float(sim[i, j]), "score": score})
    return out


def publish_benchmark_tables(storage: "Storage", sample_dir: str | Path, *, k: int = 5, test_fraction: float = 0.2,
                             max_nodes: int = 0, seed: int = 0, run_id: str = "bench") -> dict:
    """Publish the benchmark tables; returns counts and each strategy's neighbour community purity."""
    import pyarrow as pa

    sample_dir = Path(sample_dir)
    titles, similar, community = read_goodreads_sample(sample_dir)
    ids = sorted(n for n in community if n in titles)
    if max_nodes:
        ids = ids[:max_nodes]
    rng = np.random.default_rng(seed)
    nodes, images = [], []
    for nid in ids:
        png = _usable_png(sample_dir / "images" / "goodreads" / f"{nid.split(':', 1)[1]}.png")
        if png is not None:
            ref = storage.put_content_addressed(png, prefix="images", ext="png", content_type="image/png")
            images.append({"node_id": nid, "image_key": ref.key, "status": "ok"})
        split = "test" if png is not None and rng.random() < test_fraction else "train"
        nodes.append({"node_id": nid, "text": titles[nid], "split": split, "has_real_image": png is not None,
                      "community": community[nid]})
    storage.publish_table("graph_nodes", pa.Table.from_pylist(nodes), run_id)
    storage.publish_table("node_images", pa.Table.from_pylist(images), run_id)
    with_image = {r["node_id"] for r in images}
    tables = neighbour_tables(ids, with_image, similar, text_embeddings([titles[n] for n in ids]), k=k, seed=seed)
    purity = {}
    for s, rows in tables.items():
        storage.publish_table(f"neighbours_{s}", pa.Table.from_pylist(rows), run_id, extra={"strategy": s})
        purity[s] = float(np.mean([community[r["neighbour_id"]] == community[r["node_id"]] for r in rows]))
    storage.publish_table("neighbours", pa.Table.from_pylist(tables["semantic_ppr"]), run_id,
                          extra={"strategy": "semantic_ppr"})
    return {"nodes": len(nodes), "with_image": len(with_image),
            "test": sum(r["split"] == "test" for r in nodes), "neighbour_purity": purity}
