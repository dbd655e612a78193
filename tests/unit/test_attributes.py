"""The attributes source without Spark: row checks, CSV/Parquet reading with line numbers, the link rule."""

import gzip
import json

import pytest

from g2i_core.ingest import attributes as A
from g2i_core.ingest.job import IngestConfig
from g2i_core.ingest.parsers import MAX_LINE_BYTES, RecordError
from g2i_core.storage import Storage


def _row(**kw):
    return {"id": "1", "title": "T", "image_url": "https://img.example.org/1.png", "artist": "x", **kw}


@pytest.mark.parametrize("url, fragment", [
    ("javascript:alert(1)", "scheme 'javascript'"), ("file:///etc/passwd", "scheme 'file'"),
    ("ftp://h/x.png", "scheme 'ftp'"), ("http:///nohost.png", "no host"), ("https://a b/x", "whitespace"),
    ("//img.example.org/x.png", "scheme ''"),
])
def test_image_url_must_be_http_with_a_host(url, fragment):
    with pytest.raises(RecordError, match=fragment) as exc:
        A.parse_item(_row(image_url=url))
    assert exc.value.reason == "bad_field"


def test_item_fields():
    item = A.parse_item(_row(title="Caf&eacute; <i>Nuit</i>", description="Long text", genre="  ", image_url=""))
    assert item["node_id"] == "item:1" and item["title"] == "Café Nuit" and item["image_url"] is None
    assert json.loads(item["attrs"]) == {"artist": "x", "description": "Long text"}  # empty values are dropped
    assert A.parse_item(_row(title=""))["text"] == ""
    assert A.parse_item(_row(title="", description="D"))["text"] == "D"
    with pytest.raises(RecordError) as exc:
        A.parse_item(_row(id="  "))
    assert exc.value.reason == "missing_id"


@pytest.mark.parametrize("cap", range(1, 9))
def test_link_rule_bounds_degree_and_is_symmetric(cap):
    for n in range(1, 40):
        links = {(p, (p + j) % n) for p in range(n) for j in A.link_offsets(p, n, cap)}
        assert len(links) == sum(len(A.link_offsets(p, n, cap)) for p in range(n))  # no pair twice
        assert all(a != b for a, b in links)
        assert links == {(b, a) for a, b in links}  # both directions
        degree = [sum(1 for a, _ in links if a == p) for p in range(n)]
        assert max(degree, default=0) <= cap
        if n <= cap + 1:
            assert len(links) == n * (n - 1)
        else:
            assert min(degree) >= cap - 1  # odd n and odd cap: one item misses the matching


def test_projection_pairs_bound_on_a_skewed_value():
    items = {f"item:{i}": {"genre": "portrait", "artist": f"a{i % 3}"} for i in range(2000)}
    edges = A.projection_pairs(items, ("genre", "artist"), 6)
    out = {}
    for s, _, _ in edges:
        out[s] = out.get(s, 0) + 1
    assert max(out.values()) == 6 * 2 and len(edges) == 2000 * 6 * 2
    # the order is a hash of (attribute, value, id): the same links whatever order the items come in
    assert A.projection_pairs(dict(reversed(list(items.items()))), ("genre", "artist"), 6) == edges


def _store(tmp_path, name, text: bytes):
    path = tmp_path / name
    path.write_bytes(gzip.compress(text) if name.endswith(".gz") else text)
    return Storage(f"file://{tmp_path}"), f"file://{path}"


def test_csv_rows_keep_their_physical_line_numbers(tmp_path):
    body = (b'id,title,image_url,artist\n'
            b'1,One,https://h.org/1.png,x\n'
            b'\n'
            b'2,"Two\nlines",,x\n'
            b'3,"Bro"ken,,x\n'
            b'4,too,few\n'
            b'5,Bad \xff byte,,x\n'
            b',No id,,x\n'
            b'6,' + b'A' * (MAX_LINE_BYTES + 10) + b',,x\n'
            b'7,Seven,,y\n')
    storage, uri = _store(tmp_path, "t.csv.gz", body)
    rows = list(A.iter_parsed(storage, uri, ("artist",)))
    got = [(r["line_no"], r["reason"] or r["node_id"]) for r in rows]
    assert got == [(2, "item:1"), (4, "item:2"), (6, "parse_error"), (7, "parse_error"), (8, "encoding_error"),
                   (9, "missing_id"), (10, "line_too_long"), (11, "item:7")]
    assert "\ufffd" in rows[4]["raw"] and len(rows[6]["raw"]) <= 2000
    assert json.loads(rows[1]["attrs"]) == {"artist": "x"} and rows[1]["title"] == "Two lines"


