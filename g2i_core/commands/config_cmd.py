"""Print the effective settings as TOML-like lines (defaults < g2i.toml < G2I_* env). Secrets masked."""

from __future__ import annotations

import argparse

NAME = "config"
SUMMARY = "print the effective settings (secrets masked)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="TOML file (default: $G2I_CONFIG or ./g2i.toml)")


def run(args: argparse.Namespace) -> int:
    from g2i_core.config import Settings

    for k, v in Settings.load(args.config).redacted().items():
        print(f"{k} = {v!r}")
    return 0
