"""Generation with the real tiny diffusion pipeline (random weights, 16 px) on the S3 server and from the
CLI: manifest rows, decodable images, style mixing, per-node seeds independent of the batch."""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow as pa
import pytest

from g2i_core.generate import GenerateConfig, generate, read_manifest
from g2i_core.sample.styles import encode_png, make_styles, render


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    import torch

    from g2i_core.evaluate.suite import TINY16
    from g2i_core.model import build_model, tiny_config

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "tiny16-random"
    build_model(tiny_config(**TINY16)).save_pretrained(path)
    return str(path)


def publish(storage, n: int = 9) -> list[str]:
    styles = make_styles(3, seed=0)
    ids = [f"goodreads:{100 + i}" for i in range(n)]
    images = []
    for i, nid in enumerate(ids[:-2]):  # the last two have no cover: the backfill set
        ref = storage.put_content_addressed(encode_png(render(styles[i % 3], i, 32)), prefix="images", ext="png")
        images.append({"node_id": nid, "image_key": ref.key, "status": "ok"})
    storage.publish_table("graph_nodes", pa.table({"node_id": ids, "text": [f"The Dragon Castle {i}" for i in range(n)],
                                                   "split": ["train"] * n,
                                                   "has_real_image": [i < n - 2 for i in range(n)]}),
                          "r1")
    storage.publish_table("node_images", pa.Table.from_pylist(images), "r1")
    rows = [{"node_id": a, "rank": r + 1, "neighbour_id": ids[(i + r + 1) % (n - 2)], "ppr_score": 0.1,
             "semantic_score": 0.5, "score": 0.5} for i, a in enumerate(ids) for r in range(3)]
    storage.publish_table("neighbours", pa.Table.from_pylist(rows), "r1")
    return ids


def _pixels(storage, key):
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(storage.get_bytes(storage.uri(key)))).convert("RGB"))


def test_backfill_on_s3_with_the_tiny_pipeline_and_style_mixing(s3_storage, model_dir):
    ids = publish(s3_storage)
    cfg = GenerateConfig(run_id="backfill1", model_uri=model_dir, backfill=True, batch_size=1, steps=2,
                         seeds=(0,), mix=((ids[0], 0.5),))
    summary = generate(s3_storage, cfg)
    assert summary["generated"] == 2 and summary["published"]
    rows = read_manifest(s3_storage, "backfill1").to_pylist()
    assert sorted(r["node_id"] for r in rows) == ids[-2:]
    for r in rows:
        assert _pixels(s3_storage, r["image_key"]).shape == (16, 16, 3)
        assert json.loads(r["mix"]) == [[ids[0], 0.5]] and len(r["neighbour_ids"]) == 3
    # per-node seeds: the same node in a batch of 3 gets the same image as alone in a batch of 1
    together = GenerateConfig(run_id="together", model_uri=model_dir, node_ids=tuple(ids[-3:]), batch_size=3,
                              steps=2, mix=((ids[0], 0.5),))
    generate(s3_storage, together)
    keys = {r["node_id"]: r["image_key"] for r in read_manifest(s3_storage, "together").to_pylist()}
    for r in rows:
        a, b = _pixels(s3_storage, r["image_key"]), _pixels(s3_storage, keys[r["node_id"]])
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1  # equal up to batched-kernel rounding


def test_cli_generate_then_rerun_skips(file_storage, model_dir, monkeypatch, capsys):
    from g2i_core.cli import main

    ids = publish(file_storage)
    monkeypatch.setenv("G2I_STORAGE_ROOT", file_storage.root)
    argv = ["generate", "--model", model_dir, "--run-id", "cli1", "--ids", ",".join(ids[:3]), "--steps", "2",
            "--seeds", "0,1", "--shard", "0/1", "--device", "cpu"]
    assert main(argv) == 0
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert first["generated"] == 6 and first["rows"] == 6
    rows = read_manifest(file_storage, "cli1").to_pylist()  # no scale given: the tiny preset's s_T = 3, s_G = 4
    assert {(r["text_scale"], r["graph_scale"]) for r in rows} == {(3.0, 4.0)}
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["skipped"] is True
    assert main(["generate", "--model", model_dir, "--run-id", "x", "--split", "test", "--shard", "2/2"]) == 1
