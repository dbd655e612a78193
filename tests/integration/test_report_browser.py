"""The evaluation report opens in a real headless Chromium with every image decoded and the plot drawn:
the samples with their neighbour thumbnails (titles on hover) and the backfill gallery included."""

from __future__ import annotations

import base64
import hashlib
import re
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "unit"))
from test_eval_report import make_gallery, make_report_inputs  # noqa: E402

from g2i_core.evaluate.report import render_report  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
PROBE = """<script>
window.addEventListener('load', () => {
  const imgs = [...document.images];
  const ok = imgs.filter(i => i.complete && i.naturalWidth > 0).length;
  const svg = document.querySelector('svg');
  const decoded = sel => [...document.querySelectorAll(sel)].filter(i => i.complete && i.naturalWidth > 0
      && i.getBoundingClientRect().width > 0);
  const count = sel => `${document.querySelectorAll(sel).length}/${decoded(sel).length}`;
  const hovers = [...document.querySelectorAll('td.nb img')].filter(i => i.title).length;
  const out = document.createElement('pre');
  out.id = 'probe';
  out.textContent = `images=${imgs.length} loaded=${ok} svg_width=${svg ? svg.getBoundingClientRect().width : 0}` +
    ` neighbours=${count('td.nb img')} gallery=${count('.gallery .tile img.main')}` +
    ` gallery_neighbours=${count('.gallery .nbs img')} hover=${hovers}` +
    ` tiles=${document.querySelectorAll('.tile').length}`;
  document.body.appendChild(out);
});
</script>"""


def test_report_renders_in_headless_chromium_with_all_images_loaded(tmp_path):
    # A missing browser must fail, not skip: `make test` installs it (scripts/setup.sh, as root).
    assert CHROMIUM, "Chromium not found: run `make setup` as root or `apt-get install chromium`"
    doc, grids, guidance = make_report_inputs()
    gallery = make_gallery()
    html = render_report(doc, grids, ["ground truth", "ours"], guidance, gallery=gallery)
    page = tmp_path / "report.html"
    # The report's CSP blocks every script; the probe (and only the probe) is allowed by its sha256.
    probe_js = PROBE[len("<script>"):-len("</script>")]
    digest = base64.b64encode(hashlib.sha256(probe_js.encode()).digest()).decode()
    assert html.count("script-src 'none'") == 1
    page.write_text(html.replace("script-src 'none'", f"script-src 'sha256-{digest}'")
                    .replace("</body>", PROBE + "</body>"))
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000", "--dump-dom", page.as_uri()]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout
    m = re.search(r"images=(\d+) loaded=(\d+) svg_width=([\d.]+) neighbours=(\d+)/(\d+) gallery=(\d+)/(\d+) "
                  r"gallery_neighbours=(\d+)/(\d+) hover=(\d+) tiles=(\d+)", dom)
    assert m, f"probe did not run; chromium printed: {dom[:500]}"
    images, loaded, svg_width = int(m[1]), int(m[2]), float(m[3])
    assert images == html.count("<img ") and images > 10
    assert loaded == images
    assert svg_width > 100
    # neighbour thumbnails of every sample row: present, decoded, laid out, each with a hover title
    shown_neighbours = sum(len(g["neighbours"]) for g in grids)
    assert (int(m[4]), int(m[5]), int(m[10])) == (shown_neighbours,) * 3 and shown_neighbours > 0
    # the backfill gallery: one decoded cover per tile and its neighbours
    tiles = len(gallery["tiles"])
    assert int(m[11]) == tiles and (int(m[6]), int(m[7])) == (tiles, tiles)
    gallery_neighbours = sum(len(t["neighbours"]) for t in gallery["tiles"])
    assert (int(m[8]), int(m[9])) == (gallery_neighbours, gallery_neighbours) and gallery_neighbours > 0
