"""lacme.master.ari: RFC 9773 certificate IDs from a DER walk, renewalInfo validation."""

from __future__ import annotations

import base64
import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from lacme.master.ari import certificate_facts, parse_renewal_info

ISSUER_KEY = ec.generate_private_key(ec.SECP256R1())
LEAF_KEY = ec.generate_private_key(ec.SECP256R1())


def make_cert(serial: int, *, aki: bool = True, critical_aki: bool = False,
              extra_extensions: bool = True, lifetime: int = 120) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "t.example")])
    start = datetime.datetime(2030, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
               .public_key(LEAF_KEY.public_key()).serial_number(serial)
               .not_valid_before(start).not_valid_after(start + datetime.timedelta(seconds=lifetime)))
    if extra_extensions:
        builder = builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("t.example")]), False)
    if aki:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ISSUER_KEY.public_key()),
            critical_aki)
    return builder.sign(ISSUER_KEY, hashes.SHA256())


def expected_cert_id(cert: x509.Certificate) -> str:
    """RFC 9773 4.1, computed the obvious way with cryptography."""
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
    serial = cert.serial_number.to_bytes((cert.serial_number.bit_length() + 8) // 8, "big")
    b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()  # noqa: E731
    return f"{b64(aki)}.{b64(serial)}"


def test_cert_id_matches_rfc9773_example_encoding():
    # RFC 9773 4.1: keyIdentifier 69:88:5B:6B:..., serial 00:87:65:43:21 -> "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE"
    cert = make_cert(0x87654321)
    facts = certificate_facts(cert.public_bytes(serialization.Encoding.DER))
    assert facts.serial == bytes.fromhex("0087654321")  # the leading zero octet is kept
    assert facts.cert_id == expected_cert_id(cert)
    assert facts.cert_id.endswith(".AIdlQyE")


@settings(max_examples=30, deadline=None)
@given(serial=st.integers(min_value=1, max_value=2 ** 159 - 1), critical=st.booleans(),
       extra=st.booleans(), pem=st.booleans())
def test_cert_id_and_validity_match_cryptography(serial, critical, extra, pem):
    cert = make_cert(serial, critical_aki=critical, extra_extensions=extra)
    encoding = serialization.Encoding.PEM if pem else serialization.Encoding.DER
    facts = certificate_facts(cert.public_bytes(encoding))
    assert facts.cert_id == expected_cert_id(cert)
    assert facts.not_before == cert.not_valid_before_utc
    assert facts.not_after == cert.not_valid_after_utc
    assert facts.lifetime == 121  # notAfter is inclusive


def test_cert_id_absent_without_authority_key_identifier():
    cert = make_cert(5, aki=False)
    facts = certificate_facts(cert.public_bytes(serialization.Encoding.DER))
    assert facts.authority_key_id is None and facts.cert_id is None
    assert facts.serial_hex == "05"


GOOD_DER = make_cert(77).public_bytes(serialization.Encoding.DER)


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=600), cut=st.integers(min_value=0, max_value=700))
def test_malformed_der_raises_value_error_only(data, cut):
    good = GOOD_DER
    for candidate in (data, good[:cut], good[:cut] + data):
        try:
            certificate_facts(candidate)
        except ValueError:
            pass


def window(start: str, end: str, **extra) -> dict:
    return {"suggestedWindow": {"start": start, "end": end}, **extra}


def test_renewal_info_parsed_with_fractions_offsets_and_explanation():
    info = parse_renewal_info(window("2030-01-02T03:00:00.123456789Z", "2030-01-02T05:00:00+01:00",
                                     explanationURL="https://ca.example/why"))
    assert info.start == pytest.approx(datetime.datetime(
        2030, 1, 2, 3, 0, 0, 123456, tzinfo=datetime.timezone.utc).timestamp())
    assert info.end - info.start == pytest.approx(3600 - 0.123456)
    assert info.explanation_url == "https://ca.example/why"


@pytest.mark.parametrize("body, words", [
    ([], "not a JSON object"),
    ({}, "no suggestedWindow"),
    (window("2030-01-02T03:00:00Z", "2030-01-02T03:00:00Z"), "not after its start"),
    (window("2030-01-02T04:00:00Z", "2030-01-02T03:00:00Z"), "not after its start"),
    (window("2030-01-02T03:00:00", "2030-01-02T04:00:00Z"), "no UTC offset"),
    (window("yesterday", "2030-01-02T04:00:00Z"), "not an RFC 3339 date"),
    (window(1893553200, "2030-01-02T04:00:00Z"), "not a date"),
])
def test_renewal_info_invalid_is_refused(body, words):
    with pytest.raises(ValueError, match=words):
        parse_renewal_info(body)


@settings(max_examples=100, deadline=None)
@given(body=st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=40),
                         lambda c: st.lists(c, max_size=3) | st.dictionaries(
                             st.sampled_from(["suggestedWindow", "start", "end", "explanationURL"]),
                             c, max_size=4), max_leaves=12))
def test_renewal_info_arbitrary_json_is_value_error_or_valid(body):
    try:
        info = parse_renewal_info(body)
    except ValueError:
        return
    assert info.end > info.start
