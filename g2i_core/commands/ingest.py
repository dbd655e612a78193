"""Parse a raw Goodreads / Amazon 2014 / Amazon 2018 dump into published nodes, edges and quarantine tables.

Examples:
  g2i ingest --source goodreads --raw s3://g2i/raw/goodreads_books.json.gz --out s3://g2i/goodreads \\
      --logical-date 2026-11-26
  g2i ingest --source amazon2018 --raw file:///data/delta/ --out s3://g2i/amazon --mode delta
  g2i ingest --source attributes --raw s3://g2i/raw/art/artworks.csv.gz --out s3://g2i/art --link-on artist,genre

--raw is one dump file or a prefix of dump files (.json.gz/.jsonl.gz/.json/.jsonl); --out is a storage
root (tables land at <out>/nodes/, <out>/edges/, ...; use one root per dataset). Every line is
accounted for: lines_in = nodes_out + duplicates + quarantined, printed and stored in the manifest.
"""

from __future__ import annotations

import argparse

from g2i_core.ids import optional_run_id_arg

NAME = "ingest"
SUMMARY = "raw dumps -> nodes, edges, quarantine tables (in this process when it fits, else Spark)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", required=True, choices=["goodreads", "amazon2014", "amazon2018", "attributes"],
                   help="attributes: a CSV/Parquet table of items (id, title, image_url, attribute columns) "
                        "linked through shared values of the --link-on columns")
    p.add_argument("--raw", required=True,
                   help="dump file or prefix (s3://... or file:///...); not restricted here: a DAG run reads only "
                        "<storage_root>/raw/ or G2I_RAW_ALLOW_PREFIXES (checked by its plan task)")
    p.add_argument("--root", "--out", dest="out", default=None,
                   help="the dataset's storage root to publish under (default: settings.storage_root)")
    p.add_argument("--run-id", default="", type=optional_run_id_arg,
                   help="default: <source>-<logical date>; a rerun replaces it")
    p.add_argument("--logical-date", default="", help="YYYY-MM-DD (default: today, UTC); sets ingested_at")
    p.add_argument("--mode", default="full", choices=["full", "delta"],
                   help="full: the dump is the whole dataset; delta: upsert it into the latest version")
    p.add_argument("--chunk-lines", type=int, default=100_000, help="lines per parallel parse task")
    p.add_argument("--max-quarantine-fraction", type=float, default=0.05,
                   help="fail (publish nothing) above this share of bad lines (default %(default)s)")
    p.add_argument("--keep-chunks", action="store_true", help="keep the re-chunked staging files")
    p.add_argument("--force", action="store_true",
                   help="make this run live even when a newer logical date is live (moves _LATEST back)")
    p.add_argument("--link-on", default="", metavar="COLUMN[,COLUMN...]",
                   help="--source attributes: link items that share a value of these columns (e.g. artist,genre); "
                        "the relation of each edge is the column name")
    p.add_argument("--max-links-per-value", type=int, default=10,
                   help="--source attributes: an item links to at most this many items through one value, so "
                        "its out- and in-degree are each <= this x the number of --link-on columns "
                        "(default %(default)s)")
    p.add_argument("--engine", choices=("auto", "spark", "local"), default=None,
                   help="local: this process (pyarrow, a thread per core; JSON-lines sources); spark: the Spark job; "
                        "auto: local unless the master is a cluster, --source is attributes, --native-parser is "
                        "given or the dump exceeds the memory budget (setting ppr_memory_budget_gb). Default: the "
                        "setting ingest_engine (auto)")
    parser_choice = p.add_mutually_exclusive_group()
    parser_choice.add_argument("--native-parser", action="store_true",
                               help="Spark engine: Goodreads lines through Spark's JSON reader (experimental)")
    parser_choice.add_argument("--python-parser", action="store_true",
                               help="Spark engine: parse every line with the per-line Python parser (its default)")
    p.add_argument("--json", action="store_true", help="print the full report as JSON")


def run(args: argparse.Namespace) -> int:
    import json
    from dataclasses import asdict

    from g2i_core.config import Settings
    from g2i_core.ingest.job import IngestConfig, ingest
    from g2i_core.spark import get_spark
    from g2i_core.storage import Storage

    settings = Settings.load()
    config = IngestConfig(source=args.source, raw_uri=args.raw, run_id=args.run_id, logical_date=args.logical_date,
                          mode=args.mode, chunk_lines=args.chunk_lines,
                          max_quarantine_fraction=args.max_quarantine_fraction,
                          keep_chunks=args.keep_chunks, force=args.force, native_parse=args.native_parser,
                          link_on=tuple(c.strip() for c in args.link_on.split(",") if c.strip()),
                          max_links_per_value=args.max_links_per_value,
                          engine=args.engine or settings.ingest_engine).resolved()
    storage = Storage.from_settings(settings, root=args.out)
    report = ingest(storage, config, spark_master=settings.spark_master,
                    spark=lambda: get_spark(settings, f"g2i-ingest-{config.source}"))
    if args.json:
        print(json.dumps(asdict(report), indent=2, sort_keys=True))
    else:
        print(f"{report.source} run {report.run_id} ({report.engine} engine): lines_in={report.lines_in} = "
              f"nodes_out={report.nodes_out} "
              f"+ duplicates={report.duplicates} + quarantined={report.quarantined} {report.quarantine_reasons}")
        print(f"published nodes={report.total_nodes} edges={report.edges_by_relation} under {storage.root}"
              + (f"; changes vs {report.base_run_id}: {report.changes}" if report.base_run_id else ""))
        if not report.live:
            print(f"run {report.run_id} is older than the live run: published by run id, _LATEST unchanged "
                  "(--force moves it back)")
    return 0
