"""Retention of a dataset root's published runs (`g2i gc`).

Every night publishes a new run of every table (~7.5 GB at 2.4M Goodreads nodes, bench/results/scale.md)
and nothing else ever deletes a run (docs/architecture.md, storage contract point 6). ``plan_gc`` decides,
per table, which runs go; ``apply_gc`` removes them. A run of a table is kept when any of these holds:

* ``_LATEST`` names it (the live run, even when an older run was made live on purpose);
* it is one of the newest ``keep_runs`` published runs (by logical date, then publish time);
* it is protected: the graph run the registered model (``models/_LATEST``) trained on, which backfills
  read pinned, and any run id the caller names;
* it is younger than the grace period (published, or for a run never published its newest attempt started,
  less than 24 h ago): a writer may still be at work on it, or a reader may have resolved it a moment ago.

A removed run loses its manifest first and its data second, so a reader asking for it gets "not published",
never a manifest whose files are gone, and a gc killed in between leaves data without a manifest: a run never
published, which the next gc removes. Staging folders (``_staging/<stage>/<run_id>/``) of runs removed from
every table and kept by none go too. Content-addressed images, models, generations and reports are not
touched: images are shared across runs and need a mark-and-sweep over every kept ``node_images``.
"""

from __future__ import annotations

import calendar
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from g2i_core.storage import ATTEMPT_GRACE_SECONDS, attempt_age_s

if TYPE_CHECKING:
    from g2i_core.storage import Storage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetentionPolicy:
    keep_runs: int = 7  # newest published runs kept per table, besides the live and protected ones
    grace_s: float = ATTEMPT_GRACE_SECONDS
    protect: tuple[str, ...] = ()  # run ids kept in every table

    def check(self) -> None:
        if self.keep_runs < 1:
            raise ValueError(f"keep_runs must be >= 1 (the newest run is always kept), got {self.keep_runs}")
        if self.grace_s < 0:
            raise ValueError(f"grace_s must be >= 0, got {self.grace_s}")


@dataclass(frozen=True)
class Removal:
    table: str
    run_id: str
    reason: str
    objects: int  # manifest + data objects


@dataclass
class GcPlan:
    root: str
    removals: list[Removal] = field(default_factory=list)
    kept: dict[str, list[str]] = field(default_factory=dict)  # table -> kept run ids, newest first
    protected: tuple[str, ...] = ()
    staging: list[str] = field(default_factory=list)  # _staging prefixes to remove

    @property
    def objects(self) -> int:
        return sum(r.objects for r in self.removals)


def protected_runs(storage: "Storage") -> set[str]:
    """Run ids read pinned after the night that published them: the registered model's graph run."""
    graph_run = (_pointer(storage, "models") or {}).get("graph_run_id")
    return {graph_run} if graph_run else set()


def tables(storage: "Storage") -> list[str]:
    """The published tables right under the root: folders with a ``_manifests/`` folder."""
    return [name for name in storage.list_dirs(storage.root)
            if not name.startswith(("_", ".")) and "_manifests" in storage.list_dirs(storage.uri(name))]


def plan_gc(storage: "Storage", policy: RetentionPolicy = RetentionPolicy()) -> GcPlan:
    """What ``apply_gc`` would remove under ``storage``'s root, and what it keeps; changes nothing."""
    policy.check()
    protected = protected_runs(storage) | set(policy.protect)
    plan = GcPlan(storage.root, protected=tuple(sorted(protected)))
    kept_anywhere: set[str] = set()
    removed_anywhere: set[str] = set()
    for table in tables(storage):
        manifests = {}
        for uri in storage.list(storage.uri(table, "_manifests")):
            if uri.endswith(".json"):
                m = storage.get_json(uri)
                manifests[m["run_id"]] = m
        data_runs = {d[len("run="):] for d in storage.list_dirs(storage.uri(table)) if d.startswith("run=")}
        live = (_pointer(storage, table) or {}).get("run_id")
        newest = sorted(manifests, key=lambda r: (manifests[r].get("logical_date") or "",
                                                  manifests[r].get("published_at") or "", r), reverse=True)
        keep = set(newest[:policy.keep_runs]) | ({live} if live else set()) | (protected & (set(manifests) | data_runs))
        for run_id in newest[policy.keep_runs:]:
            if run_id in keep:
                continue
            if _published_age_s(manifests[run_id]) < policy.grace_s:
                keep.add(run_id)
                continue
            plan.removals.append(Removal(table, run_id, f"published {manifests[run_id].get('published_at')}, "
                                         f"older than the newest {policy.keep_runs}",
                                         1 + len(storage.list(storage.uri(table, f"run={run_id}")))))
        for run_id in sorted(data_runs - set(manifests) - keep):
            objects = len(storage.list(storage.uri(table, f"run={run_id}")))
            if not objects:  # an empty folder: SeaweedFS keeps listing a prefix after its objects are deleted
                continue
            attempts = [d[len("attempt="):] for d in storage.list_dirs(storage.uri(table, f"run={run_id}"))
                        if d.startswith("attempt=")]
            if attempts and min(attempt_age_s(a) for a in attempts) < policy.grace_s:
                keep.add(run_id)  # a writer may still be at work
                continue
            plan.removals.append(Removal(table, run_id, "never published", objects))
        plan.kept[table] = [r for r in newest if r in keep] + sorted(keep - set(newest))
        kept_anywhere |= keep
        removed_anywhere |= {r.run_id for r in plan.removals if r.table == table}
    gone = removed_anywhere - kept_anywhere
    for stage in storage.list_dirs(storage.uri("_staging")):
        plan.staging += [storage.uri("_staging", stage, run_id)
                         for run_id in storage.list_dirs(storage.uri("_staging", stage)) if run_id in gone]
    return plan


def apply_gc(storage: "Storage", plan: GcPlan) -> int:
    """Remove what ``plan`` lists: each run's manifest first, then its data. Returns the objects deleted."""
    deleted = 0
    live: dict[str, str | None] = {}
    for i, r in enumerate(plan.removals, 1):
        if r.table not in live:  # read again: a run made live since the plan is not removed
            live[r.table] = (_pointer(storage, r.table) or {}).get("run_id")
        if live[r.table] == r.run_id:
            log.warning("gc: %s run %s became live after the plan; kept", r.table, r.run_id)
            continue
        manifest = storage.uri(r.table, "_manifests", f"{r.run_id}.json")
        if storage.exists(manifest):
            storage.delete(manifest)  # first: from now on a reader is told "not published"
            deleted += 1
        deleted += storage.delete_prefix(storage.uri(r.table, f"run={r.run_id}"))
        log.info("gc %d/%d: %s run %s removed (%s)", i, len(plan.removals), r.table, r.run_id, r.reason)
    for prefix in plan.staging:
        deleted += storage.delete_prefix(prefix)
    return deleted


def _pointer(storage: "Storage", folder: str) -> dict | None:
    """``<folder>/_LATEST`` (a table's or ``models``'), or None where there is none: one GET."""
    try:
        return storage.get_json(storage.uri(folder, "_LATEST"))
    except FileNotFoundError:
        return None


def _published_age_s(manifest: dict) -> float:
    stamp = manifest.get("published_at")
    try:
        return time.time() - calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ"))
    except (TypeError, ValueError):
        return float("inf")
