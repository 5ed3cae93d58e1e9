"""Test harness: a real Knot DNS (Debian's knot) serving test zones on a loopback port.

Run by the test process.  ``start_knot`` writes a knotd configuration with
one TSIG key (hmac-sha256) allowed to UPDATE only TXT records at the
``_acme-challenge`` and ``_validation-persist`` owners listed in ``OWNERS``
(Knot's ``update-owner: name``, ``update-owner-match: equal``), a second
key with no update rights at all, and zone files with an SOA, an NS and its
address; then starts knotd in the foreground and waits until it answers the
zone's SOA.  ``Knot.serial`` and ``Knot.txt`` read what it serves, with
dnspython, as any resolver would.
"""

from __future__ import annotations

import base64
import os
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import dns.message
import dns.query
import dns.rdatatype

from tests.pebble import PebbleError, die_with_parent, free_port, read_tail, stop_process

KNOTD = "/usr/sbin/knotd"
ZONE = "example.test"
SESSION_ZONES = ("example.test", "acme.example.net")
SECOND_ZONE = "acme.example.net"
KEY_NAME = "lacme-key"
NOBODY_KEY = "nobody-key"
HOSTS = ("", "www", *[f"h{i:02d}" for i in range(1, 21)], "deep.sub")
OWNERS = tuple(f"{prefix}{'.' + host if host else ''}"
               for prefix in ("_acme-challenge", "_validation-persist") for host in HOSTS)


def name(host: str = "", zone: str = ZONE) -> str:
    return f"{host}.{zone}" if host else zone


@dataclass
class Knot:
    port: int
    secret: str
    nobody_secret: str
    workdir: Path
    zones: tuple[str, ...]
    _process: subprocess.Popen = field(repr=False)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def query(self, qname: str, rdtype: str) -> dns.message.Message:
        return dns.query.udp(dns.message.make_query(qname, rdtype), "127.0.0.1", timeout=3,
                             port=self.port)

    def serial(self, zone: str = ZONE) -> int:
        answer = self.query(zone, "SOA")
        return next(r.serial for rrset in answer.answer for r in rrset
                    if rrset.rdtype == dns.rdatatype.SOA)

    def txt(self, qname: str) -> set[str]:
        answer = self.query(qname, "TXT")
        return {b"".join(r.strings).decode() for rrset in answer.answer
                if rrset.rdtype == dns.rdatatype.TXT for r in rrset}

    def all_txt(self) -> dict[str, set[str]]:
        """Every challenge TXT record served, by owner (the names of OWNERS)."""
        out = {}
        for zone in self.zones:
            for owner in OWNERS:
                values = self.txt(f"{owner}.{zone}")
                if values:
                    out[f"{owner}.{zone}"] = values
        return out

    def stop(self) -> None:
        stop_process(self._process)

    def pause(self) -> None:
        import signal

        self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        import signal

        self._process.send_signal(signal.SIGCONT)


def zone_text(zone: str, extra: Sequence[str] = (),
              ns: Sequence[str] = ("127.0.0.1",)) -> str:
    """The zone file: one NS record per address of ``ns`` (ns, ns2, ...)."""
    hosts = [f"ns{i + 1 if i else ''}" for i in range(len(ns))]
    return "\n".join([
        f"$ORIGIN {zone}.", "$TTL 60",
        f"@ SOA ns.{zone}. hostmaster.{zone}. 1 3600 600 86400 60",
        *[f"@ NS {host}.{zone}." for host in hosts],
        *[f"{host} A {address}" for host, address in zip(hosts, ns, strict=True)],
        "@ A 127.0.0.1", "* A 127.0.0.1",
        # Explicit addresses: a name with a challenge record below it is no
        # longer covered by the wildcard (RFC 4592 2.2.2).
        *[f"{host} A 127.0.0.1" for host in HOSTS if host],
        *extra, ""])


def knot_config(workdir: Path, port: int, secret: str, nobody: str, zones: Sequence[str],
                also_listen: Sequence[str] = ()) -> str:
    owners = ", ".join(OWNERS)
    listen = ", ".join([f"127.0.0.1@{port}", *also_listen])
    lines = [
        "server:", f"    rundir: {workdir}", f"    listen: [{listen}]",
        "log:", "  - target: stderr", "    any: info",
        "database:", f"    storage: {workdir}",
        "key:",
        f"  - id: {KEY_NAME}", "    algorithm: hmac-sha256", f"    secret: {secret}",
        f"  - id: {NOBODY_KEY}", "    algorithm: hmac-sha256", f"    secret: {nobody}",
        "acl:",
        "  - id: acme", f"    key: {KEY_NAME}", "    action: update", "    update-type: TXT",
        "    update-owner: name", "    update-owner-match: equal",
        f"    update-owner-name: [{owners}]",
        "template:", "  - id: default", f"    storage: {workdir}", "    file: %s.zone",
        "    acl: acme", "    zonefile-sync: -1", "    zonefile-load: whole",
        "    journal-content: changes", "    semantic-checks: off", "    serial-policy: increment",
        "zone:", *[f"  - domain: {z}" for z in zones], ""]
    return "\n".join(lines)


