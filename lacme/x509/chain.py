"""X.509 for the master: service keys, CSRs, issued chains and their checks.

Run by the master (root), which holds the service keys; no I/O beyond
reading the key and the CA bundle.  Builds the PKCS#10 request (RFC 2986)
that finalizes an order (RFC 8555 7.4), splits and re-encodes the PEM chain
downloaded from the order's certificate URL (RFC 8555 7.4.2), checks it
against the request (RFC 5280 4.1.2.5 validity, 4.2.1.6 subjectAltName) and
verifies its path to a trusted root (RFC 5280 6, through
``cryptography.x509.verification``).  ``public_key_thumbprint`` computes the
RFC 7638 thumbprint of a certificate's key for revocation (RFC 8555 7.6).
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import logging
import os
import re
from collections.abc import Sequence
from datetime import datetime, timezone

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from cryptography.x509.verification import DNSName, IPAddress, PolicyBuilder, Store, VerificationError

from lacme.core.errors import CertificateError, ConfigError, LacmeError
from lacme.protocol import jwk_keys, jws

DEFAULT_CAFILE = "/usr/share/lacme/ca-certificates.crt"
SYSTEM_CAFILE = "/etc/ssl/certs/ca-certificates.crt"
MAX_CHAIN = 10

log = logging.getLogger("lacme")

# Subject attribute types, by their OpenSSL short and long names.
SUBJECT_TYPES: dict[str, x509.ObjectIdentifier] = {
    "CN": NameOID.COMMON_NAME, "commonName": NameOID.COMMON_NAME,
    "O": NameOID.ORGANIZATION_NAME, "organizationName": NameOID.ORGANIZATION_NAME,
    "OU": NameOID.ORGANIZATIONAL_UNIT_NAME,
    "organizationalUnitName": NameOID.ORGANIZATIONAL_UNIT_NAME,
    "C": NameOID.COUNTRY_NAME, "countryName": NameOID.COUNTRY_NAME,
    "ST": NameOID.STATE_OR_PROVINCE_NAME,
    "stateOrProvinceName": NameOID.STATE_OR_PROVINCE_NAME,
    "L": NameOID.LOCALITY_NAME, "localityName": NameOID.LOCALITY_NAME,
    "street": NameOID.STREET_ADDRESS, "streetAddress": NameOID.STREET_ADDRESS,
    "postalCode": NameOID.POSTAL_CODE,
    "emailAddress": NameOID.EMAIL_ADDRESS,
    "serialNumber": NameOID.SERIAL_NUMBER,
    "DC": NameOID.DOMAIN_COMPONENT, "domainComponent": NameOID.DOMAIN_COMPONENT,
    "UID": NameOID.USER_ID, "userId": NameOID.USER_ID,
    "title": NameOID.TITLE,
    "GN": NameOID.GIVEN_NAME, "givenName": NameOID.GIVEN_NAME,
    "SN": NameOID.SURNAME, "surname": NameOID.SURNAME,
    "initials": NameOID.INITIALS,
    "pseudonym": NameOID.PSEUDONYM,
    "generationQualifier": NameOID.GENERATION_QUALIFIER,
    "dnQualifier": NameOID.DN_QUALIFIER,
    "businessCategory": NameOID.BUSINESS_CATEGORY,
    "jurisdictionC": NameOID.JURISDICTION_COUNTRY_NAME,
    "jurisdictionST": NameOID.JURISDICTION_STATE_OR_PROVINCE_NAME,
    "jurisdictionL": NameOID.JURISDICTION_LOCALITY_NAME,
    "organizationIdentifier": NameOID.ORGANIZATION_IDENTIFIER,
}

# keyUsage bits, by their x509v3_config(5ssl) names -> KeyUsage argument.
KEY_USAGES: dict[str, str] = {
    "digitalSignature": "digital_signature",
    "nonRepudiation": "content_commitment",
    "contentCommitment": "content_commitment",
    "keyEncipherment": "key_encipherment",
    "dataEncipherment": "data_encipherment",
    "keyAgreement": "key_agreement",
    "keyCertSign": "key_cert_sign",
    "cRLSign": "crl_sign",
    "encipherOnly": "encipher_only",
    "decipherOnly": "decipher_only",
}

TLS_FEATURES: dict[str, x509.TLSFeatureType] = {
    "status_request": x509.TLSFeatureType.status_request,
    "status_request_v2": x509.TLSFeatureType.status_request_v2,
}

HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha256": hashes.SHA256, "sha384": hashes.SHA384, "sha512": hashes.SHA512,
}

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

# -- service key and CSR --------------------------------------------------


def load_private_key(path: str) -> PrivateKey:
    """Load an unencrypted PEM RSA or EC private key (PKCS#8 or traditional)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise LacmeError(f"{path}: no such file") from None
    except OSError as e:
        raise LacmeError(f"{path}: {e.strerror or e}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise LacmeError(f"{path}: encrypted private key (an unencrypted one is needed)") from None
    except ValueError:
        raise LacmeError(f"{path}: not a PEM private key") from None
    except UnsupportedAlgorithm as e:
        raise LacmeError(f"{path}: unsupported private key: {e}") from None
    if not isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
        raise LacmeError(f"{path}: unsupported key type {type(key).__name__} (RSA or EC only)")
    return key


def common_name(subject: Sequence[tuple[str, str]]) -> str | None:
    """The last CN of the subject, if any (OpenSSL's choice too)."""
    cns = [value for kind, value in subject if SUBJECT_TYPES.get(kind) == NameOID.COMMON_NAME]
    return cns[-1] if cns else None


HOST_NAME = re.compile(r"(\*\.)?([A-Za-z0-9-]+\.)+[A-Za-z0-9-]+")  # two labels at least


def requested_names(subject: Sequence[tuple[str, str]], names: Sequence[str]) -> list[str]:
    """The DNS names a CSR built from (subject, names) asks for, in order.

    ``names`` first, then the CN if it looks like a host name and is not
    already one of them (compared case-insensitively); duplicates dropped.
    A CN such as "My Service" stays in the subject only.  Use it for the
    order's identifiers and for ``check_issued`` so that all three agree.
    """
    result: list[str] = []
    seen: set[str] = set()
    cn = common_name(subject)
    extra = [cn] if cn and HOST_NAME.fullmatch(cn) else []
    for name in [*names, *extra]:
        if name.lower() not in seen:
            seen.add(name.lower())
            result.append(name)
    return result


def build_name(subject: Sequence[tuple[str, str]]) -> x509.Name:
    """x509.Name from (type, value) pairs; ValueError names the bad attribute."""
    attributes = []
    for kind, value in subject:
        oid = SUBJECT_TYPES.get(kind)
        if oid is None:
            raise ValueError(f"subject: unknown attribute type {kind!r}")
        try:
            attributes.append(x509.NameAttribute(oid, value))
        except ValueError as e:
            raise ValueError(f"subject: {kind}={value}: {e}") from None
    return x509.Name(attributes)


def build_san(names: Sequence[str], ip_addresses: Sequence[str] = ()) -> x509.SubjectAlternativeName:
    """subjectAltName of DNS names (A-labels: IDNs must come encoded) and IP
    addresses (RFC 8738)."""
    if not names and not ip_addresses:
        raise ValueError("subjectAltName: no DNS name or IP address to request")
    for name in names:
        if not name.isascii():
            raise ValueError(f"subjectAltName: {name}: not ASCII (use the xn-- form)")
    entries: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
    try:
        entries += [x509.IPAddress(ipaddress.ip_address(a)) for a in ip_addresses]
    except ValueError as e:
        raise ValueError(f"subjectAltName: {e}") from None
    return x509.SubjectAlternativeName(entries)


def build_key_usage(names: Sequence[str]) -> x509.KeyUsage:
    """KeyUsage from x509v3_config names; ValueError names an unknown one."""
    flags = dict.fromkeys(set(KEY_USAGES.values()), False)
    for name in names:
        if name not in KEY_USAGES:
            raise ValueError(f"keyUsage: unknown key usage {name!r}")
        flags[KEY_USAGES[name]] = True
    try:
        return x509.KeyUsage(**flags)
    except ValueError as e:  # encipherOnly / decipherOnly without keyAgreement
        raise ValueError(f"keyUsage: {e}") from None


def build_tls_feature(names: Sequence[str]) -> x509.TLSFeature:
    """TLSFeature from status_request / status_request_v2."""
    features = []
    for name in names:
        if name not in TLS_FEATURES:
            raise ValueError(f"tlsfeature: unknown TLS feature {name!r}")
        if TLS_FEATURES[name] not in features:
            features.append(TLS_FEATURES[name])
    return x509.TLSFeature(features)


def build_csr(key: PrivateKey, subject: Sequence[tuple[str, str]], names: Sequence[str], *,
              key_usage: Sequence[str] = (), tlsfeature: Sequence[str] = (),
              hash_name: str | None = None, ip_addresses: Sequence[str] = ()) -> bytes:
    """DER PKCS#10 request for ``key`` and every name of ``requested_names``.

    Every name, the CN included when it is a host name, goes into
    subjectAltName as a DNSName: CAs reject CN-only requests.  keyUsage is
    critical when present.  ConfigError, with a message starting with the
    setting name, for unknown types or unusable values.
    """
    try:
        return sign_csr(key, subject, names, key_usage, tlsfeature, hash_name, ip_addresses)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def sign_csr(key: PrivateKey, subject: Sequence[tuple[str, str]], names: Sequence[str],
             key_usage: Sequence[str], tlsfeature: Sequence[str],
             hash_name: str | None, ip_addresses: Sequence[str] = ()) -> bytes:
    """build_csr proper; ValueError on bad input."""
    hash_class = HASHES.get((hash_name or "sha256").lower())
    if hash_class is None:
        raise ValueError(f"hash: unsupported digest {hash_name!r} (sha256, sha384, sha512)")
    san = build_san(requested_names(subject, names), ip_addresses)
    name = build_name(subject)
    builder = x509.CertificateSigningRequestBuilder().subject_name(name)
    # RFC 5280 4.2.1.6: with an empty subject, subjectAltName is critical.
    builder = builder.add_extension(san, critical=len(name) == 0)
    if key_usage:
        builder = builder.add_extension(build_key_usage(key_usage), critical=True)
    if tlsfeature:
        builder = builder.add_extension(build_tls_feature(tlsfeature), critical=False)
    csr = builder.sign(key, hash_class())
    return csr.public_bytes(serialization.Encoding.DER)


def spki_der(public_key) -> bytes:
    """SubjectPublicKeyInfo DER of a public key."""
    return public_key.public_bytes(serialization.Encoding.DER,
                                   serialization.PublicFormat.SubjectPublicKeyInfo)


def csr_public_key_der(csr_der: bytes) -> bytes:
    """SubjectPublicKeyInfo DER of the key in a DER CSR."""
    try:
        csr = x509.load_der_x509_csr(csr_der)
    except ValueError:
        raise CertificateError("CSR: not a DER certificate signing request") from None
    return spki_der(csr.public_key())

# -- issued chain ---------------------------------------------------------


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


def default_cafile() -> str:
    """The bundle used when CAfile is unset: lacme's own, else the system's."""
    return DEFAULT_CAFILE if os.path.exists(DEFAULT_CAFILE) else SYSTEM_CAFILE


def load_roots(path: str) -> list[x509.Certificate]:
    """Every certificate of a PEM bundle (comments between blocks allowed)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise CertificateError(f"{path}: no such file") from None
    except OSError as e:
        raise CertificateError(f"{path}: {e.strerror or e}") from None
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        raise CertificateError(f"{path}: no PEM certificate") from None


def format_time(when: datetime) -> str:
    """RFC 3339 UTC, second precision."""
    return when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


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
        raise CertificateError(f"issued certificate: unrequested names {printable(others)}")
    got = {n.lower() for n in san.get_values_for_type(x509.DNSName)}
    got |= {str(a) for a in san.get_values_for_type(x509.IPAddress)}
    wanted = {n.lower() for n in names} | {str(ipaddress.ip_address(a)) for a in ip_addresses}
    if missing := sorted(wanted - got):
        raise CertificateError(f"issued certificate: missing names {printable(missing)}")
    if extra := sorted(got - wanted):
        raise CertificateError(f"issued certificate: unrequested names {printable(extra)}")


def printable(names: Sequence[str]) -> str:
    """Names that came from the CA, joined, with anything unprintable escaped."""
    return ", ".join("".join(c if c.isprintable() and c.isascii() else f"\\x{ord(c):02x}"
                             for c in name) for name in names)


def check_links(chain: Sequence[x509.Certificate]) -> None:
    """Each certificate is issued (and signed) by the next one: no unrelated
    certificate may ride along into the certificate-chain file."""
    for position, (child, parent) in enumerate(zip(chain, chain[1:]), start=1):
        try:
            child.verify_directly_issued_by(parent)
        except (ValueError, TypeError, InvalidSignature) as exc:
            raise CertificateError(f"issued chain: certificate {position + 1} did not issue "
                                   f"certificate {position} ({exc or 'bad signature'})") from None


def check_validity(leaf: x509.Certificate, now: datetime) -> None:
    """The issued certificate is valid at ``now``."""
    if now < leaf.not_valid_before_utc:
        raise CertificateError("issued certificate: not valid before "
                               f"{format_time(leaf.not_valid_before_utc)}")
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
    builder = PolicyBuilder().store(store).time(now).max_chain_depth(MAX_CHAIN)
    subjects = [(n, DNSName(verification_name(n))) for n in names]
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
    now = now or datetime.now(timezone.utc)
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
