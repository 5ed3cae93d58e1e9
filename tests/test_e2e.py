"""End to end, fork mode: the real ``lacme`` master spawns the real accountd,
client and webserver, against a real Pebble.  Runs as any user; components
are not privilege-dropped here (see test_privdrop.py for that)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from tests.lacmeenv import TREE_ROOT, LacmeSetup, load_chain, san_names, unique_name, write_key

pytestmark = pytest.mark.pebble


@pytest.fixture(scope="session")
def registered_key(pebble, tmp_path_factory) -> Path:
    """An RSA account key registered once with the session's Pebble."""
    root = tmp_path_factory.mktemp("account")
    key = write_key(root / "account.key")
    setup = LacmeSetup(root=root / "conf", pebble=pebble, account_key=key)
    setup.write()
    done = setup.run("account", "--register", "--tos-agreed", "mailto:admin@example.com")
    assert done.returncode == 0, done.stderr
    return key


@pytest.fixture
def setup(tmp_path, pebble, registered_key) -> LacmeSetup:
    s = LacmeSetup(root=tmp_path / "etc", pebble=pebble, account_key=registered_key)
    s.write()
    return s


def private_tmpdir(tmp_path: Path) -> dict[str, str]:
    """A TMPDIR of the test's own for the master, where its challenge
    directory goes: other test sessions on the machine leave theirs in /tmp."""
    tmp = tmp_path / "tmpdir"
    tmp.mkdir(exist_ok=True)
    return {"TMPDIR": str(tmp)}


def leftover_challenge_dirs(env: dict[str, str]) -> list[str]:
    return [n for n in os.listdir(env["TMPDIR"]) if n.startswith("lacme-challenges.")]


# ---------------------------------------------------------------- account

@pytest.mark.parametrize("kind", ["rsa", "p256", "p384"])
def test_account_register_prints_account_object(tmp_path, pebble, kind):
    key = write_key(tmp_path / "account.key", kind)
    s = LacmeSetup(root=tmp_path / "etc", pebble=pebble, account_key=key)
    s.write()
    done = s.run("account", "--register", "--tos-agreed", "mailto:ops@example.com")
    assert done.returncode == 0, done.stderr
    account = json.loads(done.stdout)
    assert account["status"] == "valid"
    assert account["contact"] == ["mailto:ops@example.com"]


def test_account_register_without_contact_succeeds(tmp_path, pebble):
    key = write_key(tmp_path / "account.key", "p256")
    s = LacmeSetup(root=tmp_path / "etc", pebble=pebble, account_key=key)
    s.write()
    done = s.run("account", "--register", "--tos-agreed")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["status"] == "valid"


def test_account_update_contact_of_existing_account(tmp_path, pebble):
    key = write_key(tmp_path / "account.key")
    s = LacmeSetup(root=tmp_path / "etc", pebble=pebble, account_key=key)
    s.write()
    assert s.run("account", "--register", "--tos-agreed", "mailto:a@example.com").returncode == 0
    done = s.run("account", "mailto:b@example.com", "mailto:c@example.com")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["contact"] == ["mailto:b@example.com", "mailto:c@example.com"]


def test_account_lookup_of_unknown_key_fails(tmp_path, pebble):
    key = write_key(tmp_path / "account.key")
    s = LacmeSetup(root=tmp_path / "etc", pebble=pebble, account_key=key)
    s.write()
    done = s.run("account")
    assert done.returncode == 1
    assert "accountDoesNotExist" in done.stderr
    assert "Traceback" not in done.stderr


def test_account_deactivate_then_orders_are_refused(tmp_path, pebble):
    key = write_key(tmp_path / "account.key")
    s = LacmeSetup(root=tmp_path / "etc", pebble=pebble, account_key=key)
    s.add_section("www", [unique_name()])
    s.write()
    assert s.run("account", "--register", "--tos-agreed").returncode == 0
    done = s.run("account", "--deactivate")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["status"] == "deactivated"
    done = s.run("newOrder")
    assert done.returncode == 1
    assert not Path(s.sections["www"]["certificate"]).exists()


