"""g2i ingest on one machine: the same tables, report and checks as the Spark job (``ingest.job``), computed in
this process with pyarrow (``arrow_parse``) on a thread per core.

Why: a Spark job has fixed costs (JVM start, a re-chunk pass through Parquet, Python workers, shuffles for the
accounting and dedupe) that dominate at the sizes one machine handles, and Goodreads lines parse with pyarrow's
JSON reader and Arrow kernels at the speed of the reader itself. ``engine_for`` picks this engine when the master
is not a cluster and ``local_ingest_memory_bytes`` fits the memory budget; a cluster keeps the Spark job.
bench/bench_ingest.py compares both with gunzip + ``pyarrow.json.read_json`` + a Parquet write.

The dump is streamed once: blocks of whole lines (``iter_blocks``, at most ``BLOCK_BYTES`` plus one line; a line
over ``MAX_LINE_BYTES`` that does not fit is skipped to its newline, never held whole, and becomes a
``line_too_long`` row) are parsed by a pool of threads (the kernels and the reader release the GIL) while the
next block is decompressed. What follows is ``job._publish`` on Arrow tables: the accounting identity, the
quarantine threshold, dedupe (most complete copy, ties to the later line), delta merge, ``node_changes``, and
one commit of every table.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import IO, TYPE_CHECKING, Iterator, NamedTuple

import numpy as np

from g2i_core.ingest.parsers import MAX_LINE_BYTES, RAW_KEEP_CHARS, oversize_marker

if TYPE_CHECKING:
    import pyarrow as pa

    from g2i_core.ingest.job import IngestConfig, IngestReport
    from g2i_core.storage import Attempt, Storage

log = logging.getLogger(__name__)
BLOCK_BYTES = 16 << 20  # decompressed bytes per parse task (whole lines: plus the rest of the last one)
SKIP_BYTES = 1 << 20  # the rest of an over-long line is read and dropped in pieces of this size
LOCAL_SOURCES = ("goodreads", "amazon2014", "amazon2018")  # Amazon lines go through parse_line, in threads
INT96 = {"use_deprecated_int96_timestamps": True}  # ingested_at as Spark writes it, for Spark readers


# ---- choosing the engine -------------------------------------------------------------------------------------------
# The peak model, fitted to measured peaks (bench/bench_ingest_memory.py, bench_scale's delta; docs/ingest.md):
FIXED_BYTES = 512 << 20  # interpreter, pyarrow and numpy, the parse threads' blocks in flight
KEPT_FACTOR = 1.5  # per byte of parsed rows held before dedupe: those rows, the nodes and edges cut from them
BASE_FACTOR = 3.0  # per byte of the published base (uncompressed): read, merged with the delta, written
SAMPLE_STORED_BYTES = 1 << 20  # the head of a dump that is parsed to measure what its records keep (~0.15 s)


class DumpSample(NamedTuple):
    """What the head of a dump file parses to, per stored (compressed) byte."""
    stored: int  # stored bytes read
    text: int  # their text, decompressed
    kept: int  # Arrow bytes of the parsed rows of the whole lines in that text

    @property
    def kept_per_stored_byte(self) -> float:
        return self.kept / self.stored if self.stored else 0.0


def sample_dump(storage: "Storage", uri: str, source: str, stored_bytes: int = SAMPLE_STORED_BYTES
                ) -> tuple[int, "DumpSample | None"]:
    """(the file's stored size, what its first ``stored_bytes`` parse to). The sample is None when the head
    holds no whole line (one line longer than the head): there is nothing to measure then."""
    import zlib

    from g2i_core.ingest.arrow_parse import parse_block

    source_file = storage.ranged_source(uri)
    with (open(source_file, "rb") if isinstance(source_file, str) else source_file) as fh:
        size = fh.seek(0, os.SEEK_END)
        fh.seek(0)
        head = fh.read(min(stored_bytes, size))
    text = head
    if head[:2] == b"\x1f\x8b":
        parts, rest = [], head
        while rest[:2] == b"\x1f\x8b":  # gzip members one after another (pigz, concatenated dumps)
            inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
            try:
                parts.append(inflater.decompress(rest))
            except zlib.error:  # a corrupt head: the engine that runs reports it; the estimate has what came before
                break
            rest = inflater.unused_data
        text = b"".join(parts)
    whole = text[:text.rfind(b"\n") + 1]
    if not whole:
        return size, None
    parsed = parse_block(source, uri, whole)
    kept = parsed.nodes.nbytes + parsed.quarantine.nbytes
    # The stored bytes behind the whole lines: the head's share of them (the cut line's bytes are not counted).
    return size, DumpSample(round(len(head) * len(whole) / len(text)), len(whole), kept)


def kept_bytes(stored_bytes: int, sample: "DumpSample | None") -> int:
    """The parsed rows a dump file of ``stored_bytes`` keeps, from what its sampled head keeps per stored byte;
    without a sample (no whole line in the head), as large as its text would be if gzip expanded it 8x."""
    return int(sample.kept_per_stored_byte * stored_bytes) if sample is not None else 8 * stored_bytes


def local_ingest_memory_bytes(kept: int, base_bytes: int = 0) -> int:
    """Peak memory of the local engine: ``FIXED_BYTES``, plus ``KEPT_FACTOR`` times the parsed rows of the dump
    (``kept_bytes``), plus ``BASE_FACTOR`` times the published base version it reads (uncompressed Parquet size).
    The measured peaks this was fitted to are in docs/ingest.md."""
    return int(FIXED_BYTES + KEPT_FACTOR * kept + BASE_FACTOR * base_bytes)


def engine_for(storage: "Storage", cfg: "IngestConfig", *, spark_master: str, memory_budget: int) -> str:
    """``auto``: local unless the source has no local parse (``attributes``), the Spark JSON reader was asked
    for (``native_parse``), the master is a cluster, or the dump does not fit ``memory_budget`` bytes."""
    from g2i_core.spark import spark_master_is_cluster

    if cfg.source not in LOCAL_SOURCES or cfg.native_parse or spark_master_is_cluster(spark_master):
        return "spark"
    need = local_ingest_memory_estimate(storage, cfg)
    log.info("ingest auto: the local engine needs about %.1f GiB of a %.1f GiB budget", need / 2**30,
             memory_budget / 2**30)
    return "local" if need <= memory_budget else "spark"


def local_ingest_memory_estimate(storage: "Storage", cfg: "IngestConfig") -> int:
    """``local_ingest_memory_bytes`` of ``cfg``'s dump and its published base. The head of the dump's first file
    is sampled, and what it keeps per stored byte is taken for every file: the files of one dump are parts of
    one export."""
    from g2i_core.ingest.chunking import list_raw_files

    first, *others = list_raw_files(storage, cfg.raw_uri)
    first_size, sample = sample_dump(storage, first, cfg.source)
    kept = kept_bytes(first_size + sum(storage.size(uri) for uri in others), sample)
    base = 0
    if storage.is_published("nodes"):  # read for node_changes, and in delta mode merged with its edges
        from g2i_core.graph.local import uncompressed_bytes

        commit = storage.read_commit("nodes")
        tables = ("nodes", "edges") if cfg.mode == "delta" else ("nodes",)
        base = sum(uncompressed_bytes(storage, commit[t]) for t in tables if t in commit)
    return local_ingest_memory_bytes(kept, base)


# ---- reading: blocks of whole lines -----------------------------------------------------------------------------
class Block(NamedTuple):
    data: bytes | bytearray  # whole lines (a file's last one may lack its newline)
    marker: bool = False  # data is one over-long line's parsers.oversize_marker


def iter_blocks(reader: IO[bytes], block_bytes: int = BLOCK_BYTES,
                max_line_bytes: int = MAX_LINE_BYTES) -> Iterator[Block]:
    """Blocks of whole lines, in order. Memory is bounded by ``block_bytes`` plus one line: a block's last line
    is read to its newline, unless it is longer than ``max_line_bytes`` (+ 2 for "\\r\\n"). Such a line is
    read in ``SKIP_BYTES`` pieces and dropped, never held whole, and comes back as a marker block (its size and
    first bytes): the same rule and the same marker as ``chunking.iter_lines``."""
    limit = max_line_bytes + 2
    while True:
        buf = bytearray(block_bytes)
        got = reader.readinto(buf)
        if not got:
            return
        del buf[got:]
        if buf.endswith(b"\n"):
            yield Block(buf)
            continue
        start = buf.rfind(b"\n") + 1  # the last line: complete it, up to the bound
        partial = got - start
        if partial < limit:
            buf += reader.readline(limit - partial)
            partial = len(buf) - start
        if buf.endswith(b"\n") or partial < limit:  # whole, or the file's last line (no newline at the end)
            yield Block(buf)
            continue
        head, tail = bytes(buf[start:start + min(RAW_KEEP_CHARS, limit)]), bytes(buf[-2:])  # iter_lines' head
        del buf[start:]
        if buf:
            yield Block(buf)
        yield Block(_skip_line(reader, head, partial, tail, max_line_bytes), marker=True)


def _skip_line(reader: IO[bytes], head: bytes, size: int, tail: bytes, max_line_bytes: int) -> bytes:
    """The marker of an over-long line whose first ``size`` bytes were read: the rest is read and dropped."""
    while not tail.endswith(b"\n"):
        piece = reader.readline(SKIP_BYTES)
        if not piece:
            break
        size, tail = size + len(piece), (tail + piece[-2:])[-2:]
    size -= 2 if tail == b"\r\n" else 1 if tail.endswith(b"\n") else 0
    log.warning("a line is %d bytes, over the %d-byte bound: skipped (quarantined as line_too_long)", size,
                max_line_bytes)
    return oversize_marker(size, head)


# ---- parsing the dump ----------------------------------------------------------------------------------------------
def parse_stream(source: str, uri: str, reader: IO[bytes], pool: ThreadPoolExecutor, *, block_bytes: int = BLOCK_BYTES,
                 max_line_bytes: int = MAX_LINE_BYTES) -> tuple[list["pa.Table"], list["pa.Table"], int]:
    """(node rows, quarantine rows, records) of one dump file; blocks are parsed on ``pool`` while the next ones
    are read, at most two blocks per worker ahead."""
    import pyarrow.compute as pc

    from g2i_core.ingest.arrow_parse import parse_block, parse_marker

    nodes, quarantine, pending = [], [], deque()
    records = lines = 0
    started = time.monotonic()

    def parse(block: Block):
        if block.marker:
            return parse_marker(source, uri, block.data)
        return parse_block(source, uri, block.data)

    def renumbered(table: "pa.Table") -> "pa.Table":  # blocks number their lines from 1
        if not lines or not table.num_rows:
            return table
        return table.set_column(table.schema.get_field_index("line_no"), "line_no", pc.add(table["line_no"], lines))

    def collect() -> None:
        nonlocal records, lines
        done = pending.popleft().result()
        nodes.append(renumbered(done.nodes))
        quarantine.append(renumbered(done.quarantine))
        records, lines = records + done.records, lines + done.lines

    for block in iter_blocks(reader, block_bytes, max_line_bytes):
        pending.append(pool.submit(parse, block))
        del block
        while len(pending) > 2 * pool._max_workers:
            collect()
            log.info("ingest %s: %d records so far (%.0f records/s)", uri.rsplit("/", 1)[-1], records,
                     records / max(time.monotonic() - started, 1e-6))
    while pending:
        collect()
    return nodes, quarantine, records


def parse_dump(storage: "Storage", cfg: "IngestConfig", workers: int | None = None
               ) -> tuple["pa.Table", "pa.Table", dict[str, int]]:
    """(parsed rows that are nodes, parsed rows with a quarantine reason, records per dump file)."""
    import pyarrow as pa

    from g2i_core.ingest.chunking import list_raw_files, open_raw
    from g2i_core.ingest.job import _arrow_parsed_schema

    nodes, quarantine, lines_by_source = [], [], {}
    # one thread more than cores: a thread waiting for the GIL (hashing, imports) leaves a core to the others
    with ThreadPoolExecutor(max_workers=workers or (os.cpu_count() or 1) + 1) as pool:
        for uri in list_raw_files(storage, cfg.raw_uri):
            with open_raw(storage, uri) as reader:
                file_nodes, file_quarantine, lines_by_source[uri] = parse_stream(cfg.source, uri, reader, pool)
            nodes += file_nodes
            quarantine += file_quarantine
    schema = _arrow_parsed_schema()
    return (pa.concat_tables(nodes) if nodes else schema.empty_table(),
            pa.concat_tables(quarantine) if quarantine else schema.empty_table(), lines_by_source)


# ---- the tables ----------------------------------------------------------------------------------------------------
def node_codes(ok: "pa.Table") -> tuple[np.ndarray, int]:
    """(a code per row, equal for equal node ids; how many distinct ids)."""
    import pyarrow.compute as pc

    if not ok.num_rows:
        return np.zeros(0, np.int64), 0
    encoded = pc.dictionary_encode(ok["node_id"].combine_chunks())
    return encoded.indices.to_numpy(zero_copy_only=False), len(encoded.dictionary)


def winner_mask(ok: "pa.Table", codes: np.ndarray) -> np.ndarray:
    """Which rows win, one per node_id: the most complete copy, ties going to the later line (as
    ``job.resolve_duplicates``). Only the rows of repeated ids are sorted."""
    import pyarrow as pa
    import pyarrow.compute as pc

    repeated = np.bincount(codes)[codes] > 1 if len(codes) else np.zeros(0, bool)
    if not repeated.any():
        return ~repeated
    at = np.flatnonzero(repeated)
    dupes = ok.select(["completeness", "source_uri", "line_no"]).take(pa.array(at)).append_column(
        "code", pa.array(codes[at])).append_column("at", pa.array(at))
    dupes = dupes.take(pc.sort_indices(dupes, sort_keys=[("code", "ascending"), ("completeness", "descending"),
                                                         ("source_uri", "descending"), ("line_no", "descending")]))
    code = dupes["code"].to_numpy()
    first = np.ones(len(code), bool)
    first[1:] = code[1:] != code[:-1]
    keep = ~repeated
    keep[dupes["at"].to_numpy()[first]] = True
    return keep


NODE_COLUMNS = ("node_id", "title", "text", "image_url", "has_real_image", "attrs", "content_hash")


def winner_tables(batches: list["pa.RecordBatch"], keep: np.ndarray, dataset: str, logical_date: str,
                  workers: int) -> tuple["pa.Table", "pa.Table"]:
    """(nodes, edges) of the winning rows, one parse block at a time on ``workers`` threads. ``batches`` (the
    node rows: NODE_COLUMNS and edges, in the order of ``keep``) are emptied as they are done, so a parsed block
    is freed once its rows are copied out: the peak holds the parsed rows once, not twice."""
    import pyarrow as pa
    import pyarrow.compute as pc

    starts = np.concatenate([[0], np.cumsum([len(b) for b in batches])])
    everyone = bool(keep.all())

    def one(i: int) -> tuple["pa.RecordBatch", "pa.Table"]:
        batch, mask = batches[i], keep[starts[i]:starts[i + 1]]
        batches[i] = None
        lists = batch.column("edges")
        parent = pc.list_parent_indices(lists).to_numpy(zero_copy_only=False)
        flat = pc.list_flatten(lists)
        if not everyone:
            sel = mask[parent]
            flat, parent = flat.filter(pa.array(sel)), parent[sel]
        edges = pa.table({"src": batch.column("node_id").take(pa.array(parent)),
                          "dst": pc.struct_field(flat, "dst"), "relation": pc.struct_field(flat, "relation"),
                          "weight": pa.array(np.ones(len(flat)), pa.float64())})
        rows = batch.select(list(NODE_COLUMNS))
        return (rows if everyone else rows.filter(pa.array(mask))), edges

    with ThreadPoolExecutor(max_workers=workers) as pool:
        parts = list(pool.map(one, range(len(batches))))
    if not parts:
        from g2i_core.ingest.job import _arrow_parsed_schema

        empty = _arrow_parsed_schema().empty_table()
        no_edges = pa.schema([("src", pa.string()), ("dst", pa.string()), ("relation", pa.string()),
                              ("weight", pa.float64())]).empty_table()
        return nodes_table(empty.select(list(NODE_COLUMNS)), dataset, logical_date), no_edges
    rows = pa.Table.from_batches([p[0] for p in parts])
    return nodes_table(rows, dataset, logical_date), pa.concat_tables([p[1] for p in parts])


def nodes_table(winners: "pa.Table", dataset: str, logical_date: str) -> "pa.Table":
    import pyarrow as pa

    from g2i_core.ingest.arrow_parse import constant

    midnight = np.datetime64(dt.datetime.fromisoformat(logical_date), "ns")  # naive UTC, as INT96 reads back
    n = winners.num_rows
    return pa.table({
        "node_id": winners["node_id"], "dataset": constant(dataset, n),
        **{c: winners[c] for c in ("title", "text", "image_url", "has_real_image", "attrs", "content_hash")},
        "ingested_at": pa.array(np.full(n, midnight), pa.timestamp("ns")),
    })


def quarantine_table(bad: "pa.Table", run_id: str) -> "pa.Table":
    import pyarrow as pa

    columns = {c: bad[c] for c in ("source_uri", "line_no", "reason", "detail", "raw")}
    return pa.table({**columns, "run_id": pa.array(np.full(bad.num_rows, run_id, object), pa.string())})


def merge_delta(prev_nodes: "pa.Table", prev_edges: "pa.Table", nodes: "pa.Table", edges: "pa.Table"
                ) -> tuple["pa.Table", "pa.Table", int]:
    """(nodes, edges, carried rows): a node in the delta replaces its row and all its out-edges."""
    import pyarrow as pa
    import pyarrow.compute as pc

    touched = nodes["node_id"].combine_chunks()
    kept = prev_nodes.filter(pc.invert(pc.is_in(prev_nodes["node_id"], value_set=touched)))
    kept_edges = prev_edges.filter(pc.invert(pc.is_in(prev_edges["src"], value_set=touched)))
    merged = pa.concat_tables([kept, nodes.cast(kept.schema)])
    return merged, pa.concat_tables([kept_edges, edges.cast(kept_edges.schema)]), kept.num_rows


def node_changes_table(prev_nodes: "pa.Table", nodes: "pa.Table", run_id: str) -> "pa.Table":
    """(node_id, change in new|updated|removed, run_id), as ``job.node_changes_frame``."""
    import pyarrow as pa
    import pyarrow.compute as pc

    old = pa.table({"node_id": prev_nodes["node_id"], "old": prev_nodes["content_hash"]})
    new = pa.table({"node_id": nodes["node_id"], "new": nodes["content_hash"]})
    both = old.join(new, "node_id", join_type="full outer", use_threads=True)
    change = pc.case_when(pc.make_struct(pc.is_null(both["old"]), pc.is_null(both["new"]),
                                         pc.not_equal(both["old"], both["new"])), "new", "removed", "updated")
    changed = both.filter(pc.is_valid(change))
    change = change.filter(pc.is_valid(change))
    return pa.table({"node_id": changed["node_id"], "change": change,
                     "run_id": pa.array(np.full(changed.num_rows, run_id, object), pa.string())})


def sorted_counts(values) -> dict[str, int]:
    from g2i_core.graph.local import counts_by

    return dict(sorted(counts_by(values).items()))


# ---- the job -------------------------------------------------------------------------------------------------------
def _use_arena_allocator() -> None:
    """jemalloc (else the system allocator) for Arrow: mimalloc, pyarrow's default, returned and re-faulted
    pages on every block, 1.2 s of system time of 3.3 s at 200k records (0.6 s with jemalloc)."""
    import pyarrow as pa

    try:
        pa.set_memory_pool(pa.jemalloc_memory_pool())
    except NotImplementedError:  # a pyarrow built without jemalloc
        pa.set_memory_pool(pa.system_memory_pool())


def run_ingest_local(storage: "Storage", config: "IngestConfig") -> "IngestReport":
    """Parse, dedupe and publish one dump under ``storage`` (the output root), in this process."""
    from g2i_core.ingest.job import Outcomes, _base_run, account, commit_ingest

    cfg = config.resolved()
    if cfg.source not in LOCAL_SOURCES:
        raise ValueError(f"--engine local has no reader for --source {cfg.source}; use --engine spark")
    _use_arena_allocator()
    seconds: dict[str, float] = {}
    started = time.monotonic()
    # 1. Parse every line; 2. account for every line and refuse a broken dump before anything is published.
    ok, bad, lines_by_source = parse_dump(storage, cfg)
    seconds["read_and_parse"] = round(time.monotonic() - started, 3)
    started = time.monotonic()
    codes, distinct = node_codes(ok)
    outcomes = Outcomes(ok.num_rows + bad.num_rows, sorted_counts(bad["reason"]), ok.num_rows,
                        distinct)
    report = account(cfg, outcomes, lines_by_source)
    report.engine = "local"
    # 3. Resolve duplicates; build the tables (merged into the previous version in delta mode).
    keep = winner_mask(ok, codes)
    batches = ok.select([*NODE_COLUMNS, "edges"]).to_batches()
    del ok, codes  # the batches are the last reference: winner_tables frees each parsed block when it is done
    nodes, edges = winner_tables(batches, keep, cfg.source, cfg.logical_date, os.cpu_count() or 1)
    base_run = _base_run(storage, cfg.run_id)
    base = storage.read_commit("nodes", base_run) if base_run else None
    prev_nodes = storage.read_table("nodes", manifest=base["nodes"]).replace_schema_metadata(None) if base else None
    carried = 0
    if cfg.mode == "delta":
        if prev_nodes is None:
            raise FileNotFoundError(f"--mode delta needs a published nodes table under {storage.root} to "
                                    "apply the delta to; run a full ingest first")
        prev_edges = storage.read_table("edges", manifest=base["edges"]).replace_schema_metadata(None)
        nodes, edges, carried = merge_delta(prev_nodes, prev_edges, nodes, edges)
        del prev_edges
    # 4. Every table into a fresh attempt of run=<run_id>, then one commit (nodes, the primary, last).
    tables = {"quarantine": quarantine_table(bad, cfg.run_id)}
    if prev_nodes is not None:
        tables["node_changes"] = node_changes_table(prev_nodes, nodes, cfg.run_id)
        report.changes = sorted_counts(tables["node_changes"]["change"])
        del prev_nodes
    tables.update(edges=edges, nodes=nodes)
    report.edges_by_relation = sorted_counts(edges["relation"])
    with ThreadPoolExecutor(max_workers=2) as pool:  # each table's files are encoded and stored in parallel too
        futures = [pool.submit(storage.write_attempt, name, table, cfg.run_id, **(INT96 if name == "nodes" else {}))
                   for name, table in tables.items()]
        attempts: list["Attempt"] = [f.result() for f in futures]
    commit_ingest(storage, cfg, report, attempts, base_run=base_run, carried=carried, seconds=seconds,
                  started=started)
    log.info("ingest %s run=%s (local): lines_in=%d nodes_out=%d duplicates=%d quarantined=%d reasons=%s edges=%s",
             cfg.source, cfg.run_id, report.lines_in, report.nodes_out, report.duplicates, report.quarantined,
             report.quarantine_reasons, report.edges_by_relation)
    return report
