"""Fork mode as root with a real privilege drop: the client and the
webserver run as unprivileged users that the test creates, and say so
themselves (a wrapper records ``id`` after the drop, before exec)."""

from __future__ import annotations

import grp
import os
import pwd
import subprocess
from pathlib import Path

import pytest

from tests.lacmeenv import LacmeSetup, load_chain, public_dir, san_names, unique_name, write_key
from tests.sysvenv import system_venv

pytestmark = [pytest.mark.pebble, pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]

USERS = ("lacmet-client", "lacmet-www")
GROUP = "lacmet"


@pytest.fixture(scope="module")
def users():
    try:
        grp.getgrnam(GROUP)
    except KeyError:
        subprocess.run(["groupadd", "--system", GROUP], check=True)
    for user in USERS:
        try:
            pwd.getpwnam(user)
        except KeyError:
            subprocess.run(["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent",
                            "--shell", "/usr/sbin/nologin", "--gid", GROUP, user], check=True)
    return {u: pwd.getpwnam(u).pw_uid for u in USERS}, grp.getgrnam(GROUP).gr_gid


@pytest.fixture(scope="module")
def venv_bin():
    return system_venv()


def wrapper(pub: Path, name: str, target: Path) -> Path:
    out = pub / "out"
    out.mkdir(exist_ok=True)
    out.chmod(0o1777)
    script = pub / f"{name}-wrapper"
    script.write_text(f"#!/bin/sh\nid -u > {out}/{name}.uid\nid -G > {out}/{name}.groups\n"
                      f"exec {target} \"$@\"\n")
    script.chmod(0o755)
    return script


def test_fork_mode_drops_client_and_webserver_privileges(pebble, users, venv_bin):
    uids, gid = users
    pub = public_dir()
    key = write_key(pub / "account.key")
    s = LacmeSetup(root=pub / "etc", pebble=pebble, account_key=key,
                   client_user="lacmet-client", client_group=GROUP,
                   www_user="lacmet-www", www_group=GROUP,
                   client_command=str(wrapper(pub, "client", venv_bin / "lacme-client")),
                   webserver_command=str(wrapper(pub, "www", venv_bin / "lacme-webserver")),
                   accountd_command=str(venv_bin / "lacme-accountd"))
    name = unique_name()
    section = s.add_section("www", [name])
    s.write()
    (pub / "etc").chmod(0o755)
    for f in (pub / "etc").iterdir():
        if f.suffix == ".pem":
            f.chmod(0o644)
    done = s.run("account", "--register", "--tos-agreed")
    assert done.returncode == 0, done.stderr
    done = s.run("newOrder")
    assert done.returncode == 0, done.stderr
    assert san_names(load_chain(Path(section["certificate"]))[0]) == {name}
    out = pub / "out"
    assert int((out / "client.uid").read_text()) == uids["lacmet-client"]
    assert int((out / "www.uid").read_text()) == uids["lacmet-www"]
    assert (out / "client.groups").read_text().split() == [str(gid)]
    assert (out / "www.groups").read_text().split() == [str(gid)]


def test_unknown_user_is_a_clear_error(pebble, tmp_path, users):
    key = write_key(tmp_path / "account.key")
    s = LacmeSetup(root=tmp_path / "etc", pebble=pebble, account_key=key,
                   client_user="no-such-user-lacme")
    s.write()
    done = s.run("account")
    assert done.returncode == 1
    assert "[client] user" in done.stderr and "no-such-user-lacme" in done.stderr
