"""``g2i`` command line: one subcommand per pipeline stage.

Subcommand modules are imported only when chosen, so ``g2i --help`` stays fast and never imports
torch or pyspark.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# Subcommands are discovered from g2i_core/commands/*.py: each module sets NAME and SUMMARY and
# imports nothing heavy at module level (torch/pyspark are imported inside run()).
ORDER = ["s3", "sample", "serve-images", "ingest", "fetch-images", "build-graph", "ppr", "embed", "rerank",
         "export", "train", "generate", "evaluate", "config"]


def discover() -> dict[str, tuple[str, str]]:
    """name -> (module, summary), read from module source without importing it."""
    import ast
    import pathlib

    found = {}
    for path in sorted(pathlib.Path(__file__).with_name("commands").glob("*.py")):
        if path.name.startswith("_"):
            continue
        tree = ast.parse(path.read_text())
        consts = {t.id: n.value.value for n in tree.body if isinstance(n, ast.Assign)
                  for t in n.targets if isinstance(t, ast.Name) and isinstance(n.value, ast.Constant)}
        if "NAME" in consts:
            found[consts["NAME"]] = (path.stem, consts.get("SUMMARY", ""))
    rank = {n: i for i, n in enumerate(ORDER)}
    return dict(sorted(found.items(), key=lambda kv: (rank.get(kv[0], len(ORDER)), kv[0])))


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="g2i", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, summary) in discover().items():
        if selected is None or name != selected:
            sub.add_parser(name, help=summary)
            continue
        mod = importlib.import_module(f"g2i_core.commands.{module}")
        p = sub.add_parser(name, help=summary, description=mod.__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    selected = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(selected)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("botocore", "urllib3", "py4j", "boto3", "s3transfer", "filelock", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        # Errors that teach: one line, no traceback, unless --verbose.
        if args.verbose:
            raise
        print(f"g2i {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
