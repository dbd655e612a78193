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
DEFAULT_REFRESH_MAX_AGE = 6  # refreshes in a row; the 7th run computes every source


def run_ppr(settings: "Settings", config: PprConfig, *, edges_uri: str, out_uri: str, run_id: str,
            nodes_uri: str | None = None, previous_edges_uri: str | None = None, changed_uri: str | None = None,
            refresh_tol: float = 1e-3, graph_run_id: str | None = None, incremental: bool = False,
            refresh_hops: int | None = None, refresh_max_age: int = DEFAULT_REFRESH_MAX_AGE,
            warm_start: bool = True) -> dict:
    """Compute and publish ``ppr_candidates`` under ``out_uri``; returns the manifest.

    ``incremental``: refresh the live ``ppr_candidates`` for this graph (``refresh_base`` says when that
    is not possible, and the run computes every source instead). ``previous_edges_uri``: refresh from
    the live version against those edges. Either way ``refresh_hops`` None recomputes the sources the
    L1 bound names at ``refresh_tol``, h the sources within h hops of a changed node. ``warm_start``:
    ``propagate`` continues from the base's ``ppr_rows`` when it has them (False: cold sweeps)."""
    config.check()
    out = open_storage(out_uri, settings)
    started = time.monotonic()
    graph_run = _graph_run_id(edges_uri, settings, graph_run_id)
    extra = {"config": config.as_dict(), "edges": edges_uri, "nodes": nodes_uri, "graph_run_id": graph_run}
    if config.method == "auto" and (not previous_edges_uri or incremental):
        config = dataclasses.replace(config, method=_resolve_auto(settings, config, edges_uri, nodes_uri,
                                                                  graph_run_id))
        extra["auto"] = config.method
    logical_date = _graph_logical_date(edges_uri, settings, graph_run_id)
    base, previous_pin = None, None
    if incremental and not previous_edges_uri:
        base, reason = refresh_base(out, config, graph_run, nodes_uri, refresh_max_age, logical_date,
                                    graphs=open_storage(edges_uri, settings))
        if base is None:
            log.info("ppr: every source computed, not refreshed: %s", reason)
            extra["incremental"] = {"full_because": reason}
        else:
            previous_edges_uri, previous_pin = edges_uri, base["extra"]["graph_run_id"]
    saved: list = []  # the ppr_rows attempt, committed with the candidates

    def save_rows(graph, row_idx, row_val) -> None:
        from g2i_core.ppr.rows import TABLE as ROWS
        from g2i_core.ppr.rows import rows_table

        started_rows = time.monotonic()
        saved.append((out.write_attempt(ROWS, rows_table(graph.id_array, row_idx, row_val), run_id), graph.num_nodes))
        log.info("ppr: %d rows written in %.1fs", graph.num_nodes, time.monotonic() - started_rows)

    if previous_edges_uri:
        from g2i_core.ppr.incremental import refresh_candidates

        table, stats = refresh_candidates(settings, config, out, edges_uri=edges_uri,
                                          previous_edges_uri=previous_edges_uri, changed_uri=changed_uri,
                                          refresh_tol=refresh_tol, nodes_uri=nodes_uri, hops=refresh_hops,
                                          previous_manifest=base, pin=graph_run_id, previous_pin=previous_pin,
                                          save_rows=save_rows, warm_start=warm_start)
        if base is not None:
            stats.update(previous_run_id=base["run_id"], previous_graph_run_id=previous_pin,
                         age=int(base["extra"].get("incremental", {}).get("age", 0)) + 1)
        extra["incremental"] = stats
    elif config.method in SPARK_METHODS:
        return _run_on_spark(settings, config, out, edges_uri, nodes_uri, run_id, extra, logical_date, graph_run_id)
    else:
        graph = load_graph(edges_uri, settings, use_weights=config.use_weights, pin=graph_run_id)
        sources = graph.index_of(load_node_ids(nodes_uri, settings)) if nodes_uri else None
        # propagate over every node keeps its rows: the next night's refresh continues from them
        candidates = compute_candidates(graph, config, sources,
                                        keep_rows=sources is None and config.method == "propagate")
        if candidates.rows is not None:
            save_rows(graph, *candidates.rows)
            candidates.rows = None
        table = candidates.to_arrow(graph)
    extra["seconds"] = round(time.monotonic() - started, 3)
    if not saved:
        return out.publish_table(TABLE, table, run_id, extra=extra, logical_date=logical_date)
    from g2i_core.ppr.rows import TABLE as ROWS

    (rows_attempt, num_rows), = saved
    attempt = out.write_attempt(TABLE, table, run_id)
    return out.commit([rows_attempt, attempt], extra={ROWS: {"graph_run_id": graph_run}, TABLE: extra},
                      rows={ROWS: num_rows, TABLE: table.num_rows}, schemas={TABLE: str(table.schema)},
                      logical_date=logical_date)[TABLE]