# ---------------------------------------------------------------- issuance

@pytest.mark.parametrize("kind", ["rsa", "p256"])
def test_new_order_installs_verified_certificate(setup, pebble, kind, tmp_path):
    name = unique_name()
    marker = tmp_path / "notified"
    section = setup.add_section("www", [name], key_kind=kind, chmod="0640",
                                notify=f"echo done >> {marker}")
    setup.write_certs()
    env = private_tmpdir(tmp_path)
    done = setup.run("newOrder", env=env)
    assert done.returncode == 0, done.stderr
    leaf = load_chain(Path(section["certificate"]))
    chain = load_chain(Path(section["certificate-chain"]))
    assert len(leaf) == 1 and len(chain) >= 2
    assert chain[0] == leaf[0]
    assert san_names(leaf[0]) == {name}
    key = serialization.load_pem_private_key(Path(section["certificate-key"]).read_bytes(), None)
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    assert leaf[0].public_key().public_bytes(serialization.Encoding.DER, spki) == \
        key.public_key().public_bytes(serialization.Encoding.DER, spki)
    assert os.stat(section["certificate"]).st_mode & 0o777 == 0o640
    assert marker.read_text() == "done\n"
    assert leftover_challenge_dirs(env) == []



def test_new_order_several_sections_and_names_in_one_run(setup, pebble):
    names = [unique_name("a"), unique_name("b"), unique_name("c")]
    other = unique_name("mail")
    setup.add_section("multi", names)
    setup.add_section("mail", [other], key_kind="p256")
    setup.write_certs()
    offset = pebble.log_offset()
    done = setup.run("newOrder")
    assert done.returncode == 0, done.stderr
    assert san_names(load_chain(Path(setup.sections["multi"]["certificate"]))[0]) == set(names)
    assert san_names(load_chain(Path(setup.sections["mail"]["certificate"]))[0]) == {other}
    counts = pebble.requests_since(offset)
    # one client session for the whole run: directory, first nonce and
    # account lookup once, whatever the number of sections
    assert counts["GET /dir"] == 1
    assert counts["HEAD /nonce-plz"] <= 2  # one per concurrent order at most
    assert counts["POST /sign-me-up"] == 1
    assert counts["POST /order-plz"] == 2


def test_new_order_quiet_prints_nothing_when_all_is_well(setup):
    # the master's --quiet reaches its components: no webserver "listening on"
    setup.add_section("hush", [unique_name("hush")])
    setup.write_certs()
    done = setup.run("--quiet", "newOrder")
    assert done.returncode == 0, done.stderr
    assert Path(setup.sections["hush"]["certificate"]).exists()
    assert done.stderr == ""


def test_new_order_cn_only_section_puts_cn_in_san(setup):
    name = unique_name()
    section = setup.add_section("cn", [name])
    del section["subjectAltName"]
    setup.write_certs()
    done = setup.run("newOrder")
    assert done.returncode == 0, done.stderr
    assert san_names(load_chain(Path(section["certificate"]))[0]) == {name}


def test_new_order_min_days_skips_fresh_and_force_renews(setup, pebble):
    section = setup.add_section("www", [unique_name()])
    setup.write_certs()
    assert setup.run("newOrder").returncode == 0
    first = Path(section["certificate"]).read_bytes()
    offset = pebble.log_offset()
    done = setup.run("newOrder")
    assert done.returncode == 0, done.stderr
    assert "skipping" in done.stderr
    assert Path(section["certificate"]).read_bytes() == first
    assert sum(pebble.requests_since(offset).values()) == 0  # contacted nobody
    done = setup.run("newOrder", "--min-days=100000")
    assert done.returncode == 0
    assert Path(section["certificate"]).read_bytes() != first
    second = Path(section["certificate"]).read_bytes()
    assert setup.run("newOrder", "--force", "www").returncode == 0
    assert Path(section["certificate"]).read_bytes() != second


