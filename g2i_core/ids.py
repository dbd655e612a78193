"""Validation of the free-form values a DAG-trigger user or a command line hands the pipeline.

One run-id rule (``RUN_ID_PATTERN``) is used by the DAG ``Param`` schemas, every CLI flag that names a
run and ``Storage`` when it builds a run's location, so ``../../escape`` cannot leave a ``file://`` root
and ``a#b`` cannot alias run ``a``. ``check_raw_uri`` keeps the ``raw`` param of ``mmag_refresh`` inside
the dataset's ``raw/`` prefix (or an operator's allow-list, ``G2I_RAW_ALLOW_PREFIXES``).

Stdlib only: the DAG files import this at parse time.
"""

from __future__ import annotations

import argparse
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from g2i_core.config import Settings

# A run id is one path segment: letters, digits, '.', '_' and '-', starting with a letter or digit,
# at most 128 characters; ".." anywhere is refused on top of the pattern.
RUN_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
# The same rule as a JSON-schema pattern for a DAG Param where "" means "the default" (a derived run id or
# the latest model). The look-aheads refuse ".." and a newline (Python's '$' also matches before a final
# "\n", and jsonschema searches with Python's re); the syntax is valid in Python and in the UI's JavaScript.
OPTIONAL_RUN_ID_PARAM_PATTERN = r"^(?!.*\n)(?!.*\.\.)(" + RUN_ID_PATTERN[1:-1] + r")?$"
# A raw dump URI as a Param value: s3:// or file://, no '?', '#', '\', '%' or control character, no ".."
# segment. Where it may point is checked by check_raw_uri in the plan task (the root is a worker setting).
RAW_URI_PARAM_PATTERN = r"^(?!.*(/|^)\.\.(/|$))((s3|file)://|raw/)[^?#%\\\x00-\x1f]+(?!\n)$"
# The same, or "" (an optional file under raw/, e.g. the labels of g2i_evaluate); "^(?![\s\S])" matches the
# empty string only (unlike "^$", which also accepts "\n").
OPTIONAL_RAW_URI_PARAM_PATTERN = r"^(?![\s\S])|" + RAW_URI_PARAM_PATTERN

# The attributes source's --link-on as a Param value: a comma list of column names (checked again, name by
# name, by g2i_core.ingest.attributes.parse_link_on when the run is planned).
LINK_ON_PARAM_PATTERN = r"^(?!.*\n)[A-Za-z0-9_][A-Za-z0-9_ .,-]{0,299}$"

_RUN_ID = re.compile(RUN_ID_PATTERN)
_BAD_URI_CHARS = re.compile(r"[?#%\\\x00-\x1f\x7f]")
_BAD_LOCATION_CHARS = re.compile(r"[?#\\\x00-\x1f\x7f]")


def check_run_id(value: str, what: str = "run_id") -> str:
    """``value`` when it is a valid run id, else ``ValueError`` saying what is allowed."""
    if not isinstance(value, str) or not _RUN_ID.fullmatch(value) or ".." in value:
        shown = value if not isinstance(value, str) or len(value) <= 40 else value[:40] + "..."
        raise ValueError(f"{what} must be 1-128 characters of letters, digits, '.', '_' or '-', start with a "
                         f"letter or digit and not contain '..'; got {shown!r}")
    return value


# ---- argparse types ------------------------------------------------------------------------------------------
def run_id_arg(value: str) -> str:
    """argparse ``type=`` for a required run id."""
    try:
        return check_run_id(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def optional_run_id_arg(value: str) -> str:
    """argparse ``type=`` for a run id where "" means "derive the default"."""
    return value if value == "" else run_id_arg(value)


def location_arg(value: str) -> str:
    """argparse ``type=`` for a folder given as a URI or local path (``--model``): '/' is fine, but no
    ".." segment, query, fragment, backslash or control character."""
    if not value or _BAD_LOCATION_CHARS.search(value) or _has_dotdot(value):
        raise argparse.ArgumentTypeError(f"must be a URI or path without '..' segments, '?', '#', '\\' or control "
                                         f"characters; got {value!r}")
    return value


def _has_dotdot(path: str) -> bool:
    return any(seg == ".." for seg in path.split("/"))


# ---- raw dump URIs (the DAG path) --------------------------------------------------------------------------
def raw_prefixes(settings: "Settings") -> list[str]:
    """Where a DAG run may read raw dumps: ``<storage_root>/raw/`` plus ``settings.raw_allow_prefixes``."""
    extra = [p.strip() for p in (getattr(settings, "raw_allow_prefixes", "") or "").split(",") if p.strip()]
    out = []
    for prefix in [f"{settings.storage_root.rstrip('/')}/raw/", *extra]:
        out.append(_normalised(prefix, what="raw_allow_prefixes entry").rstrip("/") + "/")
    return out


def resolve_raw_uri(uri: str, settings: "Settings") -> str:
    """A ``raw/...`` path relative to the storage root (the DAG's defaults: no settings are read at parse
    time) as a full URI; a full ``s3://`` / ``file://`` URI as given. Checked by ``check_raw_uri``."""
    if isinstance(uri, str) and uri.startswith("raw/"):
        uri = f"{settings.storage_root.rstrip('/')}/{uri}"
    return check_raw_uri(uri, settings)


def check_raw_uri(uri: str, settings: "Settings") -> str:
    """``uri`` when it lies strictly under the dataset's ``raw/`` prefix or an allow-listed prefix, else
    ``ValueError``. The URI is checked as given, never repaired: only lowercase ``s3://`` and ``file://``
    (``file`` without a host), no ``..`` or ``.`` segment, no query, fragment, percent-encoding, backslash
    or control character. Prefixes match whole path segments (``raw-evil/`` is not under ``raw/``)."""
    norm = _normalised(uri, what="raw dump URI")
    for prefix in raw_prefixes(settings):
        if norm.startswith(prefix) and len(norm) > len(prefix):
            return uri
    raise ValueError(f"raw dump URI {uri!r} is outside the allowed prefixes {raw_prefixes(settings)}: a DAG run "
                     f"reads dumps only under the storage root's raw/ or a prefix listed in G2I_RAW_ALLOW_PREFIXES")


def _normalised(uri: str, *, what: str) -> str:
    if not isinstance(uri, str) or _BAD_URI_CHARS.search(uri):
        raise ValueError(f"{what} {uri!r} has a query, fragment, percent-encoding, backslash or control character "
                         f"(not allowed for raw dumps)")
    scheme, sep, rest = uri.partition("://")
    if not sep or scheme not in {"s3", "file"}:
        raise ValueError(f"{what} {uri!r} must start with s3:// or file:// (lowercase; raw dumps)")
    host, _, path = rest.partition("/")
    if scheme == "file" and host:
        raise ValueError(f"{what} {uri!r}: file:// raw URIs take no host (file:///abs/path)")
    if scheme == "s3" and not host:
        raise ValueError(f"{what} {uri!r}: s3:// raw URIs need a bucket")
    segments = path.split("/")
    if any(seg in {"..", "."} for seg in segments):
        raise ValueError(f"{what} {uri!r} has a '.' or '..' segment (no traversal in raw dump URIs)")
    # Collapse repeated slashes so "raw//x" and "raw/x" compare alike; the original URI is what is read.
    return f"{scheme}://{host}/" + "/".join(seg for seg in segments if seg) + ("/" if path.endswith("/") else "")
