"""Why FID moves: per generation run, FID against the test covers, the split of FID into its mean and
covariance terms, and the total variance of the generated set in the style space; plus the FID
between disjoint sets of real covers (the noise floor at this set size).

    .venv/bin/python bench/fid_diagnostics.py --root file://$PWD/.local/bench-paper-2k \\
        paper-text_only-s0-8fd5445f paper-semantic_ppr-s0-8fd5445f paper-text_only-s0-1f856ac1 \\
        paper-semantic_ppr-s0-1f856ac1
(``8fd5445f`` = the s_G 8 runs of the first 2,000-node suite, ``1f856ac1`` = the s_G 3 runs.)
"""

from __future__ import annotations

import argparse

import numpy as np


def main() -> None:
    from g2i_core.evaluate.metrics import frechet_distance
    from g2i_core.evaluate.runner import at_resolution, fit_space
    from g2i_core.evaluate.suite import _decode, load_ground_truth
    from g2i_core.generate import read_manifest
    from g2i_core.storage import Storage

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", required=True)
    ap.add_argument("--resolution", type=int, default=16)
    ap.add_argument("runs", nargs="*", help="generation run ids of the test split")
    args = ap.parse_args()
    st = Storage(args.root)
    real, labels, _, test = load_ground_truth(st)
    val = load_ground_truth(st, split="val")[3]
    space = fit_space(real, labels, resolution=args.resolution, exclude=set(test) | set(val))

    def embed(images):
        return space.embed(at_resolution(np.stack(images), args.resolution))

    er = embed([real[n] for n in test])
    others = sorted(n for n in real if n not in set(test) | set(val))
    rng = np.random.default_rng(0)
    floors = [frechet_distance(er, embed([real[others[i]] for i in rng.choice(len(others), len(test), replace=False)]))
              for _ in range(3)]
    print(f"test covers: {len(test)}; total variance of the real test covers {np.trace(np.cov(er, rowvar=False)):.1f}")
    print(f"FID of the test covers vs 3 disjoint random sets of as many training covers: "
          f"{', '.join(f'{f:.2f}' for f in floors)}")
    print("| run | FID | mean term | covariance term | total variance |\n|---|---:|---:|---:|---:|")
    for run in args.runs:
        rows = {r["node_id"]: r["image_key"] for r in read_manifest(st, run).to_pylist()}
        eg = embed([_decode(st, rows[n]) for n in test])
        fid = frechet_distance(eg, er)
        mean_term = float(((eg.mean(0) - er.mean(0)) ** 2).sum())
        trace = np.trace(np.cov(eg, rowvar=False))
        print(f"| {run} | {fid:.2f} | {mean_term:.2f} | {fid - mean_term:.2f} | {trace:.1f} |")


if __name__ == "__main__":
    main()
