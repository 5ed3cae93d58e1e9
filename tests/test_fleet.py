"""A fleet: several hosts share one account key through ``ssh -T`` to a
signer running a real OpenSSH server, each host in its own network
namespace (tests/fleet.py), against a real Pebble.

* three hosts renew at the same time, all as the same account (kid);
* the signer's forced command pins the origin and the key id, since neither
  crosses ssh;
* the ``[accountd] command`` ends at the destination (no remote word): lacme
  puts ``--`` before the options it appends;
* a refused key and a signer that is down are one line each (ssh's own),
  and the installed certificates stay as they were;
* Debian's Perl lacme-accountd 0.8.2 as the signer, and Debian's Perl lacme
  master against this accountd over the same ssh.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.fleet import SIGNER_USER, Fleet
from tests.lacmeenv import (
    LacmeSetup,
    debian_lacme,
    load_chain,
    public_dir,
    san_names,
    unique_name,
    write_key,
)
from tests.sysvenv import system_venv

pytestmark = [pytest.mark.pebble, pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]

PERL_ACCOUNTD = "/usr/bin/lacme-accountd"


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def failure_lines(stderr: str) -> list[str]:
    """What a --quiet run printed: the master's --quiet reaches the webserver
    (no "listening on" line), so only the failure is left."""
    return [x for x in stderr.splitlines() if x.strip()]


@pytest.fixture(scope="module")
def fleet(pebble):
    """Five hosts: 0 and 1 run this accountd on the signer, 2 Debian's, 3 is
    not authorized, 4 may roll the key over.  The account is registered once,
    from this machine."""
    venv = system_venv()
    instance = Fleet(root=public_dir())  # the signer's user opens files under it
    instance.setup(5)
    try:
        signer = pwd.getpwnam(SIGNER_USER)
        key = write_key(instance.home / "account.key")  # RSA: the Perl accountd has no ECDSA
        os.chown(key, signer.pw_uid, signer.pw_gid)
        register = LacmeSetup(root=instance.root / "register", pebble=pebble, account_key=key)
        register.write()
        done = register.run("account", "--register", "--tos-agreed")
        assert done.returncode == 0, done.stderr
        (line,) = [x for x in done.stderr.splitlines() if "(JWK thumbprint)" in x]
        instance.kid = line.split(" ", 2)[1].rstrip(":")  # type: ignore[attr-defined] # the fixture's finding
        origin = pebble.directory_url.rsplit("/", 1)[0]
        ours = instance.home / "lacme-accountd.conf"
        ours.write_text(f"privkey = file:{key}\norigin = {origin}\nkeyid = {instance.kid}\n")
        perl = instance.home / "perl-accountd.conf"
        perl.write_text(f"privkey = file:{key}\n")
        for path in (ours, perl):
            os.chown(path, signer.pw_uid, signer.pw_gid)
        for host in instance.hosts[:2]:
            instance.authorize(host, f"{venv}/lacme-accountd --stdio --quiet --config={ours}")
        instance.authorize(instance.hosts[2], f"{PERL_ACCOUNTD} --stdio --quiet --config={perl}")
        # the rollover runs on the signer: its forced command names the new key
        # (the words a host sends, its --new-privkey included, are ignored)
        new = write_key(instance.home / "new.key", "p256")
        os.chown(new, signer.pw_uid, signer.pw_gid)
        instance.authorize(instance.hosts[4], f"{venv}/lacme-accountd --stdio --quiet "
                           f"--config={ours} --new-privkey=file:{new}")
        yield instance
    finally:
        instance.teardown()
        shutil.rmtree(instance.root, ignore_errors=True)


def host_setup(fleet: Fleet, pebble, n: int, root: Path) -> tuple[LacmeSetup, dict[str, str]]:
    """Host ``n``: its names resolve to 127.0.0.N+2 for the VA, where its own
    webserver listens (the hosts share this machine's loopback)."""
    address = f"127.0.0.{n + 2}"
    s = LacmeSetup(root=root, pebble=pebble, account_key=Path("/nonexistent"),
                   accountd_command=fleet.hosts[n].ssh_command(),
                   listen=f"{address}:{pebble.http_port}")
    name = unique_name()
    pebble.add_a(name, address)
    section = s.add_section("www", [name])
    s.write()
    # the key and configuration are the signer's: nothing of accountd's here
    (s.root / "lacme-accountd.conf").unlink()
    conf = s.conf.read_text().replace(f"config = {s.root / 'lacme-accountd.conf'}\n", "")
    s.conf.write_text(conf)
    return s, section


def test_three_hosts_renew_at_once_as_one_account(fleet, pebble, tmp_path):
    hosts = [host_setup(fleet, pebble, n, tmp_path / f"h{n}") for n in range(3)]
    procs = [subprocess.Popen([*s.master_argv(), "newOrder"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=s.master_env(), cwd=s.root)
             for s, _ in hosts]
    outcomes = [p.communicate(timeout=180) for p in procs]
    for proc, (_out, err) in zip(procs, outcomes, strict=True):
        assert proc.returncode == 0, err
    for _s, section in hosts:
        leaf = load_chain(Path(section["certificate"]))[0]
        assert san_names(leaf) == {section["subjectAltName"].split(":", 1)[1]}
    # one account: the hosts of this accountd name its kid, the Perl one finds the same
    for s, _ in hosts:
        done = s.run("account")
        assert done.returncode == 0, done.stderr
        (line,) = [x for x in done.stderr.splitlines() if "(JWK thumbprint)" in x]
        assert line.split(" ", 2)[1].rstrip(":") == fleet.kid


def test_unauthorized_host_is_one_line_and_keeps_its_certificate(fleet, pebble, tmp_path):
    s, section = host_setup(fleet, pebble, 3, tmp_path / "h3")
    Path(section["certificate"]).write_bytes(b"old certificate\n")
    done = s.run("--quiet", "newOrder", "--force")
    assert done.returncode == 1
    lines = failure_lines(done.stderr)
    assert len(lines) == 1, done.stderr
    assert "Permission denied (publickey)" in lines[0]
    assert Path(section["certificate"]).read_bytes() == b"old certificate\n"


def test_signer_pins_origin_and_kid_whatever_the_host_sends(fleet, pebble, tmp_path, pebble_factory):
    # a host pointed at another CA: this accountd's forced configuration pins
    # Pebble's origin, so it refuses (the Perl signer would not)
    other = pebble_factory()
    s, section = host_setup(fleet, other, 0, tmp_path / "h0")
    done = s.run("--quiet", "newOrder")
    assert done.returncode == 1
    lines = failure_lines(done.stderr)
    # the signer says what it refused (through ssh), and exits with an error:
    # the master, seeing that, adds no line of its own
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: lacme-accountd: refused to sign (NOSIGN): ")
    assert f"is not on {pebble.directory_url.rsplit('/', 1)[0]}" in lines[0]
    assert not Path(section["certificate"]).exists()


def test_debian_master_against_this_accountd_over_ssh(fleet, pebble, tmp_path):
    perl = debian_lacme(pebble, f"{fleet.hosts[1].ssh_command()} lacme-accountd")
    done = perl.run()
    assert done.returncode == 0, done.stderr
    assert san_names(load_chain(perl.certificate)[0]) == {perl.name}
    shutil.rmtree(perl.root, ignore_errors=True)


def test_rollover_runs_on_the_signer(fleet, pebble, tmp_path):
    # next to last in this file: the account's key changes
    s, _ = host_setup(fleet, pebble, 4, tmp_path / "h4")
    done = s.run("account", "--rollover", "--new-privkey=file:/ignored/by/the/forced/command")
    assert done.returncode == 0, done.stderr
    assert f"account {fleet.kid} is rolled over" in done.stderr
    # the other hosts' signer entry still names the old key: refused by the CA
    other, _ = host_setup(fleet, pebble, 0, tmp_path / "h0")
    refused = other.run("--quiet", "account")
    assert refused.returncode == 1
    assert len(error_lines(refused.stderr)) == 1, refused.stderr
    # the signer switches its configuration to the new key: the fleet is the same account
    conf = fleet.home / "lacme-accountd.conf"
    conf.write_text(conf.read_text().replace("account.key", "new.key"))
    again = other.run("account")
    assert again.returncode == 0, again.stderr
    assert f"account {fleet.kid}:" in again.stderr


def test_signer_down_is_one_line_and_keeps_certificates(fleet, pebble, tmp_path):
    # last in this file: the signer stays down
    s, section = host_setup(fleet, pebble, 0, tmp_path / "h0")
    Path(section["certificate"]).write_bytes(b"old certificate\n")
    fleet.stop_sshd()
    done = s.run("--quiet", "newOrder", "--force")
    assert done.returncode == 1
    lines = failure_lines(done.stderr)
    assert lines == [f"ssh: connect to host {fleet.hosts[0].address} port 2222: Connection refused"], \
        done.stderr
    assert Path(section["certificate"]).read_bytes() == b"old certificate\n"
