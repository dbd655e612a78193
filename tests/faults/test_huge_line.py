"""A ~200 MB single-line ``.gz`` (a dump with its newlines lost) must not take the driver's memory.

The rechunk runs in a subprocess whose peak resident memory is measured (``ru_maxrss``) before and after
the big file; the line must be skipped in bounded blocks, never held whole, and end as one
``line_too_long`` quarantine row with its line number while every other line is kept.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import textwrap

import pyarrow.parquet as pq

from g2i_core.ingest.parsers import MAX_LINE_BYTES, parse_line

HUGE = 200 * 1024 * 1024
GROWTH_LIMIT = 150 * 1024 * 1024  # well under the line itself: a reader that holds the line fails this


def _good(i: int) -> bytes:
    return json.dumps({"book_id": str(i), "title": f"Book {i}"}).encode()


def _write_dump(path) -> dict[int, str]:
    """Three good lines, a blank one, the huge line, three more good lines; {line_no: expected reason}."""
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1) as gz:
        gz.write(b"\n".join(_good(i) for i in (1, 2, 3)) + b"\n\n")  # lines 1-3, blank line 4
        gz.write(b'{"book_id": "99", "title": "')  # line 5
        block = b"a" * (1 << 20)
        for _ in range(HUGE // len(block)):
            gz.write(block)
        gz.write(b'"}\n' + b"\n".join(_good(i) for i in (6, 7, 8)) + b"\n")  # lines 6-8
    return {1: None, 2: None, 3: None, 5: "line_too_long", 6: None, 7: None, 8: None}


PROBE = textwrap.dedent("""
    import json, resource, sys
    from g2i_core.ingest.chunking import rechunk
    from g2i_core.storage import Storage

    root, small, big = sys.argv[1:4]
    storage = Storage(root)
    rechunk(storage, small, storage.uri("_staging", "warm"))  # imports and the write path, paid up front
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    result = rechunk(storage, big, storage.uri("_staging", "big"))
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"before": before, "after": after, "chunks": result.chunk_uris,
                      "lines": result.lines_in}))
