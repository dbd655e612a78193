"""Tables of the sample benchmark, built in-process from a generated sample (no Spark), so the
``--suite paper`` run is self-contained and fast.

``publish_benchmark_tables(storage, sample_dir)`` publishes, for the Goodreads part of a sample:

    graph_nodes          node_id, text (the title), split (train/val/test), has_real_image, community
    node_images          node_id, image_key, status ('ok' for every decodable cover)
    neighbours_<s>       node_id, rank, neighbour_id, ppr_score, semantic_score, score
                         for each strategy s in STRATEGIES; ``neighbours`` is semantic_ppr

Strategies (neighbours always have an image and are never the node itself):
    ppr           top-k by exact personalized PageRank over the ``similar_books`` graph
                  (``g2i_core.ppr``: the neighbours stage's reference engine)
    semantic      top-k by text similarity (all-MiniLM-L6-v2 cosine of the titles) over all nodes
    semantic_ppr  the top-K (50) PPR candidates re-ranked by that similarity blended with PPR
                  (``g2i_core.rerank``), the weight chosen on the val split: the paper's method
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
    import pyarrow as pa

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


def read_attributes_sample(sample_dir: Path, link_on: tuple[str, ...] = ("artist", "genre"),
                           cap: int = 10) -> tuple[dict[str, str], dict[str, list[str]], dict[str, int]]:
    """titles, projection edges and communities (styles) of the artworks sample (``--source attributes``):
    rows parsed and deduplicated as the ingest does, edges by the same bounded projection."""
    from g2i_core.ingest.attributes import iter_parsed, projection_pairs
    from g2i_core.storage import Storage

    with gzip.open(sample_dir / "truth" / "attributes_communities.csv.gz", "rt") as fh:
        community = {r["node_id"]: int(r["community"]) for r in csv.DictReader(fh)}
    store = Storage(f"file://{Path(sample_dir).resolve()}")
    best: dict[str, dict] = {}
    for row in iter_parsed(store, store.uri("raw", "artworks.csv.gz"), link_on):
        old = best.get(row.get("node_id") or "")
        if row["reason"] is None and (old is None or row["completeness"] >= old["completeness"]):
            best[row["node_id"]] = row  # the most complete copy, ties to the later line (as resolve_duplicates)
    attrs = {n: json.loads(r["attrs"]) for n, r in best.items()}
    edges: dict[str, list[str]] = {}
    for src, dst, _ in projection_pairs(attrs, link_on, cap):
        edges.setdefault(src, []).append(dst)
    return {n: r["title"] for n, r in best.items() if r["title"]}, edges, community


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


def exact_ppr(ids: list[str], edges: dict[str, list[str]]) -> np.ndarray:
    """(n, n) exact personalized PageRank over the ``similar_books`` edges; row i is the PPR from ids[i]."""
    from g2i_core.ppr.exact import ppr_rows
    from g2i_core.ppr.graph import build_graph

    index = {n: i for i, n in enumerate(ids)}
    pairs = [(s, d) for s in ids for d in edges.get(s, []) if d in index and d != s]
    graph = build_graph([s for s, _ in pairs], [d for _, d in pairs], extra_nodes=ids)
    assert list(graph.ids) == ids  # both sorted: graph index == position in ids
    return np.concatenate([ppr_rows(graph, np.arange(a, min(a + 256, len(ids)))) for a in range(0, len(ids), 256)])


def candidate_table(ids: list[str], with_image: set[str], ppr_all: np.ndarray, candidates: int = 50) -> "pa.Table":
    """The ``ppr_candidates`` table: each node's top-``candidates`` nodes with an image by PPR (never itself)."""
    import pyarrow as pa

    img_mask = np.array([n in with_image for n in ids])
    rows = []
    for i, n in enumerate(ids):
        eligible = img_mask.copy()
        eligible[i] = False
        cand = [j for j in np.argsort(-ppr_all[i], kind="stable") if eligible[j] and ppr_all[i, j] > 0][:candidates]
        rows += [{"node_id": n, "rank": r, "neighbour_id": ids[j], "ppr_score": float(ppr_all[i, j])}
                 for r, j in enumerate(cand, start=1)]
    return pa.Table.from_pylist(rows, schema=pa.schema([("node_id", pa.string()), ("rank", pa.int32()),
                                                        ("neighbour_id", pa.string()), ("ppr_score", pa.float64())]))


def image_index(image_vectors: dict[str, np.ndarray]):
    from g2i_core.rerank import VectorIndex

    ids = sorted(image_vectors)
    return VectorIndex(ids, np.stack([image_vectors[n] for n in ids]))


