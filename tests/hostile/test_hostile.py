"""The real ``lacme`` master (fork mode: accountd, client and webserver spawned)
against the hostile ACME server, one misbehaviour per test.

Every case asserts the outcome a user sees: the exit code, the installed
certificate unchanged byte for byte (or correct), notify not run, no stray
file, the run ended within the deadline, output free of control characters
and tracebacks, and no signed request at the canary origin.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest
from cryptography import x509

from tests.hostile.server import HostileCA
from tests.lacmeenv import TREE_ROOT, public_dir, unique_name, write_key
from tests.pebble import free_port

TIMEOUT = 6  # [client] timeout of the deadline cases, seconds
OLD_CERT = b"the old certificate, which must survive byte for byte\n"
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory):
    server = HostileCA(tmp_path_factory.mktemp("hostile"), http_port=free_port())
    yield server
    server.stop()


@dataclass
class Lacme:
    """A lacme configuration for the hostile CA; section "www" unless told otherwise."""

    root: Path
    ca: HostileCA
    tmp: Path  # the master's TMPDIR: where its private challenge directory goes
    sections: dict[str, list[str]] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return self.sections["www"]

    def cert_of(self, section: str) -> Path:
        return self.root / f"{section}.crt"

    def notified_of(self, section: str) -> Path:
        return self.root / f"{section}.notified"

    @property
    def cert(self) -> Path:
        return self.cert_of("www")

    @property
    def notified(self) -> Path:
        return self.notified_of("www")

    def add_section(self, section: str, names: list[str]) -> None:
        self.sections[section] = names
        write_key(self.root / f"{section}.key", "p256")
        self.cert_of(section).write_bytes(OLD_CERT)

    def write(self, timeout: float = 30, accountd_command: str = "lacme-accountd",
              client_command: str = "lacme-client") -> None:
        (self.root / "tls-ca.pem").write_bytes(Path(self.ca.tls_ca_file).read_bytes())
        (self.root / "root.pem").write_bytes(self.ca.root_pem())
        (self.root / "lacme-accountd.conf").write_text(f"privkey = file:{self.root / 'account.key'}\n")
        (self.root / "lacme.conf").write_text("\n".join([
            "[client]", f"server = {self.ca.directory_url}", f"SSL_ca_file = {self.root / 'tls-ca.pem'}",
            "user =", "group =", f"timeout = {timeout}", f"command = {client_command}",
            "[webserver]", f"listen = 127.0.0.1:{self.ca.http_port}", "user =", "group =",
            "[accountd]", f"command = {accountd_command}", f"config = {self.root / 'lacme-accountd.conf'}",
        ]) + "\n")
        lines = []
        for section, names in self.sections.items():
            lines += [
                f"[{section}]", f"certificate-key = {self.root / (section + '.key')}",
                f"certificate = {self.cert_of(section)}", f"subject = /CN={names[0]}",
                "subjectAltName = " + ",".join(f"DNS:{n}" for n in names),
                f"CAfile = {self.root / 'root.pem'}", f"notify = touch {self.notified_of(section)}",
            ]
        (self.root / "lacme-certs.conf").write_text("\n".join(lines) + "\n")

    def run(self, *args: str, limit: float = 60) -> tuple[subprocess.CompletedProcess[str], float]:
        env = dict(os.environ, PYTHONPATH=str(TREE_ROOT), TMPDIR=str(self.tmp))
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "lacme.master", f"--config={self.root / 'lacme.conf'}",
                               *args], capture_output=True, text=True, timeout=limit, env=env,
                              cwd=str(self.root))
        return done, time.monotonic() - started


@pytest.fixture(scope="module")
def account_key(ca, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hostile-account")
    key = write_key(root / "account.key", "p256")
    setup = Lacme(root, ca, public_dir(), {"www": [unique_name()]})
    setup.write()
    ca.set_mode("")
    done, _ = setup.run("account", "--register", "--tos-agreed", "mailto:ops@example.com")
    assert done.returncode == 0, done.stderr
    return key


@pytest.fixture
def lacme(ca, account_key) -> Iterator[Lacme]:
    root = public_dir()
    (root / "account.key").write_bytes(account_key.read_bytes())
    setup = Lacme(root, ca, public_dir())
    setup.add_section("www", [unique_name(), unique_name("alt")])
    setup.write()
    yield setup
    shutil.rmtree(root, ignore_errors=True)
    shutil.rmtree(setup.tmp, ignore_errors=True)


def expected_files(lacme: Lacme) -> set[str]:
    files = {"account.key", "tls-ca.pem", "root.pem", "lacme.conf", "lacme-certs.conf",
             "lacme-accountd.conf"}
    for section in lacme.sections:
        files |= {f"{section}.key", f"{section}.crt", f"{section}.notified"}
    return files


def assert_clean(lacme: Lacme, done: subprocess.CompletedProcess[str]) -> None:
    """No traceback, no raw control character, no stray file, nothing at the canary."""
    for stream in (done.stdout, done.stderr):
        assert "Traceback" not in stream
        assert not CONTROL.search(stream.replace("\n", "").replace("\t", "")), repr(stream)
    assert set(os.listdir(lacme.root)) <= expected_files(lacme)
    assert os.listdir(lacme.tmp) == []  # the private challenge directory is gone
    assert [r for r in lacme.ca.requests("canary") if r.signed] == []


def run_case(lacme: Lacme, mode: str, *args: str, timeout: float = 30
             ) -> tuple[subprocess.CompletedProcess[str], float]:
    lacme.write(timeout=timeout)
    lacme.ca.set_mode(mode)
    done, elapsed = lacme.run(*args)
    lacme.ca.set_mode("", clear=False)
    assert_clean(lacme, done)
    return done, elapsed


def assert_refused(lacme: Lacme, done: subprocess.CompletedProcess[str], *words: str,
                   section: str = "www") -> None:
    """Exit 1; the section's old certificate byte for byte, no notify; ``words`` in its error."""
    assert done.returncode == 1, done.stderr
    assert lacme.cert_of(section).read_bytes() == OLD_CERT
    assert not lacme.notified_of(section).exists()
    line = next((line for line in error_lines(done) if f"[{section}]" in line), "")
    for word in words:
        assert word in line, done.stderr


