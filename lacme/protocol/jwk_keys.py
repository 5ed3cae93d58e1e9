"""What needs a key: JWS algorithms of keys, public JWKs, signing, verifying.

Imported by lacme-accountd (which holds the account key and signs), by the
master's certificate checks (``lacme.x509.chain``) and by the tests' CA; never by
the ACME client, which only sees JWKs and signatures (``lacme.protocol.jws``).  Uses
``cryptography``.  No I/O.

Implements RFC 7518 sections 3.3 (RS256), 3.4 (ES256/ES384, signatures as
fixed-length R || S) and 6.2/6.3 (EC and RSA public keys as JWK).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from lacme.protocol.jws import (
    CURVES,
    MIN_RSA_BITS,
    b64u_decode,
    b64u_encode,
    int_to_bytes,
    public_jwk_alg,
)


class EcAlgorithm(NamedTuple):
    """One ECDSA row of RFC 7518 3.1: curve, JWK crv name, hash, coordinate size."""

    alg: str
    crv: str
    curve: type[ec.EllipticCurve]
    hash: type[hashes.HashAlgorithm]
    size: int  # octets of one coordinate, and of R and of S


EC_ALGORITHMS = (
    EcAlgorithm("ES256", "P-256", ec.SECP256R1, hashes.SHA256, CURVES["P-256"].size),
    EcAlgorithm("ES384", "P-384", ec.SECP384R1, hashes.SHA384, CURVES["P-384"].size),
)
_EC_BY_ALG = {a.alg: a for a in EC_ALGORITHMS}
_EC_BY_CURVE = {a.curve().name: a for a in EC_ALGORITHMS}  # name: an instance attribute to the type checker


def _public(key: Any) -> Any:
    """The public half of ``key`` (or ``key`` itself when already public)."""
    return key.public_key() if hasattr(key, "public_key") else key


def alg_for_key(key: Any) -> str:
    """The JWS ``alg`` for a private or public key; ValueError if unsupported."""
    pub = _public(key)
    if isinstance(pub, rsa.RSAPublicKey):
        if pub.key_size < MIN_RSA_BITS:
            raise ValueError(f"RSA key of {pub.key_size} bits is too small (at least {MIN_RSA_BITS})")
        return "RS256"
    if isinstance(pub, ec.EllipticCurvePublicKey):
        row = _EC_BY_CURVE.get(pub.curve.name)
        if row is None:
            raise ValueError(f"unsupported elliptic curve {pub.curve.name}")
        return row.alg
    raise ValueError(f"unsupported key type {type(pub).__name__}")


def public_jwk(public_key: Any) -> dict[str, str]:
    """The public JWK: RSA {e, kty, n} (RFC 7518 6.3.1), EC {crv, kty, x, y} (6.2.1)."""
    pub = _public(public_key)
    alg = alg_for_key(pub)
    if alg == "RS256":
        numbers = pub.public_numbers()
        return {"e": b64u_encode(int_to_bytes(numbers.e)), "kty": "RSA",
                "n": b64u_encode(int_to_bytes(numbers.n))}
    row = _EC_BY_ALG[alg]
    point = pub.public_numbers()
    return {
        "crv": row.crv,
        "kty": "EC",
        "x": b64u_encode(int_to_bytes(point.x, row.size)),
        "y": b64u_encode(int_to_bytes(point.y, row.size)),
    }


def public_key_from_jwk(jwk: dict) -> Any:
    """The cryptography public key described by an RSA or EC JWK; ValueError if invalid."""
    alg = public_jwk_alg(jwk)
    if alg == "RS256":
        n = int.from_bytes(b64u_decode(jwk["n"]), "big")
        e = int.from_bytes(b64u_decode(jwk["e"]), "big")
        return rsa.RSAPublicNumbers(e, n).public_key()
    row = _EC_BY_ALG[alg]
    x, y = (int.from_bytes(b64u_decode(jwk[c]), "big") for c in ("x", "y"))
    return ec.EllipticCurvePublicNumbers(x, y, row.curve()).public_key()


def der_to_raw(der: bytes, size: int) -> bytes:
    """DER ECDSA-Sig-Value -> R || S, each ``size`` octets (RFC 7518 3.4)."""
    r, s = decode_dss_signature(der)
    if r.bit_length() > 8 * size or s.bit_length() > 8 * size:
        raise ValueError("ECDSA signature: R or S too large")
    return int_to_bytes(r, size) + int_to_bytes(s, size)


def raw_to_der(raw: bytes) -> bytes:
    """R || S (two halves of equal length) -> DER ECDSA-Sig-Value."""
    if not raw or len(raw) % 2:
        raise ValueError("ECDSA signature: odd or empty length")
    half = len(raw) // 2
    return encode_dss_signature(int.from_bytes(raw[:half], "big"), int.from_bytes(raw[half:], "big"))


def sign(private_key: Any, alg: str, signing_input: bytes) -> bytes:
    """The JWS signature of ``signing_input``; ValueError if ``alg`` does not fit the key."""
    if alg_for_key(private_key) != alg:
        raise ValueError(f"alg {alg} does not fit this key ({alg_for_key(private_key)})")
    if alg == "RS256":
        return private_key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
    row = _EC_BY_ALG[alg]
    return der_to_raw(private_key.sign(signing_input, ec.ECDSA(row.hash())), row.size)


def verify(public_key: Any, alg: str, signing_input: bytes, signature: bytes) -> bool:
    """True if ``signature`` is a valid ``alg`` signature of ``signing_input``."""
    try:
        if alg_for_key(public_key) != alg:
            return False
        if alg == "RS256":
            public_key.verify(signature, signing_input, padding.PKCS1v15(), hashes.SHA256())
            return True
        row = _EC_BY_ALG[alg]
        if len(signature) != 2 * row.size:
            return False
        public_key.verify(raw_to_der(signature), signing_input, ec.ECDSA(row.hash()))
        return True
    except (InvalidSignature, ValueError):
        return False
