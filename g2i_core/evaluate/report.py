"""The evaluation report: one self-contained HTML file (inline base64 PNGs and an inline SVG plot, no
external requests, so it opens from S3 or disk) and ``metrics.json`` for machines.

Node ids, titles and method labels come from untrusted dumps and users: every interpolated value is
HTML-escaped, and the page carries a Content-Security-Policy (``CSP``) that allows inline styles and
``data:`` images only, so even a missed escape can neither run script nor make a network request.

``render_report(metrics, grids, guidance)`` takes the metrics document built by
``g2i_core.evaluate.runner`` plus image grids as uint8 arrays, and returns the HTML string.
"""

from __future__ import annotations

import base64
import html
import io

import numpy as np

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:24px;color:#222;max-width:1200px}
table{border-collapse:collapse;margin:8px 0 16px}th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f3f3f3}td.name,th.name{text-align:left}.enc{font-weight:normal;font-size:11px;color:#666}
.best{font-weight:bold}.grid td{text-align:center;vertical-align:top;font-size:11px}
.grid img{image-rendering:pixelated;display:block;margin:auto}.nb img{display:inline;margin:1px}
.note{color:#555;font-size:13px}.ok{color:#176f2c}.bad{color:#a11}
.title{font-weight:bold;font-size:13px;max-width:220px;white-space:normal}.nid{font-size:11px;color:#777}
.answer{border:2px solid #999;border-radius:6px;padding:10px 14px;margin:12px 0;font-size:15px;background:#fcfcfc}
.answer.ok{border-color:#176f2c}.answer.bad{border-color:#a11}
.gallery{display:flex;flex-wrap:wrap;gap:10px}.tile{border:1px solid #ddd;border-radius:4px;padding:6px;width:176px;
font-size:11px;text-align:center}.tile img{image-rendering:pixelated}.tile .main{display:block;margin:0 auto 4px}
.tile .nbs img{margin:1px}
"""


# No script at all, no fetches: inline <style> and data: images are everything the report uses.
CSP = ("default-src 'none'; script-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; "
       "form-action 'none'")


def _e(value) -> str:
    """Any value as escaped HTML text (numbers included: they come from a stored document too)."""
    return html.escape(str(value))


def png_data_uri(image: np.ndarray, scale: int = 1) -> str:
    from PIL import Image

    im = Image.fromarray(np.asarray(image, np.uint8))
    if scale > 1:
        im = im.resize((im.width * scale, im.height * scale), Image.NEAREST)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _img(image: np.ndarray, size: int, alt: str, title: str = "", cls: str = "") -> str:
    """An inline PNG; ``title`` (escaped) is what a browser shows on hover."""
    extra = (f' title="{html.escape(title)}"' if title else "") + (f' class="{html.escape(cls)}"' if cls else "")
    return f'<img src="{png_data_uri(image)}" width="{size}" height="{size}" alt="{html.escape(alt)}"{extra}>'


def _fmt(v: float) -> str:
    return f"{v:.3f}" if abs(v) < 100 else f"{v:.1f}"


def _cell(entry: dict) -> str:
    """'mean ± std (k seeds)' for suite entries, 'mean [lo, hi]' for single-run estimates."""
    if "std" in entry:
        return f"{_fmt(entry['mean'])} ± {_fmt(entry['std'])} <span class=enc>({len(entry['values'])} seeds)</span>"
    return f"{_fmt(entry['mean'])} <span class=enc>[{_fmt(entry['lo'])}, {_fmt(entry['hi'])}]</span>"


def metrics_table(metrics: dict) -> str:
    info = metrics["metric_info"]
    keys = [k for k in info if any(k in m["summary"] for m in metrics["methods"])]
    head = "".join(f"<th>{html.escape(info[k]['label'])} {'↑' if info[k]['higher_is_better'] else '↓'}"
                   f"<br><span class=enc>{html.escape(info[k]['encoder'])}</span></th>" for k in keys)
    best = {}
    for k in keys:
        vals = [(m["summary"][k]["mean"], m["name"]) for m in metrics["methods"] if k in m["summary"]]
        best[k] = (max if info[k]["higher_is_better"] else min)(vals)[1]
    rows = []
    for m in metrics["methods"]:
        cells = "".join(f"<td class='{'best' if best[k] == m['name'] else ''}'>{_cell(m['summary'][k])}</td>"
                        if k in m["summary"] else "<td>–</td>" for k in keys)
        rows.append(f"<tr><td class=name>{html.escape(m['name'])}<br><span class=enc>"
                    f"{html.escape(m.get('description', ''))}</span></td>{cells}</tr>")
    return f"<table><tr><th class=name>method</th>{head}</tr>{''.join(rows)}</table>"


def cost_table(costs: dict) -> str:
    """Training s/step and sampling s/image per method, and each relative to ours (semantic_ppr)."""
    def val(name, key):
        e = costs.get(name, {}).get(key)
        return e["mean"] if e else None

    rows = []
    for name in costs:
        cells = []
        for key in ("train_s_per_step", "sample_s_per_image"):
            v, ours = val(name, key), val("semantic_ppr", key)
            rel = f" <span class=enc>({v / ours:.2f}× ours)</span>" if v and ours else ""
            cells.append(f"<td>{_fmt(v)}{rel}</td>" if v is not None else "<td>–</td>")
        rows.append(f"<tr><td class=name>{html.escape(name)}</td>{''.join(cells)}</tr>")
    return ("<p class=note>Measured where each model was trained and each test set generated (possibly other "
            "processes under other loads): ratios are indicative.</p><table><tr><th class=name>method</th>"
            f"<th>training s/step</th><th>sampling s/image</th></tr>{''.join(rows)}</table>")


def tradeoff_svg(metrics: dict, x_key: str, y_key: str, width: int = 560, height: int = 380) -> str:
    """Scatter of a DINO-like score (x, higher better) against FID (y, lower better), one point per
    method with its seed spread (or interval) as error bars; drawn as inline SVG (no matplotlib)."""
    info = metrics["metric_info"]
    pts = [(m["name"], m["summary"][x_key], m["summary"][y_key]) for m in metrics["methods"]
           if x_key in m["summary"] and y_key in m["summary"]]
    if not pts:
        return "<p class=note>no methods with both metrics</p>"

    def span(e):  # half-widths of the error bar
        return (e["std"], e["std"]) if "std" in e else (e["mean"] - e["lo"], e["hi"] - e["mean"])

    xs = [v for _, x, _ in pts for v in (x["mean"] - span(x)[0], x["mean"] + span(x)[1])]
    ys = [v for _, _, y in pts for v in (y["mean"] - span(y)[0], y["mean"] + span(y)[1])]
    pad = lambda lo, hi: (lo - 0.08 * (hi - lo or 1), hi + 0.08 * (hi - lo or 1))  # noqa: E731
    (x0, x1), (y0, y1) = pad(min(xs), max(xs)), pad(min(ys), max(ys))
    ml, mr, mt, mb = 60, 150, 20, 45
    sx = lambda v: ml + (v - x0) / (x1 - x0) * (width - ml - mr)  # noqa: E731
    sy = lambda v: height - mb - (v - y0) / (y1 - y0) * (height - mt - mb)  # noqa: E731
    palette = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f",
               "#bcbd22"]
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
             f'aria-label="trade-off plot">',
             f'<rect x="{ml}" y="{mt}" width="{width - ml - mr}" height="{height - mt - mb}" fill="#fafafa" '
             f'stroke="#999"/>']
    for i in range(5):  # ticks
        xv, yv = x0 + (x1 - x0) * i / 4, y0 + (y1 - y0) * i / 4
        parts.append(f'<text x="{sx(xv):.1f}" y="{height - mb + 16}" font-size="10" text-anchor="middle">'
                     f'{_fmt(xv)}</text>')
        parts.append(f'<text x="{ml - 6}" y="{sy(yv) + 3:.1f}" font-size="10" text-anchor="end">{_fmt(yv)}</text>')
    parts.append(f'<text x="{(ml + width - mr) / 2}" y="{height - 8}" font-size="12" text-anchor="middle">'
                 f'{html.escape(info[x_key]["label"])} → better</text>')
    parts.append(f'<text x="14" y="{(mt + height - mb) / 2}" font-size="12" text-anchor="middle" '
                 f'transform="rotate(-90 14 {(mt + height - mb) / 2})">{html.escape(info[y_key]["label"])} '
                 f'(lower is better)</text>')
    for i, (name, x, y) in enumerate(pts):
        c = palette[i % len(palette)]
        cx, cy = sx(x["mean"]), sy(y["mean"])
        (xl, xh), (yl, yh) = span(x), span(y)
        parts.append(f'<line x1="{sx(x["mean"] - xl):.1f}" x2="{sx(x["mean"] + xh):.1f}" y1="{cy:.1f}" '
                     f'y2="{cy:.1f}" stroke="{c}"/>')
        parts.append(f'<line x1="{cx:.1f}" x2="{cx:.1f}" y1="{sy(y["mean"] - yl):.1f}" '
                     f'y2="{sy(y["mean"] + yh):.1f}" stroke="{c}"/>')
        parts.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="4.5" fill="{c}"><title>{html.escape(name)}: '
                     f'{_fmt(x["mean"])}, {_fmt(y["mean"])}</title></circle>')
        parts.append(f'<circle cx="{width - mr + 12}" cy="{mt + 10 + 16 * i}" r="4" fill="{c}"/>'
                     f'<text x="{width - mr + 20}" y="{mt + 14 + 16 * i}" font-size="11">{html.escape(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _neighbour_imgs(r: dict, size: int) -> str:
    """A node's neighbour thumbnails, each with the neighbour's title (and id) on hover."""
    titles = list(r.get("neighbour_titles") or [])
    ids = list(r.get("neighbour_ids") or [])
    out = []
    for i, nb in enumerate(r.get("neighbours", [])):
        title = titles[i] if i < len(titles) else ""
        node = ids[i] if i < len(ids) else ""
        hover = "neighbour: " + (f"{title} ({node})" if title and node else title or node or "?")
        out.append(_img(nb, size, "neighbour", hover))
    return "".join(out)


def comparison_grid(rows: list[dict], columns: list[str], size: int = 96) -> str:
    """rows: {"node_id", "text" (the title), "images": {column: array}, "neighbours": [array, ...],
    optional "neighbour_titles"/"neighbour_ids" (shown on hover) and "community"}."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns) + "<th>neighbours (graph condition)</th>"
    body = []
    for r in rows:
        cells = "".join(f"<td>{_img(r['images'][c], size, c)}</td>" if c in r["images"] else "<td>–</td>"
                        for c in columns)
        nbs = _neighbour_imgs(r, size // 2)
        community = f" · community {html.escape(str(r['community']))}" if r.get("community", "") != "" else ""
        body.append(f"<tr><td class=name><div class=title>{html.escape(r.get('text', '') or '(no title)')}</div>"
                    f"<span class=nid>{html.escape(r['node_id'])}{community}</span></td>{cells}"
                    f"<td class=nb>{nbs}</td></tr>")
    return f"<table class=grid><tr><th class=name>node</th>{head}</tr>{''.join(body)}</table>"


def gallery_grid(gallery: dict, size: int = 128) -> str:
    """gallery: {"run_id", "total", "tiles": [{"node_id", "title", "image", "neighbours", "neighbour_titles",
    "neighbour_ids"}]}: one tile per generated cover, with its title and the neighbours it was drawn from."""
    tiles = []
    for t in gallery["tiles"]:
        tiles.append(f"<div class=tile>{_img(t['image'], size, 'generated cover', cls='main')}"
                     f"<div class=title>{html.escape(t.get('title', '') or '(no title)')}</div>"
                     f"<div class=nid>{html.escape(t['node_id'])}</div>"
                     f"<div class=nbs>{_neighbour_imgs(t, 28)}</div></div>")
    shown, total = len(gallery["tiles"]), gallery.get("total", len(gallery["tiles"]))
    more = f" (the first {shown} by node id)" if shown < total else ""
    return (f"<p class=note>Backfill run {html.escape(str(gallery['run_id']))}: {_e(total)} covers generated for "
            f"books that had none{more}. Under each cover: its title, its id and the neighbours it was "
            f"conditioned on (hover for their titles).</p><div class=gallery>{''.join(tiles)}</div>")


def answer_box(metrics: dict, key: str = "community_acc") -> str:
    """"Did it work?": the graph-conditioned method against text-only on one metric, in one sentence."""
    by_name = {m["name"]: m for m in metrics["methods"]}
    baseline = by_name.get("text_only")
    others = [m for m in metrics["methods"] if m["name"] != "text_only" and key in m["summary"]]
    if baseline is None or key not in baseline["summary"] or not others:
        return ""
    # ours: the DAG's graph-guided method, the suite's semantic-PPR, else the first graph method listed
    best = next((m for name in ("graph_guided", "semantic_ppr") for m in others if m["name"] == name), others[0])
    g, t = best["summary"][key], baseline["summary"][key]
    space = metrics.get("style_space") or {}
    ceiling = (space.get("holdout_accuracy") or {}).get("mean")
    won = g["mean"] > t["mean"]
    label = metrics["metric_info"][key]["label"]
    extra = (f" The classifier gets {ceiling:.2f} on held-out real covers (the ceiling); chance is "
             f"{space.get('chance', 0):.2f}." if ceiling is not None else "")
    n = g.get("n", "")
    name = {"graph_guided": "graph-guided"}.get(best["name"], best["name"])
    return (f"<div class='answer {'ok' if won else 'bad'}'><b>Did it work?</b> {'✔' if won else '✘'} "
            f"{html.escape(name)}: {html.escape(label)} <b>{_fmt(g['mean'])}</b> against "
            f"<b>{_fmt(t['mean'])}</b> for text-only"
            + (f" on {_e(n)} test nodes" if n else "") + f".{html.escape(extra)}</div>")


def guidance_grid(guidance: dict, size: int = 80) -> str:
    """guidance: {"node_id", "text_scales": [...], "graph_scales": [...], "images": {(t, g): array}}."""
    ts, gs = guidance["text_scales"], guidance["graph_scales"]
    head = "".join(f"<th>graph s<sub>G</sub>={_e(g)}</th>" for g in gs)
    rows = "".join(f"<tr><th>text s<sub>T</sub>={_e(t)}</th>"
                   + "".join(f"<td>{_img(guidance['images'][(t, g)], size, f'sT={t} sG={g}')}</td>" for g in gs)
                   + "</tr>" for t in ts)
    return (f"<p class=note>node {html.escape(guidance['node_id'])}, same seed in every cell</p>"
            f"<table class=grid><tr><th></th>{head}</tr>{rows}</table>")


def _head(title: str) -> str:
    return (f"<!doctype html><html><head><meta charset='utf-8'>"
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>")


def render_gallery_page(gallery: dict) -> str:
    """``backfill.html``: the backfill gallery alone, self-contained like the report."""
    title = f"g2i backfill — {gallery['run_id']}"
    return "\n".join([_head(title), f"<h1>{html.escape(title)}</h1>", gallery_grid(gallery), "</body></html>"])


def render_report(metrics: dict, grids: list[dict] | None = None, grid_columns: list[str] | None = None,
                  guidance: list[dict] | None = None, gallery: dict | None = None) -> str:
    space = metrics.get("style_space") or {}
    acc = space.get("holdout_accuracy") or {}
    x_key = "dinov2_score" if "dinov2_score" in metrics["metric_info"] else "style_score"
    y_key = "dinov2_fid" if x_key == "dinov2_score" else "style_fid"
    parts = [_head(f"g2i evaluation {metrics['run_id']}"),
             f"<h1>g2i evaluation — {html.escape(metrics['run_id'])}</h1>",
             f"<p class=note>{html.escape(metrics.get('description', ''))}</p>", answer_box(metrics)]
    if acc:
        parts.append(f"<p>Offline encoder: <b>{html.escape(space['encoder'])}</b>; community labels from "
                     f"{html.escape(metrics.get('label_source', '?'))}. Its classifier's accuracy on "
                     f"{_e(space['n_holdout'])} held-out real images is <b>{acc['mean']:.3f}</b> "
                     f"[{acc['lo']:.3f}, {acc['hi']:.3f}] against a chance (majority) rate of {space['chance']:.3f} "
                     f"over {_e(space['classes'])} classes — the ceiling for the community accuracy of "
                     f"generated images.</p>")
    parts.append("<h2>Metrics</h2>")
    parts.append("<p class=note>± is the standard deviation across training seeds; [lo, hi] a 95% bootstrap "
                 "interval over nodes. Under each metric: the encoder that produced it.</p>")
    parts.append(metrics_table(metrics))
    for check in metrics.get("checks", []):
        cls = "ok" if check["passed"] else "bad"
        parts.append(f"<p class={cls}>{'✔' if check['passed'] else '✘'} {html.escape(check['claim'])}: "
                     f"{html.escape(check['detail'])}</p>")
    sel = metrics.get("graph_scale_selection")
    if sel:
        cells = "; ".join(f"s_G {g}: FID {v['style_fid']['mean']:.2f}, style score {v['style_score']['mean']:.3f}"
                          for g, v in sel["metrics"].items())
        parts.append(f"<p class=note>Graph guidance s_G = {_e(sel['chosen'])} was chosen on {_e(sel['nodes'])} val "
                     f"nodes as the lowest FID (style space) of {_e(sel['method'])} (seed {_e(sel['seed'])}): "
                     f"{html.escape(cells)}.</p>")
    for name, own in (metrics.get("image_scale_selection") or {}).items():
        if own.get("metrics"):
            cells = "; ".join(f"{g}: FID {v['style_fid']['mean']:.2f}" for g, v in own["metrics"].items())
            parts.append(f"<p class=note>{html.escape(name)}'s image guidance s_I = {_e(own['chosen'])}, chosen the "
                         f"same way with its own seed {_e(own['seed'])}: {html.escape(cells)}.</p>")
    if metrics.get("costs"):
        parts.append("<h2>Cost</h2>")
        parts.append(cost_table(metrics["costs"]))
    if grids:
        parts.append("<h2>Samples</h2><p class=note>Per node: its title, the real cover and each method's image "
                     "side by side, and the neighbours the graph condition was built from (hover for titles).</p>")
        parts.append(comparison_grid(grids, grid_columns or sorted({c for r in grids for c in r["images"]})))
    if gallery:
        parts.append("<h2>Backfill: covers for books without one</h2>")
        parts.append(gallery_grid(gallery))
    parts.append(f"<h2>Trade-off: {html.escape(metrics['metric_info'][x_key]['label'])} vs "
                 f"{html.escape(metrics['metric_info'][y_key]['label'])}</h2>")
    parts.append(tradeoff_svg(metrics, x_key, y_key))
    for g in guidance or []:
        parts.append("<h2>Guidance scales (text × graph)</h2>")
        parts.append(guidance_grid(g))
    parts.append("</body></html>")
    return "\n".join(parts)


def publish_report(storage, run_id: str, metrics: dict, report_html: str) -> dict[str, str]:
    """Write ``reports/<run_id>/metrics.json`` then ``report.html`` (the report last: its presence
    means the run's evaluation is complete)."""
    import json

    metrics_uri = storage.uri("reports", run_id, "metrics.json")
    html_uri = storage.uri("reports", run_id, "report.html")
    storage.put_bytes(metrics_uri, json.dumps(metrics, indent=2, sort_keys=True, default=float).encode(),
                      "application/json")
    storage.put_bytes(html_uri, report_html.encode(), "text/html; charset=utf-8")
    return {"metrics": metrics_uri, "report": html_uri}