def assert_installed(lacme: Lacme, section: str) -> None:
    leaf = x509.load_pem_x509_certificate(lacme.cert_of(section).read_bytes())
    names = set(leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
                .value.get_values_for_type(x509.DNSName))
    assert names == set(lacme.sections[section])
    assert lacme.notified_of(section).exists()


def error_lines(done: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in done.stderr.splitlines() if line.startswith("error:")]


def add_case_sections(lacme: Lacme, modes: list[str]) -> None:
    """One section per mode (its first name carries the mode), and a good one."""
    for mode in modes:
        lacme.add_section(mode, [f"{mode.lower()}.{unique_name()}", unique_name("alt")])
    lacme.add_section("good", [unique_name()])


# ---------------------------------------------------------------- the baseline

def test_correct_ca_issues_and_installs(lacme):
    done, _ = run_case(lacme, "", "newOrder", "--force")
    assert done.returncode == 0, done.stderr
    assert_installed(lacme, "www")
    assert lacme.ca.requests("canary") == []


# ---------------------------------------------------------------- 1. certificates

CERT_CASES = {
    "cert-extra-name": "unrequested names evil.example.org",
    "cert-missing-name": "missing names",
    "cert-wrong-key": "public key differs",
    "cert-expired": "expired",
    "cert-not-yet-valid": "not valid before",
    "cert-wrong-issuer": "does not verify",
    "cert-chain-too-long": "more than 10 certificates",
    "cert-garbage": "not valid DER",
    "cert-private-key-block": "unexpected PEM block",
    "cert-html": "garbage",
}


