"""The ``lacme-webserver`` program: answers http-01 challenges (RFC 8555 8.3).

Runs unprivileged (the _lacme-www user), spawned by the master or started by
systemd socket activation; either way its listening sockets arrive with the
sd_listen_fds protocol, or it binds ``--listen`` addresses itself.  It serves
GET and HEAD of ``/.well-known/acme-challenge/<token>`` from the files that
the master writes into the challenge directory, and nothing else.

One thread, one ``selectors`` loop (epoll), non-blocking sockets, one
response per connection.  Every connection has one deadline for its whole
request head (slow clients are cut with 408), heads are bounded
(http01.MAX_HEAD), and past ``--max-connections`` the oldest connection is
dropped, so idle or slow clients cannot starve a validation.

Started for every run by the master, which waits for its READY=1: start-up
cost counts.  So no asyncio (it pulls in ssl and concurrent.futures), no
argparse unless the command line needs it (help, errors), no logging module
unless the journal is the destination, and sd_notify is one datagram.
"""

from __future__ import annotations

import errno
import heapq
import os
import selectors
import signal
import socket
import stat
import sys
import time
from collections.abc import Callable

from lacme.core.errors import EXIT_OK, LacmeError, UsageError
from lacme.protocol import http01

PROG = "lacme-webserver"
CONTENT_TYPE = "text/plain"
MAX_CHALLENGE_SIZE = 4096  # a key authorization is about 90 bytes
DEFAULT_REQUEST_TIMEOUT = 10.0
DEFAULT_MAX_CONNECTIONS = 4096
RESERVED_FDS = 64  # descriptors kept free for listeners, challenge files, logging
READ_CHUNK = 4096
ACCEPT_BATCH = 64  # connections accepted per readiness event of one listener
ACCEPT_PAUSE = 1.0  # out of descriptors or memory: stop accepting for a while
LINGER_TIMEOUT = 1.0  # after the response: drain unread input so close() sends no RST
LINGER_BYTES = 65536

DEBUG, INFO, WARNING, ERROR = 10, 20, 30, 40  # the logging module's levels


class _Log:
    """The program's log, with lacme.core.log's plain format.

    Plain lines on stderr need no ``logging`` module (about a tenth of this
    program's start-up); when systemd may have connected stderr to the
    journal (JOURNAL_STREAM is set) records go through ``lacme.core.log``, which
    decides between journald fields and the same plain lines.
    """

    def __init__(self) -> None:
        self.level = INFO
        self.delegate = None  # a logging.Logger when lacme.core.log is in charge

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


logger = _Log()


# --------------------------------------------------------------------- command line

class Options:
    __slots__ = ("challenge_directory", "idle_timeout", "listen", "request_timeout",
                 "max_connections", "quiet", "debug")

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


_VALUE_OPTIONS = {"--challenge-directory": str, "--idle-timeout": _seconds, "--listen": str,
                  "--request-timeout": _seconds, "--max-connections": _positive}
_FLAG_OPTIONS = {"-q": "quiet", "--quiet": "quiet", "--debug": "debug"}


def _parse_simple(argv: list[str]) -> dict[str, object] | None:
    """The common command lines (``--name=value``, ``--name value``, flags,
    all spelled out) without argparse; None for anything else, which
    argparse then handles (help, abbreviations, errors) exactly as before."""
    values: dict[str, object] = {"listen": []}
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
            values["listen"].append(value)  # type: ignore[attr-defined]
        else:
            values[key] = value
    return values if "challenge_directory" in values else None


def _parse_with_argparse(argv: list[str]) -> dict[str, object]:
    import argparse

    class Parser(argparse.ArgumentParser):
        def error(self, message: str) -> None:  # type: ignore[override]
            raise UsageError(f"command line: {message}")

    parser = Parser(prog=PROG, description="Serve http-01 ACME challenge responses.")
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
    values["listen"] = tuple(values["listen"])  # type: ignore[call-overload]
    options = Options(**values)  # type: ignore[arg-type]
    if options.request_timeout <= 0:
        raise UsageError("--request-timeout: must be greater than 0")
    return options


# --------------------------------------------------------------------- listening sockets

class Listener:
    __slots__ = ("sock", "name", "address", "unix_path", "unix_inode", "paused_until")

    def __init__(self, sock: socket.socket, name: str, unix_path: str | None = None,
                 unix_inode: tuple[int, int] | None = None) -> None:
        self.sock = sock
        self.name = name  # for logs: 127.0.0.1:80, [::1]:80, unix:/run/lacme-www.socket
        self.address = sock.getsockname()  # names UNIX peers, which have no address
        self.unix_path = unix_path  # a socket file we created and remove at exit
        self.unix_inode = unix_inode
        self.paused_until = 0.0  # accepting again after a lack of descriptors


_HEX_DIGITS = "0123456789abcdefABCDEF"


def _split_host_port(text: str) -> tuple[socket.AddressFamily, str, str] | None:
    """``[IPV6]:PORT`` or ``IPV4:PORT`` split by syntax only; None otherwise."""
    if text.startswith("["):
        host, bracket, port = text[1:].partition("]:")
        if bracket and host and not host.strip(_HEX_DIGITS + ":."):
            return socket.AF_INET6, host, port
        return None
    host, colon, port = text.partition(":")
    if colon and host and not host.strip("0123456789."):
        return socket.AF_INET, host, port
    return None


