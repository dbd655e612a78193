"""Picture of the suite's seed-0 samples: one row per community, 3 real test covers | the same nodes
generated with semantic-PPR neighbours | generated text-only. Reads the generation runs that the
suite's ``reports/<run-id>/metrics.json`` names.

    .venv/bin/python bench/suite_grid.py --root file://$PWD/.local/bench-paper-2k   # -> bench/results/suite_grid.png
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
OUT = Path(__file__).resolve().parent / "results" / "suite_grid.png"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", required=True)
    ap.add_argument("--run-id", default="paper")
    args = ap.parse_args()
    from PIL import Image

    from g2i_core.generate import read_manifest
    from g2i_core.storage import Storage

    st = Storage(args.root)
    nodes = {r["node_id"]: r for r in st.read_table("graph_nodes").to_pylist()}
    real = {r["node_id"]: r["image_key"] for r in st.read_table("node_images").to_pylist() if r.get("status") == "ok"}

    def load(key):
        return Image.open(io.BytesIO(st.get_bytes(st.uri(key)))).convert("RGB")

    suite_runs = json.loads(st.get_bytes(st.uri("reports", args.run_id, "metrics.json")))["generation_runs"]
    runs = {name: {r["node_id"]: r["image_key"] for r in read_manifest(st, suite_runs[f"{name}-s0"]).to_pylist()}
            for name in ("semantic_ppr", "text_only")}
    by_comm: dict[int, list[str]] = {}
    for n in sorted(runs["semantic_ppr"]):
        by_comm.setdefault(nodes[n]["community"], []).append(n)
    cell = 48
    grid = Image.new("RGB", (cell * 9 + 16, cell * len(by_comm)), "white")
    for i, c in enumerate(sorted(by_comm)):
        for j, n in enumerate(by_comm[c][:3]):
            grid.paste(load(real[n]).resize((cell, cell)), (j * cell, i * cell))
            grid.paste(load(runs["semantic_ppr"][n]).resize((cell, cell), Image.NEAREST),
                       (3 * cell + 8 + j * cell, i * cell))
            grid.paste(load(runs["text_only"][n]).resize((cell, cell), Image.NEAREST),
                       (6 * cell + 16 + j * cell, i * cell))
    grid.save(OUT)
    print(OUT)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