def test_bad_certificates_refused_old_ones_kept(lacme):
    """One run, one section per bad certificate, and one good section that is installed."""
    add_case_sections(lacme, list(CERT_CASES))
    done, _ = run_case(lacme, "", "newOrder", "--force")
    for mode, reason in CERT_CASES.items():
        assert_refused(lacme, done, "refused", reason, section=mode)
    assert_installed(lacme, "good")


def test_unrelated_certificate_in_chain_refused(lacme):
    done, _ = run_case(lacme, "cert-unrelated-in-chain", "newOrder", "--force")
    assert_refused(lacme, done, "refused")


# ---------------------------------------------------------------- 2. origins

ORDER_ORIGIN_CASES = [
    "origin-order", "origin-authz", "origin-challenge", "origin-finalize", "origin-certificate",
    "http-finalize", "http-certificate", "file-certificate", "userinfo-finalize", "redirect-post-finalize",
]


def test_foreign_urls_of_orders_never_signed_nor_fetched(lacme):
    """One run, one section per URL kind pointing off the origin, and a good section."""
    add_case_sections(lacme, ORDER_ORIGIN_CASES)
    done, _ = run_case(lacme, "", "newOrder", "--force")
    for mode in ORDER_ORIGIN_CASES:
        words = ("307", "not followed") if mode.startswith("redirect") else ("refused",)
        assert_refused(lacme, done, *words, section=mode)
    assert_installed(lacme, "good")
    assert lacme.ca.requests("canary") == []


@pytest.mark.parametrize("mode", ["origin-account", "origin-directory-newOrder",
                                  "origin-directory-newNonce"])
def test_foreign_urls_of_account_and_directory_refused(lacme, mode):
    done, _ = run_case(lacme, mode, "newOrder", "--force")
    assert_refused(lacme, done, "refused")
    assert lacme.ca.requests("canary") == []


@pytest.mark.parametrize("mode", ["redirect-directory-foreign", "redirect-directory-file"])
def test_directory_redirect_off_origin_refused(lacme, mode):
    done, _ = run_case(lacme, mode, "newOrder", "--force")
    assert done.returncode == 1
    assert "refused" in done.stderr
    assert lacme.cert.read_bytes() == OLD_CERT
    assert lacme.ca.requests("canary") == []


def test_directory_redirect_within_origin_followed(lacme):
    done, _ = run_case(lacme, "redirect-directory-local", "newOrder", "--force")
    assert done.returncode == 0, done.stderr
    assert lacme.cert.read_bytes() != OLD_CERT


# ---------------------------------------------------------------- 3. bounds

BOUNDS_CASES = {
    "big-json": "over the limit",
    "big-json-chunked": "over the limit",
    "deep-json": "nested deeper",
    "gzip-bomb": "malformed JSON",
    "garbage-json": "malformed JSON",
    "many-authz": "1000 authorizations",
    "extra-authz": "authorizations for 2 identifiers",
}


def test_oversized_or_malformed_answers_refused(lacme):
    add_case_sections(lacme, list(BOUNDS_CASES))
    done, elapsed = run_case(lacme, "", "newOrder", "--force")
    for mode, reason in BOUNDS_CASES.items():
        assert_refused(lacme, done, reason, section=mode)
    assert_installed(lacme, "good")
    assert elapsed < 15


def test_big_chain_refused(lacme):
    done, _ = run_case(lacme, "big-chain", "newOrder", "--force")
    assert_refused(lacme, done, "over the limit")


# ---------------------------------------------------------------- 3. and 4. the deadline

DEADLINE_CASES = ["slow-drip", "stall-after-headers", "slow-headers", "pending-forever",
                  "retry-after-huge", "processing-retry-after-0"]


