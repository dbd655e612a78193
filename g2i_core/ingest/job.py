"""Spark ingest: raw dump -> published ``nodes``, ``edges``, ``quarantine`` (and ``node_changes``).

The transformations are plain DataFrame -> DataFrame functions (``parse_lines``, ``resolve_duplicates``,
``nodes_frame``, ``edges_frame``, ``quarantine_frame``, ``merge_delta``, ``node_changes_frame``);
``run_ingest`` wires them to storage in numbered steps.

Every input line ends in exactly one place, and the job checks it:
``lines_in = nodes_out + duplicates + quarantined`` (in delta mode, ``nodes_out`` counts the delta's
own distinct nodes, before they are merged into the previous version).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Callable, Iterator, NamedTuple

from g2i_core.ingest.parsers import SOURCES

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from g2i_core.storage import Storage

log = logging.getLogger(__name__)
MODES = ("full", "delta")
ENGINES = ("auto", "spark", "local")

PARSED_SCHEMA = ("source_uri string, line_no long, node_id string, title string, text string, image_url string, "
                 "has_real_image boolean, attrs string, completeness int, content_hash string, "
                 "edges array<struct<dst:string,relation:string>>, reason string, detail string, raw string")


@dataclass(frozen=True)
class IngestConfig:
    source: str  # goodreads | amazon2014 | amazon2018 | attributes (a CSV/Parquet item table)
    raw_uri: str  # one dump file or a prefix holding several
    run_id: str = ""  # default: "<source>-<logical_date>" so a rerun of the same day replaces
    logical_date: str = ""  # YYYY-MM-DD; ingested_at derives from it (never from the clock)
    mode: str = "full"  # full: the dump is the whole dataset; delta: upsert it into the latest version
    chunk_lines: int = 100_000  # lines per re-chunked Parquet file = per Spark task
    max_quarantine_fraction: float = 0.05  # above this the dump is broken: fail, publish nothing
    keep_chunks: bool = False
    force: bool = False  # make this run live even if a newer logical date is live (moves _LATEST back)
    # True: Goodreads on Spark's JSON reader (opt-in: slower than the per-line parser in the one 200k run measured,
    # bench/results/ingest_200000.md); False: every source through the per-line Python parser
    native_parse: bool = False
    link_on: tuple[str, ...] = ()  # attributes source only: the columns whose shared values link items
    max_links_per_value: int = 10  # attributes source only: links per item through one value (degree cap)
    # local: this process (pyarrow; ingest.local); spark: the Spark job; auto: local unless the master is a
    # cluster, the source is attributes, native_parse asks for Spark's reader, or the dump exceeds the memory budget
    engine: str = "auto"

    def resolved(self) -> "IngestConfig":
        """Checked copy with defaults filled in; errors name the bad value and what is allowed."""
        if self.source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {self.source!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, got {self.engine!r}")
        if self.engine == "local" and (self.native_parse or self.source == "attributes"):
            raise ValueError("--engine local reads JSON-lines dumps with pyarrow: it has no --native-parser (Spark's "
                             "reader) and no --source attributes; use --engine spark or auto")
        if not 0.0 <= self.max_quarantine_fraction <= 1.0:
            raise ValueError(f"max_quarantine_fraction must be in [0, 1], got {self.max_quarantine_fraction}")
        day = self.logical_date or dt.datetime.now(dt.timezone.utc).date().isoformat()
        try:
            dt.date.fromisoformat(day)
        except ValueError:
            raise ValueError(f"logical_date must be YYYY-MM-DD, got {day!r}") from None
        run_id = self.run_id or f"{self.source}-{day}"
        link_on = tuple(self.link_on)
        if self.source == "attributes":
            from g2i_core.ingest.attributes import check_options, parse_link_on

            link_on = parse_link_on(link_on)
            check_options(link_on, self.max_links_per_value)
        elif link_on:
            raise ValueError(f"--link-on is for --source attributes only (got it with {self.source!r})")
        return IngestConfig(**{**asdict(self), "logical_date": day, "run_id": run_id, "link_on": link_on})


@dataclass
class IngestReport:
    run_id: str
    source: str
    mode: str
    lines_in: int
    nodes_out: int
    duplicates: int
    quarantined: int
    quarantine_reasons: dict[str, int] = field(default_factory=dict)
    edges_by_relation: dict[str, int] = field(default_factory=dict)
    total_nodes: int = 0  # nodes in the published version (== nodes_out in full mode)
    changes: dict[str, int] = field(default_factory=dict)
    base_run_id: str | None = None
    raw_files: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)  # rechunk, parse_and_count, dedupe_and_write
    live: bool = True  # False: an older logical date than the live run; published by run id only
    written_nodes: int | None = None  # rows of the nodes table as written (set by check_written)
    carried_nodes: int = 0  # delta mode: rows of the base version that the delta did not replace
    engine: str = "spark"  # the engine that ran: spark or local (IngestConfig.engine may say auto)

    def check_identity(self) -> None:
        """Every term is counted on its own (lines by the chunker; nodes, duplicates and quarantined from
        the parsed rows; written rows from the written files), so this fails when one of them is wrong."""
        if self.lines_in != self.nodes_out + self.duplicates + self.quarantined:
            raise RuntimeError(f"accounting broken: lines_in={self.lines_in} != nodes_out={self.nodes_out} + "
                               f"duplicates={self.duplicates} + quarantined={self.quarantined}")
        if self.written_nodes is not None and self.written_nodes != self.nodes_out + self.carried_nodes:
            raise RuntimeError(f"accounting broken: wrote {self.written_nodes} node rows, expected nodes_out="
                               f"{self.nodes_out} + carried_nodes={self.carried_nodes} (rows of the base version "
                               "kept unchanged, delta mode only)")


def check_written(report: IngestReport, written_nodes: int, carried_nodes: int = 0) -> None:
    """Check the rows actually written to the nodes table, before they are committed: full mode
    ``written_nodes == nodes_out``; delta mode ``written_nodes == nodes_out + carried_nodes`` (the base
    version's rows whose ids the delta does not hold, ``count_carried``). Raises RuntimeError."""
    report.written_nodes, report.carried_nodes = written_nodes, carried_nodes
    report.check_identity()


def count_carried(prev_nodes: "DataFrame", delta_nodes: "DataFrame") -> int:
    """Delta mode: rows of the previous nodes version that the delta leaves as they are."""
    return prev_nodes.join(delta_nodes.select("node_id"), "node_id", "left_anti").count()


class Outcomes(NamedTuple):
    """What the parsed rows hold, each term counted directly."""

    lines: int  # parsed rows: one per input line
    reasons: dict[str, int]  # quarantine reason -> rows
    ok_rows: int  # rows that parsed into a node, repeated ids included
    distinct_nodes: int  # distinct node ids among them

    @property
    def quarantined(self) -> int:
        return sum(self.reasons.values())

    @property
    def duplicates(self) -> int:
        return self.ok_rows - self.distinct_nodes


# ---- transformations ----------------------------------------------------------------------------
_SCALAR_COLUMNS = ("node_id", "title", "text", "image_url", "has_real_image", "attrs", "completeness",
                   "content_hash", "reason", "detail", "raw")


def _arrow_parser(source: str):
    def parse_batches(batches: Iterator) -> Iterator:
        from g2i_core.ingest.parsers import parse_line

        for batch in batches:
            cols = batch.to_pydict()
            rows = [parse_line(source, raw, line_no) for line_no, raw in zip(cols["line_no"], cols["raw"], strict=True)]
            yield _rows_to_batch(rows, cols["source_uri"], cols["line_no"])

    return parse_batches


def _rows_to_batch(rows: list[dict], source_uris: list[str], line_nos: list[int]):
    """Column-wise Arrow build (several times faster than RecordBatch.from_pylist on nested rows)."""
    import pyarrow as pa

    schema = _arrow_parsed_schema()
    arrays = {"source_uri": source_uris, "line_no": line_nos}
    for name in _SCALAR_COLUMNS:
        arrays[name] = [r.get(name) for r in rows]
    edge_type = schema.field("edges").type
    offsets, dsts, relations = [0], [], []
    for r in rows:
        for e in r["edges"]:
            dsts.append(e["dst"])
            relations.append(e["relation"])
        offsets.append(len(dsts))
    edges = pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.StructArray.from_arrays(
        [pa.array(dsts, pa.string()), pa.array(relations, pa.string())], fields=list(edge_type.value_type)))
    return pa.RecordBatch.from_arrays([edges if f.name == "edges" else pa.array(arrays[f.name], f.type)
                                       for f in schema], schema=schema)


