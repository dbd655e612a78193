"""Remove old runs of a dataset root's tables: everything but the live run, the newest --keep-runs
published runs, the registered model's graph run (models/_LATEST) and runs younger than a day. Prints the
plan; deletes only with --apply. See g2i_core/retention.py for the rules.
"""

from __future__ import annotations

import argparse

NAME = "gc"
SUMMARY = "remove old published runs of a dataset root (dry run unless --apply)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from g2i_core.ids import run_id_arg

    p.add_argument("--root", default=None, help="dataset root (e.g. s3://g2i/mmag/goodreads)")
    p.add_argument("--keep-runs", type=int, default=7, help="newest published runs kept per table (default 7)")
    p.add_argument("--protect", action="append", default=[], type=run_id_arg, metavar="RUN_ID",
                   help="a run id kept in every table (repeatable)")
    p.add_argument("--apply", action="store_true", help="delete; without it only the plan is printed")


def run(args: argparse.Namespace) -> int:
    from g2i_core.config import Settings
    from g2i_core.retention import RetentionPolicy, apply_gc, plan_gc
    from g2i_core.storage import Storage

    storage = Storage.from_settings(Settings.load(), root=args.root)
    plan = plan_gc(storage, RetentionPolicy(keep_runs=args.keep_runs, protect=tuple(args.protect)))
    print(f"{storage.root}: {len(plan.kept)} tables; protected runs: {', '.join(plan.protected) or 'none'}")
    for table, runs in plan.kept.items():
        gone = [r.run_id for r in plan.removals if r.table == table]
        print(f"  {table}: keep {', '.join(runs) or '-'}" + (f"; remove {', '.join(gone)}" if gone else ""))
    for prefix in plan.staging:
        print(f"  staging: remove {prefix}")
    if not plan.removals and not plan.staging:
        print("nothing to remove")
        return 0
    if not args.apply:
        print(f"dry run: {len(plan.removals)} runs ({plan.objects} objects) would be removed; pass --apply")
        return 0
    print(f"removed {apply_gc(storage, plan)} objects")
    return 0
