"""A compromised client in systemd mode: the booted box, the shipped units.

The same forbidden requests as tests/hostile/test_scope_attacks.py, with
the hostile program as lacme-client@.service (a drop-in replaces its
ExecStart) and lacme-accountd@.service as shipped: one fresh accountd per
connection (Accept=yes) with --require-scope.  After each, accountd (in
its journal) or the master refused it, and Pebble shows nothing changed.
"""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from typing import Iterator

import pytest
from cryptography import x509

from tests.hostile.test_scope_attacks import ATTACKS, COMMANDS, account_state
from tests.lacmeenv import write_key
from tests.pebble import Pebble, free_port, start_pebble
from tests.systemd.box import TREE_ROOT, VENV, Box

pytestmark = [pytest.mark.systemd, pytest.mark.pebble]

EVIL = "/etc/lacme-evil/evil_client.py"  # /etc: the box's own disk
ATTACK_FILE = "/etc/lacme-evil/attack"
CERT = "/srv/certs/scope/cert.pem"
DROPIN = "/etc/systemd/system/lacme-client@.service.d/60-evil.conf"
OWNER = "mailto:owner@example.org"


class Victim:
    def __init__(self, box: Box, pebble: Pebble) -> None:
        self.box, self.pebble = box, pebble

    def lacme(self, *args: str) -> tuple[int, str]:
        proc = self.box.run(f"{VENV}/bin/lacme", *args, check=False, timeout=120)
        return proc.returncode, proc.stdout + proc.stderr

    @property
    def key(self) -> Path:
        return self.box.host_path("/etc/lacme/account.key")


@pytest.fixture(scope="module")
def victim(box: Box, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Victim]:
    pebble = start_pebble(tmp_path_factory.mktemp("sd-scope-pebble"),
                          env={"PEBBLE_VA_NOSLEEP": "1", "PEBBLE_AUTHZREUSE": "0"},
                          http_port=free_port())
    try:
        box.write("/etc/lacme/pebble-tls-ca.pem", Path(pebble.tls_ca_file).read_text())
        box.write("/etc/lacme/pebble-root.pem", pebble.root_pem().decode())
        conf = box.host_path("/etc/lacme/lacme.conf").read_text()
        conf = re.sub(r"(?m)^server = .*$", f"server = {pebble.directory_url}", conf)
        conf = re.sub(r"(?m)^#?SSL_ca_file =.*$", "SSL_ca_file = /etc/lacme/pebble-tls-ca.pem", conf)
        box.write("/etc/lacme/lacme.conf", conf)
        write_key(box.host_path("/etc/lacme/account.key"), "p256")
        key = box.host_path("/etc/lacme/keys/scope.key")
        key.parent.mkdir(mode=0o700, exist_ok=True)
        write_key(key, "p256")
        box.host_path(CERT).parent.mkdir(parents=True, exist_ok=True)
        name = f"scope-{uuid.uuid4().hex[:8]}.example.com"
        box.write("/etc/lacme/lacme-certs.conf", "\n".join([
            "[scope]", "certificate-key = /etc/lacme/keys/scope.key", f"certificate = {CERT}",
            f"subject = /CN={name}", f"subjectAltName = DNS:{name}",
            "CAfile = /etc/lacme/pebble-root.pem", ""]))
        box.write("/etc/systemd/system/lacme-webserver.socket.d/50-tcp.conf",
                  f"[Socket]\nListenStream=127.0.0.1:{pebble.http_port}\n")
        box.write(EVIL, (TREE_ROOT / "tests/hostile/evil_client.py").read_text())
        box.systemctl("daemon-reload")
        box.systemctl("enable", "--now", "lacme-accountd.socket", "lacme-client.socket",
                      "lacme-webserver.socket")
        box.systemctl("restart", "lacme-webserver.socket")
        v = Victim(box, pebble)
        rc, out = v.lacme("account", "--register", "--tos-agreed", OWNER)
        assert rc == 0, out
        rc, out = v.lacme("newOrder")
        assert rc == 0, out
        v.serial = x509.load_pem_x509_certificate(box.host_path(CERT).read_bytes()).serial_number
        v.state = account_state(pebble, v.key)
        box.write(DROPIN, f"[Service]\nExecStart=\nExecStart={VENV}/bin/python {EVIL} "
                          f"@{ATTACK_FILE} - {CERT}\n")
        box.systemctl("daemon-reload")
        yield v
    finally:
        box.host_path(DROPIN).unlink(missing_ok=True)
        box.systemctl("daemon-reload", check=False)
        pebble.stop()


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_compromised_client_can_only_fail_the_run(victim: Victim, attack: str) -> None:
    who, reason, endpoint = ATTACKS[attack]
    box, pebble = victim.box, victim.pebble
    box.write(ATTACK_FILE, attack + "\n")
    old_cert = box.host_path(CERT).read_bytes()
    cursor, offset = box.cursor(), pebble.log_offset()
    rc, out = victim.lacme(*COMMANDS.get(attack, ["newOrder", "--force"]))
    assert rc == 1 and "Traceback" not in out, out
    box.wait_journal(after=cursor, _SYSTEMD_UNIT="lacme-client@*.service", MESSAGE="LACME-EVIL-REPORT *")
    client = [str(e.get("MESSAGE", "")) for e in
              box.journal(after=cursor, _SYSTEMD_UNIT="lacme-client@*.service")]
    reports = [m for m in client if m.startswith("LACME-EVIL-REPORT ")]
    assert reports, (client, out)
    report = json.loads(reports[0].split(" ", 1)[1])
    assert report["attack"] == attack and report["outcome"] != "succeeded", report
    accountd = [e.get("MESSAGE", "") for e in
                box.journal(after=cursor, _SYSTEMD_UNIT="lacme-accountd@*.service")]
    if who == "accountd":
        assert report["signer_broken"], report
        assert any("NOSIGN" in m and reason in m for m in accountd), accountd
    else:
        assert reason in out and not any("NOSIGN" in m for m in accountd)
    requests = pebble.requests_since(offset)
    if attack == "finalize":
        assert requests["POST /order-plz"] == 1
    assert requests[endpoint] == 0, requests
    assert account_state(pebble, victim.key) == victim.state
    assert pebble.cert_status(victim.serial) == "Valid"
    assert box.host_path(CERT).read_bytes() == old_cert
