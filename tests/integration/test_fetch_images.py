"""fetch-images against the loopback sample image server: good images, 404s, slow responses, corrupt bytes
and a decompression bomb each land in node_images with their status; reruns only fetch what failed."""

import dataclasses
import gzip
import json

import pytest

from g2i_core.images import FetchConfig, fetch_images
from g2i_core.ingest.parsers import parse_line
from g2i_core.sample.generator import DUMP_FILES, generate_sample
from g2i_core.sample.server import ImageServer

FAST = dict(timeout_s=0.5, retries=1, backoff_s=0.05, concurrency=8, per_host_rate=0)


@pytest.fixture(scope="module")
def served_sample(tmp_path_factory):
    """A 60-node Goodreads sample whose image URLs point at a live loopback server (slow = 2 s), and the
    allow-list entry that opens that server to the fetcher (loopback is refused otherwise)."""
    out = tmp_path_factory.mktemp("fetch-sample")
    with ImageServer(out, port=0, slow_seconds=2.0) as server:
        generate_sample(out, nodes=60, seed=5, formats=("goodreads",), image_base_url=server.base_url)
        allow = (f"127.0.0.1:{server.port}",)
        yield out, json.loads((out / "truth" / "goodreads.json").read_text()), allow


def _publish_nodes(storage, sample):
    """The nodes table as ingest would publish it (first copy of each id; fetching needs only three columns)."""
    rows = {}
    with gzip.open(sample / "raw" / DUMP_FILES["goodreads"], "rb") as fh:
        for i, line in enumerate(fh, 1):
            row = parse_line("goodreads", line.rstrip(b"\n"), i)
            if row["reason"] is None:
                rows.setdefault(row["node_id"], row)
    import pyarrow as pa

    table = pa.Table.from_pylist([{k: r[k] for k in ("node_id", "image_url", "has_real_image")}
                                  for r in rows.values()])
    storage.publish_table("nodes", table, "nodes-run")
    return len(rows)


def _expected_status(truth):
    expected = {}
    for status, key in (("not_found", "not_found"), ("corrupt", "corrupt"), ("too_many_pixels", "bomb"),
                        ("timeout", "slow")):
        expected.update({node: status for node in truth["image_faults"][key]})
    return expected


@pytest.mark.s3
def test_every_fault_lands_in_node_images_and_rerun_fetches_only_failures(s3_storage, served_sample):
    sample, truth, allow = served_sample
    n = _publish_nodes(s3_storage, sample)
    report = fetch_images(s3_storage, s3_storage, FetchConfig(**FAST, allow_hosts=allow))
    rows = {r["node_id"]: r for r in s3_storage.read_table("node_images").to_pylist()}
    assert len(rows) == n == truth["nodes_expected"]
    for node, status in _expected_status(truth).items():
        assert rows[node]["status"] == status, (node, rows[node])
        assert rows[node]["error"] and rows[node]["image_key"] is None
    assert report.by_status["no_image"] == truth["no_image"] + truth["nophoto"]
    ok = [r for r in rows.values() if r["status"] == "ok"]
    assert len(ok) == n - len(_expected_status(truth)) - report.by_status["no_image"]
    for r in ok[:5]:  # the stored object is the image, under its own hash
        assert r["image_key"] == f"images/{r['sha256'][:2]}/{r['sha256']}.png" and r["width"] == 64
        assert s3_storage.exists(s3_storage.uri(r["image_key"]))

    again = fetch_images(s3_storage, s3_storage, FetchConfig(**FAST, allow_hosts=allow))
    assert again.fetched == len(_expected_status(truth)) and again.reused == len(ok)
    assert again.stored_new == 0 and again.by_status == report.by_status
    assert s3_storage.read_table("node_images").num_rows == n  # replaced, not appended


def test_interrupted_run_resumes_from_checkpoints(file_storage, served_sample, monkeypatch):
    sample, truth, allow = served_sample
    _publish_nodes(file_storage, sample)
    cfg = FetchConfig(**FAST, allow_hosts=allow, checkpoint_every=5)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed before publishing")

    monkeypatch.setattr(file_storage, "publish_table", crash)
    with pytest.raises(KeyboardInterrupt):
        fetch_images(file_storage, file_storage, cfg)
    monkeypatch.undo()
    assert not file_storage.is_published("node_images")
    resumed = fetch_images(file_storage, file_storage, cfg)
    assert resumed.reused > 0 and resumed.fetched < truth["nodes_expected"] - resumed.by_status["no_image"]
    assert resumed.by_status.get("ok", 0) == resumed.reused + resumed.fetched - len(_expected_status(truth))


def test_several_processes_fetch_the_same_rows_and_resume_whatever_their_count(file_storage, served_sample,
                                                                                monkeypatch):
    sample, truth, allow = served_sample
    n = _publish_nodes(file_storage, sample)
    cfg = FetchConfig(**FAST, allow_hosts=allow, checkpoint_every=5, processes=2)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed before publishing")

    # on the class: the storage is pickled for the fetch processes, and a local function would not pickle
    monkeypatch.setattr(type(file_storage), "publish_table", crash)
    with pytest.raises(KeyboardInterrupt):
        fetch_images(file_storage, file_storage, cfg)
    monkeypatch.undo()
    staging = file_storage.uri("_staging", "node_images", "nodes-run")
    shares = {u.split("/share-")[1].split("/")[0] for u in file_storage.list(staging)}
    assert shares == {"0", "1"}  # each process checkpointed its own share, to its last row

    # a rerun with another process count reads every share's checkpoints: only the failures are fetched
    resumed = fetch_images(file_storage, file_storage, dataclasses.replace(cfg, processes=3))
    assert resumed.processes == 3
    assert resumed.fetched == len(_expected_status(truth)) and resumed.stored_new == 0
    rows = {r["node_id"]: r for r in file_storage.read_table("node_images").to_pylist()}
    assert len(rows) == n
    for node, status in _expected_status(truth).items():
        assert rows[node]["status"] == status, (node, rows[node])
    assert resumed.by_status["ok"] == n - len(_expected_status(truth)) - resumed.by_status["no_image"]
    assert file_storage.list(staging) == []  # published: the checkpoints are gone
