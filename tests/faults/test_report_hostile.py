"""Hostile titles, ids and labels in the evaluation report, opened in headless Chromium (issue 13, item 7).

Node ids and titles come from untrusted dumps, method labels from ``--generations NAME=...``. The report
must show them as text: no script of theirs runs, no element of theirs is created, and the page makes no
network request (a loopback canary HTTP server counts every request). A Content-Security-Policy in the
report is the second line: even markup that escaped the escaping cannot run script or load anything.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import http.server
import json
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "unit"))
from test_eval_report import make_gallery, make_report_inputs  # noqa: E402

from g2i_core.evaluate.report import render_gallery_page, render_report  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


class Canary:
    """A loopback HTTP server that records the path of every request it gets."""

    def __init__(self):
        hits = self.hits = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's naming
                hits.append(self.path)
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Access-Control-Allow-Origin", "*")
                self.end_headers()
                self.wfile.write(b"ok")

            do_POST = do_GET  # noqa: N815

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> list[str]:
        self.server.shutdown()
        self.server.server_close()  # joins the handler threads: every request is recorded
        return self.hits


@pytest.fixture
def canary():
    c = Canary()
    yield c
    c.close()


def hostile_strings(port: int) -> dict[str, str]:
    url = f"http://127.0.0.1:{port}"
    return {
        "script": f"<script>window.__pwned=1;fetch('{url}/script')</script>",
        "img": f"\"><img src=x onerror=\"window.__pwned=2;fetch('{url}/img')\">",
        "js_url": f"javascript:window.__pwned=3;fetch('{url}/js')",
        "anchor": f"<a id=hostile href=\"javascript:fetch('{url}/a')\">click</a>",
        "svg": f"</title></svg><svg onload=\"window.__pwned=4;fetch('{url}/svg')\"><title>",
        "style": f"</style><style>@import url({url}/css);body{{background:url({url}/bg)}}</style>",
        "refresh": f"<meta http-equiv=\"refresh\" content=\"0;url={url}/refresh\">",
        "attr": f"' onmouseover='fetch(\"{url}/attr\")' x='",
    }


def hostile_report_inputs(h: dict[str, str]):
    """The unit test's report inputs with every string that comes from a dump or a user replaced."""
    doc, grids, guidance = make_report_inputs()
    doc = copy.deepcopy(doc)
    doc["run_id"] = h["script"]
    doc["description"] = h["img"]
    doc["label_source"] = h["style"]
    doc["style_space"]["encoder"] = h["attr"]
    rename = {"ours": h["svg"], "blurry": h["js_url"]}
    for m in doc["methods"]:
        m["description"] = h["anchor"]
        m["name"] = rename.get(m["name"], m["name"])
    doc["checks"][0]["claim"] = h["refresh"]
    doc["checks"][0]["detail"] = h["script"]
    column = h["img"]  # a method label used as a grid column
    for i, g in enumerate(grids):
        g["node_id"] = [h["script"], h["img"], h["js_url"]][i % 3]
        g["text"] = h["svg"]
        g["images"][column] = g["images"].pop("ours")
        g["neighbour_titles"] = [h["attr"], h["anchor"], h["style"]]  # shown on hover: attribute values
        g["neighbour_ids"] = [h["refresh"], h["img"], h["script"]]
        g["community"] = h["js_url"]
    guidance[0]["node_id"] = h["refresh"]
    return doc, grids, ["ground truth", column], guidance


PROBE_JS = """
window.__violations = [];
document.addEventListener('securitypolicyviolation', e => window.__violations.push(e.violatedDirective));
window.addEventListener('load', () => {
  const expected = %s;
  const handlers = [...document.querySelectorAll('*')].filter(el => [...el.attributes].some(
      a => a.name.startsWith('on') || /^\\s*javascript:/i.test(a.value)));
  const text = document.body.textContent;
  const out = document.createElement('pre');
  out.id = 'probe';
  out.textContent = 'PROBE' + JSON.stringify({
    pwned: window.__pwned === undefined ? null : window.__pwned,
    scripts: document.scripts.length,
    handlers: handlers.map(el => el.tagName),
    injected: document.querySelectorAll('a, iframe, link, meta[http-equiv="refresh" i], body style, svg svg').length,
    missing_text: expected.filter(s => !text.includes(s)),
    violations: window.__violations,
  });
  document.body.appendChild(out);
});
"""


def with_probe(page: str, expected_text: list[str]) -> str:
    """Our probe script, inserted first in <head>; when the report has a CSP, the probe (and only the probe)
    is allowed by its sha256, so any other script stays blocked."""
    js = PROBE_JS % json.dumps(expected_text).replace("<", "\\u003c")
    digest = base64.b64encode(hashlib.sha256(js.encode()).digest()).decode()
    page = page.replace("script-src 'none'", f"script-src 'sha256-{digest}'")
    head = page.index("</head>")
    return page[:head] + f"<script>{js}</script>" + page[head:]


def open_in_chromium(tmp_path: Path, page: str) -> tuple[str, dict]:
    assert CHROMIUM, "Chromium not found: run `make setup` as root or `apt-get install chromium`"
    path = tmp_path / "report.html"
    path.write_text(page)
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000", "--dump-dom", path.as_uri()]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout
    m = re.search(r"PROBE(\{.*?\})</pre>", dom)
    assert m, f"probe did not run; chromium printed: {dom[:800]}"
    return dom, json.loads(m[1].replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">"))


