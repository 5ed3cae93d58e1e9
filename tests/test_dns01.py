"""dns-01 end to end: lacme, lacme-dns, a real Knot DNS and a real Pebble 2.10.

Pebble's VA asks Knot (``-dnsserver``) for ``_acme-challenge`` TXT records;
lacme-dns writes them with TSIG-signed RFC 2136 UPDATEs that Knot's ACL
allows only for TXT records at the challenge owners.  Each test checks
the certificate, the records left in the zone (none) and the master's one
line when something is wrong.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.knot import KEY_NAME, SESSION_ZONES, Knot, name, start_knot
from tests.lacmeenv import LacmeSetup, load_chain, public_dir, san_names, write_key
from tests.pebble import PEBBLE_SID, Pebble, start_pebble

pytestmark = [pytest.mark.pebble,
              pytest.mark.skipif(not os.path.exists(PEBBLE_SID), reason="needs Pebble 2.10")]

ENV = {"PEBBLE_VA_NOSLEEP": "1", "PEBBLE_AUTHZREUSE": "0"}


@pytest.fixture(scope="module")
def knot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Knot]:
    instance = start_knot(tmp_path_factory.mktemp("knot"), SESSION_ZONES)
    yield instance
    instance.stop()


@pytest.fixture(scope="module")
def dns_pebble(tmp_path_factory: pytest.TempPathFactory, knot: Knot) -> Iterator[Pebble]:
    instance = start_pebble(tmp_path_factory.mktemp("pebble-dns"), env=ENV, binary=PEBBLE_SID,
                            dns_server=knot.address)
    yield instance
    instance.stop()


@pytest.fixture(scope="module")
def account_key(dns_pebble: Pebble) -> Path:
    """An account key registered once with the module's Pebble."""
    root = public_dir()
    key = write_key(root / "account.key", "p256")
    setup = LacmeSetup(root=root, pebble=dns_pebble, account_key=key)
    setup.write()
    done = setup.run("account", "--register", "--tos-agreed")
    assert done.returncode == 0, done.stderr
    return key


def dns_conf(knot: Knot, *, secret: str | None = None, key_name: str = KEY_NAME,
             zone: str = "example.test", server: str | None = None, timeout: float = 10,
             check: str | None = None) -> str:
    return "\n".join([
        f"timeout = {timeout}",
        f"[{zone}]",
        f"server = {server or knot.address}",
        f"key-name = {key_name}",
        f"key-secret = {secret or knot.secret}",
        f"check = {check or knot.address}", ""])


def make_setup(dns_pebble: Pebble, knot: Knot, account_key: Path,
               conf: str | None = None) -> LacmeSetup:
    root = public_dir()
    setup = LacmeSetup(root=root, pebble=dns_pebble, account_key=account_key)
    setup.write()
    write_dns(setup, conf if conf is not None else dns_conf(knot))
    return setup


def write_dns(setup: LacmeSetup, conf: str) -> None:
    (setup.root / "lacme-dns.conf").write_text(conf)
    (setup.root / "lacme-dns.conf").chmod(0o600)
    text = setup.conf.read_text().split("[dns]")[0]
    setup.conf.write_text(text + f"[dns]\nuser =\ngroup =\nconfig = {setup.root / 'lacme-dns.conf'}\n")


def issue(setup: LacmeSetup, *sections: str) -> tuple[int, str]:
    setup.write_certs()
    done = setup.run("newOrder", *sections)
    return done.returncode, done.stderr


def test_wildcard_and_apex_issued_over_dns01(dns_pebble: Pebble, knot: Knot, account_key: Path) -> None:
    setup = make_setup(dns_pebble, knot, account_key)
    setup.add_section("wild", ["example.test", "*.example.test"], challenge="dns-01")
    before = knot.serial()
    rc, err = issue(setup)
    assert rc == 0, err
    assert san_names(load_chain(setup.root / "wild.crt")[0]) == {"example.test", "*.example.test"}
    assert knot.all_txt() == {}, "the challenge records are removed after the run"
    assert "listening on" not in err, "a run proven over DNS alone starts no webserver"
    # One UPDATE adds both values (one name: apex and wildcard share it), one removes them.
    assert knot.serial() == before + 2


def test_wildcard_defaults_to_dns01(dns_pebble: Pebble, knot: Knot, account_key: Path) -> None:
    setup = make_setup(dns_pebble, knot, account_key)
    setup.add_section("wwild", ["*.www.example.test"])
    rc, err = issue(setup)
    assert rc == 0, err
    assert san_names(load_chain(setup.root / "wwild.crt")[0]) == {"*.www.example.test"}
    assert knot.all_txt() == {}