def parse_listen_address(text: str) -> tuple[socket.AddressFamily, str | tuple[str, int]]:
    """``IPV4:PORT``, ``[IPV6]:PORT`` or ``/absolute/path`` to (family, address)."""
    if text.startswith("/"):
        return socket.AF_UNIX, text
    split = _split_host_port(text)
    if split is not None:
        family, host, port = split
        if 1 <= len(port) <= 5 and port.isascii() and port.isdigit() and int(port) <= 65535:
            try:
                socket.inet_pton(family, host)
                return family, (host, int(port))
            except OSError:
                pass
    raise UsageError(f"--listen={text}: expected IPV4:PORT, [IPV6]:PORT or an absolute path")


def format_address(family: int, address: object) -> str:
    """A socket address as it appears in logs."""
    if family == socket.AF_UNIX or isinstance(address, (str, bytes)):
        path = address.decode(errors="replace") if isinstance(address, bytes) else str(address)
        return "unix:" + http01.escape_for_log(path)
    if isinstance(address, tuple) and family == socket.AF_INET6:
        return f"[{address[0]}]:{address[1]}"
    if isinstance(address, tuple):
        return f"{address[0]}:{address[1]}"
    return "unknown"


def bind_listener(text: str) -> Listener:
    """Bind and listen on a ``--listen`` address (UNIX sockets are made 0666)."""
    family, address = parse_listen_address(text)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if family == socket.AF_UNIX:
            assert isinstance(address, str)
            return _bind_unix(sock, address)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        sock.listen(socket.SOMAXCONN)
        return Listener(sock, format_address(family, sock.getsockname()))
    except OSError as exc:
        sock.close()
        raise LacmeError(f"--listen={text}: {exc.strerror or exc}") from None


def _bind_unix(sock: socket.socket, path: str) -> Listener:
    try:  # a socket file left behind by an earlier run; never remove anything else
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    except FileNotFoundError:
        pass
    sock.bind(path)
    os.chmod(path, 0o666)  # any local web server may proxy to us
    sock.listen(socket.SOMAXCONN)
    st = os.lstat(path)
    return Listener(sock, format_address(socket.AF_UNIX, path), path, (st.st_dev, st.st_ino))


def adopt_inherited() -> list[Listener]:
    """Listening sockets handed over by systemd or the master (sd_listen_fds)."""
    if "LISTEN_FDS" not in os.environ:
        return []
    from lacme.core import descriptors  # only when descriptors were handed over

    listeners = []
    for inherited in descriptors.inherited_fds():
        where = f"inherited descriptor {inherited.fd} ({inherited.name})"
        if not descriptors.is_listening(inherited.fd):
            raise UsageError(f"{where}: not a listening socket")
        sock = socket.socket(fileno=inherited.fd)
        if sock.type != socket.SOCK_STREAM:
            raise UsageError(f"{where}: not a stream socket")
        listeners.append(Listener(sock, format_address(sock.family, sock.getsockname())))
    return listeners


def remove_socket_file(listener: Listener) -> None:
    """Remove a UNIX socket we bound, unless someone has replaced it since."""
    if listener.unix_path is None:
        return
    try:
        st = os.lstat(listener.unix_path)
        if (st.st_dev, st.st_ino) == listener.unix_inode:
            os.unlink(listener.unix_path)
    except OSError:
        pass


# --------------------------------------------------------------------- challenge files

def open_challenge_directory(path: str) -> int:
    # O_PATH: search permission is enough (the master's private directory is
    # 0711: files can be opened by name, never listed).
    try:
        return os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise UsageError(f"--challenge-directory={path}: {exc.strerror}") from None


def read_challenge(dir_fd: int, token: str) -> tuple[int, bytes]:
    """(200, content) for a regular file named ``token``; (404 or 500, b"") otherwise.

    O_NOFOLLOW refuses a symbolic link (ELOOP); O_NONBLOCK makes opening a
    FIFO return at once, and fstat then refuses anything but a regular file.
    """
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    try:
        fd = os.open(token, flags, dir_fd=dir_fd)
    except FileNotFoundError:
        return 404, b""
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            logger.warning("challenge file %s: a symbolic link, not served", token)
            return 404, b""
        logger.warning("challenge file %s: %s", token, exc.strerror)
        return 500, b""
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            logger.warning("challenge file %s: not a regular file, not served", token)
            return 404, b""
        content = _read_bounded(fd, MAX_CHALLENGE_SIZE + 1)
    except OSError as exc:
        logger.warning("challenge file %s: %s", token, exc.strerror)
        return 500, b""
    finally:
        os.close(fd)
    if len(content) > MAX_CHALLENGE_SIZE:
        logger.warning("challenge file %s: larger than %d bytes, not served", token, MAX_CHALLENGE_SIZE)
        return 404, b""
    return 200, content


def _read_bounded(fd: int, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = os.read(fd, limit - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


# --------------------------------------------------------------------- connections

READING, WRITING, LINGERING = "reading", "writing", "lingering"


class Connection:
    """One accepted connection: its request head, then its one response.

    ``state`` goes READING (the head, until ``deadline``) -> WRITING (the
    response, while the peer does not take it all at once) -> LINGERING
    (our side shut down; what the peer still sends is read and dropped for
    a moment, so that closing does not reset the connection before the
    peer has read the answer).  ``sock`` is None once closed.
    """

    __slots__ = ("sock", "listener", "address", "state", "buf", "out", "deadline", "drained")

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
    return http01.escape_for_log(line) if line else "-"


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
        except Exception:  # a bug here must show, and must not stop the server
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
        request = http01.escape_for_log(f"{head.method} {head.target} {head.version}")
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


# --------------------------------------------------------------------- process

def notify_systemd(state: str) -> None:
    """sd_notify(3) when systemd (or the master) asked for it (Type=notify):
    one datagram to the UNIX socket named by $NOTIFY_SOCKET ("@": abstract)."""
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
