"""An ART500K-like sample: a CSV table of artworks (``--source attributes``) with known truth.

Columns: ``id, title, image_url, artist, genre, style, date, description``. A work's style is its
community (the visual style its image is rendered in, and the evaluation's label). Every artist has a home
style and paints most works in it, so linking on ``artist`` finds same-style works; genres are skewed (one
holds a large share of all works, as in ART500K) and only weakly tied to style. Titles carry a style word
only part of the time, so text alone recovers the style only partly.

The table carries the faults real exports contain, each counted in ``truth/attributes.json``: duplicate
ids (an older, less complete copy first), rows without an id, image URLs with a scheme other than http(s),
unparseable CSV rows (a stray quote), rows with the wrong number of fields, invalid UTF-8, HTML in titles,
multi-line quoted descriptions and works without a genre.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from pathlib import Path

import numpy as np

COLUMNS = ("id", "title", "image_url", "artist", "genre", "style", "date", "description")
DEFAULT_LINK_ON = ("artist", "genre")
DEFAULT_CAP = 10
STYLE_NAMES = ("Impressionism", "Cubism", "Baroque", "Romanticism", "Expressionism", "Surrealism", "Realism",
               "Pop Art", "Minimalism", "Art Nouveau", "Fauvism", "Pointillism")
STYLE_WORDS = (
    "light pond lilies haystack", "guitar violin fragments table", "saint martyr chapel chiaroscuro",
    "storm ruins shipwreck wanderer", "scream street dancer mask", "dream clock elephant desert",
    "peasant harvest gleaners workshop", "soup comic star poster", "square field line grid",
    "ornament poster vine muse", "wild tree bathers harbour", "dots beach sunday promenade")
GENRES = ("portrait", "landscape", "genre painting", "religious painting", "still life", "cityscape",
          "abstract", "marina", "sketch and study", "flower painting", "animal painting", "mythological painting")
GENERIC = ("evening morning garden woman man river bridge house window road village figure study composition "
           "interior mountain sea girl boy old young red blue white autumn winter summer spring night").split()
ODD_TITLES = ("Caf&eacute; &amp; Cr&egrave;me", "<i>Nocturne</i> in Blue", "Tom &amp; Jerry&#39;s <b>Night</b>")


def _group_edges(n: int, cap: int) -> int:
    """Directed edges the bounded projection makes in a value group of n items (closed form of the rule in
    ``g2i_core.ingest.attributes``, counted independently of it)."""
    if n < 2:
        return 0
    if n <= cap + 1:
        return n * (n - 1)
    return n * 2 * (cap // 2) + (2 * (n // 2) if cap % 2 else 0)


def generate_artworks(out: Path, spec, styles, sub_seed: int, dump_name: str) -> dict:
    """Write ``raw/<dump_name>``, ``images/attributes/``, ``truth/attributes.json`` and
    ``truth/attributes_communities.csv.gz``; returns the truth dict."""
    from g2i_core.sample.styles import encode_png, render

    rng = np.random.default_rng(sub_seed)
    n, n_styles = spec.nodes, spec.communities
    style_names = [STYLE_NAMES[c] if c < len(STYLE_NAMES) else f"Style {c}" for c in range(n_styles)]
    n_artists = max(2 * n_styles, n // 15)
    artist_home = rng.permutation(np.arange(n_artists) % n_styles)
    popularity = 1.0 + rng.pareto(1.2, n_artists)
    artist = rng.choice(n_artists, size=n, p=popularity / popularity.sum())
    style = np.where(rng.random(n) < spec.within_community, artist_home[artist], rng.integers(0, n_styles, n))
    genre_p = 1.0 / (np.arange(len(GENRES)) + 1.0) ** 1.3
    genre = rng.choice(len(GENRES), size=n, p=genre_p / genre_p.sum())
    prefers = rng.random(n) < 0.3
    genre[prefers] = style[prefers] % len(GENRES)
    no_genre = rng.random(n) < 0.03
    ids = [f"w{i:07d}" for i in range(n)]

    def pick(rate: float) -> set[int]:
        k = max(1 if n >= 50 else 0, int(round(rate * n)))
        return set(rng.choice(n, size=min(k, n), replace=False).tolist())

    rate = spec.fault_rate
    duplicates, html, multiline = pick(rate), pick(3 * rate), pick(3 * rate)
    rendered = set(range(min(n, spec.render_limit)))
    no_image = pick(2 * rate) & rendered
    img_404 = (pick(rate) & rendered) - no_image
    img_dir = out / "images" / "attributes"
    img_dir.mkdir(parents=True, exist_ok=True)
    base = spec.image_base_url.rstrip("/")
    rows, urls = [], []
    for i in range(n):
        url = ""
        if i in rendered and i not in no_image:
            name = f"{ids[i]}.png"
            if i in img_404:
                url = f"{base}/images/attributes/missing-{name}"
            else:
                (img_dir / name).write_bytes(encode_png(render(styles[int(style[i])], sub_seed * 1_000_003 + i,
                                                               spec.image_size)))
                url = f"{base}/images/attributes/{name}"
        urls.append(url)
        words = STYLE_WORDS[int(style[i]) % len(STYLE_WORDS)].split()
        k = int(rng.integers(2, 4))
        title = " ".join((words[rng.integers(len(words))] if rng.random() < 0.35
                          else GENERIC[rng.integers(len(GENERIC))]).capitalize() for _ in range(k))
        if i in html:
            title = ODD_TITLES[i % len(ODD_TITLES)] + " " + title
        desc = f"A {GENRES[genre[i]]} of {GENERIC[int(rng.integers(len(GENERIC)))]}."
        if i in multiline:
            desc += "\nSecond paragraph, after a line break inside the quoted field."
        rows.append({"id": ids[i], "title": title, "image_url": url, "artist": f"Artist {int(artist[i]):04d}",
                     "genre": "" if no_genre[i] else GENRES[genre[i]], "style": style_names[int(style[i])],
                     "date": str(1850 + int(rng.integers(0, 150))), "description": desc})

    # records: (text of the row, quarantine reason or None); a duplicate's older, less complete copy comes first
    records: list[tuple[bytes, str | None]] = []
    for i in range(n):
        if i in duplicates:
            records.append((_csv_line({**rows[i], "description": "", "date": ""}), None))
        records.append((_csv_line(rows[i]), None))
    k = max(1, int(round(0.5 * rate * n))) if n >= 50 else 1
    for j in range(k):
        fake = {**rows[j % n], "id": f"bad{j:04d}"}
        records.append((_csv_line({**fake, "id": ""}), "missing_id"))
        scheme = ("javascript:alert(1)", "file:///etc/passwd", "ftp://127.0.0.1/x.png")[j % 3]
        records.append((_csv_line({**fake, "image_url": scheme}), "bad_field"))
        records.append((f'{fake["id"]},"Broken "quote" here,,,,,,\n'.encode(), "parse_error"))
        records.append((f'{fake["id"]},too,few\n'.encode(), "parse_error"))
        records.append((_csv_line({**fake, "title": "@@"}).replace(b"@@", b"Bad \xff byte"), "encoding_error"))
    order = rng.permutation(len(records))
    header = _csv_line(dict(zip(COLUMNS, COLUMNS, strict=True)))
    line = header.count(b"\n")  # lines written so far
    quarantine_lines: dict[str, str] = {}
    body = []
    for j in order:
        text, reason = records[j]
        if reason:
            quarantine_lines[str(line + 1)] = reason
        line += text.count(b"\n")
        body.append(text)
    dump = out / "raw" / dump_name
    with open(dump, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as gz:
        gz.write(header + b"".join(body))

    # truth: the projection's edge counts from group sizes (works without a value make no links)
    cap = DEFAULT_CAP
    edges_by_attribute = {}
    for name, values in (("artist", artist), ("genre", np.where(no_genre, -1, genre)), ("style", style)):
        sizes = np.bincount(values[values >= 0])
        edges_by_attribute[name] = int(sum(_group_edges(int(s), cap) for s in sizes))
    reasons: dict[str, int] = {}
    for _, reason in records:
        if reason:
            reasons[reason] = reasons.get(reason, 0) + 1
    truth = {
        "format": "attributes",
        "dump": str(dump.relative_to(out)),
        "lines": len(records),
        "nodes_expected": n,
        "duplicates": len(duplicates),
        "quarantined": sum(reasons.values()),
        "quarantine_reasons": dict(sorted(reasons.items())),
        "quarantine_lines": dict(sorted(quarantine_lines.items(), key=lambda kv: int(kv[0]))),
        "link_on": list(DEFAULT_LINK_ON),
        "max_links_per_value": cap,
        "edges_by_relation": {a: edges_by_attribute[a] for a in DEFAULT_LINK_ON},
        "edges_by_attribute": edges_by_attribute,
        "largest_group": {name: int(np.bincount(v[v >= 0]).max()) for name, v in
                          (("artist", artist), ("genre", np.where(no_genre, -1, genre)), ("style", style))},
        "html_titles": len(html),
        "no_image": sum(1 for u in urls if not u),
        "multiline_rows": len(multiline),
        "communities": n_styles,
        "style_names": style_names,
    }
    (out / "truth" / "attributes.json").write_text(json.dumps(truth, indent=2, sort_keys=True))
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["node_id", "community"])
    writer.writerows((f"item:{ids[i]}", int(style[i])) for i in range(n))
    with open(out / "truth" / "attributes_communities.csv.gz", "wb") as raw, \
            gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as gz:
        gz.write(buf.getvalue().encode())
    return truth


def _csv_line(row: dict) -> bytes:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow([row[c] for c in COLUMNS])
    return buf.getvalue().encode("utf-8")
