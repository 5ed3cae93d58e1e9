"""``lacme status``: text, JSON, Prometheus textfile and an exit status for monitoring.

The real ``lacme`` program in a subprocess, on certificates made here and a
state file written by lacme.master.state: status contacts nobody, so no CA runs.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from lacme.master.ari import certificate_facts
from lacme.master.state import Entry, StateStore
from tests.lacmeenv import TREE_ROOT

KEY = ec.generate_private_key(ec.SECP256R1())
CA_NAME = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])


def write_cert(path: Path, not_before: float, not_after: float) -> str:
    """A certificate "issued" for the section of the file's name (its names,
    not self-signed, so that only its dates decide)."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{path.stem}.example.org")])
    utc = datetime.timezone.utc
    san = [x509.DNSName(f"{path.stem}.example.org"),
           x509.IPAddress(ipaddress.ip_address("192.0.2.7"))]
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(CA_NAME)
            .add_extension(x509.SubjectAlternativeName(san), False)
            .public_key(KEY.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(datetime.datetime.fromtimestamp(not_before, utc))
            .not_valid_after(datetime.datetime.fromtimestamp(not_after, utc))
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(KEY.public_key()),
                           False)
            .sign(KEY, hashes.SHA256()))
    pem = cert.public_bytes(serialization.Encoding.PEM)
    path.write_bytes(pem)
    return certificate_facts(pem).cert_id


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    (tmp_path / "lacme.conf").write_text(
        f"config-certs = certs.conf\nstate-directory = {tmp_path / 'state'}\n"
        "run-interval = 10\n[client]\nserver = https://127.0.0.1:1/dir\n")
    sections = []
    for name in ("mail", "www"):
        sections.append(f"[{name}]\ncertificate-key = {tmp_path}/{name}.key\n"
                        f"certificate = {tmp_path}/{name}.pem\nsubject = /CN={name}.example.org\n"
                        f"subjectAltName = DNS:{name}.example.org, IP:192.0.2.7\n"
                        "profile = shortlived\n")
    (tmp_path / "certs.conf").write_text("\n".join(sections))
    return tmp_path


def status(conf: Path, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "lacme.master", f"--config={conf / 'lacme.conf'}", "status",
            *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30,
                          env={**os.environ, "PYTHONPATH": str(TREE_ROOT)})


def test_status_all_fresh_exits_zero_with_window_and_moment(conf):
    now = time.time()
    cert_id = write_cert(conf / "www.pem", now - 100, now + 500)
    write_cert(conf / "mail.pem", now - 100, now + 500)
    StateStore(str(conf / "state")).save([Entry(
        "www", str(conf / "www.pem"), cert_id=cert_id, not_after=float(int(now + 500)),
        window_start=now + 250, window_end=now + 320, chosen=now + 300, next_check=now + 60,
        last_outcome="installed", last_attempt=now - 100, last_success=now - 100,
        explanation_url="https://ca.example/why")])
    done = status(conf, "--json")
    assert done.returncode == 0, done.stderr
    report = {s["section"]: s for s in json.loads(done.stdout)}
    www = report["www"]
    assert www["identifiers"] == ["www.example.org", "192.0.2.7"]
    assert www["profile"] == "shortlived" and www["problem"] is None
    assert www["chosen"] == time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now + 300))
    assert www["renew_at"] == www["chosen"]
    assert www["explanation_url"] == "https://ca.example/why"
    assert www["last_outcome"] == "installed"
    assert report["mail"]["window_start"] is None  # nothing learned: the lifetime rule
    assert "no ARI window" in report["mail"]["renew_reason"]


def test_status_text_on_terminal_names_every_fact(conf):
    now = time.time()
    write_cert(conf / "www.pem", now - 100, now + 500)
    write_cert(conf / "mail.pem", now - 100, now + 500)
    done = status(conf, "www")
    assert done.returncode == 0, done.stderr
    for word in ("[www]", "names", "www.example.org, 192.0.2.7", "valid", "ARI window",
                 "chosen moment", "next ARI check", "last outcome", "status          ok"):
        assert word in done.stdout
    assert "[mail]" not in done.stdout


@pytest.mark.parametrize("case, words", [
    ("missing", "no certificate installed"),
    ("expired", "certificate expired"),
    ("near", "near expiry"),
    ("failed", "last renewal failed: urn:ietf:params:acme:error:serverInternal"),
])
def test_status_problem_exits_one(conf, case, words):
    now = time.time()
    write_cert(conf / "mail.pem", now - 100, now + 500)
    if case == "expired":
        write_cert(conf / "www.pem", now - 600, now - 1)
    elif case == "near":
        write_cert(conf / "www.pem", now - 560, now + 40)  # less than 1/8 of 600 s left
    elif case == "failed":
        cert_id = write_cert(conf / "www.pem", now - 100, now + 500)
        StateStore(str(conf / "state")).save([Entry(
            "www", str(conf / "www.pem"), cert_id=cert_id, not_after=float(int(now + 500)),
            last_outcome="failed", last_error="urn:ietf:params:acme:error:serverInternal")])
    done = status(conf, "--json")
    assert done.returncode == 1, done.stderr
    report = {s["section"]: s for s in json.loads(done.stdout)}
    assert words in report["www"]["problem"]
    assert report["mail"]["problem"] is None


def test_status_prometheus_textfile_is_written_atomically(conf):
    now = time.time()
    write_cert(conf / "www.pem", now - 100, now + 500)
    textfile = conf / "lacme.prom"
    done = status(conf, f"--prometheus={textfile}")
    assert done.returncode == 1  # mail has no certificate
    text = textfile.read_text()
    assert f'lacme_certificate_not_after_seconds{{section="www"}} {int(now + 500)}.000' in text
    assert 'lacme_certificate_problem{section="mail"} 1.000' in text
    assert 'lacme_certificate_problem{section="www"} 0.000' in text
    assert "# TYPE lacme_ari_window_start_seconds gauge" in text
    assert 'lacme_certificate_not_after_seconds{section="mail"}' not in text
    assert not [p for p in conf.iterdir() if ".lacme-tmp." in p.name or p.name.endswith(".tmp")]


def test_status_unknown_section_is_usage_error(conf):
    done = status(conf, "nosuch")
    assert done.returncode == 2
    assert "no such section: [nosuch]" in done.stderr


def test_prometheus_label_values_are_escaped():
    from lacme.master.status import prometheus_label
    assert prometheus_label('a"b\\c\nd') == 'a\\"b\\\\c\\nd'
