"""The sample benchmark's tables (``g2i evaluate --prepare-sample``): splits, neighbour strategies, tuning."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def goodreads_sample(tmp_path_factory):
    from g2i_core.sample.generator import generate_sample

    out = tmp_path_factory.mktemp("bench") / "sample"
    generate_sample(out, nodes=240, seed=4, formats=("goodreads",))
    return out


def test_benchmark_tables_split_select_and_tune(file_storage, goodreads_sample):
    from g2i_core.evaluate.benchdata import STRATEGIES, publish_benchmark_tables
    from g2i_core.rerank import PPR_WEIGHT_GRID

    summary = publish_benchmark_tables(file_storage, goodreads_sample)
    nodes = {r["node_id"]: r for r in file_storage.read_table("graph_nodes").to_pylist()}
    with_image = {r["node_id"] for r in file_storage.read_table("node_images").to_pylist() if r["status"] == "ok"}
    splits = {s: {n for n, r in nodes.items() if r["split"] == s} for s in ("train", "val", "test")}
    assert set().union(*splits.values()) == set(nodes) and sum(map(len, splits.values())) == len(nodes)
    assert splits["val"] and splits["test"] and (splits["val"] | splits["test"]) <= with_image
    assert (summary["val"], summary["test"], summary["with_image"]) == (len(splits["val"]), len(splits["test"]),
                                                                         len(with_image))
    for s in STRATEGIES:
        rows = file_storage.read_table(f"neighbours_{s}").to_pylist()
        assert rows and all(r["neighbour_id"] != r["node_id"] and r["neighbour_id"] in with_image for r in rows)
        assert max(r["rank"] for r in rows) == 5
    purity = summary["neighbour_purity"]
    # the sample's edges stay mostly inside a community: graph neighbours share it far above chance
    assert purity["ppr"] > purity["random"] + 0.4 and purity["semantic_ppr"] > purity["random"] + 0.4
    tuning = summary["ppr_weight_tuning"]
    assert tuning["nodes"] == len(splits["val"]) and tuning["ppr_weight"] in PPR_WEIGHT_GRID
    assert tuning["curve"][f"{tuning['ppr_weight']:.1f}"] == max(tuning["curve"].values())
    chosen = file_storage.manifest("neighbours")["extra"]["ppr_weight_tuning"]["ppr_weight"]
    assert chosen == tuning["ppr_weight"]
    assert file_storage.read_table("neighbours").equals(file_storage.read_table("neighbours_semantic_ppr"))
    # a rerun publishes the same tables
    assert publish_benchmark_tables(file_storage, goodreads_sample) == summary