def neighbour_tables(ids: list[str], with_image: set[str], edges: dict[str, list[str]], emb: np.ndarray,
                     image_vectors: dict[str, np.ndarray], val: list[str], *, k: int = 5, candidates: int = 50,
                     seed: int = 0) -> tuple[dict[str, list[dict]], dict]:
    """Rows of each strategy's neighbours table for every node in ``ids``, and how semantic-PPR was tuned.

    ``ppr`` and ``semantic_ppr`` go through the neighbours stage's own selection (``g2i_core.rerank``);
    semantic-PPR's weight is chosen on the ``val`` nodes with ``tune_ppr_weight`` (image vectors, no labels)."""
    from g2i_core.rerank import RerankConfig, VectorIndex, select_neighbours, tune_ppr_weight

    ppr_all = exact_ppr(ids, edges)
    img_mask = np.array([n in with_image for n in ids])
    sim = emb @ emb.T  # (n, n) cosine
    rng = np.random.default_rng(seed)
    out: dict[str, list[dict]] = {s: [] for s in STRATEGIES}
    for i, n in enumerate(ids):
        eligible = img_mask.copy()
        eligible[i] = False
        picks = {
            "semantic": [j for j in np.argsort(-sim[i], kind="stable") if eligible[j]][:k],
            "random": rng.choice(np.flatnonzero(eligible), size=min(k, int(eligible.sum())), replace=False).tolist(),
        }
        for s, chosen in picks.items():
            for rank, j in enumerate(chosen, start=1):
                score = float(sim[i, j]) if s == "semantic" else 0.0
                out[s].append({"node_id": n, "rank": rank, "neighbour_id": ids[j], "ppr_score": float(ppr_all[i, j]),
                               "semantic_score": float(sim[i, j]), "score": score})
    cands = candidate_table(ids, with_image, ppr_all, candidates)
    text = VectorIndex(ids, emb)
    weight, curve = tune_ppr_weight(cands, text, {"text": text}, image_index(image_vectors), val, RerankConfig(k=k))
    for s, cfg in (("ppr", RerankConfig(strategy="ppr", k=k)), ("semantic_ppr", RerankConfig(k=k, ppr_weight=weight))):
        out[s] = select_neighbours(cands, text, {"text": text}, cfg).to_pylist()
    return out, {"ppr_weight": weight, "curve": {f"{w:.1f}": round(v, 4) for w, v in curve.items()},
                 "criterion": "mean colorhist-v1 cosine of validation node and neighbour covers", "nodes": len(val)}


def publish_benchmark_tables(storage: "Storage", sample_dir: str | Path, *, k: int = 5, test_fraction: float = 0.2,
                             val_fraction: float = 0.1, max_nodes: int = 0, seed: int = 0,
                             run_id: str = "bench", dataset: str = "goodreads") -> dict:
    """Publish the benchmark tables; returns counts, each strategy's neighbour community purity and the
    semantic-PPR weight chosen on the validation split."""
    import pyarrow as pa

    from g2i_core.embed import colorhist_image

    sample_dir = Path(sample_dir)
    # dataset "attributes": the artworks table, linked on artist and genre (g2i_core/sample/artworks.py)
    read = read_attributes_sample if dataset == "attributes" else read_goodreads_sample
    titles, similar, community = read(sample_dir)
    ids = sorted(n for n in community if n in titles)
    if max_nodes:
        ids = ids[:max_nodes]
    rng, val_rng = np.random.default_rng(seed), np.random.default_rng([seed, 1])
    nodes, images, covers = [], [], {}
    for nid in ids:
        png = _usable_png(sample_dir / "images" / dataset / f"{nid.split(':', 1)[1]}.png")
        if png is not None:
            ref = storage.put_content_addressed(png, prefix="images", ext="png", content_type="image/png")
            images.append({"node_id": nid, "image_key": ref.key, "status": "ok"})
            covers[nid] = png
        split = "test" if png is not None and rng.random() < test_fraction else "train"
        if split == "train" and png is not None and val_rng.random() < val_fraction:
            split = "val"  # held out from training; chooses the semantic-PPR weight
        nodes.append({"node_id": nid, "text": titles[nid], "split": split, "has_real_image": png is not None,
                      "community": community[nid]})
    storage.publish_table("graph_nodes", pa.Table.from_pylist(nodes), run_id)
    storage.publish_table("node_images", pa.Table.from_pylist(images), run_id)
    with_image = {r["node_id"] for r in images}
    image_vectors = dict(zip(covers, colorhist_image(list(covers.values())), strict=True))
    val = [r["node_id"] for r in nodes if r["split"] == "val"]
    tables, tuning = neighbour_tables(ids, with_image, similar, text_embeddings([titles[n] for n in ids]),
                                      image_vectors, val, k=k, seed=seed)
    purity = {}
    for s, rows in tables.items():
        storage.publish_table(f"neighbours_{s}", pa.Table.from_pylist(rows), run_id, extra={"strategy": s})
        purity[s] = float(np.mean([community[r["neighbour_id"]] == community[r["node_id"]] for r in rows]))
    storage.publish_table("neighbours", pa.Table.from_pylist(tables["semantic_ppr"]), run_id,
                          extra={"strategy": "semantic_ppr", "ppr_weight_tuning": tuning})
    return {"nodes": len(nodes), "with_image": len(with_image), "test": sum(r["split"] == "test" for r in nodes),
            "val": len(val), "neighbour_purity": purity, "ppr_weight_tuning": tuning}
