"""Re-chunking a gzipped dump into numbered Parquet chunks (file:// storage, no Spark)."""

import gzip

import pyarrow.parquet as pq
import pytest

from g2i_core.ingest.chunking import list_raw_files, rechunk
from g2i_core.ingest.job import IngestConfig


def test_rechunk_keeps_every_line_and_its_number(tmp_path, file_storage):
    dump = tmp_path / "raw" / "d.json.gz"
    dump.parent.mkdir()
    with gzip.open(dump, "wb") as fh:
        fh.write(b"".join(f'{{"n": {i}}}\n'.encode() for i in range(1, 11)) + b"\n\n")  # blank tail lines
    staging = file_storage.uri("_staging", "x")
    result = rechunk(file_storage, f"file://{dump}", staging, chunk_lines=4)
    assert result.lines_in == 10 and len(result.chunk_uris) == 3
    rows = [r for u in result.chunk_uris for r in pq.read_table(u[len("file://"):]).to_pylist()]
    assert [r["line_no"] for r in rows] == list(range(1, 11))
    assert [r["raw"] for r in rows] == [f'{{"n": {i}}}'.encode() for i in range(1, 11)]
    # a rerun replaces the staging chunks instead of adding to them
    assert len(rechunk(file_storage, f"file://{dump}", staging, chunk_lines=100).chunk_uris) == 1
    assert len(file_storage.list(staging)) == 1


def test_plain_jsonl_and_prefix_listing(tmp_path, file_storage):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jsonl").write_bytes(b"{}\n{}\n")
    (tmp_path / "in" / "notes.txt").write_text("ignored")
    assert list_raw_files(file_storage, f"file://{tmp_path}/in") == [f"file://{tmp_path}/in/a.jsonl"]
    assert rechunk(file_storage, f"file://{tmp_path}/in", file_storage.uri("s"), 10).lines_in == 2
    with pytest.raises(FileNotFoundError, match="no dump files"):
        list_raw_files(file_storage, f"file://{tmp_path}/empty")


def test_ingest_config_defaults_and_errors():
    cfg = IngestConfig(source="goodreads", raw_uri="file:///x.gz", logical_date="2026-01-02").resolved()
    assert cfg.run_id == "goodreads-2026-01-02"
    with pytest.raises(ValueError, match="source must be one of"):
        IngestConfig(source="ebay", raw_uri="x").resolved()
    with pytest.raises(ValueError, match="logical_date must be YYYY-MM-DD"):
        IngestConfig(source="goodreads", raw_uri="x", logical_date="26/11/2026").resolved()
    with pytest.raises(ValueError, match="max_quarantine_fraction"):
        IngestConfig(source="goodreads", raw_uri="x", max_quarantine_fraction=2).resolved()
