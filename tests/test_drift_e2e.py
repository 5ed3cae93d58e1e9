"""The installed certificate follows its configuration, against the real
Pebble: a plain ``newOrder`` (no --force) renews at once a certificate whose
names, key, issuer (self-signed, lacme's placeholder) or CA no longer fit
its section, orders nothing for a section that fits, and ``lacme status``
says why.  Orders are counted in Pebble's log."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.frontserver import write_self_signed
from tests.lacmeenv import LacmeSetup, load_chain, san_names, unique_name, write_key

pytestmark = pytest.mark.pebble

DER = serialization.Encoding.DER
SPKI = serialization.PublicFormat.SubjectPublicKeyInfo


@pytest.fixture(scope="module")
def account_key(pebble, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("drift-account")
    key = write_key(root / "account.key", "p256")
    setup = LacmeSetup(root=root / "conf", pebble=pebble, account_key=key)
    setup.write()
    done = setup.run("account", "--register", "--tos-agreed")
    assert done.returncode == 0, done.stderr
    return key


@pytest.fixture
def issued(tmp_path, pebble, account_key) -> LacmeSetup:
    """Sections [www] (two names) and [other], both issued by Pebble."""
    setup = LacmeSetup(root=tmp_path / "etc", pebble=pebble, account_key=account_key)
    setup.add_section("www", [unique_name(), unique_name("alt")])
    setup.add_section("other", [unique_name("other")], key_kind="p256")
    setup.write()
    done = setup.run("newOrder")
    assert done.returncode == 0, done.stderr
    return setup


def orders(pebble, offset: int) -> int:
    return pebble.requests_since(offset)["POST /order-plz"]


def reason(setup: LacmeSetup, section: str) -> str:
    done = setup.run("status", "--json", section)
    return json.loads(done.stdout)[0]["renew_reason"]


def leaf(setup: LacmeSetup, section: str) -> x509.Certificate:
    return load_chain(Path(setup.sections[section]["certificate-chain"]))[0]


def key_spki(path: str) -> bytes:
    key = serialization.load_pem_private_key(Path(path).read_bytes(), None)
    return key.public_key().public_bytes(DER, SPKI)


def set_names(setup: LacmeSetup, section: str, names: list[str]) -> None:
    setup.sections[section]["subject"] = f"/CN={names[0]}"
    setup.sections[section]["subjectAltName"] = ",".join(f"DNS:{n}" for n in names)
    setup.write_certs()


def renew_plainly(setup: LacmeSetup, pebble) -> int:
    """A plain newOrder; the number of orders it placed.  [other] is never
    one of them."""
    other = Path(setup.sections["other"]["certificate-chain"]).read_bytes()
    offset = pebble.log_offset()
    done = setup.run("newOrder")
    assert done.returncode == 0, done.stderr
    assert Path(setup.sections["other"]["certificate-chain"]).read_bytes() == other
    return orders(pebble, offset)


def test_new_order_fitting_certificates_are_left_alone(issued, pebble):
    chains = {s: Path(issued.sections[s]["certificate-chain"]).read_bytes() for s in issued.sections}
    offset = pebble.log_offset()
    done = issued.run("newOrder")
    assert done.returncode == 0, done.stderr
    assert orders(pebble, offset) == 0 and "renewing" not in done.stderr
    assert chains == {s: Path(issued.sections[s]["certificate-chain"]).read_bytes()
                      for s in issued.sections}


def test_new_order_added_name_renews_at_once_and_only_that_section(issued, pebble):
    names = sorted(san_names(leaf(issued, "www")))
    added = unique_name("added")
    set_names(issued, "www", [*names, added])
    assert reason(issued, "www") == f"names changed (+{added})"
    assert reason(issued, "other") != "names changed"
    assert renew_plainly(issued, pebble) == 1
    assert san_names(leaf(issued, "www")) == {*names, added}
    assert "(no ARI window)" in reason(issued, "www")
    assert renew_plainly(issued, pebble) == 0  # and then it fits


def test_new_order_removed_name_renews_at_once(issued, pebble):
    names = [n[len("DNS:"):] for n in issued.sections["www"]["subjectAltName"].split(",")]
    set_names(issued, "www", names[:1])
    assert reason(issued, "www") == f"names changed (-{names[1]})"
    assert renew_plainly(issued, pebble) == 1
    assert san_names(leaf(issued, "www")) == {names[0]}


def test_new_order_replaced_key_renews_with_the_new_key(issued, pebble):
    key = issued.sections["www"]["certificate-key"]
    old = key_spki(key)
    write_key(Path(key), "p256")
    assert reason(issued, "www") == "key changed"
    assert renew_plainly(issued, pebble) == 1
    spki = leaf(issued, "www").public_key().public_bytes(DER, SPKI)
    assert spki == key_spki(key) != old
    assert renew_plainly(issued, pebble) == 0


def test_new_order_self_signed_certificate_renews_at_once(issued, pebble):
    section = issued.sections["www"]
    names = sorted(san_names(leaf(issued, "www")))
    for path in (section["certificate"], section["certificate-chain"]):
        write_self_signed(Path(path), Path(section["certificate-key"]), names[0])
    set_names(issued, "www", names[:1])
    assert reason(issued, "www") == "self-signed"
    assert renew_plainly(issued, pebble) == 1
    cert = leaf(issued, "www")
    assert cert.issuer != cert.subject
    assert cert.issuer == load_chain(Path(section["certificate-chain"]))[1].subject


def test_new_order_placeholder_renews_at_once(tmp_path, pebble, account_key):
    setup = LacmeSetup(root=tmp_path / "etc", pebble=pebble, account_key=account_key)
    section = setup.add_section("www", [unique_name()])
    setup.write()
    done = setup.run("placeholder")
    assert done.returncode == 0, done.stderr
    assert reason(setup, "www") == "placeholder"
    offset = pebble.log_offset()
    done = setup.run("newOrder")
    assert done.returncode == 0, done.stderr
    assert orders(pebble, offset) == 1 and "renewing: placeholder" in done.stderr
    chain = load_chain(Path(section["certificate-chain"]))
    assert chain[0].issuer == chain[1].subject != chain[0].subject
    assert load_chain(Path(section["certificate"]))[0] == chain[0]
    installed = Path(section["certificate-chain"]).read_bytes()
    assert setup.run("placeholder").returncode == 0  # a real certificate: left alone
    assert Path(section["certificate-chain"]).read_bytes() == installed


def another_ca_chain(key_path: str, names: list[str]) -> bytes:
    """A chain for the section's key and names from a CA that is not CAfile's."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "another CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(1)
          .not_valid_before(now - datetime.timedelta(days=1))
          .not_valid_after(now + datetime.timedelta(days=365))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
          .sign(ca_key, hashes.SHA256()))
    key = serialization.load_pem_private_key(Path(key_path).read_bytes(), None)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=60))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                           False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
            .sign(ca_key, hashes.SHA256()))
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (cert, ca))


def test_new_order_certificate_from_another_ca_renews_at_once(issued, pebble):
    section = issued.sections["www"]
    names = sorted(san_names(leaf(issued, "www")))
    chain = another_ca_chain(section["certificate-key"], names)
    Path(section["certificate-chain"]).write_bytes(chain)
    assert reason(issued, "www") == "not from CAfile"
    assert renew_plainly(issued, pebble) == 1
    assert leaf(issued, "www").issuer != x509.load_pem_x509_certificate(chain).issuer
    assert renew_plainly(issued, pebble) == 0