def test_slow_or_endless_server_cannot_hold_the_run_past_the_deadline(lacme):
    """One byte a second, a stall after the headers, endless pending or processing
    (with Retry-After 0 or a day): each section ends at the deadline, the run too."""
    add_case_sections(lacme, DEADLINE_CASES)
    done, elapsed = run_case(lacme, "", "newOrder", "--force", timeout=TIMEOUT)
    for mode in DEADLINE_CASES:
        assert_refused(lacme, done, "client timeout", section=mode)
    assert_installed(lacme, "good")
    assert TIMEOUT - 1 < elapsed < TIMEOUT + 3
    busy = [o.polls for o in lacme.ca.orders.values()
            if lacme.ca.order_mode(o) == "processing-retry-after-0"]
    assert busy and busy[0] <= TIMEOUT + 3  # Retry-After: 0 means one poll a second at most


def test_retry_after_http_date_honoured(lacme):
    done, _ = run_case(lacme, "retry-after-date", "newOrder", "--force")
    assert done.returncode == 0, done.stderr
    polls = [r.at for r in lacme.ca.requests() if r.path.startswith("/order/")]
    assert max(b - a for a, b in zip(polls, polls[1:])) > 1.5
    assert lacme.notified.exists()


# ---------------------------------------------------------------- 5. nonces

def test_single_bad_nonce_retried(lacme):
    done, _ = run_case(lacme, "bad-nonce-once", "newOrder", "--force")
    assert done.returncode == 0, done.stderr
    assert lacme.cert.read_bytes() != OLD_CERT


def test_bad_nonce_storm_ends_quickly_with_clear_error(lacme):
    done, elapsed = run_case(lacme, "bad-nonce-storm", "newOrder", "--force")
    posts = [r for r in lacme.ca.requests() if r.method == "POST"]
    assert_refused(lacme, done, "badNonce answers in a row")
    assert len(posts) <= 20
    assert elapsed < 10


def test_missing_replay_nonce_fetches_fresh_nonce(lacme):
    done, _ = run_case(lacme, "no-replay-nonce", "newOrder", "--force")
    assert done.returncode == 0, done.stderr
    assert any(r.path == "/nonce" for r in lacme.ca.requests())


# ---------------------------------------------------------------- 6. output

def test_server_text_printed_escaped_one_line_per_section(lacme):
    cases = {"evil-problem": ("rejectedIdentifier", "\\x1b[31mEVIL\\x07\\x0d\\x0a"),
             "evil-identifier": ("not requested", "\\x1b"),
             "problem-odd-types": ("400",)}
    add_case_sections(lacme, list(cases))
    done, _ = run_case(lacme, "", "newOrder", "--force")
    for mode, words in cases.items():
        assert_refused(lacme, done, *words, section=mode)
    assert len(error_lines(done)) == 3
    assert_installed(lacme, "good")


def test_terms_of_service_printed_escaped(lacme):
    done, _ = run_case(lacme, "evil-tos", "account")
    assert done.returncode == 0, done.stderr
    assert "Terms of Service: https://example.com/tos\\x1b[31mEVIL" in done.stderr


# ---------------------------------------------------------------- accountd pinned to the origin

def test_spawned_accountd_is_pinned_to_the_directory_origin(lacme):
    """The master passes the CA origin to the accountd it spawns; a wrapper shows it."""
    wrapper = lacme.root / "accountd-wrapper"
    seen = lacme.root / "origin-seen"
    wrapper.write_text(f"#!/bin/sh\nprintf %s \"$LACME_ACCOUNTD_ORIGIN\" > {seen}\n"
                       f"exec {sys.executable} -m lacme.accountd \"$@\"\n")
    wrapper.chmod(0o755)
    lacme.write(accountd_command=f"env PYTHONPATH={TREE_ROOT} {wrapper}")
    done, _ = lacme.run("newOrder", "--force")
    assert done.returncode == 0, done.stderr
    assert seen.read_text() == lacme.ca.base
    seen.unlink()
    wrapper.unlink()