def test_twenty_certificates_share_one_update(dns_pebble: Pebble, knot: Knot, account_key: Path) -> None:
    setup = make_setup(dns_pebble, knot, account_key)
    for i in range(1, 21):
        setup.add_section(f"h{i:02d}", [name(f"h{i:02d}")], challenge="dns-01", key_kind="p256")
    before = knot.serial()
    rc, err = issue(setup)
    assert rc == 0, err
    for i in range(1, 21):
        assert (setup.root / f"h{i:02d}.crt").exists()
    assert knot.all_txt() == {}
    assert knot.serial() == before + 2, "one UPDATE adds the 20 records, one removes them"


@pytest.mark.parametrize("case", ["secret", "key-name", "zone", "server-down", "never-served"])
def test_bad_dns_setup_one_line_no_record(dns_pebble: Pebble, knot: Knot, account_key: Path, case: str,
                                          tmp_path: Path) -> None:
    conf = {
        "secret": dns_conf(knot, secret="c2VjcmV0IHRoYXQgaXMgd3Jvbmcgc2VjcmV0IQ=="),
        "key-name": dns_conf(knot, key_name="other-key"),
        "zone": dns_conf(knot, zone="missing.test"),
        "server-down": dns_conf(knot, server="127.0.0.1:1"),
        "never-served": dns_conf(knot, timeout=1, check="127.0.0.1:1"),
    }[case]
    expected = {
        "secret": "BADSIG", "key-name": "BADKEY", "zone": "no zone configured for",
        "server-down": "connection refused", "never-served": "not served by 127.0.0.1:1",
    }[case]
    setup = make_setup(dns_pebble, knot, account_key, conf)
    setup.add_section("bad", [name("www")], challenge="dns-01")
    before = knot.serial()
    rc, err = issue(setup)
    assert rc == 1, err
    lines = [line for line in err.splitlines() if expected in line]
    assert len(lines) == 1, err
    assert not (setup.root / "bad.crt").exists()
    assert knot.all_txt() == {}
    if case != "never-served":
        assert knot.serial() == before, "nothing was written"


def test_zone_not_served_is_notauth(dns_pebble: Pebble, knot: Knot, account_key: Path) -> None:
    """A zone lacme-dns.conf names but the server does not serve: NOTAUTH, one line."""
    conf = dns_conf(knot, zone="test")  # Knot serves example.test, not test
    setup = make_setup(dns_pebble, knot, account_key, conf)
    setup.add_section("notauth", [name("www")], challenge="dns-01")
    rc, err = issue(setup)
    assert rc == 1, err
    assert len([line for line in err.splitlines() if "NOTAUTH" in line]) == 1, err
    assert knot.all_txt() == {}


def test_master_refuses_what_a_compromised_client_asks(dns_pebble: Pebble, knot: Knot,
                                                       account_key: Path) -> None:
    """Only _acme-challenge TXT records of the names being ordered, with a digest's shape."""
    import json
    import sys

    from tests.lacmeenv import TREE_ROOT

    setup = make_setup(dns_pebble, knot, account_key)
    setup.client_command = f"{sys.executable} {TREE_ROOT / 'tests' / 'dns_evil_client.py'} {TREE_ROOT}"
    setup.write()
    write_dns(setup, dns_conf(knot))
    setup.add_section("evil", [name("www")], challenge="dns-01")
    before = knot.serial()
    rc, err = issue(setup)
    assert rc == 1, err
    line = next(line for line in err.splitlines() if "[evil]" in line and "foreign" in line)
    answers = json.loads(line[line.index("{"):])
    assert answers["foreign"]["ok"] is False
    assert "not a name of the certificates being ordered" in answers["foreign"]["message"]
    assert answers["value"]["ok"] is False and "digest" in answers["value"]["message"]
    assert answers["label"]["ok"] is False and "_acme-challenge" in answers["label"]["message"]
    # Nothing the client asks for outlives the run: no dns-persist-01 record
    # (an authorization of any account), no challenge record kept.
    assert answers["persist"]["ok"] is False, answers["persist"]
    assert "not a dns-01 challenge record name" in answers["persist"]["message"]
    assert answers["kept"]["ok"] is True, "asked as persistent, written as a challenge record"
    assert answers["allowed"]["ok"] is True, answers["allowed"]
    assert knot.all_txt() == {}
    assert knot.serial() == before + 4, "only the two challenge batches were written, then removed"


