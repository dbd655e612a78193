"""Run ids from the logical date, where each dataset lives, incremental ingest planning, shard coverage.
Pure functions: no storage, no Airflow."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

SOURCES = ("goodreads", "amazon2014", "amazon2018", "attributes")
DEFAULT_SOURCES = ("goodreads", "amazon2014", "amazon2018")  # what a run refreshes unless `sources` names more
DEFAULT_LINK_ON = "artist,genre"  # attributes source: the columns that link items (the artworks sample's)


def ds_nodash(logical_date: Any) -> str:
    """``YYYYMMDD`` of a logical date (datetime/date or ``YYYY-MM-DD`` string)."""
    text = logical_date.isoformat() if hasattr(logical_date, "isoformat") else str(logical_date)
    day = text[:10]
    if len(day) != 10 or day[4] != "-" or day[7] != "-":
        raise ValueError(f"logical date must look like YYYY-MM-DD..., got {logical_date!r}")
    return day.replace("-", "")


def run_id_for(prefix: str, logical_date: Any) -> str:
    """Run id of a task's output for its logical date: a rerun of the same date replaces it."""
    return f"{prefix}-{ds_nodash(logical_date)}"


def graph_root(storage_root: str, source: str) -> str:
    """Where one source's MMAG (nodes ... neighbours) lives."""
    return f"{storage_root.rstrip('/')}/mmag/{source}"


def raw_defaults() -> dict[str, str]:
    """The sample dumps `g2i sample --upload` puts in storage, per source, relative to the storage root
    (resolved by the task at run time, so parsing the DAG reads no settings)."""
    base = "raw/sample"
    return {"goodreads": f"{base}/goodreads_books.json.gz", "amazon2014": f"{base}/meta_Books_2014.json.gz",
            "amazon2018": f"{base}/meta_Books_2018.json.gz", "attributes": f"{base}/artworks.csv.gz"}


def delta_uri(storage_root: str, source: str, logical_date: Any) -> str:
    """Where an incremental dump for one day is dropped: ``raw/delta/<source>/<YYYYMMDD>/``."""
    return f"{storage_root.rstrip('/')}/raw/delta/{source}/{ds_nodash(logical_date)}"


def state_uri(storage_root: str, source: str) -> str:
    return f"{storage_root.rstrip('/')}/_state/mmag_refresh/{source}.json"


def fingerprint(objects: Iterable[tuple[str, int, str]]) -> str:
    """Stable digest of (uri, size, etag) triples: changes iff the raw input changed."""
    h = hashlib.sha256()
    for uri, size, etag in sorted(objects):
        h.update(f"{uri}\0{size}\0{etag}\n".encode())
    return h.hexdigest()[:32]


@dataclass(frozen=True)
class SourceState:
    """What the last successful refresh of a source consumed (stored at ``state_uri``)."""

    logical_date: str
    full_fingerprint: str
    mode: str

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> "SourceState | None":
        if not data:
            return None
        return cls(data["logical_date"], data["full_fingerprint"], data["mode"])


def plan_source(source: str, *, ds: str, raw: str, full_fingerprint: str, delta: str | None,
                state: SourceState | None, published: bool, force: bool = False) -> dict | None:
    """Decide what the refresh does for one source on logical date ``ds`` (YYYY-MM-DD).

    - a delta dropped for ``ds`` and a published graph to merge it into -> ``delta`` ingest of it;
    - a changed full dump, nothing published yet, ``force``, or a rerun of the date that last processed
      this source -> ``full`` ingest (a rerun replaces the same run id: no duplicates);
    - otherwise ``None``: nothing new arrived, the source is skipped.
    """
    rerun = state is not None and state.logical_date == ds
    if delta and published and not force:
        mode, uri = "delta", delta
    elif force or not published or rerun or state is None or state.full_fingerprint != full_fingerprint:
        mode, uri = "full", raw
    else:
        return None
    # a delta night refreshes the neighbour candidates of the last version; a full dump recomputes them
    return {"source": source, "raw": uri, "mode": mode, "ds": ds, "run_id": run_id_for(source, ds),
            "full_fingerprint": full_fingerprint, "incremental": mode == "delta"}


def coverage_report(targets: Iterable[str], generated: Iterable[str]) -> dict[str, list[str]]:
    """How a sharded run covered its targets: ``duplicated`` (generated more than once), ``missing``
    (never generated) and ``unexpected`` (not a target). All empty means exactly-once coverage."""
    targets, generated = list(targets), list(generated)
    seen: dict[str, int] = {}
    for node in generated:
        seen[node] = seen.get(node, 0) + 1
    return {"duplicated": sorted(n for n, c in seen.items() if c > 1),
            "missing": sorted(set(targets) - set(seen)),
            "unexpected": sorted(set(seen) - set(targets))}
