"""Issued certificate chains for the master: parsing, checks, verification, selection.

Run by the master (root); no I/O beyond reading the CA bundle.  Splits and
re-encodes the PEM chain downloaded from the order's certificate URL (RFC
8555 7.4.2), checks it against the request (RFC 5280 4.1.2.5 validity,
4.2.1.6 subjectAltName), verifies its path to a trusted root (RFC 5280 6,
through ``cryptography.x509.verification``) and picks the preferred one of
the alternate chains.  ``public_key_thumbprint`` computes the RFC 7638
thumbprint of a certificate's key for revocation (RFC 8555 7.6).
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import itertools
import re
from collections.abc import Sequence
from datetime import UTC, datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID
from cryptography.x509.verification import DNSName, IPAddress, PolicyBuilder, Store, VerificationError

from lacme.core.errors import CertificateError
from lacme.core.readfile import read_bytes
from lacme.core.text import escape_text
from lacme.protocol import jwk_keys, jws
from lacme.x509.cafile import default_cafile
from lacme.x509.keys import csr_public_key_der, spki_der
from lacme.x509.validity import CLOCK_TOLERANCE, describe_offset

MAX_CHAIN = 10


PEM_BLOCK = re.compile(
    r"-----BEGIN (?P<label>[A-Z0-9 ]+)-----\r?\n"
    r"(?P<body>[A-Za-z0-9+/=\r\n \t]*?)"
    r"-----END (?P=label)-----")


def parse_chain(pem: bytes, *, max_certs: int = MAX_CHAIN) -> list[x509.Certificate]:
    """Split a PEM chain, leaf first.

    Refuses anything but a sequence of PEM CERTIFICATE blocks separated by
    whitespace: garbage between blocks, other labels (private keys), an
    empty input or more than ``max_certs`` certificates.
    """
    try:
        text = pem.decode("ascii")
    except UnicodeDecodeError:
        raise CertificateError("issued chain: not ASCII PEM") from None
    certs: list[x509.Certificate] = []
    pos = 0
    for match in PEM_BLOCK.finditer(text):
        if text[pos:match.start()].strip():
            raise CertificateError(f"issued chain: garbage before PEM block {len(certs) + 1}")
        if match["label"] != "CERTIFICATE":
            raise CertificateError(f"issued chain: unexpected PEM block {match['label']!r}")
        if len(certs) == max_certs:
            raise CertificateError(f"issued chain: more than {max_certs} certificates")
        certs.append(decode_certificate(match["body"], len(certs) + 1))
        pos = match.end()
    if text[pos:].strip():
        raise CertificateError("issued chain: garbage after the last PEM block")
    if not certs:
        raise CertificateError("issued chain: no certificate")
    return certs


def decode_certificate(body: str, index: int) -> x509.Certificate:
    """Certificate from the base64 body of the ``index``-th PEM block."""
    try:
        der = base64.b64decode("".join(body.split()), validate=True)
        return x509.load_der_x509_certificate(der)
    except (binascii.Error, ValueError):
        raise CertificateError(f"issued chain: certificate {index} is not valid DER") from None


def chain_pem(chain: Sequence[x509.Certificate]) -> tuple[bytes, bytes]:
    """(leaf PEM, leaf + intermediates PEM), re-encoded from the parsed chain."""
    blocks = [cert.public_bytes(serialization.Encoding.PEM) for cert in chain]
    return blocks[0], b"".join(blocks)


def chain_der(chain: Sequence[x509.Certificate]) -> list[bytes]:
    """DER of every certificate of the chain, leaf first."""
    return [cert.public_bytes(serialization.Encoding.DER) for cert in chain]


def load_roots(path: str) -> list[x509.Certificate]:
    """Every certificate of a PEM bundle (comments between blocks allowed)."""
    data = read_bytes(path, CertificateError)
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        raise CertificateError(f"{path}: no PEM certificate") from None


def format_time(when: datetime) -> str:
    """RFC 3339 UTC, second precision."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def check_key(leaf: x509.Certificate, csr_der: bytes) -> None:
    """The issued certificate certifies the CSR's key."""
    if spki_der(leaf.public_key()) != csr_public_key_der(csr_der):
        raise CertificateError("issued certificate: public key differs from the CSR's")


def check_names(leaf: x509.Certificate, names: Sequence[str],
                ip_addresses: Sequence[str] = ()) -> None:
    """subjectAltName holds exactly the requested DNS names and IP addresses."""
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise CertificateError("issued certificate: no subjectAltName") from None
    others = [str(n.value) for n in san if not isinstance(n, (x509.DNSName, x509.IPAddress))]
    if others:
        raise CertificateError(f"issued certificate: unrequested names {show_names(others)}")
    got = {n.lower() for n in san.get_values_for_type(x509.DNSName)}
    got |= {str(a) for a in san.get_values_for_type(x509.IPAddress)}
    wanted = {n.lower() for n in names} | {str(ipaddress.ip_address(a)) for a in ip_addresses}
    if missing := sorted(wanted - got):
        raise CertificateError(f"issued certificate: missing names {show_names(missing)}")
    if extra := sorted(got - wanted):
        raise CertificateError(f"issued certificate: unrequested names {show_names(extra)}")




def show_names(names: Sequence[str]) -> str:
    """Names that came from the CA, joined, escaped by the one log rule (lacme.core.text)."""
    return escape_text(", ".join(names), ascii_only=True)