def test_lacme_dns_checks_the_rule_again(knot: Knot, tmp_path: Path) -> None:
    """lacme-dns refuses a name the master did not allow, whatever the master says."""
    import json
    import socket
    import subprocess
    import sys

    from tests.lacmeenv import TREE_ROOT

    conf = tmp_path / "lacme-dns.conf"
    conf.write_text(dns_conf(knot))
    ours, theirs = socket.socketpair()
    env = {**os.environ, "LISTEN_FDS": "1", "LISTEN_FDNAMES": "dns", "PYTHONPATH": str(TREE_ROOT),
           "TEST_FD": str(theirs.fileno())}
    # The sd_listen_fds protocol, as the master sets it up: the connection as fd 3.
    code = ("import os, sys; os.dup2(int(os.environ.pop('TEST_FD')), 3); "
            "os.environ['LISTEN_PID'] = str(os.getpid()); from lacme.dns.main import main; "
            "raise SystemExit(main(sys.argv[1:]))")
    child = subprocess.Popen([sys.executable, "-c", code, f"--config={conf}", "--quiet"],
                             env=env, pass_fds=(theirs.fileno(),))
    theirs.close()
    rfile = ours.makefile("rb")

    def update(add: list[dict], persistent: bool = False) -> dict:
        ours.sendall(json.dumps({"type": "update", "id": 1, "add": add, "delete": [],
                                 "wait": True, "persistent": persistent}).encode() + b"\n")
        return json.loads(rfile.readline())

    ours.sendall(b'{"type": "allow", "names": ["www.example.test"]}\n')
    digest = "A" * 42 + "E"
    before = knot.serial()
    refused = update([{"name": "_acme-challenge.h07.example.test", "value": digest}])
    assert refused["ok"] is False and "not a name of the certificates" in refused["message"]
    # A record kept after the connection is a dns-persist-01 one, never a
    # challenge; a challenge batch holds no dns-persist-01 record.
    kept = update([{"name": "_acme-challenge.www.example.test", "value": digest}], persistent=True)
    assert kept["ok"] is False and "not a dns-persist-01 record name" in kept["message"]
    persist = update([{"name": "_validation-persist.www.example.test",
                       "value": "evil.test; accounturi=https://evil.test/acct/1"}])
    assert persist["ok"] is False and "not a dns-01 challenge record name" in persist["message"]
    assert knot.serial() == before, "nothing refused was written"
    accepted = update([{"name": "_acme-challenge.www.example.test", "value": digest}])
    assert accepted["ok"] is True, accepted
    assert knot.txt("_acme-challenge.www.example.test") == {digest}
    rfile.close()
    ours.close()  # the master went away: lacme-dns removes what it wrote
    assert child.wait(timeout=20) == 0
    assert knot.all_txt() == {}
    assert knot.serial() == before + 2


def start_master(setup: LacmeSetup) -> subprocess.Popen[str]:
    import subprocess
    import sys

    from tests.lacmeenv import TREE_ROOT

    setup.write_certs()
    return subprocess.Popen([sys.executable, "-m", "lacme.master", f"--config={setup.conf}",
                             "newOrder"], env={**os.environ, "PYTHONPATH": str(TREE_ROOT)},
                            cwd=str(setup.root), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def wait_for_record(knot: Knot, owner: str, process: subprocess.Popen[str]) -> None:
    import time

    deadline = time.monotonic() + 30
    while not knot.txt(owner):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the record was never written"
        time.sleep(0.05)


def test_sigterm_removes_the_records(dns_pebble: Pebble, knot: Knot, account_key: Path) -> None:
    import signal

    # The record is written but never seen on the check server: the run waits.
    setup = make_setup(dns_pebble, knot, account_key, dns_conf(knot, timeout=60, check="127.0.0.1:1"))
    setup.add_section("term", [name("www")], challenge="dns-01")
    process = start_master(setup)
    wait_for_record(knot, "_acme-challenge.www.example.test", process)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=30)
    assert process.returncode != 0
    assert knot.all_txt() == {}, err
    assert not (setup.root / "term.crt").exists()