""")


def _probe(tmp_path, script: str) -> tuple[dict, dict[int, str]]:
    """Run ``script`` on the small dump, then the huge one, in a process of its own; (its report, the expected
    reasons by line). Fails when the huge line raised the peak RSS by GROWTH_LIMIT or more."""
    big = tmp_path / "huge.json.gz"
    expected = _write_dump(big)
    assert big.stat().st_size < 5 * 1024 * 1024  # small on disk: the danger is all in the gunzipped line
    small = tmp_path / "small.json.gz"
    with gzip.open(small, "wb") as fh:
        fh.write(b"\n".join(_good(i) for i in range(100)) + b"\n")
    out = subprocess.run([sys.executable, "-c", script, f"file://{tmp_path}/store", f"file://{small}",
                          f"file://{big}"], capture_output=True, text=True, timeout=600, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    probe = json.loads(out.stdout.strip().splitlines()[-1])
    growth = probe["after"] - probe["before"]
    assert growth < GROWTH_LIMIT, f"peak RSS grew by {growth / 2**20:.0f} MiB while reading a {HUGE >> 20} MiB line"
    return probe, expected


def test_200mb_single_line_gz_is_quarantined_under_a_memory_cap(tmp_path):
    probe, expected = _probe(tmp_path, PROBE)
    assert probe["lines"] == len(expected)

    rows = [r for u in probe["chunks"] for r in pq.read_table(u[len("file://"):]).to_pylist()]
    assert [r["line_no"] for r in rows] == sorted(expected)
    assert max(len(r["raw"]) for r in rows) < 10_000  # the chunk holds a marker and a prefix, not the line
    parsed = {r["line_no"]: parse_line("goodreads", r["raw"], r["line_no"]) for r in rows}
    assert {n: p["reason"] for n, p in parsed.items()} == expected
    bad = parsed[5]
    assert bad["raw"].startswith('{"book_id": "99", "title": "aaa') and len(bad["raw"]) <= 2000
    assert str(HUGE + len(b'{"book_id": "99", "title": "') + 2) in bad["detail"]
    assert [parsed[n]["node_id"] for n in (1, 2, 3, 6, 7, 8)] == [f"goodreads:{i}" for i in (1, 2, 3, 6, 7, 8)]


def test_lines_at_the_byte_bound(tmp_path, file_storage):
    """Exactly MAX_LINE_BYTES is kept, one byte more is quarantined; CRLF endings do not count."""
    from g2i_core.ingest.chunking import rechunk

    fit = b'{"book_id": "1", "title": "' + b"x" * (MAX_LINE_BYTES - 29) + b'"}'
    over = b'{"book_id": "2", "title": "' + b"y" * MAX_LINE_BYTES + b'"}'
    dump = tmp_path / "edge.jsonl"
    dump.write_bytes(fit + b"\r\n" + over + b"\r\n" + _good(3) + b"\n" + b"z" * (3 * MAX_LINE_BYTES))
    result = rechunk(file_storage, f"file://{dump}", file_storage.uri("_staging", "e"), chunk_lines=2)
    rows = [r for u in result.chunk_uris for r in pq.read_table(u[len("file://"):]).to_pylist()]
    reasons = [parse_line("goodreads", r["raw"], r["line_no"])["reason"] for r in rows]
    assert len(fit) == MAX_LINE_BYTES and [r["line_no"] for r in rows] == [1, 2, 3, 4]
    assert len(rows[0]["raw"]) == MAX_LINE_BYTES and len(rows[1]["raw"]) < 10_000  # marker + prefix only
    assert reasons == [None, "line_too_long", None, "line_too_long"]  # the last line has no newline at all


def test_chunks_are_capped_by_bytes(tmp_path, file_storage):
    from g2i_core.ingest.chunking import rechunk

    dump = tmp_path / "many.jsonl"
    line = json.dumps({"book_id": "1", "title": "t" * 1000}).encode()
    dump.write_bytes(b"\n".join([line] * 100) + b"\n")
    result = rechunk(file_storage, f"file://{dump}", file_storage.uri("_staging", "b"), chunk_lines=1000,
                     chunk_bytes=10 * len(line))
    sizes = [pq.read_metadata(u[len("file://"):]).num_rows for u in result.chunk_uris]
    assert sizes == [10] * 10 and result.lines_in == 100


LOCAL_PROBE = textwrap.dedent("""
    import json, resource, sys
    from g2i_core.ingest.job import IngestConfig
    from g2i_core.ingest.local import parse_dump
    from g2i_core.storage import Storage

    root, small, big = sys.argv[1:4]
    storage = Storage(root)
    parse_dump(storage, IngestConfig(source="goodreads", raw_uri=small).resolved())  # imports, paid up front
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    nodes, quarantine, lines = parse_dump(storage, IngestConfig(source="goodreads", raw_uri=big).resolved())
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    rows = nodes.to_pylist() + quarantine.to_pylist()
    print(json.dumps({"before": before, "after": after, "lines": lines[big],
                      "rows": [{k: r[k] for k in ("line_no", "node_id", "reason", "detail", "raw")} for r in rows]}))
""")


def test_200mb_single_line_gz_under_a_memory_cap_with_the_local_engine(tmp_path):
    """The local engine's block reader keeps the same bound: the line is skipped in pieces, never held whole."""
    probe, expected = _probe(tmp_path, LOCAL_PROBE)
    rows = {r["line_no"]: r for r in probe["rows"]}
    assert probe["lines"] == len(expected) and {n: r["reason"] for n, r in rows.items()} == expected
    bad = rows[5]
    assert bad["raw"].startswith('{"book_id": "99", "title": "aaa') and len(bad["raw"]) <= 2000
    assert str(HUGE + len(b'{"book_id": "99", "title": "') + 2) in bad["detail"]


def test_lines_at_the_byte_bound_with_the_local_engine(tmp_path, file_storage):
    from g2i_core.ingest.job import IngestConfig
    from g2i_core.ingest.local import parse_dump

    fit = b'{"book_id": "1", "title": "' + b"x" * (MAX_LINE_BYTES - 29) + b'"}'
    over = b'{"book_id": "2", "title": "' + b"y" * MAX_LINE_BYTES + b'"}'
    dump = tmp_path / "edge.jsonl"
    dump.write_bytes(fit + b"\r\n" + over + b"\r\n" + _good(3) + b"\n" + b"z" * (3 * MAX_LINE_BYTES))
    nodes, quarantine, lines = parse_dump(file_storage, IngestConfig(source="goodreads",
                                                                     raw_uri=f"file://{dump}").resolved())
    reasons = {r["line_no"]: r["reason"] for r in nodes.to_pylist() + quarantine.to_pylist()}
    assert reasons == {1: None, 2: "line_too_long", 3: None, 4: "line_too_long"}
    assert max(len(r["raw"]) for r in quarantine.to_pylist()) <= 2000
