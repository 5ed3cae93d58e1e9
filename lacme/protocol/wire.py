"""The lacme-accountd wire protocol, version 1, as pure bytes-in, values-out functions.

Spoken between lacme-accountd (which holds the account key) and the
unprivileged ACME client, over a UNIX socket, a socket pair or ssh;
compatible with Debian's lacme-accountd 0.8.2 both ways (our greeting has
its members, and extensions that its client ignores).  No I/O here.

    server: "1 OK " JSON {alg, jwk-thumbprint[, kid][, eab-kid, eab-alg][, new-alg, new-jwk]
                          [, scope]} CRLF
            canonical JWK CRLF                 ("{}" when a key id is set)
    master: [ scope ]                          (extension, see below)
    client: b64u(protected) "." b64u(payload) CRLF     (one per request)
    server: b64u(signature) CRLF               (or closes the connection)

    scope = JSON {"lacme-scope": 1, ...} CRLF  (lacme.protocol.scope)

The scope extension: an accountd that enforces scopes says ``"scope": 1``
in its greeting (Debian's 0.8.2 does not, and its client ignores the
member).  The master reads the greeting without consuming it (MSG_PEEK),
and only when it sees the capability writes one scope line before it hands
the connection to the client, which then reads the greeting as always.
The scope is the first line or nothing: accountd refuses a scope anywhere
else (a second one, or one the client sends), and with ``require-scope``
a connection whose first line is not a scope.  Nothing answers the scope;
a request outside it is refused by closing, as any refused request.  A
line is a scope when it starts with "{", which base64url never does.

``new-alg`` and ``new-jwk`` (an extension too) announce the new key of an
account key rollover (lacme.protocol.rollover), which signs only the two
requests that rule allows.
``eab-kid`` and ``eab-alg`` (an extension; Debian's lacme-accountd 0.8.2
sends neither and its clients ignore them) say that this accountd holds an
External Account Binding MAC key (RFC 8555 7.3.4, lacme.protocol.eab): a
request whose protected header has that MAC ``alg`` is the binding's signing
input, answered with its MAC.

The server signs the request line itself, the JWS signing input of RFC 7515
section 5.1.  ``parse_sign_request`` is what stands between the client and
the account key: it accepts only well-formed RFC 8555 section 6.2 protected
headers for this key, optionally pinned to the CA's origin (RFC 6454).
"""

from __future__ import annotations

import json
import re
from typing import Any, NamedTuple

from lacme.core.errors import ProtocolError
from lacme.core.origin import origin_of
from lacme.core.record import Record
from lacme.protocol import eab, jws, rollover

PROTOCOL_VERSION = 1
PEER = "lacme-accountd"  # how the client names accountd, first in its error lines
# The environment variable through which a master pins the accountd it
# spawns to the CA's origin (accountd then refuses to sign for any other).
ORIGIN_VARIABLE = "LACME_ACCOUNTD_ORIGIN"
MAX_LINE = 64 * 1024  # octets, CRLF included
CRLF = b"\r\n"

ALGORITHMS = {"RS256": ("RSA", None), "ES256": ("EC", "P-256"), "ES384": ("EC", "P-384")}
HEADER_MEMBERS = frozenset({"alg", "nonce", "url", "jwk", "kid"})

_GREETING = re.compile(rb"(\d+) OK(?: ([^\r\n]*))?\r\n\Z")
_REQUEST = re.compile(rb"([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]*)\r\n\Z")


class Greeting(Record):
    """What accountd announces on connect: the key's alg, thumbprint, key id, JWK."""

    alg: str
    jwk_thumbprint: str
    kid: str | None
    jwk: dict  # {} when kid is set
    scope: int = 0  # the scope version this accountd enforces (0: none, as Perl's 0.8.2)
    eab_kid: str | None = None  # the EAB key identifier, when accountd holds a MAC key
    eab_alg: str | None = None
    new_alg: str | None = None  # a rollover's new key (lacme.protocol.rollover), when held
    new_jwk: dict | None = None


class SignRequest(NamedTuple):
    """An accepted request: the octets to sign and what they say (one per
    signature: a tuple is the cheapest record to build)."""

    signing_input: bytes  # the line without CRLF
    header: dict
    payload: bytes  # decoded; b"" for POST-as-GET
    body: dict | None  # the payload's JSON object; None for POST-as-GET


