"""``g2i evaluate --suite paper`` end to end on a small sample and the S3 server: every method x seed is
trained, s_G is chosen on the val split, the checks and the report are published, and a rerun reuses
every stored model and generation."""

from __future__ import annotations

import json
import re

import pytest


@pytest.fixture(scope="module")
def bench_sample(tmp_path_factory):
    from g2i_core.sample.generator import generate_sample

    out = tmp_path_factory.mktemp("suite") / "sample"
    generate_sample(out, nodes=160, seed=4, formats=("goodreads",))
    return out


def test_suite_trains_selects_scores_and_resumes(s3_storage, s3_settings, bench_sample, torch_one_thread):
    from g2i_core.evaluate.benchdata import publish_benchmark_tables
    from g2i_core.evaluate.suite import SuiteConfig, run_suite

    publish_benchmark_tables(s3_storage, bench_sample)
    cfg = SuiteConfig(run_id="t", methods=("text_only", "random", "semantic_ppr", "ppr"), seeds=(0, 1), steps=3,
                      batch_size=4, max_test_nodes=6, grid_nodes=2, gen_steps=2, guidance_text_scales=(1.0, 3.0),
                      guidance_graph_scales=(0.0, 4.0), graph_scale_candidates=(1.0, 4.0))
    doc = run_suite(s3_storage, s3_settings, cfg)

    by_name = {m["name"]: m for m in doc["methods"]}
    assert set(by_name) == {"text_only", "random", "semantic_ppr", "ppr"}
    assert [len(by_name[n]["seeds"]) for n in ("text_only", "random", "semantic_ppr", "ppr")] == [2, 2, 2, 1]
    sel = doc["graph_scale_selection"]
    assert sel["method"] == "semantic_ppr" and sel["seed"] == 0 and sel["chosen"] in (1.0, 4.0)
    assert set(sel["metrics"]) == {"1.0", "4.0"} and sel["nodes"] >= 2
    fids = {g: v["style_fid"]["mean"] for g, v in sel["metrics"].items()}
    assert fids[str(sel["chosen"])] == min(fids.values())  # the val split's lowest-FID scale
    assert doc["suite"]["graph_scale"] == sel["chosen"]
    assert [c["claim"].split(" ")[0] for c in doc["checks"]] == ["graph-conditioned", "semantic-PPR"]
    for m in doc["methods"]:
        assert 0 <= m["summary"]["community_acc"]["mean"] <= 1 and m["summary"]["style_fid"]["mean"] >= 0
    stored_objects = (set(s3_storage.list(s3_storage.uri("models")))
                      | set(s3_storage.list(s3_storage.uri("generations"))))
    models = {m.group(1) for p in stored_objects if (m := re.search(r"/models/([^/]+)/model\.safetensors$", p))}
    assert len(models) == 7  # 3 headline methods x 2 seeds + ppr x 1
    report = s3_storage.get_bytes(s3_storage.uri("reports", "t", "report.html")).decode()
    assert "chosen on" in report and report.count("<img") >= 2 * 3
    stored = json.loads(s3_storage.get_bytes(s3_storage.uri("reports", "t", "metrics.json")))
    assert stored["graph_scale_selection"]["chosen"] == sel["chosen"]
    assert set(stored["generation_runs"]) == {"text_only-s0", "text_only-s1", "random-s0", "random-s1",
                                              "semantic_ppr-s0", "semantic_ppr-s1", "ppr-s0"}

    # a rerun trains nothing and generates nothing new: the same numbers come back
    again = run_suite(s3_storage, s3_settings, cfg)
    assert again["methods"] == doc["methods"] and again["graph_scale_selection"] == sel
    assert set(s3_storage.list(s3_storage.uri("models"))) | set(s3_storage.list(s3_storage.uri("generations"))) == \
        stored_objects
