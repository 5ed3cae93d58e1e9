"""Logging for every lacme program: plain stderr on a terminal or pipe,
structured journald fields under systemd.

``setup(name, quiet=, debug=)`` configures the root logger once.  Under
systemd (JOURNAL_STREAM names our stderr, RFC-less but documented in
systemd.exec(5)) records go to journald through systemd-python's
JournalHandler, and the ``extra=`` mapping of a record becomes journal fields
(keys in upper case, e.g. ``LACME_SECTION``).  Otherwise one plain line per
record goes to stderr.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import NoReturn

VERBOSE = 15  # between INFO and DEBUG: signatures, requests
logging.addLevelName(VERBOSE, "VERBOSE")


def under_journal() -> bool:
    """True when stderr is connected to the journal (systemd.exec(5))."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    if not stream or ":" not in stream:
        return False
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    dev, _, ino = stream.partition(":")
    return f"{st.st_dev}:{st.st_ino}" == f"{dev}:{ino}"


class _PlainFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        if record.levelno >= logging.ERROR and not msg.startswith("error"):
            msg = "error: " + msg
        elif record.levelno == logging.WARNING:
            msg = "warning: " + msg
        if record.exc_info and logging.getLogger().isEnabledFor(logging.DEBUG):
            msg += "\n" + self.formatException(record.exc_info)
        return msg


def _plain_handler() -> logging.Handler:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_PlainFormatter())
    return handler


class _JournalOnDemand(logging.Handler):
    """systemd-python's JournalHandler, loaded with the first record.

    A component that logs nothing at its level in a run (the ACME client,
    usually) then never imports systemd.journal; the webserver (an access
    line per request) and accountd (a line per signature) load it in every
    run.  Without systemd-python, plain lines go to stderr, which the
    journal records too, instead of an ImportError at start.
    """

    def __init__(self, identifier: str) -> None:
        super().__init__()
        self.identifier = identifier
        self.target: logging.Handler | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if self.target is None:
            try:
                from systemd.journal import JournalHandler
            except ImportError:
                self.target = _plain_handler()
            else:
                self.target = JournalHandler(SYSLOG_IDENTIFIER=self.identifier)
        self.target.emit(record)


def exit_now(code: int) -> NoReturn:
    """Flush the logs and standard streams, then exit at once (os._exit).

    For a program's last step, once everything is written, closed, reaped
    and removed: what sys.exit would add is the interpreter's teardown
    (modules, threads, the cryptography or requests stack), tens of ms of
    CPU that the process waiting for this one would wait for too.
    """
    try:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    os._exit(code)


def setup(name: str, *, quiet: bool = False, debug: bool = False) -> logging.Logger:
    """Configure logging for program ``name`` and return its logger."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    level = logging.DEBUG if debug else (logging.WARNING if quiet else logging.INFO)
    handler: logging.Handler = _JournalOnDemand(name) if under_journal() else _plain_handler()
    root.addHandler(handler)
    root.setLevel(level)
    return logging.getLogger(name)
