"""lacme in systemd mode, end to end: Pebble on the host's loopback, the
installed units in the booted box, driven with systemctl as a user would.

The scenario runs in order (module-scoped state): a run before registering,
registration, the first renewal, a no-op run, revocation with the documented
systemd-run line, and a run without the account key.
"""

from __future__ import annotations

import hashlib
import re
import shlex
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest
from cryptography import x509
from cryptography.x509.verification import PolicyBuilder, Store

from tests.lacmeenv import write_key
from tests.pebble import Pebble, free_port, start_pebble
from tests.systemd.box import TREE_ROOT, VENV, Box

pytestmark = [pytest.mark.systemd, pytest.mark.pebble]

LOG = "/var/lib/lacme-e2e"
PROBE_SERVICE = "lacme-e2e-probe.service"
DYNAMIC_UIDS = range(61184, 65520)  # systemd's DynamicUser= range
SECTIONS = ("www", "mail-1")
ESCAPED = {"www": "www", "mail-1": "mail\\x2d1"}
DIRS = {"www": "/srv/certs/www", "mail-1": "/srv/certs/mail-1"}


@dataclass
class Scenario:
    box: Box
    pebble: Pebble
    names: dict[str, str]
    cursors: dict[str, str] = field(default_factory=dict)
    offsets: dict[str, int] = field(default_factory=dict)
    results: dict[str, dict[str, str]] = field(default_factory=dict)

    def renew(self, label: str) -> dict[str, str]:
        """systemctl start lacme-renew.service; remember where it began."""
        self.cursors[label] = self.box.cursor()
        self.offsets[label] = self.pebble.log_offset()
        self.box.systemctl("start", "lacme-renew.service", check=False)
        props = self.box.show("lacme-renew.service", "Result", "ExecMainStatus", "InvocationID")
        self.results[label] = props
        return props

    def master_entries(self, label: str) -> list[dict]:
        """The master's own journal lines (not systemd's) of run ``label``."""
        return self.box.wait_journal(after=self.cursors[label],
                                     _SYSTEMD_UNIT="lacme-renew.service",
                                     SYSLOG_IDENTIFIER="lacme")

    def cert_bytes(self) -> dict[str, bytes]:
        out = {}
        for name, d in DIRS.items():
            for f in ("cert.pem", "chain.pem"):
                p = self.box.host_path(f"{d}/{f}")
                if p.exists():
                    out[f"{name}/{f}"] = p.read_bytes()
        return out


# -- set-up ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def sd_pebble(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pebble]:
    """A Pebble of our own: its http-01 port is bound by the box's socket unit
    for the whole module, so it must not be shared with other tests."""
    instance = start_pebble(tmp_path_factory.mktemp("sd-pebble"),
                            env={"PEBBLE_VA_NOSLEEP": "1", "PEBBLE_AUTHZREUSE": "0"},
                            http_port=free_port())
    yield instance
    instance.stop()


