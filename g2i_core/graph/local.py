"""build-graph on one machine: the same tables and stats as the Spark job (``graph.build``), computed with
pyarrow, numpy and scipy in this process.

Why: at Goodreads size (2.4M books, 21M edges) every step is a hash lookup or a counting pass over arrays
that fit in memory, and Spark's shuffles, joins on string ids and row-by-row writes were most of the
nightly delta's build-graph time. ``engine_for`` picks this engine when the master is not a cluster and
``local_build_memory_bytes`` fits the memory budget; a cluster (or a graph too large for the budget) keeps
the Spark job. bench/bench_build_graph.py compares the two on the same input.

Node ids become positions once (``arrow_lookup.positions_in``); edges, degrees and components are integer
arrays from then on, and strings come back only for the output columns.
"""

from __future__ import annotations

import logging
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np

from g2i_core.graph.build import (
    DEGREE_COLUMNS,
    QUANTILES,
    SPLIT_BUCKETS,
    BuildConfig,
    BuildInputs,
    dropped_by_relation,
    publish_graph,
    resolve_inputs,
    split_bucket,
    stats_dict,
)

if TYPE_CHECKING:
    import pyarrow as pa

    from g2i_core.storage import Attempt, Storage

log = logging.getLogger(__name__)
NODE_FILE_ROWS = 300_000  # rows per graph_nodes file (what Spark wrote at Goodreads size): parallel writes
EDGE_FILE_ROWS = 3_000_000
SPLITS = ("train", "val", "test")


# ---- choosing the engine -------------------------------------------------------------------------
def local_build_memory_bytes(node_bytes: int, num_nodes: int, num_edges: int) -> int:
    """Peak memory of the local engine. ``node_bytes``: the nodes table's uncompressed Parquet size.

    The nodes table once (the output shares its columns) plus write buffers, per edge its strings as read
    (~70 B at Goodreads' id lengths), two int64 positions, scipy's CSR and the filtered copy, per node the
    new columns and the sort of its ids. Fitted above the measured peak at 2.4M nodes (6.6 GiB, model
    6.8 GiB; bench/results/build_graph_engine.md)."""
    return int(1.5 * node_bytes) + 150 * num_edges + 200 * num_nodes


def engine_for(storage: "Storage", commit: dict, cfg: BuildConfig, *, spark_master: str,
               memory_budget: int) -> str:
    """``auto``: local unless the master is a cluster, cc_method asks for GraphX, or the graph does not
    fit ``memory_budget`` bytes (from the ingest commit's row counts and the nodes' Parquet footers)."""
    from g2i_core.spark import spark_master_is_cluster

    if cfg.cc_method == "graphx" or spark_master_is_cluster(spark_master):
        return "spark"
    rows = (commit["nodes"].get("rows"), commit["edges"].get("rows"))
    if None in rows:
        return "spark"
    need = local_build_memory_bytes(uncompressed_bytes(storage, commit["nodes"]), rows[0],
                                    rows[1] * (2 if cfg.symmetrize else 1))
    return "local" if need <= memory_budget else "spark"


def uncompressed_bytes(storage: "Storage", manifest: dict) -> int:
    """Sum of the row groups' uncompressed sizes, from the footers alone (ranged reads on S3)."""
    import pyarrow.parquet as pq

    total = 0
    for uri in storage.manifest_files(manifest):
        meta = pq.ParquetFile(storage.ranged_source(uri)).metadata
        total += sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
    return total


# ---- the steps, on arrays ----------------------------------------------------------------------------
def counts_by(values: "pa.ChunkedArray") -> dict[str, int]:
    import pyarrow.compute as pc

    return {r["values"]: r["counts"] for r in pc.value_counts(values).to_pylist()}


def symmetrize_arrays(edges: "pa.Table", src: np.ndarray, dst: np.ndarray, ids: "pa.Array"
                      ) -> tuple["pa.Table", np.ndarray, np.ndarray]:
    """Both directions of every edge, once per (src, dst, relation), keeping the larger weight (as
    ``build.symmetrize``); returns the edge table and its src/dst positions."""
    import pyarrow as pa
    import pyarrow.compute as pc

    relation = pc.dictionary_encode(edges["relation"]).combine_chunks()
    codes = relation.indices.to_numpy(zero_copy_only=False)
    weight = edges["weight"].combine_chunks()
    both = pa.table({"s": np.concatenate([src, dst]), "d": np.concatenate([dst, src]),
                     "r": np.concatenate([codes, codes]), "weight": pa.concat_arrays([weight, weight])})
    grouped = both.group_by(["s", "d", "r"], use_threads=False).aggregate([("weight", "max")])
    s, d = grouped["s"].to_numpy(), grouped["d"].to_numpy()
    table = pa.table({"src": ids.take(s), "dst": ids.take(d),
                      "relation": relation.dictionary.take(grouped["r"]), "weight": grouped["weight_max"]})
    return table, s, d


