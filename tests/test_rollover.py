"""Account key rollover (RFC 8555 7.3.5) against a real Pebble, through the
real master, client and accountd (fork mode): accountd holds both keys, the
account URL stays, the old key is refused afterwards, and a run killed with
SIGKILL before or after the CA's answer leaves a state that a second run
completes or recognises.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.lacmeenv import TREE_ROOT, LacmeSetup, write_key
from tests.test_accountd_failures import rfc7638_thumbprint

pytestmark = pytest.mark.pebble

PROXY = Path(__file__).with_name("rollover_proxy.py")


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def key_line(stderr: str) -> str:
    (line,) = [x for x in stderr.splitlines() if "(JWK thumbprint)" in x]
    return line


@pytest.fixture
def registered(tmp_path, pebble) -> LacmeSetup:
    key = write_key(tmp_path / "old.key")
    s = LacmeSetup(root=tmp_path / "etc", pebble=pebble, account_key=key)
    s.write()
    done = s.run("account", "--register", "--tos-agreed", "mailto:roll@example.com")
    assert done.returncode == 0, done.stderr
    return s


def account_url(stderr: str) -> str:
    return key_line(stderr).split(" ", 2)[1].rstrip(":")


def use_key(s: LacmeSetup, key: Path) -> None:
    (s.root / "lacme-accountd.conf").write_text(f"privkey = file:{key}\n")


def test_rollover_keeps_the_account_and_retires_the_old_key(registered, tmp_path):
    s = registered
    before = s.run("account")
    assert before.returncode == 0, before.stderr
    url = account_url(before.stderr)
    new = write_key(tmp_path / "new.key", "p256")
    done = s.run("account", "--rollover", f"--new-privkey=file:{new}")
    assert done.returncode == 0, done.stderr
    assert error_lines(done.stderr) == []
    assert f"account {url}: key {rfc7638_thumbprint_any(new)} (JWK thumbprint)" in done.stderr
    assert f"set privkey = file:{new} in lacme-accountd.conf" in done.stderr
    assert json.loads(done.stdout)["status"] == "valid"
    # the old key is no account any more: one line
    old = s.run("account")
    assert old.returncode == 1
    assert len(error_lines(old.stderr)) == 1, old.stderr
    assert "accountDoesNotExist" in old.stderr
    # the new key is the same account, and orders with it
    use_key(s, new)
    after = s.run("account")
    assert after.returncode == 0, after.stderr
    assert account_url(after.stderr) == url
    s.add_section("www", ["rollover.example.com"])
    s.write_certs()
    order = s.run("newOrder")
    assert order.returncode == 0, order.stderr


def rfc7638_thumbprint_any(key: Path) -> str:
    """RFC 7638 thumbprint of an RSA or EC key file, computed here."""
    import base64
    import hashlib

    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    private = load_pem_private_key(key.read_bytes(), None)
    if not isinstance(private, ec.EllipticCurvePrivateKey):
        return rfc7638_thumbprint(key)
    numbers = private.public_key().public_numbers()

    def b64(n: int) -> str:
        return base64.urlsafe_b64encode(n.to_bytes(32, "big")).rstrip(b"=").decode()

    canonical = json.dumps({"crv": "P-256", "kty": "EC", "x": b64(numbers.x), "y": b64(numbers.y)},
                           separators=(",", ":"), sort_keys=True)
    return base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()).rstrip(b"=").decode()


@pytest.mark.parametrize("point", ["before", "after"])
def test_sigkill_during_rollover_then_a_second_run_recovers(registered, tmp_path, point):
    s = registered
    url = account_url(s.run("account").stderr)
    new = write_key(tmp_path / "new.key")
    real = f"/usr/bin/env PYTHONPATH={TREE_ROOT} {sys.executable} -m lacme.accountd"
    s.accountd_command = f"{sys.executable} {PROXY} {point} {real}"
    s.write()
    killed = s.run("account", "--rollover", f"--new-privkey=file:{new}")
    assert killed.returncode == -9, killed.stderr
    # one of the two keys is the account
    old_works = s.run("account").returncode == 0
    assert old_works == (point == "before")
    # the second run, with the normal accountd, completes or recognises the rollover
    s.accountd_command = "lacme-accountd"
    s.write()
    again = s.run("account", "--rollover", f"--new-privkey=file:{new}")
    assert again.returncode == 0, again.stderr
    assert ("was already rolled over" in again.stderr) == (point == "after")
    use_key(s, new)
    after = s.run("account")
    assert after.returncode == 0, after.stderr
    assert account_url(after.stderr) == url


def test_rollover_usage_errors(registered, tmp_path):
    s = registered
    done = s.run("account", "--rollover")
    assert done.returncode == 2
    assert error_lines(done.stderr) == [
        "error: account: --rollover needs --new-privkey=file:PATH or gpg:PATH"]
    done = s.run("account", "--rollover", "--register", "--new-privkey=file:/x")
    assert done.returncode == 2 and "goes alone" in done.stderr
    done = s.run("account", "--new-privkey=file:/x")
    assert done.returncode == 2 and "--new-privkey is the new key of --rollover" in done.stderr
    # the same key again: accountd refuses it
    done = s.run("account", "--rollover", f"--new-privkey=file:{s.account_key}")
    assert done.returncode == 1
    (line,) = error_lines(done.stderr)
    assert "the new key is the current account key" in line


def test_perl_accountd_cannot_roll_over(registered, tmp_path):
    s = registered
    s.accountd_command = "/usr/bin/lacme-accountd"
    s.write()
    new = write_key(tmp_path / "new.key")
    done = s.run("account", "--rollover", f"--new-privkey=file:{new}")
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    # Perl's own usage error names the option it lacks; lacme adds no line of its own
    assert "Unknown option: new-privkey" in done.stderr
    assert error_lines(done.stderr) == [], done.stderr
