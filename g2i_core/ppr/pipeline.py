"""The ``ppr`` stage: read the graph, compute candidates with the chosen method, publish."""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import TYPE_CHECKING

from g2i_core.ppr.api import (
    SPARK_METHODS,
    PprConfig,
    compute_candidates,
    memory_budget_bytes,
    propagate_memory_bytes,
    resolve_auto_placement,
)
from g2i_core.ppr.io import load_graph, load_node_ids, open_storage

if TYPE_CHECKING:
    from g2i_core.config import Settings

log = logging.getLogger(__name__)
TABLE = "ppr_candidates"


def run_ppr(settings: "Settings", config: PprConfig, *, edges_uri: str, out_uri: str, run_id: str,
            nodes_uri: str | None = None, previous_edges_uri: str | None = None, changed_uri: str | None = None,
            refresh_tol: float = 1e-3, graph_run_id: str | None = None) -> dict:
    """Compute and publish ``ppr_candidates`` under ``out_uri``; returns the manifest."""
    config.check()
    out = open_storage(out_uri, settings)
    started = time.monotonic()
    extra = {"config": config.as_dict(), "edges": edges_uri, "nodes": nodes_uri}
    if config.method == "auto" and not previous_edges_uri:
        config = dataclasses.replace(config, method=_resolve_auto(settings, config, edges_uri, nodes_uri,
                                                                  graph_run_id))
        extra["auto"] = config.method
    logical_date = _graph_logical_date(edges_uri, settings, graph_run_id)
    if previous_edges_uri:
        from g2i_core.ppr.incremental import refresh_candidates

        table, stats = refresh_candidates(settings, config, out, edges_uri=edges_uri,
                                          previous_edges_uri=previous_edges_uri, changed_uri=changed_uri,
                                          refresh_tol=refresh_tol, nodes_uri=nodes_uri)
        extra["incremental"] = stats
    elif config.method in SPARK_METHODS:
        return _run_on_spark(settings, config, out, edges_uri, nodes_uri, run_id, extra, logical_date, graph_run_id)
    else:
        graph = load_graph(edges_uri, settings, use_weights=config.use_weights, pin=graph_run_id)
        sources = graph.index_of(load_node_ids(nodes_uri, settings)) if nodes_uri else None
        table = compute_candidates(graph, config, sources).to_arrow(graph)
    extra["seconds"] = round(time.monotonic() - started, 3)
    return out.publish_table(TABLE, table, run_id, extra=extra, logical_date=logical_date)


def _resolve_auto(settings: "Settings", config: PprConfig, edges_uri: str, nodes_uri: str | None,
                  pin: str | None) -> str:
    """``auto`` from row counts (manifests or Parquet footers), before any graph is loaded."""
    num_edges = _row_count(edges_uri, "graph_edges", settings, pin)
    num_nodes = _row_count(edges_uri, "graph_nodes", settings, pin, required=False)
    num_nodes = num_edges if num_nodes is None else num_nodes  # raw edges: no node count without reading them
    num_sources = _row_count(nodes_uri, "graph_nodes", settings, None) if nodes_uri else None
    method = resolve_auto_placement(num_nodes, num_edges, num_sources, spark_master=settings.spark_master,
                                    memory_budget=memory_budget_bytes(settings.ppr_memory_budget_gb),
                                    row_k=config.row_k, top_k=config.top_k)
    log.info("ppr auto: %s (%d nodes, %d edges, master %s, propagate needs ~%.1f GB, budget %.1f GB)", method,
             num_nodes, num_edges, settings.spark_master,
             propagate_memory_bytes(num_nodes, num_edges, config.row_k, config.top_k) / 2**30,
             memory_budget_bytes(settings.ppr_memory_budget_gb) / 2**30)
    return method


def _row_count(uri: str, table: str, settings: "Settings", pin: str | None, required: bool = True) -> int | None:
    """Rows of a published ``table`` under a storage root (its manifest), or of a Parquet file/prefix."""
    import pyarrow.parquet as pq

    storage = open_storage(uri, settings).pinned(pin)
    if not uri.endswith(".parquet") and storage.is_published(table):
        return int(storage.manifest(table)["rows"])
    if not required:
        return None
    files = [uri] if uri.endswith(".parquet") else [u for u in storage.list(uri) if u.endswith(".parquet")]
    if not files:
        raise FileNotFoundError(f"{uri} is neither a Parquet file/prefix nor a storage root with a published "
                                f"{table!r} table")
    return sum(pq.ParquetFile(storage.parquet_footer_source(f)).metadata.num_rows for f in files)


def _graph_logical_date(edges_uri: str, settings: "Settings", pin: str | None) -> str | None:
    """The logical date of the graph version read (orders ``_LATEST``), when it is a published graph."""
    storage = open_storage(edges_uri, settings).pinned(pin)
    if edges_uri.endswith(".parquet") or not storage.is_published("graph_nodes"):
        return None
    return storage.manifest("graph_nodes").get("logical_date")


def _run_on_spark(settings: "Settings", config: PprConfig, out, edges_uri: str, nodes_uri: str | None,
                  run_id: str, extra: dict, logical_date: str | None, pin: str | None) -> dict:
    from g2i_core.ppr.spark_ppr import spark_candidates
    from g2i_core.spark import get_spark

    spark = get_spark(settings, f"g2i-ppr-{config.method}")
    started = time.monotonic()
    edges = read_spark_table(spark, edges_uri, "graph_edges", settings, pin=pin)
    nodes = read_spark_table(spark, edges_uri, "graph_nodes", settings, required=False, pin=pin)
    sources = read_spark_table(spark, nodes_uri, "graph_nodes", settings) if nodes_uri else None
    from g2i_core.storage import new_attempt_id

    staging = out.child("_staging", TABLE, run_id, new_attempt_id())  # per attempt: a rerun never shares it
    result = spark_candidates(spark, edges, config, staging, sources=sources, nodes=nodes)
    attempt = out.begin(TABLE, run_id)
    result.write.mode("errorifexists").parquet(out.spark_uri(attempt.uri))
    staging.delete_prefix(staging.root)
    extra["seconds"] = round(time.monotonic() - started, 3)
    return out.publish_written(attempt, extra=extra, logical_date=logical_date)


def read_spark_table(spark, uri: str, table: str, settings: "Settings", required: bool = True,
                     pin: str | None = None):
    """Spark DataFrame of a Parquet file/prefix URI or of a published table under a storage root."""
    storage = open_storage(uri, settings).pinned(pin)
    if not uri.endswith(".parquet") and storage.is_published(table):
        return spark.read.parquet(*[storage.spark_uri(u) for u in storage.published_files(table)])
    if not required:
        return None
    if not storage.list(uri) and not storage.exists(uri):
        raise FileNotFoundError(f"{uri} is neither a Parquet file/prefix nor a storage root with a published "
                                f"{table!r} table")
    return spark.read.parquet(storage.spark_uri(uri))
