"""Node-set selection, sharding, and the kill-and-resume contract of batch generation, with a tiny
deterministic generator injected in place of the diffusion model."""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pytest

from g2i_core.generate import (
    GenerateConfig,
    _encode_png,
    backfill_nodes,
    node_seed,
    read_manifest,
    run_shard,
    select_nodes,
    shard_nodes,
)

N = 40


def publish_tables(storage) -> list[str]:
    ids = [f"goodreads:{1000 + i}" for i in range(N)]
    # every 4th node has a /nophoto/ cover, every 7th image failed to download
    has_real = [i % 4 != 0 for i in range(N)]
    storage.publish_table("graph_nodes", pa.table({
        "node_id": ids, "text": [f"The Book {i}" for i in range(N)],
        "split": ["test" if i % 3 == 0 else "train" for i in range(N)], "has_real_image": has_real}), "r1")
    imgs = [{"node_id": n, "image_key": f"images/x/{i}.png", "status": "error" if i % 7 == 0 else "ok"}
            for i, n in enumerate(ids) if has_real[i]]
    storage.publish_table("node_images", pa.Table.from_pylist(imgs), "r1")
    return ids


class CountingGenerator:
    """Images that depend only on each request's seed; raises after ``fail_after`` batches (a kill)."""

    def __init__(self, fail_after: int | None = None):
        self.batches, self.fail_after, self.images = 0, fail_after, 0

    def __call__(self, prompts, graphs, seeds, cfg):
        if self.fail_after is not None and self.batches == self.fail_after:
            raise KeyboardInterrupt("killed")
        self.batches += 1
        self.images += len(seeds)
        return [np.random.default_rng(s).integers(0, 255, (8, 8, 3), dtype=np.uint8) for s in seeds]


def texts_only(node_ids):
    return [f"text of {n}" for n in node_ids], None, [[] for _ in node_ids]


def cfg(**kw) -> GenerateConfig:
    base = dict(run_id="gen1", model_uri="file:///models/tiny-s0", split="test", batch_size=3, seeds=(0, 1), steps=2)
    base.update(kw)
    return GenerateConfig(**base)


def test_backfill_selects_exactly_the_nodes_without_a_usable_real_image(file_storage):
    ids = publish_tables(file_storage)
    expected = sorted(n for i, n in enumerate(ids) if i % 4 == 0 or i % 7 == 0)
    assert backfill_nodes(file_storage.read_table("graph_nodes"), file_storage.read_table("node_images")) == expected
    assert select_nodes(file_storage, cfg(split="", backfill=True)) == expected
    assert select_nodes(file_storage, cfg()) == sorted(n for i, n in enumerate(ids) if i % 3 == 0)
    assert select_nodes(file_storage, cfg(split="", node_ids=(ids[5], ids[2]))) == [ids[2], ids[5]]


@pytest.mark.parametrize("num_shards", [1, 2, 3, 7])
def test_shards_partition_the_node_set(num_shards):
    nodes = [f"amazon:B{i:09d}" for i in range(500)]
    shards = [shard_nodes(nodes, i, num_shards) for i in range(num_shards)]
    assert sorted(n for s in shards for n in s) == nodes  # union is everything, no node twice
    assert sum(map(len, shards)) == len(nodes)
    if num_shards > 1:
        assert min(map(len, shards)) > 0.5 * len(nodes) / num_shards  # roughly balanced


def test_run_publishes_manifest_and_a_rerun_generates_nothing(file_storage):
    publish_tables(file_storage)
    gen = CountingGenerator()
    summary = run_shard(file_storage, cfg(), gen, texts_only)
    nodes = select_nodes(file_storage, cfg())
    assert summary["rows"] == gen.images == 2 * len(nodes)
    table = read_manifest(file_storage, "gen1")
    assert sorted(set(table.column("node_id").to_pylist())) == nodes
    assert set(table.column_names) >= {"node_id", "image_key", "model_id", "seed", "text_scale", "graph_scale",
                                       "steps", "created_at"}
    assert set(table.column("model_id").to_pylist()) == {"tiny-s0"}
    for key in table.column("image_key").to_pylist():
        assert key.startswith("generations/gen1/images/") and file_storage.exists(file_storage.uri(key))
    again = CountingGenerator()
    assert run_shard(file_storage, cfg(), again, texts_only)["skipped"] and again.images == 0


def test_killed_run_publishes_nothing_and_resume_finishes_without_duplicates(file_storage):
    publish_tables(file_storage)
    with pytest.raises(KeyboardInterrupt):
        run_shard(file_storage, cfg(), CountingGenerator(fail_after=2), texts_only)
    with pytest.raises(FileNotFoundError, match="no published shard"):
        read_manifest(file_storage, "gen1")  # no partial manifest
    resumed = CountingGenerator()
    summary = run_shard(file_storage, cfg(), resumed, texts_only)
    total = 2 * len(select_nodes(file_storage, cfg()))
    assert resumed.images == total - 2 * 3  # the two finished batches were not redone
    table = read_manifest(file_storage, "gen1")
    assert table.num_rows == total == summary["rows"]
    pairs = list(zip(table.column("node_id").to_pylist(), table.column("seed").to_pylist(), strict=True))
    assert len(set(pairs)) == len(pairs)
    # same node + seed + settings -> the same content-addressed key as an uninterrupted run
    for (n, s), key in zip(pairs, table.column("image_key").to_pylist(), strict=True):
        img = np.random.default_rng(node_seed(n, s)).integers(0, 255, (8, 8, 3), dtype=np.uint8)
        assert hashlib.sha256(_encode_png(img)).hexdigest() in key


def test_shards_run_separately_union_to_the_whole_set(file_storage):
    publish_tables(file_storage)
    c = cfg(split="", backfill=True, seeds=(0,), num_shards=3)
    for shard in (0, 2):
        run_shard(file_storage, GenerateConfig(**{**c.__dict__, "shard": shard}), CountingGenerator(), texts_only)
    with pytest.raises(ValueError, match="incomplete"):
        read_manifest(file_storage, c.run_id)
    run_shard(file_storage, GenerateConfig(**{**c.__dict__, "shard": 1}), CountingGenerator(), texts_only)
    table = read_manifest(file_storage, c.run_id)
    assert sorted(table.column("node_id").to_pylist()) == select_nodes(file_storage, c)


def test_changed_settings_under_the_same_run_generate_new_requests(file_storage):
    publish_tables(file_storage)
    with pytest.raises(KeyboardInterrupt):
        run_shard(file_storage, cfg(run_id="g"), CountingGenerator(fail_after=1), texts_only)
    other = CountingGenerator()
    run_shard(file_storage, cfg(run_id="g", text_scale=3.0), other, texts_only)
    assert other.images == 2 * len(select_nodes(file_storage, cfg()))  # nothing reused from text_scale 7.5


def test_config_errors_name_the_problem():
    with pytest.raises(ValueError, match="exactly one node set"):
        cfg(backfill=True).validate()
    with pytest.raises(ValueError, match="shard must be in"):
        cfg(shard=3, num_shards=3).validate()


def test_published_shard_with_other_settings_is_refused_not_silently_reused(file_storage):
    publish_tables(file_storage)
    run_shard(file_storage, cfg(run_id="p"), CountingGenerator(), texts_only)
    with pytest.raises(ValueError, match="already published with other settings"):
        run_shard(file_storage, cfg(run_id="p", steps=7), CountingGenerator(), texts_only)
