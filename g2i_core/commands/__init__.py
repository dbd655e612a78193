"""CLI subcommands: one module per stage, each with ``add_arguments(parser)`` and ``run(args) -> int``.

The module's docstring is the subcommand's ``--help`` text (first line = summary).
"""


def add_graph_run_arg(p, what: str = "the tables it reads") -> None:
    """``--graph-run-id``: the MMAG version a stage reads. Airflow passes it on every task, so a task
    reads exactly the run it was given (a cleared old run reproduces its outputs); by hand the
    default is the live version."""
    from g2i_core.ids import optional_run_id_arg

    p.add_argument("--graph-run-id", default="", type=optional_run_id_arg,
                   help=f"run id of {what} (default: the live version)")
