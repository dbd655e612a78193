"""The local engine's Arrow parse gives, line for line, what ``parsers.parse_line`` gives (content hashes, attrs
JSON, quarantine reasons and line numbers included), and its block reader cuts a dump into the same lines as
``chunking.iter_lines``."""

from __future__ import annotations

import gzip
import io
import json
import random
import sys

import numpy as np
import pytest

from g2i_core.ingest import arrow_parse, local
from g2i_core.ingest.arrow_parse import parse_block
from g2i_core.ingest.chunking import iter_lines
from g2i_core.ingest.parsers import parse_line
from tests.faults.test_poison_records import BUILD, CASES, _line
from tests.ingest_cases import RAW_LINES, TRICKY_GOODREADS


def _parsed(source: str, lines: list[bytes], first_line_no: int = 1) -> dict[int, dict]:
    import pyarrow as pa

    block = parse_block(source, "u", b"\n".join(lines) + b"\n", first_line_no)
    rows = pa.concat_tables([block.nodes, block.quarantine]).to_pylist()
    assert block.lines == len(lines) and block.records == len(rows)
    assert all(r["reason"] is None for r in block.nodes.to_pylist())
    assert all(r["reason"] is not None for r in block.quarantine.to_pylist())
    by_line = {r["line_no"]: r for r in rows}
    assert len(by_line) == len(rows)
    return by_line


def _differences(source: str, lines: list[bytes], first_line_no: int = 1) -> dict[int, dict]:
    """{line number: {field: (Arrow parse, parse_line)}} for every field where the two disagree."""
    got = _parsed(source, lines, first_line_no)
    diffs = {}
    for n, line in enumerate(lines, first_line_no):
        body = line.rstrip(b"\r\n")
        if not body.strip():
            assert n not in got, f"blank line {n} became a row"
            continue
        want = parse_line(source, body, n)
        row = got.get(n)
        if row is None:
            diffs[n] = {"row": (None, want)}
            continue
        fields = {k: (row[k], want.get(k)) for k in row if k != "source_uri" and row[k] != want.get(k)}
        if fields:
            diffs[n] = fields
    return diffs


def test_python_space_class_is_str_isspace():
    import pyarrow as pa
    import pyarrow.compute as pc

    chars = [chr(c) for c in range(sys.maxunicode + 1) if not 0xD800 <= c <= 0xDFFF]
    matched = pc.match_substring_regex(pa.array(chars), f"^{arrow_parse.PY_SPACE}$").to_numpy(zero_copy_only=False)
    assert [c for c, m in zip(chars, matched, strict=True) if m] == [c for c in chars if c.isspace()]


def test_equal_to_parse_line_on_tricky_records():
    lines = [json.dumps(r, ensure_ascii=i % 2 == 0).encode("utf-8", "surrogatepass")
             for i, r in enumerate(TRICKY_GOODREADS)] + RAW_LINES
    lines += [
        b'{"book_id": "40", "x": ' + b"[" * 2000 + b"]" * 2000 + b"}",  # deeper than Python's decoder follows
        b'{"book_id": "41", "x": ' + b"[" * 300 + b"]" * 300 + b"}",  # deep, but both parse it
        b'\xef\xbb\xbf{"book_id": "42"}',  # a BOM: pyarrow skips it, Python does not
        b'{"book_id": "43", "title": "crlf"}\r', b'{"book_id": "44", "book\\u005fid": "45"}',
        b'{"book_id": "46", "x": NaN, "y": 1e400}', b'{"book_id": "47", "x": "\\udc00"}',
        b'{"book_id": "48", "publisher": "a\\u0000b", "title": "t\\u0007"}', b"\x0c", b"   ",
        b'{"book_id": "49", "authors": [{"author_id": "1", "author_id": "2"}]}',
        b'{"book_id": "50", "description": "x\\u0002y", "similar_books": ["50", " 51", "52"]}',
        b'{"book_id": "51", "title": "<a\\nb>c  d", "title_without_series": null, "image_url": ""}',
        b'{"book_id": "52", "popular_shelves": [{"name": "a\\"b"}, {}], "authors": [{}], "series": [null, ""]}',
    ]
    assert not _differences("goodreads", lines)
    for line in lines:  # alone too: in a block, one line's failure must not hide another's
        assert not _differences("goodreads", [line]), line[:80]


