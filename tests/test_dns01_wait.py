"""lacme-dns's propagation wait against real Knot servers, without a CA.

lacme-dns runs as the master spawns it (one connection, the sd_listen_fds
protocol); the test speaks the master's side of ``lacme.protocol.dns01``.
* With no ``check`` setting, the records are awaited on the addresses of
  the zone's NS records, port 53: Knot listens there too, on loopback
  addresses of its own, and a second Knot with a copy of the zone that
  never gets the record stands for a secondary that lags.
* A check server that stops answering (a Knot stopped with SIGSTOP) costs
  the propagation bound once, not a query timeout per record.
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.knot import KEY_NAME, Knot, name, start_knot
from tests.lacmeenv import TREE_ROOT

DIGEST = "A" * 42 + "E"
# Loopback addresses of this module, for port 53 (where NS addresses are asked).
_NET = f"127.53.{random.randrange(1, 255)}"
NS1, NS2, NS3 = f"{_NET}.1", f"{_NET}.2", f"{_NET}.3"
ZONE, LAGGING_ZONE = "example.test", "acme.example.net"


@pytest.fixture(scope="module")
def primary(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Knot]:
    """example.test served at NS1:53; acme.example.net at NS1:53 and NS2:53."""
    instance = start_knot(tmp_path_factory.mktemp("knot-primary"), (ZONE, LAGGING_ZONE),
                          ns={ZONE: (NS1,), LAGGING_ZONE: (NS1, NS2)}, also_listen=(f"{NS1}@53",))
    yield instance
    instance.stop()


@pytest.fixture(scope="module")
def lagging(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Knot]:
    """A server of acme.example.net at NS2:53 whose copy never changes."""
    instance = start_knot(tmp_path_factory.mktemp("knot-lagging"), (LAGGING_ZONE,),
                          ns={LAGGING_ZONE: (NS1, NS2)}, also_listen=(f"{NS2}@53",))
    yield instance
    instance.stop()


class LacmeDns:
    """lacme-dns on one connection, as the master starts it."""

    def __init__(self, conf: Path, stderr: int | None = None) -> None:
        self.sock, theirs = socket.socketpair()
        env = {**os.environ, "LISTEN_FDS": "1", "LISTEN_FDNAMES": "dns",
               "PYTHONPATH": str(TREE_ROOT), "TEST_FD": str(theirs.fileno())}
        code = ("import os, sys; os.dup2(int(os.environ.pop('TEST_FD')), 3); "
                "os.environ['LISTEN_PID'] = str(os.getpid()); from lacme.dns.main import main; "
                "raise SystemExit(main(sys.argv[1:]))")
        self.process = subprocess.Popen([sys.executable, "-c", code, f"--config={conf}",
                                         "--quiet"], env=env, pass_fds=(theirs.fileno(),),
                                        stderr=stderr)
        theirs.close()
        self.rfile = self.sock.makefile("rb")

    def send(self, **message: object) -> None:
        self.sock.sendall(json.dumps(message).encode() + b"\n")

    def update(self, names: list[str]) -> dict:
        self.send(type="allow", names=names)
        self.send(type="update", id=1, wait=True, delete=[],
                  add=[{"name": f"_acme-challenge.{n}", "value": DIGEST} for n in names])
        return json.loads(self.rfile.readline())

    def close(self) -> int:
        """Hang up, as the master does; lacme-dns removes what it wrote."""
        self.rfile.close()
        self.sock.close()
        return self.process.wait(timeout=30)


def write_conf(tmp_path: Path, knot: Knot, zone: str, timeout: float,
               check: str | None = None) -> Path:
    conf = tmp_path / "lacme-dns.conf"
    conf.write_text("\n".join([f"timeout = {timeout}", f"[{zone}]", f"server = {knot.address}",
                               f"key-name = {KEY_NAME}", f"key-secret = {knot.secret}",
                               *([f"check = {check}"] if check else []), ""]))
    return conf


def test_without_check_the_records_are_awaited_on_the_ns_addresses(primary: Knot,
                                                                   tmp_path: Path) -> None:
    dns = LacmeDns(write_conf(tmp_path, primary, ZONE, timeout=10))
    names = [name("h01"), name("h02")]
    answer = dns.update(names)
    assert answer["ok"] is True, answer
    # What was awaited is what NS1:53 serves, as a resolver asks it.
    for n in names:
        assert primary.txt(f"_acme-challenge.{n}") == {DIGEST}
    assert dns.close() == 0
    assert primary.all_txt() == {}


def test_without_check_a_lagging_ns_server_is_named(primary: Knot, lagging: Knot,
                                                    tmp_path: Path) -> None:
    """Every NS server of the zone is asked: the one that never serves the record fails the wait."""
    dns = LacmeDns(write_conf(tmp_path, primary, LAGGING_ZONE, timeout=1))
    answer = dns.update([name("www", LAGGING_ZONE)])
    assert answer["ok"] is False and answer["written"] is True, answer
    assert answer["message"] == (f"_acme-challenge.www.{LAGGING_ZONE}: TXT record not served "
                                 f"by {NS2}:53 after 1s (1 record(s) missing)")
    assert dns.close() == 0
    assert primary.all_txt() == {}


def test_a_silent_check_server_costs_the_bound_once(primary: Knot, lagging: Knot,
                                                    tmp_path: Path) -> None:
    """Six records awaited on a server that stopped answering: the answer comes
    after the 1 s bound (plus one query at the most), not 6 query timeouts."""
    from lacme.dns.rfc2136 import QUERY_TIMEOUT

    dns = LacmeDns(write_conf(tmp_path, primary, ZONE, timeout=1, check=lagging.address))
    lagging.pause()
    try:
        started = time.monotonic()
        answer = dns.update([name(f"h{i:02d}") for i in range(1, 7)])
        elapsed = time.monotonic() - started
    finally:
        lagging.resume()
    assert answer["ok"] is False and f"not served by {lagging.address}" in answer["message"]
    assert elapsed < 1 + QUERY_TIMEOUT, f"{elapsed:.1f}s for a 1s bound"
    assert dns.close() == 0
    assert primary.all_txt() == {}


def test_records_beyond_dns_bounds_are_one_line_and_lacme_dns_goes_on(primary: Knot,
                                                                      tmp_path: Path) -> None:
    """A name that is valid but too long once prefixed, a dns-persist-01 value
    longer than one TXT string: refused with one line, nothing written, and
    the connection still serves (lacme-dns did not die with a traceback)."""
    long_base = ".".join(["a" * 60, "b" * 60, "c" * 60, "d" * 45, ZONE])
    assert len(long_base) <= 253 < len("_acme-challenge." + long_base)
    dns = LacmeDns(write_conf(tmp_path, primary, ZONE, timeout=10))
    serial = primary.serial()
    dns.send(type="allow", names=[long_base, name("www")])
    dns.send(type="update", id=1, wait=True, delete=[],
             add=[{"name": f"_acme-challenge.{long_base}", "value": DIGEST}])
    answer = json.loads(dns.rfile.readline())
    assert answer["ok"] is False and "a name longer than 253 characters" in answer["message"]
    value = f"ca.test; accounturi=https://ca.test/acct/{'1' * 250}"
    dns.send(type="update", id=2, wait=True, delete=[], persistent=True,
             add=[{"name": f"_validation-persist.{name('www')}", "value": value}])
    answer = json.loads(dns.rfile.readline())
    assert answer["ok"] is False and "longer than 255 octets" in answer["message"]
    assert "\n" not in answer["message"] and primary.serial() == serial
    assert dns.update([name("www")])["ok"] is True, "the connection still serves"
    assert dns.close() == 0
    assert primary.all_txt() == {}


def test_an_ns_host_without_an_address_is_named_once_per_connection(
        tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    """One NS of the zone is a name outside it (its address is not in the
    zone): the records are awaited on the NS that has one, and a warning
    names the other, once for the connection's two batches (the servers are
    looked up once per connection)."""
    knot = start_knot(tmp_path_factory.mktemp("knot-outside-ns"), (ZONE,),
                      records={ZONE: ["@ NS ns.elsewhere.example."]}, ns={ZONE: (NS3,)},
                      also_listen=(f"{NS3}@53",))
    try:
        dns = LacmeDns(write_conf(tmp_path, knot, ZONE, timeout=10), stderr=subprocess.PIPE)
        assert dns.update([name("h01")])["ok"] is True
        assert dns.update([name("h02")])["ok"] is True
        assert dns.close() == 0
        assert knot.all_txt() == {}
        assert dns.process.stderr is not None
        err = dns.process.stderr.read().decode()
        assert err == (f"warning: zone {ZONE}: {knot.address} gives no address for NS "
                       "ns.elsewhere.example: the records are not awaited there; set check "
                       "to name the servers\n")
    finally:
        knot.stop()