def _arrow_parsed_schema():
    import pyarrow as pa

    edge = pa.struct([("dst", pa.string()), ("relation", pa.string())])
    return pa.schema([("source_uri", pa.string()), ("line_no", pa.int64()), ("node_id", pa.string()),
                      ("title", pa.string()), ("text", pa.string()), ("image_url", pa.string()),
                      ("has_real_image", pa.bool_()), ("attrs", pa.string()), ("completeness", pa.int32()),
                      ("content_hash", pa.string()), ("edges", pa.list_(edge)), ("reason", pa.string()),
                      ("detail", pa.string()), ("raw", pa.string())])


def parse_lines(lines: "DataFrame", source: str, native: bool = False) -> "DataFrame":
    """(source_uri, line_no, raw binary, valid_utf8) -> one parsed row per line (PARSED_SCHEMA), on the
    executors. JSON-lines sources go through Spark's JSON reader (``native``, exact Python parser only for
    the lines it declines); the rest, or ``native=False``, through ``parsers.parse_line`` per line."""
    from g2i_core.ingest.native import NATIVE_SOURCES, parse_lines_native

    if native and source in NATIVE_SOURCES:
        return parse_lines_native(lines, source)
    return lines.select("source_uri", "line_no", "raw").mapInArrow(_arrow_parser(source), PARSED_SCHEMA)


