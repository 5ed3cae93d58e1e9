"""What lacme-dns does with a batch: check it, group it by zone, write it, wait.

Run inside ``lacme-dns`` (unprivileged).  Every record is checked again
against the rule of ``lacme.protocol.dns01`` and the names the master
allowed for this connection; then each record's name is followed through a
CNAME to the zone that will hold it, the batch is written with one RFC 2136
UPDATE (or hook calls) per zone, and added records are awaited on every
server of their zones within one bound.  What this connection added and has
not deleted is deleted when the connection ends, whatever the master did.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from lacme.config.dns import DnsConfig, Server, Zone
from lacme.core.errors import LacmeError, OutcomeUnknown
from lacme.protocol.dns01 import check_record

log = logging.getLogger("lacme-dns")

HOOK_TIMEOUT = 60.0


def run_hook(zone: Zone, action: str, name: str, value: str) -> None:
    """``command add|del FQDN VALUE``; a non-zero exit is the first line it wrote.

    The hook runs in a process group of its own: at HOOK_TIMEOUT the whole
    group is killed (a child that kept the output pipe open would keep us
    waiting), and the record may have been changed (OutcomeUnknown).
    """
    assert zone.command is not None
    try:
        hook = subprocess.Popen([zone.command, action, name, value], stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env=dict(os.environ), start_new_session=True)
    except OSError as exc:
        raise LacmeError(f"zone {zone.name}: {zone.command}: {exc.strerror or exc}") from None
    with hook:
        try:
            out, err = hook.communicate(timeout=HOOK_TIMEOUT)
        except BaseException as exc:  # the time limit, or SIGTERM: the hook goes too
            try:
                os.killpg(hook.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            hook.communicate()
            if not isinstance(exc, subprocess.TimeoutExpired):
                raise
            raise OutcomeUnknown(f"zone {zone.name}: {zone.command} {action} {name}: no exit "
                                 f"after {HOOK_TIMEOUT:g}s (stopped; the record may have been "
                                 f"{'added' if action == 'add' else 'deleted'})") from None
    if hook.returncode != 0:
        lines = (err or out).decode(errors="replace").strip().splitlines()
        why = lines[0][:200] if lines else "no message"
        raise LacmeError(f"zone {zone.name}: {zone.command} {action} {name}: exit status "
                         f"{hook.returncode}: {why}")


class Publisher:
    """The records of one master connection."""

    def __init__(self, cfg: DnsConfig | None, error: str = "") -> None:
        self.cfg = cfg
        self.error = error  # the configuration could not be read: every update says so
        self.allowed: frozenset[str] = frozenset()
        self.written: set[tuple[str, str]] = set()  # (requested name, value) added, not deleted
        self._targets: dict[str, tuple[Zone, str]] = {}
        self._servers: dict[Zone, Sequence[Server]] = {}  # asked once per connection

    def allow(self, names: Sequence[str]) -> None:
        self.allowed = frozenset(n for n in names if isinstance(n, str))

    def target(self, name: str) -> tuple[Zone, str]:
        """The zone and the owner name a record of ``name`` is written at."""
        if name not in self._targets:
            assert self.cfg is not None
            from lacme.dns.rfc2136 import follow_cname

            owner = follow_cname(self.cfg, name)
            zone = self.cfg.zone_for(owner)
            if zone is None:
                via = f" (CNAME to {owner})" if owner != name else ""
                raise LacmeError(f"{self.cfg.source}: no zone configured for {name}{via}")
            if zone.command is None and not zone.key_secret:
                raise LacmeError(f"{self.cfg.source} [{zone.name}]: no key to update {owner}")
            self._targets[name] = (zone, owner)
        return self._targets[name]

    def update(self, add: Sequence[tuple[str, str]], delete: Sequence[tuple[str, str]],
               wait: bool, persistent: bool = False) -> None:
        """Check, write and (``wait``) await one batch; LacmeError says why not.
        ``persistent`` (dns-persist-01 records): kept when the connection ends."""
        if self.cfg is None:
            raise LacmeError(self.error)
        # A persistent batch adds dns-persist-01 records only; what is deleted
        # is always a challenge record (a persistent one is removed by hand).
        # Deleting what this connection wrote needs no check again: it passed
        # when written, and the names allowed since then may be others.
        checks = [*((r, persistent) for r in add),
                  *((r, False) for r in delete if r not in self.written)]
        for (name, value), kept in checks:
            why = check_record(name, value, self.allowed, persistent=kept)
            if why is not None:
                raise LacmeError(f"refused: {why}")
        by_zone: dict[Zone, tuple[list[tuple[str, str]], list[tuple[str, str]]]] = {}
        for index, items in ((0, add), (1, delete)):
            for name, value in items:
                zone, owner = self.target(name)
                by_zone.setdefault(zone, ([], []))[index].append((owner, value))
        from lacme.dns.rfc2136 import send_update, wait_for_records

        for zone, (adds, deletes) in by_zone.items():
            mine = [] if persistent else [item for item in add if self.target(item[0])[0] == zone]
            if zone.command is not None:
                for owner, value in deletes:
                    run_hook(zone, "del", owner, value)
                for index, (owner, value) in enumerate(adds):
                    with self._writing(mine[index:index + 1]):
                        run_hook(zone, "add", owner, value)
            else:  # one UPDATE: all of it is applied, or none (RFC 2136 3.4)
                with self._writing(mine):
                    send_update(zone, adds, deletes, self.cfg.ttl)
            log.info("zone %s: %d added, %d deleted", zone.name, len(adds), len(deletes))
        self.written.difference_update(delete)
        if wait and add:
            waited = {zone: items[0] for zone, items in by_zone.items()
                      if items[0] and (zone.command is None or zone.check)}
            wait_for_records(waited, self.cfg.timeout, self.servers)

    def servers(self, zone: Zone) -> Sequence[Server]:
        """The servers a zone's records are awaited on, found once per connection."""
        if zone not in self._servers:
            from lacme.dns.rfc2136 import zone_servers

            self._servers[zone] = zone_servers(zone)
        return self._servers[zone]

    @contextmanager
    def _writing(self, records: Sequence[tuple[str, str]]) -> Iterator[None]:
        """Count ``records`` as written from before they are sent.  Only a
        write that certainly failed takes them off again: one whose outcome is
        unknown (OutcomeUnknown, SIGTERM) is deleted with the rest at the end
        (deleting a TXT record that is not there changes nothing, RFC 2136
        3.4.2.4)."""
        new = [r for r in records if r not in self.written]
        self.written.update(new)
        try:
            yield
        except OutcomeUnknown:
            raise
        except LacmeError:
            self.written.difference_update(new)
            raise

    def holds(self, records: Sequence[tuple[str, str]]) -> bool:
        """Whether any of ``records`` was written by this connection and is still there."""
        return any(r in self.written for r in records)

    def clean_up(self) -> None:
        """Delete what this connection added and did not delete (best effort):
        one UPDATE per zone, one hook call per record, as a batch would, but a
        zone or a record that cannot be deleted does not keep the others."""
        if not self.written or self.cfg is None:
            return
        by_zone: dict[Zone, list[tuple[str, str]]] = {}
        for record in sorted(self.written):
            by_zone.setdefault(self.target(record[0])[0], []).append(record)
        failed: list[tuple[int, LacmeError]] = []
        for zone, records in by_zone.items():
            for batch in ([records] if zone.command is None else [[r] for r in records]):
                try:
                    self.update([], batch, wait=False)
                except LacmeError as exc:
                    failed.append((len(batch), exc))
        if failed:
            log.error("cannot remove %d record(s) at the end: %s", sum(n for n, _ in failed),
                      failed[0][1])