def configure(box: Box, pebble: Pebble, tmp: Path) -> dict[str, str]:
    """Point the installed systemd-mode config at Pebble, as a user would."""
    box.write("/etc/lacme/pebble-tls-ca.pem", Path(pebble.tls_ca_file).read_text())
    box.write("/etc/lacme/pebble-root.pem", pebble.root_pem().decode())
    conf = box.host_path("/etc/lacme/lacme.conf").read_text()
    conf = re.sub(r"(?m)^server = .*$", f"server = {pebble.directory_url}", conf)
    conf = re.sub(r"(?m)^#SSL_ca_file =.*$", "SSL_ca_file = /etc/lacme/pebble-tls-ca.pem", conf)
    box.write("/etc/lacme/lacme.conf", conf)
    write_key(box.host_path("/etc/lacme/account.key"), "p256")
    tag = uuid.uuid4().hex[:8]
    names = {"www": f"www-{tag}.example.com", "mail-1": f"mail-{tag}.example.org"}
    certs = []
    for section in SECTIONS:
        key = box.host_path(f"/etc/lacme/keys/{section}.key")
        key.parent.mkdir(mode=0o700, exist_ok=True)
        write_key(key, "p256")
        box.host_path(DIRS[section]).mkdir(parents=True, exist_ok=True)
        certs += [f"[{section}]", f"certificate-key = /etc/lacme/keys/{section}.key",
                  f"certificate-chain = {DIRS[section]}/chain.pem",
                  f"subject = /CN={names[section]}", f"subjectAltName = DNS:{names[section]}",
                  "CAfile = /etc/lacme/pebble-root.pem"]
    certs.insert(certs.index("[mail-1]"), f"certificate = {DIRS['www']}/cert.pem")
    # The notify setting runs in the master's sandbox: prove it cannot write
    # outside the certificate directories but can write inside them.
    certs.insert(certs.index("[mail-1]"),
                 "notify = if touch /srv/escaped 2>/dev/null; then echo escaped; "
                 f"else echo confined; fi > {DIRS['www']}/sandbox.txt")
    box.write("/etc/lacme/lacme-certs.conf", "\n".join(certs) + "\n")
    # The webserver on Pebble's http-01 port: the documented TCP drop-in.
    box.write("/etc/systemd/system/lacme-webserver.socket.d/50-tcp.conf",
              f"[Socket]\nListenStream=127.0.0.1:{pebble.http_port}\n")
    # Notify drop-ins: one line per run of each unit, one shared reload.
    box.write(f"/etc/systemd/system/{PROBE_SERVICE}",
              f"[Service]\nExecStart=/bin/sleep infinity\n"
              f"ExecReload=/bin/sh -c 'echo reload >> {LOG}/reload.log'\n")
    for section in SECTIONS:
        box.write(f"/etc/systemd/system/lacme-notify@{ESCAPED[section]}.service.d/50-e2e.conf",
                  "[Unit]\nWants=lacme-reload@lacme\\x2de2e\\x2dprobe.service\n"
                  f"[Service]\nExecStart=/bin/sh -c 'echo \"%I\" >> {LOG}/notify.log'\n")
    # Probes: what the accountd and the client services can reach, run as
    # their own dynamic user in their own sandbox (ExecStartPre=).
    box.write("/etc/systemd/system/lacme-accountd@.service.d/50-probe.conf",
              "[Service]\nExecStartPre=-/bin/sh -c 'if cat /etc/lacme/account.key >/dev/null 2>&1; "
              "then echo LACME-PROBE key-file-readable; else echo LACME-PROBE key-file-unreadable; fi; "
              "test -r \"$CREDENTIALS_DIRECTORY/account.key\" && echo LACME-PROBE credential-readable'\n")
    box.write("/etc/systemd/system/lacme-client@.service.d/50-probe.conf",
              "[Service]\nExecStartPre=-/usr/bin/python3 -c 'import socket\\n"
              "try:\\n socket.socket(socket.AF_UNIX).connect(\"/run/lacme/accountd.socket\")\\n"
              " print(\"LACME-PROBE accountd-socket-reachable\")\\n"
              "except OSError as e:\\n print(\"LACME-PROBE accountd-socket-unreachable\", e)'\n")
    box.run("mkdir", "-p", LOG)
    box.systemctl("daemon-reload")  # also reruns lacme-generator on the new lacme-certs.conf
    box.systemctl("enable", "--now", "lacme-accountd.socket", "lacme-client.socket",
                  "lacme-webserver.socket")
    box.systemctl("stop", "lacme-webserver.service", "lacme-webserver.socket")
    box.systemctl("start", "lacme-webserver.socket", PROBE_SERVICE)
    return names


@pytest.fixture(scope="module")
def scenario(box: Box, sd_pebble: Pebble, tmp_path_factory: pytest.TempPathFactory) -> Scenario:
    names = configure(box, sd_pebble, tmp_path_factory.mktemp("sd-e2e"))
    return Scenario(box=box, pebble=sd_pebble, names=names)


def lacme(box: Box, *args: str) -> tuple[int, str]:
    proc = box.run(f"{VENV}/bin/lacme", *args, check=False, timeout=120)
    return proc.returncode, proc.stdout + proc.stderr


def log_lines(box: Box, name: str) -> list[str]:
    return box.run("cat", f"{LOG}/{name}", check=False).stdout.splitlines()


def load_chain(box: Box, path: str) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(box.host_path(path).read_bytes())


# -- the scenario, in order --------------------------------------------------------

def test_renew_before_registration_registers_nothing(scenario: Scenario) -> None:
    result = scenario.renew("unregistered")
    assert result["Result"] == "exit-code", result
    assert scenario.cert_bytes() == {}
    rc, out = lacme(scenario.box, "account")  # look-up only: still no account
    assert rc != 0, out


def test_register_account_through_the_sockets(scenario: Scenario) -> None:
    rc, out = lacme(scenario.box, "account", "--register", "--tos-agreed",
                    "mailto:hostmaster@example.com")
    assert rc == 0, out
    assert '"valid"' in out


def test_first_renewal_issues_every_certificate(scenario: Scenario) -> None:
    result = scenario.renew("first")
    assert result["Result"] == "success", (result, scenario.master_entries("first"))
    root = x509.load_pem_x509_certificate(scenario.pebble.root_pem())
    for section in SECTIONS:
        chain = load_chain(scenario.box, f"{DIRS[section]}/chain.pem")
        verifier = PolicyBuilder().store(Store([root])).build_server_verifier(
            x509.DNSName(scenario.names[section]))
        verifier.verify(chain[0], chain[1:])  # raises if it does not verify
    leaf = load_chain(scenario.box, f"{DIRS['www']}/cert.pem")
    assert len(leaf) == 1 and leaf[0] == load_chain(scenario.box, f"{DIRS['www']}/chain.pem")[0]


def test_master_logged_structured_installs(scenario: Scenario) -> None:
    installed = [e for e in scenario.master_entries("first")
                 if e.get("MESSAGE_ID") == "0b1f7e4c9d2a4f60a3c5e8d1b2a7c901"]
    assert {e.get("LACME_SECTION") for e in installed} == set(SECTIONS)


def program_entries(scenario: Scenario, label: str, pattern: str) -> list[dict]:
    """Entries of the unit's own processes, not of systemd's pre-exec child
    (named "(...)", root, e.g. "cannot configure loopback")."""
    entries = scenario.box.journal(after=scenario.cursors[label], _SYSTEMD_UNIT=pattern)
    return [e for e in entries if not str(e.get("_COMM", "")).startswith("(")]


def test_webserver_answered_through_the_socket(scenario: Scenario) -> None:
    entries = program_entries(scenario, "first", "lacme-webserver.service")
    assert entries, "lacme-webserver.service did not run during the renewal"
    assert {int(e["_UID"]) for e in entries} <= set(DYNAMIC_UIDS)


@pytest.mark.parametrize("pattern", ["lacme-accountd@*.service", "lacme-client@*.service"])
def test_components_ran_as_dynamic_users(scenario: Scenario, pattern: str) -> None:
    entries = program_entries(scenario, "first", pattern)
    assert entries, f"no journal entry from {pattern}"
    uids = {int(e["_UID"]) for e in entries}
    assert uids and uids <= set(DYNAMIC_UIDS), uids


def probe_lines(scenario: Scenario, pattern: str) -> list[str]:
    entries = scenario.box.journal(after=scenario.cursors["first"], _SYSTEMD_UNIT=pattern)
    return [e["MESSAGE"] for e in entries if str(e.get("MESSAGE", "")).startswith("LACME-PROBE")]


def test_accountd_cannot_read_key_file_only_its_credential(scenario: Scenario) -> None:
    lines = probe_lines(scenario, "lacme-accountd@*.service")
    assert "LACME-PROBE key-file-unreadable" in lines, lines
    assert "LACME-PROBE credential-readable" in lines, lines
    assert "LACME-PROBE key-file-readable" not in lines


def test_client_cannot_open_accountd_socket_by_path(scenario: Scenario) -> None:
    lines = probe_lines(scenario, "lacme-client@*.service")
    assert lines and all(l.startswith("LACME-PROBE accountd-socket-unreachable") for l in lines), lines


def test_notify_dropins_ran_once_per_renewed_certificate(scenario: Scenario) -> None:
    assert sorted(log_lines(scenario.box, "notify.log")) == sorted(SECTIONS)
    deadline = time.monotonic() + 10
    while not log_lines(scenario.box, "reload.log") and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)
    assert log_lines(scenario.box, "reload.log") == ["reload"]  # wanted by both: merged


def test_notify_setting_confined_to_certificate_dirs(scenario: Scenario) -> None:
    assert scenario.box.host_path(f"{DIRS['www']}/sandbox.txt").read_text().strip() == "confined"
    assert not scenario.box.host_path("/srv/escaped").exists()
    paths = scenario.box.show("lacme-renew.service", "ReadWritePaths")["ReadWritePaths"].split()
    assert {"-/srv/certs/www", "-/srv/certs/mail-1"} <= set(paths) or \
        {"/srv/certs/www", "/srv/certs/mail-1"} <= {p.lstrip("-") for p in paths}
    assert "/srv" not in {p.lstrip("-") for p in paths}


def test_second_run_with_fresh_certificates_contacts_nobody(scenario: Scenario) -> None:
    before = scenario.cert_bytes()
    result = scenario.renew("second")
    assert result["Result"] == "success", result
    assert scenario.pebble.requests_since(scenario.offsets["second"]) == {}
    for pattern in ("lacme-client@*.service", "lacme-accountd@*.service"):
        assert scenario.box.journal(after=scenario.cursors["second"], _SYSTEMD_UNIT=pattern) == []
    assert scenario.cert_bytes() == before
    assert sorted(log_lines(scenario.box, "notify.log")) == sorted(SECTIONS)  # no new line


def documented_revocation(path: str) -> list[str]:
    """The systemd-run line of docs/systemd.md, for ``path``."""
    doc = (TREE_ROOT / "docs/systemd.md").read_text()
    block = doc.split("## One-off revocation", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    argv = shlex.split(block.replace("\\\n", " "))
    assert argv[0] == "systemd-run" and argv[-2] == "revokeCert"
    return [*argv[:-3], f"{VENV}/bin/lacme", "revokeCert", path]


def test_documented_revocation_has_the_renew_sandbox() -> None:
    argv = documented_revocation("/x")
    props = {argv[i + 1] for i, a in enumerate(argv) if a == "-p"}
    unit = (TREE_ROOT / "units/lacme-renew.service").read_text()
    hardening = unit.split("ExecStart=", 1)[1].splitlines()[1:]
    wanted = {l for l in hardening if "=" in l and not l.startswith(("#", "ReadWritePaths="))}
    assert "StateDirectory=lacme" in unit.splitlines()
    assert props == wanted | {"StateDirectory=lacme"}


def test_revocation_through_systemd_run(scenario: Scenario) -> None:
    path = f"{DIRS['mail-1']}/chain.pem"
    serial = load_chain(scenario.box, path)[0].serial_number
    assert scenario.pebble.cert_status(serial) == "Valid"
    proc = scenario.box.run(*documented_revocation(path), check=False, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "renewal state" not in proc.stdout + proc.stderr  # recorded, not warned about
    assert scenario.pebble.cert_status(serial) == "Revoked"


def test_ordering_run_starts_the_webserver_before_any_fetch(scenario: Scenario) -> None:
    """[webserver] activate (the installed lacme.conf): a run that starts
    ordering connects to lacme-webserver.socket, so systemd starts the
    webserver at once.  Here the CA is unreachable, nothing is ever fetched,
    and the webserver must still have been started by the run."""
    box = scenario.box
    assert "activate = /run/lacme-www.socket" in box.host_path("/etc/lacme/lacme.conf").read_text()
    conf = re.sub(r"(?m)^server = .*$", "server = https://127.0.0.1:1/dir",
                  box.host_path("/etc/lacme/lacme.conf").read_text())
    box.write("/etc/lacme/unreachable.conf", conf)
    box.systemctl("stop", "lacme-webserver.service")
    cursor = box.cursor()
    rc, out = lacme(box, "--config=/etc/lacme/unreachable.conf", "newOrder", "--force", "www")
    assert rc != 0 and "127.0.0.1:1" in out, out
    started = box.wait_journal(after=cursor, UNIT="lacme-webserver.service",
                               MESSAGE_ID="39f53479d3a045ac8e11786248231fbf")  # unit started
    assert started, "the run did not start lacme-webserver.service"
    box.run("rm", "/etc/lacme/unreachable.conf")


def test_missing_account_key_fails_with_one_clear_line(scenario: Scenario) -> None:
    box = scenario.box
    box.host_path("/etc/lacme/account.key").rename(box.host_path("/etc/lacme/account.key.away"))
    certs = box.host_path("/etc/lacme/lacme-certs.conf")
    certs.write_text("min-days = -1\n" + certs.read_text())  # every section is due
    box.systemctl("daemon-reload")
    before = {k: hashlib.sha256(v).hexdigest() for k, v in scenario.cert_bytes().items()}
    result = scenario.renew("keyless")
    assert result["Result"] == "exit-code", result
    entries = scenario.master_entries("keyless")
    errors = [e for e in entries if int(e.get("PRIORITY", 6)) <= 3]
    assert len(errors) == 1, [(e.get("PRIORITY"), e.get("MESSAGE")) for e in entries]
    assert "accountd" in errors[0]["MESSAGE"], errors[0]["MESSAGE"]
    assert {k: hashlib.sha256(v).hexdigest() for k, v in scenario.cert_bytes().items()} == before
