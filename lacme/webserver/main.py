"""The ``lacme-webserver`` program: answers http-01 challenges (RFC 8555 8.3).

Runs unprivileged (the _lacme-www user), spawned by the master or started by
systemd socket activation; either way its listening sockets arrive with the
sd_listen_fds protocol, or it binds ``--listen`` addresses itself
(``listeners``).  It serves GET and HEAD of
``/.well-known/acme-challenge/<token>`` from the files that the master
writes into the challenge directory (``challenges``), and nothing else, in
one ``selectors`` loop (``server``).  This module is the process: the
command line, signals, the descriptor limit, sd_notify, and the exit.

Started for every run by the master, which waits for its READY=1: start-up
cost counts.  So no asyncio (it pulls in ssl and concurrent.futures), no
argparse unless the command line needs it (help, errors), no logging module
unless the journal is the destination, and sd_notify is one datagram.
"""

from __future__ import annotations

import os
import signal
import socket
import sys

from lacme.core.errors import EXIT_OK, LacmeError, UsageError
from lacme.webserver.challenges import open_challenge_directory
from lacme.webserver.listeners import Listener, adopt_inherited, bind_listener, remove_socket_file
from lacme.webserver.log import PROG, logger
from lacme.webserver.server import ChallengeServer

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

DEFAULT_REQUEST_TIMEOUT = 10.0
DEFAULT_MAX_CONNECTIONS = 4096
RESERVED_FDS = 64  # descriptors kept free for listeners, challenge files, logging


# --------------------------------------------------------------------- command line

class Options:
    """The command line, parsed."""

    __slots__ = ("challenge_directory", "debug", "idle_timeout", "listen", "max_connections", "quiet",
                 "request_timeout")

    def __init__(self, challenge_directory: str, idle_timeout: float = 0.0, listen: tuple[str, ...] = (),
                 request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
                 max_connections: int = DEFAULT_MAX_CONNECTIONS, quiet: bool = False,
                 debug: bool = False) -> None:
        self.challenge_directory = challenge_directory
        self.idle_timeout = idle_timeout
        self.listen = listen
        self.request_timeout = request_timeout
        self.max_connections = max_connections
        self.quiet = quiet
        self.debug = debug


def _seconds(text: str) -> float:
    value = float(text)
    if not value >= 0 or value == float("inf"):
        raise ValueError(text)
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(text)
    return value


_VALUE_OPTIONS: dict[str, Callable[[str], object]] = {
    "--challenge-directory": str, "--idle-timeout": _seconds, "--listen": str,
    "--request-timeout": _seconds, "--max-connections": _positive}
_FLAG_OPTIONS = {"-q": "quiet", "--quiet": "quiet", "--debug": "debug"}


def _parse_simple(argv: list[str]) -> dict[str, Any] | None:
    """The common command lines (``--name=value``, ``--name value``, flags,
    all spelled out) without argparse; None for anything else, which
    argparse then handles (help, abbreviations, errors) exactly as before."""
    listen: list[object] = []
    values: dict[str, Any] = {"listen": listen}
    args = iter(argv)
    for arg in args:
        if arg in _FLAG_OPTIONS:
            values[_FLAG_OPTIONS[arg]] = True
            continue
        name, equals, text = arg.partition("=")
        convert = _VALUE_OPTIONS.get(name)
        if convert is None:
            return None
        if not equals:
            text = next(args, "-")
            if text.startswith("-"):
                return None
        try:
            value = convert(text)
        except ValueError:
            return None
        key = name[2:].replace("-", "_")
        if key == "listen":
            listen.append(value)
        else:
            values[key] = value
    return values if "challenge_directory" in values else None


def _parse_with_argparse(argv: list[str]) -> dict[str, Any]:
    from lacme.core.cli import ArgumentParser  # argparse: only for unusual command lines

    parser = ArgumentParser(prog=PROG, description="Serve http-01 ACME challenge responses.")
    parser.add_argument("--challenge-directory", required=True, metavar="DIR",
                        help="directory holding one file per token (written by lacme)")
    parser.add_argument("--idle-timeout", type=_seconds, default=0.0, metavar="SECONDS",
                        help="exit after SECONDS without a connection (0: never)")
    parser.add_argument("--listen", action="append", default=[], metavar="ADDR",
                        help="bind IPV4:PORT, [IPV6]:PORT or an absolute UNIX socket path (repeatable)")
    parser.add_argument("--request-timeout", type=_seconds, default=DEFAULT_REQUEST_TIMEOUT,
                        metavar="SECONDS", help="deadline for a request head (default: %(default)s)")
    parser.add_argument("--max-connections", type=_positive, default=DEFAULT_MAX_CONNECTIONS,
                        metavar="N", help="past N open connections the oldest is closed")
    parser.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only")
    parser.add_argument("--debug", action="store_true", help="log debugging details")
    return vars(parser.parse_args(argv))