def resolve_duplicates(parsed_ok: "DataFrame") -> "DataFrame":
    """One row per node_id: the most complete copy, ties going to the later line (newest)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    w = Window.partitionBy("node_id").orderBy(F.desc("completeness"), F.desc("source_uri"), F.desc("line_no"))
    return parsed_ok.withColumn("_rank", F.row_number().over(w)).where("_rank = 1").drop("_rank")


def nodes_frame(winners: "DataFrame", dataset: str, logical_date: str) -> "DataFrame":
    from pyspark.sql import functions as F

    ingested_at = dt.datetime.fromisoformat(logical_date).replace(tzinfo=dt.timezone.utc)
    return winners.select("node_id", F.lit(dataset).alias("dataset"), "title", "text", "image_url",
                          "has_real_image", "attrs", "content_hash",
                          F.lit(ingested_at).cast("timestamp").alias("ingested_at"))


def edges_frame(winners: "DataFrame") -> "DataFrame":
    """(src, dst, relation, weight): self-loops and repeated links were already dropped per record."""
    from pyspark.sql import functions as F

    e = winners.select(F.col("node_id").alias("src"), F.explode("edges").alias("e"))
    return e.select("src", F.col("e.dst").alias("dst"), F.col("e.relation").alias("relation"),
                    F.lit(1.0).alias("weight"))


def quarantine_frame(parsed_bad: "DataFrame", run_id: str) -> "DataFrame":
    from pyspark.sql import functions as F

    return parsed_bad.select("source_uri", "line_no", "reason", "detail", "raw", F.lit(run_id).alias("run_id"))


def merge_delta(prev_nodes: "DataFrame", prev_edges: "DataFrame", new_nodes: "DataFrame",
                new_edges: "DataFrame") -> tuple["DataFrame", "DataFrame"]:
    """Upsert: a node in the delta replaces its previous row and all its previous out-edges."""
    touched = new_nodes.select("node_id")
    nodes = prev_nodes.join(touched, "node_id", "left_anti").unionByName(new_nodes)
    kept_edges = prev_edges.join(touched.withColumnRenamed("node_id", "src"), "src", "left_anti")
    return nodes, kept_edges.unionByName(new_edges)


def node_changes_frame(prev_nodes: "DataFrame", nodes: "DataFrame", run_id: str) -> "DataFrame":
    """(node_id, change in new|updated|removed, run_id): what a nightly refresh must re-process."""
    from pyspark.sql import functions as F

    p = prev_nodes.select("node_id", F.col("content_hash").alias("old"))
    n = nodes.select("node_id", F.col("content_hash").alias("new"))
    change = (F.when(F.col("old").isNull(), "new").when(F.col("new").isNull(), "removed")
              .when(F.col("old") != F.col("new"), "updated"))
    return (p.join(n, "node_id", "full_outer").select("node_id", change.alias("change"))
            .where("change is not null").withColumn("run_id", F.lit(run_id)))


# ---- the job ------------------------------------------------------------------------------------------
def ingest(storage: "Storage", config: IngestConfig, *, spark_master: str,
           spark: "Callable[[], SparkSession]", memory_budget: int | None = None) -> IngestReport:
    """Ingest with the engine ``config.engine`` names (``auto``: ``local.engine_for``); ``spark`` makes the
    session, and is called only when the Spark engine runs."""
    from g2i_core.ingest.local import engine_for, run_ingest_local

    cfg = config.resolved()
    engine = cfg.engine
    if engine == "auto":
        from g2i_core.ppr.api import resolve_memory_budget

        engine = engine_for(storage, cfg, spark_master=spark_master, memory_budget=resolve_memory_budget(memory_budget))
    log.info("ingest %s run=%s: engine %s", cfg.source, cfg.run_id, engine)
    if engine == "local":
        return run_ingest_local(storage, cfg)
    return run_ingest(spark(), storage, cfg)


def run_ingest(spark: "SparkSession", storage: "Storage", config: IngestConfig) -> IngestReport:
    """Re-chunk, parse, dedupe and publish one dump under ``storage`` (the output root)."""
    from pyspark import StorageLevel

    from g2i_core.ingest.chunking import rechunk

    cfg = config.resolved()
    # 1. Stream the dump(s) once into splittable Parquet chunks.
    from g2i_core.storage import new_attempt_id

    staging = storage.uri("_staging", "ingest", cfg.run_id, new_attempt_id())  # per attempt: reruns never share
    started = time.monotonic()
    if cfg.source == "attributes":  # a CSV/Parquet table of items, read and checked row by row
        from g2i_core.ingest.attributes import read_items

        chunks, items = read_items(spark, storage, cfg, staging)
    else:
        chunks = rechunk(storage, cfg.raw_uri, staging, cfg.chunk_lines)
    rechunk_s = time.monotonic() - started
    if chunks.lines_in == 0:
        raise ValueError(f"{cfg.raw_uri} holds no lines: refusing to publish an empty {cfg.source} graph")
    # 2. Parse on the executors; keep the parsed rows, every later step reads them.
    if cfg.source == "attributes":
        parsed = items.persist(StorageLevel.MEMORY_AND_DISK)
    else:
        lines = spark.read.parquet(*[storage.spark_uri(u) for u in chunks.chunk_uris])
        parsed = parse_lines(lines, cfg.source, cfg.native_parse).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        report = _publish(spark, storage, cfg, parsed, chunks, {"rechunk": round(rechunk_s, 3)})
    finally:
        parsed.unpersist()
        if not cfg.keep_chunks:
            storage.delete_prefix(staging)
    log.info("ingest %s run=%s: lines_in=%d nodes_out=%d duplicates=%d quarantined=%d reasons=%s edges=%s",
             cfg.source, cfg.run_id, report.lines_in, report.nodes_out, report.duplicates, report.quarantined,
             report.quarantine_reasons, report.edges_by_relation)
    return report


def _count_outcomes(parsed: "DataFrame") -> Outcomes:
    """Parsed lines, quarantine reasons, node rows and distinct node ids, in one pass over the parsed rows."""
    from pyspark.sql import functions as F

    rows = parsed.groupBy("reason").agg(F.count(F.lit(1)).alias("n"),
                                       F.countDistinct("node_id").alias("ids")).collect()
    reasons = {r["reason"]: r["n"] for r in rows if r["reason"] is not None}
    ok = next((r for r in rows if r["reason"] is None), None)
    return Outcomes(sum(r["n"] for r in rows), dict(sorted(reasons.items())), ok["n"] if ok else 0,
                    ok["ids"] if ok else 0)


def account(cfg: IngestConfig, outcomes: Outcomes, lines_by_source: dict[str, int]) -> IngestReport:
    """The report of a parse, once every line is accounted for; raises (and nothing is published) when the
    parsed rows do not add up to the dump's lines or the quarantined share is over the limit."""
    lines_in = sum(lines_by_source.values())
    if lines_in == 0:
        raise ValueError(f"{cfg.raw_uri} holds no lines: refusing to publish an empty {cfg.source} graph")
    if outcomes.lines != lines_in:
        raise RuntimeError(f"parsed {outcomes.lines} lines but the dump has {lines_in}")
    reasons, quarantined = outcomes.reasons, outcomes.quarantined
    share = quarantined / lines_in
    if share > cfg.max_quarantine_fraction:
        raise RuntimeError(
            f"{quarantined} of {lines_in} lines ({share:.1%}) were quarantined, above the limit "
            f"{cfg.max_quarantine_fraction:.1%} (reasons: {reasons}); nothing was published. Is {cfg.raw_uri} "
            f"really a {cfg.source} dump? Raise --max-quarantine-fraction only if this is expected.")
    report = IngestReport(cfg.run_id, cfg.source, cfg.mode, lines_in, outcomes.distinct_nodes,
                          outcomes.duplicates, quarantined, reasons, raw_files=dict(lines_by_source))
    report.check_identity()
    return report


