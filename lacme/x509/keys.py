"""Service keys for the master: loading them, and their SubjectPublicKeyInfo.

Run by the master (root), which alone holds the service keys (the account
key is accountd's); reads one key file.  A key is RSA or EC, unencrypted
PEM (PKCS#8 or traditional).  The SPKI DER (RFC 5280 4.1.2.7) is what a
request and the certificate issued for it must share.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from lacme.core.errors import CertificateError, LacmeError
from lacme.core.readfile import read_bytes

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def load_private_key(path: str) -> PrivateKey:
    """Load an unencrypted PEM RSA or EC private key (PKCS#8 or traditional)."""
    data = read_bytes(path)
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
