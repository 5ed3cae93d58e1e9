"""The lacme-webserver's listening sockets: ``--listen`` addresses and inherited ones.

Runs in the unprivileged webserver (the _lacme-www user).  A listening socket
either arrives with the sd_listen_fds(3) protocol (systemd socket activation,
or the master, which binds port 80 before it drops privileges) or is bound
here from ``--listen=IPV4:PORT``, ``[IPV6]:PORT`` or an absolute UNIX socket
path (a socket file we create is removed again at exit, unless replaced).
"""

from __future__ import annotations

import os
import socket
import stat

from lacme.core.errors import LacmeError, UsageError
from lacme.webserver.log import log_safe


class Listener:
    """A listening socket, its name for logs, and the socket file we made for it."""

    __slots__ = ("address", "name", "paused_until", "sock", "unix_inode", "unix_path")

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
        return "unix:" + log_safe(path)
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

