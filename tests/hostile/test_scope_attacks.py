"""A compromised client against a real Pebble: it can at most fail the run.

``evil_client.py`` takes lacme-client's place (``[client] command``) in a
real newOrder run (fork mode: the master spawns our accountd, scoped to the
configured name and the master's CSR) and tries one forbidden request of
issue 13 each.  After each: accountd (or, for a publication, the master)
refused it and logged why, and Pebble shows nothing changed: the account
answers to the same key with the same status and contacts, the installed
certificate is not revoked, the forbidden endpoint was never reached, and
no certificate was issued for the attacker's key.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from lacme.client.acme.session import AcmeSession
from lacme.client.acme.messages import AcmeProblemError
from tests.lacmeenv import LacmeSetup, unique_name, write_key
from tests.pebble import start_pebble
from tests.test_acme import KeySigner
from tests.test_eab import KEYS, eab_pebble, mac_file  # noqa: F401 - eab_pebble is a fixture

EVIL = Path(__file__).with_name("evil_client.py")
OWNER = "mailto:owner@example.org"

# attack -> (who refuses, what its log says, the Pebble endpoint never reached)
ATTACKS = {
    "key_change": ("accountd", "keyChange is outside the scope", "POST /rollover-account-key"),
    "deactivate": ("accountd", "deactivateAccount is outside the scope", "POST /my-account"),
    "contact": ("accountd", "updateAccount is outside the scope", "POST /my-account"),
    "new_account": ("accountd", "newAccount is outside the scope", "POST /sign-me-up"),
    # spellings that Go's encoding/json (Pebble) reads as the RFC 8555 member
    "status_case": ("accountd", "other is outside the scope", "POST /my-account"),
    "status_folded": ("accountd", "other is outside the scope", "POST /my-account"),
    "contact_case": ("accountd", "other is outside the scope", "POST /my-account"),
    "new_account_create": ("accountd", "other is outside the scope", "POST /sign-me-up"),
    "revoke": ("accountd", "revokeCert is outside the scope", "POST /revoke-cert"),
    "new_order": ("accountd", "newOrder for evil-name.example.com, not in the scope", "POST /order-plz"),
    "finalize": ("accountd", "finalize with a CSR that is not in the scope", "POST /finalize-order"),
    "profile": ("accountd", "newOrder with profile shortlived, not in the scope", "POST /order-plz"),
    "second_scope": ("accountd", "a scope that is not the first line", "POST /order-plz"),
    # an order for the configured name and the master's CSR, for a certificate that
    # expires in minutes (notAfter, RFC 8555 7.4), installed over the good one
    "short_validity": ("accountd", "other is outside the scope", "POST /order-plz"),
    "publish": ("master", "refused: not a key authorization of this account", "POST /chalZ"),
    "publish_idle": ("master", "refused: no order of this run is pending", "POST /chalZ"),
    "publish_many": ("master", "refused: more answers than the 1 authorization(s)", "POST /chalZ"),
}
COMMANDS = {"publish_idle": ["account"]}  # the others: newOrder --force
# Fork mode only (in the box, the new key of a rollover is a credential of the unit):
# a rollover run, where accountd holds a new key and may sign a keyChange, to that key only.
FORK_ATTACKS = {**ATTACKS, "key_change_rollover": (
    "accountd", "keyChange to a key that is not this accountd's new key", "POST /rollover-account-key")}
FORK_COMMANDS = {**COMMANDS,
                 "key_change_rollover": ["account", "--rollover", "--new-privkey=file:{new_key}"]}
SCOPES = {("account",): "SCOPE lookup only", ("account", "--rollover"): "SCOPE keyChange"}


def account_state(pebble, key_path: Path) -> dict:
    """The account as Pebble has it, asked with the original key (so: still its key)."""
    key = serialization.load_pem_private_key(key_path.read_bytes(), None)
    session = AcmeSession(pebble.directory_url, KeySigner(key), deadline=time.monotonic() + 20,
                          verify=pebble.tls_ca_file)
    try:
        url = session.lookup_account()
        body = session.get(url)
        return {"url": url, "status": body.get("status"), "contact": body.get("contact")}
    finally:
        session.close()


class Victim:
    """A lacme installation with a registered account and an installed certificate."""

    def __init__(self, root: Path, pebble, client_user: str = "", client_group: str = "") -> None:
        self.root = root
        self.pebble = pebble
        self.key = write_key(root / "account.key")
        self.setup = LacmeSetup(root=root / "etc", pebble=pebble, account_key=self.key)
        self.section = self.setup.add_section("www", [unique_name()])
        self.setup.write()
        self.log = root / "accountd.log"
        done = self.setup.run("account", "--register", "--tos-agreed", OWNER)
        assert done.returncode == 0, done.stderr
        done = self.setup.run("newOrder")
        assert done.returncode == 0, done.stderr
        self.cert = Path(self.section["certificate"])
        self.serial = x509.load_pem_x509_certificate(self.cert.read_bytes()).serial_number
        self.state = account_state(pebble, self.key)
        assert self.state["status"] == "valid" and self.state["contact"] == [OWNER]

    def attack(self, attack: str, report: Path, command: list[str]):
        self.setup.client_command = f"{sys.executable} {EVIL} {attack} {report} {self.cert}"
        self.setup.write()
        accountd_conf = self.setup.root / "lacme-accountd.conf"
        accountd_conf.write_text(accountd_conf.read_text() + f"logfile = {self.log}\n")
        self.log.write_text("")
        return self.setup.run(*command)


@pytest.fixture(scope="module")
def victim(pebble, tmp_path_factory) -> Victim:
    return Victim(tmp_path_factory.mktemp("victim"), pebble)


@pytest.mark.parametrize("attack", list(FORK_ATTACKS))
def test_compromised_client_can_only_fail_the_run(victim, pebble, tmp_path, attack):
    who, reason, endpoint = FORK_ATTACKS[attack]
    report_path = tmp_path / "report.json"
    old_cert = victim.cert.read_bytes()
    offset = pebble.log_offset()
    new_key = write_key(tmp_path / "new.key", "p256")
    command = [c.format(new_key=new_key) for c in FORK_COMMANDS.get(attack, ["newOrder", "--force"])]
    done = victim.attack(attack, report_path, command)
    assert report_path.exists(), done.stderr
    report = json.loads(report_path.read_text())
    assert report["outcome"] != "succeeded", report
    assert done.returncode == 1 and "Traceback" not in done.stderr
    accountd_log = victim.log.read_text()
    # The master scoped the connection (the account command: to the lookup).
    assert SCOPES.get(tuple(command[:2]), "SCOPE newOrder") in accountd_log
    if who == "accountd":
        assert report["signer_broken"], report  # accountd closed the connection
        assert "NOSIGN" in accountd_log and reason in accountd_log, accountd_log
    else:
        assert reason in done.stderr and "NOSIGN" not in accountd_log
    # Pebble: nothing changed.
    requests = pebble.requests_since(offset)
    if attack == "finalize":  # authorized as usual, never finalized
        assert requests["POST /order-plz"] == 1 and requests[endpoint] == 0
        assert order_status(pebble, victim.key, report["order"]) == "ready"
    else:
        assert requests[endpoint] == 0, requests
    assert account_state(pebble, victim.key) == victim.state
    assert pebble.cert_status(victim.serial) == "Valid"
    assert victim.cert.read_bytes() == old_cert


def order_status(pebble, key_path: Path, url: str) -> str:
    key = serialization.load_pem_private_key(key_path.read_bytes(), None)
    session = AcmeSession(pebble.directory_url, KeySigner(key), deadline=time.monotonic() + 20,
                          verify=pebble.tls_ca_file)
    try:
        session.lookup_account()
        return str(session.get(url).get("status"))
    finally:
        session.close()


@pytest.mark.parametrize("accountd_kid", ["kid-1", None])
def test_registration_is_bound_only_to_accountds_external_account(eab_pebble, tmp_path, accountd_kid):
    """The registration the command asks for, with a binding to the attacker's
    own external account (its MAC key, kid-2): refused whether accountd holds
    another MAC key or none, and Pebble has no account for the key."""
    key = write_key(tmp_path / "account.key", "p256")
    s = LacmeSetup(root=tmp_path / "etc", pebble=eab_pebble, account_key=key)
    creds = tmp_path / "attacker.eab"
    creds.write_text(f"kid-2 {KEYS['kid-2']}\n")
    report_path, log = tmp_path / "report.json", tmp_path / "accountd.log"
    s.client_command = f"{sys.executable} {EVIL} eab_own {report_path} {creds}"
    s.write()
    conf = s.root / "lacme-accountd.conf"
    eab = f"eab-kid = kid-1\neab-hmac-key = {mac_file(tmp_path, 'kid-1')}\n" if accountd_kid else ""
    conf.write_text(conf.read_text() + eab + f"logfile = {log}\n")
    done = s.run("account", "--register", "--tos-agreed", OWNER)
    report = json.loads(report_path.read_text())
    assert report["outcome"] != "succeeded" and report["signer_broken"], report
    assert done.returncode == 1 and "Traceback" not in done.stderr
    reason = ("that is not this accountd's (eab-kid kid-1)" if accountd_kid
              else "and this accountd holds no MAC key")
    assert "SCOPE newAccount" in log.read_text() and reason in log.read_text(), log.read_text()
    with pytest.raises(AcmeProblemError, match="accountDoesNotExist"):
        account_state(eab_pebble, key)


@pytest.fixture(scope="module")
def reusing_victim(tmp_path_factory):
    """A victim at a CA that reuses valid authorizations (as Let's Encrypt
    does): a second order for the same names is ready at once."""
    ca = start_pebble(tmp_path_factory.mktemp("pebble-reuse"), env={"PEBBLE_AUTHZREUSE": "100"})
    yield Victim(tmp_path_factory.mktemp("reusing-victim"), ca)
    ca.stop()


def test_one_certificate_per_csr_and_run(reusing_victim, tmp_path):
    """The master's CSR finalized on order after order: each one a certificate,
    which spends the CA's limit on duplicate certificates (Let's Encrypt: 5 a
    week for one set of names) and keeps the real renewal out.  The first is
    finalized, the second order's finalize is refused."""
    victim, ca = reusing_victim, reusing_victim.pebble
    old_cert = victim.cert.read_bytes()
    offset = ca.log_offset()
    done = victim.attack("finalize_twice", tmp_path / "report.json", ["newOrder", "--force"])
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["issued"] == 1 and report["signer_broken"], report
    assert done.returncode == 1 and "Traceback" not in done.stderr
    log = victim.log.read_text()
    assert "NOSIGN" in log and "finalize of a second order with the same CSR" in log, log
    requests = ca.requests_since(offset)
    assert requests["POST /order-plz"] == 2 and requests["POST /finalize-order"] == 1, requests
    assert victim.cert.read_bytes() == old_cert
