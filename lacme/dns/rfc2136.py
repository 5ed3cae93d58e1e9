"""RFC 2136 UPDATEs signed with TSIG (RFC 8945), and the propagation wait.

Run inside ``lacme-dns`` (unprivileged; the only process that holds the TSIG
secrets).  ``send_update`` writes one zone's batch in one UPDATE message over
TCP: every record added and deleted in one transaction (RFC 2136 3.4.2.4:
deleting a TXT record names its value, so other TXT records of the name are
left alone).  ``wait_for_records`` asks every server of every zone until each
serves every added record (non-recursive queries: the authoritative answer),
within one bound shared by the batch.  ``follow_cname`` follows a CNAME at
``_acme-challenge.<name>`` (the acme-dns delegation pattern) as the zone's
server answers it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import dns.tsig
import dns.update

from lacme.config.dns import DnsConfig, Server, Zone
from lacme.core.errors import LacmeError, OutcomeUnknown

log = logging.getLogger("lacme-dns")

QUERY_TIMEOUT = 5.0
MAX_CNAME = 8

_TSIG_ERRORS = {
    dns.tsig.PeerBadKey: "BADKEY (unknown key name or algorithm, or the server's update "
                         "policy does not let this key write these records)",
    dns.tsig.PeerBadSignature: "BADSIG (wrong key secret)",
    dns.tsig.PeerBadTime: "BADTIME (clocks differ)",
    dns.tsig.PeerBadTruncation: "BADTRUNC",
    dns.tsig.BadSignature: "the answer's TSIG signature does not verify (wrong key secret?)",
}


def tsig_key(zone: Zone) -> dns.tsig.Key:
    return dns.tsig.Key(zone.key_name, zone.key_secret, zone.key_algorithm)


def quoted(value: str) -> str:
    """A TXT value as zone-file text (values are base64url or persist records: no quotes)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class Unanswered(Exception):
    """The message was sent whole, and no answer came back (the cause says why)."""


def describe_failure(zone: Zone, exc: BaseException) -> str:
    where = f"zone {zone.name}: {zone.server}"
    if isinstance(exc, Unanswered):
        cause = exc.__cause__
        if isinstance(cause, TimeoutError):
            why = f"no answer within {QUERY_TIMEOUT:.0f}s"
        elif isinstance(cause, (EOFError, ConnectionResetError)):
            why = "connection closed by the server before its answer"
        else:
            why = str(getattr(cause, "strerror", None) or cause)
        return f"{where}: {why} (the update may have been applied)"
    for kind, text in _TSIG_ERRORS.items():
        if isinstance(exc, kind):
            return f"{where}: TSIG key {zone.key_name} refused: {text}"
    if isinstance(exc, (dns.exception.Timeout, TimeoutError)):
        return f"{where}: no answer within {QUERY_TIMEOUT:.0f}s"
    if isinstance(exc, ConnectionRefusedError):
        return f"{where}: connection refused (is the server running?)"
    if isinstance(exc, OSError):
        return f"{where}: {exc.strerror or exc}"
    return f"{where}: {exc}"


def send_update(zone: Zone, add: Sequence[tuple[str, str]], delete: Sequence[tuple[str, str]],
                ttl: int) -> None:
    """One UPDATE for the zone; LacmeError naming the zone, server and rcode."""
    assert zone.server is not None
    try:  # the rule (lacme.protocol.dns01) keeps names and values in DNS's bounds
        update = dns.update.UpdateMessage(dns.name.from_text(zone.name))
        update.use_tsig(tsig_key(zone))
        for name, value in delete:
            update.delete(dns.name.from_text(name), "TXT", quoted(value))
        for name, value in add:
            update.add(dns.name.from_text(name), ttl, "TXT", quoted(value))
    except dns.exception.DNSException as exc:
        raise LacmeError(f"zone {zone.name}: cannot write the UPDATE: {exc}") from None
    try:
        data = exchange_tcp(update, zone.server)
    except Unanswered as exc:  # the server may have applied it (RFC 2136 3.4): undo it later
        raise OutcomeUnknown(describe_failure(zone, exc)) from None
    except (dns.exception.DNSException, OSError) as exc:
        raise LacmeError(describe_failure(zone, exc)) from None
    # The header's rcode first: a server that refuses the zone answers unsigned.
    rcode = dns.rcode.Rcode.make(data[3] & 0x0F) if len(data) >= 4 else dns.rcode.FORMERR
    try:
        dns.message.from_wire(data, keyring=update.keyring, request_mac=update.mac)
    except dns.exception.DNSException as exc:
        if rcode == dns.rcode.NOERROR or isinstance(exc, tuple(_TSIG_ERRORS)):
            raise LacmeError(describe_failure(zone, exc)) from None
    if rcode != dns.rcode.NOERROR:
        hints: dict[int, str] = {
            dns.rcode.NOTAUTH: " (the server is not authoritative for the zone, or the key is "
                               "not accepted)",
            dns.rcode.REFUSED: " (the update policy does not allow this key to write these "
                               "records)",
            dns.rcode.NOTZONE: " (a name is outside the zone)"}
        hint = hints.get(rcode, "")
        raise LacmeError(f"zone {zone.name}: {zone.server}: update refused: "
                         f"{dns.rcode.to_text(rcode)}{hint}")


