"""CLI subcommands: one module per stage, each with ``add_arguments(parser)`` and ``run(args) -> int``.

The module's docstring is the subcommand's ``--help`` text (first line = summary).
"""
