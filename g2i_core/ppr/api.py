"""One entry point over every PPR method, with a typed config saved next to each output."""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass

import numpy as np

from g2i_core.ppr.candidates import Candidates
from g2i_core.ppr.graph import CsrGraph

log = logging.getLogger(__name__)
METHODS = ("auto", "exact", "push", "propagate", "spark-push", "graphframes")
SPARK_METHODS = ("spark-push", "graphframes")


@dataclass(frozen=True)
class PprConfig:
    method: str = "auto"  # auto: propagate for all (or >= 10% of) nodes, push for a small subset
    alpha: float = 0.15  # restart probability to the source
    top_k: int = 50
    eps: float = 1e-6  # push: residual threshold per out-degree
    row_k: int = 128  # propagate: entries kept per node row (K')
    sweeps: int = 8  # propagate: Gauss-Seidel sweeps over all rows
    refine_eps: float = 1e-3  # propagate: threshold of the per-source push whose residuals use the rows
    partitions: int = 0  # spark-push: source partitions (0: 4 x spark default parallelism)
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


def compute_candidates(graph: CsrGraph, config: PprConfig, sources: np.ndarray | None = None) -> Candidates:
    """Top-K candidates of ``sources`` (node indices; all nodes when None) with ``config.method``."""
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
                                   sweeps=config.sweeps, refine_eps=config.refine_eps)
    else:
        raise ValueError(f"method {config.method!r} runs on Spark: use g2i_core.ppr.spark_ppr.spark_candidates")
    log.info("ppr %s: %d sources in %.1fs", config.method, len(out.sources), time.monotonic() - started)
    return out