def parse_args(argv: list[str]) -> Options:
    """Command line to Options; UsageError on anything wrong."""
    values = _parse_simple(argv)
    if values is None:
        values = _parse_with_argparse(argv)
    values["listen"] = tuple(values["listen"])
    options = Options(**values)
    if options.request_timeout <= 0:
        raise UsageError("--request-timeout: must be greater than 0")
    return options


# --------------------------------------------------------------------- process

def notify_systemd(state: str) -> None:
    """sd_notify(3) when systemd (or the master) asked for it (Type=notify):
    one datagram to the UNIX socket named by $NOTIFY_SOCKET ("@": abstract).

    Written here rather than taken from python-systemd (as lacme.systemd and
    accountd do): loading libsystemd would cost this program's start-up,
    which the master waits for in every run, more than the datagram itself."""
    path = os.environ.get("NOTIFY_SOCKET", "")
    if not path:
        return
    if path[0] not in "@/":
        logger.warning("NOTIFY_SOCKET=%s: not a UNIX socket path, not notified", path)
        return
    address = b"\0" + os.fsencode(path[1:]) if path[0] == "@" else os.fsencode(path)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(state.encode(), address)
    except OSError as exc:
        logger.warning("NOTIFY_SOCKET=%s: %s", path, exc.strerror or exc)


class StopSignals:
    """SIGTERM and SIGINT ask for a clean exit, from start-up to the end.

    The handler only sets a flag; the wakeup pipe (signal.set_wakeup_fd)
    makes a waiting select() return.  Once the loop has ended, ``ignore``
    makes further signals harmless: interpreter shutdown restores the
    default action of handled signals (death by signal, a non-zero status
    for the master or systemd), but leaves ignored ones ignored.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.server: ChallengeServer | None = None
        self.received = False
        self.read_fd, self.write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self.write_fd, warn_on_full_buffer=False)
        for signum in self.SIGNALS:
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, frame: object) -> None:
        self.received = True
        if self.server is not None:
            self.server.stop_requested = True

    def watch(self, server: ChallengeServer) -> None:
        self.server = server
        server.stop_requested = self.received

    def ignore(self) -> None:
        for signum in self.SIGNALS:
            signal.signal(signum, signal.SIG_IGN)
        signal.set_wakeup_fd(-1)
        os.close(self.read_fd)
        os.close(self.write_fd)


def raise_fd_limit(wanted: int) -> int:
    """Raise the soft RLIMIT_NOFILE towards ``wanted``; return the soft limit."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return wanted if soft == resource.RLIM_INFINITY else soft


def serve(dir_fd: int, listeners: list[Listener], options: Options, max_connections: int,
          signals: StopSignals) -> None:
    server = ChallengeServer(dir_fd, listeners, options.request_timeout, max_connections,
                             options.idle_timeout)
    signals.watch(server)
    try:
        if server.stop_requested:
            logger.debug("exiting: signal before serving")
            return
        for listener in listeners:
            logger.info("listening on %s", listener.name)
        notify_systemd("READY=1")
        reason = server.serve(signals.read_fd)
        logger.debug("exiting: %s", reason)
        notify_systemd("STOPPING=1")
    finally:
        server.close_all()


def run(options: Options) -> int:
    signals = StopSignals()
    listeners: list[Listener] = []
    dir_fd = -1
    try:
        listeners = adopt_inherited()
        if not listeners and not options.listen:
            raise UsageError("no listening socket: give --listen=ADDR or start under socket activation")
        dir_fd = open_challenge_directory(options.challenge_directory)
        for address in options.listen:
            listeners.append(bind_listener(address))
        fd_limit = raise_fd_limit(options.max_connections + RESERVED_FDS)
        max_connections = max(1, min(options.max_connections, fd_limit - RESERVED_FDS))
        serve(dir_fd, listeners, options, max_connections, signals)
    finally:
        # Stopping already: a further SIGTERM must not turn the exit into a death by signal.
        signals.ignore()
        for listener in listeners:
            remove_socket_file(listener)
            listener.sock.close()
        if dir_fd >= 0:
            os.close(dir_fd)
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    try:
        options = parse_args(sys.argv[1:] if argv is None else argv)
    except UsageError as exc:
        logger.setup()
        logger.error("%s", exc)
        return exc.exit_code
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    logger.setup(quiet=options.quiet, debug=options.debug)
    try:
        return run(options)
    except LacmeError as exc:
        logger.error("%s", exc, exc_info=options.debug)
        return exc.exit_code
