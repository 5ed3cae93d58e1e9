"""Command-line parsing shared by the programs: argparse with one-line errors.

A usage error is one line naming the program and ending in ``(try --help)``,
raised as UsageError (exit status 2) instead of argparse's usage block on
stderr and ``sys.exit``.  argparse is imported only by the programs that need
it, when they need it.
"""

from __future__ import annotations

import argparse
from typing import NoReturn

from lacme.core.errors import UsageError


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are UsageError("PROG: message (try --help)")."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message} (try --help)")