def _publish(spark: "SparkSession", storage: "Storage", cfg: IngestConfig, parsed: "DataFrame",
             chunks, seconds: dict[str, float]) -> IngestReport:
    """``seconds`` holds the stages timed so far; parse and write are added, and the manifest carries them."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    # 3. Account for every line and refuse a broken dump before anything is published.
    started = time.monotonic()
    outcomes = _count_outcomes(parsed)  # the first action: the parse runs here
    seconds["parse_and_count"] = round(time.monotonic() - started, 3)
    report = account(cfg, outcomes, chunks.lines_by_source)
    started = time.monotonic()

    # 4. Resolve duplicates; build the three tables (merged into the previous version in delta mode).
    # (persisted: both the nodes and the edges table read the winners)
    winners = resolve_duplicates(parsed.where(F.col("reason").isNull())).persist(StorageLevel.MEMORY_AND_DISK)
    nodes = nodes_frame(winners, cfg.source, cfg.logical_date)
    edges = edges_frame(winners)
    base_run = _base_run(storage, cfg.run_id)
    base = storage.read_commit("nodes", base_run) if base_run else None
    prev_nodes = _read_manifest(spark, storage, base["nodes"]) if base else None
    if cfg.mode == "delta":
        if prev_nodes is None:
            raise FileNotFoundError(f"--mode delta needs a published nodes table under {storage.root} to "
                                    "apply the delta to; run a full ingest first")
        nodes, edges = merge_delta(prev_nodes, _read_manifest(spark, storage, base["edges"]), nodes, edges)
    if cfg.source == "attributes":  # the projection through shared values, over every node (after a delta too)
        from g2i_core.ingest.attributes import projection_edges

        edges = projection_edges(nodes, cfg.link_on, cfg.max_links_per_value)

    # 5. Write every table's data into a fresh attempt of run=<run_id>, then commit them as one version
    #    (nodes is the primary: its manifest names the others, and its _LATEST moves last).
    attempts = []
    _write(storage, attempts, "quarantine", cfg.run_id,
           quarantine_frame(parsed.where(F.col("reason").isNotNull()), cfg.run_id), partitions=1)
    if prev_nodes is not None:
        changes = _write(storage, attempts, "node_changes", cfg.run_id,
                         node_changes_frame(prev_nodes, nodes, cfg.run_id), partitions=1)
        report.changes = dict(sorted((r["change"], r["count"]) for r in changes.groupBy("change").count().collect()))
    written_edges = _write(storage, attempts, "edges", cfg.run_id, edges)
    report.edges_by_relation = dict(sorted((r["relation"], r["count"]) for r in
                                           written_edges.groupBy("relation").count().collect()))
    _write(storage, attempts, "nodes", cfg.run_id, nodes)
    carried = count_carried(prev_nodes, winners) if cfg.mode == "delta" else 0
    winners.unpersist()
    return commit_ingest(storage, cfg, report, attempts, base_run=base_run, carried=carried, seconds=seconds,
                         started=started)


def commit_ingest(storage: "Storage", cfg: IngestConfig, report: IngestReport, attempts: list, *,
                  base_run: str | None, carried: int, seconds: dict[str, float], started: float) -> IngestReport:
    """Both engines' last step: check the node rows written (nodes is the last attempt), then commit every
    table's attempt as one version, each manifest carrying the report and the config."""
    report.base_run_id = base_run
    report.total_nodes = _footer_rows(storage, attempts[-1])
    check_written(report, report.total_nodes, carried)  # the rows on disk, not a derived number
    seconds["dedupe_and_write"] = round(time.monotonic() - started, 3)
    report.seconds = seconds
    extra = {"report": asdict(report), "config": asdict(cfg)}
    manifests = storage.commit(attempts, extra={a.table: extra for a in attempts}, logical_date=cfg.logical_date,
                               force=cfg.force)
    report.live = manifests["nodes"]["live"]
    return report


