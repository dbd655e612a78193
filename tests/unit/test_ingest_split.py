"""The hash split used by build-graph: stable per id, close to the configured fractions."""

import pytest

from g2i_core.graph.build import BuildConfig, split_bucket, split_for


def test_split_depends_on_the_node_id_only():
    ids = [f"goodreads:{i}" for i in range(20_000)]
    before = {i: split_for(i) for i in ids[:1000]}
    # computing splits for a much larger set (new nodes) moves none of the old ones
    assert {i: split_for(i) for i in ids}.items() >= before.items()
    assert split_bucket("amazon:B000") == split_bucket("amazon:B000")


def test_split_fractions_are_close_to_configured():
    ids = [f"amazon:B{i:09d}" for i in range(20_000)]
    counts = {s: 0 for s in ("train", "val", "test")}
    for i in ids:
        counts[split_for(i, 0.7, 0.2)] += 1
    assert abs(counts["train"] / 20_000 - 0.7) < 0.02
    assert abs(counts["val"] / 20_000 - 0.2) < 0.02
    assert abs(counts["test"] / 20_000 - 0.1) < 0.02


def test_build_config_rejects_bad_fractions():
    with pytest.raises(ValueError, match="train_fraction=0.95, val_fraction=0.1"):
        BuildConfig(train_fraction=0.95, val_fraction=0.1).check()
