"""Tests for lacme-client: the real program, driven over its control channel.

Each test spawns ``python3 -m lacme.client`` with one end of a socketpair as
its only inherited descriptor (``descriptors.spawn``, the sd_listen_fds
protocol) and a real ``python3 -m lacme.accountd --stdio`` as its signer,
whose connection travels in the hello message (SCM_RIGHTS).  The test plays
the master: it writes published challenge files into a directory that a
real HTTP server on Pebble's http port serves, and reads the answers.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from lacme.core import descriptors
from lacme.protocol import control, jwk_keys, jws
from tests.test_acme import ChallengeServer, KeySigner, issue, make_csr, make_session

TREE_ROOT = Path(__file__).resolve().parent.parent
ERR = "urn:ietf:params:acme:error:"


@pytest.fixture(scope="module")
def challenges(pebble, tmp_path_factory) -> Iterator[ChallengeServer]:
    server = ChallengeServer(tmp_path_factory.mktemp("www"), pebble.http_port)
    yield server
    server.close()


def write_key(path: Path, key=None) -> tuple[Path, ec.EllipticCurvePrivateKey]:
    key = key if key is not None else ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    return path, key


def environment() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(TREE_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def wait_pid(pid: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise AssertionError(f"process {pid} still running after {timeout}s")


@dataclass
class Run:
    """One client process, its accountd, and the test's (master's) end."""

    channel: descriptors.Channel
    client_pid: int
    accountd_pid: int
    stderr_path: Path
    messages: list[dict] = field(default_factory=list)

    def send(self, kind: str, **fields) -> None:
        self.channel.send(control.encode_message(kind, **fields))

    def next_message(self) -> dict | None:
        line, _fd = self.channel.recv_line(control.MAX_LINE)
        if line is None:
            return None
        msg = control.decode_message(line, control.CLIENT_TYPES)
        self.messages.append(msg)
        return msg

    def serve(self, www: ChallengeServer | None = None, *, refuse: bool = False) -> list[dict]:
        """Answer publish/unpublish as the master does, until done or EOF."""
        while True:
            msg = self.next_message()
            if msg is None or msg["type"] == "done":
                return self.messages
            if msg["type"] == "publish":
                assert www is not None
                if refuse:
                    self.send("published", token=msg["token"], ok=False, message="disk full")
                    continue
                www.publish(msg["token"], msg["content"])
                self.send("published", token=msg["token"], ok=True, message="")
            elif msg["type"] == "unpublish":
                (www.dir / msg["token"]).unlink()

    def finish(self, timeout: float = 30) -> int:
        code = wait_pid(self.client_pid, timeout)
        self.channel.close()
        wait_pid(self.accountd_pid, 10)
        return code

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def of_type(self, kind: str) -> list[dict]:
        return [m for m in self.messages if m["type"] == kind]


def start(pebble, tmp_path: Path, key_path: Path, *, timeout: float = 20,
          debug: bool = False, accountd_args: tuple[str, ...] = (), **overrides) -> Run:
    """Spawn accountd and the client, and send hello with the accountd connection."""
    env = environment()
    acc_ours, acc_theirs = socket.socketpair()
    accountd_pid = descriptors.spawn(
        [sys.executable, "-m", "lacme.accountd", "--stdio", f"--privkey=file:{key_path}",
         "--config=/dev/null", "--quiet", *accountd_args],
        stdin=acc_theirs.fileno(), stdout=acc_theirs.fileno(), env=env,
    )
    acc_theirs.close()
    master_end, client_end = socket.socketpair()
    stderr_path = tmp_path / f"client-{uuid.uuid4().hex[:6]}.err"
    env["CLIENT_STDERR"] = str(stderr_path)
    # "exec" keeps the pid that LISTEN_PID names; the shell only redirects stderr.
    argv = ["/bin/sh", "-c", 'exec "$0" -m lacme.client "$@" 2>"$CLIENT_STDERR"', sys.executable]
    client_pid = descriptors.spawn(argv + (["--debug"] if debug else []),
                                 fds=[(client_end.fileno(), "control")], env=env)
    client_end.close()
    channel = descriptors.Channel(master_end)
    settings = {"server": pebble.directory_url, "timeout": timeout, "SSL_verify": True,
                "SSL_version": None, "SSL_cipher_list": None, "SSL_ca_file": pebble.tls_ca_file}
    settings.update(overrides)
    hello = control.encode_message("hello", version=control.VERSION, settings=settings, debug=False)
    channel.send(hello, fd=acc_ours.fileno())
    acc_ours.close()
    return Run(channel, client_pid, accountd_pid, stderr_path)


@pytest.fixture
def account_key(tmp_path) -> tuple[Path, ec.EllipticCurvePrivateKey]:
    return write_key(tmp_path / "account.key")


def register(pebble, tmp_path, key_path, **fields) -> tuple[Run, int]:
    run = start(pebble, tmp_path, key_path)
    body = {"register": True, "tos_agreed": True, "deactivate": False, "contact": None}
    body.update(fields)
    run.send("account", **body)
    run.serve()
    return run, run.finish()


def order_entry(sid: str, names: list[str]) -> dict:
    _key, csr = make_csr(names)
    return {"id": sid, "identifiers": [{"type": "dns", "value": n} for n in names],
            "csr": jws.b64u_encode(csr)}


def names(count: int) -> list[str]:
    tag = uuid.uuid4().hex[:8]
    return [f"c{i}-{tag}.example.net" for i in range(count)]


# -- account ---------------------------------------------------------------


def test_account_register_answers_account_and_location(pebble, tmp_path, account_key):
    run, code = register(pebble, tmp_path, account_key[0], contact=["mailto:x@example.org"])
    assert code == 0
    (reply,) = run.of_type("account")
    assert reply["account"]["status"] == "valid"
    assert reply["account"]["contact"] == ["mailto:x@example.org"]
    assert "/my-account/" in reply["location"]
    assert run.messages[-1]["type"] == "done"
    assert "Terms of Service: " in run.stderr


def test_account_existing_updates_contact_then_deactivates(pebble, tmp_path, account_key):
    first, _ = register(pebble, tmp_path, account_key[0])
    location = first.of_type("account")[0]["location"]

    run = start(pebble, tmp_path, account_key[0])
    run.send("account", register=False, tos_agreed=False, deactivate=False, contact=["mailto:y@example.org"])
    run.serve()
    assert run.finish() == 0
    (reply,) = run.of_type("account")
    assert reply["location"] == location and reply["account"]["contact"] == ["mailto:y@example.org"]

    offset = pebble.log_offset()
    run = start(pebble, tmp_path, account_key[0])
    run.send("account", register=False, tos_agreed=False, deactivate=True, contact=None)
    run.serve()
    assert run.finish() == 0
    assert run.of_type("account")[0]["account"]["status"] == "deactivated"
    counts = pebble.requests_since(offset)
    assert counts["POST /sign-me-up"] == 1 and counts["POST /my-account"] == 1


def test_account_lookup_without_changes_sends_no_update(pebble, tmp_path, account_key):
    register(pebble, tmp_path, account_key[0])
    offset = pebble.log_offset()
    run = start(pebble, tmp_path, account_key[0])
    run.send("account", register=False, tos_agreed=False, deactivate=False, contact=None)
    run.serve()
    assert run.finish() == 0
    assert run.of_type("account")[0]["account"]["status"] == "valid"
    # the newAccount answer carries the account object (RFC 8555 7.3.1): no
    # second request, and never an empty update
    counts = pebble.requests_since(offset)
    assert counts["POST /sign-me-up"] == 1 and counts["POST /my-account"] == 0


def test_account_unknown_key_reports_error_exit_1(pebble, tmp_path, account_key):
    run = start(pebble, tmp_path, account_key[0])
    run.send("account", register=False, tos_agreed=False, deactivate=False, contact=None)
    run.serve()
    assert run.finish() == 1
    (error,) = run.of_type("error")
    assert error["message"].startswith(pebble.directory_url.replace("/dir", "/sign-me-up: ")
                                       + f"400 {ERR}accountDoesNotExist (")
    assert run.messages[-1]["type"] == "done"


# -- orders ----------------------------------------------------------------


def test_orders_two_sections_issued_concurrently(pebble, challenges, tmp_path, account_key):
    register(pebble, tmp_path, account_key[0])
    www_names, mail_names = names(2), names(1)
    offset = pebble.log_offset()
    run = start(pebble, tmp_path, account_key[0])
    run.send("orders", orders=[order_entry("www", www_names), order_entry("mail", mail_names)])
    run.serve(challenges)
    assert run.finish() == 0

    certs = {m["id"]: m["pem"] for m in run.of_type("certificate")}
    assert set(certs) == {"www", "mail"}
    for sid, wanted in (("www", www_names), ("mail", mail_names)):
        leaf = x509.load_pem_x509_certificates(certs[sid].encode())[0]
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert set(san.get_values_for_type(x509.DNSName)) == set(wanted)
    # concurrency: every challenge was published before the first certificate came
    kinds = [m["type"] for m in run.messages]
    assert kinds.index("certificate") > max(i for i, k in enumerate(kinds) if k == "publish")
    assert kinds.count("publish") == 3 and kinds.count("unpublish") == 3
    assert not list(challenges.dir.iterdir())  # every token unpublished

    counts = pebble.requests_since(offset)
    # a nonce per concurrent order at most (lacme.client.acme.nonces.NONCES_IN_FLIGHT), then answers' nonces
    assert counts["GET /dir"] == 1 and 1 <= counts["HEAD /nonce-plz"] <= 2
    assert counts["POST /sign-me-up"] == 1  # account looked up once for both orders
    assert counts["POST /order-plz"] == 2 and counts["POST /authZ"] == 3 and counts["POST /chalZ"] == 3
    assert counts["POST /finalize-order"] == 2 and counts["POST /certZ"] == 2
    assert "[www] order created" in run.stderr and "[mail] certificate issued" in run.stderr


def test_orders_one_failure_does_not_stop_the_other(pebble, challenges, tmp_path, account_key):
    register(pebble, tmp_path, account_key[0])
    run = start(pebble, tmp_path, account_key[0])
    bad = order_entry("bad", names(1))
    bad["identifiers"] = [{"type": "dns", "value": "under_score..example"}]
    run.send("orders", orders=[bad, order_entry("good", names(1))])
    run.serve(challenges)
    assert run.finish() == 1
    assert [m["id"] for m in run.of_type("certificate")] == ["good"]
    (failed,) = run.of_type("failed")
    assert failed["id"] == "bad" and f"{ERR}" in failed["message"] and "/order-plz: 400" in failed["message"]
    assert run.messages[-1]["type"] == "done"


def test_orders_publish_refused_fails_order(pebble, challenges, tmp_path, account_key):
    register(pebble, tmp_path, account_key[0])
    offset = pebble.log_offset()
    run = start(pebble, tmp_path, account_key[0])
    run.send("orders", orders=[order_entry("www", names(1))])
    run.serve(challenges, refuse=True)
    assert run.finish() == 1
    (failed,) = run.of_type("failed")
    assert failed["message"].endswith("cannot publish (disk full)")
    assert not run.of_type("unpublish")
    assert pebble.requests_since(offset)["POST /chalZ"] == 0  # never told the CA to look


def test_orders_wrong_answer_reports_authorization_problem(pebble, challenges, tmp_path, account_key):
    register(pebble, tmp_path, account_key[0])
    run = start(pebble, tmp_path, account_key[0])
    wanted = names(1)
    run.send("orders", orders=[order_entry("www", wanted)])
    while True:  # publish something else than asked
        msg = run.next_message()
        if msg["type"] == "publish":
            challenges.publish(msg["token"], "not-the-key-authorization")
            run.send("published", token=msg["token"], ok=True, message="")
        elif msg["type"] == "unpublish":
            (challenges.dir / msg["token"]).unlink()
        elif msg["type"] == "done":
            break
    assert run.finish() == 1
    (failed,) = run.of_type("failed")
    assert "order invalid" in failed["message"]
    assert f"dns:{wanted[0]} invalid: 403 {ERR}unauthorized" in failed["message"]
    assert "\n" not in failed["message"]


def test_master_closing_channel_stops_client(pebble, challenges, tmp_path, account_key):
    register(pebble, tmp_path, account_key[0])
    run = start(pebble, tmp_path, account_key[0])
    run.send("orders", orders=[order_entry("www", names(1))])
    msg = run.next_message()
    while msg is not None and msg["type"] != "publish":
        msg = run.next_message()
    started = time.monotonic()
    run.channel.sock.shutdown(socket.SHUT_RDWR)
    assert wait_pid(run.client_pid, 10) == 1
    assert time.monotonic() - started < 5
    wait_pid(run.accountd_pid, 10)
    assert "error: control channel: closed by the master" in run.stderr.splitlines()


def test_accountd_closing_connection_fails_with_one_line(pebble, tmp_path, account_key):
    # accountd pinned to another CA refuses the first request by closing the connection
    run = start(pebble, tmp_path, account_key[0], accountd_args=("--origin=https://ca.invalid",))
    run.send("account", register=True, tos_agreed=True, deactivate=False, contact=None)
    run.serve()
    assert run.finish() == 1
    (error,) = run.of_type("error")
    assert error["message"] == ("lacme-accountd: connection closed while signing (refused, "
                                "or accountd or its transport ended)")
    # the master prints the line it was sent: the client does not print it too
    assert not [line for line in run.stderr.splitlines() if line.startswith("error:")]


def test_accountd_gone_before_greeting_reports_error(pebble, tmp_path, account_key):
    run = start(pebble, tmp_path, account_key[0], accountd_args=("--privkey=file:/nonexistent",))
    run.send("account", register=True, tos_agreed=True, deactivate=False, contact=None)
    run.serve()
    assert run.finish() == 1
    (error,) = run.of_type("error")
    assert error["message"] == "lacme-accountd: connection closed before the greeting"
    assert run.messages[-1]["type"] == "error"  # nothing was served: no done
    client_lines = [line for line in run.stderr.splitlines() if "before the greeting" in line]
    assert not client_lines  # the master prints it, once


# -- revoke ----------------------------------------------------------------


def test_revoke_with_account_key_and_with_certificate_key(pebble, challenges, tmp_path, account_key):
    key_path, key = account_key
    session = make_session(pebble, KeySigner(key))
    session.new_account(tos_agreed=True)
    certs = []
    for _ in range(2):
        pem, cert_key = issue(session, challenges, names(1))
        certs.append((x509.load_pem_x509_certificates(pem.encode())[0], cert_key))

    # 1. accountd serves the account key: signed with kid
    (leaf, _k) = certs[0]
    run = start(pebble, tmp_path, key_path)
    run.send("revoke", certificates=[{"id": "/etc/a.crt", "der": jws.b64u_encode(
        leaf.public_bytes(serialization.Encoding.DER)), "jwk_thumbprint": "not-this-key"}], reason=1)
    run.serve()
    assert run.finish() == 0
    assert run.of_type("revoked") == [{"type": "revoked", "id": "/etc/a.crt"}]
    assert pebble.cert_status(leaf.serial_number) == "Revoked"

    # 2. accountd serves the certificate's key: signed with jwk, no account lookup
    (leaf, cert_key) = certs[1]
    cert_key_path, _ = write_key(tmp_path / "cert.key", cert_key)
    thumbprint = jws.jwk_thumbprint(jwk_keys.public_jwk(cert_key))
    offset = pebble.log_offset()
    run = start(pebble, tmp_path, cert_key_path)
    der = leaf.public_bytes(serialization.Encoding.DER)
    run.send("revoke", certificates=[
        {"id": "/etc/b.crt", "der": jws.b64u_encode(der), "jwk_thumbprint": thumbprint},
        {"id": "/etc/b-again.crt", "der": jws.b64u_encode(der), "jwk_thumbprint": thumbprint},
    ], reason=None)
    run.serve()
    assert run.finish() == 1
    assert [m["id"] for m in run.of_type("revoked")] == ["/etc/b.crt"]
    (failed,) = run.of_type("failed")
    assert failed["id"] == "/etc/b-again.crt" and f"{ERR}alreadyRevoked" in failed["message"]
    assert pebble.cert_status(leaf.serial_number) == "Revoked"
    assert pebble.requests_since(offset)["POST /sign-me-up"] == 0


# -- startup ---------------------------------------------------------------


def test_bad_ssl_version_reported_before_any_request(pebble, tmp_path, account_key):
    offset = pebble.log_offset()
    run = start(pebble, tmp_path, account_key[0], SSL_version="TLSv9")
    run.send("account", register=True, tos_agreed=True, deactivate=False, contact=None)
    run.serve()
    assert run.finish() == 1
    assert run.of_type("error") == [{"type": "error", "message": "[client] SSL_version: unknown version 'TLSv9'"}]
    assert not pebble.requests_since(offset)


def test_ssl_settings_used_for_the_session(pebble, tmp_path, account_key):
    run = start(pebble, tmp_path, account_key[0], SSL_version="TLSv1_3", SSL_ca_file=None,
                SSL_verify=False)
    run.send("account", register=True, tos_agreed=True, deactivate=False, contact=None)
    run.serve()
    assert run.finish() == 0  # SSL_verify false: Pebble's private CA is not needed
    assert run.of_type("account")[0]["account"]["status"] == "valid"
    assert "Unverified HTTPS" not in run.stderr


def test_no_inherited_descriptor_is_usage_error():
    env = {k: v for k, v in environment().items() if not k.startswith("LISTEN_")}
    proc = subprocess.run([sys.executable, "-m", "lacme.client"], env=env, capture_output=True,
                          text=True, timeout=30, cwd=TREE_ROOT)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: lacme-client: expects exactly one inherited descriptor, the control channel "
        "(got 0); it is started by lacme"]


def test_hello_without_accountd_connection_exits_1(tmp_path):
    master_end, client_end = socket.socketpair()
    env = environment()
    env["CLIENT_STDERR"] = str(tmp_path / "err")
    argv = ["/bin/sh", "-c", 'exec "$0" -m lacme.client 2>"$CLIENT_STDERR"', sys.executable]
    pid = descriptors.spawn(argv, fds=[(client_end.fileno(), "control")], env=env)
    client_end.close()
    master_end.sendall(control.encode_message("hello", version=1, settings={}, debug=False))
    assert wait_pid(pid, 30) == 1
    master_end.close()
    assert (tmp_path / "err").read_text().splitlines() == [
        "error: control channel: hello without the accountd connection"]


def test_bad_option_is_usage_error():
    proc = subprocess.run([sys.executable, "-m", "lacme.client", "--bogus"], env=environment(),
                          capture_output=True, text=True, timeout=30, cwd=TREE_ROOT)
    assert proc.returncode == 2 and "--bogus" in proc.stderr