def test_hostile_titles_ids_and_labels_render_as_text(tmp_path, canary):
    h = hostile_strings(canary.port)
    doc, grids, columns, guidance = hostile_report_inputs(h)
    report = render_report(doc, grids, columns, guidance)
    dom, probe = open_in_chromium(tmp_path, with_probe(report, list(h.values())))
    hits = canary.close()
    assert hits == [], f"the report made network requests: {hits}"
    assert probe["pwned"] is None
    assert probe["scripts"] == 1  # ours
    assert probe["handlers"] == [] and probe["injected"] == 0, probe
    assert probe["missing_text"] == [], "hostile strings must appear verbatim as text"
    assert "<img src=x" not in dom and "&lt;script&gt;window.__pwned=1" in dom


def test_report_has_a_csp_that_blocks_a_missed_escape(tmp_path, canary):
    """A deliberately unescaped injection (as if one interpolation forgot html.escape) runs no script and
    reaches no server: the report's own CSP allows inline styles and data: images, nothing else."""
    doc, grids, guidance = make_report_inputs()
    report = render_report(doc, grids, ["ground truth", "ours"], guidance)
    url = f"http://127.0.0.1:{canary.port}"
    injected = (f"<script>window.__pwned=1;fetch('{url}/script')</script>"
                f"<img src=x onerror=\"window.__pwned=2;fetch('{url}/onerror')\">"
                f"<img src=\"{url}/img\"><iframe src=\"{url}/iframe\"></iframe>"
                f"<link rel=stylesheet href=\"{url}/link\"><style>@import url({url}/import);"
                f"body{{background:url({url}/bg)}}</style>"
                f"<svg><image href=\"{url}/svgimage\"/></svg><object data=\"{url}/object\"></object>"
                f"<form action=\"{url}/form\"></form><script src=\"{url}/ext.js\"></script>")
    page = report.replace("<h2>Metrics</h2>", injected + "<h2>Metrics</h2>", 1)
    dom, probe = open_in_chromium(tmp_path, with_probe(page, []))
    hits = canary.close()
    assert hits == [], f"a missed escape reached the network: {hits}"
    assert probe["pwned"] is None, probe
    assert probe["violations"], "the CSP reported no violation: was it applied?"
    csp = re.search(r'<meta http-equiv="Content-Security-Policy" content="([^"]+)">', report)
    assert csp, "the report has no Content-Security-Policy meta tag"
    assert report.index(csp[0]) < report.index("<title>"), "the CSP must come before any content"
    policy = {d.split()[0]: d.split()[1:] for d in csp[1].split(";") if d.strip()}
    assert policy["default-src"] == ["'none'"] and policy["script-src"] == ["'none'"]
    assert policy["img-src"] == ["data:"] and policy["style-src"] == ["'unsafe-inline'"]


def test_every_interpolated_field_is_escaped_even_numbers(tmp_path, canary):
    """Fields that hold numbers in normal use (guidance scales, the chosen graph scale) come from a stored
    metrics document too: they are escaped like the strings."""
    h = hostile_strings(canary.port)
    doc, grids, guidance = make_report_inputs()
    image = next(iter(guidance[0]["images"].values()))
    ts, gs = [1.0, h["img"]], [0.0, h["script"]]
    guidance = [{"node_id": "n080", "text_scales": ts, "graph_scales": gs,
                 "images": {(t, g): image for t in ts for g in gs}}]
    doc["graph_scale_selection"] = {"chosen": h["svg"], "nodes": h["anchor"], "seed": h["attr"],
                                    "method": "ours", "metrics": {}}
    doc["style_space"]["n_holdout"] = h["refresh"]
    report = render_report(doc, grids, ["ground truth", "ours"], guidance)
    _, probe = open_in_chromium(tmp_path, with_probe(report, [h["script"], h["img"], h["svg"], h["refresh"]]))
    assert canary.close() == []
    assert probe["pwned"] is None and probe["scripts"] == 1
    assert probe["handlers"] == [] and probe["injected"] == 0, probe
    assert probe["missing_text"] == []


def test_hostile_backfill_gallery_titles_and_ids_render_as_text(tmp_path, canary):
    """The backfill gallery (in the report and as backfill.html) shows titles and ids from the dump, and
    the neighbours' titles on hover: all escaped, nothing runs, nothing is fetched."""
    h = hostile_strings(canary.port)
    gallery = make_gallery(n=4, total=9)
    gallery["run_id"] = h["refresh"]
    keys = list(h)
    for i, tile in enumerate(gallery["tiles"]):
        tile["title"] = h[keys[i % len(keys)]]
        tile["node_id"] = h[keys[(i + 3) % len(keys)]]
        tile["neighbour_titles"] = [h["js_url"], h["svg"]]
        tile["neighbour_ids"] = [h["script"], h["anchor"]]
    doc, grids, guidance = make_report_inputs()
    expected = [t["title"] for t in gallery["tiles"]] + [t["node_id"] for t in gallery["tiles"]] + [h["refresh"]]
    for page in (render_report(doc, grids, ["ground truth", "ours"], guidance, gallery=gallery),
                 render_gallery_page(gallery)):
        _, probe = open_in_chromium(tmp_path, with_probe(page, expected))
        assert probe["pwned"] is None and probe["scripts"] == 1
        assert probe["handlers"] == [] and probe["injected"] == 0, probe
        assert probe["missing_text"] == [], "hostile strings must appear verbatim as text"
    assert canary.close() == [], "the gallery made network requests"
