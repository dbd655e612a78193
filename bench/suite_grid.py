"""Picture of the suite's seed-0 samples: one row per community, 3 real test covers | the same nodes
generated with semantic-PPR neighbours | generated text-only. Reads the newest s_G-8 generation runs.

    .venv/bin/python bench/suite_grid.py --root file://$PWD/.local/bench-paper   # -> bench/results/suite_grid.png
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
OUT = Path(__file__).resolve().parent / "results" / "suite_grid.png"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", required=True)
    ap.add_argument("--run-id", default="paper")
    ap.add_argument("--skip-hash", default="34a04f7a", help="generation settings hash to ignore (the s_G 1.5 runs)")
    args = ap.parse_args()
    from PIL import Image

    from g2i_core.generate import read_manifest
    from g2i_core.storage import Storage

    st = Storage(args.root)
    nodes = {r["node_id"]: r for r in st.read_table("graph_nodes").to_pylist()}
    real = {r["node_id"]: r["image_key"] for r in st.read_table("node_images").to_pylist() if r.get("status") == "ok"}

    def load(key):
        return Image.open(io.BytesIO(st.get_bytes(st.uri(key)))).convert("RGB")

    runs = {}
    for name in ("semantic_ppr", "text_only"):
        ids = sorted({p.split("/generations/")[1].split("/")[0] for p in st.list(st.uri("generations"))
                      if f"{args.run_id}-{name}-s0-" in p and args.skip_hash not in p})
        runs[name] = {r["node_id"]: r["image_key"] for r in read_manifest(st, ids[-1]).to_pylist()}
    by_comm: dict[int, list[str]] = {}
    for n in sorted(runs["semantic_ppr"]):
        by_comm.setdefault(nodes[n]["community"], []).append(n)
    cell = 48
    grid = Image.new("RGB", (cell * 9 + 16, cell * len(by_comm)), "white")
    for i, c in enumerate(sorted(by_comm)):
        for j, n in enumerate(by_comm[c][:3]):
            grid.paste(load(real[n]).resize((cell, cell)), (j * cell, i * cell))
            grid.paste(load(runs["semantic_ppr"][n]).resize((cell, cell), Image.NEAREST), (3 * cell + 8 + j * cell, i * cell))
            grid.paste(load(runs["text_only"][n]).resize((cell, cell), Image.NEAREST), (6 * cell + 16 + j * cell, i * cell))
    grid.save(OUT)
    print(OUT)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