def check_links(chain: Sequence[x509.Certificate]) -> None:
    """Each certificate is issued (and signed) by the next one: no unrelated
    certificate may ride along into the certificate-chain file."""
    for position, (child, parent) in enumerate(itertools.pairwise(chain), start=1):
        try:
            child.verify_directly_issued_by(parent)
        except (ValueError, TypeError, InvalidSignature) as exc:
            raise CertificateError(f"issued chain: certificate {position + 1} did not issue "
                                   f"certificate {position} ({exc or 'bad signature'})") from None


def check_validity(leaf: x509.Certificate, now: datetime) -> None:
    """The issued certificate is valid at ``now``, or starts within
    CLOCK_TOLERANCE of it (a clock a little behind a CA that does not backdate)."""
    ahead = (leaf.not_valid_before_utc - now).total_seconds()
    if ahead > CLOCK_TOLERANCE:
        raise CertificateError(
            "issued certificate: not valid before "
            f"{format_time(leaf.not_valid_before_utc)}, {describe_offset(ahead)} after this "
            f"machine's clock (tolerance {describe_offset(CLOCK_TOLERANCE)}): is the clock right?")
    if now > leaf.not_valid_after_utc:
        raise CertificateError("issued certificate: expired at "
                               f"{format_time(leaf.not_valid_after_utc)}")


def verification_name(name: str) -> str:
    """A concrete host name covered by ``name`` (wildcards: one label)."""
    return "wildcard-check" + name[1:] if name.startswith("*.") else name


def verify_chain(chain: Sequence[x509.Certificate], names: Sequence[str], cafile: str,
                 now: datetime, ip_addresses: Sequence[str] = ()) -> None:
    """A path from the leaf through chain[1:] to a root of ``cafile``, for every name."""
    store = Store(load_roots(cafile))
    # a leaf starting within the tolerance is checked at its start (check_validity)
    now = max(now, chain[0].not_valid_before_utc)
    builder = PolicyBuilder().store(store).time(now).max_chain_depth(MAX_CHAIN)
    subjects: list[tuple[str, DNSName | IPAddress]] = [(n, DNSName(verification_name(n))) for n in names]
    subjects += [(a, IPAddress(ipaddress.ip_address(a))) for a in ip_addresses]
    for name, subject in subjects:
        try:
            verifier = builder.build_server_verifier(subject)
            verifier.verify(chain[0], list(chain[1:]))
        except (VerificationError, ValueError) as e:
            raise CertificateError(
                f"issued certificate: does not verify against {cafile} for {name}: {e}") from None


def check_issued(chain: Sequence[x509.Certificate], csr_der: bytes, names: Sequence[str],
                 cafile: str | None, *, now: datetime | None = None,
                 ip_addresses: Sequence[str] = ()) -> None:
    """Refuse an issued chain that does not answer the request.

    Checks, in order: the key is the CSR's, subjectAltName holds exactly
    ``names`` (case-insensitive), the leaf is valid now, and unless
    ``cafile`` is "" the chain verifies to a root of ``cafile`` (None: the
    default bundle) for every name.  CertificateError with a one-line reason.
    """
    if not chain:
        raise CertificateError("issued chain: no certificate")
    if len(chain) > MAX_CHAIN:
        raise CertificateError(f"issued chain: more than {MAX_CHAIN} certificates")
    now = now or datetime.now(UTC)
    check_key(chain[0], csr_der)
    check_names(chain[0], names, ip_addresses)
    check_validity(chain[0], now)
    check_links(chain)
    if cafile == "":
        return
    verify_chain(chain, names, cafile or default_cafile(), now, ip_addresses)


def issuer_common_names(chain: Sequence[x509.Certificate]) -> list[str]:
    """The issuers' common names along the chain, the topmost issuer first."""
    names = []
    for cert in reversed(chain):
        attrs = cert.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)
        if attrs:
            names.append(str(attrs[-1].value))
    return names


def select_chain(chains: Sequence[bytes], preferred: str | None) -> int:
    """Index of the chain to install among the default (0) and the alternates
    (RFC 8555 7.4.2, ``Link: rel="alternate"``): the first whose topmost
    issuer's common name is ``preferred``, else the first with that issuer
    anywhere, else the default.  Unparsable alternates are skipped."""
    if not preferred or len(chains) < 2:
        return 0
    parsed: list[tuple[int, list[str]]] = []
    for index, pem in enumerate(chains):
        try:
            parsed.append((index, issuer_common_names(parse_chain(pem))))
        except CertificateError:
            continue
    for index, issuers in parsed:
        if issuers and issuers[0] == preferred:
            return index
    for index, issuers in parsed:
        if preferred in issuers:
            return index
    return 0

# -- RFC 7638 thumbprint of a certificate's key ---------------------------


def public_key_thumbprint(cert_der_or_pem: bytes) -> str:
    """RFC 7638 thumbprint of the key certified by a PEM or DER certificate,
    or "" for a key no accountd can hold (then it cannot be accountd's key)."""
    try:
        if cert_der_or_pem[:1] == b"\x30":
            cert = x509.load_der_x509_certificate(cert_der_or_pem)
        else:
            cert = x509.load_pem_x509_certificate(cert_der_or_pem)
    except ValueError:
        raise CertificateError("certificate: neither PEM nor DER") from None
    try:
        return jws.jwk_thumbprint(jwk_keys.public_jwk(cert.public_key()))
    except ValueError:
        return ""
