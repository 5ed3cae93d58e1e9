"""Does the installed certificate follow its section? The DER facts it is
decided from, the no-clobber file creation, ``lacme placeholder``, and the
reasons ``lacme status`` shows, on certificates of a private CA made here:
no CA runs (tests/test_drift_e2e.py renews against Pebble)."""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from lacme.core.atomic import TEMP_MARK, create_file
from lacme.core.errors import LacmeError
from lacme.master.ari import certificate_facts
from lacme.master.state import Entry, StateStore
from lacme.x509.der import PLACEHOLDER_OU
from tests.lacmeenv import TREE_ROOT, write_key

KEYS = [ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP384R1()),
        rsa.generate_private_key(public_exponent=65537, key_size=2048)]
CA_KEY = ec.generate_private_key(ec.SECP256R1())
CA_NAME = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "drift test CA")])
NOW = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
SPKI = serialization.PublicFormat.SubjectPublicKeyInfo
DER = serialization.Encoding.DER


def issue(key, names: list[str], ips: tuple[str, ...] = (), *, ca_key=CA_KEY, ca_name=CA_NAME,
          self_signed: bool = False, ou: str | None = None) -> x509.Certificate:
    """A leaf for ``key`` from the private CA (or self-signed)."""
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, names[0] if names else "x")]
    if ou:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ou))
    subject = x509.Name(attrs)
    san = [x509.DNSName(n) for n in names] + [x509.IPAddress(ipaddress.ip_address(a)) for a in ips]
    builder = (x509.CertificateBuilder().subject_name(subject)
               .issuer_name(subject if self_signed else ca_name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(NOW - datetime.timedelta(days=1))
               .not_valid_after(NOW + datetime.timedelta(days=89))
               .add_extension(x509.SubjectAlternativeName(san), False))
    if not self_signed:  # what a path validation asks of a leaf
        builder = (builder
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                       ca_key.public_key()), False)
                   .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False))
    return builder.sign(key if self_signed else ca_key, hashes.SHA256())


def ca_cert(key=CA_KEY, name=CA_NAME) -> x509.Certificate:
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(NOW - datetime.timedelta(days=10))
            .not_valid_after(NOW + datetime.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=True, crl_sign=True,
                                         encipher_only=False, decipher_only=False), True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256()))


def pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


# ---------------------------------------------------------------- the DER walk

LABEL = st.from_regex(r"[A-Za-z0-9]([A-Za-z0-9-]{0,8}[A-Za-z0-9])?", fullmatch=True)
DNS = st.builds(lambda labels: ".".join(labels), st.lists(LABEL, min_size=2, max_size=4))
OTHER = st.one_of(
    st.builds(x509.RFC822Name, st.just("ops@example.com")),
    st.builds(x509.UniformResourceIdentifier, st.just("https://example.com/")),
    st.just(x509.DirectoryName(CA_NAME)))
ENTRY = st.one_of(st.builds(x509.DNSName, DNS), st.builds(x509.IPAddress, st.ip_addresses()),
                  OTHER)


@settings(max_examples=150, deadline=None)
@given(entries=st.one_of(st.none(), st.lists(ENTRY, min_size=1, max_size=6)),
       key_index=st.integers(0, len(KEYS) - 1), self_signed=st.booleans(),
       ou=st.sampled_from([None, PLACEHOLDER_OU, "Ops", "lacme placeholder2"]),
       encoding=st.sampled_from([serialization.Encoding.DER, serialization.Encoding.PEM]))
