"""Neighbour selection strategies and embeddings, on hand-built vectors and a real tiny store."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pytest

from g2i_core.rerank import RerankConfig, VectorIndex, select_neighbours, tune_ppr_weight, validation_nodes


def _unit(*v):
    a = np.asarray(v, np.float32)
    return a / np.linalg.norm(a)


# target "t" points along x; candidates lie at known angles from it
VECS = {"t": _unit(1, 0), "a": _unit(1, 0.1), "b": _unit(1, 1), "c": _unit(0, 1), "d": _unit(-1, 0.2)}
CANDS = pa.table({"node_id": ["t"] * 4, "rank": [1, 2, 3, 4], "neighbour_id": ["c", "b", "d", "a"],
                  "ppr_score": [0.4, 0.3, 0.2, 0.1]})


def _text():
    ids = sorted(VECS)
    return VectorIndex(ids, np.stack([VECS[i] for i in ids]))


def test_semantic_ppr_reorders_candidates_by_similarity():
    text = _text()
    out = select_neighbours(CANDS, text, {"text": text}, RerankConfig(k=3, ppr_weight=0.2)).to_pylist()
    assert [r["neighbour_id"] for r in out] == ["a", "b", "c"]
    top = out[0]
    expected = 0.8 * float(VECS["t"] @ VECS["a"]) + 0.2 * 0.1 / 0.4
    assert top["score"] == pytest.approx(expected) and top["semantic_score"] == pytest.approx(VECS["t"] @ VECS["a"])
    assert [r["rank"] for r in out] == [1, 2, 3]


def test_ppr_weight_one_and_ppr_strategy_keep_ppr_order():
    text = _text()
    for cfg in (RerankConfig(k=4, ppr_weight=1.0), RerankConfig(strategy="ppr", k=4)):
        out = select_neighbours(CANDS, text, {"text": text}, cfg).to_pylist()
        assert [r["neighbour_id"] for r in out] == ["c", "b", "d", "a"]


def test_semantic_strategy_searches_all_nodes_and_random_is_seeded():
    text = _text()
    sem = select_neighbours(CANDS, text, {"text": text}, RerankConfig(strategy="semantic", k=2)).to_pylist()
    t_rows = [r for r in sem if r["node_id"] == "t"]
    assert [r["neighbour_id"] for r in t_rows] == ["a", "b"]
    assert all(r["node_id"] != r["neighbour_id"] for r in sem)
    assert {r["node_id"] for r in sem} == set(VECS)
    r1 = select_neighbours(CANDS, text, {"text": text}, RerankConfig(strategy="random", k=3, seed=1)).to_pylist()
    r2 = select_neighbours(CANDS, text, {"text": text}, RerankConfig(strategy="random", k=3, seed=1)).to_pylist()
    assert r1 == r2 and all(r["node_id"] != r["neighbour_id"] for r in r1)
    assert len({r["neighbour_id"] for r in r1 if r["node_id"] == "t"}) == 3


def test_fewer_candidates_than_k_missing_vectors_and_empty_input():
    text = VectorIndex(["t", "a"], np.stack([VECS["t"], VECS["a"]]))
    out = select_neighbours(CANDS, text, {"text": text}, RerankConfig(k=10)).to_pylist()
    assert len(out) == 4  # keeps what it has
    assert out[0]["neighbour_id"] == "a"
    assert [r["semantic_score"] for r in out[1:]] == [None, None, None]  # ranked on PPR alone
    assert [r["neighbour_id"] for r in out[1:]] == ["c", "b", "d"]
    empty = CANDS.slice(0, 0)
    assert select_neighbours(empty, text, {"text": text}, RerankConfig()).num_rows == 0


def _images(looks_like_t: str) -> VectorIndex:
    """Image vectors where only ``looks_like_t`` has the target's cover; the others are orthogonal."""
    vecs = {"t": _unit(1, 0, 0), "a": _unit(0, 1, 0), "b": _unit(0, 0, 1), "c": _unit(0, 1, 1), "d": _unit(0, 1, 0)}
    vecs[looks_like_t] = vecs["t"]
    ids = sorted(vecs)
    return VectorIndex(ids, np.stack([vecs[i] for i in ids]))


def test_tune_ppr_weight_picks_the_weight_whose_neighbours_look_like_the_node():
    text = _text()
    # "c" has the top PPR score but the least similar title: only a high PPR weight ranks it first
    best, curve = tune_ppr_weight(CANDS, text, {"text": text}, _images("c"), ["t"], RerankConfig(k=1))
    assert sorted(curve) == [i / 10 for i in range(11)]
    assert curve[0.0] == pytest.approx(0.0, abs=1e-6) and curve[1.0] == pytest.approx(1.0)
    assert best > 0.5 and curve[best] == pytest.approx(1.0)
    picked = select_neighbours(CANDS, text, {"text": text}, RerankConfig(k=1, ppr_weight=best)).to_pylist()
    assert picked[0]["neighbour_id"] == "c"
    # "a" (closest title, lowest PPR) looks like the node: the pure semantic end wins, ties to the smaller weight
    best, curve = tune_ppr_weight(CANDS, text, {"text": text}, _images("a"), ["t"], RerankConfig(k=1))
    assert best == 0.0 and curve[0.0] == pytest.approx(1.0) and curve[1.0] < 0.5
    with pytest.raises(ValueError, match="no validation node has an image vector"):
        tune_ppr_weight(CANDS, text, {"text": text}, _images("a"), ["nobody"], RerankConfig(k=1))