@pytest.mark.parametrize("source", sorted(BUILD))
def test_equal_to_parse_line_on_poison_records(source):
    lines = [_line(s, BUILD[s](**{fld: value})) for s, fld, value in CASES if s == source]
    lines += [_line(source, BUILD[source]())] * 3
    assert not _differences(source, lines)


def _random_text(rng: random.Random) -> object:
    pieces = ["plain", "  two  spaces ", "\t\n", "<b>bold</b>", "&amp;", "&#39;s", "&lt;x&gt;", "e\u0301",
              "\u00e9", "\u00a0", "\u2003", "\u3000", "\x85", "\u2028", '"q"', "back\\slash", "\x01", "\x1c",
              "\U0001f600", "<<", ">", "<a\nb>", "\u2126", "\ufb01", "\u1680", "\u200b", "\u2000x", ">\u0338", " "]
    roll = rng.random()
    if roll < 0.05:
        return rng.choice([None, 7, 2.5, True, ["a"], {"a": 1}, ""])
    return "".join(rng.choices(pieces, k=rng.randrange(0, 7)))


def _random_record(rng: random.Random) -> dict:
    ids = ["1", "2", "2", " 3", "", None, "x y", "\u0661", 5]
    rec = {"book_id": rng.choice(["10", "11", "12", " 13 ", "", None, 14, "id\u00a0", "12"]),
           "title": _random_text(rng), "title_without_series": _random_text(rng),
           "description": _random_text(rng), "image_url": rng.choice(
               ["https://x/nophoto/a.png", "https://x/a.png", " https://x/a.png ", "", None, ["x"], "http://a b"]),
           "similar_books": rng.choice([rng.choices(ids, k=rng.randrange(0, 8)), None, "7", [1.5]]),
           "series": rng.choices(ids, k=rng.randrange(0, 3)),
           "authors": [rng.choice([{"author_id": rng.choice(["5", None, "a\tb", 6])}, {}, {"role": "x"}, None])
                       for _ in range(rng.randrange(0, 3))],
           "popular_shelves": [{"name": _random_text(rng), "count": "1"} for _ in range(rng.randrange(0, 14))],
           "is_ebook": rng.choice(["true", "false", True, None, 1]),
           "unread": rng.choice([[1, {"a": [2]}], "\u00ff", 1e300, None])}
    for name in arrow_parse.TEXT_ATTRS:
        if rng.random() < 0.6:
            rec[name] = _random_text(rng)
    return rec


def _mutate(rng: random.Random, line: bytes) -> bytes:
    roll = rng.random()
    if roll < 0.03:
        return line[: rng.randrange(len(line))]  # truncated
    if roll < 0.05:
        return line + rng.choice([b"{}", b" x", b",", b"\r", b"\r\r", b" \t"])
    if roll < 0.07:
        return rng.choice([b"", b" ", b"[1]", b"\xff" + line, b"null"])
    if roll < 0.09:
        return line.replace(b'"book_id"', b'"book_id": "99", "book_id"', 1)
    return line


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_equal_to_parse_line_on_random_records(seed):
    rng = random.Random(seed)
    lines = [_mutate(rng, json.dumps(_random_record(rng), ensure_ascii=rng.random() < 0.3).encode())
             for _ in range(1500)]
    diffs = _differences("goodreads", lines, first_line_no=7)
    assert not diffs, {n: d for n, d in list(diffs.items())[:3]}


def test_equal_to_parse_line_on_a_sample_dump(sample_dir):
    from g2i_core.sample.generator import DUMP_FILES

    for source in ("goodreads", "amazon2014", "amazon2018"):
        with gzip.open(sample_dir / "raw" / DUMP_FILES[source], "rb") as fh:
            lines = [line.rstrip(b"\n") for line in fh]
        assert not _differences(source, lines)
        if source == "goodreads":
            assert sum(r["reason"] is None for r in _parsed(source, lines).values()) > 250


