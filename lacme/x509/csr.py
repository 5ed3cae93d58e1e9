"""PKCS#10 requests for the master: names, subjectAltName, keyUsage, TLS feature, signature.

Run by the master (root) with a service key of lacme.x509.keys; pure.
Builds the certificate signing request (RFC 2986) that finalizes an order
(RFC 8555 7.4): the subject, every DNS name and IP address (RFC 8738) in
subjectAltName (RFC 5280 4.2.1.6), keyUsage (4.2.1.3) and the TLS feature
extension (RFC 7633).  The vocabularies are lacme.config.certs' (what the
configuration accepts is what can be built).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from lacme.config import certs
from lacme.core.errors import ConfigError
from lacme.x509.keys import PrivateKey

# Subject attribute types, by their OpenSSL short and long names.
SUBJECT_TYPES: dict[str, x509.ObjectIdentifier] = {
    name: getattr(NameOID, attribute) for name, attribute in certs.SUBJECT_TYPES.items()}

# keyUsage bits, by their x509v3_config(5ssl) names -> KeyUsage argument.
KEY_USAGES = certs.KEY_USAGES

TLS_FEATURES: dict[str, x509.TLSFeatureType] = {
    name: getattr(x509.TLSFeatureType, name) for name in certs.TLS_FEATURES}

HASHES: dict[str, type[hashes.SHA256 | hashes.SHA384 | hashes.SHA512]] = {
    name: getattr(hashes, name.upper()) for name in certs.HASHES}


def common_name(subject: Sequence[tuple[str, str]]) -> str | None:
    """The last CN of the subject, if any (OpenSSL's choice too)."""
    cns = [value for kind, value in subject if SUBJECT_TYPES.get(kind) == NameOID.COMMON_NAME]
    return cns[-1] if cns else None


def requested_names(subject: Sequence[tuple[str, str]], names: Sequence[str]) -> list[str]:
    """The DNS names a CSR built from (subject, names) asks for, in order.

    ``names`` first, then the CN if it is a domain name (lacme.config.certs'
    rule, as for ``CertSection.names``) and is not already one of them
    (compared case-insensitively); duplicates dropped.
    A CN such as "My Service" stays in the subject only.  Use it for the
    order's identifiers and for ``check_issued`` so that all three agree.
    """
    result: list[str] = []
    seen: set[str] = set()
    cn = common_name(subject)
    extra = [cn] if cn and certs.is_domain(cn) else []
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

    Every name, the CN included when it is a domain name, goes into
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