def test_der_facts_names_spki_and_self_signed_match_cryptography(entries, key_index, self_signed,
                                                                  ou, encoding):
    key = KEYS[key_index]
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, "t.example")]
    if ou:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ou))
    subject = x509.Name(attrs)
    builder = (x509.CertificateBuilder().subject_name(subject)
               .issuer_name(subject if self_signed else CA_NAME)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(NOW).not_valid_after(NOW + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), True))
    if entries is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(entries), False)
    builder = builder.add_extension(
        x509.AuthorityKeyIdentifier.from_issuer_public_key(CA_KEY.public_key()), False)
    cert = builder.sign(CA_KEY, hashes.SHA256())
    facts = certificate_facts(cert.public_bytes(encoding))
    dns = [e.value.lower() for e in entries or () if isinstance(e, x509.DNSName)]
    ips = [str(e.value) for e in entries or () if isinstance(e, x509.IPAddress)]
    others = [e for e in entries or () if not isinstance(e, (x509.DNSName, x509.IPAddress))]
    assert facts.names == tuple(dict.fromkeys(dns))
    assert facts.ip_addresses == tuple(dict.fromkeys(ips))
    assert facts.other_names == len(others)
    assert facts.spki == cert.public_key().public_bytes(DER, SPKI)
    assert facts.self_signed is (cert.issuer.public_bytes() == cert.subject.public_bytes())
    assert facts.placeholder is (self_signed and ou == PLACEHOLDER_OU)


def test_der_facts_refuse_a_truncated_subject_alt_name():
    cert = issue(KEYS[0], ["a.example.com", "b.example.com"])
    der = bytearray(cert.public_bytes(DER))
    san = der.find(b"\x82\x0da.example.com")
    der[san + 1] = 0x7F  # the dNSName now runs past its GeneralNames
    with pytest.raises(ValueError):
        certificate_facts(bytes(der))


# ---------------------------------------------------------------- create_file

def test_create_file_writes_where_nothing_is(tmp_path):
    path = tmp_path / "cert.pem"
    assert create_file(str(path), b"data", 0o640) is True
    assert path.read_bytes() == b"data"
    assert path.stat().st_mode & 0o777 == 0o640
    assert path.stat().st_nlink == 1  # the temporary's name is gone
    assert [p.name for p in tmp_path.iterdir()] == ["cert.pem"]


@pytest.mark.parametrize("existing", ["file", "dangling symlink", "directory"])
def test_create_file_leaves_whatever_is_there_alone(tmp_path, existing):
    path = tmp_path / "cert.pem"
    if existing == "file":
        path.write_bytes(b"real certificate")
    elif existing == "dangling symlink":
        path.symlink_to(tmp_path / "elsewhere.pem")
    else:
        path.mkdir()
    assert create_file(str(path), b"placeholder", 0o644) is False
    if existing == "file":
        assert path.read_bytes() == b"real certificate"
    elif existing == "dangling symlink":
        assert path.is_symlink() and not (tmp_path / "elsewhere.pem").exists()
    else:
        assert path.is_dir()
    assert not [p for p in tmp_path.iterdir() if TEMP_MARK in p.name]


def test_create_file_in_missing_directory_is_one_error_naming_it(tmp_path):
    with pytest.raises(LacmeError, match=f"^{tmp_path}/nodir/cert.pem: directory: no such file"):
        create_file(str(tmp_path / "nodir" / "cert.pem"), b"x", 0o644)


# ---------------------------------------------------------------- the program

@pytest.fixture
def conf(tmp_path: Path) -> Path:
    """lacme.conf and lacme-certs.conf with [www] and [mail], CAfile the private CA."""
    (tmp_path / "ca.pem").write_bytes(pem(ca_cert()))
    (tmp_path / "lacme.conf").write_text(
        f"config-certs = certs.conf\nstate-directory = {tmp_path / 'state'}\n"
        "[client]\nserver = https://127.0.0.1:1/dir\n")
    write_key(tmp_path / "www.key", "p256")
    write_key(tmp_path / "mail.key", "p256")
    write_certs(tmp_path, "www.example.com, DNS:alt.example.com")
    return tmp_path


