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


def test_cli_evaluate_shows_titles_neighbours_text_only_and_the_backfill_gallery(file_storage, monkeypatch, capsys):
    """`g2i evaluate` (the command the DAGs run, not only the suite) fills the neighbours column from the
    graph-guided run's manifest, shows every node's title, puts real | text-only | graph-guided side by
    side, compares graph-guided with text-only, and renders the backfill gallery (also as backfill.html)."""
    import re

    from g2i_core.cli import main

    styles = make_styles(4, seed=3)
    ids = [f"goodreads:{i}" for i in range(90)]
    community = {n: i % 4 for i, n in enumerate(ids)}
    title = {n: f"Title {i} of the {['Dragon', 'Harbour', 'Garden', 'Comet'][community[n]]} saga" for i, n in
             enumerate(ids)}
    covered = ids[:80]  # the last ten have no cover: the backfill's targets
    pictures = {n: render(styles[community[n]], i, 32) for i, n in enumerate(covered)}
    rows = [{"node_id": n, "image_key": file_storage.put_content_addressed(encode_png(pictures[n]), prefix="images",
                                                                           ext="png").key, "status": "ok"}
            for n in covered]
    file_storage.publish_table("node_images", pa.Table.from_pylist(rows), "r")
    file_storage.publish_table("graph_nodes", pa.table({
        "node_id": ids, "text": [title[n] for n in ids], "has_real_image": [n in pictures for n in ids],
        "split": ["test" if i < 20 else "train" for i in range(90)]}), "r")
    # each node's neighbours: three covered nodes of its own community
    same = {n: [m for m in covered[20:] if community[m] == community[n] and m != n][:3] for n in ids}

    def by_title(prompts):
        return [next(n for n in ids if title[n] == p) for p in prompts]

    def graph_guided(prompts, graphs, seeds, cfg):  # follows the neighbours: the right community
        assert graphs is not None
        return [render(styles[community[n]], 10_000 + s % 1000, 32) for n, s in zip(by_title(prompts), seeds,
                                                                                      strict=True)]

    def text_only(prompts, graphs, seeds, cfg):  # no graph: the next community's style
        assert graphs is None
        return [render(styles[(community[n] + 1) % 4], 10_000 + s % 1000, 32)
                for n, s in zip(by_title(prompts), seeds, strict=True)]

    def with_graph(nodes):
        return [title[n] for n in nodes], [["graph"] for _ in nodes], [same[n] for n in nodes]

    def without_graph(nodes):
        return [title[n] for n in nodes], None, [[] for _ in nodes]

    run_shard(file_storage, GenerateConfig(run_id="gen-g", model_uri="m", split="test", steps=1), graph_guided,
              with_graph)
    run_shard(file_storage, GenerateConfig(run_id="gen-t", model_uri="m", split="test", steps=1, graph_scale=0.0),
              text_only, without_graph)
    run_shard(file_storage, GenerateConfig(run_id="backfill-1", model_uri="m", backfill=True, steps=1), graph_guided,
              with_graph)
    labels = file_storage.uri("raw", "truth.csv.gz")
    import gzip

    file_storage.put_bytes(labels, gzip.compress(("node_id,community\n" + "".join(
        f"{n},{community[n]}\n" for n in ids)).encode()))
    monkeypatch.setenv("G2I_STORAGE_ROOT", file_storage.root)
    assert main(["evaluate", "--run-id", "e2", "--generations", "graph_guided=gen-g", "--generations",
                 "text_only=gen-t", "--labels", labels, "--backfill-run", "backfill-1"]) == 0
    out = capsys.readouterr().out
    # the check compares every metric; FID cannot see a community swap (same set distribution), so only
    # its presence is asserted here, and the paired metrics below
    assert "graph_guided beats text_only" in out
    doc = json.loads(file_storage.get_bytes(file_storage.uri("reports", "e2", "metrics.json")))
    s = {m["name"]: m["summary"] for m in doc["methods"]}
    assert s["graph_guided"]["community_acc"]["mean"] > 0.9 > 0.1 > s["text_only"]["community_acc"]["mean"]
    assert doc["label_source"] == "labels file truth.csv.gz"
    assert doc["backfill"]["covers"] == 10 and doc["backfill"]["shown"] == 10
    html = file_storage.get_bytes(file_storage.uri("reports", "e2", "report.html")).decode()
    samples = html[html.index("<h2>Samples"):html.index("<h2>Backfill")]
    # columns in order: real cover | text-only | graph-guided | neighbours
    assert re.findall(r"<th>([^<]+)</th>", samples) == ["real cover", "text-only", "graph-guided",
                                                        "neighbours (graph condition)"]
    shown = re.findall(r"<div class=title>([^<]+)</div><span class=nid>([^<]+?)(?: ·|</span>)", samples)
    assert len(shown) == 8 and {n for _, n in shown} <= set(ids[:20])
    assert len({community[n] for _, n in shown}) == 4  # the shown rows span the communities
    for t, n in shown:
        assert t == title[n]
        row = samples[samples.index(f"<span class=nid>{n}"):].split("</tr>", 1)[0]
        nb_cell = row[row.index("<td class=nb>"):]
        hovers = re.findall(r'<img src="data:image/png;base64,[^"]+" width="48" height="48" alt="neighbour" '
                            r'title="neighbour: ([^"]+)"', nb_cell)
        assert hovers == [f"{title[m]} ({m})" for m in same[n]]  # neighbours with their titles on hover
    gallery = html[html.index("<h2>Backfill"):html.index("<h2>Trade-off")]
    assert gallery.count("<div class=tile>") == 10
    for n in ids[80:]:
        assert f"<div class=title>{title[n]}</div><div class=nid>{n}</div>" in gallery
    page = file_storage.get_bytes(file_storage.uri("generations", "backfill-1", "backfill.html")).decode()
    assert page.count("<div class=tile>") == 10 and "Content-Security-Policy" in page
    assert doc["backfill"]["page"] == file_storage.uri("generations", "backfill-1", "backfill.html")
    assert "Did it work?" in html and "✔" in html[html.index("Did it work?"):][:200]
