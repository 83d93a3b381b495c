"""The ``p2pay`` command line (issue 5): thin, on top of the library's public API.

`p2pay.cli.main.main` is the console script; the commands live in `p2pay.cli.main`
(keys, ledger, balances, channels, calls), `p2pay.cli.node_run` (``node run``) and
`p2pay.cli.demo` (``demo``). See ``p2pay --help``.
"""

from p2pay.cli.main import cli, main

__all__ = ["cli", "main"]
