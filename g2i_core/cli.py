"""``g2i`` command line: one subcommand per pipeline stage.

Subcommand modules are imported only when chosen, so ``g2i --help`` stays fast and never imports
torch or pyspark.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# name -> module under g2i_core.commands (order = order in --help)
COMMANDS: dict[str, str] = {
    "s3": "s3",
    "sample": "sample",
    "serve-images": "serve_images",
    "config": "config_cmd",
}

SUMMARIES: dict[str, str] = {
    "s3": "start/stop/status of the embedded S3 server (SeaweedFS on 127.0.0.1)",
    "sample": "generate sample raw dumps (Goodreads, Amazon 2014/2018) and procedural images",
    "serve-images": "serve the sample images over HTTP on loopback for fetch-images",
    "config": "print the effective settings (secrets masked)",
}


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="g2i", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in COMMANDS.items():
        if selected is None or name != selected:
            sub.add_parser(name, help=SUMMARIES.get(name, ""))
            continue
        mod = importlib.import_module(f"g2i_core.commands.{module}")
        p = sub.add_parser(name, help=SUMMARIES.get(name, ""), description=mod.__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    selected = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(selected if selected in COMMANDS else None)
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