def test_next_run_removes_what_a_killed_run_left(dns_pebble: Pebble, knot: Knot,
                                                 account_key: Path) -> None:
    """SIGKILL of every process of the run: the record stays; the next run removes it first."""
    import signal

    setup = make_setup(dns_pebble, knot, account_key, dns_conf(knot, timeout=60, check="127.0.0.1:1"))
    setup.add_section("kill", [name("www")], challenge="dns-01")
    process = start_master(setup)
    wait_for_record(knot, "_acme-challenge.www.example.test", process)
    os.killpg(process.pid, signal.SIGKILL)  # master, client, lacme-dns: nobody cleans up
    process.communicate(timeout=10)
    left = knot.all_txt()
    assert set(left) == {"_acme-challenge.www.example.test"}
    write_dns(setup, dns_conf(knot))
    rc, err = issue(setup)
    assert rc == 0, err
    assert "left by a killed run" in err
    assert knot.all_txt() == {}


HOOK = """#!/bin/sh
# A provider hook: PATH add|del FQDN VALUE, its secret in a file of its own.
set -e
. {env}
case "$1" in
    add) op="update add $2. 60 TXT \\"$3\\"" ;;
    del) op="update delete $2. TXT \\"$3\\"" ;;
    *) echo "unknown action $1" >&2; exit 2 ;;
esac
printf 'server 127.0.0.1 %s\\nzone example.test.\\nkey hmac-sha256:%s %s\\n%s\\nsend\\n' \\
    "$PORT" "$KEY_NAME" "$SECRET" "$op" | knsupdate
"""


def hook_setup(dns_pebble: Pebble, knot: Knot, account_key: Path, secret: str) -> LacmeSetup:
    setup = make_setup(dns_pebble, knot, account_key)
    env = setup.root / "hook.env"
    env.write_text(f"PORT={knot.port}\nKEY_NAME={KEY_NAME}\nSECRET={secret}\n")
    env.chmod(0o600)
    hook = setup.root / "hook.sh"
    hook.write_text(HOOK.format(env=env))
    hook.chmod(0o700)
    write_dns(setup, f"timeout = 10\n[example.test]\ncommand = {hook}\ncheck = {knot.address}\n")
    return setup


def test_hook_backend_issues(dns_pebble: Pebble, knot: Knot, account_key: Path) -> None:
    setup = hook_setup(dns_pebble, knot, account_key, knot.secret)
    setup.add_section("hooked", [name("www"), "*." + name("www")])
    rc, err = issue(setup)
    assert rc == 0, err
    assert san_names(load_chain(setup.root / "hooked.crt")[0]) == {name("www"), "*." + name("www")}
    assert "listening on" in err, "the apex is proven over http-01: the webserver ran"
    assert knot.all_txt() == {}


def test_failing_hook_is_one_line(dns_pebble: Pebble, knot: Knot, account_key: Path) -> None:
    setup = hook_setup(dns_pebble, knot, account_key, knot.nobody_secret)  # wrong secret
    setup.add_section("badhook", [name("www")], challenge="dns-01")
    before = knot.serial()
    rc, err = issue(setup)
    assert rc == 1, err
    lines = [line for line in err.splitlines() if "hook.sh add _acme-challenge.www" in line]
    assert len(lines) == 1 and "exit status" in lines[0], err
    assert knot.all_txt() == {} and knot.serial() == before


def delete_txt(knot: Knot, owner: str) -> None:
    """Remove every TXT record of ``owner`` (a test's own clean-up, with the test key)."""
    import base64

    import dns.query
    import dns.tsig
    import dns.update

    update = dns.update.UpdateMessage("example.test")
    update.use_tsig(dns.tsig.Key(KEY_NAME, base64.b64decode(knot.secret), "hmac-sha256"))
    update.delete(owner + ".", "TXT")
    dns.query.tcp(update, "127.0.0.1", port=knot.port, timeout=5)


def test_dns_persist_renewal_writes_nothing(dns_pebble: Pebble, knot: Knot,
                                            account_key: Path) -> None:
    setup = make_setup(dns_pebble, knot, account_key)
    setup.add_section("persist", [name("h10"), "*." + name("h10")], challenge="dns-persist-01")
    setup.write_certs()
    owner = "_validation-persist." + name("h10")
    try:
        done = setup.run("dns-persist", "--publish")
        assert done.returncode == 0, done.stderr
        [line] = done.stdout.splitlines()
        assert line.startswith(f"{owner}. IN TXT \"")
        [value] = knot.txt(owner)
        assert f"; accounturi={dns_pebble.directory_url.rsplit('/', 1)[0]}" in value
        assert value.endswith("; policy=wildcard") and line.endswith(f'"{value}"')
        serial = knot.serial()
        for extra in ((), ("--force",)):
            rc, err = issue(setup, *extra)
            assert rc == 0, err
            assert san_names(load_chain(setup.root / "persist.crt")[0]) == {
                name("h10"), "*." + name("h10")}
            assert knot.serial() == serial, "an order over dns-persist-01 writes nothing"
        assert knot.txt(owner) == {value}, "the persistent record stays"
    finally:
        delete_txt(knot, owner)


