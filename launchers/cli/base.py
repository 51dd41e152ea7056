"""What every `launch` subcommand shares: a parser whose errors are one line (exit 2), and the --runs-dir flag.

Imported by launchers/cli/main.py and the command modules (runs, models, server); imports nothing heavy.
"""

from __future__ import annotations

import argparse
from typing import NoReturn

from jobs.spec.errors import UserError


class Parser(argparse.ArgumentParser):
    """argparse, but errors are one line and exit 2 like every other bad input."""

    def error(self, message: str) -> NoReturn:
        command = self.prog.removeprefix("launch").strip()  # "launch: error: show: ..." not "launch: launch show"
        raise UserError(f"{command}: {message}" if command else message)


def runs_arguments(parser: Parser) -> None:
    parser.add_argument("--runs-dir", metavar="DIR", help="runs root (default: $CLUSTERFT_RUNS_DIR, else ./runs)")
