"""The lacme-webserver's log: lacme.core.log's plain format without ``logging``.

Runs in the unprivileged webserver (the _lacme-www user).  Plain lines on
stderr need no ``logging`` module (about a tenth of this program's start-up);
when systemd may have connected stderr to the journal (JOURNAL_STREAM is
set) records go through ``lacme.core.log``, which decides between journald
fields and the same plain lines.
"""

from __future__ import annotations

import os
import sys

from lacme.core.text import escape_text

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing
if TYPE_CHECKING:
    import logging

PROG = "lacme-webserver"
DEBUG, INFO, WARNING, ERROR = 10, 20, 30, 40  # the logging module's levels


class Log:
    """The program's log, with lacme.core.log's plain format."""

    def __init__(self) -> None:
        self.level = INFO
        self.delegate: logging.Logger | None = None  # set when lacme.core.log is in charge

    def setup(self, *, quiet: bool = False, debug: bool = False) -> None:
        self.level = DEBUG if debug else (WARNING if quiet else INFO)
        if os.environ.get("JOURNAL_STREAM"):
            from lacme.core import log

            self.delegate = log.setup(PROG, quiet=quiet, debug=debug)

    def _emit(self, level: int, message: str, args: tuple[object, ...], exc_info: bool = False) -> None:
        if self.delegate is not None:
            self.delegate.log(level, message, *args, exc_info=exc_info)
            return
        if level < self.level:
            return
        text = message % args if args else message
        if level >= ERROR and not text.startswith("error"):
            text = "error: " + text
        elif level == WARNING:
            text = "warning: " + text
        if exc_info and self.level <= DEBUG:
            import traceback

            text += "\n" + traceback.format_exc().rstrip("\n")
        try:
            sys.stderr.write(text + "\n")
            sys.stderr.flush()
        except (OSError, ValueError):  # stderr gone: serving matters more than logging
            pass

    def debug(self, message: str, *args: object) -> None:
        if self.delegate is not None or self.level <= DEBUG:
            self._emit(DEBUG, message, args)

    def info(self, message: str, *args: object) -> None:
        self._emit(INFO, message, args)

    def warning(self, message: str, *args: object) -> None:
        self._emit(WARNING, message, args)

    def error(self, message: str, *args: object, exc_info: bool = False) -> None:
        self._emit(ERROR, message, args, exc_info)

    def exception(self, message: str, *args: object) -> None:
        self._emit(ERROR, message, args, exc_info=True)


logger = Log()


def log_safe(text: str) -> str:
    """What a client sent, for a log line: printable ASCII only, quotes and
    backslashes escaped (lacme.core.text), never cut: heads are bounded."""
    return escape_text(text, None, ascii_only=True, quote=True)