# what must match between the version refreshed and this run, or its kept rows answer another question
_REFRESH_KEYS = ("alpha", "top_k", "eps", "row_k", "sweeps", "refine_eps", "tol", "use_weights")


def refresh_base(out, config: PprConfig, graph_run: str | None, nodes_uri: str | None, max_age: int,
                 logical_date: str | None = None, graphs=None) -> tuple[dict | None, str]:
    """(the ``ppr_candidates`` manifest an incremental run starts from, or None and why not).

    The base is the newest published version computed from another graph run, older than this graph
    (``logical_date``) when both dates are known. So a retry refreshes the same base as the first
    try, and a backfill of an old date refreshes the version before that date. The base must use the
    same settings and method, cover every node, and be at most ``max_age`` refreshes away from a full
    computation: a refresh keeps rows that a full run could order slightly differently, so a full
    run bounds the drift. ``graphs``: the storage of the graph versions, where the base's graph must
    still be published (it is what the new graph is diffed against)."""
    if config.method in SPARK_METHODS:
        return None, f"method {config.method} (refreshes run on one machine)"
    if nodes_uri:
        return None, "--nodes restricts the sources (refreshes cover every node)"
    if graph_run is None:
        return None, "the edges are not a published graph (no graph run to diff against)"
    versions = []
    for uri in out.list(out.uri(TABLE, "_manifests")):
        if uri.endswith(".json"):
            m = out.get_json(uri)
            ran_on = m.get("extra", {}).get("graph_run_id")
            if ran_on and ran_on != graph_run and (not logical_date or (m.get("logical_date") or "") <= logical_date):
                versions.append(m)
    if not versions:
        return None, "no published ppr_candidates computed from an earlier graph"
    base = max(versions, key=lambda m: (m.get("logical_date") or "", m["attempt"]))
    extra = base["extra"]
    if extra.get("nodes"):
        return None, f"ppr_candidates run {base['run_id']} covers a subset of the nodes"
    before = extra.get("config", {})
    differ = [k for k in _REFRESH_KEYS if before.get(k) != getattr(config, k)]
    if differ:
        return None, f"settings changed since run {base['run_id']}: {', '.join(differ)}"
    method = extra.get("auto") or before.get("method")
    if method != config.method:
        return None, f"method changed since run {base['run_id']}: {method} -> {config.method}"
    if graphs is not None and not graphs.is_published("graph_nodes", extra["graph_run_id"]):
        return None, (f"graph run {extra['graph_run_id']} (what ppr_candidates run {base['run_id']} was computed "
                      "from) is no longer published")
    age = int(extra.get("incremental", {}).get("age", 0))
    if age >= max_age:
        return None, f"run {base['run_id']} is {age} refreshes from a full computation (refresh_max_age {max_age})"
    return base, ""


def _graph_run_id(edges_uri: str, settings: "Settings", pin: str | None) -> str | None:
    """The build-graph run whose edges are read, when they are a published graph."""
    storage = open_storage(edges_uri, settings).pinned(pin)
    if edges_uri.endswith(".parquet") or not storage.is_published("graph_nodes"):
        return None
    return storage.manifest("graph_nodes").get("run_id")


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
    return sum(pq.ParquetFile(storage.ranged_source(f)).metadata.num_rows for f in files)


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
