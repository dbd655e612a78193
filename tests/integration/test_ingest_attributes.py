"""``--source attributes``: an item table -> nodes + the bounded projection through shared values
(real local Spark, real S3 server); exact counts from the artworks sample's truth file."""

import csv
import gzip
import io
import json

import pytest

from g2i_core.ingest.attributes import projection_edges, projection_pairs
from g2i_core.ingest.job import IngestConfig, run_ingest

pytestmark = [pytest.mark.spark, pytest.mark.s3]
DAY, NEXT_DAY = "2026-11-26", "2026-11-27"


@pytest.fixture(scope="module")
def art_dir(tmp_path_factory):
    from g2i_core.sample.generator import generate_sample

    out = tmp_path_factory.mktemp("art")
    generate_sample(out, nodes=120, seed=5, formats=("attributes",), render_limit=0)
    return out


def _edges(storage) -> list[tuple]:
    return sorted((e["src"], e["dst"], e["relation"]) for e in storage.read_table("edges").to_pylist())


def _reference(storage, link_on, cap) -> list[tuple]:
    """The projection recomputed in plain Python from the published nodes' attrs."""
    nodes = storage.read_table("nodes").to_pylist()
    return projection_pairs({n["node_id"]: json.loads(n["attrs"]) for n in nodes}, link_on, cap)


def _degrees(edges) -> tuple[dict, dict]:
    out, inn = {}, {}
    for s, d, _ in edges:
        out[s] = out.get(s, 0) + 1
        inn[d] = inn.get(d, 0) + 1
    return out, inn


def test_artworks_sample_matches_truth(spark, s3_storage, art_dir):
    truth = json.loads((art_dir / "truth" / "attributes.json").read_text())
    raw = s3_storage.uri("raw", "artworks.csv.gz")
    s3_storage.put_bytes(raw, (art_dir / "raw" / "artworks.csv.gz").read_bytes())
    report = run_ingest(spark, s3_storage, IngestConfig(source="attributes", raw_uri=raw, logical_date=DAY,
                                                        link_on=("artist", "genre")))

    assert (report.lines_in, report.nodes_out, report.duplicates, report.quarantined) == (
        truth["lines"], truth["nodes_expected"], truth["duplicates"], truth["quarantined"])
    assert report.quarantine_reasons == truth["quarantine_reasons"]
    assert report.edges_by_relation == truth["edges_by_relation"]
    quarantine = s3_storage.read_table("quarantine").to_pylist()
    assert {str(q["line_no"]): q["reason"] for q in quarantine} == truth["quarantine_lines"]
    assert all(q["raw"] and q["detail"] for q in quarantine if q["reason"] != "missing_id")
    assert any("scheme" in q["detail"] for q in quarantine if q["reason"] == "bad_field")

    nodes = s3_storage.read_table("nodes").to_pylist()
    assert len(nodes) == truth["nodes_expected"] and all(n["node_id"].startswith("item:w") for n in nodes)
    assert all(n["dataset"] == "attributes" for n in nodes)
    assert not any("&amp;" in n["text"] or "<i>" in n["text"] for n in nodes)
    assert all(n["image_url"] is None or n["image_url"].startswith("http://") for n in nodes)
    assert sum(n["image_url"] is None for n in nodes) == truth["no_image"]
    multiline = [n for n in nodes if "Second paragraph" in json.loads(n["attrs"]).get("description", "")]
    assert len(multiline) == truth["multiline_rows"]
    # the duplicates' complete copies won (their older copies lack the date)
    assert all("date" in json.loads(n["attrs"]) for n in nodes)

    edges = _edges(s3_storage)
    assert edges == _reference(s3_storage, ("artist", "genre"), 10)
    assert not any(s == d for s, d, _ in edges) and len(set(edges)) == len(edges)
    out, inn = _degrees(edges)
    assert max(out.values()) <= 10 * 2 and max(inn.values()) <= 10 * 2
    assert set(edges) == {(d, s, r) for s, d, r in edges}  # every link in both directions


def _write_csv(path, rows, columns=("id", "title", "image_url", "artist", "genre")):
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    w.writerows([r.get(c, "") for c in columns] for r in rows)
    with gzip.open(path, "wt") as fh:
        fh.write(buf.getvalue())


def _items(ids, artist_mod=7, genre="portrait"):
    return [{"id": f"a{i}", "title": f"Work {i}", "image_url": f"https://img.example.org/{i}.png",
             "artist": f"artist {i % artist_mod}", "genre": genre} for i in ids]


@pytest.mark.parametrize("cap", [4, 3])
def test_projection_degree_is_bounded_on_a_skewed_group(spark, cap):
    """5,000 items share one genre (and fall into 50 artists of 100): nobody's degree exceeds cap x 2."""
    n = 5000
    rows = [(f"item:{i}", json.dumps({"genre": "portrait", "artist": f"artist {i % 50}"})) for i in range(n)]
    nodes = spark.createDataFrame(rows, "node_id string, attrs string")
    edges = [(r["src"], r["dst"], r["relation"]) for r in projection_edges(nodes, ("genre", "artist"), cap).collect()]

    out, inn = _degrees(edges)
    assert max(out.values()) <= cap * 2 and max(inn.values()) <= cap * 2
    genre = [e for e in edges if e[2] == "genre"]
    assert len(genre) == n * cap  # the 5k group makes n x cap edges (even cap: a ring; odd: plus a matching)
    assert len(genre) < n * (n - 1) / 1000
    assert len(set(edges)) == len(edges) and not any(s == d for s, d, _ in edges)
    assert set(edges) == {(d, s, r) for s, d, r in edges}
    assert all(out[f"item:{i}"] == 2 * cap for i in range(n))  # every item of a big group is linked, fully
    assert sorted(edges) == projection_pairs({k: json.loads(a) for k, a in rows}, ("genre", "artist"), cap)


