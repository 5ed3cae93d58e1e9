"""dns-01 in systemd mode: the socket-activated lacme-dns with its credential.

Knot DNS and Pebble 2.10 (``-dnsserver`` at Knot) run on the host's
loopback, which the booted box shares.  In the box: ``[dns] connect`` in
the installed systemd-mode lacme.conf, lacme-dns.conf (the TSIG key) root's
0600 file given to ``lacme-dns.service`` as a credential, and
``lacme-renew.service`` issues a wildcard and apex certificate.  The module
puts back the files it changed.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.knot import KEY_NAME, SESSION_ZONES, Knot, start_knot
from tests.lacmeenv import write_key
from tests.pebble import PEBBLE_SID, Pebble, free_port, start_pebble
from tests.systemd.box import VENV, Box

pytestmark = [pytest.mark.systemd, pytest.mark.pebble,
              pytest.mark.skipif(not os.path.exists(PEBBLE_SID), reason="needs Pebble 2.10")]

DYNAMIC_UIDS = range(61184, 65520)
CHANGED = ("/etc/lacme/lacme.conf", "/etc/lacme/lacme-certs.conf", "/etc/lacme/account.key")
PROBE = "/etc/systemd/system/lacme-dns.service.d/50-probe.conf"


@pytest.fixture(scope="module")
def sd_knot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Knot]:
    instance = start_knot(tmp_path_factory.mktemp("sd-knot"), SESSION_ZONES)
    yield instance
    instance.stop()


@pytest.fixture(scope="module")
def sd_dns_pebble(tmp_path_factory: pytest.TempPathFactory, sd_knot: Knot) -> Iterator[Pebble]:
    instance = start_pebble(tmp_path_factory.mktemp("sd-dns-pebble"), binary=PEBBLE_SID,
                            env={"PEBBLE_VA_NOSLEEP": "1", "PEBBLE_AUTHZREUSE": "0"},
                            http_port=free_port(), dns_server=sd_knot.address)
    yield instance
    instance.stop()


@pytest.fixture(scope="module")
def dns_box(box: Box, sd_knot: Knot, sd_dns_pebble: Pebble) -> Iterator[Box]:
    saved = {p: box.host_path(p).read_bytes() for p in CHANGED if box.host_path(p).exists()}
    box.write("/etc/lacme/pebble-tls-ca.pem", Path(sd_dns_pebble.tls_ca_file).read_text())
    box.write("/etc/lacme/pebble-root.pem", sd_dns_pebble.root_pem().decode())
    conf = box.host_path("/etc/lacme/lacme.conf").read_text().split("\n[dns]")[0]
    conf = re.sub(r"(?m)^server = .*$", f"server = {sd_dns_pebble.directory_url}", conf)
    conf = re.sub(r"(?m)^#?SSL_ca_file =.*$", "SSL_ca_file = /etc/lacme/pebble-tls-ca.pem", conf)
    box.write("/etc/lacme/lacme.conf", conf + "\n[dns]\nconnect = /run/lacme/dns.socket\n")
    box.write("/etc/lacme/lacme-dns.conf", "\n".join([
        "timeout = 20", "[example.test]", f"server = {sd_knot.address}", f"key-name = {KEY_NAME}",
        f"key-secret = {sd_knot.secret}", f"check = {sd_knot.address}", ""]), mode=0o600)
    write_key(box.host_path("/etc/lacme/account.key"), "p256")
    box.host_path("/srv/certs/wild").mkdir(parents=True, exist_ok=True)
    box.write("/etc/lacme/lacme-certs.conf", "\n".join([
        "[wild]", "certificate-key = /etc/lacme/keys/wild.key",
        "certificate-chain = /srv/certs/wild/chain.pem", "subject = /CN=example.test",
        "subjectAltName = DNS:example.test,DNS:*.example.test", "challenge = dns-01",
        "CAfile = /etc/lacme/pebble-root.pem", ""]))
    key = box.host_path("/etc/lacme/keys/wild.key")
    key.parent.mkdir(mode=0o700, exist_ok=True)
    write_key(key, "p256")
    # What the service itself can read: its credential, not the file.
    box.write(PROBE, "[Service]\nExecStartPre=-/bin/sh -c 'if cat /etc/lacme/lacme-dns.conf "
              ">/dev/null 2>&1; then echo LACME-PROBE file-readable; else echo LACME-PROBE "
              "file-unreadable; fi; test -r \"$CREDENTIALS_DIRECTORY/lacme-dns.conf\" && "
              "echo LACME-PROBE credential-readable'\n")
    box.systemctl("daemon-reload")
    box.systemctl("enable", "--now", "lacme-accountd.socket", "lacme-client.socket",
                  "lacme-webserver.socket", "lacme-dns.socket")
    try:
        yield box
    finally:
        box.systemctl("disable", "--now", "lacme-dns.socket", check=False)
        box.systemctl("stop", "lacme-dns.service", check=False)
        box.host_path(PROBE).unlink(missing_ok=True)
        box.host_path("/etc/lacme/lacme-dns.conf").unlink(missing_ok=True)
        for path, data in saved.items():
            box.host_path(path).write_bytes(data)
        box.systemctl("daemon-reload")


def test_renewal_issues_a_wildcard_through_the_dns_unit(dns_box: Box, sd_knot: Knot) -> None:
    proc = dns_box.run(f"{VENV}/bin/lacme", "account", "--register", "--tos-agreed", check=False,
                       timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    cursor = dns_box.cursor()
    serial = sd_knot.serial()
    dns_box.systemctl("start", "lacme-renew.service", check=False)
    result = dns_box.show("lacme-renew.service", "Result")
    master = dns_box.journal(after=cursor, _SYSTEMD_UNIT="lacme-renew.service")
    assert result["Result"] == "success", [e.get("MESSAGE") for e in master]
    assert dns_box.host_path("/srv/certs/wild/chain.pem").exists()
    assert sd_knot.all_txt() == {}, "the records are removed after the run"
    assert sd_knot.serial() == serial + 2, "one UPDATE to add, one to remove"
    entries = [e for e in dns_box.journal(after=cursor, _SYSTEMD_UNIT="lacme-dns.service")
               if not str(e.get("_COMM", "")).startswith("(")]
    assert entries and {int(e["_UID"]) for e in entries} <= set(DYNAMIC_UIDS)
    probes = {str(e.get("MESSAGE")) for e in entries if "LACME-PROBE" in str(e.get("MESSAGE"))}
    assert probes == {"LACME-PROBE file-unreadable", "LACME-PROBE credential-readable"}, probes



def test_missing_dns_config_is_one_line(dns_box: Box, sd_knot: Knot) -> None:
    """No lacme-dns.conf: the socket does not listen (the service could not
    get its credential), and the master's one line names the file."""
    conf = dns_box.host_path("/etc/lacme/lacme-dns.conf")
    saved = conf.read_text()
    conf.unlink()
    dns_box.systemctl("stop", "lacme-dns.service", "lacme-dns.socket")
    try:
        dns_box.systemctl("start", "lacme-dns.socket")  # its condition fails: not listening
        assert dns_box.show("lacme-dns.socket", "ActiveState")["ActiveState"] == "inactive"
        serial = sd_knot.serial()
        proc = dns_box.run(f"{VENV}/bin/lacme", "newOrder", "--force", check=False, timeout=120)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        lines = [line for line in proc.stderr.splitlines() if "lacme-dns" in line]
        assert len(lines) == 1, proc.stderr
        assert "[dns] connect /run/lacme/dns.socket: No such file or directory" in lines[0]
        assert "/etc/lacme/lacme-dns.conf exists" in lines[0]
        assert "Traceback" not in proc.stderr
        assert sd_knot.serial() == serial and sd_knot.all_txt() == {}
    finally:
        dns_box.write("/etc/lacme/lacme-dns.conf", saved, mode=0o600)
        dns_box.systemctl("reset-failed", "lacme-dns.service", "lacme-dns.socket", check=False)
        dns_box.systemctl("restart", "lacme-dns.socket", check=False)
    assert dns_box.show("lacme-dns.socket", "ActiveState")["ActiveState"] == "active"