def _write(storage: "Storage", attempts: list, name: str, run_id: str, df: "DataFrame",
           partitions: int | None = None) -> "DataFrame":
    """Write ``df`` into a new attempt of run ``run_id`` of ``name`` (not yet published), append the
    attempt to ``attempts``, and return what was written, re-read."""
    attempt = storage.begin(name, run_id)
    uri = storage.spark_uri(attempt.uri)
    (df.coalesce(partitions) if partitions else df).write.mode("errorifexists").parquet(uri)
    attempts.append(attempt)
    return df.sparkSession.read.parquet(uri)


def _footer_rows(storage: "Storage", attempt) -> int:
    return sum(f["rows"] for f in storage._attempt_files(attempt))


def _base_run(storage: "Storage", run_id: str) -> str | None:
    """The published nodes run this one builds on. A rerun of a run that was published before keeps
    its original base (so clearing an old run never merges it onto a newer version)."""
    from g2i_core.storage import NotPublishedError

    own = storage._manifest_or_none("nodes", run_id)
    if own is not None:
        return own.get("extra", {}).get("report", {}).get("base_run_id")
    try:
        return storage.manifest("nodes")["run_id"]
    except NotPublishedError:
        return None


def _read_manifest(spark: "SparkSession", storage: "Storage", manifest: dict) -> "DataFrame":
    return spark.read.parquet(*[storage.spark_uri(u) for u in storage.manifest_files(manifest)])
