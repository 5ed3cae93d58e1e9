"""JSON Web Signature helpers that need no key: base64url, canonical JSON,
JWK checks and thumbprints, signing inputs and the flattened JWS.

Pure module, imported by lacme-accountd and by the unprivileged ACME client,
which never touches a key: it builds signing inputs, checks the JWK accountd
announces and assembles the JWS it posts from accountd's signature.  Nothing
here imports ``cryptography`` (the client's start-up and memory depend on
it); keys, signing and verification live in ``lacme.protocol.jwk_keys``.  No I/O.

Implements RFC 7515 section 2 (base64url without padding), 5.1 (signing
input) and 7.2.2 (flattened JSON serialization); RFC 7518 sections 6.2.1
and 6.3.1 (EC and RSA public keys as JWK); RFC 7638 (JWK thumbprint);
RFC 8555 section 6.3 (POST-as-GET: an empty payload).
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any, NamedTuple

try:  # the interpreter's own SHA-256, as the random module does: hashlib would
    # load a second OpenSSL into lacme-accountd (~3.5 MB) for one digest
    # (Python <= 3.11: _sha256, >= 3.12: _sha2)
    from _sha256 import sha256 as _sha256  # type: ignore[import-not-found]  # CPython-private: no stubs
except ImportError:
    try:
        from _sha2 import sha256 as _sha256  # type: ignore[import-not-found]  # CPython-private: no stubs
    except ImportError:
        from hashlib import sha256 as _sha256

_B64U = re.compile(r"[A-Za-z0-9_-]*\Z")

MIN_RSA_BITS = 2048


class Curve(NamedTuple):
    """A short Weierstrass curve y^2 = x^3 - 3x + b over GF(p) (FIPS 186-4 D.1.2)."""

    alg: str  # the JWS alg of RFC 7518 3.4
    size: int  # octets of one coordinate, and of R and of S
    p: int
    b: int


# RFC 7518 6.2.1.1: the JWK "crv" names, with their FIPS 186-4 D.1.2 parameters.
CURVES = {
    "P-256": Curve(
        "ES256", 32,
        2**256 - 2**224 + 2**192 + 2**96 - 1,
        0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B,
    ),
    "P-384": Curve(
        "ES384", 48,
        2**384 - 2**128 - 2**96 + 2**32 - 1,
        0xB3312FA7E23EE7E4988E056BE3F82D19181D9C6EFE8141120314088F5013875AC656398D8A2ED19D2A85C8EDD3EC2AEF,
    ),
}

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


def int_to_bytes(value: int, size: int | None = None) -> bytes:
    """Big-endian octets of ``value``: ``size`` of them, or as few as it takes (at least one)."""
    if size is None:
        size = max(1, (value.bit_length() + 7) // 8)
    return value.to_bytes(size, "big")


def jwk_thumbprint(jwk: dict) -> str:
    """RFC 7638: base64url(SHA-256(canonical JSON of the required members))."""
    kty = jwk.get("kty")
    members = _THUMBPRINT_MEMBERS.get(kty) if isinstance(kty, str) else None
    if members is None:
        raise ValueError(f"JWK: unsupported kty {jwk.get('kty')!r}")
    missing = [m for m in members if not isinstance(jwk.get(m), str)]
    if missing:
        raise ValueError(f"JWK: missing member {missing[0]!r}")
    required = {m: jwk[m] for m in members}
    return b64u_encode(_sha256(canonical_json(required)).digest())


def public_jwk_alg(jwk: dict) -> str:
    """The JWS alg of a usable public JWK; ValueError if it is not one.

    Usable: RSA with at least MIN_RSA_BITS bits and an odd exponent
    3 <= e < n (RFC 7518 6.3.1); EC on P-256 or P-384 with coordinates of the
    curve's size describing a point on the curve (RFC 7518 6.2.1; with
    cofactor 1 every such point generates the curve's group).  The checks a
    key library makes when it builds a public key, without the library.
    """
    kty = jwk.get("kty")
    if kty == "RSA":
        n = int.from_bytes(b64u_decode(_member(jwk, "n")), "big")
        e = int.from_bytes(b64u_decode(_member(jwk, "e")), "big")
        if n < 3 or not 3 <= e < n or e % 2 == 0:
            raise ValueError("JWK: invalid RSA modulus or exponent")
        if n.bit_length() < MIN_RSA_BITS:
            raise ValueError(f"RSA key of {n.bit_length()} bits is too small (at least {MIN_RSA_BITS})")
        return "RS256"
    if kty == "EC":
        curve = CURVES.get(_member(jwk, "crv"))
        if curve is None:
            raise ValueError(f"JWK: unsupported crv {jwk.get('crv')!r}")
        x, y = b64u_decode(_member(jwk, "x")), b64u_decode(_member(jwk, "y"))
        if len(x) != curve.size or len(y) != curve.size:
            raise ValueError("JWK: EC coordinates of the wrong length")
        if not on_curve(curve, int.from_bytes(x, "big"), int.from_bytes(y, "big")):
            raise ValueError("JWK: the EC point is not on the curve")
        return curve.alg
    raise ValueError(f"JWK: unsupported kty {kty!r}")


def on_curve(curve: Curve, x: int, y: int) -> bool:
    """(x, y) are field elements satisfying the curve equation (SEC 1 3.2.2.1 step 2-3)."""
    p = curve.p
    if not (0 <= x < p and 0 <= y < p):
        return False
    return (y * y - (x * x * x - 3 * x + curve.b)) % p == 0


def _member(jwk: dict, name: str) -> str:
    value = jwk.get(name)
    if not isinstance(value, str):
        raise ValueError(f"JWK: member {name!r} missing or not a string")
    return value


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

