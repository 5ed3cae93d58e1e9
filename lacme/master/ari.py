"""ACME Renewal Information (RFC 9773): certificate IDs and renewalInfo answers.

Pure: bytes and JSON in, values out.  The master (root) computes the
certificate ID of an installed certificate (RFC 9773 section 4.1: the
base64url keyIdentifier of its Authority Key Identifier, a period, and the
base64url DER content octets of its serial number), its validity, its
subjectAltName names (4.2.1.6), its SubjectPublicKeyInfo (4.1.2.7) and
whether it is self-signed or lacme's placeholder with a bounded DER walk
over RFC 5280 section 4.1, without importing cryptography: a run where
nothing is due must stay cheap.  The client sends the ID in
renewalInfo requests and in newOrder's ``replaces`` (RFC 9773 section 5);
``parse_renewal_info`` validates the answer (section 4.2).
"""

from __future__ import annotations

import base64
from datetime import datetime

from lacme.core.record import Record
from lacme.x509.der import (
    OID_ORGANIZATIONAL_UNIT,
    PLACEHOLDER_OU,
    TAG_INTEGER,
    TAG_SEQUENCE,
    TAG_VERSION,
    GeneralNames,
    expect_tlv,
    first_pem_certificate,
    name_has_attribute,
    parse_time,
    read_general_names,
    read_tlv,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

TAG_EXTENSIONS = 0xA3  # [3] EXPLICIT Extensions
TAG_OID = 0x06
TAG_BOOLEAN = 0x01
TAG_OCTET_STRING = 0x04
TAG_KEY_IDENTIFIER = 0x80  # [0] IMPLICIT KeyIdentifier in AuthorityKeyIdentifier
OID_AUTHORITY_KEY_IDENTIFIER = bytes([0x55, 0x1D, 0x23])  # 2.5.29.35
OID_SUBJECT_ALT_NAME = bytes([0x55, 0x1D, 0x11])  # 2.5.29.17


class CertificateFacts(Record):
    """What the renewal decision needs from an installed certificate."""

    serial: bytes  # DER content octets of serialNumber
    authority_key_id: bytes | None
    not_before: datetime
    not_after: datetime
    names: tuple[str, ...] = ()  # subjectAltName dNSNames, lower-cased
    ip_addresses: tuple[str, ...] = ()  # subjectAltName iPAddresses, canonical text
    other_names: int = 0  # subjectAltName entries of any other kind
    spki: bytes = b""  # the SubjectPublicKeyInfo, DER
    self_signed: bool = False  # issuer and subject are the same Name
    placeholder: bool = False  # self-signed, with lacme's placeholder OU

    @property
    def lifetime(self) -> float:
        """Seconds from notBefore to notAfter (RFC 5280: both inclusive)."""
        return (self.not_after - self.not_before).total_seconds() + 1

    @property
    def cert_id(self) -> str | None:
        """The RFC 9773 certificate ID, None without an Authority Key Identifier."""
        if not self.authority_key_id:
            return None
        return f"{b64url(self.authority_key_id)}.{b64url(self.serial)}"

    @property
    def serial_hex(self) -> str:
        return self.serial.hex()


class RenewalInfo(Record):
    """A renewalInfo answer: the suggested window, as POSIX seconds."""

    start: float
    end: float
    explanation_url: str | None = None


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def certificate_facts(data: bytes) -> CertificateFacts:
    """Facts of a PEM (first CERTIFICATE block) or DER certificate.

    ValueError on anything malformed.
    """
    der = data if data[:1] == bytes([TAG_SEQUENCE]) else first_pem_certificate(data)
    cert_start, cert_end = expect_tlv(der, 0, len(der), TAG_SEQUENCE, "Certificate")
    if cert_end != len(der):
        raise ValueError("trailing data after the certificate")
    pos, tbs_end = expect_tlv(der, cert_start, cert_end, TAG_SEQUENCE, "TBSCertificate")
    tag, _, stop = read_tlv(der, pos, tbs_end)
    if tag == TAG_VERSION:
        pos = stop
    serial_start, pos = expect_tlv(der, pos, tbs_end, TAG_INTEGER, "serialNumber")
    serial = der[serial_start:pos]
    if not serial:
        raise ValueError("serialNumber: empty")
    _, pos = expect_tlv(der, pos, tbs_end, TAG_SEQUENCE, "signature")
    issuer_start, pos = expect_tlv(der, pos, tbs_end, TAG_SEQUENCE, "issuer")
    issuer = der[issuer_start:pos]
    validity, pos = expect_tlv(der, pos, tbs_end, TAG_SEQUENCE, "validity")
    not_before, after_pos = parse_time(der, validity, pos)
    not_after, after_pos = parse_time(der, after_pos, pos)
    if after_pos != pos:
        raise ValueError("validity: trailing data after notAfter")
    subject_start, pos = expect_tlv(der, pos, tbs_end, TAG_SEQUENCE, "subject")
    self_signed = der[subject_start:pos] == issuer
    placeholder = self_signed and name_has_attribute(der, subject_start, pos,
                                                     OID_ORGANIZATIONAL_UNIT, PLACEHOLDER_OU)
    spki_start = pos
    _, pos = expect_tlv(der, pos, tbs_end, TAG_SEQUENCE, "subjectPublicKeyInfo")
    spki = der[spki_start:pos]
    aki, names = None, GeneralNames()
    while pos < tbs_end:  # [1] issuerUniqueID, [2] subjectUniqueID, [3] extensions
        tag, start, stop = read_tlv(der, pos, tbs_end)
        if tag == TAG_EXTENSIONS:
            aki, names = read_extensions(der, start, stop)
        pos = stop
    return CertificateFacts(serial, aki, not_before, not_after,
                            names=tuple(dict.fromkeys(n.lower() for n in names.dns)),
                            ip_addresses=tuple(dict.fromkeys(ip_text(ip) for ip in names.ips)),
                            other_names=names.others, spki=spki, self_signed=self_signed,
                            placeholder=placeholder)


def read_extensions(der: bytes, pos: int, end: int) -> tuple[bytes | None, GeneralNames]:
    """The AuthorityKeyIdentifier's keyIdentifier and the subjectAltName's
    names among [3]'s Extensions."""
    aki, names = None, GeneralNames()
    pos, seq_end = expect_tlv(der, pos, end, TAG_SEQUENCE, "extensions")
    while pos < seq_end:
        ext_start, ext_end = expect_tlv(der, pos, seq_end, TAG_SEQUENCE, "extension")
        oid_start, cur = expect_tlv(der, ext_start, ext_end, TAG_OID, "extnID")
        oid = der[oid_start:cur]
        tag, _, stop = read_tlv(der, cur, ext_end)
        if tag == TAG_BOOLEAN:  # critical
            cur = stop
        value_start, value_end = expect_tlv(der, cur, ext_end, TAG_OCTET_STRING, "extnValue")
        if oid == OID_AUTHORITY_KEY_IDENTIFIER:
            aki = key_identifier(der, value_start, value_end)
        elif oid == OID_SUBJECT_ALT_NAME:
            names = read_general_names(der, value_start, value_end)
        pos = ext_end
    return aki, names


def ip_text(packed: bytes) -> str:
    """An iPAddress as ``ipaddress`` writes it (the form of CertSection.ip_addresses)."""
    if len(packed) == 4:
        return ".".join(str(octet) for octet in packed)
    import ipaddress  # IPv6 only: its compressed form has rules of its own

    return str(ipaddress.IPv6Address(packed))


def key_identifier(der: bytes, pos: int, end: int) -> bytes | None:
    start, stop = expect_tlv(der, pos, end, TAG_SEQUENCE, "AuthorityKeyIdentifier")
    if start < stop:
        tag, value_start, value_end = read_tlv(der, start, stop)
        if tag == TAG_KEY_IDENTIFIER and value_end > value_start:
            return der[value_start:value_end]
    return None


def parse_renewal_info(body: Any) -> RenewalInfo:
    """Validate a renewalInfo object (RFC 9773 4.2); ValueError says why."""
    if not isinstance(body, dict):
        raise ValueError("renewalInfo: not a JSON object")
    window = body.get("suggestedWindow")
    if not isinstance(window, dict):
        raise ValueError("renewalInfo: no suggestedWindow object")
    start = parse_rfc3339(window.get("start"), "suggestedWindow start")
    end = parse_rfc3339(window.get("end"), "suggestedWindow end")
    if end <= start:  # RFC 9773 4.2: such a window is invalid
        raise ValueError("renewalInfo: suggestedWindow end is not after its start")
    url = body.get("explanationURL")
    return RenewalInfo(start, end, url if isinstance(url, str) and url else None)


def parse_rfc3339(value: Any, what: str) -> float:
    """An RFC 3339 date-time with an offset (fractions allowed) as POSIX seconds."""
    if not isinstance(value, str) or len(value) > 64:
        raise ValueError(f"renewalInfo: {what} is not a date")
    text = value.strip()
    if text[-1:] in ("Z", "z"):
        text = text[:-1] + "+00:00"
    date, sep, rest = text.partition("T") if "T" in text else text.partition("t")
    if sep and "." in rest:  # datetime keeps microseconds: cut longer fractions
        head, _, tail = rest.partition(".")
        digits = tail[:len(tail) - len(tail.lstrip("0123456789"))]
        zone = tail[len(digits):]
        text = f"{date}T{head}.{(digits + '000000')[:6]}{zone}"
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"renewalInfo: {what} is not an RFC 3339 date: {value[:40]!r}") from None
    if when.tzinfo is None:
        raise ValueError(f"renewalInfo: {what} has no UTC offset: {value[:40]!r}")
    return when.timestamp()