def test_new_order_fresh_run_imports_no_network_module(setup):
    section = setup.add_section("www", [unique_name()])
    setup.write_certs()
    assert setup.run("newOrder").returncode == 0
    probe = (
        "import sys, runpy; sys.argv = ['lacme', '--config=%s', 'newOrder'];\n"
        "try:\n    runpy.run_module('lacme.master', run_name='__main__')\n"
        "except SystemExit as e:\n    code = e.code\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('requests', 'urllib3', 'ssl', 'socket', 'cryptography', 'http') or m in "
        "('lacme.client', 'lacme.master.run', 'lacme.master.children', 'lacme.master.components',"
        " 'lacme.master.lock', 'lacme.x509.chain', 'lacme.x509.csr', 'lacme.x509.keys') "
        "or m.startswith('lacme.client.'))\n"
        "print(code, bad)\n" % setup.conf
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(TREE_ROOT)})
    assert done.stdout.strip() == "0 []", done.stdout + done.stderr
    assert Path(section["certificate"]).exists()


def test_new_order_unknown_section_fails_but_others_proceed(setup):
    section = setup.add_section("www", [unique_name()])
    setup.write_certs()
    done = setup.run("newOrder", "www", "nosuch")
    assert done.returncode == 1
    assert "nosuch" in done.stderr
    assert Path(section["certificate"]).exists()


def test_new_order_config_certs_option_reads_given_file(setup, tmp_path):
    section = setup.add_section("other", [unique_name()])
    setup.write_certs()
    alt = tmp_path / "alt.conf"
    alt.write_text(setup.certs_conf.read_text())
    setup.certs_conf.write_text("")
    done = setup.run("newOrder", f"--config-certs={alt}")
    assert done.returncode == 0, done.stderr
    assert Path(section["certificate"]).exists()


def test_new_order_failed_validation_leaves_old_certificate(setup, tmp_path):
    # The webserver listens where Pebble's VA does not look: the
    # authorization fails and the order is refused.
    from tests.pebble import free_port

    setup.listen = f"127.0.0.1:{free_port()}"
    setup.write()
    section = setup.add_section("www", [unique_name()])
    setup.write_certs()
    Path(section["certificate"]).write_bytes(b"old certificate\n")
    env = private_tmpdir(tmp_path)
    done = setup.run("newOrder", "--force", env=env)
    assert done.returncode == 1
    assert Path(section["certificate"]).read_bytes() == b"old certificate\n"
    assert "Traceback" not in done.stderr
    assert leftover_challenge_dirs(env) == []


def test_new_order_stopped_ca_is_a_clear_error(setup, pebble_factory, tmp_path):
    other = pebble_factory()
    s = LacmeSetup(root=tmp_path / "stopped", pebble=other, account_key=setup.account_key)
    section = s.add_section("www", [unique_name()])
    s.write()
    Path(section["certificate"]).write_bytes(b"old\n")
    other.stop()
    done = s.run("newOrder", "--force")
    assert done.returncode == 1
    assert other.directory_url in done.stderr
    assert Path(section["certificate"]).read_bytes() == b"old\n"
    assert "Traceback" not in done.stderr


def test_new_order_chain_not_verifying_is_refused(setup):
    section = setup.add_section("www", [unique_name()])
    # a CAfile that is not Pebble's root: the chain must not verify
    from cryptography.hazmat.primitives.serialization import Encoding

    from tests.pebble import make_tls_ca
    _, foreign = make_tls_ca()
    other = setup.root / "foreign.pem"
    other.write_bytes(foreign.public_bytes(Encoding.PEM))
    section["CAfile"] = str(other)
    setup.write_certs()
    Path(section["certificate"]).write_bytes(b"old\n")
    done = setup.run("newOrder", "--force")
    assert done.returncode == 1
    assert "refused" in done.stderr
    assert Path(section["certificate"]).read_bytes() == b"old\n"
    assert not Path(section["certificate-chain"]).exists()


