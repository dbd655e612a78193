import ast
import gzip
import hashlib
import json

import pytest
from PIL import Image

from g2i_core.sample.generator import DUMP_FILES, RELATIONS, generate_sample


def _digest(folder):
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(folder)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_deterministic_by_seed(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    generate_sample(a, nodes=120, seed=3)
    generate_sample(b, nodes=120, seed=3)
    generate_sample(c, nodes=120, seed=4)
    assert _digest(a) == _digest(b)
    assert _digest(a) != _digest(c)


def _lines(path):
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        return fh.read().splitlines()


def test_each_dump_parses_with_its_formats_parser(sample_dir):
    for fmt in RELATIONS:  # the three JSON-lines dumps (the artworks CSV has its own tests)
        name = DUMP_FILES[fmt]
        truth = json.loads((sample_dir / "truth" / f"{fmt}.json").read_text())
        lines = _lines(sample_dir / "raw" / name)
        assert len(lines) == truth["lines"]
        parse = ast.literal_eval if fmt == "amazon2014" else json.loads
        parsed, failed = [], 0
        for line in lines:
            try:
                parsed.append(parse(line))
            except (ValueError, SyntaxError):
                failed += 1
        assert failed == truth["quarantine_reasons"].get("parse_error", 0)
        id_key = "book_id" if fmt == "goodreads" else "asin"
        ids = [r[id_key] for r in parsed if isinstance(r, dict) and r.get(id_key)]
        assert len(set(ids)) == truth["nodes_expected"]
        assert len(ids) - len(set(ids)) == truth["duplicates"]
        if fmt == "amazon2014":  # Python literals, not JSON: the strict parser must reject them
            with pytest.raises(json.JSONDecodeError):
                json.loads(next(line for line in lines if line.startswith("{'asin'")))


def test_dumps_carry_the_faults_of_real_dumps(sample_dir):
    gr = []
    for line in _lines(sample_dir / "raw" / DUMP_FILES["goodreads"]):
        try:
            gr.append(json.loads(line))
        except ValueError:
            continue  # the malformed lines are checked in test_each_dump_parses_with_its_formats_parser
    titles = " ".join(r["title"] for r in gr)
    assert "&amp;" in titles and "<i>" in titles  # HTML entities and markup
    assert any(ord(ch) > 0x2FF for ch in titles)  # non-Latin scripts
    assert any(r["title"] == "" for r in gr if r.get("book_id"))  # missing titles
    assert any("/nophoto/" in r["image_url"] for r in gr)
    assert any(r["book_id"] in r["similar_books"] for r in gr if r.get("book_id"))  # self-loops
    truth = json.loads((sample_dir / "truth" / "goodreads.json").read_text())
    assert truth["dangling_by_relation"]["similar_books"] > 0
    faults = truth["image_faults"]
    assert all(faults[k] for k in ("not_found", "corrupt", "bomb", "slow"))
    bomb_id = faults["bomb"][0].split(":")[1]
    bomb = sample_dir / "images" / "goodreads" / f"{bomb_id}.png"
    assert bomb.stat().st_size < 200_000  # tiny on disk ...
    with pytest.raises(Image.DecompressionBombError):  # ... but Pillow refuses it by its pixel count
        Image.open(bomb)


def test_communities_share_style(sample_dir):
    """Mean colour of images within a community is closer than across communities."""
    import csv

    import numpy as np

    rows = list(csv.DictReader(gzip.open(sample_dir / "truth" / "goodreads_communities.csv.gz", "rt")))
    feats, labels = [], []
    for r in rows:
        p = sample_dir / "images" / "goodreads" / f"{r['node_id'].split(':')[1]}.png"
        if not p.exists() or p.stat().st_size > 100_000:
            continue
        try:
            img = np.asarray(Image.open(p).convert("RGB"), dtype=np.float32)
        except (OSError, Image.DecompressionBombError):
            continue  # the corrupt-bytes and bomb faults
        feats.append(img.reshape(-1, 3).mean(0))
        labels.append(int(r["community"]))
    feats, labels = np.array(feats), np.array(labels)
    centroids = {c: feats[labels == c].mean(0) for c in set(labels)}
    nearest = [min(centroids, key=lambda c: np.linalg.norm(f - centroids[c])) for f in feats]
    assert np.mean(np.array(nearest) == labels) > 0.8


def test_rejects_bad_spec(tmp_path):
    with pytest.raises(ValueError, match="nodes must be"):
        generate_sample(tmp_path, nodes=3)
    with pytest.raises(ValueError, match="unknown formats"):
        generate_sample(tmp_path, nodes=50, formats=("amazon2099",))
