"""The ``ppr`` stage: read the graph, compute candidates with the chosen method, publish."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from g2i_core.ppr.api import SPARK_METHODS, PprConfig, compute_candidates
from g2i_core.ppr.io import load_graph, load_node_ids, open_storage

if TYPE_CHECKING:
    from g2i_core.config import Settings

log = logging.getLogger(__name__)
TABLE = "ppr_candidates"


def run_ppr(settings: "Settings", config: PprConfig, *, edges_uri: str, out_uri: str, run_id: str,
            nodes_uri: str | None = None, previous_edges_uri: str | None = None, changed_uri: str | None = None,
            refresh_tol: float = 1e-3) -> dict:
    """Compute and publish ``ppr_candidates`` under ``out_uri``; returns the manifest."""
    config.check()
    out = open_storage(out_uri, settings)
    started = time.monotonic()
    extra = {"config": config.as_dict(), "edges": edges_uri, "nodes": nodes_uri}
    if previous_edges_uri:
        from g2i_core.ppr.incremental import refresh_candidates

        table, stats = refresh_candidates(settings, config, out, edges_uri=edges_uri,
                                          previous_edges_uri=previous_edges_uri, changed_uri=changed_uri,
                                          refresh_tol=refresh_tol, nodes_uri=nodes_uri)
        extra["incremental"] = stats
    elif config.method in SPARK_METHODS:
        return _run_on_spark(settings, config, out, edges_uri, nodes_uri, run_id, extra)
    else:
        graph = load_graph(edges_uri, settings, use_weights=config.use_weights)
        sources = graph.index_of(load_node_ids(nodes_uri, settings)) if nodes_uri else None
        table = compute_candidates(graph, config, sources).to_arrow(graph)
    extra["seconds"] = round(time.monotonic() - started, 3)
    return out.publish_table(TABLE, table, run_id, extra=extra)


def _run_on_spark(settings: "Settings", config: PprConfig, out, edges_uri: str, nodes_uri: str | None,
                  run_id: str, extra: dict) -> dict:
    from g2i_core.ppr.spark_ppr import spark_candidates
    from g2i_core.spark import get_spark

    spark = get_spark(settings, f"g2i-ppr-{config.method}")
    started = time.monotonic()
    edges = read_spark_table(spark, edges_uri, "graph_edges", settings)
    nodes = read_spark_table(spark, edges_uri, "graph_nodes", settings, required=False)
    sources = read_spark_table(spark, nodes_uri, "graph_nodes", settings) if nodes_uri else None
    staging = out.child("_staging", TABLE, run_id)
    result = spark_candidates(spark, edges, config, staging, sources=sources, nodes=nodes)
    data_uri = out.run_data_uri(TABLE, run_id)
    result.write.mode("overwrite").parquet(out.spark_uri(data_uri))
    staging.delete_prefix(staging.root)
    extra["seconds"] = round(time.monotonic() - started, 3)
    return out.publish_written(TABLE, run_id, extra=extra)


def read_spark_table(spark, uri: str, table: str, settings: "Settings", required: bool = True):
    """Spark DataFrame of a Parquet file/prefix URI or of a published table under a storage root."""
    storage = open_storage(uri, settings)
    if not uri.endswith(".parquet") and storage.is_published(table):
        return spark.read.parquet(*[storage.spark_uri(u) for u in storage.published_files(table)])
    if not required:
        return None
    if not storage.list(uri) and not storage.exists(uri):
        raise FileNotFoundError(f"{uri} is neither a Parquet file/prefix nor a storage root with a published "
                                f"{table!r} table")
    return spark.read.parquet(storage.spark_uri(uri))
