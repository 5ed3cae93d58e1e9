"""Faults while the real ``lacme`` master runs (fork mode) against the hostile CA
in its slow-but-correct mode: SIGKILL of the master at spread moments, two
runs at once, accountd or the client dying mid-run; Pebble rejecting half
of the nonces; the webserver's memory under a flood of connections.

What must hold: each certificate is the old one or a complete new one, the
next run works and leaves no temporary, challenge directory or process
behind; errors are one clear line.
"""

from __future__ import annotations

import os
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography import x509

from tests.hostile.test_hostile import (  # noqa: F401 - fixtures
    OLD_CERT,
    Lacme,
    account_key,
    assert_installed,
    ca,
    error_lines,
    lacme,
)
from tests.lacmeenv import TREE_ROOT, LacmeSetup, unique_name, write_key


def start(lacme: Lacme, *args: str) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(TREE_ROOT), TMPDIR=str(lacme.tmp))
    return subprocess.Popen([sys.executable, "-m", "lacme.master", f"--config={lacme.root / 'lacme.conf'}",
                             *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=str(lacme.root))


def port_free(port: int, within: float = 3.0) -> bool:
    """True once 127.0.0.1:port can be bound: no orphaned webserver holds it."""
    deadline = time.monotonic() + within
    while True:
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
                return True
            except OSError:
                if time.monotonic() > deadline:
                    return False
        time.sleep(0.05)


def temporaries(lacme: Lacme) -> list[str]:
    return [n for n in os.listdir(lacme.root) if ".lacme-tmp." in n]


def cert_state(lacme: Lacme) -> str:
    """"old", or "new" when the file is a complete certificate for the names."""
    data = lacme.cert.read_bytes()
    if data == OLD_CERT:
        return "old"
    leaf = x509.load_pem_x509_certificate(data)  # a truncated or mixed file fails here
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(names.get_values_for_type(x509.DNSName)) == set(lacme.names)
    return "new"


def wait_for_file(path: Path, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return path.read_text().strip()
        time.sleep(0.02)
    raise AssertionError(f"{path} never written")


def pid_wrapper(lacme: Lacme, name: str, module: str) -> str:
    """A command that records its pid in ``<name>.pid`` and execs the component."""
    script = lacme.tmp.parent / f"{lacme.root.name}-{name}"
    script.write_text(f"#!/bin/sh\necho $$ > {lacme.tmp.parent / (lacme.root.name + '-' + name)}.pid\n"
                      f"PYTHONPATH={TREE_ROOT} exec {sys.executable} -m {module} \"$@\"\n")
    script.chmod(0o755)
    return str(script)


# ---------------------------------------------------------------- SIGKILL at many points

KILL_AFTER = [0.3, 0.7, 1.1, 1.5, 1.9, 2.3, 2.7, 3.1, 3.5, 4.0]


def test_sigkill_of_master_at_any_moment_leaves_old_or_new_certificate(lacme):
    lacme.write()
    lacme.ca.set_mode("slow")  # every request takes 0.15 s: kills land all along the run
    seen = set()
    try:
        for delay in KILL_AFTER:
            run = start(lacme, "newOrder", "--force")
            time.sleep(delay)
            run.send_signal(signal.SIGKILL)
            run.communicate(timeout=30)
            seen.add(cert_state(lacme))
            assert port_free(lacme.ca.http_port), "a child of the killed master kept the port"
        final = start(lacme, "newOrder", "--force")
        out, err = final.communicate(timeout=60)
    finally:
        lacme.ca.set_mode("", clear=False)
    assert final.returncode == 0, err
    assert cert_state(lacme) == "new"
    assert temporaries(lacme) == []
    assert "Traceback" not in err
    assert "old" in seen  # the early kills did hit before the install


# ---------------------------------------------------------------- two runs at once

def test_two_runs_at_once_are_serialized(lacme):
    lacme.write()
    lacme.ca.set_mode("slow")
    try:
        first = start(lacme, "newOrder", "--force")
        time.sleep(0.3)
        second = start(lacme, "newOrder", "--force")
        first_err = first.communicate(timeout=60)[1]
        first_done = time.monotonic()
        second_err = second.communicate(timeout=60)[1]
    finally:
        lacme.ca.set_mode("", clear=False)
    assert first.returncode == 0, first_err
    assert second.returncode == 0, second_err
    assert "another lacme run is in progress, waiting" in second_err
    directory_gets = [r.at for r in lacme.ca.requests() if r.path == "/dir"]
    assert len(directory_gets) == 2
    assert directory_gets[1] > first_done - 0.5  # the second run talked to the CA only after
    assert cert_state(lacme) == "new"
    assert temporaries(lacme) == []


# ---------------------------------------------------------------- a component dies

@pytest.mark.parametrize("component, module, message", [
    ("accountd", "lacme.accountd", "lacme-accountd"),
    ("client", "lacme.client", "the ACME client ended unexpectedly (killed by signal 9)"),
])
def test_component_killed_mid_run_gives_clear_error_and_cleans_up(lacme, component, module, message):
    command = pid_wrapper(lacme, component, module)
    lacme.write(**{f"{component}_command": command})
    pid_file = Path(command + ".pid")
    lacme.ca.set_mode("slow")
    try:
        run = start(lacme, "newOrder", "--force")
        pid = int(wait_for_file(pid_file))
        while not any(r.path.startswith("/authz/") for r in lacme.ca.requests()):
            assert run.poll() is None
            time.sleep(0.02)
        os.kill(pid, signal.SIGKILL)
        _out, err = run.communicate(timeout=60)
    finally:
        lacme.ca.set_mode("", clear=False)
        for path in (Path(command), pid_file):
            path.unlink(missing_ok=True)
    assert run.returncode == 1, err
    assert message in err
    assert "Traceback" not in err
    assert 1 <= len(error_lines(subprocess.CompletedProcess([], 1, "", err))) <= 2
    assert lacme.cert.read_bytes() == OLD_CERT
    assert os.listdir(lacme.tmp) == []
    assert port_free(lacme.ca.http_port)


# ---------------------------------------------------------------- Pebble rejecting nonces

@pytest.mark.pebble
def test_pebble_rejecting_half_the_nonces_still_issues(pebble_factory, tmp_path):
    pebble = pebble_factory(env={"PEBBLE_WFE_NONCEREJECT": "50"})
    setup = LacmeSetup(root=tmp_path / "etc", pebble=pebble, account_key=write_key(tmp_path / "a.key", "p256"))
    setup.add_section("www", [unique_name()], key_kind="p256")
    setup.write()
    offset = pebble.log_offset()
    done = setup.run("account", "--register", "--tos-agreed")
    assert done.returncode == 0, done.stderr
    done = setup.run("newOrder")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "etc" / "www.crt").exists()
    assert pebble.requests_since(offset)["HEAD /nonce-plz"] >= 1


# ---------------------------------------------------------------- webserver memory under load

def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_webserver_memory_bounded_under_flood(tmp_path):
    from tests.test_webserver import KEYAUTH, TOKEN, challenge, connect, request
    from tests.test_webserver import start as start_webserver

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < 2048:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(4096, hard), hard))
    (tmp_path / "challenges").mkdir()
    (tmp_path / "challenges" / TOKEN).write_text(KEYAUTH)
    server = start_webserver(tmp_path / "challenges", "127.0.0.1:0")
    address = server.addresses(1)[0]
    idle = [connect(address) for _ in range(1000)]
    slow = [connect(address) for _ in range(100)]
    try:
        for sock in slow:  # slow-loris: a large head that never ends
            sock.sendall(b"GET /.well-known/acme-challenge/" + b"A" * 1500)
        started = time.monotonic()
        assert request(address, challenge(TOKEN)).status == 200
        assert time.monotonic() - started < 1.0
        assert rss_mb(server.proc.pid) < 100
    finally:
        for sock in idle + slow:
            sock.close()
        assert server.stop() == 0