def start_knot(workdir: Path, zones: Sequence[str] = (ZONE, SECOND_ZONE),
               records: dict[str, Sequence[str]] | None = None, *,
               ns: Mapping[str, Sequence[str]] | None = None,
               also_listen: Sequence[str] = ()) -> Knot:
    """knotd on a free loopback port serving ``zones`` (``records`` adds zone-file lines;
    ``ns``: a zone's NS addresses, 127.0.0.1 by default; ``also_listen``: more ``IP@PORT``)."""
    workdir.mkdir(parents=True, exist_ok=True)
    secret = base64.b64encode(os.urandom(32)).decode()
    nobody = base64.b64encode(os.urandom(32)).decode()
    for zone in zones:
        (workdir / f"{zone}.zone").write_text(zone_text(zone, (records or {}).get(zone, ()),
                                                         (ns or {}).get(zone, ("127.0.0.1",))))
    error: Exception | None = None
    for _ in range(3):
        port = free_port()
        conf = workdir / "knot.conf"
        conf.write_text(knot_config(workdir, port, secret, nobody, zones, also_listen))
        log_path = workdir / "knotd.log"
        with open(log_path, "ab") as log:
            process = subprocess.Popen([KNOTD, "-c", str(conf)], stdin=subprocess.DEVNULL,
                                       stdout=log, stderr=subprocess.STDOUT,
                                       preexec_fn=die_with_parent)
        knot = Knot(port, secret, nobody, workdir, tuple(zones), process)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if process.poll() is not None:
                error = PebbleError(f"knotd exited: {read_tail(log_path)}")
                break
            try:
                knot.serial(zones[0])
                return knot
            except Exception as exc:  # noqa: BLE001 - any failure means not answering yet
                error = exc
                time.sleep(0.05)
        stop_process(process)
    raise PebbleError(f"knotd did not start: {error}")


# -- a recursive resolver in front of Knot (CNAME chains across zones) -------

UNBOUND = "/usr/sbin/unbound"


@dataclass
class Resolver:
    port: int
    _process: subprocess.Popen = field(repr=False)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        stop_process(self._process)


def start_resolver(workdir: Path, knot: Knot) -> Resolver:
    """unbound on a free loopback port, Knot's zones as stub zones, no cache:
    what a CA's resolver does with a CNAME from one zone into another."""
    workdir.mkdir(parents=True, exist_ok=True)
    for _ in range(3):
        port = free_port()
        conf = workdir / "unbound.conf"
        conf.write_text("\n".join([
            "server:", f"    interface: 127.0.0.1@{port}", f"    port: {port}",
            "    do-daemonize: no", '    username: ""', '    chroot: ""',
            f'    directory: "{workdir}"', f'    pidfile: "{workdir}/unbound.pid"',
            '    logfile: ""', "    use-syslog: no", "    verbosity: 1",
            "    access-control: 127.0.0.0/8 allow", "    do-not-query-localhost: no",
            '    module-config: "iterator"', "    qname-minimisation: no",
            "    cache-max-ttl: 0", "    cache-max-negative-ttl: 0", "    do-ip6: no",
            *[f'    local-zone: "{z.rsplit(".", 1)[-1]}." nodefault' for z in knot.zones],
            *[line for z in knot.zones for line in
              ("stub-zone:", f'    name: "{z}"', f"    stub-addr: 127.0.0.1@{knot.port}")],
            ""]))
        log_path = workdir / "unbound.log"
        with open(log_path, "ab") as log:
            process = subprocess.Popen([UNBOUND, "-d", "-c", str(conf)], stdin=subprocess.DEVNULL,
                                       stdout=log, stderr=subprocess.STDOUT,
                                       preexec_fn=die_with_parent)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and process.poll() is None:
            try:
                dns.query.udp(dns.message.make_query(knot.zones[0], "SOA"), "127.0.0.1",
                              timeout=1, port=port)
                return Resolver(port, process)
            except Exception:  # noqa: BLE001 - any failure means not answering yet
                time.sleep(0.05)
        stop_process(process)
    raise PebbleError(f"unbound did not start: {read_tail(workdir / 'unbound.log')}")
