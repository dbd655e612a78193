"""Personalized PageRank neighbour candidates: one definition, several engines.

Definition (every method approximates the same vector): a walk from source ``s`` stops at each
step with probability ``alpha`` (default 0.15); otherwise it follows an out-edge chosen in
proportion to its weight, and from a node with no out-edges it jumps back to ``s``. ``ppr_s(v)``
is the probability the walk stops at ``v``. Candidates of ``s`` are the top-K nodes by
``ppr_s`` excluding ``s`` itself, ties broken by node id.

Engines: ``exact`` (power iteration, reference), ``push`` (single-machine numba forward push),
``spark-mc`` (Monte Carlo walks as Spark SQL jobs) and ``graphframes`` (GraphX parallel PPR).
"""
