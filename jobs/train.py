"""Entry point for `g2i train` (same arguments): python jobs/train.py ... or, for several GPUs,
accelerate launch jobs/train.py ... (torch job; no Spark needed)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from g2i_core.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