def test_validation_nodes_are_a_stable_subsample():
    ids = [f"n{i}" for i in range(100)]
    val = validation_nodes(ids, 10)
    assert len(set(val)) == 10 and set(val) <= set(ids)
    assert validation_nodes(list(reversed(ids)), 10) == val  # input order does not matter
    assert validation_nodes(ids, 10, seed=1) != val
    assert validation_nodes(ids, 1000) == validation_nodes(ids, 100)


def test_text_image_across_spaces_fails_with_teaching_message():
    text = _text()
    img = VectorIndex(["a"], np.ones((1, 5), np.float32))
    with pytest.raises(ValueError, match="not in one space"):
        select_neighbours(CANDS, text, {"text": text, "image": img}, RerankConfig(neighbour_kind="image"))


def _png(rgb) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (16, 16), rgb).save(buf, format="PNG")
    return buf.getvalue()


def test_embed_and_rerank_on_a_store_with_cache(file_storage):
    from g2i_core.embed import EmbedConfig, embed_nodes, load_vectors
    from g2i_core.rerank import rerank_storage

    texts = {"n1": "a dragon fantasy epic with magic swords", "n2": "wizards and dragons in a magic kingdom",
             "n3": "quarterly tax accounting handbook", "n4": "spreadsheet finance for accountants"}
    file_storage.publish_table("graph_nodes", pa.table({"node_id": list(texts), "text": list(texts.values())}), "r1")
    keys = [file_storage.put_content_addressed(_png(c), ext="png").key for c in [(250, 10, 10), (240, 20, 20)]]
    file_storage.publish_table("node_images", pa.table({"node_id": ["n1", "n2"], "image_key": keys,
                                                        "status": ["ok", "ok"]}), "r1")
    m1 = embed_nodes(file_storage, EmbedConfig(), "e1")
    assert m1["extra"]["stats"]["text"]["encoded"] == 4 and m1["extra"]["stats"]["image"]["encoded"] == 2
    m2 = embed_nodes(file_storage, EmbedConfig(), "e2")  # nothing changed: all from cache
    assert m2["extra"]["stats"]["text"] == {"nodes": 4, "encoded": 0, "cached": 4}
    ids, vecs, enc = load_vectors(file_storage, "text")
    assert enc == "minilm-l6-v2" and vecs.shape == (4, 384)
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    _, img, _ = load_vectors(file_storage, "image")
    assert float(img[0] @ img[1]) > 0.9  # two near-identical red covers
    # n1's candidates by PPR put the accounting book first; the re-rank must prefer the dragon book
    file_storage.publish_table("ppr_candidates", pa.table({
        "node_id": ["n1", "n1", "n1"], "rank": [1, 2, 3], "neighbour_id": ["n3", "n4", "n2"],
        "ppr_score": [0.3, 0.2, 0.1]}), "p1")
    rerank_storage(file_storage, RerankConfig(k=2, ppr_weight=0.2), "x1")
    out = file_storage.read_table("neighbours").to_pylist()
    assert out[0]["neighbour_id"] == "n2" and out[0]["rank"] == 1
    # --ppr-weight auto: n1 is the one validation node with a cover; n2 (the red cover like n1's) is
    # kept at low weights and dropped at w = 1 (PPR order n3, n4), so a small weight wins
    from g2i_core.cli import main

    assert main(["rerank", "--root", file_storage.root, "--run-id", "x2", "--k", "2", "--ppr-weight", "auto"]) == 0
    tuning = file_storage.manifest("neighbours", "x2")["extra"]["ppr_weight_tuning"]
    assert tuning["nodes"] == 1 and tuning["image_encoder"] == "colorhist-v1"
    assert tuning["curve"]["1.0"] == 0 or np.isnan(tuning["curve"]["1.0"])
    assert tuning["chosen"] < 1.0 and tuning["curve"][f"{tuning['chosen']:.1f}"] > 0.9
    assert file_storage.read_table("neighbours").to_pylist()[0]["neighbour_id"] == "n2"


