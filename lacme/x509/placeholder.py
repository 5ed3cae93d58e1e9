"""Placeholder certificates: self-signed, for a web server to start with.

Run by the master (root) for ``lacme placeholder``, with the section's own
key (lacme.x509.keys).  A web server whose TLS site names lacme's files
does not start while they are missing, and lacme needs that web server to
answer the http-01 challenge (RFC 8555 8.3): the placeholder breaks the
circle.  It is self-signed (issuer = subject, RFC 5280 4.1.2.4), carries
the section's names in subjectAltName (4.2.1.6) and lacme's mark in its
subject's organizationalUnitName (``lacme.x509.der.PLACEHOLDER_OU``), so
that every newOrder run, without cryptography, sees it and renews it.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from lacme.x509.csr import build_san
from lacme.x509.der import PLACEHOLDER_OU
from lacme.x509.keys import PrivateKey

VALIDITY = timedelta(days=30)  # lacme renews it at once anyway
BACKDATE = timedelta(hours=1)  # a clock slightly behind still accepts it


def build_placeholder(key: PrivateKey, names: Sequence[str], ip_addresses: Sequence[str] = (),
                      now: datetime | None = None) -> bytes:
    """PEM of a self-signed certificate of ``key`` for ``names`` and
    ``ip_addresses`` (at least one of them)."""
    now = now or datetime.now(UTC)
    first = (list(names) + list(ip_addresses))[0]
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, first[:64]),
                      x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, PLACEHOLDER_OU)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(build_san(names, ip_addresses), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)