def write_certs(conf: Path, www_names: str) -> None:
    sections = []
    for name, names in (("www", www_names), ("mail", "mail.example.com")):
        sections.append(f"[{name}]\ncertificate-key = {conf}/{name}.key\n"
                        f"certificate = {conf}/{name}.crt\n"
                        f"certificate-chain = {conf}/{name}.chain.pem\n"
                        f"subject = /CN={names.split(',')[0]}\nsubjectAltName = DNS:{names}\n"
                        f"CAfile = {conf}/ca.pem\n")
    (conf / "certs.conf").write_text("\n".join(sections))


def lacme(conf: Path, *args: str, probe: bool = False) -> subprocess.CompletedProcess[str]:
    """The real program; ``probe``: also print the heavy modules it imported."""
    argv = [sys.executable, "-m", "lacme.master", f"--config={conf / 'lacme.conf'}", *args]
    if probe:
        script = (f"import sys, runpy; sys.argv = {['lacme', *argv[3:]]!r}\n"
                  "try:\n    runpy.run_module('lacme.master', run_name='__main__')\n"
                  "except SystemExit as e:\n    code = e.code\n"
                  "print('IMPORTED', sorted(m for m in sys.modules if m.split('.')[0] in "
                  "('cryptography', 'socket', 'ssl') or m == 'lacme.x509.chain'))\n")
        argv = [sys.executable, "-c", script]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(TREE_ROOT)})


def install(conf: Path, name: str, cert: x509.Certificate, *chain: x509.Certificate) -> None:
    (conf / f"{name}.crt").write_bytes(pem(cert))
    (conf / f"{name}.chain.pem").write_bytes(pem(cert, *chain))


def load_key(path: Path):
    return serialization.load_pem_private_key(path.read_bytes(), None)


def reasons(conf: Path) -> dict[str, str]:
    done = lacme(conf, "status", "--json")
    assert done.returncode in (0, 1), done.stderr
    return {s["section"]: s["renew_reason"] for s in json.loads(done.stdout)}


def install_matching(conf: Path) -> None:
    """Certificates that fit [www] and [mail], and a state in which no
    renewalInfo check is due (the CA is unreachable)."""
    install(conf, "www", issue(load_key(conf / "www.key"), ["www.example.com", "alt.example.com"]),
            ca_cert())
    install(conf, "mail", issue(load_key(conf / "mail.key"), ["mail.example.com"]), ca_cert())
    entries = []
    for name in ("www", "mail"):
        path = conf / f"{name}.chain.pem"
        facts = certificate_facts(path.read_bytes())
        entries.append(Entry(name, str(path), cert_id=facts.cert_id,
                             not_before=facts.not_before.timestamp(),
                             not_after=facts.not_after.timestamp(),
                             next_check=NOW.timestamp() + 86400))
    assert StateStore(str(conf / "state")).save(entries)


def test_status_shows_why_a_certificate_no_longer_follows_its_section(conf):
    install_matching(conf)
    assert "(no ARI window)" in reasons(conf)["www"]
    write_certs(conf, "www.example.com, DNS:alt.example.com, DNS:new.example.com")
    assert reasons(conf)["www"] == "names changed (+new.example.com)"
    write_certs(conf, "www.example.com")
    assert reasons(conf)["www"] == "names changed (-alt.example.com)"
    write_certs(conf, "www.example.com, DNS:alt.example.com")
    write_key(conf / "www.key", "p256")
    assert reasons(conf)["www"] == "key changed"
    key = load_key(conf / "www.key")
    install(conf, "www", issue(key, ["www.example.com", "alt.example.com"], self_signed=True))
    assert reasons(conf)["www"] == "self-signed"
    install(conf, "www", issue(key, ["www.example.com", "alt.example.com"], self_signed=True,
                               ou=PLACEHOLDER_OU))
    assert reasons(conf)["www"] == "placeholder"
    other_key = ec.generate_private_key(ec.SECP256R1())
    other_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "another CA")])
    install(conf, "www", issue(key, ["www.example.com", "alt.example.com"], ca_key=other_key,
                               ca_name=other_name), ca_cert(other_key, other_name))
    assert reasons(conf)["www"] == "not from CAfile"
    assert "(no ARI window)" in reasons(conf)["mail"]  # the other section fits throughout