def test_export_writes_reference_metadata_layout(file_storage, tmp_path):
    import json

    from g2i_core.cli import main

    file_storage.publish_table("graph_nodes", pa.table({"node_id": ["a", "b", "c"], "text": ["ta", "tb", "tc"],
                                                        "split": ["train", "train", "test"]}), "r1")
    keys = {n: file_storage.put_content_addressed(_png(c), ext="png").key
            for n, c in [("a", (1, 2, 3)), ("b", (9, 9, 9))]}
    file_storage.publish_table("node_images", pa.table({"node_id": list(keys), "image_key": list(keys.values()),
                                                        "status": ["ok", "ok"]}), "r1")
    file_storage.publish_table("neighbours", pa.table({"node_id": ["a", "a", "b"], "rank": [2, 1, 1],
                                                       "neighbour_id": ["b", "c", "a"]}), "r1")
    rc = main(["export", "--root", file_storage.root, "--run-id", "x", "--split", "train", "--copy-images"])
    assert rc == 0
    out = tmp_path / "store" / "exports" / "x"
    lines = [json.loads(x) for x in (out / "metadata.jsonl").read_text().splitlines()]
    assert [sorted(line) for line in lines] == [["center", "neighbors", "text"]] * 2
    a, b = lines
    assert a["text"] == "ta" and a["neighbors"] == [b["center"]]  # c has no image: left out
    assert b["neighbors"] == [a["center"]]
    assert all((out / p).is_file() for p in (a["center"], b["center"]))


def _reference_rank(nid, cands, text, others, config):
    """The per-node scoring the vectorised ranker replaced (one node's candidates at a time)."""
    def semantic(nbr):
        t = text.get(nid)
        if t is None:
            return None
        kinds = ("text", "image") if config.neighbour_kind == "both" else (config.neighbour_kind,)
        sims = [float(np.dot(t, others[k].get(nbr))) for k in kinds if k in others and others[k].get(nbr) is not None]
        return float(np.mean(sims)) if sims else None

    top_ppr = max((s for _, s in cands), default=0.0) or 1.0
    scored = []
    for nbr, ppr in cands:
        if nbr == nid:
            continue
        sem = semantic(nbr)
        score = ppr if config.strategy == "ppr" else \
            (1 - config.ppr_weight) * (sem or 0.0) + config.ppr_weight * ppr / top_ppr
        scored.append((nbr, ppr, sem, score))
    scored.sort(key=lambda r: (-r[3], -r[1], r[0]))
    return scored[: config.k]


@pytest.mark.parametrize("strategy,kind,weight", [("semantic_ppr", "text", 0.5), ("semantic_ppr", "both", 0.2),
                                                  ("ppr", "text", 0.5), ("semantic_ppr", "text", 0.0)])
def test_vectorised_ranking_matches_per_node_scoring(strategy, kind, weight):
    rng = np.random.default_rng(4)
    ids = [f"n{i:03d}" for i in range(120)]
    vecs = rng.normal(size=(120, 8)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    text = VectorIndex([i for j, i in enumerate(ids) if j % 9], vecs[[j for j in range(120) if j % 9]])  # gaps
    image = VectorIndex(ids[::2], vecs[::2][:, ::-1].copy())
    rows = []
    for j, nid in enumerate(ids[:100]):  # 20 nodes are only ever neighbours; some nodes have no candidates
        if j % 17 == 0:
            continue
        picks = rng.choice(len(ids), size=int(rng.integers(1, 15)), replace=False)
        scores = np.round(rng.random(len(picks)), 1)  # rounded: ties in PPR and in the blended score
        rows += [(nid, ids[p], float(s)) for p, s in zip(picks, scores, strict=True)]
    rows.append((ids[1], ids[1], 0.99))  # the node itself: skipped, but its score sets the node's max
    rows.append((ids[3], "outside", 0.5))  # a neighbour with no vector at all
    rng.shuffle(rows)
    cands = pa.table({"node_id": [r[0] for r in rows], "rank": list(range(len(rows))),
                      "neighbour_id": [r[1] for r in rows], "ppr_score": [r[2] for r in rows]})
    config = RerankConfig(strategy=strategy, k=4, ppr_weight=weight, neighbour_kind=kind)
    others = {"text": text, "image": image}
    got = select_neighbours(cands, text, others, config).to_pylist()
    by_node = {}
    for nid, nbr, s in rows:
        by_node.setdefault(nid, []).append((nbr, s))
    want = [{"node_id": nid, "rank": r, "neighbour_id": nbr, "ppr_score": ppr, "semantic_score": sem, "score": score}
            for nid in sorted(by_node)
            for r, (nbr, ppr, sem, score) in enumerate(_reference_rank(nid, by_node[nid], text, others, config), 1)]
    assert [(g["node_id"], g["rank"], g["neighbour_id"]) for g in got] == \
        [(w["node_id"], w["rank"], w["neighbour_id"]) for w in want]
    for g, w in zip(got, want, strict=True):
        assert g["ppr_score"] == w["ppr_score"]
        assert (g["semantic_score"] is None) == (w["semantic_score"] is None)
        if w["semantic_score"] is not None:
            assert g["semantic_score"] == pytest.approx(w["semantic_score"], abs=1e-6)
            assert g["score"] == pytest.approx(w["score"], abs=1e-6)