def exchange_tcp(message: dns.message.Message, server: Server) -> bytes:
    """One message out over TCP (RFC 1035 4.2.2), the raw answer back.
    Unanswered once the whole message is sent: a server applies only a whole
    message, so a failure before that leaves the zone as it was."""
    import socket
    import struct

    wire = message.to_wire()
    with socket.create_connection((server.host, server.port), timeout=QUERY_TIMEOUT) as sock:
        sock.sendall(struct.pack("!H", len(wire)) + wire)
        try:
            head = _read_exactly(sock, 2)
            return _read_exactly(sock, struct.unpack("!H", head)[0])
        except (EOFError, OSError) as exc:
            raise Unanswered() from exc


def _read_exactly(sock: object, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))  # type: ignore[attr-defined]  # a socket
        if not chunk:
            raise EOFError("connection closed by the server")
        data += chunk
    return data


def query(server: Server, name: str, rdtype: str,
          timeout: float = QUERY_TIMEOUT) -> dns.message.Message:
    q = dns.message.make_query(name, rdtype)
    q.flags &= ~dns.flags.RD  # the authoritative answer, not a cached one
    return dns.query.udp(q, server.host, timeout=timeout, port=server.port,
                         ignore_unexpected=True)


def txt_values(server: Server, name: str, timeout: float = QUERY_TIMEOUT) -> set[str]:
    """The TXT values ``server`` answers for ``name`` (empty on any failure)."""
    try:
        answer = query(server, name, "TXT", timeout)
    except (dns.exception.DNSException, OSError):
        return set()
    values = set()
    for rrset in answer.answer:
        if rrset.rdtype == dns.rdatatype.TXT:
            for rdata in rrset:
                values.add(b"".join(rdata.strings).decode("ascii", "replace"))
    return values


def zone_servers(zone: Zone) -> tuple[Server, ...]:
    """Where to check propagation: ``check``, or the addresses of the zone's
    NS records as its primary serves them (port 53).  An NS host the primary
    gives no address for (a name outside the zone, say) cannot be asked: a
    warning names it, and ``check`` is how to name its address."""
    if zone.check:
        return zone.check
    if zone.server is None:
        return ()
    try:
        ns = query(zone.server, zone.name, "NS")
    except (dns.exception.DNSException, OSError) as exc:
        log.warning("%s (asking for the NS records): the records are awaited there "
                    "alone; set check to name the servers", describe_failure(zone, exc))
        return (zone.server,)
    hosts = [r.target.to_text() for rrset in ns.answer if rrset.rdtype == dns.rdatatype.NS
             for r in rrset]
    servers: list[Server] = []
    unknown: list[str] = []
    for host in hosts:
        found: list[Server] = []
        for rdtype in ("A", "AAAA"):
            try:
                answer = query(zone.server, host, rdtype)
            except (dns.exception.DNSException, OSError):
                continue
            found += [Server(r.address) for rrset in answer.answer for r in rrset
                      if hasattr(r, "address")]
        servers += found
        if not found:
            unknown.append(host.rstrip("."))
    if unknown:
        log.warning("zone %s: %s gives no address for NS %s: the records are not awaited "
                    "there; set check to name the servers", zone.name, zone.server,
                    ", ".join(unknown))
    return tuple(dict.fromkeys(servers)) or (zone.server,)


def wait_for_records(records: Mapping[Zone, Iterable[tuple[str, str]]], timeout: float,
                     servers: Callable[[Zone], Sequence[Server]] = zone_servers) -> None:
    """Until every server of each zone serves each record; one bound for all."""
    pending = {(server, name, value) for zone, items in records.items()
               for server in servers(zone) for name, value in items}
    deadline = time.monotonic() + timeout
    delay = 0.05
    while pending:
        for server, name in sorted({(s, n) for s, n, _ in pending}, key=str):
            # Each query within what is left of the bound: a server that does
            # not answer costs the bound once, not QUERY_TIMEOUT per record.
            left = deadline - time.monotonic()
            if left <= 0:
                break
            served = txt_values(server, name, min(QUERY_TIMEOUT, left))
            pending -= {(server, name, v) for v in served}
        if not pending:
            return
        if time.monotonic() + delay > deadline:
            server, name, _ = sorted(pending, key=str)[0]
            raise LacmeError(f"{name}: TXT record not served by {server} after {timeout:g}s "
                             f"({len(pending)} record(s) missing)")
        time.sleep(delay)
        delay = min(delay * 2, 1.0)


def follow_cname(cfg: DnsConfig, name: str) -> str:
    """The name the record goes to: ``name``, or where its CNAME chain ends,
    as the configured servers answer (RFC 1034 3.6.2)."""
    seen = [name]
    current = name
    for _ in range(MAX_CNAME):
        zone = cfg.zone_for(current)
        if zone is None or zone.server is None:
            return current
        try:
            answer = query(zone.server, current, "CNAME")
        except (dns.exception.DNSException, OSError):
            return current
        targets = [r.target.to_text().rstrip(".").lower() for rrset in answer.answer
                   if rrset.rdtype == dns.rdatatype.CNAME for r in rrset]
        if not targets:
            return current
        current = targets[0]
        if current in seen:
            raise LacmeError(f"{name}: CNAME loop ({' -> '.join([*seen, current])})")
        seen.append(current)
    raise LacmeError(f"{name}: more than {MAX_CNAME} CNAMEs")