def components_of(src: np.ndarray, dst: np.ndarray, ids: "pa.Array") -> tuple["pa.Array", np.ndarray, np.ndarray]:
    """Weakly connected components: (component id per node = its smallest node id, as Spark labels it;
    component size per node; the sizes of all components)."""
    import pyarrow.compute as pc
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(ids)
    adjacency = coo_matrix((np.ones(len(src), np.int8), (src, dst)), shape=(n, n)).tocsr()
    count, labels = connected_components(adjacency, directed=True, connection="weak")
    del adjacency
    order = pc.sort_indices(ids).to_numpy()  # binary string order, as Spark compares strings
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n)
    smallest = np.full(count, n, np.int64)
    np.minimum.at(smallest, labels, rank)
    sizes = np.bincount(labels, minlength=count)
    return ids.take(order[smallest[labels]]), sizes[labels], sizes


def split_codes(ids: "pa.Array", train_fraction: float, val_fraction: float) -> np.ndarray:
    """0 train, 1 val, 2 test: ``build.split_for`` over a column (its ``split_bucket``)."""
    buckets = np.fromiter((split_bucket(x) for x in ids.to_pylist()), np.int64, count=len(ids))
    return np.where(buckets < train_fraction * SPLIT_BUCKETS, 0,
                    np.where(buckets < (train_fraction + val_fraction) * SPLIT_BUCKETS, 1, 2))


def image_columns(ids: "pa.Array", images: "pa.Table | None") -> tuple["pa.Array", "pa.Array"]:
    """(image_status, image_key) per node; ``not_fetched`` where fetch-images has no row for it."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from g2i_core.arrow_lookup import positions_in

    if images is None:
        return (pa.array(["not_fetched"]).take(np.zeros(len(ids), np.int64)),
                pa.nulls(len(ids), pa.string()))
    at = positions_in(ids, images["node_id"].combine_chunks())
    index = pa.array(at, mask=at < 0)
    return (pc.fill_null(images["status"].take(index), "not_fetched").combine_chunks(),
            images["image_key"].take(index).combine_chunks())


def exact_quantiles(values: np.ndarray) -> list[float]:
    """The value at rank ceil(q·n) for each of QUANTILES: what Spark's approxQuantile returns when it
    keeps every sample (here always exact)."""
    if len(values) == 0:
        return [float("nan")] * len(QUANTILES)
    ordered = np.sort(values)
    return [float(ordered[max(math.ceil(q * len(values)), 1) - 1]) for q in QUANTILES]


def graph_nodes_table(nodes: "pa.Table", columns: dict[str, "pa.Array | np.ndarray"]) -> "pa.Table":
    """Every nodes column, then the added ones in the Spark job's order and nullability."""
    import pyarrow as pa

    added = [pa.field("in_degree", pa.int64(), False), pa.field("out_degree", pa.int64(), False),
             pa.field("degree", pa.int64(), False), pa.field("component", pa.string()),
             pa.field("component_size", pa.int64(), False), pa.field("image_status", pa.string(), False),
             pa.field("image_key", pa.string()), pa.field("split", pa.string(), False)]
    # the input's columns nullable, as Spark reads any Parquet file; no metadata: Spark's would describe the input
    schema = pa.schema([f.with_nullable(True) for f in nodes.schema] + added)
    arrays = list(nodes.columns) + [pa.array(columns[f.name], f.type) if isinstance(columns[f.name], np.ndarray)
                                    else columns[f.name] for f in added]
    return pa.Table.from_arrays(arrays, schema=schema)


def write_files(out: "Storage", attempt: "Attempt", table: "pa.Table", rows_per_file: int,
                pool: ThreadPoolExecutor) -> list:
    """Start writing ``table`` as part-NNNNN.parquet files under the attempt; returns the futures.
    Timestamps stay INT96, as Spark writes them (Spark readers of these tables see the same types)."""
    return [pool.submit(out.write_parquet, f"{attempt.uri}/part-{i:05d}.parquet", table.slice(start, rows_per_file),
                        use_deprecated_int96_timestamps=True)
            for i, start in enumerate(range(0, max(table.num_rows, 1), rows_per_file))]


