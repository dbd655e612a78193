"""The paper suite with the InstructPix2Pix and ControlNet baselines and the GNN ablations: a few steps on
the tiny preset, file storage. Each new method is trained, generates the test nodes and is a row of the
table and the report; the two baselines are headline methods (every seed); InstructPix2Pix's s_I is chosen on val; the
"ours beats both baselines" checks and the cost table are there."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def bench_sample(tmp_path_factory):
    from g2i_core.sample.generator import generate_sample

    out = tmp_path_factory.mktemp("suite_bl") / "sample"
    generate_sample(out, nodes=120, seed=4, formats=("goodreads",))
    return out


def test_suite_runs_baselines_and_gnn_ablations(file_storage, bench_sample, torch_one_thread):
    from g2i_core.config import Settings
    from g2i_core.evaluate.benchdata import publish_benchmark_tables
    from g2i_core.evaluate.suite import PAPER_METHODS, SuiteConfig, run_suite

    publish_benchmark_tables(file_storage, bench_sample)
    settings = Settings.load().replace(storage_root=file_storage.root)
    methods = ("semantic_ppr", "instructpix2pix", "controlnet", "gnn_sage", "gnn_gat")
    cfg = SuiteConfig(run_id="bl", methods=methods, seeds=(0,), steps=2, batch_size=4, max_test_nodes=4,
                      grid_nodes=2, gen_steps=2, guidance_text_scales=(), guidance_graph_scales=(),
                      graph_scale=2.0, graph_scale_candidates=(), image_scale_candidates=(1.0, 2.0))
    doc = run_suite(file_storage, settings, cfg)

    by_name = {m["name"]: m for m in doc["methods"]}
    assert set(by_name) == set(methods)
    assert all(by_name[n]["seeds"] == [0] for n in methods)
    headline = {m.name for m in PAPER_METHODS if m.headline}  # trained with every seed, like ours
    assert {"instructpix2pix", "controlnet"} <= headline and not {"gnn_sage", "gnn_gat"} & headline
    own = doc["image_scale_selection"]["instructpix2pix"]
    assert own["chosen"] in (1.0, 2.0) and set(own["metrics"]) == {"1.0", "2.0"}
    claims = [c["claim"] for c in doc["checks"]]
    assert any("instructpix2pix" in c for c in claims) and any("controlnet" in c for c in claims)
    for m in doc["methods"]:
        assert 0 <= m["summary"]["community_acc"]["mean"] <= 1
    costs = doc["costs"]
    assert set(costs) == set(methods)
    assert all(costs[n]["train_s_per_step"]["mean"] > 0 and costs[n]["sample_s_per_image"]["mean"] > 0
               for n in methods)
    report = file_storage.get_bytes(file_storage.uri("reports", "bl", "report.html")).decode()
    for name in methods:
        assert name in report
    assert "s/step" in report  # the cost table
