"""External Account Binding (RFC 8555 7.3.4): the inner JWS that ties a new
ACME account to an account the CA knows by other means.

Shared by the client, which asks for the binding in newAccount, and
lacme-accountd, which holds the MAC key and alone computes the MAC: the
binding is one more signing input on the accountd wire (lacme.protocol.wire),
told apart by its MAC ``alg``.  Its protected header has exactly ``alg``,
``kid`` (the key identifier the CA gave) and ``url`` (newAccount's, the same
as the outer JWS), and no ``nonce``; its payload is the account's public JWK.
Pure: no I/O.
"""

from __future__ import annotations

import hashlib
import hmac

from lacme.protocol import jws

#: MAC algorithms (RFC 7518 3.2) and their hash, for the binding's ``alg``.
ALGORITHMS = {"HS256": "sha256", "HS384": "sha384", "HS512": "sha512"}
DEFAULT_ALGORITHM = "HS256"
HEADER_MEMBERS = frozenset({"alg", "kid", "url"})


class BindingError(ValueError):
    """A binding request accountd does not MAC, or an unusable MAC key."""


def is_binding(header: dict) -> bool:
    """A protected header with a MAC alg: a binding request, not an ACME request."""
    alg = header.get("alg")
    return isinstance(alg, str) and alg in ALGORITHMS  # a peer's alg may be any JSON value


def binding_input(alg: str, kid: str, url: str, jwk: dict) -> str:
    """The binding's signing input, which the client sends to accountd."""
    return jws.signing_input({"alg": alg, "kid": kid, "url": url}, jwk)


def check_binding(header: dict, payload: bytes, *, alg: str, kid: str, jwk: dict) -> None:
    """A binding for this MAC key (``alg``, ``kid``) over this account key
    (``jwk``), or BindingError.  The url's origin is checked by the caller."""
    extra = sorted(set(header) - HEADER_MEMBERS)
    if extra:
        raise BindingError(f"binding header: unexpected member {extra[0]!r}")
    if header.get("alg") != alg:
        raise BindingError(f"binding header: alg {header.get('alg')!r} is not {alg}")
    if header.get("kid") != kid:
        raise BindingError("binding header: kid is not the configured EAB key identifier")
    if not isinstance(header.get("url"), str) or not header["url"]:
        raise BindingError("binding header: url missing or not a non-empty string")
    if payload != jws.canonical_json(jwk):
        raise BindingError("binding payload: not this account's public JWK")


def mac(alg: str, key: bytes, signing_input: bytes) -> bytes:
    return hmac.new(key, signing_input, getattr(hashlib, ALGORITHMS[alg])).digest()


def parse_mac_key(text: str) -> bytes:
    """The MAC key as CAs hand it out: base64url (padding and surrounding
    white space tolerated), at least 16 octets."""
    value = text.strip().rstrip("=")
    try:
        key = jws.b64u_decode(value)
    except ValueError as exc:
        raise BindingError(f"not a base64url MAC key ({exc})") from None
    if len(key) < 16:
        raise BindingError(f"MAC key too short ({len(key)} octets, at least 16)")
    return key
