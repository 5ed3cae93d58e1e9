"""Tests for the DER walk of lacme.x509.der and lacme.master.ari: notAfter read
without cryptography, as the master's renewal decision does.

Certificates are generated with cryptography (UTCTime before 2050,
GeneralizedTime from 2050 on) and the result compared with cryptography's
own reading; malformed input must raise ValueError and nothing else.
"""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st

from lacme.master.ari import certificate_facts


def not_after(data: bytes) -> datetime:
    """notAfter through the one DER walk the master uses."""
    return certificate_facts(data).not_after

TREE_ROOT = Path(__file__).resolve().parent.parent
KEY = ec.generate_private_key(ec.SECP256R1())
NAME = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "dates.test")])


def certificate(after: datetime) -> x509.Certificate:
    return (x509.CertificateBuilder().subject_name(NAME).issuer_name(NAME)
            .public_key(KEY.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(datetime(1950, 1, 1, tzinfo=timezone.utc))
            .not_valid_after(after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(KEY, hashes.SHA256()))


def der_of(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def pem_of(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


DATES = st.datetimes(min_value=datetime(1950, 1, 1), max_value=datetime(9999, 12, 31),
                     timezones=st.just(timezone.utc)).map(lambda d: d.replace(microsecond=0))


@settings(max_examples=150, deadline=None)
@given(DATES)
def test_not_after_matches_cryptography_for_any_date(when):
    cert = certificate(when)
    assert not_after(der_of(cert)) == cert.not_valid_after_utc == when
    assert not_after(pem_of(cert)) == when


@pytest.mark.parametrize("when,tag", [
    (datetime(1950, 1, 1, tzinfo=timezone.utc), 0x17),
    (datetime(1999, 12, 31, 23, 59, 59, tzinfo=timezone.utc), 0x17),
    (datetime(2000, 1, 1, tzinfo=timezone.utc), 0x17),
    (datetime(2049, 12, 31, 23, 59, 59, tzinfo=timezone.utc), 0x17),
    (datetime(2050, 1, 1, tzinfo=timezone.utc), 0x18),
    (datetime(9999, 12, 31, 23, 59, 59, tzinfo=timezone.utc), 0x18),
])
def test_not_after_century_boundaries(when, tag):
    der = der_of(certificate(when))
    stamp = when.strftime("%y%m%d%H%M%SZ" if tag == 0x17 else "%Y%m%d%H%M%SZ").encode()
    assert bytes([tag, len(stamp)]) + stamp in der  # the encoding under test really is used
    assert not_after(der) == when


def tlv(tag: int, content: bytes) -> bytes:
    """DER TLV (test helper: lengths up to 65535)."""
    n = len(content)
    length = bytes([n]) if n < 0x80 else (b"\x81" + bytes([n]) if n < 0x100
                                          else b"\x82" + n.to_bytes(2, "big"))
    return bytes([tag]) + length + content


def test_not_after_reads_v1_certificate_without_version_field():
    # cryptography only writes v3: build a v1 TBSCertificate by hand.
    validity = tlv(0x30, tlv(0x17, b"200101000000Z") + tlv(0x18, b"20610506070809Z"))
    fields = (tlv(0x02, b"\x01") + tlv(0x30, b"") + tlv(0x30, b"") + validity
              + tlv(0x30, b"") + tlv(0x30, b"\x05\x00" * 100))  # long-form lengths too
    signature = tlv(0x30, b"") + tlv(0x03, b"\x00" * 300)
    v1 = tlv(0x30, tlv(0x30, fields) + signature)
    assert not_after(v1) == datetime(2061, 5, 6, 7, 8, 9, tzinfo=timezone.utc)
    v3 = tlv(0x30, tlv(0x30, tlv(0xA0, tlv(0x02, b"\x02")) + fields) + signature)
    assert not_after(v3) == datetime(2061, 5, 6, 7, 8, 9, tzinfo=timezone.utc)


def test_not_after_pem_uses_first_block_and_ignores_leading_text():
    first = certificate(datetime(2030, 1, 2, tzinfo=timezone.utc))
    second = certificate(datetime(2040, 1, 2, tzinfo=timezone.utc))
    text = b"Certificate:\n  subject: x\n" + pem_of(first) + pem_of(second)
    assert not_after(text) == datetime(2030, 1, 2, tzinfo=timezone.utc)


GOOD_DER = der_of(certificate(datetime(2035, 3, 4, tzinfo=timezone.utc)))


@pytest.mark.parametrize("data", [
    b"", b"\x30", b"\x30\x80\x00\x00", b"\x30\x85\x01\x00\x00\x00\x00",
    b"\x30\x81\x05\x00\x00\x00\x00\x00", b"\x02\x01\x00", b"\x30\x00",
    GOOD_DER + b"\x00", b"-----BEGIN CERTIFICATE-----\nMAA=\n",
    b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n", b"hello",
])
def test_not_after_refuses_malformed_input(data):
    with pytest.raises(ValueError):
        not_after(data)


@pytest.mark.parametrize("cut", range(0, len(GOOD_DER), 7))
def test_not_after_refuses_truncated_certificate(cut):
    with pytest.raises(ValueError):
        not_after(GOOD_DER[:cut])


@pytest.mark.parametrize("bad", [b"351304000000Z", b"350230000000Z", b"350304250000Z",
                                 b"350304000000+", b"35030400000aZ", b"3503040000Z\x00\x00"])
def test_not_after_refuses_bad_utc_time(bad):
    data = GOOD_DER.replace(b"350304000000Z", bad)
    assert data != GOOD_DER
    with pytest.raises(ValueError):
        not_after(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_not_after_arbitrary_bytes_only_raise_value_error(data):
    try:
        result = not_after(data)
    except ValueError:
        return
    assert result.tzinfo is timezone.utc


@settings(max_examples=300, deadline=None)
@given(st.integers(0, len(GOOD_DER) - 1), st.integers(0, 255))
def test_not_after_mutated_certificate_never_misbehaves(offset, value):
    data = bytearray(GOOD_DER)
    data[offset] = value
    try:
        result = not_after(bytes(data))
    except ValueError:
        return
    assert isinstance(result, datetime)


def test_import_does_not_load_cryptography():
    code = ("import sys, lacme.master.ari as a; "
            "assert a.certificate_facts; "
            "print(sorted(m for m in sys.modules if m.startswith(('cryptography', 'lacme'))))")
    out = subprocess.run([sys.executable, "-c", code], cwd=TREE_ROOT, capture_output=True,
                         text=True, check=True).stdout
    assert "cryptography" not in out and "lacme.x509.der" in out
