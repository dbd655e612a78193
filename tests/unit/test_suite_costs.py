"""The suite report's cost table: each method's training s/step and sampling s/image, relative to ours."""

from __future__ import annotations


def test_cost_table_rows_ratios_and_escaping():
    from g2i_core.evaluate.report import cost_table

    html = cost_table({
        "semantic_ppr": {"train_s_per_step": {"mean": 0.5, "n": 3}, "sample_s_per_image": {"mean": 0.2, "n": 3}},
        "controlnet": {"train_s_per_step": {"mean": 0.75, "n": 3}, "sample_s_per_image": None},
        "<b>x</b>": {"train_s_per_step": {"mean": 1.0, "n": 1}, "sample_s_per_image": {"mean": 0.1, "n": 1}},
    })
    assert "training s/step" in html and "sampling s/image" in html
    assert "1.50× ours" in html  # controlnet trains at 0.75 s/step against ours' 0.5
    assert "2.00× ours" in html and "0.50× ours" in html
    assert "<td>–</td>" in html  # a generation reused without a timing shows no number
    assert "<b>x</b>" not in html and "&lt;b&gt;x&lt;/b&gt;" in html