def test_a_missing_link_column_or_id_column_names_it(tmp_path):
    storage, uri = _store(tmp_path, "t.csv", b"id,title,artist\n1,a,b\n")
    with pytest.raises(ValueError, match="--link-on column 'genre'.*'artist'"):
        list(A.iter_parsed(storage, uri, ("artist", "genre")))
    storage, uri = _store(tmp_path, "u.csv", b"key,title\n1,a\n")
    with pytest.raises(ValueError, match="has no 'id' column"):
        list(A.iter_parsed(storage, uri, ()))


def test_parquet_cells(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": [1, 2, 3], "score": [1.5, float("nan"), float("inf")],
                             "tags": [["a"], ["b"], ["c"]]}).drop_columns(["tags"]), tmp_path / "t.parquet")
    pq.write_table(pa.table({"id": ["n"], "tags": [["a"]]}), tmp_path / "nested.parquet")
    storage = Storage(f"file://{tmp_path}")
    rows = list(A.iter_parsed(storage, f"file://{tmp_path}/t.parquet", ()))
    assert [json.loads(r["attrs"]) if r["reason"] is None else r["reason"] for r in rows] == [
        {"score": "1.5"}, {}, "bad_field"]
    assert [r["node_id"] for r in rows[:2]] == ["item:1", "item:2"]
    nested = list(A.iter_parsed(storage, f"file://{tmp_path}/nested.parquet", ()))
    assert nested[0]["reason"] == "bad_field" and "tags is list" in nested[0]["detail"]


def test_config_checks_link_on():
    with pytest.raises(ValueError, match="needs --link-on"):
        IngestConfig(source="attributes", raw_uri="file:///x.csv").resolved()
    with pytest.raises(ValueError, match="attributes only"):
        IngestConfig(source="goodreads", raw_uri="file:///x.json", link_on=("artist",)).resolved()
    with pytest.raises(ValueError, match="max-links-per-value"):
        IngestConfig(source="attributes", raw_uri="file:///x.csv", link_on=("a",), max_links_per_value=0).resolved()
    with pytest.raises(ValueError, match="cannot link on 'id'"):
        A.parse_link_on("artist,id")
    with pytest.raises(ValueError, match="must be 1-64"):
        A.parse_link_on("artist,$(rm -rf /)")
    assert IngestConfig(source="attributes", raw_uri="file:///x.csv", link_on=[" artist", "genre "]
                        ).resolved().link_on == ("artist", "genre")


def test_plan_refresh_passes_the_projection_options(tmp_path):
    import g2i_core.orchestration as orch
    from g2i_core.config import Settings

    settings = Settings.load(storage_root=f"file://{tmp_path}")
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "artworks.csv.gz").write_bytes(gzip.compress(b"id,artist\n1,a\n"))
    raw = {"attributes": "raw/artworks.csv.gz", "goodreads": "raw/artworks.csv.gz"}
    items = orch.plan_refresh(settings, ds="2024-01-01", sources=["attributes", "goodreads"], raw=raw,
                              link_on="artist, style", max_links_per_value=4)
    by_source = {i["source"]: i for i in items}
    assert (by_source["attributes"]["link_on"], by_source["attributes"]["max_links_per_value"]) == ("artist,style", 4)
    assert "link_on" not in by_source["goodreads"]
    argv = orch.render_args(orch.STAGES["ingest"].args, by_source["attributes"])
    assert argv[argv.index("--link-on") + 1] == "artist,style"
    with pytest.raises(ValueError, match="must be 1-64"):
        orch.plan_refresh(settings, ds="2024-01-01", sources=["attributes"], raw=raw, link_on="a;b")