def test_reader_errors_are_found_by_row_in_windows(monkeypatch):
    """After a failed read the block is read in windows; each bad line is found from the error's row."""
    monkeypatch.setattr(arrow_parse, "WINDOW_LINES", 8)
    good = [json.dumps({"book_id": str(i), "title": f"t{i}"}).encode() for i in range(40)]
    lines = list(good)
    for at, bad in ((3, b'{"book_id": 5}'), (9, b'{"book_id": "9"'), (17, b'{"book_id": "1"}{"book_id": "2"}'),
                    (18, b'{"book_id": "18", "title": ["x"]}'), (31, b'{"book_id": "31", "x": tru}')):
        lines[at] = bad
    assert not _differences("goodreads", lines)
    reasons = {n: r["reason"] for n, r in _parsed("goodreads", lines).items() if r["reason"]}
    assert reasons == {10: "parse_error", 18: "parse_error", 19: "bad_field", 32: "parse_error"}


# ---- the block reader --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(6))
def test_blocks_give_the_rows_of_iter_lines(seed, monkeypatch):
    """Whatever the block size, the blocks' rows are parse_line's rows of the lines chunking.iter_lines reads:
    the same line numbers, blank lines skipped, the same markers for over-long lines (a 64-byte bound here)."""
    from concurrent.futures import ThreadPoolExecutor

    import pyarrow as pa

    import g2i_core.ingest.chunking as chunking
    import g2i_core.ingest.parsers as parsers

    max_line = 64
    for module in (parsers, arrow_parse):
        monkeypatch.setattr(module, "MAX_LINE_BYTES", max_line)
    monkeypatch.setattr(chunking, "SKIP_BLOCK_BYTES", 16)
    monkeypatch.setattr(local, "SKIP_BYTES", 16)
    rng = random.Random(seed)
    record = json.dumps({"book_id": "1", "title": "t"}).encode()
    sizes = [0, 1, 5, 40, 63, 64, 65, 66, 67, 100, 500]
    data = b"".join(rng.choice([record, bytes([rng.choice(b"ab{}\r ")]) * rng.choice(sizes)])
                    + rng.choice([b"\n", b"\r\n", b"\n\n", b"\r\r\n"]) for _ in range(300))
    if seed % 2:
        data += b"tail-without-newline" * rng.choice([1, 3, 4, 10])
    want = {n: parse_line("goodreads", line, n) for n, line in
            iter_lines(io.BufferedReader(io.BytesIO(data)), max_line)}
    with ThreadPoolExecutor(2) as pool:
        for block_bytes in (7, 64, 200, 4096):
            nodes, quarantine, records = local.parse_stream(
                "goodreads", "u", io.BufferedReader(io.BytesIO(data)), pool, block_bytes=block_bytes,
                max_line_bytes=max_line)
            rows = pa.concat_tables(nodes + quarantine).to_pylist()
            got = {r["line_no"]: {k: v for k, v in r.items() if k != "source_uri"} for r in rows}
            assert records == len(rows) == len(want)
            assert got == {n: {k: w.get(k) for k in got.get(n, w)} for n, w in want.items()}
    assert any(r["reason"] == "line_too_long" for r in want.values())


def test_engine_choice(file_storage, tmp_path):
    from g2i_core.ingest.job import IngestConfig

    dump = tmp_path / "d.json.gz"
    with gzip.open(dump, "wb") as fh:
        fh.write(b'{"book_id": "1"}\n' * 1000)
    cfg = IngestConfig(source="goodreads", raw_uri=f"file://{dump}").resolved()
    need = local.local_ingest_memory_bytes(local.kept_bytes(*local.sample_dump(file_storage, f"file://{dump}",
                                                                               "goodreads")))
    assert need == local.local_ingest_memory_estimate(file_storage, cfg)
    assert local.engine_for(file_storage, cfg, spark_master="local[2]", memory_budget=need) == "local"
    assert local.engine_for(file_storage, cfg, spark_master="local[2]", memory_budget=need - 1) == "spark"
    assert local.engine_for(file_storage, cfg, spark_master="spark://h:7077", memory_budget=1 << 40) == "spark"
    native = IngestConfig(source="goodreads", raw_uri=f"file://{dump}", native_parse=True).resolved()
    assert local.engine_for(file_storage, native, spark_master="local[2]", memory_budget=1 << 40) == "spark"
    items = IngestConfig(source="attributes", raw_uri=f"file://{dump}", link_on=("a",)).resolved()
    assert local.engine_for(file_storage, items, spark_master="local", memory_budget=1 << 40) == "spark"
    with pytest.raises(ValueError, match="--engine local"):
        IngestConfig(source="attributes", raw_uri="file:///x.csv", link_on=("a",), engine="local").resolved()
    with pytest.raises(ValueError, match="engine must be one of"):
        IngestConfig(source="goodreads", raw_uri="file:///x.json", engine="gpu").resolved()


