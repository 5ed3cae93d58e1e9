"""The account's secrets in systemd mode, in the booted box: the External
Account Binding MAC key and a rollover's new key reach the socket-activated
lacme-accountd@ only as credentials (docs/systemd.md), against a Pebble that
requires External Account Binding.

Runs before test_systemd_e2e.py on the session's box and puts back every
file it changes.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.lacmeenv import write_key
from tests.pebble import Pebble, free_port, start_pebble
from tests.systemd.box import PREFIX, VENV, Box

pytestmark = [pytest.mark.systemd, pytest.mark.pebble]

KID = "box-kid"
MAC = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
DROPIN = "/etc/systemd/system/lacme-accountd@.service.d/60-account-test.conf"
KEPT = ("/etc/lacme/lacme.conf", "/etc/lacme/lacme-accountd.conf", "/etc/lacme/account.key")


@pytest.fixture(scope="module")
def eab_pebble(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pebble]:
    instance = start_pebble(tmp_path_factory.mktemp("sd-eab-pebble"),
                            env={"PEBBLE_VA_NOSLEEP": "1", "PEBBLE_AUTHZREUSE": "0"},
                            http_port=free_port(),
                            config={"externalAccountBindingRequired": True,
                                    "externalAccountMACKeys": {KID: MAC}})
    yield instance
    instance.stop()


@pytest.fixture(scope="module")
def accounts(box: Box, eab_pebble: Pebble) -> Iterator[Box]:
    saved = {p: box.host_path(p).read_bytes() if box.host_path(p).exists() else None for p in KEPT}
    box.write("/etc/lacme/pebble-tls-ca.pem", Path(eab_pebble.tls_ca_file).read_text())
    conf = box.host_path("/etc/lacme/lacme.conf").read_text()
    conf = re.sub(r"(?m)^server = .*$", f"server = {eab_pebble.directory_url}", conf)
    conf = re.sub(r"(?m)^#SSL_ca_file =.*$", "SSL_ca_file = /etc/lacme/pebble-tls-ca.pem", conf)
    box.write("/etc/lacme/lacme.conf", conf)
    write_key(box.host_path("/etc/lacme/account.key"), "p256")
    accountd_conf = box.host_path("/etc/lacme/lacme-accountd.conf")
    box.write("/etc/lacme/lacme-accountd.conf", accountd_conf.read_text() + f"eab-kid = {KID}\n")
    box.write("/etc/lacme/eab-hmac-key", MAC + "\n", mode=0o600)
    box.write(DROPIN, "[Service]\nLoadCredential=eab-hmac-key:/etc/lacme/eab-hmac-key\n")
    box.systemctl("daemon-reload")
    box.systemctl("start", "lacme-accountd.socket", "lacme-client.socket")
    try:
        yield box
    finally:
        for path, data in saved.items():
            if data is None:
                box.host_path(path).unlink(missing_ok=True)
            else:
                box.host_path(path).write_bytes(data)
        for path in (DROPIN, "/etc/lacme/eab-hmac-key", "/etc/lacme/new.key"):
            box.host_path(path).unlink(missing_ok=True)
        box.systemctl("daemon-reload")


def lacme(box: Box, *args: str) -> tuple[int, str, str]:
    proc = box.run(f"{VENV}/bin/lacme", *args, check=False, timeout=120)
    return proc.returncode, proc.stdout, proc.stderr


def test_eab_mac_key_as_a_credential_registers(accounts: Box) -> None:
    # the dynamic user cannot read the file: only its credential copy
    assert not (accounts.host_path("/etc/lacme/eab-hmac-key").stat().st_mode & 0o077)
    rc, out, err = lacme(accounts, "account", "--register", "--tos-agreed")
    assert rc == 0, err
    assert json.loads(out)["status"] == "valid"


def test_rollover_with_both_keys_as_credentials(accounts: Box) -> None:
    rc, _out, err = lacme(accounts, "account")
    assert rc == 0, err
    (line,) = [x for x in err.splitlines() if "(JWK thumbprint)" in x]
    url = line.split(" ", 2)[1].rstrip(":")
    write_key(accounts.host_path("/etc/lacme/new.key"), "p384")
    unit = accounts.host_path(f"{PREFIX}/lib/systemd/system/lacme-accountd@.service").read_text()
    (exec_start,) = re.findall(r"(?m)^ExecStart=(.*)$", unit)
    accounts.write(DROPIN, "[Service]\nLoadCredential=eab-hmac-key:/etc/lacme/eab-hmac-key\n"
                   "LoadCredential=new.key:/etc/lacme/new.key\nExecStart=\n"
                   f"ExecStart={exec_start} --new-privkey=file:${{CREDENTIALS_DIRECTORY}}/new.key\n")
    accounts.systemctl("daemon-reload")
    rc, _out, err = lacme(accounts, "account", "--rollover")
    assert rc == 0, err
    assert f"account {url} is rolled over" in err
    # the documented switch: the new key becomes the account.key credential
    accounts.host_path("/etc/lacme/account.key").rename(accounts.host_path("/etc/lacme/account.key.old"))
    accounts.host_path("/etc/lacme/new.key").rename(accounts.host_path("/etc/lacme/account.key"))
    accounts.write(DROPIN, "[Service]\nLoadCredential=eab-hmac-key:/etc/lacme/eab-hmac-key\n")
    accounts.systemctl("daemon-reload")
    rc, _out, err = lacme(accounts, "account")
    assert rc == 0, err
    assert f"account {url}:" in err
    accounts.host_path("/etc/lacme/account.key.old").unlink()