def test_new_order_empty_cafile_skips_chain_check(setup):
    section = setup.add_section("www", [unique_name()], CAfile="")
    setup.write_certs()
    done = setup.run("newOrder")
    assert done.returncode == 0, done.stderr
    assert Path(section["certificate"]).exists()


def test_new_order_nonce_rejections_still_issue(pebble_factory, tmp_path, registered_key):
    other = pebble_factory(env={"PEBBLE_WFE_NONCEREJECT": "50"})
    s = LacmeSetup(root=tmp_path / "etc", pebble=other, account_key=registered_key)
    section = s.add_section("www", [unique_name()])
    s.write()
    assert s.run("account", "--register", "--tos-agreed").returncode == 0
    done = s.run("newOrder")
    assert done.returncode == 0, done.stderr
    assert Path(section["certificate"]).exists()


def test_new_order_notify_failure_keeps_certificate(setup):
    section = setup.add_section("www", [unique_name()], notify="exit 3")
    setup.write_certs()
    done = setup.run("newOrder")
    assert done.returncode == 1
    assert Path(section["certificate"]).exists()
    assert "notify" in done.stderr


def test_new_order_bad_config_is_usage_error_and_does_nothing(setup, pebble):
    section = setup.add_section("www", [unique_name()], frobnicate="yes")
    setup.write_certs()
    offset = pebble.log_offset()
    done = setup.run("newOrder")
    assert done.returncode == 2
    assert "frobnicate" in done.stderr and "[www]" in done.stderr
    assert sum(pebble.requests_since(offset).values()) == 0
    assert not Path(section["certificate"]).exists()


# ---------------------------------------------------------------- revocation

def serial_of(path: str) -> int:
    return load_chain(Path(path))[0].serial_number


def test_revoke_with_account_key(setup, pebble):
    section = setup.add_section("www", [unique_name()])
    setup.write_certs()
    assert setup.run("newOrder").returncode == 0
    done = setup.run("revokeCert", section["certificate"])
    assert done.returncode == 0, done.stderr
    assert pebble.cert_status(serial_of(section["certificate"])) == "Revoked"


def start_accountd(key: Path, sockdir: Path, *, perl: bool = False) -> subprocess.Popen:
    sockdir.mkdir(mode=0o700, exist_ok=True)
    sock = sockdir / "S.lacme"
    conf = sockdir / "accountd.conf"
    conf.write_text(f"privkey = file:{key}\n")
    if perl:
        argv = ["/usr/bin/lacme-accountd", f"--config={conf}", f"--socket={sock}"]
    else:
        argv = [sys.executable, "-m", "lacme.accountd", f"--config={conf}", f"--socket={sock}"]
    proc = subprocess.Popen(argv, env={**os.environ, "PYTHONPATH": str(TREE_ROOT)},
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 10
    while not sock.exists():
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    return proc


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=10)


def test_revoke_with_certificate_key_through_accountd_socket(setup, pebble, tmp_path):
    section = setup.add_section("www", [unique_name()])
    setup.write_certs()
    assert setup.run("newOrder").returncode == 0
    proc = start_accountd(Path(section["certificate-key"]), tmp_path / "run")
    try:
        done = setup.run("revokeCert", section["certificate"],
                         socket=str(tmp_path / "run" / "S.lacme"))
    finally:
        stop(proc)
    assert done.returncode == 0, done.stderr
    assert pebble.cert_status(serial_of(section["certificate"])) == "Revoked"


def test_new_order_through_accountd_socket(setup, tmp_path):
    section = setup.add_section("www", [unique_name()])
    setup.write_certs()
    proc = start_accountd(setup.account_key, tmp_path / "run")
    try:
        done = setup.run("newOrder", socket=str(tmp_path / "run" / "S.lacme"))
    finally:
        stop(proc)
    assert done.returncode == 0, done.stderr
    assert Path(section["certificate"]).exists()
    assert not (tmp_path / "run" / "S.lacme").exists()


