"""Minimal, bounded DER reading for certificates, without cryptography.

Pure.  Used by the master (root) through ``lacme.master.ari.certificate_facts`` for
every certificate section before anything else: a no-op renewal only needs
a few fields of the installed certificate, and importing ``cryptography``
would cost more than the whole decision.  TLV reading over RFC 5280 section
4.1, times under the century rule of RFC 5280 4.1.2.5.1 (UTCTime) and
4.1.2.5.2 (GeneralizedTime), the first PEM CERTIFICATE block, the
GeneralNames of a subjectAltName (RFC 5280 4.2.1.6) and the attributes of
a Name (RFC 5280 4.1.2.4), such as the organizationalUnitName that marks
lacme's placeholder certificates.
"""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime

PEM_BEGIN = b"-----BEGIN CERTIFICATE-----"
PEM_END = b"-----END CERTIFICATE-----"

TAG_INTEGER = 0x02
TAG_SEQUENCE = 0x30
TAG_UTC_TIME = 0x17
TAG_GENERALIZED_TIME = 0x18
TAG_VERSION = 0xA0  # [0] EXPLICIT Version, constructed context-specific
TAG_SET = 0x31
TAG_OID = 0x06
TAG_DNS_NAME = 0x82  # GeneralName [2] IMPLICIT IA5String
TAG_IP_ADDRESS = 0x87  # GeneralName [7] IMPLICIT OCTET STRING

OID_ORGANIZATIONAL_UNIT = bytes([0x55, 0x04, 0x0B])  # 2.5.4.11
# The organizationalUnitName of the self-signed certificates ``lacme
# placeholder`` writes (lacme.x509.placeholder), and that the no-op path
# recognises here without cryptography.
PLACEHOLDER_OU = "lacme placeholder"

MAX_LENGTH_OCTETS = 4  # a certificate longer than 4 GiB is not one


