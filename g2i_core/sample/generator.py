"""Sample MMAG dumps in the three real raw formats, with the faults real dumps contain.

``generate_sample(out, nodes=N, seed=S)`` writes, deterministically by seed:

    out/raw/goodreads_books.json.gz        UCSD Book Graph: strict JSON, numbers as strings
    out/raw/meta_Books_2014.json.gz        Amazon 2014: Python-literal lines (single quotes)
    out/raw/meta_Books_2018.json.gz        Amazon 2018: strict JSON, flat also_buy/also_view
    out/raw/artworks.csv.gz                ART500K-like item table (only with formats=(..., "attributes"))
    out/images/<dataset>/<id>.png          procedurally rendered covers (a subset when huge)
    out/truth/<dataset>.json               exact expected counts of every fault injected
    out/truth/<dataset>_communities.csv.gz node_id,community (ground truth for evaluation)
    out/sample_manifest.json               the spec and a summary

Nodes belong to communities that share a visual style; titles carry community words only part of
the time; edges stay mostly inside a community and degrees are heavy-tailed.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from g2i_core.sample.styles import decompression_bomb_png, encode_png, make_styles, render

log = logging.getLogger(__name__)

FORMATS = ("goodreads", "amazon2014", "amazon2018")  # the default: the three JSON dumps
ALL_FORMATS = (*FORMATS, "attributes")  # attributes: an ART500K-like CSV table (g2i_core/sample/artworks.py)
DUMP_FILES = {
    "goodreads": "goodreads_books.json.gz",
    "amazon2014": "meta_Books_2014.json.gz",
    "amazon2018": "meta_Books_2018.json.gz",
    "attributes": "artworks.csv.gz",
}
RELATIONS = {
    "goodreads": {"similar_books": 1.0},
    "amazon2014": {"also_bought": 0.4, "also_viewed": 0.35, "bought_together": 0.15, "buy_after_viewing": 0.1},
    "amazon2018": {"also_buy": 0.55, "also_view": 0.45},
}
NOPHOTO_PATH = "/assets/nophoto/book/111x148.png"

GENERIC_WORDS = (
    "story night house river letters garden winter silent return secret world city journey last "
    "first little lost road summer light dark song stone island friend life years time edge heart "
    "promise shadow morning fire water north glass paper bridge tale voices echo home wild green"
).split()
TOPIC_WORDS = (
    "dragon castle wizard quest sword realm | detective murder clue alibi suspect case | "
    "galaxy robot orbit android starship planet | romance wedding kiss lover bride passion | "
    "recipe kitchen baking bread flavor spice | history empire war king dynasty revolution | "
    "ocean sailor whale harbor tide voyage | mountain climber summit trail peak glacier | "
    "ghost haunted crypt curse phantom grave | garden flower orchid rose blossom seed | "
    "music jazz guitar melody rhythm violin | money market invest profit trade fortune"
).split(" | ")
ODD_TITLES = ("Café &amp; Crème", "Ελληνικά <i>Ποιήματα</i>", "日本語の本", "Tom &amp; Jerry&#39;s <b>Night</b>",
              "Naïve Résumé — Überraschung", "L&#x27;Étranger &lt;deluxe&gt;")


@dataclass
class SampleSpec:
    nodes: int = 500
    seed: int = 0
    communities: int = 8
    avg_degree: float = 8.0
    within_community: float = 0.85
    image_size: int = 64
    render_limit: int = 20000  # render images for at most this many nodes per dataset
    image_base_url: str = "http://127.0.0.1:8765"
    formats: tuple[str, ...] = FORMATS
    fault_rate: float = 0.01  # base rate for injected faults (each fault at least once when nodes >= 50)
    extra: dict = field(default_factory=dict)


def generate_sample(out: str | Path, **kwargs) -> dict:
    """Write the sample dumps, images and truth files under ``out``; returns the summary manifest."""
    spec = SampleSpec(**kwargs)
    _check_spec(spec)
    out = Path(out)
    (out / "raw").mkdir(parents=True, exist_ok=True)
    (out / "truth").mkdir(parents=True, exist_ok=True)
    styles = make_styles(spec.communities, spec.seed)
    summary = {"spec": asdict(spec), "datasets": {}}
    for i, fmt in enumerate(spec.formats):
        truth = _generate_dataset(out, fmt, spec, styles, sub_seed=spec.seed * 1000 + i)
        summary["datasets"][fmt] = {k: truth[k] for k in ("dump", "lines", "nodes_expected", "duplicates",
                                                            "quarantined", "edges_by_relation")}
        log.info("%s: %d lines, %d nodes, %d edges", fmt, truth["lines"], truth["nodes_expected"],
                 sum(truth["edges_by_relation"].values()))
    (out / "sample_manifest.json").write_text(json.dumps(summary, indent=2, sort_keys=True))
    return summary


def _check_spec(spec: SampleSpec) -> None:
    if spec.nodes < 10:
        raise ValueError(f"nodes must be >= 10, got {spec.nodes}")
    if not 2 <= spec.communities <= spec.nodes:
        raise ValueError(f"communities must be between 2 and nodes ({spec.nodes}), got {spec.communities}")
    unknown = set(spec.formats) - set(ALL_FORMATS)
    if unknown:
        raise ValueError(f"unknown formats {sorted(unknown)}; choose from {ALL_FORMATS}")
    if spec.image_size < 16 or spec.image_size % 8:
        raise ValueError(f"image_size must be a multiple of 8 and >= 16, got {spec.image_size}")


# ---- graph structure ------------------------------------------------------------------------------
def _sample_edges(rng: np.random.Generator, community: np.ndarray, spec: SampleSpec) -> tuple[np.ndarray, np.ndarray]:
    """Directed edges (src, dst) with heavy-tailed out- and in-degrees, mostly within community."""
    n = len(community)
    out_deg = np.minimum(np.floor(spec.avg_degree / 2 * (1 + rng.pareto(2.0, n))).astype(np.int64) + 0, 500)
    out_deg = np.maximum(out_deg, 1)
    popularity = 1.0 + rng.pareto(1.5, n)  # heavy-tailed in-degree
    src = np.repeat(np.arange(n), out_deg)
    dst = np.empty_like(src)
    within = rng.random(len(src)) < spec.within_community
    # global draws
    cdf_all = np.cumsum(popularity) / popularity.sum()
    glob = ~within
    dst[glob] = np.searchsorted(cdf_all, rng.random(glob.sum()), side="right").clip(0, n - 1)
    # within-community draws, per community
    src_comm = community[src]
    for c in np.unique(community):
        members = np.flatnonzero(community == c)
        sel = within & (src_comm == c)
        if not sel.any():
            continue
        cdf = np.cumsum(popularity[members]) / popularity[members].sum()
        dst[sel] = members[np.searchsorted(cdf, rng.random(sel.sum()), side="right").clip(0, len(members) - 1)]
    keep = src != dst  # self-loops are injected separately, on purpose and counted
    pairs = np.unique(np.stack([src[keep], dst[keep]], axis=1), axis=0)
    return pairs[:, 0], pairs[:, 1]


def _titles(rng: np.random.Generator, community: np.ndarray) -> list[str]:
    titles = []
    for c in community:
        topic = TOPIC_WORDS[int(c) % len(TOPIC_WORDS)].split()
        k = int(rng.integers(2, 5))
        words = [topic[rng.integers(len(topic))] if rng.random() < 0.35
                 else GENERIC_WORDS[rng.integers(len(GENERIC_WORDS))] for _ in range(k)]
        titles.append("The " + " ".join(w.capitalize() for w in words))
    return titles


# ---- one dataset ------------------------------------------------------------------------------------
def _generate_dataset(out: Path, fmt: str, spec: SampleSpec, styles, sub_seed: int) -> dict:
    if fmt == "attributes":
        from g2i_core.sample.artworks import generate_artworks

        return generate_artworks(out, spec, styles, sub_seed, DUMP_FILES[fmt])
    rng = np.random.default_rng(sub_seed)
    n = spec.nodes
    community = rng.integers(0, spec.communities, n)
    ids = _make_ids(fmt, n)
    titles = _titles(rng, community)
    src, dst = _sample_edges(rng, community, spec)
    rel_names = list(RELATIONS[fmt])
    rel = rng.choice(len(rel_names), size=len(src), p=list(RELATIONS[fmt].values()))

    related: list[dict[str, list[str]]] = [dict() for _ in range(n)]
    for s, d, r in zip(src.tolist(), dst.tolist(), rel.tolist(), strict=True):
        related[s].setdefault(rel_names[r], []).append(ids[d])

    def pick(rate: float, minimum: int = 1) -> set[int]:
        k = max(minimum if n >= 50 else 0, int(round(rate * n)))
        return set(rng.choice(n, size=min(k, n), replace=False).tolist())

    rate = spec.fault_rate
    self_loops, dangling = pick(rate), pick(3 * rate)
    duplicates, no_title, html = pick(rate), pick(2 * rate), pick(5 * rate)
    for i in self_loops:
        related[i].setdefault(rel_names[0], []).append(ids[i])
    for i in dangling:
        related[i].setdefault(rel_names[-1], []).append(_dangling_id(fmt, i))

    # images: which nodes get one, and which image faults they carry
    img_dir = out / "images" / fmt
    img_dir.mkdir(parents=True, exist_ok=True)
    rendered = set(range(min(n, spec.render_limit)))
    no_image = pick(3 * rate) & rendered
    nophoto = (pick(5 * rate) & rendered) - no_image if fmt == "goodreads" else set()
    pool = sorted(rendered - no_image - nophoto)
    faulty = rng.permutation(pool)[: max(4, int(round(3 * rate * n)))].tolist() if n >= 50 else []
    k = max(1, len(faulty) // 3)
    img_404, img_corrupt, img_slow = set(faulty[:k]), set(faulty[k:2 * k]), set(faulty[2 * k:3 * k])
    img_bomb = {faulty[-1]} if faulty else set()
    img_slow -= img_bomb
    urls: list[str | None] = [None] * n
    base = spec.image_base_url.rstrip("/")
    for i in range(n):
        if i not in rendered or i in no_image:
            urls[i] = base + NOPHOTO_PATH if (fmt == "goodreads" and i not in rendered) else None
            continue
        if i in nophoto:
            urls[i] = base + NOPHOTO_PATH
            continue
        name = f"{_safe(ids[i])}.png"
        if i in img_404:
            urls[i] = f"{base}/images/{fmt}/missing-{name}"
            continue
        if i in img_corrupt:
            (img_dir / name).write_bytes(b"\xff\xd8\xff\xe0JFIF-not-really" + rng.bytes(200))
        elif i in img_bomb:
            (img_dir / name).write_bytes(decompression_bomb_png())
        else:
            (img_dir / name).write_bytes(encode_png(render(styles[community[i]], sub_seed * 1_000_003 + i,
                                                          spec.image_size)))
        urls[i] = f"{base}/{'slow/' if i in img_slow else ''}images/{fmt}/{name}"
    if fmt == "goodreads":  # the placeholder cover itself is served too, as real dumps' hosts do
        ph = out / NOPHOTO_PATH.lstrip("/")
        ph.parent.mkdir(parents=True, exist_ok=True)
        ph.write_bytes(encode_png(np.full((148, 111, 3), 200, np.uint8)))

    # records
    lines: list[str] = []
    for i in range(n):
        title = "" if i in no_title else titles[i]
        if i in html:
            title = ODD_TITLES[i % len(ODD_TITLES)] + " " + title
        rec = _record(fmt, rng, ids[i], title, urls[i], related[i], community[i])
        if i in duplicates:  # an older, less complete copy: same id, no description, fewer links
            old = _record(fmt, rng, ids[i], title, urls[i], {r: v[: len(v) // 2] for r, v in related[i].items()},
                          community[i], complete=False)
            lines.append(_serialize(fmt, old))
        lines.append(_serialize(fmt, rec))
    malformed = _malformed_lines(fmt, rng, max(2, int(round(0.5 * rate * n))) if n >= 50 else 1)
    lines.extend(m for m, _ in malformed)
    order = rng.permutation(len(lines))
    dump = out / "raw" / DUMP_FILES[fmt]
    # level 6 (gzip's default, as real dumps use) and batched writes: level 9 per line dominated big samples
    with open(dump, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="", compresslevel=6) as gz:
        for start in range(0, len(order), 4096):
            gz.write("".join(lines[j] + "\n" for j in order[start:start + 4096]).encode("utf-8"))

    # truth
    edges_by_relation: dict[str, int] = {}
    dangling_by_relation: dict[str, int] = {}
    valid = set(ids)
    for i in range(n):
        for r, targets in related[i].items():
            for t in set(targets):
                if t == ids[i]:
                    continue
                edges_by_relation[r] = edges_by_relation.get(r, 0) + 1
                if t not in valid:
                    dangling_by_relation[r] = dangling_by_relation.get(r, 0) + 1
    reasons: dict[str, int] = {}
    for _, reason in malformed:
        reasons[reason] = reasons.get(reason, 0) + 1
    ns = "goodreads" if fmt == "goodreads" else "amazon"
    truth = {
        "format": fmt,
        "dump": str(dump.relative_to(out)),
        "lines": len(lines),
        "nodes_expected": n,
        "duplicates": len(duplicates),
        "quarantined": len(malformed),
        "quarantine_reasons": reasons,
        "self_loops": len(self_loops),
        "edges_by_relation": dict(sorted(edges_by_relation.items())),
        "dangling_by_relation": dict(sorted(dangling_by_relation.items())),
        "missing_title": len(no_title),
        "html_titles": len(html),
        "no_image": sum(1 for u in urls if u is None),
        "nophoto": sum(1 for u in urls if u is not None and u.endswith(NOPHOTO_PATH)),
        "image_faults": {
            "not_found": sorted(f"{ns}:{ids[i]}" for i in img_404),
            "corrupt": sorted(f"{ns}:{ids[i]}" for i in img_corrupt),
            "bomb": sorted(f"{ns}:{ids[i]}" for i in img_bomb),
            "slow": sorted(f"{ns}:{ids[i]}" for i in img_slow),
        },
        "communities": spec.communities,
    }
    (out / "truth" / f"{fmt}.json").write_text(json.dumps(truth, indent=2, sort_keys=True))
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["node_id", "community"])
    w.writerows((f"{ns}:{ids[i]}", int(community[i])) for i in range(n))
    with open(out / "truth" / f"{fmt}_communities.csv.gz", "wb") as raw, \
            gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as gz:
        gz.write(buf.getvalue().encode())
    return truth


def _make_ids(fmt: str, n: int) -> list[str]:
    if fmt == "goodreads":
        return [str(1_000_000 + 7 * i) for i in range(n)]
    if fmt == "amazon2014":
        return [f"0{i:09d}" for i in range(n)]
    return [f"B{i:09d}" for i in range(n)]


def _dangling_id(fmt: str, i: int) -> str:
    return {"goodreads": str(900_000_000 + i), "amazon2014": f"9{i:09d}", "amazon2018": f"X{i:09d}"}[fmt]


def _safe(node: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in node)


def _record(fmt: str, rng, node: str, title: str, url: str | None, related: dict, community: int,
            complete: bool = True) -> dict:
    topic = TOPIC_WORDS[int(community) % len(TOPIC_WORDS)].split()
    desc = (f"A {topic[0]} tale of {GENERIC_WORDS[int(rng.integers(len(GENERIC_WORDS)))]} and "
            f"{topic[int(rng.integers(len(topic)))]}.") if complete else ""
    if fmt == "goodreads":
        return {
            "isbn": "", "text_reviews_count": str(int(rng.integers(0, 50))), "series": [], "country_code": "US",
            "language_code": "eng" if rng.random() < 0.8 else "", "asin": "", "is_ebook": "false",
            "average_rating": f"{rng.uniform(2.5, 4.9):.2f}", "kindle_asin": "",
            "similar_books": [str(x) for x in dict.fromkeys(related.get("similar_books", []))],
            "description": desc, "format": "Paperback", "link": f"https://example.invalid/book/show/{node}",
            "authors": [{"author_id": str(int(rng.integers(1, 10**6))), "role": ""}],
            "popular_shelves": [{"count": str(int(rng.integers(1, 300))), "name": "to-read"},
                                {"count": str(int(rng.integers(1, 50))), "name": topic[0]}],
            "publisher": "", "num_pages": str(int(rng.integers(80, 900))) if complete else "",
            "publication_year": str(int(rng.integers(1950, 2018))) if complete else "",
            "publication_month": "", "publication_day": "", "isbn13": "", "edition_information": "",
            "url": f"https://example.invalid/book/show/{node}", "image_url": url or "",
            "book_id": node, "ratings_count": str(int(rng.integers(0, 5000))),
            "work_id": str(int(node) + 3) if node else "",  # malformed no-id records have node == ""
            "title": title, "title_without_series": title,
        }
    if fmt == "amazon2014":
        rec: dict = {"asin": node}
        if title:
            rec["title"] = title
        if complete:
            rec["price"] = round(float(rng.uniform(2, 60)), 2)
            rec["description"] = desc
        if url:
            rec["imUrl"] = url
        rel = {r: list(dict.fromkeys(v)) for r, v in related.items() if v}
        if rel:
            rec["related"] = rel
        rec["salesRank"] = {"Books": int(rng.integers(1, 2_000_000))}
        rec["categories"] = [["Books", topic[0].capitalize()]]
        return rec
    rec = {
        "category": ["Books", topic[0].capitalize()], "tech1": "", "description": [desc] if desc else [],
        "fit": "", "title": title, "also_buy": list(dict.fromkeys(related.get("also_buy", []))), "tech2": "",
        "brand": "", "feature": [], "rank": f"{int(rng.integers(1, 10**6)):,} in Books (",
        "also_view": list(dict.fromkeys(related.get("also_view", []))), "main_cat": "Books",
        "similar_item": "", "date": "", "price": f"${rng.uniform(2, 60):.2f}" if complete else "", "asin": node,
        "imageURL": [url] if url else [], "imageURLHighRes": [url] if url else [],
    }
    return rec


def _serialize(fmt: str, rec: dict) -> str:
    if fmt == "amazon2014":
        return repr(rec)  # a Python literal, as the 2014 dump is written
    return json.dumps(rec, ensure_ascii=False)


def _malformed_lines(fmt: str, rng, k: int) -> list[tuple[str, str]]:
    """(line, expected quarantine reason) pairs."""
    out = []
    for j in range(k):
        kind = j % 3
        if kind == 0:  # truncated record: a writer died mid-line
            text = _serialize(fmt, _record(fmt, rng, "0" if fmt != "goodreads" else "1", "T", None, {}, 0))
            out.append((text[: len(text) // 2], "parse_error"))
        elif kind == 1:  # garbage bytes that are not a record at all
            out.append(("<<<not a record>>> " + "".join(chr(int(c)) for c in rng.integers(65, 90, 12)), "parse_error"))
        else:  # well-formed but with no id
            rec = _record(fmt, rng, "", "No Id Here", None, {}, 0)
            out.append((_serialize(fmt, rec), "missing_id"))
    return out
