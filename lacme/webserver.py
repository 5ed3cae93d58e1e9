"""The ``lacme-webserver`` program: answers http-01 challenges (RFC 8555 8.3).

Runs unprivileged (the _lacme-www user), spawned by the master or started by
systemd socket activation; either way its listening sockets arrive with the
sd_listen_fds protocol, or it binds ``--listen`` addresses itself.  It serves
GET and HEAD of ``/.well-known/acme-challenge/<token>`` from the files that
the master writes into the challenge directory, and nothing else.

One asyncio loop, one response per connection.  Every connection has one
deadline for its whole request head (slow clients are cut with 408), heads
are bounded (http01.MAX_HEAD), and past ``--max-connections`` the oldest
connection is dropped, so idle or slow clients cannot starve a validation.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import logging
import os
import re
import resource
import signal
import socket
import stat
import sys
from collections import OrderedDict
from dataclasses import dataclass
from email.utils import formatdate

from lacme import http01, log, transport
from lacme.errors import EXIT_OK, LacmeError, UsageError

PROG = "lacme-webserver"
CONTENT_TYPE = "text/plain"
MAX_CHALLENGE_SIZE = 4096  # a key authorization is about 90 bytes
DEFAULT_REQUEST_TIMEOUT = 10.0
DEFAULT_MAX_CONNECTIONS = 4096
RESERVED_FDS = 64  # descriptors kept free for listeners, challenge files, logging
READ_CHUNK = 4096
STREAM_LIMIT = 16384  # asyncio's per-connection read buffer stops growing here
LINGER_TIMEOUT = 1.0  # after the response: drain unread input so close() sends no RST
LINGER_BYTES = 65536

logger = logging.getLogger(PROG)


@dataclass(frozen=True)
class Options:
    challenge_directory: str
    idle_timeout: float
    listen: tuple[str, ...]
    request_timeout: float
    max_connections: int
    quiet: bool
    debug: bool


@dataclass(frozen=True)
class Listener:
    sock: socket.socket
    name: str  # for logs: 127.0.0.1:80, [::1]:80, unix:/run/lacme-www.socket
    unix_path: str | None = None  # a socket file we created and remove at exit
    unix_inode: tuple[int, int] | None = None


class _ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"command line: {message}")


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


def parse_args(argv: list[str]) -> Options:
    """Command line to Options; UsageError on anything wrong."""
    parser = _ArgumentParser(prog=PROG, description="Serve http-01 ACME challenge responses.")
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
    ns = parser.parse_args(argv)
    if ns.request_timeout <= 0:
        raise UsageError("--request-timeout: must be greater than 0")
    return Options(ns.challenge_directory, ns.idle_timeout, tuple(ns.listen),
                   ns.request_timeout, ns.max_connections, ns.quiet, ns.debug)


_IPV6_RE = re.compile(r"\A\[([0-9A-Fa-f:.]+)\]:([0-9]{1,5})\Z")
_IPV4_RE = re.compile(r"\A([0-9.]+):([0-9]{1,5})\Z")


def parse_listen_address(text: str) -> tuple[socket.AddressFamily, str | tuple[str, int]]:
    """``IPV4:PORT``, ``[IPV6]:PORT`` or ``/absolute/path`` to (family, address)."""
    if text.startswith("/"):
        return socket.AF_UNIX, text
    for regex, family in ((_IPV6_RE, socket.AF_INET6), (_IPV4_RE, socket.AF_INET)):
        match = regex.match(text)
        if match is None:
            continue
        host, port = match.group(1), int(match.group(2))
        try:
            socket.inet_pton(family, host)
        except OSError:
            break
        if port <= 65535:
            return family, (host, port)
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
    listeners = []
    for inherited in transport.inherited_fds():
        where = f"inherited descriptor {inherited.fd} ({inherited.name})"
        if not transport.is_listening(inherited.fd):
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


async def read_head(reader: asyncio.StreamReader, buf: bytearray) -> bytes | None:
    """The request head, or None at end of input; ``buf`` keeps what was read."""
    while True:
        end = http01.find_head_end(bytes(buf))
        if end is not None:
            return bytes(buf[:end])
        chunk = await reader.read(READ_CHUNK)
        if not chunk:
            return None
        buf += chunk


@dataclass(frozen=True)
class Answer:
    status: int
    request: str  # escaped request line for the log, "-" when there was none
    body: bytes = b""
    head_only: bool = False


class ChallengeServer:
    """Connection bookkeeping and the answer to one request per connection."""

    def __init__(self, dir_fd: int, request_timeout: float, max_connections: int) -> None:
        self.dir_fd = dir_fd
        self.request_timeout = request_timeout
        self.max_connections = max_connections
        self.connections: OrderedDict[asyncio.Task[None], asyncio.StreamWriter] = OrderedDict()
        self.last_activity = asyncio.get_running_loop().time()

    async def handle_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._admit(task, writer)
        try:
            await self._serve(reader, writer)
        except OSError as exc:  # resets, timeouts while writing
            logger.debug("connection error: %s", exc)
        except Exception:  # a bug here must show, and must not stop the server
            logger.exception("internal error while answering a request")
        finally:
            self.connections.pop(task, None)
            self.last_activity = asyncio.get_running_loop().time()
            writer.close()

    def _admit(self, task: asyncio.Task[None], writer: asyncio.StreamWriter) -> None:
        if len(self.connections) >= self.max_connections:
            old_task, old_writer = self.connections.popitem(last=False)
            logger.debug("%d connections open: dropping the oldest", self.max_connections)
            old_writer.transport.abort()
            old_task.cancel()
        self.connections[task] = writer
        self.last_activity = asyncio.get_running_loop().time()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = format_address(writer.get_extra_info("socket").family,
                              writer.get_extra_info("peername") or writer.get_extra_info("sockname"))
        answer = await self._answer(reader)
        if answer is None:
            logger.debug("%s: closed without a request", peer)
            return
        logger.info('%s "%s" %d %d', peer, answer.request, answer.status, len(answer.body))
        response = http01.format_response(
            answer.status, answer.body, date=formatdate(usegmt=True), head_only=answer.head_only,
            content_type=CONTENT_TYPE if answer.status == 200 else None)
        writer.write(response)
        if answer.status == 408:
            return  # a slow client gets no more of our time
        async with asyncio.timeout(self.request_timeout):
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
        await self._linger(reader)

    async def _answer(self, reader: asyncio.StreamReader) -> Answer | None:
        buf = bytearray()
        try:
            async with asyncio.timeout(self.request_timeout):
                data = await read_head(reader, buf)
            if data is None:
                return Answer(400, _quote(buf)) if buf.strip(b"\r\n") else None
            head = http01.parse_request_head(data)
        except TimeoutError:
            return Answer(408, _quote(buf))
        except http01.BadRequest as exc:
            logger.debug("bad request: %s", exc)
            return Answer(exc.status, _quote(buf))
        request = http01.escape_for_log(f"{head.method} {head.target} {head.version}")
        status, token = http01.route(head)
        if token is None:
            return Answer(status, request)
        status, body = read_challenge(self.dir_fd, token)
        return Answer(status, request, body, head_only=head.method == "HEAD")

    async def _linger(self, reader: asyncio.StreamReader) -> None:
        """Read and drop what the client still sends, so that closing with
        unread input does not reset the connection before it has our answer."""
        drained = 0
        try:
            async with asyncio.timeout(LINGER_TIMEOUT):
                while drained < LINGER_BYTES:
                    chunk = await reader.read(READ_CHUNK)
                    if not chunk:
                        return
                    drained += len(chunk)
        except TimeoutError:
            pass

    async def wait_idle(self, idle_timeout: float) -> None:
        """Return once no connection has been open for ``idle_timeout`` seconds."""
        loop = asyncio.get_running_loop()
        while True:
            if self.connections:
                await asyncio.sleep(min(idle_timeout, 1.0))
                continue
            remaining = self.last_activity + idle_timeout - loop.time()
            if remaining <= 0:
                return
            await asyncio.sleep(remaining)

    async def close_all(self) -> None:
        tasks = list(self.connections)
        for task, writer in list(self.connections.items()):
            writer.transport.abort()
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _quote(buf: bytearray) -> str:
    line = http01.first_line(bytes(buf))
    return http01.escape_for_log(line) if line else "-"


async def start_listener(server: ChallengeServer, listener: Listener) -> asyncio.AbstractServer:
    if listener.sock.family == socket.AF_UNIX:
        # Python 3.13 would unlink the path on close: never a systemd socket's.
        extra = {"cleanup_socket": False} if sys.version_info >= (3, 13) else {}
        return await asyncio.start_unix_server(server.handle_connection, sock=listener.sock,
                                               limit=STREAM_LIMIT, backlog=socket.SOMAXCONN, **extra)
    return await asyncio.start_server(server.handle_connection, sock=listener.sock,
                                      limit=STREAM_LIMIT, backlog=socket.SOMAXCONN)


def notify_systemd(state: str) -> None:
    """sd_notify(3) when systemd asked for it (Type=notify)."""
    if os.environ.get("NOTIFY_SOCKET"):
        from systemd.daemon import notify

        notify(state)


def install_stop_handlers(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    """SIGTERM and SIGINT ask for a clean exit, also while we are shutting down.

    Plain signal handlers rather than loop.add_signal_handler: closing the
    loop would restore the default action, and a second SIGTERM during
    teardown would then kill us with a non-zero status.
    """
    def on_signal(signum: int, frame: object) -> None:
        try:
            loop.call_soon_threadsafe(stop.set)
        except RuntimeError:  # the loop is closed: we are exiting already
            pass

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)


async def serve(dir_fd: int, listeners: list[Listener], options: Options, max_connections: int) -> None:
    stop = asyncio.Event()
    install_stop_handlers(asyncio.get_running_loop(), stop)
    server = ChallengeServer(dir_fd, options.request_timeout, max_connections)
    servers = [await start_listener(server, listener) for listener in listeners]
    for listener in listeners:
        logger.info("listening on %s", listener.name)
    notify_systemd("READY=1")
    waits = [asyncio.create_task(stop.wait())]
    if options.idle_timeout > 0:
        waits.append(asyncio.create_task(server.wait_idle(options.idle_timeout)))
    done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    logger.debug("exiting: %s", "signal" if waits[0] in done else "idle timeout")
    notify_systemd("STOPPING=1")
    for task in pending:
        task.cancel()
    for srv in servers:
        srv.close()
    await server.close_all()


def raise_fd_limit(wanted: int) -> int:
    """Raise the soft RLIMIT_NOFILE towards ``wanted``; return the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return wanted if soft == resource.RLIM_INFINITY else soft


def run(options: Options) -> int:
    listeners = adopt_inherited()
    if not listeners and not options.listen:
        raise UsageError("no listening socket: give --listen=ADDR or start under socket activation")
    dir_fd = open_challenge_directory(options.challenge_directory)
    try:
        for address in options.listen:
            listeners.append(bind_listener(address))
        fd_limit = raise_fd_limit(options.max_connections + RESERVED_FDS)
        max_connections = max(1, min(options.max_connections, fd_limit - RESERVED_FDS))
        asyncio.run(serve(dir_fd, listeners, options, max_connections))
        # Stopping already: a further SIGTERM must not turn the exit into a
        # death by signal (interpreter shutdown restores default handlers,
        # but leaves ignored signals ignored).
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, signal.SIG_IGN)
    finally:
        for listener in listeners:
            remove_socket_file(listener)
            listener.sock.close()
        os.close(dir_fd)
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    log.setup(PROG)
    try:
        options = parse_args(sys.argv[1:] if argv is None else argv)
    except UsageError as exc:
        logger.error("%s", exc)
        return exc.exit_code
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    log.setup(PROG, quiet=options.quiet, debug=options.debug)
    try:
        return run(options)
    except LacmeError as exc:
        logger.error("%s", exc, exc_info=options.debug)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