def test_winner_is_the_most_complete_copy_then_the_later_line():
    import pyarrow as pa

    ok = pa.table({"node_id": ["a", "b", "a", "c", "a", "b"], "completeness": [3, 1, 5, 2, 5, 1],
                   "source_uri": ["u"] * 6, "line_no": [1, 2, 3, 4, 5, 6]})
    codes, distinct = local.node_codes(ok)
    assert distinct == 3
    assert np.flatnonzero(local.winner_mask(ok, codes)).tolist() == [3, 4, 5]


def _numbered_dump(sample_dir, copies: int) -> bytes:
    """The sample Goodreads dump's lines, ``copies`` times over with distinct book ids (text only)."""
    from g2i_core.sample.generator import DUMP_FILES

    records = []
    with gzip.open(sample_dir / "raw" / DUMP_FILES["goodreads"], "rb") as fh:
        for line in fh:
            try:
                records.append(json.loads(line))
            except ValueError:  # the sample's malformed lines
                continue
    out = io.BytesIO()
    for copy in range(copies):
        for record in records:
            if isinstance(record.get("book_id"), str):
                record = {**record, "book_id": f"{record['book_id']}-{copy}"}
            out.write(json.dumps(record).encode() + b"\n")
    return out.getvalue()


def test_sampled_head_predicts_what_the_whole_dump_keeps(file_storage, tmp_path, sample_dir):
    """The memory estimate of ``auto``: what a 64 KiB head keeps per stored byte, times the file's size, is
    within 15% of what parsing the whole file keeps; a dump of several gzip members is read across them."""
    text = _numbered_dump(sample_dir, copies=30)
    whole = parse_block("goodreads", "x", text)
    truth = whole.nodes.nbytes + whole.quarantine.nbytes
    one = tmp_path / "one.json.gz"
    one.write_bytes(gzip.compress(text))
    cut = text.index(b"\n", 20_000) + 1  # a small first member: the 64 KiB head reaches into the second
    two = tmp_path / "two.json.gz"
    two.write_bytes(gzip.compress(text[:cut]) + gzip.compress(text[cut:]))
    plain = tmp_path / "plain.json"
    plain.write_bytes(text)
    for path in (one, two, plain):
        size, sample = local.sample_dump(file_storage, f"file://{path}", "goodreads", stored_bytes=64 << 10)
        assert size == path.stat().st_size and sample is not None and sample.stored <= 64 << 10
        assert sample.text > (cut if path is two else 0)
        assert abs(local.kept_bytes(size, sample) / truth - 1) < 0.15, path.name


def test_a_head_without_a_whole_line_falls_back_to_the_text_bound(file_storage, tmp_path):
    dump = tmp_path / "long.json.gz"
    dump.write_bytes(gzip.compress(b'{"book_id": "1", "description": "' + b"x" * (300 << 10) + b'"}\n'))
    size, sample = local.sample_dump(file_storage, f"file://{dump}", "goodreads", stored_bytes=64)
    assert sample is None and local.kept_bytes(size, sample) == 8 * size


def test_a_corrupt_gzip_head_gives_no_sample_instead_of_an_error(file_storage, tmp_path):
    dump = tmp_path / "corrupt.json.gz"
    corrupt = gzip.compress(b'{"book_id": "1"}\n')[:10] + bytes(range(256)) * 8  # a gzip header, then noise
    dump.write_bytes(corrupt)
    size, sample = local.sample_dump(file_storage, f"file://{dump}", "goodreads")
    assert size == len(corrupt) and sample is None
