"""The master's side of the scope extension: what a run lets accountd sign.

Run by the master (root), between connecting to accountd and handing the
connection to the client.  ``peek_greeting`` reads accountd's greeting
without consuming it (MSG_PEEK: the client reads it as always); when the
greeting announces scopes (``lacme.protocol.wire``), ``send_scope`` writes
the run's scope as the connection's first line, so that the client never
has a chance to write one.  The scopes are built from the command and the
configuration, never from anything the client says: the identifiers and
CSR digests of the orders, the account operation with its contacts, or the
certificates to revoke with their reason (``lacme.protocol.scope``).
"""

from __future__ import annotations

import logging
import select
import socket
import time
from collections.abc import Iterable, Sequence
from typing import Any

from lacme.core.errors import LacmeError, ProtocolError
from lacme.core.log import VERBOSE
from lacme.core.origin import origin_of
from lacme.protocol import scope as sc
from lacme.protocol import wire

log = logging.getLogger("lacme")
# The greeting is two lines, each at most wire.MAX_LINE.
_PEEK_LIMIT = 2 * wire.MAX_LINE


class ClientFirst(Exception):
    """The client wrote (or ended) before it got the accountd connection: it
    failed, or it is not to be trusted with an unscoped connection."""


def peek_greeting(sock: socket.socket, timeout: float,
                  client: socket.socket | None = None) -> wire.Greeting | None:
    """accountd's greeting, left in the socket for the client; None when the
    connection ends or is garbled before it: the client then reads that end
    and reports it in the one line of the run, as without scopes.  ClientFirst
    when ``client`` (the control channel) speaks or ends first."""
    deadline = time.monotonic() + timeout
    seen = -1
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise LacmeError("lacme-accountd: no greeting before the timeout")
        ready = select.select([sock] if client is None else [sock, client], [], [], remaining)[0]
        if not ready:
            continue
        if sock not in ready:
            raise ClientFirst()
        try:
            data = sock.recv(_PEEK_LIMIT + 1, socket.MSG_PEEK)
        except OSError:
            return None
        if not data:
            return None
        end = data.find(b"\r\n")
        end2 = data.find(b"\r\n", end + 2) if end >= 0 else -1
        if end2 >= 0:
            try:
                return wire.parse_greeting(data[:end + 2], data[end + 2:end2 + 2])
            except ProtocolError:
                return None
        if len(data) > _PEEK_LIMIT:
            return None
        if len(data) == seen:  # a peek returns what is there at once: wait for more
            time.sleep(0.002)
        seen = len(data)


def scope_connection(sock: socket.socket, scope: sc.Scope, timeout: float,
                     client: socket.socket) -> wire.Greeting | None:
    """Peek at the greeting and write ``scope`` when accountd takes scopes;
    the greeting (None: the connection is unusable, the client will say so)."""
    greeting = peek_greeting(sock, timeout, client)
    if greeting is not None:
        send_scope(sock, greeting, scope)
    return greeting


def send_scope(sock: socket.socket, greeting: wire.Greeting, scope: sc.Scope) -> bool:
    """Write ``scope`` if accountd enforces scopes; False (said once) if it cannot."""
    if greeting.scope < sc.SCOPE_VERSION:
        log.log(VERBOSE, "lacme-accountd does not announce scopes (Debian's 0.8.2?): "
                    "it cannot narrow what it signs for this run")
        return False
    line = sc.encode_scope(scope)
    if len(line) > sc.MAX_SCOPE_LINE:
        raise LacmeError(f"too many orders for one run: their scope is over {sc.MAX_SCOPE_LINE} octets")
    try:
        sock.sendall(line)
    except OSError as exc:
        raise LacmeError(f"lacme-accountd: cannot send the scope: {exc.strerror or exc}") from None
    return True


def _origin(server: str) -> str | None:
    try:
        return origin_of(server)
    except ValueError:  # not https: the client refuses it anyway
        return None


def orders_scope(server: str, orders: Iterable[tuple[Sequence[str | tuple[str, str]], bytes]],
                 profiles: Iterable[str] = ()) -> sc.Scope:
    """newOrder for these identifiers (a DNS name, or a (type, value)), with one
    of these ACME profiles or none, finalize with these CSRs (an empty one, as
    dns-persist's: no finalize for that order)."""
    identifiers: set[tuple[str, str]] = set()
    digests: set[str] = set()
    for names, csr in orders:
        for n in names:
            identifiers.add(sc.identifier(*n) if isinstance(n, tuple) else sc.identifier("dns", n))
        if csr:
            digests.add(sc.digest(csr))
    return sc.Scope(origin=_origin(server), operations=frozenset({sc.NEW_ORDER}),
                    identifiers=frozenset(identifiers), csr_digests=frozenset(digests),
                    profiles=frozenset(p for p in profiles if p))


def profiles_of(orders: Iterable[dict[str, Any]]) -> list[str]:
    """The ACME profiles the entries of an ``orders`` control message ask for."""
    return [str(o["profile"]) for o in orders if o.get("profile")]


def account_scope(server: str, fields: dict[str, Any]) -> sc.Scope:
    """The account command's operations (``fields``: its control message):
    registration (then, for an account that exists, the contact update), the
    contact update, the deactivation, the key rollover (keyChange)."""
    contact = tuple(fields.get("contact") or ())
    ops = set()
    if fields.get("register"):
        ops.add(sc.NEW_ACCOUNT)
    if contact:
        ops.add(sc.UPDATE_ACCOUNT)
    if fields.get("deactivate"):
        ops.add(sc.DEACTIVATE_ACCOUNT)
    if fields.get("rollover"):
        ops.add(sc.KEY_CHANGE)
    return sc.Scope(origin=_origin(server), operations=frozenset(ops), contact=contact,
                    tos=bool(fields.get("tos_agreed")))


def revoke_scope(server: str, certificates: Iterable[bytes], reason: int | None) -> sc.Scope:
    """revokeCert of exactly these certificates (DER), with this reason."""
    return sc.Scope(origin=_origin(server), operations=frozenset({sc.REVOKE_CERT}),
                    certificates=frozenset((sc.digest(der), reason) for der in certificates))


def lookup_scope(server: str) -> sc.Scope:
    """Nothing but the account lookup and POST-as-GET (renewalInfo is not signed)."""
    return sc.Scope(origin=_origin(server))
