"""TLS for the ACME client: the ``SSL_version`` range, and the run's deadline on sockets.

Run inside the unprivileged ACME client (``lacme-client``) by the transport
(``lacme.client.acme.transport``).  ``tls_version_range`` reads the
``[client] SSL_version`` setting as IO::Socket::SSL spells it (the original
lacme's); ``Watchdog`` shuts down every TLS socket of a session when the
deadline comes, whatever read or handshake is in progress.  RFC 8555 6.1
(HTTPS only), RFC 8446 / RFC 5246 versions.  Imports ssl, no HTTP library.
"""

from __future__ import annotations

import _socket
import socket
import ssl
import threading
import time
import weakref
from typing import Any

from lacme.core.text import escape_text

# SSL_version values in the spelling of IO::Socket::SSL / OpenSSL.
_TLS_VERSIONS = {
    "tlsv1": ssl.TLSVersion.TLSv1,
    "tlsv1_1": ssl.TLSVersion.TLSv1_1,
    "tlsv1_2": ssl.TLSVersion.TLSv1_2,
    "tlsv1_3": ssl.TLSVersion.TLSv1_3,
}
_TLS_ANY = frozenset({"sslv23", "tls", "any", "default"})
_TLS_NEVER = frozenset({"sslv2", "sslv3"})  # never enabled: excluding them is a no-op


def tls_version_range(spec: str) -> tuple[ssl.TLSVersion | None, ssl.TLSVersion | None]:
    """(minimum, maximum) TLS versions for an ``SSL_version`` value.

    Accepted, case-insensitive, as IO::Socket::SSL spells them: one version
    ``TLSv1``, ``TLSv1_1``, ``TLSv1_2``, ``TLSv1_3`` (also ``TLSv1.2`` or
    ``TLSv12``) pins exactly that version; ``SSLv23``, ``TLS``, ``any`` or
    ``default`` leave the library's range; a colon-separated base with
    ``!`` exclusions, e.g. ``SSLv23:!TLSv1:!TLSv1_1``, allows what remains
    (which must be contiguous).  ``SSLv2``/``SSLv3`` may only be excluded.
    Anything else raises ValueError.
    """
    parts = [p.strip() for p in spec.split(":") if p.strip()]
    if not parts:
        raise ValueError(f"SSL_version: empty value {spec!r}")
    base, exclusions = parts[0], parts[1:]
    if any(not p.startswith("!") for p in exclusions):
        raise ValueError(f"SSL_version: {spec!r}: only the first item may name a version")
    if base.startswith("!"):
        exclusions.insert(0, base)
        base = "SSLv23"
    if _normal_version(base) in _TLS_VERSIONS:
        if exclusions:
            raise ValueError(f"SSL_version: {spec!r}: exclusions need SSLv23 as the base")
        version = _TLS_VERSIONS[_normal_version(base)]
        return version, version
    if _normal_version(base) not in _TLS_ANY:
        raise ValueError(f"SSL_version: unknown version {base!r}")
    if not exclusions:
        return None, None
    allowed = dict(_TLS_VERSIONS)
    for item in exclusions:
        name = _normal_version(item[1:])
        if name in _TLS_NEVER:
            continue
        if name not in _TLS_VERSIONS:
            raise ValueError(f"SSL_version: unknown version {item[1:]!r}")
        allowed.pop(name, None)
    order = list(_TLS_VERSIONS)
    kept = [order.index(name) for name in allowed]
    if not kept:
        raise ValueError(f"SSL_version: {spec!r} excludes every version")
    if kept != list(range(kept[0], kept[-1] + 1)):
        raise ValueError(f"SSL_version: {spec!r} leaves a gap between versions")
    return _TLS_VERSIONS[order[kept[0]]], _TLS_VERSIONS[order[kept[-1]]]


def _normal_version(name: str) -> str:
    name = name.lower().replace(".", "_")
    if name in ("tlsv11", "tlsv12", "tlsv13"):
        name = name[:5] + "_" + name[5:]
    return name


class Watchdog:
    """Shuts down every TLS socket of a session at its deadline (or when cancelled).

    Socket timeouts bound each read, not their sum: a server sending one
    byte a second would hold a read for ever.  shutdown(2) from this timer
    thread ends any read or handshake in progress at once.
    """

    def __init__(self, deadline: float) -> None:
        self._sockets: weakref.WeakSet[ssl.SSLSocket] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._expired = False
        self._timer = threading.Timer(max(0.0, deadline - time.monotonic()), self.expire)
        self._timer.daemon = True
        self._timer.start()

    def socket_class(self) -> type[ssl.SSLSocket]:
        watchdog = self

        class _WatchedSSLSocket(ssl.SSLSocket):
            def do_handshake(self, block: bool = False) -> None:
                watchdog.watch(self)
                super().do_handshake(block)

        return _WatchedSSLSocket

    def watch(self, sock: ssl.SSLSocket) -> None:
        with self._lock:
            self._sockets.add(sock)
            expired = self._expired
        if expired:
            _shutdown_socket(sock)

    def expire(self) -> None:
        with self._lock:
            self._expired = True
            sockets = list(self._sockets)
        for sock in sockets:
            _shutdown_socket(sock)

    def stop(self) -> None:
        self._timer.cancel()


def _shutdown_socket(sock: socket.socket) -> None:
    try:  # the descriptor's shutdown(2), not SSLSocket's (which unwraps TLS)
        _socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except (OSError, ValueError):
        pass


def describe_os_error(exc: BaseException) -> str:
    """A short reason for a failure, from the deepest OSError (a TLS one first)."""
    seen: set[int] = set()
    best: OSError | None = None
    todo: list[Any] = [exc]
    while todo:
        cur = todo.pop()
        if not isinstance(cur, BaseException) or id(cur) in seen:
            continue
        seen.add(id(cur))
        if isinstance(cur, ssl.SSLError):
            return f"TLS error: {escape_text(cur.reason or cur, 200)}"
        if isinstance(cur, OSError) and cur.strerror:
            best = cur
        todo.extend([cur.__cause__, cur.__context__, getattr(cur, "reason", None), *cur.args])
    if best is not None:
        return escape_text(best.strerror, 200)
    return escape_text(str(exc) or type(exc).__name__, 200)