def test_socket_in_world_writable_directory_is_refused(setup, tmp_path):
    unsafe = tmp_path / "unsafe"
    unsafe.mkdir()
    unsafe.chmod(0o777)
    done = setup.run("account", socket=str(unsafe / "S.lacme"))
    assert done.returncode == 1
    assert "insecure" in done.stderr


# ---------------------------------------------------------------- interop

def test_interop_our_master_with_debian_accountd(setup, tmp_path):
    section = setup.add_section("www", [unique_name()])
    setup.write_certs()
    proc = start_accountd(setup.account_key, tmp_path / "run", perl=True)
    try:
        done = setup.run("--debug", "newOrder", socket=str(tmp_path / "run" / "S.lacme"))
    finally:
        stop(proc)
    assert done.returncode == 0, done.stderr
    assert Path(section["certificate"]).exists()
    # Debian's accountd has no scopes: the run goes on as before, said once.
    assert done.stderr.count("it cannot narrow what it signs") == 1


def test_interop_debian_lacme_with_our_accountd(pebble, tmp_path, registered_key):
    from tests.lacmeenv import debian_lacme

    perl = debian_lacme(pebble)
    proc = start_accountd(registered_key, tmp_path / "run")
    try:
        done = perl.run(f"--socket={tmp_path / 'run' / 'S.lacme'}")
    finally:
        stop(proc)
    assert done.returncode == 0, done.stderr
    assert san_names(load_chain(perl.certificate)[0]) == {perl.name}


def test_missing_account_key_is_one_clear_error(setup, pebble):
    section = setup.add_section("www", [unique_name()])
    setup.write_certs()
    (setup.root / "lacme-accountd.conf").write_text(f"privkey = file:{setup.root}/nonexistent.key\n")
    offset = pebble.log_offset()
    done = setup.run("newOrder")
    assert done.returncode == 1
    assert "nonexistent.key" in done.stderr  # accountd's own line
    assert "lacme-accountd" in done.stderr
    assert "Traceback" not in done.stderr
    assert not Path(section["certificate"]).exists()
    assert sum(pebble.requests_since(offset).values()) == 0


def test_one_webserver_per_listen_address_unix_socket_0666(setup, tmp_path):
    """Two listen addresses: TCP for Pebble and a UNIX socket (for a proxy);
    the socket exists 0666 during the run and is removed afterwards."""
    sockdir = tmp_path / "run"
    sockdir.mkdir()
    sock = sockdir / "www.sock"
    seen = tmp_path / "seen"
    wrapper = tmp_path / "client.sh"
    real = [sys.executable, "-m", "lacme.client"]
    wrapper.write_text(f"#!/bin/sh\nstat -c '%F %a' {sock} > {seen}\n"
                       f"PYTHONPATH={TREE_ROOT} exec {' '.join(real)} \"$@\"\n")
    wrapper.chmod(0o755)
    setup.listen = f"127.0.0.1:{setup.pebble.http_port}, {sock}"
    setup.client_command = str(wrapper)
    setup.write()
    section = setup.add_section("www", [unique_name()])
    setup.write_certs()
    done = setup.run("newOrder")
    assert done.returncode == 0, done.stderr
    assert seen.read_text().split() == ["socket", "666"]
    assert not sock.exists()
    assert Path(section["certificate"]).exists()


def test_webserver_that_cannot_start_is_named(setup):
    setup.webserver_command = "/bin/false"
    setup.write()
    section = setup.add_section("www", [unique_name()])
    setup.write_certs()
    done = setup.run("newOrder")
    assert done.returncode == 1
    assert "webserver" in done.stderr and "exited with status 1" in done.stderr
    assert not Path(section["certificate"]).exists()
