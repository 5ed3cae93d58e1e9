"""The master's side of dns-01 and dns-persist-01: what it relays to lacme-dns.

Run by the master (root), which never talks DNS itself.  The ACME client asks
(control messages ``dns_publish`` / ``dns_unpublish``); the master decides
with the rule of ``lacme.protocol.dns01`` (only ``_acme-challenge.<name>``
with a digest-shaped value, or ``_validation-persist.<name>`` with a persist
record, and only names of the sections being ordered) and relays a batch
to ``lacme-dns``, which checks the same rule again and writes it: one
RFC 2136 UPDATE per zone and one propagation wait per batch.

lacme-dns is spawned as ``[dns] user`` with one connection (sd_listen_fds),
or reached at ``[dns] connect`` (a socket-activated unit).  What is published
is written to ``dns-records.json`` in the state directory before it is sent,
and removed from it once deleted: records left by a killed master are
deleted by the next run before anything else.  On every exit (success,
failure, SIGTERM) what is still published is deleted.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Callable, Iterable, Sequence
from contextlib import ExitStack

from lacme.config.dns import DEFAULT_DNS_CONFIG, DnsSettings
from lacme.core.atomic import replace_file
from lacme.core.descriptors import Channel
from lacme.core.errors import LacmeError
from lacme.master.children import Children, resolve_command
from lacme.protocol import control, dns01

log = logging.getLogger("lacme")

LEFTOVERS = "dns-records.json"
DNS_TIMEOUT = 600.0  # an update and its propagation wait (lacme-dns bounds the wait)

Record = tuple[str, str]


def open_dns(settings: DnsSettings, children: Children, stack: ExitStack, debug: bool,
             names: Iterable[str], state_directory: str | None,
             aborting: Callable[[], bool]) -> DnsRelay:
    """lacme-dns, spawned or connected, told the names of this run; closed
    with the run (``aborting()``: interrupted, see ``DnsRelay.close``)."""
    from lacme.master.components import connect_component, spawn_component

    if settings.connect:
        # lacme-dns.socket listens only when its credential's file exists.
        sock = connect_component(settings.connect, "dns", "is lacme-dns.socket started? "
                                 f"it starts only if {DEFAULT_DNS_CONFIG} exists")
    else:
        from lacme.core.privs import resolve

        creds = resolve(settings.user, settings.group, where="[dns]")
        argv = [*resolve_command(settings.command),
                *([f"--config={settings.config}"] if settings.config else []),
                "--debug" if debug else "--quiet"]
        sock, _ = spawn_component(children, "dns", argv, creds, "lacme-dns", grace=15.0,
                                  fdname="dns")
    sock.settimeout(DNS_TIMEOUT)
    relay = DnsRelay(Channel(sock), names, state_directory)
    stack.callback(lambda: relay.close(aborting=aborting()))
    relay.remove_leftovers()
    return relay


def answer_request(relay: DnsRelay | None, channel: Channel, msg: dict) -> None:
    """The client's dns_publish (answered once served) or dns_unpublish."""
    raw = msg.get("records")
    records = [(str(r.get("name", "")), str(r.get("value", ""))) for r in raw
               if isinstance(r, dict)] if isinstance(raw, list) else []
    if msg["type"] == "dns_unpublish":
        if relay is not None:
            relay.unpublish(records)
        return
    if relay is None:
        ok, message = False, "no section of this run uses dns-01 or dns-persist-01"
    else:
        # The client asks for dns-01 records only: the records that stay in
        # the zone (dns-persist-01) are the master's own decision (``lacme
        # dns-persist --publish``), never a client's.
        ok, message = relay.publish(records)
    if not ok:  # the client reports it, once, for each section concerned
        log.debug("cannot publish DNS records: %s", message)
    channel.send(control.encode_message("dns_published", id=str(msg.get("id", "")), ok=ok,
                                        message=message))