class Refused(Exception):
    """A request accountd does not sign; ``reason`` is for the log."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def encode_greeting(g: Greeting) -> bytes:
    """The two greeting lines."""
    extra: dict[str, Any] = {"alg": g.alg, "jwk-thumbprint": g.jwk_thumbprint}
    if g.kid is not None:
        extra["kid"] = g.kid
    if g.scope:
        extra["scope"] = g.scope
    if g.eab_kid is not None:
        extra["eab-kid"] = g.eab_kid
        extra["eab-alg"] = g.eab_alg or eab.DEFAULT_ALGORITHM
    if g.new_jwk is not None:
        extra["new-alg"] = g.new_alg
        extra["new-jwk"] = g.new_jwk
    # with a key id the JWK is not served, except during a rollover: keyChange
    # names the current key (its oldKey), and the key id still refuses jwk requests
    jwk = b"{}" if g.kid is not None and g.new_jwk is None else jws.canonical_json(g.jwk)
    return b"%d OK " % PROTOCOL_VERSION + jws.canonical_json(extra) + CRLF + jwk + CRLF


def parse_greeting(first_line: bytes, jwk_line: bytes) -> Greeting:
    """Decode and check both greeting lines (CRLF included); ProtocolError on anything odd.

    As the original client does, a missing thumbprint is computed from the
    JWK and a missing alg means RS256.
    """
    match = _GREETING.match(first_line)
    if not match:
        raise ProtocolError(f"accountd: malformed greeting {_show(first_line)}")
    if int(match.group(1)) != PROTOCOL_VERSION:
        raise ProtocolError(f"accountd: unsupported protocol version {match.group(1).decode()}")
    extra = decode_object(match.group(2) or b"{}", "accountd: greeting", ProtocolError)
    jwk_text = _strip_crlf(jwk_line, ProtocolError, "accountd: JWK line")
    jwk = decode_object(jwk_text, "accountd: JWK", ProtocolError)
    alg = _optional_str(extra, "alg") or "RS256"
    kid = _optional_str(extra, "kid") or None
    thumbprint = _optional_str(extra, "jwk-thumbprint")
    if alg not in ALGORITHMS:
        raise ProtocolError(f"accountd: unsupported alg {alg!r}")
    if jwk:
        _check_jwk(jwk, alg)
        computed = jws.jwk_thumbprint(jwk)
        if thumbprint is not None and thumbprint != computed:
            raise ProtocolError("accountd: jwk-thumbprint does not match the JWK")
        thumbprint = computed
    elif kid is None:
        raise ProtocolError("accountd: empty JWK and no kid")
    if not thumbprint:
        raise ProtocolError("accountd: no jwk-thumbprint")
    eab_kid = _optional_str(extra, "eab-kid") or None
    eab_alg = _optional_str(extra, "eab-alg") or (eab.DEFAULT_ALGORITHM if eab_kid else None)
    if eab_alg is not None and eab_alg not in eab.ALGORITHMS:
        raise ProtocolError(f"accountd: unsupported eab-alg {eab_alg!r}")
    new_alg, new_jwk = _optional_str(extra, "new-alg"), extra.get("new-jwk")
    if new_jwk is not None:
        if not isinstance(new_jwk, dict) or new_alg not in ALGORITHMS:
            raise ProtocolError("accountd: greeting new-jwk/new-alg is not a JWK and its alg")
        _check_jwk(new_jwk, new_alg)
    scope = extra.get("scope", 0)
    if not isinstance(scope, int) or isinstance(scope, bool) or scope < 0:
        raise ProtocolError("accountd: greeting scope is not a version number")
    return Greeting(alg=alg, jwk_thumbprint=thumbprint, kid=kid, jwk=jwk, eab_kid=eab_kid,
                    eab_alg=eab_alg, new_alg=new_alg if new_jwk else None, new_jwk=new_jwk,
                    scope=scope)


def _check_jwk(jwk: dict, alg: str) -> None:
    kty, crv = ALGORITHMS[alg]
    if jwk.get("kty") != kty or (crv is not None and jwk.get("crv") != crv):
        raise ProtocolError(f"accountd: JWK does not fit alg {alg}")
    try:
        jws.public_jwk_alg(jwk)  # a usable key, checked without loading a key library
    except ValueError as exc:
        raise ProtocolError(f"accountd: {exc}") from None


def encode_sign_request(signing_input: str) -> bytes:
    """The request line for a signing input made by ``jws.signing_input``."""
    return signing_input.encode("ascii") + CRLF


def parse_sign_request(
    line: bytes, *, alg: str, jwk: dict, kid: str | None, origin: str | None,
    binding: tuple[str, str] | None = None, new_key: tuple[str, dict] | None = None,
) -> SignRequest:
    """Accept ``line`` (CRLF included) for signing, or raise Refused.

    Accepted: two base64url parts; a protected header that is a JSON object
    with only RFC 8555 6.2 members, ``alg`` equal to the key's, a non-empty
    string ``nonce`` and ``url``, and exactly one of ``jwk`` (equal to the
    served JWK) or ``kid`` (a string; the configured one when ``kid`` is set,
    in which case ``jwk`` is refused); a payload that is empty (POST-as-GET)
    or a JSON object.  With ``origin`` (scheme://host[:port]) the url must be
    https and on that origin exactly.
    """
    if len(line) > MAX_LINE:
        raise Refused(f"request longer than {MAX_LINE} octets")
    match = _REQUEST.match(line)
    if not match:
        raise Refused("not a JWS signing input (b64u.b64u CRLF)")
    header_raw = _b64u(match.group(1), "protected header")
    payload = _b64u(match.group(2), "payload")
    header = decode_object(header_raw, "protected header", Refused)
    if eab.is_binding(header):
        _check_binding(header, payload, jwk=jwk, binding=binding, origin=origin)
        return SignRequest(signing_input=line[:-2], header=header, payload=payload,
                           body=decode_object(payload, "payload", Refused))
    if new_key is not None and rollover.is_new_key_request(header, new_key[1]):
        try:
            rollover.check_new_key_request(header, payload, new_alg=new_key[0], new_jwk=new_key[1],
                                           old_jwk=jwk)
        except rollover.RolloverError as exc:
            raise Refused(str(exc)) from None
        if origin is not None:
            _check_origin(header["url"], origin)
        return SignRequest(signing_input=line[:-2], header=header, payload=payload,
                           body=decode_object(payload, "payload", Refused))
    _check_header(header, alg=alg, jwk=jwk, kid=kid, origin=origin)
    body = decode_object(payload, "payload", Refused) if payload else None
    return SignRequest(signing_input=line[:-2], header=header, payload=payload, body=body)


def _check_binding(header: dict, payload: bytes, *, jwk: dict, binding: tuple[str, str] | None,
                   origin: str | None) -> None:
    """An External Account Binding request (``binding``: the MAC key's
    (alg, kid)): for this account key's JWK, on the pinned origin."""
    if binding is None:
        raise Refused("External Account Binding requested, and no MAC key is configured")
    if not jwk:
        raise Refused("External Account Binding requested, and a key id is configured")
    try:
        eab.check_binding(header, payload, alg=binding[0], kid=binding[1], jwk=jwk)
    except eab.BindingError as exc:
        raise Refused(str(exc)) from None
    if origin is not None:
        _check_origin(header["url"], origin)


def _check_header(header: dict, *, alg: str, jwk: dict, kid: str | None, origin: str | None) -> None:
    unexpected = sorted(set(header) - HEADER_MEMBERS)
    if unexpected:
        raise Refused(f"protected header: unexpected member {unexpected[0]!r}")
    if header.get("alg") != alg:
        raise Refused(f"protected header: alg {header.get('alg')!r} is not {alg}")
    for name in ("nonce", "url"):
        if not isinstance(header.get(name), str) or not header[name]:
            raise Refused(f"protected header: {name} missing or not a non-empty string")
    if ("jwk" in header) == ("kid" in header):
        raise Refused("protected header: needs exactly one of jwk and kid")
    if "jwk" in header:
        if kid is not None:
            raise Refused("protected header: jwk refused, a key id is configured")
        if header["jwk"] != jwk:
            raise Refused("protected header: jwk is not this account key")
    else:
        if not isinstance(header["kid"], str) or not header["kid"]:
            raise Refused("protected header: kid is not a non-empty string")
        if kid is not None and header["kid"] != kid:
            raise Refused("protected header: kid is not the configured key id")
    if origin is not None:
        _check_origin(header["url"], origin)


def _check_origin(url: str, origin: str) -> None:
    try:
        pinned = origin_of(origin)
        actual = origin_of(url)
    except ValueError as exc:
        raise Refused(f"protected header: url {url!r}: {exc}") from None
    if actual != pinned:
        raise Refused(f"protected header: url {url!r} is not on {pinned}")


def encode_signature(sig: bytes) -> bytes:
    """The answer line carrying a signature."""
    return jws.b64u_encode(sig).encode("ascii") + CRLF


def parse_signature(line: bytes) -> bytes:
    """The signature in an answer line (CRLF included); ProtocolError if malformed."""
    body = _strip_crlf(line, ProtocolError, "accountd: signature line")
    try:
        sig = jws.b64u_decode(body)
    except ValueError:
        raise ProtocolError(f"accountd: malformed signature line {_show(line)}") from None
    if not sig:
        raise ProtocolError("accountd: empty signature")
    return sig


def _strip_crlf(line: bytes, error: type[Exception], what: str) -> bytes:
    if not line.endswith(CRLF) or b"\n" in line[:-2] or b"\r" in line[:-2]:
        raise error(f"{what}: not one CRLF-terminated line")
    return line[:-2]


def _b64u(part: bytes, what: str) -> bytes:
    try:
        return jws.b64u_decode(part)
    except ValueError as exc:
        raise Refused(f"{what}: {exc}") from None


def decode_object(raw: bytes, what: str, error: type[Exception]) -> dict:
    """Strict JSON object: UTF-8, no duplicate members, no NaN/Infinity."""
    try:
        value = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise error(f"{what}: invalid JSON ({_first_line(exc)})") from None
    if not isinstance(value, dict):
        raise error(f"{what}: not a JSON object")
    return value


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("duplicate member")
    return result


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _optional_str(obj: dict, name: str) -> str | None:
    value = obj.get(name)
    if value is not None and not isinstance(value, str):
        raise ProtocolError(f"accountd: greeting {name} is not a string")
    return value


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _show(line: bytes, limit: int = 80) -> str:
    """A short, printable rendering of peer input for error messages."""
    return repr(line[:limit]) + ("..." if len(line) > limit else "")