def test_dns_persist_prints_without_publishing(dns_pebble: Pebble, knot: Knot,
                                               account_key: Path) -> None:
    setup = make_setup(dns_pebble, knot, account_key)
    setup.add_section("plain", [name("h11")])
    setup.write_certs()
    serial = knot.serial()
    done = setup.run("dns-persist", "plain")
    assert done.returncode == 0, done.stderr
    [line] = done.stdout.splitlines()
    assert line.startswith(f"_validation-persist.{name('h11')}. IN TXT \"")
    assert "policy=wildcard" not in line and "; accounturi=https://" in line
    assert knot.serial() == serial and knot.all_txt() == {}


def test_unreadable_dns_config_is_one_line(dns_pebble: Pebble, knot: Knot,
                                           account_key: Path) -> None:
    setup = make_setup(dns_pebble, knot, account_key)
    (setup.root / "lacme-dns.conf").unlink()
    setup.add_section("noconf", [name("www")], challenge="dns-01")
    rc, err = issue(setup)
    assert rc == 1, err
    lines = [line for line in err.splitlines() if "lacme-dns.conf" in line]
    assert len(lines) == 1 and "No such file or directory" in lines[0], err
    assert knot.all_txt() == {}


def test_dns_socket_missing_is_one_line(dns_pebble: Pebble, knot: Knot, account_key: Path) -> None:
    """[dns] connect to a socket-activated lacme-dns that is not there."""
    setup = make_setup(dns_pebble, knot, account_key)
    missing = setup.root / "no-dns.socket"
    setup.conf.write_text(setup.conf.read_text() + f"connect = {missing}\n")
    setup.add_section("nosock", [name("www")], challenge="dns-01")
    rc, err = issue(setup)
    assert rc == 1, err
    lines = [line for line in err.splitlines() if "connect" in line]
    assert len(lines) == 1, err
    assert f"[dns] connect {missing}: No such file or directory (is lacme-dns.socket" in lines[0]
    assert knot.all_txt() == {}


def test_lacme_dns_on_a_listening_socket_serves_in_turn_then_idles_out(knot: Knot,
                                                                        tmp_path: Path) -> None:
    """systemd's Accept=no socket: one connection after another, exit when idle."""
    import json
    import socket
    import subprocess
    import sys
    import time

    from tests.lacmeenv import TREE_ROOT

    conf = tmp_path / "lacme-dns.conf"
    conf.write_text(dns_conf(knot))
    path = str(tmp_path / "dns.socket")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(4)
    env = {**os.environ, "LISTEN_FDS": "1", "PYTHONPATH": str(TREE_ROOT),
           "TEST_FD": str(listener.fileno())}
    code = ("import os, sys; os.dup2(int(os.environ.pop('TEST_FD')), 3); "
            "os.environ['LISTEN_PID'] = str(os.getpid()); from lacme.dns.main import main; "
            "raise SystemExit(main(sys.argv[1:]))")
    child = subprocess.Popen([sys.executable, "-c", code, f"--config={conf}", "--quiet",
                              "--idle-timeout=1"], env=env, pass_fds=(listener.fileno(),))
    listener.close()
    digest = "A" * 42 + "E"
    for host in ("h12", "h13"):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.connect(path)
            conn.sendall(json.dumps({"type": "allow", "names": [name(host)]}).encode() + b"\n")
            conn.sendall(json.dumps({"type": "update", "id": 7, "wait": True, "delete": [],
                                     "add": [{"name": f"_acme-challenge.{name(host)}",
                                              "value": digest}]}).encode() + b"\n")
            with conn.makefile("rb") as rfile:
                answer = json.loads(rfile.readline())
            assert answer == {"type": "updated", "id": 7, "ok": True, "message": "",
                              "written": True}
            assert knot.txt(f"_acme-challenge.{name(host)}") == {digest}
        deadline = time.monotonic() + 10  # the connection ended: its record goes
        while knot.all_txt() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert knot.all_txt() == {}
    assert child.wait(timeout=15) == 0, "idle for a second: lacme-dns exits"