def read_tlv(data: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """Return (tag, content start, content end) of the DER TLV at ``pos``.

    Refuses high tag numbers, the indefinite form, non-minimal long lengths
    and any content that would reach past ``end``.
    """
    if pos + 2 > end:
        raise ValueError(f"truncated DER at offset {pos}")
    tag = data[pos]
    if tag & 0x1F == 0x1F:
        raise ValueError(f"unsupported high tag number at offset {pos}")
    first = data[pos + 1]
    pos += 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if count == 0:
            raise ValueError(f"indefinite length at offset {pos - 1} (not DER)")
        if count > MAX_LENGTH_OCTETS or pos + count > end:
            raise ValueError(f"bad length at offset {pos - 1}")
        length = int.from_bytes(data[pos:pos + count], "big")
        if length < 0x80 or data[pos] == 0:
            raise ValueError(f"non-minimal length at offset {pos - 1} (not DER)")
        pos += count
    if pos + length > end:
        raise ValueError(f"truncated DER at offset {pos}: {length} bytes announced")
    return tag, pos, pos + length


def expect_tlv(data: bytes, pos: int, end: int, tag: int, what: str) -> tuple[int, int]:
    """Like ``read_tlv`` but the tag must be ``tag``; returns (start, end)."""
    got, start, stop = read_tlv(data, pos, end)
    if got != tag:
        raise ValueError(f"{what}: expected tag 0x{tag:02x}, got 0x{got:02x}")
    return start, stop


def parse_digits(text: bytes, what: str) -> list[int]:
    """Split an all-ASCII-digits time string into pairs of digits."""
    if not text.isdigit():  # bytes.isdigit: ASCII digits only
        raise ValueError(f"{what}: not digits: {text!r}")
    return [int(text[i:i + 2]) for i in range(0, len(text), 2)]


def parse_utc_time(text: bytes) -> datetime:
    """UTCTime YYMMDDHHMMSSZ; YY >= 50 is 19YY, else 20YY (RFC 5280 4.1.2.5.1)."""
    if len(text) != 13 or not text.endswith(b"Z"):
        raise ValueError(f"UTCTime: not YYMMDDHHMMSSZ: {text!r}")
    yy, month, day, hour, minute, second = parse_digits(text[:12], "UTCTime")
    year = 1900 + yy if yy >= 50 else 2000 + yy
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def parse_generalized_time(text: bytes) -> datetime:
    """GeneralizedTime YYYYMMDDHHMMSSZ, no fractions (RFC 5280 4.1.2.5.2)."""
    if len(text) != 15 or not text.endswith(b"Z"):
        raise ValueError(f"GeneralizedTime: not YYYYMMDDHHMMSSZ: {text!r}")
    cc, yy, month, day, hour, minute, second = parse_digits(text[:14], "GeneralizedTime")
    return datetime(cc * 100 + yy, month, day, hour, minute, second, tzinfo=UTC)


def parse_time(data: bytes, pos: int, end: int) -> tuple[datetime, int]:
    """Parse the Time at ``pos``; return it and the offset after it."""
    tag, start, stop = read_tlv(data, pos, end)
    if tag == TAG_UTC_TIME:
        return parse_utc_time(data[start:stop]), stop
    if tag == TAG_GENERALIZED_TIME:
        return parse_generalized_time(data[start:stop]), stop
    raise ValueError(f"validity: expected UTCTime or GeneralizedTime, got tag 0x{tag:02x}")


def first_pem_certificate(data: bytes) -> bytes:
    """DER of the first PEM CERTIFICATE block of ``data``."""
    begin = data.find(PEM_BEGIN)
    if begin < 0:
        raise ValueError("no PEM CERTIFICATE block")
    body_start = begin + len(PEM_BEGIN)
    body_end = data.find(PEM_END, body_start)
    if body_end < 0:
        raise ValueError("unterminated PEM CERTIFICATE block")
    body = b"".join(data[body_start:body_end].split())
    try:
        return base64.b64decode(body, validate=True)
    except binascii.Error as e:
        raise ValueError(f"bad base64 in PEM CERTIFICATE block: {e}") from None


class GeneralNames:
    """The entries of a GeneralNames (RFC 5280 4.2.1.6): DNS names as
    written, IP addresses as their 4 or 16 octets, and how many of another
    kind (e-mail, URI, directory name...) there are."""

    __slots__ = ("dns", "ips", "others")

    def __init__(self) -> None:
        self.dns: list[str] = []
        self.ips: list[bytes] = []
        self.others = 0


def read_general_names(data: bytes, pos: int, end: int) -> GeneralNames:
    """The GeneralNames SEQUENCE at ``pos`` (a subjectAltName's extnValue)."""
    names = GeneralNames()
    pos, seq_end = expect_tlv(data, pos, end, TAG_SEQUENCE, "subjectAltName")
    if seq_end != end:
        raise ValueError("subjectAltName: trailing data")
    while pos < seq_end:
        tag, start, stop = read_tlv(data, pos, seq_end)
        if tag == TAG_DNS_NAME:
            try:
                names.dns.append(data[start:stop].decode("ascii"))
            except UnicodeDecodeError:
                raise ValueError("subjectAltName: dNSName is not IA5String") from None
        elif tag == TAG_IP_ADDRESS and stop - start in (4, 16):
            names.ips.append(data[start:stop])
        else:
            names.others += 1
        pos = stop
    return names


def name_has_attribute(data: bytes, pos: int, end: int, oid: bytes, value: str) -> bool:
    """Whether the Name (RDNSequence) between ``pos`` and ``end`` has an
    attribute ``oid`` whose string value is ``value``."""
    wanted = value.encode("utf-8")
    while pos < end:
        rdn, rdn_end = expect_tlv(data, pos, end, TAG_SET, "RelativeDistinguishedName")
        while rdn < rdn_end:
            atv, atv_end = expect_tlv(data, rdn, rdn_end, TAG_SEQUENCE, "AttributeTypeAndValue")
            oid_start, oid_end = expect_tlv(data, atv, atv_end, TAG_OID, "AttributeType")
            _, value_start, value_end = read_tlv(data, oid_end, atv_end)
            if data[oid_start:oid_end] == oid and data[value_start:value_end] == wanted:
                return True
            rdn = atv_end
        pos = rdn_end
    return False
