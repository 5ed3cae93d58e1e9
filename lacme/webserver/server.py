"""The lacme-webserver's serving loop: one thread, one ``selectors`` loop (epoll).

Runs in the unprivileged webserver (the _lacme-www user).  Non-blocking
sockets, one response per connection (RFC 9112 9.6: ``Connection: close``).
Every connection has one deadline for its whole request head (slow clients
are cut with 408), heads are bounded (http01.MAX_HEAD), and past
``--max-connections`` the oldest connection is dropped, so idle or slow
clients cannot starve a validation (RFC 8555 8.3).  The HTTP rules are
lacme.protocol.http01's; this module only moves bytes and keeps time.
"""

from __future__ import annotations

import errno
import heapq
import os
import selectors
import socket
import time
from collections.abc import Callable

from lacme.protocol import http01
from lacme.webserver.challenges import read_challenge
from lacme.webserver.listeners import Listener, format_address
from lacme.webserver.log import log_safe, logger

CONTENT_TYPE = "text/plain"
READ_CHUNK = 4096
ACCEPT_BATCH = 64  # connections accepted per readiness event of one listener
ACCEPT_PAUSE = 1.0  # out of descriptors or memory: stop accepting for a while
LINGER_TIMEOUT = 1.0  # after the response: drain unread input so close() sends no RST
LINGER_BYTES = 65536


READING, WRITING, LINGERING = "reading", "writing", "lingering"


class Connection:
    """One accepted connection: its request head, then its one response.

    ``state`` goes READING (the head, until ``deadline``) -> WRITING (the
    response, while the peer does not take it all at once) -> LINGERING
    (our side shut down; what the peer still sends is read and dropped for
    a moment, so that closing does not reset the connection before the
    peer has read the answer).  ``sock`` is None once closed.
    """

    __slots__ = ("address", "buf", "deadline", "drained", "listener", "out", "sock", "state")

    def __init__(self, sock: socket.socket, listener: Listener, address: object) -> None:
        self.sock: socket.socket | None = sock
        self.listener = listener
        self.address = address
        self.state = READING
        self.buf = bytearray()  # the request head so far
        self.out: bytes | memoryview = b""  # what is left of the response
        self.deadline = 0.0
        self.drained = 0

    def peer(self) -> str:
        # A UNIX peer has no name: the socket's own path stands for it.
        return format_address(self.listener.sock.family, self.address or self.listener.address)


def _quote(buf: bytes | bytearray) -> str:
    line = http01.first_line(bytes(buf))
    return log_safe(line.decode("latin-1")) if line else "-"


