"""Nightly refresh: recompute candidates only for sources whose PPR vector can have moved.

Why this is safe. Let C be the nodes whose out-edges changed (new, removed or edited edges; a new
node's in-neighbours are in C). Only the rows of C in the transition matrix change, and for every
source s the L1 change of its PPR vector is bounded by

    ||p'_s - p_s||_1 <= 2 (1 - alpha) / alpha * p_s(C) <= 2 (1 - alpha) / alpha**2 * q_s(C)

where p_s(C) is the old PPR mass of s on C and q_s the dangling-absorbed PPR (p_s = q_s / |q_s|,
|q_s| >= alpha). q_s(C) for *all* sources at once is one reverse push from C on the old graph
(additive error r_max). Sources with q_s(C) + r_max below alpha**2 * tol / (2 (1 - alpha)) keep
their old candidates; every kept score is then within ``tol`` (L1, so also per entry) of a full
recompute. Everything else, plus new nodes, is recomputed with the configured method.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import numpy as np

from g2i_core.arrow_lookup import positions_in
from g2i_core.ppr.api import SPARK_METHODS, PprConfig, compute_candidates
from g2i_core.ppr.candidates import Candidates, candidates_table
from g2i_core.ppr.graph import CsrGraph

if TYPE_CHECKING:
    import pyarrow as pa

    from g2i_core.config import Settings
    from g2i_core.ppr.propagate import WarmStart
    from g2i_core.storage import Storage

log = logging.getLogger(__name__)
# warm-started refresh: sweep the nodes within (refresh hops + WARM_EXTRA_HOPS) hops of a change, this many
# times, from the previous version's rows (measured against a full computation in docs/neighbours.md)
WARM_EXTRA_HOPS = 1
WARM_SWEEPS = 3


def changed_nodes(old: CsrGraph, new: CsrGraph) -> list[str]:
    """Ids whose out-edges (targets or transition probabilities) differ, plus added and removed ids.

    Vectorised over edges (a Python set per node costs minutes and ~10 GB at 2.4M nodes): both graphs'
    edges become (source, target) int64 keys in one shared id space, and a node changed when one of its
    keys is in only one graph or its probability differs (rounded to 12 digits). Ids are matched with
    Arrow hash lookups: numpy's isin/searchsorted on object arrays compare Python strings one by one."""
    import pyarrow as pa
    import pyarrow.compute as pc

    old_ids, new_ids = old.id_array, new.id_array
    ids = pc.unique(pa.concat_arrays([old_ids, new_ids]))
    keys, probs = [], []
    for g, g_ids in ((old, old_ids), (new, new_ids)):
        at = pc.index_in(g_ids, value_set=ids).to_numpy().astype(np.int64)  # graph index -> shared index
        src = np.repeat(at, np.diff(g.indptr))
        keys.append(src * len(ids) + at[g.indices])
        probs.append(np.round(g.probs, 12))
    order = [np.argsort(k, kind="stable") for k in keys]
    ko, kn = keys[0][order[0]], keys[1][order[1]]
    po, pn = probs[0][order[0]], probs[1][order[1]]
    _, io, jn = np.intersect1d(ko, kn, assume_unique=True, return_indices=True)
    only_old = np.ones(len(ko), bool)
    only_old[io] = False
    only_new = np.ones(len(kn), bool)
    only_new[jn] = False
    moved = ko[io][po[io] != pn[jn]]
    changed_keys = np.concatenate([ko[only_old], kn[only_new], moved])
    changed = np.zeros(len(ids), bool)
    changed[changed_keys // len(ids)] = True
    in_both = pc.and_(pc.is_in(ids, value_set=old_ids), pc.is_in(ids, value_set=new_ids))
    changed |= ~in_both.to_numpy(zero_copy_only=False)  # added or removed
    return sorted(ids.filter(pa.array(changed)).to_pylist())


def reverse_push_mass(graph: CsrGraph, targets: np.ndarray, alpha: float, r_max: float) -> np.ndarray:
    """(n,) estimate of q_s(targets) for every source s, each within ``r_max`` below the truth."""
    n = graph.num_nodes
    est, resid = np.zeros(n), np.zeros(n)
    resid[targets] = 1.0
    p0 = graph.transition_matrix()
    frontier = np.flatnonzero(resid > r_max)
    while len(frontier):
        # synchronous sweep over every node above the threshold (each sweep keeps the invariant)
        mass = resid[frontier].copy()
        est[frontier] += alpha * mass
        resid[frontier] = 0.0
        spread = np.zeros(n)
        spread[frontier] = (1 - alpha) * mass
        resid += p0 @ spread  # residual flows back to in-neighbours: r(u) += P(u, v) * spread(v)
        frontier = np.flatnonzero(resid > r_max)
    return est


def affected_sources(old: CsrGraph, changed: list[str], alpha: float, tol: float) -> np.ndarray:
    """Old-graph indices of sources whose PPR vector may move by more than ``tol`` (L1)."""
    present = [c for c in changed if _has(old, c)]
    if not present:
        return np.zeros(0, np.int64)
    threshold = alpha ** 2 * tol / (2 * (1 - alpha))
    r_max = threshold / 2
    mass = reverse_push_mass(old, old.index_of(present), alpha, r_max)
    return np.flatnonzero(mass + r_max >= threshold).astype(np.int64)


def _has(graph: CsrGraph, node_id: str) -> bool:
    i = np.searchsorted(graph.ids, node_id)
    return bool(i < graph.num_nodes and graph.ids[i] == node_id)


def sources_within_hops(graph: CsrGraph, seeds: np.ndarray, hops: int) -> np.ndarray:
    """(n,) bool: nodes with a path of at most ``hops`` out-edges into ``seeds`` (the seeds included)."""
    mask = np.zeros(graph.num_nodes, bool)
    mask[np.asarray(seeds, np.int64)] = True
    if hops <= 0 or not mask.any():
        return mask
    src = np.repeat(np.arange(graph.num_nodes, dtype=np.int64), np.diff(graph.indptr))
    frontier = mask.copy()
    for _ in range(hops):
        reached = np.zeros(graph.num_nodes, bool)
        reached[src[frontier[graph.indices]]] = True  # u -> v with v on the frontier
        frontier = reached & ~mask
        if not frontier.any():
            break
        mask |= frontier
    return mask


def refresh_plan(old: CsrGraph, new: CsrGraph, config: PprConfig, changed: list[str] | None = None,
                 tol: float = 1e-3, sources: list[str] | None = None,
                 hops: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(recompute, wanted, changed): masks over the new graph's nodes. Besides new and changed nodes,
    recompute every source whose PPR vector can move by more than ``tol`` (L1; ``hops`` None, the bound
    rule), or every source with a path of at most ``hops`` edges into a changed node (the hops rule: not
    a bound, measured in docs/neighbours.md, "Incremental refresh")."""
    import pyarrow as pa
    import pyarrow.compute as pc

    new_ids, old_ids = new.id_array, old.id_array
    changed = changed if changed is not None else changed_nodes(old, new)
    is_new = pc.invert(pc.is_in(new_ids, value_set=old_ids)).to_numpy(zero_copy_only=False)
    changed_mask = _mask_of(pa.array(changed, pa.string()), new_ids) | is_new
    if hops is None:
        stale = affected_sources(old, sorted(set(changed) | set(new_ids.filter(pa.array(is_new)).to_pylist())),
                                 config.alpha, tol)
        redo = changed_mask | _mask_of(old_ids.take(pa.array(stale, pa.int64())), new_ids)
    else:
        redo = sources_within_hops(new, np.flatnonzero(changed_mask), hops)
    wanted = _mask_of(pa.array(sources, pa.string()), new_ids) if sources is not None else np.ones(new.num_nodes, bool)
    return redo & wanted, wanted, changed_mask


def merge_candidates(new: CsrGraph, previous: "pa.Table", fresh: Candidates, redo: np.ndarray,
                     wanted: np.ndarray) -> "pa.Table":
    """``fresh`` rows for the ``redo`` sources, ``previous`` rows for the other ``wanted`` ones, minus
    neighbours that left the graph (ranks renumbered); ordered by (node, rank).

    Works on node indices: ids are looked up once per distinct value (``previous`` may hold dictionary
    columns), and the 100M-row merge is a merge of two sorted integer sequences (sorting 100M id strings
    takes minutes)."""

    started = time.monotonic()
    new_ids = new.id_array
    node = positions_in(previous.column("node_id"), new_ids)  # -1: the node left the graph
    nbr = positions_in(previous.column("neighbour_id"), new_ids)
    keep = node >= 0
    keep[keep] = wanted[node[keep]] & ~redo[node[keep]]
    gone = keep & (nbr < 0)  # a neighbour that left the graph
    keep &= nbr >= 0
    node, nbr = node[keep], nbr[keep]
    rank = previous.column("rank").to_numpy()[keep].astype(np.int32)
    score = previous.column("ppr_score").to_numpy()[keep]
    del previous, keep
    looked_up = time.monotonic()
    if gone.any():
        order = np.lexsort((rank, node))
        node, nbr, score = node[order], nbr[order], score[order]
        rank = _ranks_in_groups(node)
    f_node, f_nbr, f_rank, f_score = fresh.flat()
    width = int(max(rank.max(initial=0), f_rank.max(initial=0))) + 1
    key, f_key = node * width + rank, f_node * width + f_rank
    total = len(key) + len(f_key)
    if len(key) < 2 or np.all(key[1:] >= key[:-1]):  # as ppr publishes it: merge, no sort
        f_at = np.searchsorted(key, f_key) + np.arange(len(f_key))
        k_at = np.ones(total, bool)
        k_at[f_at] = False
        k_at = np.flatnonzero(k_at)
    else:
        order = np.argsort(np.concatenate([key, f_key]))
        where = np.empty(total, np.int64)
        where[order] = np.arange(total)
        k_at, f_at = where[:len(key)], where[len(key):]
    del key, f_key

    def place(kept: np.ndarray, new_part: np.ndarray) -> np.ndarray:
        out = np.empty(total, np.result_type(kept, new_part))
        out[k_at], out[f_at] = kept, new_part
        return out

    table = candidates_table(new_ids, place(node, f_node), place(nbr, f_nbr), place(rank, f_rank),
                             place(score, f_score))
    log.info("incremental ppr: %d kept + %d fresh rows merged in %.1fs (ids looked up in %.1fs)", total - len(f_at),
             len(f_at), time.monotonic() - started, looked_up - started)
    return table


def incremental_candidates(old: CsrGraph, new: CsrGraph, previous: "pa.Table", config: PprConfig,
                           changed: list[str] | None = None, tol: float = 1e-3,
                           sources: list[str] | None = None, hops: int | None = None,
                           previous_rows: "pa.Table | None" = None, save_rows=None) -> tuple["pa.Table", dict]:
    """Candidates on ``new``: recomputed where needed (``refresh_plan``), copied from ``previous`` elsewhere;
    ``propagate`` sweeps warm from ``previous_rows`` (a ``ppr_rows`` table) when given."""
    return _refresh(old, new, lambda: previous, config, changed, tol, sources, hops, lambda: previous_rows,
                    save_rows)


def plan_warm_start(old: CsrGraph, new: CsrGraph, config: PprConfig, previous_rows: "pa.Table | None",
               changed: np.ndarray, hops: int | None) -> "WarmStart | None":
    """The previous version's rows on the new graph, to sweep only the nodes within ``hops`` +
    WARM_EXTRA_HOPS hops of a change (WARM_SWEEPS sweeps); None: sweep every row from the cold start."""
    from g2i_core.ppr.propagate import WarmStart
    from g2i_core.ppr.rows import rows_on_graph

    if previous_rows is None:
        return None
    placed = rows_on_graph(previous_rows, old.id_array, new.id_array, config.row_k, config.alpha)
    if placed is None:
        return None
    reach = (hops if hops is not None else 1) + WARM_EXTRA_HOPS
    nodes = np.flatnonzero(sources_within_hops(new, np.flatnonzero(changed), reach)).astype(np.int64)
    return WarmStart(*placed, nodes=nodes, sweeps=WARM_SWEEPS)


def _refresh(old: CsrGraph, new: CsrGraph, read_previous, config: PprConfig, changed: list[str] | None,
             tol: float, sources: list[str] | None, hops: int | None, read_rows=None,
             save_rows=None) -> tuple["pa.Table", dict]:
    """``read_rows``: returns the previous version's ``ppr_rows`` (or None) to warm-start from;
    ``save_rows(graph, row_idx, row_val)``: called with this run's rows before the merge, so they are
    written and freed before the previous table is read."""
    if config.method in SPARK_METHODS:
        raise ValueError("incremental refresh runs the single-machine methods (auto, push, propagate, exact); "
                         "the recomputed set is small by design")
    started = time.monotonic()
    redo, wanted, changed_mask = refresh_plan(old, new, config, changed, tol, sources, hops)
    redo_idx = np.flatnonzero(redo).astype(np.int64)
    log.info("incremental ppr: %d changed nodes -> %d of %d sources to recompute (%.1fs)", int(changed_mask.sum()),
             len(redo_idx), int(wanted.sum()), time.monotonic() - started)
    rows = config.method == "propagate" and sources is None  # rows of every node: what the next night warm-starts
    warm = plan_warm_start(old, new, config, read_rows(), changed_mask, hops) if rows and read_rows else None
    fresh = compute_candidates(new, config, redo_idx, warm=warm, keep_rows=rows)
    swept = {"rows": "warm" if warm else "cold", "swept": len(warm.nodes) if warm else new.num_nodes,
             "sweeps": warm.sweeps if warm else config.sweeps} if rows else {}
    if fresh.rows is not None and save_rows is not None:
        save_rows(new, *fresh.rows)
    fresh.rows = warm = None  # the rows are written: free them before the previous table is read
    # read only now: the propagated rows are freed, and the previous table is the other large thing
    table = merge_candidates(new, read_previous(), fresh, redo, wanted)
    stats = {"changed": int(changed_mask.sum()), "recomputed": len(redo_idx), "kept": int(wanted.sum()) - len(redo_idx),
             "rule": "bound" if hops is None else "hops", **({"tol": tol} if hops is None else {"hops": hops})}
    stats.update(swept)
    log.info("incremental ppr: %d recomputed, %d kept, %d rows in %.1fs", stats["recomputed"], stats["kept"],
             table.num_rows, time.monotonic() - started)
    return table, stats


def _mask_of(values: "pa.Array", pool: "pa.Array") -> np.ndarray:
    """(len(pool),) bool: which pool entries are among ``values``."""
    mask = np.zeros(len(pool), bool)
    at = positions_in(values, pool)
    mask[at[at >= 0]] = True
    return mask


def _ranks_in_groups(groups: np.ndarray) -> np.ndarray:
    """Ranks 1..n within each run of equal values of ``groups`` (rows sorted by group, then old rank)."""
    n = len(groups)
    starts = np.ones(n, bool)
    starts[1:] = groups[1:] != groups[:-1]
    first = np.maximum.accumulate(np.where(starts, np.arange(n), 0))  # row where each group's run begins
    return (np.arange(n) - first + 1).astype(np.int32)


def refresh_candidates(settings: "Settings", config: PprConfig, out: "Storage", *, edges_uri: str,
                       previous_edges_uri: str, changed_uri: str | None, refresh_tol: float,
                       nodes_uri: str | None = None, hops: int | None = None, previous_manifest: dict | None = None,
                       pin: str | None = None, previous_pin: str | None = None,
                       save_rows=None, warm_start: bool = True) -> tuple["pa.Table", dict]:
    """The CLI's incremental mode: previous candidates are ``previous_manifest``'s rows (default: the live
    ``ppr_candidates`` in ``out``), and the ``ppr_rows`` committed with them warm-start the sweeps; the graphs
    are read pinned to ``pin`` and ``previous_pin``. ``save_rows``: see ``_refresh``."""
    from g2i_core.ppr.io import load_graph, load_node_ids
    from g2i_core.ppr.rows import TABLE as ROWS

    new = load_graph(edges_uri, settings, use_weights=config.use_weights, pin=pin)
    old = load_graph(previous_edges_uri, settings, use_weights=config.use_weights, pin=previous_pin)
    changed = load_node_ids(changed_uri, settings) if changed_uri else None
    sources = load_node_ids(nodes_uri, settings) if nodes_uri else None

    def read_previous() -> "pa.Table":
        return out.read_table("ppr_candidates", manifest=previous_manifest, dictionary=["node_id", "neighbour_id"])

    def read_rows() -> "pa.Table | None":
        commit = (previous_manifest or out.manifest("ppr_candidates")).get("commit", {})
        if ROWS not in commit:
            log.info("incremental ppr: the previous version has no %s; sweeping every row cold", ROWS)
            return None
        return out.read_table(ROWS, manifest=commit[ROWS])

    return _refresh(old, new, read_previous, config, changed, refresh_tol, sources, hops,
                    read_rows if warm_start else None, save_rows)
