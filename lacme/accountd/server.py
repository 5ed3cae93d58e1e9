"""lacme-accountd's server: the accountd wire protocol on stdio, sockets and descriptors.

Runs in lacme-accountd, as the account key's owner.  One connection is a
greeting, the master's scope if the first line is one, then request lines
each answered with a signature, until EOF or the first refusal
(lacme.protocol.wire; what is refused: lacme.accountd.policy).  Connections come on stdin/stdout
(``--stdio``), on descriptors handed over with sd_listen_fds(3) (a listening
socket: an accept loop; a connection: serve it and exit), or on a UNIX socket
bound here (mode 0600, in a directory others cannot write).  One thread per
connection; the main thread waits for a stop signal or the end of the work.
"""

from __future__ import annotations

import itertools
import logging
import os
import select
import signal
import socket
import stat
import threading
from typing import Any, BinaryIO

from lacme.accountd.keys import Signer
from lacme.accountd.policy import Guard, Policy
from lacme.core import descriptors, log
from lacme.core.errors import LacmeError
from lacme.core.sockdir import check_socket_directory
from lacme.core.text import escape_text
from lacme.protocol import jws, wire
from lacme.protocol.scope import MAX_SCOPE_LINE

NAME = "lacme-accountd"  # the program, its logger and its journal identifier
LISTEN_BACKLOG = 16

logger = logging.getLogger(NAME)


# ---------------------------------------------------------------------------
# One connection

def show_request(req: wire.SignRequest) -> str:
    """A signed request for its log line: the protected header and the payload.

    Not cut (``limit=None``): the log is the record of what the key signed,
    and wire.MAX_LINE already bounds a request.  parse_sign_request accepted
    only UTF-8 JSON, so ``replace`` has nothing to replace."""
    header = jws.b64u_decode(req.signing_input.split(b".", 1)[0]).decode("utf-8", "replace")
    payload = req.payload.decode("utf-8", "replace")
    return f"header={escape_text(header, limit=None)} payload={escape_text(payload, limit=None)}"


def serve_connection(rfile: BinaryIO, wfile: BinaryIO, signer: Signer, conn_id: str) -> str | None:
    """Greet, take the scope if the first line is one, then sign request lines
    until EOF or the first refusal (lacme.accountd.policy): its reason, which
    the caller logs, or None."""
    guard = Guard(signer.policy or Policy(), signer.origin, signer.fallback_origin)
    try:
        wfile.write(signer.greeting())
        wfile.flush()
        while True:
            # The first line may be a scope, which grows with the run's orders.
            line = rfile.readline((MAX_SCOPE_LINE if guard.lines == 0 else wire.MAX_LINE) + 1)
            if not line:
                return None
            try:
                req = guard.take(line, alg=signer.key.alg, jwk=signer.key.jwk, kid=signer.keyid,
                                 binding=signer.binding(), new_key=signer.rollover())
            except wire.Refused as exc:
                return exc.reason
            if req is None:
                logger.log(log.VERBOSE, "[%s] SCOPE %s", conn_id, guard.describe_scope())
                continue
            sig = signer.sign(req)
            logger.log(log.VERBOSE, "[%s] SIGNED %s", conn_id, show_request(req))
            wfile.write(wire.encode_signature(sig))
            wfile.flush()
    except OSError as exc:
        logger.debug("[%s] connection error: %s", conn_id, exc)
    return None


def serve_socket(sock: socket.socket, signer: Signer, conn_id: str) -> None:
    """Serve one connected socket and close it."""
    logger.log(log.VERBOSE, "[%s] accepted new connection", conn_id)
    try:
        with sock, sock.makefile("rb") as rfile, sock.makefile("wb") as wfile:
            refused = serve_connection(rfile, wfile, signer, conn_id)
        if refused is not None:  # the record, in this accountd's log; the master says it failed
            logger.warning("[%s] NOSIGN %s", conn_id, refused)
    except OSError as exc:
        logger.debug("[%s] close: %s", conn_id, exc)
    logger.log(log.VERBOSE, "[%s] connection terminated", conn_id)


def accept_forever(listener: socket.socket, signer: Signer, counter: itertools.count) -> None:
    """Accept connections and serve each in a thread of its own."""
    while True:
        try:
            conn, _ = listener.accept()
        except OSError as exc:
            logger.debug("accept: %s", exc)
            return
        start_thread(serve_socket, conn, signer, str(next(counter)))


def start_thread(target: Any, *args: Any) -> threading.Thread:
    thread = threading.Thread(target=target, args=args, daemon=True)
    thread.start()
    return thread