# ---- the job ------------------------------------------------------------------------------------------
def run_build_graph_local(storage: "Storage", cfg: BuildConfig, out: "Storage | None" = None) -> dict:
    """Build and publish the graph in this process; returns the stats dict (as ``run_build_graph``)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    cfg = cfg.check()
    out = out or storage
    src: BuildInputs = resolve_inputs(storage, out, cfg)
    clock = _Clock(src.run_id)
    # 1. Inputs; node ids become positions once.
    nodes = storage.read_table("nodes", manifest=src.commit["nodes"]).replace_schema_metadata(None)
    edges = storage.read_table("edges", manifest=src.commit["edges"], columns=["src", "dst", "relation", "weight"])
    edges = edges.cast(pa.schema([f.with_nullable(True) for f in edges.schema]))  # as Spark reads and writes it
    images = src.images[0].read_table("node_images", manifest=src.images[1],
                                      columns=["node_id", "status", "image_key"]) if src.images else None
    if cfg.relations:
        edges = edges.filter(pc.is_in(edges["relation"], value_set=pa.array(list(cfg.relations))))
    ids = nodes["node_id"].combine_chunks()
    clock.lap("read %d nodes, %d edges", len(ids), edges.num_rows)
    from g2i_core.arrow_lookup import positions_in

    # 2. Clean edges: dangling ends out, optionally both directions.
    src_at, dst_at = positions_in(edges["src"], ids), positions_in(edges["dst"], ids)
    keep = (src_at >= 0) & (dst_at >= 0)
    graph_edges = edges.filter(pa.array(keep))
    dropped = dropped_by_relation(counts_by(edges["relation"]), counts_by(graph_edges["relation"]))
    src_at, dst_at = src_at[keep], dst_at[keep]
    del edges, keep
    if cfg.symmetrize:
        graph_edges, src_at, dst_at = symmetrize_arrays(graph_edges, src_at, dst_at, ids)
    clock.lap("edges: %d kept, dangling dropped %s", graph_edges.num_rows, dropped)
    with ThreadPoolExecutor(max_workers=max(os.cpu_count() or 2, 2)) as pool:
        edges_attempt = out.begin("graph_edges", src.run_id)
        writes = write_files(out, edges_attempt, graph_edges, EDGE_FILE_ROWS, pool)
        # 3. Node features: degree, component, image status, split.
        out_degree = np.bincount(src_at, minlength=len(ids))
        in_degree = np.bincount(dst_at, minlength=len(ids))
        started = time.monotonic()
        component, component_size, sizes = components_of(src_at, dst_at, ids)
        cc_seconds = round(time.monotonic() - started, 3)
        del src_at, dst_at
        image_status, image_key = image_columns(ids, images)
        split = pa.array(SPLITS).take(split_codes(ids, cfg.train_fraction, cfg.val_fraction))
        graph_nodes = graph_nodes_table(nodes, {
            "in_degree": in_degree, "out_degree": out_degree, "degree": in_degree + out_degree,
            "component": component, "component_size": component_size, "image_status": image_status,
            "image_key": image_key, "split": split})
        clock.lap("node columns (components %.1f s)", cc_seconds)
        nodes_attempt = out.begin("graph_nodes", src.run_id)
        writes += write_files(out, nodes_attempt, graph_nodes, NODE_FILE_ROWS, pool)
        # 4. Stats, while the files are written.
        stats = _stats(graph_nodes, graph_edges, sizes, dropped)
        for write in writes:
            write.result()
    clock.lap("wrote graph_edges and graph_nodes")
    stats.update(engine="local", cc_method="local", cc_seconds=cc_seconds)
    return publish_graph(out, src, cfg, [edges_attempt, nodes_attempt], stats)


def _stats(graph_nodes: "pa.Table", graph_edges: "pa.Table", sizes: np.ndarray, dropped: dict[str, int]) -> dict:
    import pyarrow as pa
    import pyarrow.compute as pc

    degree = graph_nodes["degree"].to_numpy()
    keys = pa.table({"split": graph_nodes["split"], "image_status": graph_nodes["image_status"],
                     "one": np.ones(len(degree), np.int64), "real": pc.cast(graph_nodes["has_real_image"], pa.int64()),
                     "isolated": (degree == 0).astype(np.int64)})
    grouped = keys.group_by(["split", "image_status"], use_threads=False).aggregate(
        [("one", "sum"), ("real", "sum"), ("isolated", "sum")])
    groups = [{"split": r["split"], "image_status": r["image_status"], "n": r["one_sum"], "real": r["real_sum"],
               "isolated": r["isolated_sum"]} for r in grouped.to_pylist()]
    quantiles = {c: exact_quantiles(graph_nodes[c].to_numpy()) for c in DEGREE_COLUMNS}
    largest = np.sort(sizes)[::-1][:10].tolist()
    return stats_dict(groups, quantiles, components=len(sizes), largest=largest,
                      edges_by_relation=counts_by(graph_edges["relation"]), dropped=dropped)


class _Clock:
    """Logs each step's seconds: where a night's build-graph time goes."""

    def __init__(self, run_id: str):
        self.run_id, self.last = run_id, time.monotonic()

    def lap(self, message: str, *args) -> None:
        now = time.monotonic()
        log.info("build-graph run=%s (local): " + message + " [%.1f s]", self.run_id, *args, now - self.last)
        self.last = now
