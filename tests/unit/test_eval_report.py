"""Report rendering: metrics table with encoders, SVG trade-off plot, grids, ordering checks."""

from __future__ import annotations

import base64
import io
import json
import re

import numpy as np
import pytest

from g2i_core.evaluate.report import publish_report, render_gallery_page, render_report
from g2i_core.evaluate.runner import compare, evaluate_methods, fit_space
from g2i_core.sample.styles import make_styles, render


def make_report_inputs():
    """Three 'methods' of known quality over 24 evaluated nodes: copies of the truth with growing noise
    (two seeds each) and a shuffled set; plus grids and a guidance grid."""
    styles = make_styles(4, seed=5)
    ids = [f"n{i:03d}" for i in range(104)]
    labels = {n: i % 4 for i, n in enumerate(ids)}
    real = {n: render(styles[labels[n]], 7 + i, 64) for i, n in enumerate(ids)}
    test = ids[80:]
    rng = np.random.default_rng(0)

    def noisy(scale, seed):
        r = np.random.default_rng(seed)
        return {n: np.clip(real[n] + r.normal(0, scale, real[n].shape), 0, 255).astype(np.uint8) for n in test}

    methods = {"ours": {0: noisy(10, 0), 1: noisy(12, 1)},
               "blurry": {0: noisy(60, 2), 1: noisy(70, 3)},
               "shuffled": {0: {n: real[test[(j + 1) % len(test)]] for j, n in enumerate(test)}}}
    space = fit_space(real, labels, exclude=set(test))
    doc = evaluate_methods(methods, real, labels, space, run_id="unit-report", label_source="test labels",
                           descriptions={"ours": "graph-conditioned"})
    doc["checks"].append(compare(doc, "ours", "blurry", "ours beats blurry", strict=True))
    grids = [{"node_id": n, "text": "The Dragon Castle",
              "images": {"ground truth": real[n], "ours": methods["ours"][0][n]},
              "neighbours": [real[ids[k]] for k in range(3)], "neighbour_titles": [f"Neighbour {k}" for k in range(3)],
              "neighbour_ids": ids[:3]} for n in test[:3]]
    guidance = [{"node_id": test[0], "text_scales": [1.0, 3.0], "graph_scales": [0.0, 1.5],
                 "images": {(t, g): rng.integers(0, 255, (32, 32, 3), dtype=np.uint8) for t in (1.0, 3.0)
                            for g in (0.0, 1.5)}}]
    return doc, grids, guidance


def make_gallery(n: int = 5, total: int = 7) -> dict:
    """A backfill gallery: ``n`` generated covers shown of ``total``, each with a title and two neighbours."""
    styles = make_styles(2, seed=9)
    return {"run_id": "backfill-20240101", "total": total,
            "tiles": [{"node_id": f"goodreads:{900 + i}", "title": f"Backfilled Book {i}",
                       "image": render(styles[i % 2], 50 + i, 16),
                       "neighbours": [render(styles[i % 2], 70 + k, 16) for k in range(2)],
                       "neighbour_titles": [f"Neighbour {i}.{k}" for k in range(2)],
                       "neighbour_ids": [f"goodreads:{k}" for k in range(2)]} for i in range(n)]}


@pytest.fixture(scope="module")
def report():
    doc, grids, guidance = make_report_inputs()
    return doc, render_report(doc, grids, ["ground truth", "ours"], guidance)


def test_metrics_document_orders_methods_by_quality(report):
    doc, _ = report
    s = {m["name"]: m["summary"] for m in doc["methods"]}
    assert s["ours"]["style_score"]["mean"] > s["blurry"]["style_score"]["mean"] > s["shuffled"]["style_score"]["mean"]
    assert s["ours"]["colour_dist"]["mean"] < s["blurry"]["colour_dist"]["mean"]
    assert len(s["ours"]["style_score"]["values"]) == 2 and "lo" in s["shuffled"]["style_score"]
    assert doc["checks"][0]["passed"], doc["checks"][0]["detail"]
    assert not compare(doc, "blurry", "ours", "reverse", strict=True)["passed"]
    json.dumps(doc)  # serialisable as metrics.json


def test_report_is_self_contained_with_encoders_plot_and_grids(report):
    doc, html = report
    srcs = re.findall(r'<img src="([^"]+)"', html)
    assert len(srcs) == 3 * 2 + 3 * 3 + 4  # comparison cells, neighbours, guidance cells
    for src in srcs:
        assert src.startswith("data:image/png;base64,")
        from PIL import Image

        Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).verify()
    assert not re.search(r'(src|href)="https?:', html)  # nothing fetched from outside
    assert "g2i-style classifier" in html and "RGB histogram" in html  # encoder named per metric
    svg = html[html.index("<svg"): html.index("</svg>")]
    assert svg.count("<circle") == 2 * len(doc["methods"])  # a point and a legend dot per method
    assert "✔ ours beats blurry" in html


def test_publish_report_writes_metrics_then_html(file_storage, report):
    doc, html = report
    uris = publish_report(file_storage, "unit-report", doc, html)
    assert json.loads(file_storage.get_bytes(uris["metrics"]))["run_id"] == "unit-report"
    assert file_storage.get_bytes(uris["report"]).decode() == html


def test_report_shows_titles_neighbour_titles_the_answer_and_the_gallery():
    doc, grids, guidance = make_report_inputs()
    doc["methods"][1]["name"] = "text_only"  # "blurry" plays the text-only baseline
    html = render_report(doc, grids, ["ground truth", "ours"], guidance, gallery=make_gallery())
    assert "<div class=title>The Dragon Castle</div>" in html
    # every row's neighbours carry their titles on hover
    assert html.count('title="neighbour: Neighbour 1 (n001)"') == 3
    answer = html[html.index("Did it work?"):].split("</div>", 1)[0]
    assert "✔" in answer and "community accuracy" in answer and "text-only" in answer
    gallery = html[html.index("<h2>Backfill"):html.index("<h2>Trade-off")]
    assert gallery.count("<div class=tile>") == 5 and "7 covers generated" in gallery
    assert "the first 5 by node id" in gallery
    assert '<div class=title>Backfilled Book 3</div><div class=nid>goodreads:903</div>' in gallery
    assert len(re.findall(r'<img src="data:image/png;base64,', gallery)) == 5 * 3
    page = render_gallery_page(make_gallery())
    assert page.count("<div class=tile>") == 5 and "Content-Security-Policy" in page
    assert not re.search(r'(src|href)="https?:', page)
