"""Reading graphs and node sets from URIs; the only place the PPR code touches storage."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from g2i_core.ppr.graph import CsrGraph, graph_from_arrow

if TYPE_CHECKING:
    import pyarrow as pa

    from g2i_core.config import Settings
    from g2i_core.storage import Storage

log = logging.getLogger(__name__)


def open_storage(uri: str, settings: "Settings | None" = None) -> "Storage":
    from g2i_core.config import Settings
    from g2i_core.storage import Storage

    return Storage(uri, settings=settings or Settings.load())


def read_table_uri(uri: str, table: str, settings: "Settings | None" = None,
                   columns: list[str] | None = None) -> "pa.Table":
    """A Parquet file, a prefix of Parquet files, or a storage root holding a published ``table``."""
    storage = open_storage(uri, settings)
    if not uri.endswith(".parquet") and storage.is_published(table):
        return storage.read_table(table, columns=columns)
    try:
        return storage.read_parquet(uri, columns=columns)
    except FileNotFoundError:
        raise FileNotFoundError(f"{uri} is neither a Parquet file/prefix nor a storage root with a published "
                                f"{table!r} table (run the stage that writes it first)") from None


def load_graph(edges_uri: str, settings: "Settings | None" = None, *, use_weights: bool = True,
               pin: str | None = None) -> CsrGraph:
    """Edges from ``edges_uri``; when it is a storage root with ``graph_nodes``, isolated nodes too
    (of one build-graph commit: the live one, or run ``pin``)."""
    extra: list[str] = []
    storage = open_storage(edges_uri, settings).pinned(pin)
    if pin and not edges_uri.endswith(".parquet") and not storage.is_published("graph_nodes") \
            and not storage.is_published("graph_edges"):
        # never fall back to the live graph: a pinned read that silently got another version would
        # diff a graph against itself, or compute on the wrong day's edges
        raise FileNotFoundError(f"graph run {pin!r} is not published under {edges_uri} (no graph_nodes or "
                                f"graph_edges run {pin!r})")
    if not edges_uri.endswith(".parquet") and storage.is_published("graph_nodes"):
        # edges and nodes of one build-graph commit, never the latest of each on its own
        commit = storage.read_commit("graph_nodes")
        edges = storage.read_table("graph_edges", manifest=commit.get("graph_edges"))  # older commits: on its own
        extra = storage.read_table("graph_nodes", columns=["node_id"], manifest=commit["graph_nodes"]) \
            .column("node_id").to_pylist()
    elif pin:
        edges = storage.read_table("graph_edges")  # the pinned run
    else:
        edges = read_table_uri(edges_uri, "graph_edges", settings)
    graph = graph_from_arrow(edges, use_weights=use_weights, extra_nodes=extra)
    log.info("graph: %d nodes, %d edges, %d dangling", graph.num_nodes, graph.num_edges,
             int((graph.out_degree == 0).sum()))
    return graph


def load_node_ids(uri: str, settings: "Settings | None" = None) -> list[str]:
    """``node_id`` column of a Parquet file/prefix, or of a published ``graph_nodes`` table."""
    table = read_table_uri(uri, "graph_nodes", settings)
    if "node_id" not in table.column_names:
        raise ValueError(f"{uri}: the node set needs a node_id column; it has {table.column_names}")
    return [x for x in table.column("node_id").to_pylist() if x is not None]
