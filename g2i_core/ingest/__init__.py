"""Ingest: raw Goodreads / Amazon 2014 / Amazon 2018 dumps -> ``nodes``, ``edges``, ``quarantine``.

``parsers`` turns one raw line into a node record or a quarantine reason (pure Python, no Spark);
``chunking`` re-chunks a non-splittable ``.gz`` into Parquet chunks Spark can spread over cores;
``job`` holds the Spark transformations and the publish step.
"""