class DnsRelay:
    """One lacme-dns connection: the records this run asked for."""

    def __init__(self, channel: Channel, names: Iterable[str], state_directory: str | None) -> None:
        self.channel = channel
        self.allowed = frozenset(dns01.base_name(n) for n in names)
        self.published: set[Record] = set()
        self.path = os.path.join(state_directory, LEFTOVERS) if state_directory else None
        self._next_id = 0
        self._written = True  # the last update's answer: some added record may be in the zone
        self._send("allow", names=sorted(self.allowed | self._leftover_bases()))

    # -------------------------------------------------------------- state
    def _read_leftovers(self) -> list[Record]:
        if self.path is None:
            return []
        try:
            with open(self.path, "rb") as f:
                raw = json.load(f)
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            log.warning("%s: unreadable, ignored (%s)", self.path, exc)
            return []
        return [(r[0], r[1]) for r in raw if isinstance(r, list) and len(r) == 2
                and all(isinstance(x, str) for x in r)] if isinstance(raw, list) else []

    def _leftover_bases(self) -> set[str]:
        bases = set()
        for name, _ in self._read_leftovers():
            for prefix in (dns01.ACME_PREFIX, dns01.PERSIST_PREFIX):
                if name.startswith(prefix):
                    bases.add(name[len(prefix):])
        return bases

    def _save(self, records: Iterable[Record]) -> None:
        if self.path is None:
            return
        items = sorted(set(records))
        if not items:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            return
        try:
            os.makedirs(os.path.dirname(self.path), mode=0o755, exist_ok=True)
        except OSError as exc:
            raise LacmeError(f"{os.path.dirname(self.path)}: {exc.strerror or exc}") from None
        replace_file(self.path, json.dumps(items).encode(), 0o600)

    def remove_leftovers(self) -> None:
        """Delete the dns-01 records a killed run left (its state file says which)."""
        leftovers = [r for r in self._read_leftovers() if r[0].startswith(dns01.ACME_PREFIX)]
        if not leftovers:
            return
        log.warning("removing %d DNS record(s) left by a killed run", len(leftovers))
        ok, message = self._update([], leftovers, wait=False)
        if not ok:
            raise LacmeError(f"cannot remove the DNS records a killed run left: {message}")
        self._save([])

    # ------------------------------------------------------------ requests
    def check(self, records: Sequence[Record], persistent: bool = False) -> str | None:
        for name, value in records:
            why = dns01.check_record(name, value, self.allowed, persistent=persistent)
            if why is not None:
                return why
        return None

    def publish(self, records: Sequence[Record], *, persistent: bool = False) -> tuple[bool, str]:
        """Check, then have lacme-dns write ``records`` and wait until they are served."""
        why = self.check(records, persistent) if records else "no records"
        if why is not None:
            return False, f"refused: {why}"
        if not persistent:
            try:
                self._save(self.published | set(records))
            except LacmeError as exc:
                return False, str(exc)
            self.published.update(records)
        ok, message = self._update(records, [], wait=True, persistent=persistent)
        if not ok and not self._written and not persistent:
            self.published.difference_update(records)  # nothing of it is in the zone
            self._save(self.published)
        return ok, message

    def unpublish(self, records: Sequence[Record]) -> None:
        mine = [r for r in records if r in self.published]
        if not mine:
            return
        ok, message = self._update([], mine, wait=False)
        if ok:
            self.published.difference_update(mine)
            self._save(self.published)
        else:
            log.error("cannot remove DNS records: %s", message)

    def close(self, *, aborting: bool = False) -> None:
        """Delete what is still published, then hang up.  Interrupted (SIGTERM),
        the master only hangs up: lacme-dns, told to stop, or seeing the end of
        the connection, deletes what it wrote itself, without the master
        waiting for a propagation wait it may be in."""
        try:
            if self.published and not aborting:
                self.unpublish(sorted(self.published))
        finally:
            try:
                self.channel.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.channel.close()

    # ---------------------------------------------------------------- wire
    def _send(self, kind: str, **fields: object) -> None:
        try:
            self.channel.send(control.encode_message(kind, **fields))
        except OSError as exc:
            raise LacmeError(f"lacme-dns: {exc.strerror or 'connection closed'}") from None

    def _update(self, add: Sequence[Record], delete: Sequence[Record],
                wait: bool, persistent: bool = False) -> tuple[bool, str]:
        self._next_id += 1
        self._written = True
        try:
            self._send("update", id=self._next_id, wait=wait, persistent=persistent,
                       add=[{"name": n, "value": v} for n, v in add],
                       delete=[{"name": n, "value": v} for n, v in delete])
            while True:
                line, _ = self.channel.recv_line(control.MAX_LINE)
                if line is None:
                    return False, "lacme-dns: ended unexpectedly"
                msg = control.decode_message(line, dns01.DNS_TYPES)
                if msg.get("id") == self._next_id:
                    self._written = msg.get("written") is not False
                    return bool(msg.get("ok")), str(msg.get("message", ""))
        except TimeoutError:
            return False, "lacme-dns: no answer in time"
        except (OSError, LacmeError) as exc:
            return False, f"lacme-dns: {exc}"
