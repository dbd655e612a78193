"""Incremental refresh: only sources that can feel a change are recomputed, and the result matches a
full recompute within the stated tolerance."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from g2i_core.ppr.api import PprConfig
from g2i_core.ppr.exact import exact_candidates, ppr_rows
from g2i_core.ppr.graph import build_graph
from g2i_core.ppr.incremental import (
    WARM_EXTRA_HOPS,
    WARM_SWEEPS,
    changed_nodes,
    incremental_candidates,
    plan_warm_start,
    refresh_plan,
    reverse_push_mass,
)

TOL = 1e-3


def _clustered_edges(seed: int = 0, clusters: int = 12, size: int = 15):
    """Dense clusters joined in a one-way chain by single edges: changes stay local in PPR terms."""
    rng = np.random.default_rng(seed)
    src, dst = [], []
    for c in range(clusters):
        members = [f"c{c:02d}n{i:02d}" for i in range(size)]
        for a in members:
            for b in rng.choice(members, 4, replace=False):
                if a != b:
                    src.append(a)
                    dst.append(str(b))
        if c + 1 < clusters:
            src.append(members[0])
            dst.append(f"c{c + 1:02d}n00")
    return src, dst


def test_reverse_push_bounds_the_mass_on_targets():
    src, dst = _clustered_edges()
    g = build_graph(src, dst)
    targets = g.index_of(["c03n05", "c07n01"])
    est = reverse_push_mass(g, targets, 0.15, r_max=1e-7)
    # the exact dangling-absorbed mass q_s(targets): unnormalised power iteration rows
    import scipy.sparse as sp

    p0 = g.transition_matrix()
    q = 0.15 * np.linalg.inv(np.eye(g.num_nodes) - 0.85 * p0.toarray()) if sp.issparse(p0) else None
    truth = q[:, targets].sum(axis=1)
    assert np.all(est <= truth + 1e-12) and np.all(truth - est <= 1e-7 * g.num_nodes)


def test_incremental_matches_full_recompute_within_tolerance():
    src, dst = _clustered_edges()
    old = build_graph(src, dst)
    # nightly change: cluster 5 gets new internal edges, loses one, and a new node hangs off it
    new_src = src + ["c05n03", "c05n04", "c05n07", "new01"]
    new_dst = dst + ["c05n09", "c05n11", "new01", "c05n02"]
    drop = new_src.index("c05n06")
    del new_src[drop], new_dst[drop]
    new = build_graph(new_src, new_dst)
    config = PprConfig(method="exact", top_k=10)
    previous = exact_candidates(old, top_k=10).to_arrow(old)

    table, stats = incremental_candidates(old, new, previous, config, tol=TOL)
    assert set(changed_nodes(old, new)) == {"c05n03", "c05n04", "c05n06", "c05n07", "new01"}
    assert 0 < stats["recomputed"] <= 6 * 15 + 1  # at most the clusters that can reach cluster 5
    # clusters after 5 cannot reach it, so they must all be kept
    redone = set(table.column("node_id").to_pylist()) - set(previous.column("node_id").to_pylist())
    assert redone == {"new01"}
    kept_rows = {(r["node_id"], r["neighbour_id"]) for r in table.to_pylist() if "c06" <= r["node_id"] < "d"}
    assert kept_rows == {(r["node_id"], r["neighbour_id"]) for r in previous.to_pylist() if "c06" <= r["node_id"] < "d"}
    full = exact_candidates(new, top_k=10).to_arrow(new)
    assert set(table.column("node_id").to_pylist()) == set(full.column("node_id").to_pylist())

    # every kept score is within TOL of the exact score on the new graph, and top lists agree
    exact_new = ppr_rows(new, np.arange(new.num_nodes), 0.15)
    rows = table.to_pylist()
    for r in rows:
        s, v = new.index_of([r["node_id"], r["neighbour_id"]])
        assert abs(r["ppr_score"] - exact_new[s, v]) <= TOL
    inc = {}
    for r in rows:
        inc.setdefault(r["node_id"], []).append(r["neighbour_id"])
    ref = {}
    for r in full.to_pylist():
        ref.setdefault(r["node_id"], []).append(r["neighbour_id"])
    overlap = np.mean([len(set(inc[n][:5]) & set(ref[n][:5])) / len(ref[n][:5]) for n in ref])
    assert overlap >= 0.95


def test_no_change_recomputes_nothing_and_keeps_previous_rows():
    src, dst = _clustered_edges(seed=3)
    g = build_graph(src, dst)
    previous = exact_candidates(g, top_k=5).to_arrow(g)
    table, stats = incremental_candidates(g, g, previous, PprConfig(method="push", top_k=5), tol=TOL)
    assert stats["recomputed"] == 0
    assert table.to_pylist() == previous.sort_by([("node_id", "ascending"), ("rank", "ascending")]).to_pylist()
    assert isinstance(table, pa.Table)


def test_cli_incremental_refresh(file_storage, tmp_path):
    import pyarrow.parquet as pq

    from g2i_core.cli import main

    src, dst = _clustered_edges(seed=1)
    pq.write_table(pa.table({"src": src, "dst": dst}), tmp_path / "old.parquet")
    pq.write_table(pa.table({"src": src + ["c09n01"], "dst": dst + ["c09n08"]}), tmp_path / "new.parquet")
    common = ["ppr", "--out", file_storage.root, "--top-k", "5", "--method", "exact"]
    assert main([*common, "--edges", f"file://{tmp_path}/old.parquet", "--run-id", "day1"]) == 0
    assert main([*common, "--edges", f"file://{tmp_path}/new.parquet", "--run-id", "day2",
                 "--previous-edges", f"file://{tmp_path}/old.parquet"]) == 0
    stats = file_storage.manifest("ppr_candidates")["extra"]["incremental"]
    assert stats["changed"] == 1 and 0 < stats["recomputed"] <= 10 * 15
    new = build_graph(src + ["c09n01"], dst + ["c09n08"])
    day2 = file_storage.read_table("ppr_candidates")
    assert day2.num_rows == exact_candidates(new, top_k=5).to_arrow(new).num_rows


def _changed_by_sets(old, new) -> list[str]:
    """The definition, one Python set of (target, probability) per node: the oracle for the vectorised one."""
    def out_edges(g):
        rows = (slice(g.indptr[u], g.indptr[u + 1]) for u in range(g.num_nodes))
        return {g.ids[u]: {(g.ids[v], round(float(w), 12)) for v, w in zip(g.indices[r], g.probs[r], strict=True)}
                for u, r in enumerate(rows)}

    a, b = out_edges(old), out_edges(new)
    return sorted(n for n in set(a) | set(b) if a.get(n) != b.get(n))


def test_changed_nodes_matches_the_per_node_definition_on_random_edits():
    rng = np.random.default_rng(1)
    seen_changes = 0
    for _ in range(150):
        n, m = int(rng.integers(1, 30)), int(rng.integers(0, 90))
        src, dst = [f"n{x}" for x in rng.integers(0, n, m)], [f"n{x}" for x in rng.integers(0, n, m)]
        weight = rng.integers(1, 3, m).astype(float)
        old = build_graph(src, dst, weight, extra_nodes=[f"iso{x}" for x in range(int(rng.integers(0, 3)))])
        k = int(rng.integers(0, 5))  # replace the last k edges, sometimes with new nodes; reweight one
        new_weight = list(weight[:m - k]) + [1.0] * k
        if m and rng.random() < 0.3:
            new_weight[0] += 1
        new = build_graph(src[:m - k] + [f"n{x}" for x in rng.integers(0, n + 3, k)],
                          dst[:m - k] + [f"n{x}" for x in rng.integers(0, n + 3, k)], new_weight,
                          extra_nodes=[f"iso{x}" for x in range(int(rng.integers(0, 3)))])
        expected = _changed_by_sets(old, new)
        assert changed_nodes(old, new) == expected
        seen_changes += bool(expected)
    assert seen_changes > 50  # the edits really changed something in most trials


def test_ranks_restart_at_one_for_every_node():
    from g2i_core.ppr.incremental import _ranks_in_groups

    assert _ranks_in_groups(np.array([4, 4, 4, 7, 9, 9])).tolist() == [1, 2, 3, 1, 1, 2]
    assert len(_ranks_in_groups(np.zeros(0, np.int64))) == 0


def test_merge_drops_neighbours_that_left_and_reads_dictionary_columns():
    from g2i_core.ppr.candidates import Candidates
    from g2i_core.ppr.incremental import merge_candidates

    new = build_graph(["a", "b", "c"], ["b", "c", "a"])  # "x" left the graph
    still = build_graph(["a", "b", "c", "x"], ["b", "c", "a", "a"])  # nothing left: the rows are merged as they are
    previous = pa.table({"node_id": ["a", "a", "a", "b", "b", "x"], "rank": pa.array([1, 2, 3, 1, 2, 1], pa.int32()),
                         "neighbour_id": ["x", "b", "c", "c", "a", "a"], "ppr_score": [.5, .4, .3, .6, .2, .9]})
    fresh = Candidates(np.array([2]), np.array([[0, 1]]), np.array([[.7, .1]]))  # "c" recomputed
    redo, wanted = np.array([False, False, True]), np.ones(3, bool)
    expected = [("a", 1, "b", .4), ("a", 2, "c", .3), ("b", 1, "c", .6), ("b", 2, "a", .2), ("c", 1, "a", .7),
                ("c", 2, "b", .1)]
    shuffled = previous.take([5, 3, 0, 4, 2, 1])  # not in (node, rank) order: sorted, not merged
    for table in (previous, shuffled, previous.cast(pa.schema([("node_id", pa.dictionary(pa.int32(), pa.string())),
                                                       ("rank", pa.int32()),
                                                       ("neighbour_id", pa.dictionary(pa.int32(), pa.string())),
                                                       ("ppr_score", pa.float64())]))):
        merged = merge_candidates(new, table, fresh, redo, wanted)
        assert [tuple(r.values()) for r in merged.to_pylist()] == expected
        assert merged.schema.field("node_id").type == pa.string()
        fresh_c = Candidates(np.array([2]), np.array([[0, 1]]), np.array([[.7, .1]]))
        merged = merge_candidates(still, table, fresh_c, np.array([False, False, True, False]), np.ones(4, bool))
        assert [tuple(r.values()) for r in merged.to_pylist()] == [
            ("a", 1, "x", .5), ("a", 2, "b", .4), ("a", 3, "c", .3), ("b", 1, "c", .6), ("b", 2, "a", .2),
            ("c", 1, "a", .7), ("c", 2, "b", .1), ("x", 1, "a", .9)]


def test_sources_within_hops_is_breadth_first_search_on_reversed_edges():
    from g2i_core.ppr.graph import powerlaw_graph
    from g2i_core.ppr.incremental import sources_within_hops

    for seed in range(5):
        g = powerlaw_graph(200, avg_degree=3, seed=seed)
        seeds = np.random.default_rng(seed).choice(g.num_nodes, 3, replace=False)
        into = {v: set() for v in range(g.num_nodes)}  # v -> nodes with an edge into v
        for u in range(g.num_nodes):
            for v in g.indices[g.indptr[u]:g.indptr[u + 1]]:
                into[int(v)].add(u)
        for hops in (0, 1, 2, 3):
            reached, frontier = set(seeds.tolist()), set(seeds.tolist())
            for _ in range(hops):
                frontier = {u for v in frontier for u in into[v]} - reached
                reached |= frontier
            assert set(np.flatnonzero(sources_within_hops(g, seeds, hops)).tolist()) == reached


def _publish_graph(storage, src, dst, run_id, ds):
    """graph_edges + graph_nodes as one commit, as build-graph publishes them."""
    from g2i_core.ppr.graph import edges_table

    graph = build_graph(src, dst)
    attempts = []
    nodes = pa.table({"node_id": graph.ids.tolist()})
    for name, table in (("graph_edges", edges_table(graph)), ("graph_nodes", nodes)):
        attempt = storage.begin(name, run_id)
        storage.write_parquet(f"{attempt.uri}/part-0.parquet", table)
        attempts.append(attempt)
    storage.commit(attempts, logical_date=ds)
    return graph


def test_incremental_run_refreshes_the_live_version_and_bounds_its_age(file_storage):
    from g2i_core.config import Settings
    from g2i_core.ppr.api import compute_candidates
    from g2i_core.ppr.incremental import sources_within_hops
    from g2i_core.ppr.pipeline import run_ppr

    settings = Settings.load(storage_root=file_storage.root)
    root = file_storage.root
    config = PprConfig(top_k=5)  # auto: propagate, as the nightly DAG runs it

    def run(day, **kw):
        return run_ppr(settings, config, edges_uri=root, out_uri=root, run_id=day, graph_run_id=day, **kw)

    src, dst = _clustered_edges(seed=2)
    old = _publish_graph(file_storage, src, dst, "day1", "2026-11-01")
    day1 = run("day1", incremental=True)
    assert day1["extra"]["incremental"] == {
        "full_because": "no published ppr_candidates computed from an earlier graph"}
    assert day1["extra"]["graph_run_id"] == "day1"
    previous = file_storage.read_table("ppr_candidates")
    # propagate's rows are committed with the candidates, in the graph's node order
    assert day1["commit"]["ppr_rows"]["rows"] == old.num_nodes
    day1_rows = file_storage.read_table("ppr_rows", manifest=day1["commit"]["ppr_rows"])
    assert day1_rows.column("node_id").to_pylist() == old.ids.tolist()

    # day 2: cluster 5 rewires one node and gains a new one
    new_src, new_dst = src + ["c05n03", "new01"], dst + ["new01", "c05n02"]
    new = _publish_graph(file_storage, new_src, new_dst, "day2", "2026-11-02")
    day2 = run("day2", incremental=True, refresh_hops=1)
    stats = day2["extra"]["incremental"]
    assert (stats["rule"], stats["hops"], stats["previous_run_id"], stats["age"]) == ("hops", 1, "day1", 1)
    redo = sources_within_hops(new, new.index_of(["c05n03", "new01"]), 1)
    assert stats["recomputed"] == int(redo.sum()) and 0 < stats["recomputed"] < new.num_nodes // 4
    # the sweeps continued from day 1's rows, over the nodes within 2 hops of the change only
    swept = sources_within_hops(new, new.index_of(["c05n03", "new01"]), 1 + WARM_EXTRA_HOPS)
    assert (stats["rows"], stats["swept"], stats["sweeps"]) == ("warm", int(swept.sum()), WARM_SWEEPS)
    assert stats["swept"] < new.num_nodes // 2
    table = file_storage.read_table("ppr_candidates")
    rows = {}
    for r in table.to_pylist():
        rows.setdefault(r["node_id"], []).append((r["rank"], r["neighbour_id"], r["ppr_score"]))
    propagate = PprConfig(method="propagate", top_k=5)
    warm = plan_warm_start(old, new, propagate, day1_rows, refresh_plan(old, new, propagate, hops=1)[2], 1)
    fresh = compute_candidates(new, propagate, np.flatnonzero(redo), warm=warm).to_arrow(new).to_pylist()
    expected = {}
    for r in fresh:  # recomputed sources: propagate warm-started from day 1's rows
        expected.setdefault(r["node_id"], []).append((r["rank"], r["neighbour_id"], r["ppr_score"]))
    # and those are as close to exact PPR as a full computation's: warm rows are not worse than cold ones
    exact = dict(zip(new.ids[redo], ppr_rows(new, np.flatnonzero(redo), alpha=0.15), strict=True))
    full = compute_candidates(new, propagate, np.flatnonzero(redo)).to_arrow(new).to_pylist()

    def error(entries):
        return max(abs(r["ppr_score"] - exact[r["node_id"]][new.index_of([r["neighbour_id"]])[0]]) for r in entries)

    assert error(fresh) <= error(full) < 2e-3
    for r in previous.to_pylist():  # every other source: its previous rows
        if not redo[new.index_of([r["node_id"]])[0]]:
            expected.setdefault(r["node_id"], []).append((r["rank"], r["neighbour_id"], r["ppr_score"]))
    assert rows == expected
    assert table.column("node_id").to_pylist() == sorted(table.column("node_id").to_pylist())

    # a retry of day 2 refreshes day 1 again (not its own output), with the same answer
    again = run("day2", incremental=True, refresh_hops=1)
    assert again["extra"]["incremental"]["previous_run_id"] == "day1"
    assert again["extra"]["incremental"]["age"] == 1
    assert file_storage.read_table("ppr_candidates").to_pylist() == table.to_pylist()

    # day 3: one refresh in a row is the limit, so every source is computed again
    _publish_graph(file_storage, new_src + ["c08n01"], new_dst + ["c08n07"], "day3", "2026-11-03")
    day3 = run("day3", incremental=True, refresh_max_age=1)
    assert "refresh_max_age 1" in day3["extra"]["incremental"]["full_because"]
    # a backfill of day 2 after day 3 refreshes day 1, the version before its own date
    backfill = run("day2", incremental=True, warm_start=False)  # (cold sweeps asked for: every row swept)
    assert (backfill["extra"]["incremental"]["previous_run_id"], backfill["logical_date"]) == ("day1", "2026-11-02")
    assert (backfill["extra"]["incremental"]["rows"], backfill["extra"]["incremental"]["swept"]) == \
        ("cold", new.num_nodes)
    assert file_storage.manifest("ppr_candidates")["run_id"] == "day3"  # day 3 stays live
    # other settings than the live version: its rows answer another question
    _publish_graph(file_storage, new_src, new_dst, "day4", "2026-11-04")
    day4 = run_ppr(settings, PprConfig(top_k=6), edges_uri=root, out_uri=root, run_id="day4", graph_run_id="day4",
                   incremental=True)
    assert day4["extra"]["incremental"]["full_because"] == "settings changed since run day3: top_k"


def test_refresh_computes_every_source_when_the_base_graph_is_gone(file_storage):
    """Retention removed the graph version the base was computed from: no diff is possible, so the
    night computes every source (and says why) instead of failing."""
    from g2i_core.config import Settings
    from g2i_core.ppr.pipeline import run_ppr

    settings = Settings.load(storage_root=file_storage.root)
    root = file_storage.root
    src, dst = _clustered_edges(seed=4)
    _publish_graph(file_storage, src, dst, "day1", "2026-11-01")
    run_ppr(settings, PprConfig(top_k=5), edges_uri=root, out_uri=root, run_id="day1", graph_run_id="day1")
    _publish_graph(file_storage, src + ["c02n01"], dst + ["c02n09"], "day2", "2026-11-02")
    file_storage.delete(file_storage.uri("graph_nodes", "_manifests", "day1.json"))
    day2 = run_ppr(settings, PprConfig(top_k=5), edges_uri=root, out_uri=root, run_id="day2", graph_run_id="day2",
                   incremental=True)
    assert day2["extra"]["incremental"]["full_because"] == \
        "graph run day1 (what ppr_candidates run day1 was computed from) is no longer published"
    assert day2["rows"] > 0


def test_pinned_graph_load_never_falls_back_to_the_live_graph(file_storage):
    import pytest

    from g2i_core.config import Settings
    from g2i_core.ppr.io import load_graph

    settings = Settings.load(storage_root=file_storage.root)
    src, dst = _clustered_edges(seed=5)
    _publish_graph(file_storage, src, dst, "day1", "2026-11-01")
    _publish_graph(file_storage, src + ["c01n01"], dst + ["c01n05"], "day2", "2026-11-02")
    assert load_graph(file_storage.root, settings, pin="day1").num_edges == build_graph(src, dst).num_edges
    file_storage.delete(file_storage.uri("graph_nodes", "_manifests", "day1.json"))
    file_storage.delete(file_storage.uri("graph_edges", "_manifests", "day1.json"))
    with pytest.raises(FileNotFoundError, match="graph run 'day1' is not published"):
        load_graph(file_storage.root, settings, pin="day1")  # it used to return day 2's graph


def test_previous_rows_move_onto_the_new_graph():
    """Rows follow their node to its new position, entries of nodes that left are dropped (order kept),
    new nodes start cold; rows of another graph or width are refused."""
    from g2i_core.ppr.rows import rows_on_graph, rows_table

    old_ids, new_ids = pa.array(["a", "b", "c", "d"]), pa.array(["a", "c", "d", "e"])
    idx = np.array([[1, 2, 0], [1, 3, -1], [2, -1, -1], [3, 1, 0]], np.int32)  # old positions: a b c d
    val = np.array([[0.5, 0.3, 0.15], [0.4, 0.2, 0], [0.15, 0, 0], [0.2, 0.1, 0.05]], np.float32)
    previous = rows_table(old_ids, idx, val)
    row_idx, row_val = rows_on_graph(previous, old_ids, new_ids, row_k=3, alpha=0.15)
    assert row_idx.tolist() == [[1, 0, -1],  # a: b left, c (now 1) and a keep their order
                                [1, -1, -1],  # c
                                [2, 0, -1],  # d: d, a (b left)
                                [3, -1, -1]]  # e: new, cold
    assert np.allclose(row_val, [[0.3, 0.15, 0], [0.15, 0, 0], [0.2, 0.05, 0], [0.15, 0, 0]])
    assert rows_on_graph(previous, pa.array(["b", "a", "c", "d"]), new_ids, row_k=3, alpha=0.15) is None
    assert rows_on_graph(previous, old_ids, new_ids, row_k=4, alpha=0.15) is None


def test_warm_refresh_agrees_with_a_full_computation():
    """On a random graph with a 1% delta, the warm-started refresh's top-10 is as close to a full
    computation on the new graph as the cold refresh's."""
    from g2i_core.ppr.api import compute_candidates
    from g2i_core.ppr.rows import rows_table

    rng = np.random.default_rng(5)
    n = 3000
    ids = [f"n{i:05d}" for i in range(n)]
    src = rng.integers(0, n, 8 * n)
    dst = np.minimum((rng.pareto(1.5, 8 * n) * 30).astype(int), n - 1)
    old = build_graph([ids[i] for i in src], [ids[i] for i in dst])
    edited = rng.choice(n, n // 100, replace=False)
    keep = ~np.isin(src, edited)
    new_src = np.concatenate([src[keep], np.repeat(edited, 5)])
    new_dst = np.concatenate([dst[keep], rng.integers(0, n, 5 * len(edited))])
    new = build_graph([ids[i] for i in new_src], [ids[i] for i in new_dst])
    config = PprConfig(method="propagate", top_k=10)
    day1 = compute_candidates(old, config, keep_rows=True)
    previous, rows = day1.to_arrow(old), rows_table(old.id_array, *day1.rows)
    saved = []
    warm, warm_stats = incremental_candidates(old, new, previous, config, hops=1, previous_rows=rows,
                                              save_rows=lambda graph, i, v: saved.append((graph, i.copy())))
    cold, cold_stats = incremental_candidates(old, new, previous, config, hops=1)
    assert (warm_stats["rows"], cold_stats["rows"]) == ("warm", "cold")
    assert warm_stats["swept"] < n // 2 and cold_stats["swept"] == n
    assert saved[0][0] is new and saved[0][1].shape == (n, config.row_k)  # the rows the next night starts from
    full = compute_candidates(new, config).to_arrow(new)

    def agreement(table):
        pairs = set(zip(table.column("node_id").to_pylist(), table.column("neighbour_id").to_pylist(), strict=True))
        reference = list(zip(full.column("node_id").to_pylist(), full.column("neighbour_id").to_pylist(), strict=True))
        return sum(p in pairs for p in reference) / len(reference)

    assert agreement(warm) >= agreement(cold) - 0.002 and agreement(warm) > 0.97
