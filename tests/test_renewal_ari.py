"""Renewal against Debian unstable's Pebble 2.10: ARI checks, ``replaces`` and its
retry, profiles, IP identifiers (RFC 8738), alternate chains, and what a run
where nothing is due may contact.  Real ``lacme`` runs in fork mode."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from tests.lacmeenv import LacmeSetup, load_chain, unique_name, write_key
from tests.pebble import PEBBLE_SID, Pebble, start_pebble

pytestmark = [pytest.mark.pebble,
              pytest.mark.skipif(not os.access(PEBBLE_SID, os.X_OK),
                                 reason=f"{PEBBLE_SID} missing: run scripts/setup-debian.sh")]

RUN_INTERVAL = 60  # lacme.conf run-interval: seconds between two runs of the timer
PROFILES = {"default": {"description": "one hour", "validityPeriod": 3600},
            "shortlived": {"description": "ten minutes", "validityPeriod": 600}}
RENEWAL_INFO = "GET /draft-ietf-acme-ari-03"  # Pebble's renewalInfo path, as counted


@pytest.fixture(scope="module")
def ari_pebble(tmp_path_factory) -> Pebble:
    instance = start_pebble(
        tmp_path_factory.mktemp("pebble-ari"), binary=PEBBLE_SID,
        env={"PEBBLE_VA_NOSLEEP": "1", "PEBBLE_AUTHZREUSE": "0", "PEBBLE_ALTERNATE_ROOTS": "1"},
        config={"profiles": PROFILES})
    yield instance
    instance.stop()


@pytest.fixture(scope="module")
def account_key(ari_pebble, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ari-account")
    key = write_key(root / "account.key", "p256")
    setup = LacmeSetup(root=root / "etc", pebble=ari_pebble, account_key=key)
    setup.write()
    assert setup.run("account", "--register", "--tos-agreed").returncode == 0
    return key


@pytest.fixture
def setup(tmp_path, ari_pebble, account_key) -> LacmeSetup:
    s = LacmeSetup(root=tmp_path / "etc", pebble=ari_pebble, account_key=account_key,
                   extra_default=f"run-interval = {RUN_INTERVAL}")
    s.write()
    s.state = tmp_path / "state"  # type: ignore[attr-defined]
    return s


def run(setup: LacmeSetup, *args: str):
    return setup.run(*args, env={"STATE_DIRECTORY": str(setup.state)})  # type: ignore[attr-defined]


def state_entry(setup: LacmeSetup, section: str = "www") -> dict:
    raw = json.loads((setup.state / "renewal.json").read_text())  # type: ignore[attr-defined]
    return next(e for e in raw["entries"] if e["section"] == section)


def edit_state(setup: LacmeSetup, **changes) -> None:
    path = setup.state / "renewal.json"  # type: ignore[attr-defined]
    raw = json.loads(path.read_text())
    for entry in raw["entries"]:
        entry.update(changes)
    path.write_text(json.dumps(raw))


def lifetime(path: str) -> float:
    cert = load_chain(Path(path))[0]
    return (cert.not_valid_after_utc - cert.not_valid_before_utc).total_seconds() + 1


def test_profile_is_sent_in_new_order(setup, ari_pebble):
    section = setup.add_section("www", [unique_name()], key_kind="p256", profile="shortlived")
    setup.write_certs()
    done = run(setup, "newOrder")
    assert done.returncode == 0, done.stderr
    assert lifetime(section["certificate"]) == 600


def test_unknown_profile_is_a_clear_error_before_any_order(setup, ari_pebble):
    section = setup.add_section("www", [unique_name()], key_kind="p256", profile="forever")
    setup.write_certs()
    offset = ari_pebble.log_offset()
    done = run(setup, "newOrder")
    assert done.returncode == 1
    assert "unknown profile 'forever' (the CA offers: default, shortlived)" in done.stderr
    assert ari_pebble.requests_since(offset)["POST /order-plz"] == 0
    assert not Path(section["certificate"]).exists()
    assert state_entry(setup)["last_outcome"] == "failed"


def test_nothing_due_contacts_nobody_then_only_renewal_info(setup, ari_pebble):
    setup.add_section("www", [unique_name()], key_kind="p256", profile="default")
    setup.write_certs()
    assert run(setup, "newOrder").returncode == 0
    offset = ari_pebble.log_offset()
    done = run(setup, "newOrder")  # next check in 36 s (1/100 of an hour)
    assert done.returncode == 0 and "skipping" in done.stderr
    assert ari_pebble.requests_since(offset) == {}
    edit_state(setup, next_check=0)  # the check is due
    offset = ari_pebble.log_offset()
    done = run(setup, "newOrder")
    assert done.returncode == 0, done.stderr
    assert ari_pebble.requests_since(offset) == {"GET /dir": 1, RENEWAL_INFO: 1}
    entry = state_entry(setup)
    assert entry["ari"] is True and entry["window_start"] < entry["chosen"] < entry["window_end"]
    assert entry["next_check"] - entry["last_check"] == pytest.approx(36, abs=0.5)
    # Pebble's window covers the whole hour: it is clamped to the margin, a quarter
    # lifetime plus one run-interval before notAfter, and its last 1/32 before that
    bound = entry["not_after"] - (entry["not_after"] - entry["not_before"]) / 4 - RUN_INTERVAL
    assert bound - 3600 / 32 - 1 <= entry["chosen"] <= bound
    offset = ari_pebble.log_offset()
    assert run(setup, "newOrder").returncode == 0  # window known, check not due
    assert ari_pebble.requests_since(offset) == {}


def test_renewal_sends_replaces_and_retries_without_when_already_replaced(setup, ari_pebble):
    section = setup.add_section("www", [unique_name()], key_kind="p256", profile="default")
    setup.write_certs()
    assert run(setup, "newOrder").returncode == 0
    first = Path(section["certificate-chain"]).read_bytes()
    offset = ari_pebble.log_offset()
    done = run(setup, "newOrder", "--force")
    assert done.returncode == 0, done.stderr
    assert ari_pebble.log_text(offset).count("is a replacement of") == 1
    assert state_entry(setup)["replaced"]
    # The first certificate again: it already has a replacement, Pebble says
    # alreadyReplaced, and the order goes through without replaces.
    Path(section["certificate-chain"]).write_bytes(first)
    offset = ari_pebble.log_offset()
    done = run(setup, "newOrder", "--force")
    assert done.returncode == 0, done.stderr
    assert "alreadyReplaced" in done.stderr and "ordering without replaces" in done.stderr
    assert ari_pebble.requests_since(offset)["POST /order-plz"] == 2
    assert ari_pebble.log_text(offset).count("is a replacement of") == 0
    assert Path(section["certificate-chain"]).read_bytes() != first


def test_window_in_the_past_renews_at_once_and_logs_explanation(setup, ari_pebble):
    section = setup.add_section("www", [unique_name()], key_kind="p256", profile="default")
    setup.write_certs()
    assert run(setup, "newOrder").returncode == 0
    cert = Path(section["certificate"]).read_bytes()
    ari_pebble.set_renewal_info(cert, json.dumps({
        "suggestedWindow": {"start": "2020-01-01T00:00:00Z", "end": "2020-01-02T00:00:00Z"},
        "explanationURL": "https://ca.example/incident"}))
    edit_state(setup, next_check=0)
    done = run(setup, "newOrder")
    assert done.returncode == 0, done.stderr
    assert "https://ca.example/incident" in done.stderr
    assert Path(section["certificate"]).read_bytes() != cert


def test_malformed_renewal_info_keeps_the_lifetime_rule(setup, ari_pebble):
    section = setup.add_section("www", [unique_name()], key_kind="p256", profile="default")
    setup.write_certs()
    assert run(setup, "newOrder").returncode == 0
    cert = Path(section["certificate"]).read_bytes()
    ari_pebble.set_renewal_info(cert, '{"suggestedWindow": {"start": "soon"}}')
    edit_state(setup, next_check=0)
    done = run(setup, "newOrder")
    assert done.returncode == 0
    assert "ARI check failed" in done.stderr and "not an RFC 3339 date" in done.stderr
    assert Path(section["certificate"]).read_bytes() == cert  # 2/3 not reached: no renewal
    assert state_entry(setup)["chosen"] is None


def test_ip_address_identifier_is_validated_with_http01(setup):
    section = setup.add_section("www", [unique_name()], key_kind="p256", profile="shortlived")
    section["subjectAltName"] += ", IP:127.0.0.1"
    setup.write_certs()
    done = run(setup, "newOrder")
    assert done.returncode == 0, done.stderr
    leaf = load_chain(Path(section["certificate"]))[0]
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]


def root_name(pem: bytes) -> str:
    cert = x509.load_pem_x509_certificate(pem)
    return cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value


def test_preferred_chain_picks_the_alternate_by_issuer_name(setup, ari_pebble):
    alternate = ari_pebble.get_management("/roots/1")
    with open(setup.cafile, "ab") as fh:
        fh.write(alternate)
    wanted = root_name(alternate)
    section = setup.add_section("www", [unique_name()], key_kind="p256", profile="shortlived",
                                preferred_chain=wanted)
    other = setup.add_section("default", [unique_name()], key_kind="p256", profile="shortlived")
    setup.write_certs()
    done = run(setup, "newOrder")
    assert done.returncode == 0, done.stderr
    chain = load_chain(Path(section["certificate-chain"]))
    assert chain[-1].issuer.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == wanted
    default = load_chain(Path(other["certificate-chain"]))
    assert default[-1].issuer.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value \
        == root_name(ari_pebble.root_pem())


def test_revocation_reason_by_name_reaches_the_ca(setup, ari_pebble):
    section = setup.add_section("www", [unique_name()], key_kind="p256", profile="shortlived")
    setup.write_certs()
    assert run(setup, "newOrder").returncode == 0
    leaf = load_chain(Path(section["certificate"]))[0]
    done = run(setup, "revokeCert", "--reason=keyCompromise", section["certificate"])
    assert done.returncode == 0, done.stderr
    status = json.loads(ari_pebble.get_management(f"/cert-status-by-serial/{leaf.serial_number:x}"))
    assert status["Status"] == "Revoked" and status["Reason"] == 1
    done = run(setup, "revokeCert", "--reason=whatever", section["certificate"])
    assert done.returncode == 2 and "unknown revocation reason" in done.stderr
