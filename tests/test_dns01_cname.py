"""dns-01 through a CNAME: ``_acme-challenge.<name>`` delegated into a second zone.

The acme-dns pattern: the main zone (example.test) holds only a CNAME at
``_acme-challenge.deep.sub``, lacme-dns has no key for it, and the record is
written into the small zone acme.example.net, the only one its TSIG key may
update.  Pebble asks a real recursive resolver (unbound) in front of Knot,
which follows the CNAME from one zone into the other as a CA's resolver does.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.knot import KEY_NAME, SECOND_ZONE, SESSION_ZONES, Knot, name, start_knot, start_resolver
from tests.lacmeenv import LacmeSetup, load_chain, public_dir, san_names, write_key
from tests.pebble import PEBBLE_SID, Pebble, start_pebble
from tests.test_dns01 import ENV, issue, write_dns

pytestmark = [pytest.mark.pebble,
              pytest.mark.skipif(not os.path.exists(PEBBLE_SID), reason="needs Pebble 2.10"),
              pytest.mark.skipif(not os.path.exists("/usr/sbin/unbound"), reason="needs unbound")]

OWNER = "_acme-challenge.deep.sub"
TARGET = f"{OWNER}.{SECOND_ZONE}"


@pytest.fixture(scope="module")
def cname_knot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Knot]:
    instance = start_knot(tmp_path_factory.mktemp("knot-cname"), SESSION_ZONES,
                          records={"example.test": [f"{OWNER} CNAME {TARGET}."]})
    yield instance
    instance.stop()


@pytest.fixture(scope="module")
def cname_pebble(tmp_path_factory: pytest.TempPathFactory, cname_knot: Knot) -> Iterator[Pebble]:
    resolver = start_resolver(tmp_path_factory.mktemp("unbound"), cname_knot)
    instance = start_pebble(tmp_path_factory.mktemp("pebble-cname"), env=ENV, binary=PEBBLE_SID,
                            dns_server=resolver.address)
    yield instance
    instance.stop()
    resolver.stop()


def test_cname_is_followed_into_the_delegated_zone(cname_pebble: Pebble, cname_knot: Knot) -> None:
    root = public_dir()
    setup = LacmeSetup(root=root, pebble=cname_pebble, account_key=write_key(root / "a.key", "p256"))
    setup.write()
    done = setup.run("account", "--register", "--tos-agreed")
    assert done.returncode == 0, done.stderr
    write_dns(setup, "\n".join([
        "timeout = 10",
        "[example.test]", f"server = {cname_knot.address}",  # looked up only: no key
        f"[{SECOND_ZONE}]", f"server = {cname_knot.address}", f"key-name = {KEY_NAME}",
        f"key-secret = {cname_knot.secret}", f"check = {cname_knot.address}", ""]))
    setup.add_section("delegated", [name("deep.sub"), "*." + name("deep.sub")])
    main_serial, small_serial = cname_knot.serial(), cname_knot.serial(SECOND_ZONE)
    rc, err = issue(setup)
    assert rc == 0, err
    assert san_names(load_chain(setup.root / "delegated.crt")[0]) == {
        name("deep.sub"), "*." + name("deep.sub")}
    assert cname_knot.serial() == main_serial, "the main zone is never written"
    assert cname_knot.serial(SECOND_ZONE) == small_serial + 2
    assert cname_knot.all_txt() == {}


def test_cname_into_a_zone_without_a_key_is_one_line(cname_pebble: Pebble,
                                                     cname_knot: Knot) -> None:
    root = public_dir()
    setup = LacmeSetup(root=root, pebble=cname_pebble, account_key=write_key(root / "a.key", "p256"))
    setup.write()
    assert setup.run("account", "--register", "--tos-agreed").returncode == 0
    write_dns(setup, f"[example.test]\nserver = {cname_knot.address}\nkey-name = {KEY_NAME}\n"
                     f"key-secret = {cname_knot.secret}\n")
    setup.add_section("nokey", [name("deep.sub")], challenge="dns-01")
    rc, err = issue(setup)
    assert rc == 1, err
    lines = [line for line in err.splitlines() if "no zone configured for" in line]
    assert len(lines) == 1 and f"CNAME to {TARGET}" in lines[0], err
    assert cname_knot.all_txt() == {}