class ChallengeServer:
    """The serving loop: listeners, connections, deadlines, stop and idle exit."""

    def __init__(self, dir_fd: int, listeners: list[Listener], request_timeout: float,
                 max_connections: int, idle_timeout: float = 0.0) -> None:
        self.dir_fd = dir_fd
        self.listeners = listeners
        self.request_timeout = request_timeout
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.selector = selectors.DefaultSelector()
        self.connections: dict[int, Connection] = {}  # by descriptor, oldest first
        self.deadlines: list[tuple[float, int, Connection]] = []  # a heap; stale entries skipped
        self.sequence = 0
        self.stop_requested = False
        self.last_activity = time.monotonic()

    # -- the loop
    def serve(self, wakeup_fd: int | None = None) -> str:
        """Serve until stop_requested (signals write to ``wakeup_fd``) or the
        idle timeout; return why ("signal" or "idle timeout")."""
        for listener in self.listeners:
            listener.sock.setblocking(False)
            self.selector.register(listener.sock, selectors.EVENT_READ, listener)
        if wakeup_fd is not None:
            self.selector.register(wakeup_fd, selectors.EVENT_READ, None)
        while not self.stop_requested:
            now = time.monotonic()
            if self._idle_for(now) >= self.idle_timeout > 0:
                return "idle timeout"
            for key, events in self.selector.select(self._wait_time(now)):
                self._dispatch(key, events)
            self._expire(time.monotonic())
        return "signal"

    def _idle_for(self, now: float) -> float:
        return 0.0 if self.connections else now - self.last_activity

    def _wait_time(self, now: float) -> float | None:
        """Seconds until the next deadline, paused listener or idle exit; None: no limit."""
        wake = [deadline for deadline, _, _ in self.deadlines[:1]]
        wake += [lst.paused_until for lst in self.listeners if lst.paused_until]
        if self.idle_timeout > 0 and not self.connections:
            wake.append(self.last_activity + self.idle_timeout)
        return max(0.0, min(wake) - now) if wake else None

    def _dispatch(self, key: selectors.SelectorKey, events: int) -> None:
        data = key.data
        if data is None:  # the signal wakeup pipe: the handler has set stop_requested
            _drain_pipe(key.fd)
        elif isinstance(data, Listener):
            self._accept(data)
        elif data.sock is not None:  # else closed earlier in this round: nothing to do
            # By state, not by event: epoll reports a hang-up as both readable and writable.
            self._step(data, self._on_writable if data.state == WRITING else self._on_readable)

    def _step(self, conn: Connection, action: Callable[[Connection], None]) -> None:
        try:
            action(conn)
        except OSError as exc:  # resets, broken pipes
            logger.debug("connection error: %s", exc)
            self._close(conn)
        except Exception:  # noqa: BLE001 - a bug here must show (logged with its traceback), and must not stop the server
            logger.exception("internal error while answering a request")
            self._close(conn)

    # -- accepting
    def _accept(self, listener: Listener) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                sock, address = listener.sock.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    logger.warning("accepting on %s: %s; pausing for %g s", listener.name,
                                   exc.strerror, ACCEPT_PAUSE)
                    self.selector.unregister(listener.sock)
                    listener.paused_until = time.monotonic() + ACCEPT_PAUSE
                    return
                logger.debug("accepting on %s: %s", listener.name, exc)  # aborted before accept
                continue
            sock.setblocking(False)
            self._admit(Connection(sock, listener, address))

    def _admit(self, conn: Connection) -> None:
        if len(self.connections) >= self.max_connections:
            logger.debug("%d connections open: dropping the oldest", self.max_connections)
            self._close(next(iter(self.connections.values())))
        assert conn.sock is not None
        self.connections[conn.sock.fileno()] = conn
        self.selector.register(conn.sock, selectors.EVENT_READ, conn)
        self.last_activity = time.monotonic()
        self._set_deadline(conn, self.last_activity + self.request_timeout)

    def _set_deadline(self, conn: Connection, deadline: float) -> None:
        conn.deadline = deadline
        self.sequence += 1
        heapq.heappush(self.deadlines, (deadline, self.sequence, conn))

    def _expire(self, now: float) -> None:
        while self.deadlines and self.deadlines[0][0] <= now:
            deadline, _, conn = heapq.heappop(self.deadlines)
            if conn.sock is None or conn.deadline != deadline:
                continue  # closed, or moved on to another deadline
            if conn.state == READING:
                self._step(conn, self._timed_out)
            else:
                if conn.state == WRITING:
                    logger.debug("%s: response not taken in time", conn.peer())
                self._close(conn)
        for listener in self.listeners:
            if listener.paused_until and listener.paused_until <= now:
                listener.paused_until = 0.0
                self.selector.register(listener.sock, selectors.EVENT_READ, listener)

    def _close(self, conn: Connection) -> None:
        sock = conn.sock
        if sock is None:
            return
        conn.sock = None
        conn.buf = bytearray()
        conn.out = b""
        self.connections.pop(sock.fileno(), None)
        self.selector.unregister(sock)
        sock.close()
        self.last_activity = time.monotonic()

    def close_all(self) -> None:
        for conn in list(self.connections.values()):
            self._close(conn)
        self.selector.close()

    # -- one request
    def _on_readable(self, conn: Connection) -> None:
        assert conn.sock is not None
        try:
            chunk = conn.sock.recv(READ_CHUNK)
        except BlockingIOError:
            return
        if conn.state == LINGERING:
            conn.drained += len(chunk)
            if not chunk or conn.drained >= LINGER_BYTES:
                self._close(conn)
            return
        if not chunk:  # end of input before the head was complete
            if conn.buf.strip(b"\r\n"):
                self._respond(conn, 400, _quote(conn.buf))
            else:
                logger.debug("%s: closed without a request", conn.peer())
                self._close(conn)
            return
        conn.buf += chunk
        self._answer(conn)

    def _answer(self, conn: Connection) -> None:
        data = bytes(conn.buf)
        try:
            end = http01.find_head_end(data)
            if end is None:
                return  # wait for more
            head = http01.parse_request_head(data[:end])
        except http01.BadRequest as exc:
            logger.debug("bad request: %s", exc)
            self._respond(conn, exc.status, _quote(data))
            return
        request = log_safe(f"{head.method} {head.target} {head.version}")
        status, token = http01.route(head)
        if token is None:
            self._respond(conn, status, request)
            return
        status, body = read_challenge(self.dir_fd, token)
        self._respond(conn, status, request, body, head_only=head.method == "HEAD")

    def _timed_out(self, conn: Connection) -> None:
        self._respond(conn, 408, _quote(conn.buf))

    def _respond(self, conn: Connection, status: int, request: str, body: bytes = b"",
                 head_only: bool = False) -> None:
        assert conn.sock is not None
        logger.info('%s "%s" %d %d', conn.peer(), request, status, len(body))
        response = http01.format_response(
            status, body, date=http01.http_date(time.time()), head_only=head_only,
            content_type=CONTENT_TYPE if status == 200 else None)
        conn.buf = bytearray()
        if status == 408:  # a slow client gets no more of our time: what fits now, then close
            try:
                conn.sock.send(response)
            except OSError:
                pass
            _discard_input(conn.sock)
            self._close(conn)
            return
        conn.state = WRITING
        conn.out = memoryview(response)
        self._on_writable(conn)
        if conn.state == WRITING and conn.sock is not None:  # the peer takes it slowly
            self.selector.modify(conn.sock, selectors.EVENT_WRITE, conn)
            self._set_deadline(conn, time.monotonic() + self.request_timeout)

    def _on_writable(self, conn: Connection) -> None:
        assert conn.sock is not None
        try:
            sent = conn.sock.send(conn.out)
        except BlockingIOError:
            return
        conn.out = conn.out[sent:]
        if conn.out:
            return
        conn.sock.shutdown(socket.SHUT_WR)  # the answer is complete: FIN after it
        conn.state = LINGERING
        self.selector.modify(conn.sock, selectors.EVENT_READ, conn)
        self._set_deadline(conn, time.monotonic() + LINGER_TIMEOUT)


def _discard_input(sock: socket.socket, limit: int = LINGER_BYTES) -> None:
    """Read what has already arrived (closing with unread input resets the connection)."""
    drained = 0
    try:
        while drained < limit:
            chunk = sock.recv(READ_CHUNK)
            if not chunk:
                return
            drained += len(chunk)
    except OSError:  # BlockingIOError: nothing more for now
        pass


def _drain_pipe(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass

