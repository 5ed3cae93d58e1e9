"""An accountd failure is one line, printed once, through the real master
(fork mode) against a real Pebble: accountd that cannot start, a transport
that ends before the greeting or while signing, a request accountd refuses,
and a failed account request whose error arrives with the channel still
open.  Before, the client printed the line on the stderr it shares with the
master and the master printed it again, or a "control channel: closed by the
master" / "Broken pipe" line came first.

Also: an ``ssh`` accountd command that ends at the destination gets ``--``
before the options the master appends (OpenSSH reads options after the
destination too), checked against the real OpenSSH option parser
(``ssh -G`` parses the command line and prints the configuration without
connecting).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from lacme.config.remote import option_separator
from tests.lacmeenv import LacmeSetup, write_key

pytestmark = pytest.mark.pebble


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


@pytest.fixture
def setup(tmp_path, pebble) -> LacmeSetup:
    key = write_key(tmp_path / "account.key")
    s = LacmeSetup(root=tmp_path / "etc", pebble=pebble, account_key=key)
    s.add_section("www", ["failures.example.com"])
    s.write()
    return s


def test_accountd_that_cannot_read_its_key_is_one_line(setup, tmp_path):
    (setup.root / "lacme-accountd.conf").write_text(f"privkey = file:{tmp_path}/missing.key\n")
    done = setup.run("account", "--register", "--tos-agreed")
    assert done.returncode == 1
    lines = error_lines(done.stderr)
    assert len(lines) == 1, done.stderr
    assert "missing.key" in lines[0]  # accountd's own line, which says why
    assert "before the greeting" not in done.stderr
    assert "Traceback" not in done.stderr


def test_transport_gone_before_the_greeting_is_one_line(setup):
    # a command that exits at once and silently: nobody else said why
    setup.accountd_command = "/bin/true"
    setup.write()
    done = setup.run("account", "--register", "--tos-agreed")
    assert done.returncode == 1
    assert error_lines(done.stderr) == [
        "error: lacme-accountd: connection closed before the greeting"], done.stderr


def test_refused_request_is_one_line_and_no_control_channel_noise(setup):
    # accountd pinned to another origin refuses the first request
    (setup.root / "lacme-accountd.conf").write_text(
        f"privkey = file:{setup.account_key}\norigin = https://ca.invalid\n")
    done = setup.run("account", "--register", "--tos-agreed")
    assert done.returncode == 1
    lines = error_lines(done.stderr)
    # accountd's line, which says what it refused and why; nothing from the master
    assert lines == ["error: lacme-accountd: refused to sign (NOSIGN): scope: origin "
                     f"{setup.pebble.directory_url.rsplit('/', 1)[0]} is not on "
                     "https://ca.invalid, the configured origin"], done.stderr
    assert "control channel" not in done.stderr and "Broken pipe" not in done.stderr


def test_refused_order_is_one_line_for_every_section(setup):
    # three sections ordered in one run: accountd refuses the first request,
    # exits, and the master does not add a line per section
    for name in ("two", "three"):
        setup.add_section(name, [f"{name}.failures.example.com"])
    setup.write()
    (setup.root / "lacme-accountd.conf").write_text(
        f"privkey = file:{setup.account_key}\norigin = https://ca.invalid\n")
    done = setup.run("newOrder")
    assert done.returncode == 1
    lines = error_lines(done.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: lacme-accountd: refused to sign"), \
        done.stderr
    assert "Traceback" not in done.stderr
    for section in setup.sections.values():
        assert not Path(section["certificate"]).exists()


def test_failed_account_request_has_only_the_cas_line(setup):
    # no account for this key yet: the lookup without --register fails at the CA
    for _ in range(4):  # the spurious first line came in 1 run of 2 to 1 of 4
        done = setup.run("account", "--deactivate")
        assert done.returncode == 1
        lines = error_lines(done.stderr)
        assert len(lines) == 1, done.stderr
        assert "control channel" not in done.stderr and "Broken pipe" not in done.stderr


def test_account_with_keyid_deactivate_has_no_spurious_line(setup, pebble):
    done = setup.run("account", "--register", "--tos-agreed")
    assert done.returncode == 0, done.stderr
    (line,) = [x for x in done.stderr.splitlines() if "(JWK thumbprint)" in x]
    kid = line.split(" ", 2)[1].rstrip(":")
    assert "/my-account/" in kid
    conf = setup.root / "lacme-accountd.conf"
    conf.write_text(conf.read_text() + f"keyid = {kid}\n")
    done = setup.run("account", "--deactivate")
    assert "control channel" not in done.stderr, done.stderr
    assert done.returncode == 0, done.stderr
    done = setup.run("account")  # deactivated: the CA refuses, one line
    assert done.returncode == 1
    assert len(error_lines(done.stderr)) == 1, done.stderr
    assert "control channel" not in done.stderr


# -- ssh: the option separator ------------------------------------------------

@pytest.mark.parametrize(("command", "separator"), [
    (["ssh", "-T", "signer@host"], ("--",)),
    (["ssh", "-T", "-p", "2222", "-o", "BatchMode=yes", "signer@host"], ("--",)),
    (["ssh", "-p2222", "signer@host", "-o", "BatchMode=yes"], ("--",)),
    (["/usr/bin/ssh", "-T", "-i", "/k", "host"], ("--",)),
    (["ssh", "-T", "signer@host", "lacme-accountd"], ()),
    (["ssh", "host", "-v", "lacme-accountd", "--quiet"], ()),
    (["ssh", "host", "--", "lacme-accountd"], ()),
    (["lacme-accountd"], ()),
    (["sudo", "-u", "x", "lacme-accountd"], ()),
    (["ip", "netns", "exec", "ns1", "ssh", "-T", "signer@host"], ("--",)),
    (["sudo", "-u", "x", "/usr/bin/ssh", "host", "lacme-accountd"], ()),
])
def test_option_separator(command, separator):
    assert option_separator(command) == separator


@pytest.mark.parametrize("command", [
    ["ssh", "-T", "signer@host"],
    ["ssh", "-T", "-p", "2222", "-o", "BatchMode=yes", "signer@host"],
    ["ssh", "-p2222", "signer@host", "-o", "BatchMode=yes"],
    ["ssh", "-T", "signer@host", "lacme-accountd"],
    ["ssh", "-T", "signer@host", "/usr/bin/lacme-accountd", "--quiet"],
])
def test_appended_options_pass_openssh_parser(command, tmp_path):
    ssh = shutil.which("ssh")
    assert ssh, "OpenSSH's client is a test dependency (openssh-client)"
    appended = [*command[1:], *option_separator(command), "--stdio",
                f"--config={tmp_path}/lacme-accountd.conf", "--quiet"]
    parsed = subprocess.run([ssh, "-G", "-F", "/dev/null", *appended], capture_output=True,
                            text=True, timeout=10)
    assert parsed.returncode == 0, parsed.stderr
    assert "hostname host" in parsed.stdout
    # the same without the separator is what failed before, when no remote word is given
    if option_separator(command):
        bare = subprocess.run([ssh, "-G", "-F", "/dev/null", *command[1:], "--stdio"],
                              capture_output=True, text=True, timeout=10)
        assert bare.returncode != 0 and "usage" in bare.stderr


def test_ssh_that_cannot_connect_is_its_own_line(setup):
    # the manual's fleet form without a remote word, to a port where nothing
    # listens: ssh parses the command line (no usage text) and says why it failed
    setup.accountd_command = "ssh -T -F /dev/null -o BatchMode=yes -p 1 signer@127.0.0.1"
    setup.write()
    done = setup.run("account", "--register", "--tos-agreed")
    assert done.returncode == 1
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines == ["ssh: connect to host 127.0.0.1 port 1: Connection refused"], done.stderr


# -- which key and kid an account run used (issue 14 item 3) --------------------

def rfc7638_thumbprint(key_path: Path) -> str:
    """The RFC 7638 thumbprint of an RSA key, computed here from the key file."""
    import base64
    import hashlib

    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    numbers = load_pem_private_key(key_path.read_bytes(), None).public_key().public_numbers()

    def b64(n: int) -> str:
        raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    canonical = json.dumps({"e": b64(numbers.e), "kty": "RSA", "n": b64(numbers.n)},
                           separators=(",", ":"), sort_keys=True)
    return base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()).rstrip(b"=").decode()


def test_account_says_which_key_and_kid(setup):
    done = setup.run("account", "--register", "--tos-agreed")
    assert done.returncode == 0, done.stderr
    thumb = rfc7638_thumbprint(setup.account_key)
    line = [x for x in done.stderr.splitlines() if "(JWK thumbprint)" in x]
    assert len(line) == 1, done.stderr
    assert f"key {thumb} (JWK thumbprint), kid none" in line[0]
    location = line[0].split(" ", 2)[1].rstrip(":")
    assert location.startswith("https://127.0.0.1:") and "/my-account/" in location
    conf = setup.root / "lacme-accountd.conf"
    conf.write_text(conf.read_text() + f"keyid = {location}\n")
    done = setup.run("account")
    assert done.returncode == 0, done.stderr
    assert f"account {location}: key {thumb} (JWK thumbprint), kid {location}" in done.stderr


@pytest.mark.parametrize("mode", [0o777, 0o1777, 0o770])
def test_master_refuses_an_accountd_socket_others_could_replace(setup, tmp_path, mode):
    # the rule accountd binds by (lacme.core.sockdir), applied by the master
    # before it connects: one line naming the setting, the socket and the directory
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(mode)
    path = shared / "S.lacme"
    done = setup.run("account", socket=str(path))
    assert done.returncode == 1
    assert error_lines(done.stderr) == [
        f"error: [client] socket {path}: {shared}: insecure permissions (writable by group or others)"
    ], done.stderr
