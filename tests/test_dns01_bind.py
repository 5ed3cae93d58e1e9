"""dns-01 against BIND 9 with the update-policy of lacme-dns.conf(5).

BIND's ``update-policy`` grants the TSIG key TXT records at one owner,
``_acme-challenge.www.example.test``: a certificate for that name is issued
(Pebble 2.10 asks BIND), and one for another name is refused by BIND with
REFUSED, which is one line, with nothing written.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.query
import dns.rdatatype
import pytest

from tests.bind import NAMED, Bind, start_bind
from tests.knot import KEY_NAME, name
from tests.lacmeenv import LacmeSetup, load_chain, public_dir, san_names, write_key
from tests.pebble import PEBBLE_SID, Pebble, start_pebble
from tests.test_dns01 import ENV, issue, write_dns

pytestmark = [pytest.mark.pebble,
              pytest.mark.skipif(not os.path.exists(PEBBLE_SID), reason="needs Pebble 2.10"),
              pytest.mark.skipif(not os.path.exists(NAMED), reason="needs bind9")]


@pytest.fixture(scope="module")
def bind(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bind]:
    instance = start_bind(tmp_path_factory.mktemp("bind"))
    yield instance
    instance.stop()


@pytest.fixture(scope="module")
def bind_pebble(tmp_path_factory: pytest.TempPathFactory, bind: Bind) -> Iterator[Pebble]:
    instance = start_pebble(tmp_path_factory.mktemp("pebble-bind"), env=ENV, binary=PEBBLE_SID,
                            dns_server=bind.address)
    yield instance
    instance.stop()


def serial_and_txt(bind: Bind, owner: str) -> tuple[int, set[str]]:
    def ask(qname: str, rdtype: str) -> dns.message.Message:
        return dns.query.udp(dns.message.make_query(qname, rdtype), "127.0.0.1", timeout=3,
                             port=bind.port)

    serial = next(r.serial for rrset in ask("example.test", "SOA").answer for r in rrset)
    txt = {b"".join(r.strings).decode() for rrset in ask(owner, "TXT").answer
           if rrset.rdtype == dns.rdatatype.TXT for r in rrset}
    return serial, txt


def bind_setup(pebble: Pebble, bind: Bind) -> LacmeSetup:
    root = public_dir()
    setup = LacmeSetup(root=root, pebble=pebble, account_key=write_key(root / "a.key", "p256"))
    setup.write()
    assert setup.run("account", "--register", "--tos-agreed").returncode == 0
    write_dns(setup, "\n".join(["timeout = 10", "[example.test]", f"server = {bind.address}",
                                f"key-name = {KEY_NAME}", f"key-secret = {bind.secret}",
                                f"check = {bind.address}", ""]))
    return setup


def test_granted_name_is_issued_through_bind(bind_pebble: Pebble, bind: Bind) -> None:
    setup = bind_setup(bind_pebble, bind)
    setup.add_section("www", [name("www")], challenge="dns-01")
    rc, err = issue(setup)
    assert rc == 0, err
    assert san_names(load_chain(setup.root / "www.crt")[0]) == {name("www")}
    assert serial_and_txt(bind, f"_acme-challenge.{name('www')}")[1] == set()


def test_name_outside_the_update_policy_is_refused(bind_pebble: Pebble, bind: Bind,
                                                   tmp_path: Path) -> None:
    setup = bind_setup(bind_pebble, bind)
    setup.add_section("other", [name("h05")], challenge="dns-01")
    before = serial_and_txt(bind, f"_acme-challenge.{name('h05')}")
    rc, err = issue(setup)
    assert rc == 1, err
    lines = [line for line in err.splitlines() if "REFUSED" in line]
    assert len(lines) == 1 and "update refused" in lines[0], err
    assert serial_and_txt(bind, f"_acme-challenge.{name('h05')}") == (before[0], set())
