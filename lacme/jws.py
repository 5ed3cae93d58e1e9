"""JSON Web Signature helpers: base64url, JWK, thumbprints and signatures.

Pure module, imported by lacme-accountd (which holds the account key and
signs) and by the unprivileged ACME client (which builds signing inputs and
the flattened JWS it posts).  No I/O.

Implements RFC 7515 section 2 (base64url without padding), 5.1 (signing
input) and 7.2.2 (flattened JSON serialization); RFC 7518 sections 3.3
(RS256), 3.4 (ES256/ES384, signatures as fixed-length R || S) and 6.2/6.3
(EC and RSA public keys as JWK); RFC 7638 (JWK thumbprint); RFC 8555 section
6.3 (POST-as-GET: an empty payload).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

_B64U = re.compile(r"[A-Za-z0-9_-]*\Z")

MIN_RSA_BITS = 2048


@dataclass(frozen=True)
class EcAlgorithm:
    """One ECDSA row of RFC 7518 3.1: curve, JWK crv name, hash, coordinate size."""

    alg: str
    crv: str
    curve: type[ec.EllipticCurve]
    hash: type[hashes.HashAlgorithm]
    size: int  # octets of one coordinate, and of R and of S


EC_ALGORITHMS = (
    EcAlgorithm("ES256", "P-256", ec.SECP256R1, hashes.SHA256, 32),
    EcAlgorithm("ES384", "P-384", ec.SECP384R1, hashes.SHA384, 48),
)
_EC_BY_ALG = {a.alg: a for a in EC_ALGORITHMS}
_EC_BY_CRV = {a.crv: a for a in EC_ALGORITHMS}
_EC_BY_CURVE = {a.curve.name: a for a in EC_ALGORITHMS}

# RFC 7638 3.2: the members that make up the thumbprint, per key type.
_THUMBPRINT_MEMBERS = {"RSA": ("e", "kty", "n"), "EC": ("crv", "kty", "x", "y"), "oct": ("k", "kty")}


def b64u_encode(data: bytes) -> str:
    """base64url without padding (RFC 7515 section 2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64u_decode(text: str | bytes) -> bytes:
    """Strict inverse of ``b64u_encode``: only [A-Za-z0-9_-], canonical form.

    Padding, whitespace, other alphabets and encodings with stray trailing
    bits (two spellings of one octet string) raise ValueError.
    """
    if isinstance(text, bytes):
        try:
            text = text.decode("ascii")
        except UnicodeDecodeError:
            raise ValueError("base64url: not ASCII") from None
    if not _B64U.match(text) or len(text) % 4 == 1:
        raise ValueError("base64url: invalid characters or length")
    data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if b64u_encode(data) != text:
        raise ValueError("base64url: non-canonical encoding")
    return data


def canonical_json(obj: Any) -> bytes:
    """Sorted keys, no whitespace, UTF-8 (RFC 7638 3.3; Perl JSON->canonical->utf8)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return text.encode("utf-8")


def _int_to_bytes(value: int, size: int | None = None) -> bytes:
    if size is None:
        size = max(1, (value.bit_length() + 7) // 8)
    return value.to_bytes(size, "big")


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
        return {"e": b64u_encode(_int_to_bytes(numbers.e)), "kty": "RSA", "n": b64u_encode(_int_to_bytes(numbers.n))}
    row = _EC_BY_ALG[alg]
    point = pub.public_numbers()
    return {
        "crv": row.crv,
        "kty": "EC",
        "x": b64u_encode(_int_to_bytes(point.x, row.size)),
        "y": b64u_encode(_int_to_bytes(point.y, row.size)),
    }


def jwk_thumbprint(jwk: dict) -> str:
    """RFC 7638: base64url(SHA-256(canonical JSON of the required members))."""
    members = _THUMBPRINT_MEMBERS.get(jwk.get("kty"))  # type: ignore[arg-type]
    if members is None:
        raise ValueError(f"JWK: unsupported kty {jwk.get('kty')!r}")
    missing = [m for m in members if not isinstance(jwk.get(m), str)]
    if missing:
        raise ValueError(f"JWK: missing member {missing[0]!r}")
    required = {m: jwk[m] for m in members}
    return b64u_encode(hashlib.sha256(canonical_json(required)).digest())


def public_key_from_jwk(jwk: dict) -> Any:
    """The cryptography public key described by an RSA or EC JWK; ValueError if invalid."""
    kty = jwk.get("kty")
    if kty == "RSA":
        n = int.from_bytes(b64u_decode(_member(jwk, "n")), "big")
        e = int.from_bytes(b64u_decode(_member(jwk, "e")), "big")
        key = rsa.RSAPublicNumbers(e, n).public_key()
        alg_for_key(key)
        return key
    if kty == "EC":
        row = _EC_BY_CRV.get(_member(jwk, "crv"))
        if row is None:
            raise ValueError(f"JWK: unsupported crv {jwk.get('crv')!r}")
        x, y = b64u_decode(_member(jwk, "x")), b64u_decode(_member(jwk, "y"))
        if len(x) != row.size or len(y) != row.size:
            raise ValueError("JWK: EC coordinates of the wrong length")
        numbers = ec.EllipticCurvePublicNumbers(int.from_bytes(x, "big"), int.from_bytes(y, "big"), row.curve())
        return numbers.public_key()  # ValueError if the point is not on the curve
    raise ValueError(f"JWK: unsupported kty {kty!r}")


def _member(jwk: dict, name: str) -> str:
    value = jwk.get(name)
    if not isinstance(value, str):
        raise ValueError(f"JWK: member {name!r} missing or not a string")
    return value


def der_to_raw(der: bytes, size: int) -> bytes:
    """DER ECDSA-Sig-Value -> R || S, each ``size`` octets (RFC 7518 3.4)."""
    r, s = decode_dss_signature(der)
    if r.bit_length() > 8 * size or s.bit_length() > 8 * size:
        raise ValueError("ECDSA signature: R or S too large")
    return _int_to_bytes(r, size) + _int_to_bytes(s, size)


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


def signing_input(protected: dict, payload: dict | None) -> str:
    """ASCII(b64u(protected) "." b64u(payload)) (RFC 7515 5.1); None: POST-as-GET."""
    encoded = "" if payload is None else b64u_encode(canonical_json(payload))
    return b64u_encode(canonical_json(protected)) + "." + encoded


def flattened(signing_input: str, signature: bytes) -> dict[str, str]:
    """The flattened JWS JSON serialization (RFC 7515 7.2.2) to POST."""
    protected, dot, payload = signing_input.partition(".")
    if not dot:
        raise ValueError("signing input without '.'")
    return {"protected": protected, "payload": payload, "signature": b64u_encode(signature)}