def test_new_order_matching_certificates_are_a_no_op_without_cryptography(conf):
    install_matching(conf)
    first = lacme(conf, "newOrder", probe=True)  # learns the keys' and chains' facts
    assert first.returncode == 0, first.stderr
    assert "renewing" not in first.stderr and "skipping" in first.stderr
    state = json.loads((conf / "state" / "renewal.json").read_text())["entries"]
    assert {e["section"]: e["cafile_ok"] for e in state} == {"www": True, "mail": True}
    second = lacme(conf, "newOrder", probe=True)
    assert second.returncode == 0, second.stderr
    assert "IMPORTED []" in second.stdout, second.stdout
    # Touched but unchanged: learned again once, still no renewal, then cheap again.
    os.utime(conf / "www.key")
    third = lacme(conf, "newOrder", probe=True)
    assert third.returncode == 0 and "renewing" not in third.stderr, third.stderr
    assert "cryptography" in third.stdout
    assert "IMPORTED []" in lacme(conf, "newOrder", probe=True).stdout


def test_new_order_replaced_key_is_due_at_once(conf):
    install_matching(conf)
    assert lacme(conf, "newOrder").returncode == 0
    write_key(conf / "www.key", "p256")
    # due: an order for www only, whose components cannot start here (exit 2,
    # one line naming the webserver command): mail was decided fresh, www due
    done = lacme(conf, "newOrder")
    assert done.returncode == 2 and "[mail] valid until" in done.stderr, done.stderr
    # the components start only when a section is due: www is (mail is not)
    assert "[webserver] command" in done.stderr, done.stderr


# ---------------------------------------------------------------- placeholder

def test_placeholder_writes_self_signed_certificate_of_the_section_key(conf):
    done = lacme(conf, "placeholder", "www")
    assert done.returncode == 0, done.stderr
    for path in (conf / "www.crt", conf / "www.chain.pem"):
        cert = x509.load_pem_x509_certificate(path.read_bytes())
        assert cert.issuer == cert.subject
        assert cert.public_key().public_bytes(DER, SPKI) == \
            load_key(conf / "www.key").public_key().public_bytes(DER, SPKI)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.DNSName) == ["www.example.com", "alt.example.com"]
    assert not (conf / "mail.crt").exists()
    assert reasons(conf)["www"] == "placeholder"


def test_placeholder_never_touches_an_existing_certificate(conf):
    install_matching(conf)
    (conf / "mail.crt").unlink()  # one of the two files is enough to leave a section alone
    before = {p.name: p.read_bytes() for p in conf.iterdir() if p.suffix in (".crt", ".pem")}
    done = lacme(conf, "placeholder")
    assert done.returncode == 0, done.stderr
    after = {p.name: p.read_bytes() for p in conf.iterdir() if p.suffix in (".crt", ".pem")}
    assert after == before
    assert not [p for p in conf.iterdir() if TEMP_MARK in p.name]


def test_placeholder_missing_key_is_one_error_naming_the_setting(conf):
    (conf / "mail.key").unlink()
    done = lacme(conf, "placeholder")
    assert done.returncode == 1
    lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert lines == [f"error: {conf}/certs.conf [mail] certificate-key: {conf}/mail.key: "
                     "no such file (a placeholder is made with it)"], done.stderr
    assert "Traceback" not in done.stderr
    assert not (conf / "mail.crt").exists() and not (conf / "mail.chain.pem").exists()
    assert (conf / "www.crt").exists()  # the other section still got its placeholder


def test_placeholder_unknown_section_is_a_usage_error(conf):
    done = lacme(conf, "placeholder", "nosuch")
    assert done.returncode == 2 and "no such section: [nosuch]" in done.stderr
    assert not (conf / "www.crt").exists()