def test_small_groups_are_complete_and_singletons_unlinked(spark):
    rows = [("item:a", '{"artist": "x"}'), ("item:b", '{"artist": "x"}'), ("item:c", '{"artist": "x"}'),
            ("item:d", '{"artist": "y"}'), ("item:e", '{}')]
    nodes = spark.createDataFrame(rows, "node_id string, attrs string")
    edges = sorted((r["src"], r["dst"]) for r in projection_edges(nodes, ("artist",), 10).collect())
    assert edges == sorted((f"item:{s}", f"item:{d}") for s in "abc" for d in "abc" if s != d)


def test_determinism_same_edges_whatever_the_row_order(spark, file_storage, tmp_path):
    items = _items(range(400), artist_mod=3)
    _write_csv(tmp_path / "a.csv.gz", items)
    _write_csv(tmp_path / "b.csv.gz", list(reversed(items)))
    runs = []
    for name, store in (("a", "s1"), ("a", "s2"), ("b", "s3")):
        storage = file_storage.child(store)
        run_ingest(spark, storage, IngestConfig(source="attributes", raw_uri=f"file://{tmp_path}/{name}.csv.gz",
                                                logical_date=DAY, link_on=("artist", "genre"),
                                                max_links_per_value=4))
        runs.append(_edges(storage))
    assert runs[0] == runs[1] == runs[2]
    assert len(runs[0]) == 400 * 4 + 400 * 4  # three artist groups of ~133 and one genre group, 2 x 2 each


def test_delta_links_new_items_to_old_ones_like_a_full_ingest(spark, file_storage, tmp_path):
    base, delta = _items(range(60)), _items(range(60, 80))
    delta.append({**base[0], "title": "Work 0, retitled", "artist": "artist 3"})  # an update moves artist
    _write_csv(tmp_path / "base.csv.gz", base)
    _write_csv(tmp_path / "delta.csv.gz", delta)
    _write_csv(tmp_path / "all.csv.gz", base[1:] + delta)
    cfg = dict(source="attributes", link_on=("artist", "genre"), max_links_per_value=4)
    store = file_storage.child("incremental")
    run_ingest(spark, store, IngestConfig(raw_uri=f"file://{tmp_path}/base.csv.gz", logical_date=DAY, **cfg))
    report = run_ingest(spark, store, IngestConfig(raw_uri=f"file://{tmp_path}/delta.csv.gz", logical_date=NEXT_DAY,
                                                   mode="delta", **cfg))
    full = file_storage.child("full")
    run_ingest(spark, full, IngestConfig(raw_uri=f"file://{tmp_path}/all.csv.gz", logical_date=DAY, **cfg))

    assert (report.lines_in, report.nodes_out, report.carried_nodes, report.total_nodes) == (21, 21, 59, 80)
    assert report.changes == {"new": 20, "updated": 1}
    assert _edges(store) == _edges(full)
    assert any(s == "item:a60" and d.startswith("item:a") and int(d[6:]) < 60 for s, d, _ in _edges(store))


def test_parquet_table_and_its_quarantine(spark, file_storage, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({
        "id": ["p1", "p2", None, "p4", "p5", "p6"],
        "title": ["One", "Two", "No id", "Bad url", "Five", "Six"],
        "image_url": ["https://x.org/1.png", None, "https://x.org/3.png", "file:///etc/passwd", None, None],
        "artist": ["a", "a", "a", "a", "b", "a"],
        "year": [1900, 1901, 1902, 1903, None, 1905],
    })
    pq.write_table(table, tmp_path / "items.parquet")
    report = run_ingest(spark, file_storage, IngestConfig(
        source="attributes", raw_uri=f"file://{tmp_path}/items.parquet", logical_date=DAY, link_on=("artist",),
        max_quarantine_fraction=0.5))
    assert (report.lines_in, report.nodes_out, report.quarantined) == (6, 4, 2)
    assert report.quarantine_reasons == {"bad_field": 1, "missing_id": 1}
    q = {r["line_no"]: r for r in file_storage.read_table("quarantine").to_pylist()}
    assert q[3]["reason"] == "missing_id" and q[4]["reason"] == "bad_field" and "'file'" in q[4]["detail"]
    nodes = {n["node_id"]: json.loads(n["attrs"]) for n in file_storage.read_table("nodes").to_pylist()}
    assert nodes["item:p1"] == {"artist": "a", "year": "1900"} and "year" not in nodes["item:p5"]
    assert _edges(file_storage) == sorted((f"item:{s}", f"item:{d}", "artist") for s in ("p1", "p2", "p6")
                                          for d in ("p1", "p2", "p6") if s != d)


def test_missing_link_column_fails_naming_it_and_publishes_nothing(spark, file_storage, tmp_path):
    _write_csv(tmp_path / "t.csv.gz", _items(range(5)))
    with pytest.raises(ValueError, match="--link-on column 'style'"):
        run_ingest(spark, file_storage, IngestConfig(source="attributes", raw_uri=f"file://{tmp_path}/t.csv.gz",
                                                     logical_date=DAY, link_on=("artist", "style")))
    assert not file_storage.is_published("nodes")
