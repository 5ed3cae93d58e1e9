"""Tests for lacme.x509: service keys (keys), CSRs (csr), chain parsing and verification (chain).

A throwaway CA (root -> intermediate -> leaf) is built with cryptography in
this file; check_issued is run against it with a real CA bundle on disk.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from lacme.core.errors import CertificateError, ConfigError, LacmeError
from lacme.x509 import cafile as x509cafile
from lacme.x509 import chain as x509chain
from lacme.x509 import csr as x509csr
from lacme.x509 import keys as x509keys

NOW = datetime.now(timezone.utc).replace(microsecond=0)
DAY = timedelta(days=1)
PEM = serialization.Encoding.PEM


def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec_key()


def ca_certificate(subject: str, key, issuer: str, issuer_key, *, pathlen: int | None):
    """A CA certificate with the extensions the web PKI policy wants."""
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key())
    return (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOW - 30 * DAY).not_valid_after(NOW + 3650 * DAY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=pathlen), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                         False), critical=True)
            .add_extension(ski, critical=False)
            .add_extension(aki, critical=False)
            .sign(issuer_key, hashes.SHA256()))


@dataclass(frozen=True)
class CA:
    """A root and an intermediate that issues leaves."""

    root: x509.Certificate
    root_key: ec.EllipticCurvePrivateKey
    inter: x509.Certificate
    inter_key: ec.EllipticCurvePrivateKey

    def issue(self, public_key, names, *, not_before=None, not_after=None) -> x509.Certificate:
        return (x509.CertificateBuilder()
                .subject_name(x509.Name([]))
                .issuer_name(self.inter.subject)
                .public_key(public_key)
                .serial_number(x509.random_serial_number())
                .not_valid_before(not_before or NOW - DAY)
                .not_valid_after(not_after or NOW + 90 * DAY)
                .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]),
                               critical=True)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(True, False, False, False, False, False, False,
                                             False, False), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                               critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                    self.inter_key.public_key()), critical=False)
                .sign(self.inter_key, hashes.SHA256()))


def make_ca(name: str = "Test") -> CA:
    root_key, inter_key = ec_key(), ec_key()
    root = ca_certificate(f"{name} Root", root_key, f"{name} Root", root_key, pathlen=None)
    inter = ca_certificate(f"{name} Intermediate", inter_key, f"{name} Root", root_key,
                           pathlen=0)
    return CA(root, root_key, inter, inter_key)


CA_MAIN = make_ca("Main")
CA_OTHER = make_ca("Other")
NAMES = ["www.example.test", "example.test"]


@pytest.fixture
def cafile(tmp_path: Path) -> str:
    path = tmp_path / "roots.pem"
    path.write_bytes(b"# a comment\n" + CA_MAIN.root.public_bytes(PEM))
    return str(path)


def csr_for(key, names=NAMES) -> bytes:
    return x509csr.build_csr(key, [("CN", names[0])], names)


def good_chain(key=EC_KEY, names=NAMES, ca=CA_MAIN, **kw) -> list[x509.Certificate]:
    return [ca.issue(key.public_key(), names, **kw), ca.inter]


def pem_of(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(PEM) for c in certs)


# -- load_private_key -------------------------------------------------------

@pytest.mark.parametrize("fmt", [serialization.PrivateFormat.PKCS8,
                                 serialization.PrivateFormat.TraditionalOpenSSL])
@pytest.mark.parametrize("key", [RSA_KEY, EC_KEY], ids=["rsa", "ec"])
def test_load_private_key_reads_pkcs8_and_traditional(tmp_path, key, fmt):
    path = tmp_path / "key.pem"
    path.write_bytes(key.private_bytes(PEM, fmt, serialization.NoEncryption()))
    loaded = x509keys.load_private_key(str(path))
    assert loaded.private_numbers() == key.private_numbers()


def test_load_private_key_missing_file_names_path(tmp_path):
    path = tmp_path / "nope.pem"
    with pytest.raises(LacmeError, match=f"^{path}: no such file$"):
        x509keys.load_private_key(str(path))


def test_load_private_key_refuses_certificate(tmp_path):
    path = tmp_path / "cert.pem"
    path.write_bytes(pem_of(CA_MAIN.root))
    with pytest.raises(LacmeError, match=f"^{path}: not a PEM private key$"):
        x509keys.load_private_key(str(path))


def test_load_private_key_refuses_encrypted(tmp_path):
    path = tmp_path / "enc.pem"
    path.write_bytes(EC_KEY.private_bytes(PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.BestAvailableEncryption(b"pw")))
    with pytest.raises(LacmeError, match=f"^{path}: encrypted private key"):
        x509keys.load_private_key(str(path))


def test_load_private_key_refuses_ed25519(tmp_path):
    path = tmp_path / "ed.pem"
    path.write_bytes(ed25519.Ed25519PrivateKey.generate().private_bytes(
        PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    with pytest.raises(LacmeError, match="unsupported key type"):
        x509keys.load_private_key(str(path))


# -- build_csr ----------------------------------------------------------------

@pytest.mark.parametrize("key", [RSA_KEY, EC_KEY], ids=["rsa", "ec"])
def test_build_csr_puts_subject_and_every_name_in_san(key):
    subject = [("C", "FR"), ("O", "Example"), ("OU", "Ops"), ("emailAddress", "a@example.test"),
               ("DC", "example"), ("CN", "cn.example.test")]
    der = x509csr.build_csr(key, subject, ["a.example.test", "b.example.test"])
    csr = x509.load_der_x509_csr(der)
    assert csr.is_signature_valid
    assert [(a.oid, a.value) for a in csr.subject] == [
        (NameOID.COUNTRY_NAME, "FR"), (NameOID.ORGANIZATION_NAME, "Example"),
        (NameOID.ORGANIZATIONAL_UNIT_NAME, "Ops"), (NameOID.EMAIL_ADDRESS, "a@example.test"),
        (NameOID.DOMAIN_COMPONENT, "example"), (NameOID.COMMON_NAME, "cn.example.test")]
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.value.get_values_for_type(x509.DNSName) == [
        "a.example.test", "b.example.test", "cn.example.test"]
    assert not san.critical
    assert isinstance(csr.signature_hash_algorithm, hashes.SHA256)
    assert x509keys.csr_public_key_der(der) == x509keys.spki_der(key.public_key())


def test_build_csr_cn_already_in_names_is_not_repeated():
    der = x509csr.build_csr(EC_KEY, [("CN", "WWW.example.test")], ["www.example.test", "x.test"])
    san = x509.load_der_x509_csr(der).extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["www.example.test", "x.test"]


def test_build_csr_cn_that_is_not_a_host_name_stays_out_of_san():
    subject = [("CN", "My Service"), ("O", "Example")]
    assert x509csr.requested_names(subject, ["a.example.test"]) == ["a.example.test"]
    der = x509csr.build_csr(EC_KEY, subject, ["a.example.test"])
    csr = x509.load_der_x509_csr(der)
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["a.example.test"]
    assert csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "My Service"


def test_build_csr_accepts_long_and_ev_attribute_names():
    subject = [("commonName", "a.example.test"), ("jurisdictionC", "FR"),
               ("organizationIdentifier", "VATFR-123"), ("businessCategory", "Private")]
    csr = x509.load_der_x509_csr(x509csr.build_csr(EC_KEY, subject, []))
    assert [a.oid for a in csr.subject] == [
        NameOID.COMMON_NAME, NameOID.JURISDICTION_COUNTRY_NAME,
        NameOID.ORGANIZATION_IDENTIFIER, NameOID.BUSINESS_CATEGORY]
    assert x509csr.requested_names(subject, []) == ["a.example.test"]


def test_build_csr_empty_subject_makes_san_critical():
    der = x509csr.build_csr(EC_KEY, [], ["a.example.test"])
    csr = x509.load_der_x509_csr(der)
    assert len(csr.subject) == 0
    assert csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).critical


def test_build_csr_key_usage_is_critical():
    der = x509csr.build_csr(RSA_KEY, [("CN", "a.test")], [],
                       key_usage=["digitalSignature", "keyEncipherment"])
    ext = x509.load_der_x509_csr(der).extensions.get_extension_for_class(x509.KeyUsage)
    assert ext.critical
    assert ext.value.digital_signature and ext.value.key_encipherment
    assert not ext.value.key_agreement and not ext.value.content_commitment


def test_build_csr_tls_feature_status_request():
    der = x509csr.build_csr(EC_KEY, [("CN", "a.test")], [],
                       tlsfeature=["status_request", "status_request_v2"])
    ext = x509.load_der_x509_csr(der).extensions.get_extension_for_class(x509.TLSFeature)
    assert list(ext.value) == [x509.TLSFeatureType.status_request,
                               x509.TLSFeatureType.status_request_v2]


def test_build_csr_without_options_has_only_san():
    csr = x509.load_der_x509_csr(x509csr.build_csr(EC_KEY, [("CN", "a.test")], []))
    assert [type(e.value) for e in csr.extensions] == [x509.SubjectAlternativeName]


@pytest.mark.parametrize("name,cls", [("sha384", hashes.SHA384), ("SHA512", hashes.SHA512),
                                      (None, hashes.SHA256)])
def test_build_csr_hash_selects_digest(name, cls):
    der = x509csr.build_csr(RSA_KEY, [("CN", "a.test")], [], hash_name=name)
    assert isinstance(x509.load_der_x509_csr(der).signature_hash_algorithm, cls)


@pytest.mark.parametrize("kwargs,message", [
    ({"subject": [("XX", "v")]}, "^subject: unknown attribute type 'XX'$"),
    ({"key_usage": ["signEverything"]}, "^keyUsage: unknown key usage 'signEverything'$"),
    ({"tlsfeature": ["must_staple"]}, "^tlsfeature: unknown TLS feature 'must_staple'$"),
    ({"hash_name": "md5"}, "^hash: unsupported digest 'md5'"),
    ({"subject": [("O", "x")], "names": []}, "^subjectAltName: no DNS name"),
    ({"subject": [("C", "FRA")]}, "^subject: C=FRA: "),
    ({"names": ["bücher.example"]}, "^subjectAltName: bücher.example: not ASCII"),
    ({"key_usage": ["encipherOnly"]}, "^keyUsage: "),
])
def test_build_csr_refuses_unknown_values(kwargs, message):
    args = {"subject": [("CN", "a.test")], "names": ["a.test"], **kwargs}
    with pytest.raises(ConfigError, match=message):
        x509csr.build_csr(EC_KEY, args.pop("subject"), args.pop("names"), **args)


def test_csr_public_key_der_refuses_garbage():
    with pytest.raises(CertificateError, match="^CSR: "):
        x509keys.csr_public_key_der(b"\x30\x03\x02\x01\x00")


# -- parse_chain / chain_pem -------------------------------------------------

def test_parse_chain_splits_leaf_first_and_chain_pem_round_trips():
    chain = good_chain()
    text = b"\n" + pem_of(*chain).replace(b"\n", b"\r\n") + b"\n\n"
    parsed = x509chain.parse_chain(text)
    assert parsed == chain
    leaf, full = x509chain.chain_pem(parsed)
    assert leaf == pem_of(chain[0])
    assert full == pem_of(*chain)
    assert x509chain.chain_der(parsed) == [c.public_bytes(serialization.Encoding.DER) for c in chain]


@pytest.mark.parametrize("text,message", [
    (b"", "no certificate"),
    (b"  \n", "no certificate"),
    (b"hello\n" + pem_of(CA_MAIN.inter), "garbage before PEM block 1"),
    (pem_of(CA_MAIN.inter) + b"junk\n" + pem_of(CA_MAIN.root), "garbage before PEM block 2"),
    (pem_of(CA_MAIN.inter) + b"trailing", "garbage after the last PEM block"),
    (pem_of(CA_MAIN.inter) + EC_KEY.private_bytes(
        PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
     "unexpected PEM block 'PRIVATE KEY'"),
    (b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "not valid DER"),
    (b"-----BEGIN CERTIFICATE-----\nA*AA\n-----END CERTIFICATE-----\n", "garbage"),
    ("é".encode(), "not ASCII"),
])
def test_parse_chain_refuses_non_certificate_input(text, message):
    with pytest.raises(CertificateError, match=f"^issued chain: .*{message}"):
        x509chain.parse_chain(text)


def test_parse_chain_refuses_too_long_chain():
    with pytest.raises(CertificateError, match="more than 10 certificates"):
        x509chain.parse_chain(pem_of(*[CA_MAIN.inter] * 11))
    assert len(x509chain.parse_chain(pem_of(*[CA_MAIN.inter] * 10))) == 10


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_parse_chain_arbitrary_input_only_raises_certificate_error(data):
    try:
        chain = x509chain.parse_chain(data)
    except CertificateError:
        return
    assert all(isinstance(c, x509.Certificate) for c in chain)


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 2000), st.binary(min_size=1, max_size=3))
def test_parse_chain_corrupted_pem_only_raises_certificate_error(offset, junk):
    text = bytearray(pem_of(*good_chain()))
    text[offset % len(text):offset % len(text) + len(junk)] = junk
    try:
        x509chain.parse_chain(bytes(text))
    except CertificateError:
        pass


# -- check_issued -------------------------------------------------------------

@pytest.mark.parametrize("key", [RSA_KEY, EC_KEY], ids=["rsa", "ec"])
def test_check_issued_accepts_good_chain(cafile, key):
    x509chain.check_issued(good_chain(key), csr_for(key), NAMES, cafile)


def test_check_issued_accepts_names_case_insensitively(cafile):
    x509chain.check_issued(good_chain(), csr_for(EC_KEY), ["WWW.Example.test", "example.TEST"], cafile)


def test_check_issued_accepts_wildcard(cafile):
    names = ["*.example.test", "example.test"]
    x509chain.check_issued(good_chain(names=names), csr_for(EC_KEY, names), names, cafile)


def test_check_issued_refuses_other_key(cafile):
    with pytest.raises(CertificateError, match="public key differs from the CSR's"):
        x509chain.check_issued(good_chain(EC_KEY), csr_for(ec_key()), NAMES, cafile)


def test_check_issued_refuses_missing_name(cafile):
    with pytest.raises(CertificateError, match="missing names new.example.test$"):
        x509chain.check_issued(good_chain(), csr_for(EC_KEY), [*NAMES, "new.example.test"], cafile)


def test_check_issued_refuses_extra_name(cafile):
    chain = good_chain(names=[*NAMES, "evil.test"])
    with pytest.raises(CertificateError, match="unrequested names evil.test$"):
        x509chain.check_issued(chain, csr_for(EC_KEY), NAMES, cafile)


def test_check_issued_refuses_expired_leaf(cafile):
    chain = good_chain(not_before=NOW - 100 * DAY, not_after=NOW - DAY)
    with pytest.raises(CertificateError, match="expired at 20"):
        x509chain.check_issued(chain, csr_for(EC_KEY), NAMES, cafile)


def test_check_issued_refuses_not_yet_valid_leaf(cafile):
    chain = good_chain(not_before=NOW + DAY)
    with pytest.raises(CertificateError, match="not valid before 20"):
        x509chain.check_issued(chain, csr_for(EC_KEY), NAMES, cafile)


def test_check_issued_honours_now(cafile):
    later = NOW + 91 * DAY
    with pytest.raises(CertificateError, match="expired"):
        x509chain.check_issued(good_chain(), csr_for(EC_KEY), NAMES, cafile, now=later)


def test_check_issued_refuses_chain_to_other_root(cafile):
    chain = good_chain(ca=CA_OTHER)
    with pytest.raises(CertificateError, match=f"does not verify against {cafile} for "):
        x509chain.check_issued(chain, csr_for(EC_KEY), NAMES, cafile)


def test_check_issued_refuses_broken_link(cafile):
    leaf = CA_MAIN.issue(EC_KEY.public_key(), NAMES)
    with pytest.raises(CertificateError, match="certificate 2 did not issue certificate 1"):
        x509chain.check_issued([leaf, CA_OTHER.inter], csr_for(EC_KEY), NAMES, cafile)
    with pytest.raises(CertificateError, match="certificate 2 did not issue certificate 1"):
        x509chain.check_issued([leaf, CA_OTHER.inter], csr_for(EC_KEY), NAMES, "")  # even unchecked
    with pytest.raises(CertificateError, match="does not verify against"):
        x509chain.check_issued([leaf], csr_for(EC_KEY), NAMES, cafile)


def test_check_issued_refuses_too_long_chain(cafile):
    chain = good_chain() + [CA_MAIN.inter] * 10
    with pytest.raises(CertificateError, match="more than 10 certificates"):
        x509chain.check_issued(chain, csr_for(EC_KEY), NAMES, cafile)


def test_check_issued_refuses_empty_chain(cafile):
    with pytest.raises(CertificateError, match="no certificate"):
        x509chain.check_issued([], csr_for(EC_KEY), NAMES, cafile)


def test_check_issued_missing_cafile_names_it(tmp_path):
    path = tmp_path / "none.pem"
    with pytest.raises(CertificateError, match=f"^{path}: no such file$"):
        x509chain.check_issued(good_chain(), csr_for(EC_KEY), NAMES, str(path))


def test_check_issued_empty_cafile_skips_chain_but_checks_key_and_names():
    x509chain.check_issued(good_chain(ca=CA_OTHER), csr_for(EC_KEY), NAMES, "")
    with pytest.raises(CertificateError, match="public key differs"):
        x509chain.check_issued(good_chain(ca=CA_OTHER), csr_for(ec_key()), NAMES, "")
    with pytest.raises(CertificateError, match="missing names"):
        x509chain.check_issued(good_chain(ca=CA_OTHER), csr_for(EC_KEY), ["z.test"], "")


def test_check_issued_default_cafile_refuses_private_ca():
    assert x509chain.default_cafile() in (x509cafile.DEFAULT_CAFILE, x509cafile.SYSTEM_CAFILE)
    with pytest.raises(CertificateError, match=f"against {x509chain.default_cafile()} for"):
        x509chain.check_issued(good_chain(), csr_for(EC_KEY), NAMES, None)


# -- public_key_thumbprint ----------------------------------------------------

def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_public_key_thumbprint_matches_rfc7638_example():
    # RFC 7638 section 3.1: this RSA key's thumbprint.
    n = ("0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6"
         "tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v"
         "-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08"
         "qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8"
         "awapJzKnqDKgw")
    n_int = int.from_bytes(base64.urlsafe_b64decode(n + "=="), "big")
    public = rsa.RSAPublicNumbers(65537, n_int).public_key()
    cert = (x509.CertificateBuilder().subject_name(x509.Name([])).issuer_name(CA_MAIN.root.subject)
            .public_key(public).serial_number(1).not_valid_before(NOW)
            .not_valid_after(NOW + DAY).sign(CA_MAIN.root_key, hashes.SHA256()))
    expected = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
    assert x509chain.public_key_thumbprint(cert.public_bytes(PEM)) == expected
    assert x509chain.public_key_thumbprint(cert.public_bytes(serialization.Encoding.DER)) == expected


@pytest.mark.parametrize("curve,crv,size", [(ec.SECP256R1(), "P-256", 32),
                                            (ec.SECP384R1(), "P-384", 48)])
def test_public_key_thumbprint_ec_pads_coordinates(curve, crv, size):
    key = ec.generate_private_key(curve)
    numbers = key.public_key().public_numbers()
    jwk = {"crv": crv, "kty": "EC", "x": b64url(numbers.x.to_bytes(size, "big")),
           "y": b64url(numbers.y.to_bytes(size, "big"))}
    canonical = json.dumps(jwk, sort_keys=True, separators=(",", ":")).encode()
    leaf = CA_MAIN.issue(key.public_key(), ["a.test"])
    assert x509chain.public_key_thumbprint(leaf.public_bytes(PEM)) == b64url(
        hashlib.sha256(canonical).digest())


def test_public_key_thumbprint_empty_for_keys_no_accountd_holds():
    # P-521 (no ES512 in accountd): never equal to accountd's thumbprint
    leaf = CA_MAIN.issue(ec.generate_private_key(ec.SECP521R1()).public_key(), ["a.test"])
    assert x509chain.public_key_thumbprint(leaf.public_bytes(PEM)) == ""


def test_public_key_thumbprint_refuses_garbage():
    with pytest.raises(CertificateError, match="neither PEM nor DER"):
        x509chain.public_key_thumbprint(b"not a certificate")