# ---------------------------------------------------------------------------
# The main thread: waits for a stop signal or for the work to be done

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Waiter:
    """Where the main thread sleeps while threads serve.

    SIGINT/SIGTERM reach it through ``signal.set_wakeup_fd``: the C-level
    handler writes the signal number to a socket we select on, so a signal
    that arrives just before a blocking call is never lost (a Python handler
    raising an exception would only run once that call returns, and a signal
    taken by another thread would not interrupt it at all).  Workers that
    finish write DONE to the same socket.
    """

    DONE = 0xFF  # not a signal number

    def __init__(self) -> None:
        self._r, self._w = socket.socketpair()
        self._r.setblocking(False)
        self._w.setblocking(False)
        for signum in STOP_SIGNALS:
            signal.signal(signum, lambda _signum, _frame: None)
        signal.set_wakeup_fd(self._w.fileno(), warn_on_full_buffer=False)

    def done(self) -> None:
        """Called by a worker thread when it is finished."""
        try:
            self._w.send(bytes([self.DONE]))
        except OSError:
            pass

    def wait(self, workers: int | None = None) -> str | None:
        """The name of the stop signal, or None once ``workers`` have called done()."""
        remaining = workers
        while remaining is None or remaining > 0:
            select.select([self._r], [], [])
            try:
                data = self._r.recv(256)
            except BlockingIOError:
                continue
            for byte in data:
                if byte != self.DONE:
                    return signal.Signals(byte).name
                if remaining is not None:
                    remaining -= 1
        return None

    def close(self) -> None:
        signal.set_wakeup_fd(-1)
        self._r.close()
        self._w.close()


def run_in_thread(waiter: Waiter, target: Any, *args: Any) -> None:
    """``target(*args)`` in a thread that tells ``waiter`` when it is done."""

    def work() -> None:
        try:
            target(*args)
        finally:
            waiter.done()

    start_thread(work)


# ---------------------------------------------------------------------------
# Where connections come from: stdio, inherited descriptors, a socket we bind

def notify_ready() -> None:
    if os.environ.get("NOTIFY_SOCKET"):
        from systemd import daemon  # only under systemd

        daemon.notify("READY=1")


def serve_stdio(signer: Signer, refusals: list[str]) -> None:
    with os.fdopen(0, "rb", closefd=False) as rfile, os.fdopen(1, "wb", closefd=False) as wfile:
        refused = serve_connection(rfile, wfile, signer, str(os.getpid()))
    if refused is not None:
        refusals.append(refused)


def run_stdio(signer: Signer, waiter: Waiter) -> None:
    """Serve the one connection on stdin/stdout.  A refusal is an error of
    this program (its exit status is not 0): its stderr is the master's, or
    ssh's on the way to it, and the master, seeing this accountd fail, leaves
    this line as the only one about it."""
    refusals: list[str] = []
    run_in_thread(waiter, serve_stdio, signer, refusals)
    stopped = waiter.wait(workers=1)
    if stopped:
        logger.debug("stopped by %s", stopped)
    if refusals:
        raise LacmeError(f"refused to sign (NOSIGN): {refusals[0]}")


def run_inherited(fds: list[descriptors.InheritedFd], signer: Signer, waiter: Waiter) -> None:
    """Listening sockets: accept loops until a signal; connections: serve them, then exit."""
    counter = itertools.count()
    listeners = [fd for fd in fds if descriptors.is_listening(fd.fd)]
    connections = [fd for fd in fds if fd not in listeners]
    for fd in connections:
        run_in_thread(waiter, serve_socket, socket.socket(fileno=fd.fd), signer, str(next(counter)))
    for fd in listeners:
        start_thread(accept_forever, socket.socket(fileno=fd.fd), signer, counter)
    if listeners:
        notify_ready()
    stopped = waiter.wait(workers=None if listeners else len(connections))
    if stopped:
        logger.debug("stopped by %s", stopped)


def check_socket_path(path: str) -> None:
    """Refuse an existing path, or a parent directory others may write to."""
    try:
        check_socket_directory(path)
    except LacmeError as exc:
        raise LacmeError(f"{exc}, refusing to bind {path}") from None
    if os.path.lexists(path):
        raise LacmeError(f"{path}: already exists, refusing to bind")


def bind_socket(path: str) -> socket.socket:
    """A listening UNIX socket at ``path``, mode 0600."""
    check_socket_path(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(path)
    except OSError as exc:
        sock.close()
        raise LacmeError(f"{path}: bind: {exc.strerror or exc}") from None
    finally:
        os.umask(old)
    sock.listen(LISTEN_BACKLOG)
    return sock


def remove_socket(path: str, bound: os.stat_result) -> None:
    """Unlink ``path`` if it is still the socket we bound."""
    try:
        st = os.lstat(path)
        if stat.S_ISSOCK(st.st_mode) and (st.st_dev, st.st_ino) == (bound.st_dev, bound.st_ino):
            os.unlink(path)
            logger.debug("removed %s", path)
    except OSError as exc:
        logger.error("%s: cannot remove: %s", path, exc.strerror or exc)


def run_bound(path: str, signer: Signer, waiter: Waiter) -> None:
    sock = bind_socket(path)
    bound = os.lstat(path)
    try:
        logger.log(log.VERBOSE, "listening on %s", path)
        start_thread(accept_forever, sock, signer, itertools.count())
        notify_ready()
        logger.debug("stopped by %s", waiter.wait())
    finally:
        remove_socket(path, bound)
        sock.close()
