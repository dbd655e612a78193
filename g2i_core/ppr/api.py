"""One entry point over every PPR method, with a typed config saved next to each output."""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from g2i_core.ppr.candidates import Candidates
from g2i_core.ppr.graph import CsrGraph
from g2i_core.spark import spark_master_is_cluster

if TYPE_CHECKING:
    from g2i_core.ppr.propagate import WarmStart

log = logging.getLogger(__name__)
METHODS = ("auto", "exact", "push", "propagate", "spark-push", "spark-propagate", "graphframes")
SPARK_METHODS = ("spark-push", "spark-propagate", "graphframes")


@dataclass(frozen=True)
class PprConfig:
    method: str = "auto"  # auto: propagate for all (or >= 10% of) nodes, push for a small subset; their Spark
    # versions on a cluster master or when propagate would not fit ppr_memory_budget_gb (resolve_auto_placement)
    alpha: float = 0.15  # restart probability to the source
    top_k: int = 50
    eps: float = 1e-6  # push: residual threshold per out-degree
    row_k: int = 128  # propagate: entries kept per node row (K')
    sweeps: int = 8  # propagate: Gauss-Seidel sweeps over all rows
    refine_eps: float = 1e-3  # propagate: threshold of the per-source push whose residuals use the rows
    partitions: int = 0  # spark-push: source partitions; spark-propagate: node blocks (0: spark default parallelism)
    iterations: int = 20  # graphframes: GraphX's fixed iteration count
    batch_size: int = 256  # exact/graphframes: sources per batch
    tol: float = 1e-10  # exact: convergence tolerance
    use_weights: bool = True
    seed: int = 0

    def check(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha (restart probability) must be in (0, 1), got {self.alpha}")
        if self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")
        if self.row_k < 1 or self.sweeps < 0 or not 0 < self.refine_eps < 1:
            raise ValueError(f"propagate needs row_k >= 1, sweeps >= 0 and 0 < refine_eps < 1, got "
                             f"{self.row_k}, {self.sweeps}, {self.refine_eps}")
        if self.batch_size < 1 or self.partitions < 0 or self.iterations < 1:
            raise ValueError("batch_size and iterations must be >= 1, partitions >= 0")

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def resolve_auto(num_nodes: int, sources: np.ndarray | None) -> str:
    """``auto``: propagation shares work across sources, so it wins when most nodes are sources
    (docs/neighbours.md); a per-source push wins for a small subset (e.g. an incremental refresh)."""
    if sources is None or len(sources) >= 0.1 * num_nodes:
        return "propagate"
    return "push"


def propagate_phase_bytes(num_nodes: int, num_edges: int, row_k: int = 128, top_k: int = 50) -> dict[str, int]:
    """Memory of the single-machine ``propagate`` stage in each of its phases, from node and edge counts.

    - ``load``: the CSR graph (16 B/edge, ~90 B/node for offsets and ids) plus the string edges it is
      built from, ~150 B/edge (estimate).
    - ``compute``: the graph plus rows 8 K' B/node, the all-node output twice while its blocks are joined
      (2 x 16 K B/node) and ~40 B/node scratch; 2,542 MiB above the graph on the 1M-node benchmark
      (docs/neighbours.md).
    - ``output``: the graph, the candidate arrays (16 K B/node) and the ``ppr_candidates`` table being
      built and written, 66 B per candidate slot (two id strings of Goodreads length, rank, score, and
      the index arrays they are gathered with), fitted on the 2.4M-node run: 9.5 GiB peak RSS
      (docs/neighbours.md). Longer ids need more."""
    graph = 16 * num_edges + 90 * num_nodes
    return {"load": graph + 150 * num_edges,
            "compute": graph + num_nodes * (8 * row_k + 32 * top_k + 40),
            "output": graph + num_nodes * top_k * (16 + 66)}


def propagate_memory_bytes(num_nodes: int, num_edges: int, row_k: int = 128, top_k: int = 50) -> int:
    """Peak memory of the single-machine ``propagate`` stage: its largest phase (:func:`propagate_phase_bytes`)."""
    return max(propagate_phase_bytes(num_nodes, num_edges, row_k, top_k).values())


def memory_budget_bytes(budget_gb: int) -> int:
    """The ``ppr_memory_budget_gb`` setting in bytes; 0 means 75% of this machine's physical memory."""
    import os

    if budget_gb > 0:
        return budget_gb * 2**30
    return int(0.75 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def resolve_memory_budget(memory_budget: int | None) -> int:
    """``memory_budget`` bytes when given, else the ``ppr_memory_budget_gb`` setting's (the budget the engine
    choices of ppr, build-graph and ingest share)."""
    if memory_budget is not None:
        return memory_budget
    from g2i_core.config import Settings

    return memory_budget_bytes(Settings.load().ppr_memory_budget_gb)


def resolve_auto_placement(num_nodes: int, num_edges: int, num_sources: int | None, *, spark_master: str,
                           memory_budget: int, row_k: int = 128, top_k: int = 50) -> str:
    """``auto`` before the graph is loaded: a Spark method when the configured master is a cluster or
    ``propagate`` would not fit ``memory_budget`` bytes, else the single-machine rule (``resolve_auto``).
    ``num_sources`` None means all nodes."""
    most = num_sources is None or num_sources >= 0.1 * num_nodes
    too_big = propagate_memory_bytes(num_nodes, num_edges, row_k, top_k) > memory_budget
    if spark_master_is_cluster(spark_master) or too_big:
        return "spark-propagate" if most else "spark-push"
    return "propagate" if most else "push"


def compute_candidates(graph: CsrGraph, config: PprConfig, sources: np.ndarray | None = None, *,
                       warm: "WarmStart | None" = None, keep_rows: bool = False) -> Candidates:
    """Top-K candidates of ``sources`` (node indices; all nodes when None) with ``config.method``.
    ``warm`` and ``keep_rows`` apply to ``propagate`` (see ``propagate_candidates``); other methods have
    no rows."""
    config.check()
    started = time.monotonic()
    if config.method == "auto":
        config = dataclasses.replace(config, method=resolve_auto(graph.num_nodes, sources))
    if config.method == "exact":
        from g2i_core.ppr.exact import exact_candidates

        out = exact_candidates(graph, sources, alpha=config.alpha, top_k=config.top_k, tol=config.tol,
                               batch_size=config.batch_size)
    elif config.method == "push":
        from g2i_core.ppr.push import push_candidates

        out = push_candidates(graph, sources, alpha=config.alpha, top_k=config.top_k, eps=config.eps)
    elif config.method == "propagate":
        from g2i_core.ppr.propagate import propagate_candidates

        out = propagate_candidates(graph, sources, alpha=config.alpha, top_k=config.top_k, row_k=config.row_k,
                                   sweeps=config.sweeps, refine_eps=config.refine_eps, warm=warm,
                                   keep_rows=keep_rows)
    else:
        raise ValueError(f"method {config.method!r} runs on Spark: use g2i_core.ppr.spark_ppr.spark_candidates")
    log.info("ppr %s: %d sources in %.1fs", config.method, len(out.sources), time.monotonic() - started)
    return out
