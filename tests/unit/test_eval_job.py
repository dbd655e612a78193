"""`g2i evaluate` on stored generation runs: manifests in, metrics.json and report.html out."""

from __future__ import annotations

import json

import pyarrow as pa

from g2i_core.generate import GenerateConfig, run_shard
from g2i_core.sample.styles import encode_png, make_styles, render


def test_cli_evaluate_ranks_a_faithful_generator_above_a_wrong_one(file_storage, monkeypatch, capsys):
    from g2i_core.cli import main

    styles = make_styles(4, seed=2)
    ids = [f"amazon:B{i:09d}" for i in range(80)]
    community = {n: i % 4 for i, n in enumerate(ids)}
    pictures = {n: render(styles[community[n]], i, 32) for i, n in enumerate(ids)}
    rows = [{"node_id": n, "image_key": file_storage.put_content_addressed(encode_png(pictures[n]), prefix="images",
                                                                           ext="png").key, "status": "ok"} for n in ids]
    file_storage.publish_table("node_images", pa.Table.from_pylist(rows), "r")
    file_storage.publish_table("graph_nodes", pa.table({
        "node_id": ids, "text": ids, "community": [community[n] for n in ids],
        "split": ["test" if i < 20 else "train" for i in range(80)]}), "r")

    def faithful(prompts, graphs, seeds, cfg):  # the node's own style, a fresh rendering
        return [render(styles[community[p]], 10_000 + s % 1000, 32) for p, s in zip(prompts, seeds, strict=True)]

    def wrong(prompts, graphs, seeds, cfg):  # the next community's style
        return [render(styles[(community[p] + 1) % 4], 10_000 + s % 1000, 32)
                for p, s in zip(prompts, seeds, strict=True)]

    def as_text(nodes):
        return list(nodes), None, [[] for _ in nodes]

    for run, fn in (("gen-good", faithful), ("gen-bad", wrong)):
        run_shard(file_storage, GenerateConfig(run_id=run, model_uri="m", split="test", steps=1), fn, as_text)
    monkeypatch.setenv("G2I_STORAGE_ROOT", file_storage.root)
    assert main(["evaluate", "--run-id", "e1", "--generations", "good=gen-good", "--generations", "bad=gen-bad"]) == 0
    assert "report: file://" in capsys.readouterr().out
    doc = json.loads(file_storage.get_bytes(file_storage.uri("reports", "e1", "metrics.json")))
    s = {m["name"]: m["summary"] for m in doc["methods"]}
    assert s["good"]["community_acc"]["mean"] > 0.9 > 0.1 > s["bad"]["community_acc"]["mean"]
    assert s["good"]["style_score"]["lo"] > s["bad"]["style_score"]["hi"]
    assert s["good"]["colour_dist"]["hi"] < s["bad"]["colour_dist"]["lo"]
    # (no FID ordering here: "bad" is a permutation of communities, the same set distribution, which a
    # set-level distance cannot see; that is what the paired metrics are for)
    assert doc["label_source"] == "the nodes table's community column" and doc["resolution"] == 32
    assert doc["style_space"]["n_train"] + doc["style_space"]["n_holdout"] == 60  # evaluated nodes held out
    assert file_storage.exists(file_storage.uri("reports", "e1", "report.html"))
