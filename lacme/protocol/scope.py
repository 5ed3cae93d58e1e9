"""What one accountd connection may sign: the scope message and the classifier.

Pure; shared by the master (which builds a scope from the command and the
configuration) and lacme-accountd (which enforces it).  A scope is one JSON
object on one CRLF line, the first line on a fresh accountd connection,
written by the master before it hands the descriptor to the client (see
the grammar in ``lacme.protocol.wire``)::

    {"lacme-scope": 1, "origin": "https://ca.example:14000",
     "operations": ["newOrder"],
     "identifiers": [{"type": "dns", "value": "www.example.org"}],
     "csr-digests": [b64u(SHA-256(CSR DER))],
     "profiles": ["shortlived"],                  (newOrder's profile, if any)
     "contact": ["mailto:..."], "tos": true,                 (account commands)
     "certificates": [{"digest": b64u(SHA-256(DER)), "reason": 4}]}   (revokeCert)

A signing input is classified by its payload, whose members say which
RFC 8555 resource it is for (each resource requires its own member):
POST-as-GET (6.3, empty payload), a challenge response ``{}`` (7.5.1),
the account lookup ``onlyReturnExisting`` (7.3.1), newAccount (7.3),
an account update (7.3.2) or deactivation (7.3.6), keyChange (7.3.5, a
JWS as payload), newOrder (7.4), finalize (7.4) and revokeCert (7.6); an
External Account Binding's MAC (7.3.4) goes with newAccount.
Anything else is ``other``.  ``refusal`` says why a scope does not cover
an operation; the lookup and POST-as-GET are always covered (renewalInfo,
RFC 9773, is not signed at all).
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable
from typing import Any, NamedTuple

from lacme.core.record import Record
from lacme.core.text import escape_text
from lacme.protocol import jws
from lacme.protocol.eab import is_binding
from lacme.protocol.wire import Refused, decode_object

SCOPE_VERSION = 1
SCOPE_MEMBER = "lacme-scope"
# octets, CRLF included: room for thousands of orders (a signing input has wire.MAX_LINE)
MAX_SCOPE_LINE = 4 * 1024 * 1024

# Operation kinds.  The first six are those a scope or a policy names.
NEW_ORDER = "newOrder"  # with its challenge responses and finalize
NEW_ACCOUNT = "newAccount"  # registration
UPDATE_ACCOUNT = "updateAccount"  # contacts
DEACTIVATE_ACCOUNT = "deactivateAccount"
REVOKE_CERT = "revokeCert"
KEY_CHANGE = "keyChange"  # the account key rollover (7.3.5): outer and inner JWS
OPERATIONS = (NEW_ORDER, NEW_ACCOUNT, UPDATE_ACCOUNT, DEACTIVATE_ACCOUNT, REVOKE_CERT, KEY_CHANGE)
POST_AS_GET = "POST-as-GET"
CHALLENGE = "challenge"
LOOKUP = "lookup"
FINALIZE = "finalize"
BINDING = "externalAccountBinding"  # the MAC of RFC 8555 7.3.4, made for a registration
OTHER = "other"
ALWAYS = frozenset({POST_AS_GET, LOOKUP})
# What each scope operation brings along with it.
IMPLIES = {NEW_ORDER: frozenset({NEW_ORDER, CHALLENGE, FINALIZE}),
           NEW_ACCOUNT: frozenset({NEW_ACCOUNT, BINDING})}

# No notBefore/notAfter (7.4): no lacme client sends them (nor Debian's), and a CA that
# honours them issues, for the run's names and CSR, a certificate that expires in minutes.
_ORDER_MEMBERS = frozenset({"identifiers", "replaces", "profile"})
_REGISTER_MEMBERS = frozenset({"contact", "termsOfServiceAgreed", "onlyReturnExisting",
                               "externalAccountBinding"})
_JWS_MEMBERS = frozenset({"protected", "payload", "signature"})


class Operation(NamedTuple):
    """What a signing input asks for (a tuple: one per signature)."""

    kind: str
    identifiers: frozenset[tuple[str, str]] = frozenset()
    # finalize: the CSR's; revokeCert: the certificate's; keyChange: the new key's JWK thumbprint
    digest: str = ""
    reason: int | None = None  # revokeCert
    contact: tuple[str, ...] = ()
    tos: bool = False
    binding: tuple[str, str] | None = None  # newAccount: its binding's (alg, kid), ("", "") unreadable
    profile: str = ""  # newOrder: the ACME profile asked for ("" none)

    def describe(self) -> str:
        if self.identifiers:
            return f"{self.kind} for {show_names(v for _, v in self.identifiers)}"
        return self.kind


class Scope(Record):
    """What the master allows one connection to sign."""

    origin: str | None = None
    operations: frozenset[str] = frozenset()
    identifiers: frozenset[tuple[str, str]] = frozenset()
    csr_digests: frozenset[str] = frozenset()
    profiles: frozenset[str] = frozenset()  # a newOrder may name one of these, or none
    contact: tuple[str, ...] = ()
    tos: bool = False
    certificates: frozenset[tuple[str, int | None]] = frozenset()

    def covers(self) -> frozenset[str]:
        """The operation kinds this scope may sign."""
        kinds = set(ALWAYS)
        for op in self.operations:
            kinds |= IMPLIES.get(op, {op})
        return frozenset(kinds)

    def signature_budget(self) -> int:
        """How many signatures the connection may make: generous, from the size
        of the work (each identifier is an authorization, a challenge and polls)."""
        return 64 + 64 * len(self.identifiers) + 16 * (len(self.csr_digests) + len(self.certificates))


def show_names(values: Iterable[str]) -> str:
    """Identifier values for a refusal, which goes to accountd's log and the
    master's error line: the client wrote them, so they are escaped (a name
    with a line break would forge a line of the record of what was signed)."""
    return ", ".join(escape_text(v, ascii_only=True) for v in sorted(values))


def digest(der: bytes) -> str:
    """How a scope names a CSR or a certificate: base64url SHA-256 of its DER."""
    return jws.b64u_encode(hashlib.sha256(der).digest())


def identifier(kind: str, value: str) -> tuple[str, str]:
    """An RFC 8555 identifier compared the way the CA compares it: DNS names
    without case (RFC 4343), IP addresses (RFC 8738) in their canonical text."""
    if kind == "dns":
        return kind, value.lower()
    if kind == "ip":
        try:
            return kind, ipaddress.ip_address(value).compressed
        except ValueError:
            return kind, value
    return kind, value


# ---------------------------------------------------------------------------
# The scope message


def is_scope_line(line: bytes) -> bool:
    """A scope, not a signing input (which starts with base64url)."""
    return line.startswith(b"{")


def encode_scope(scope: Scope) -> bytes:
    obj: dict[str, Any] = {SCOPE_MEMBER: SCOPE_VERSION, "operations": sorted(scope.operations)}
    if scope.origin:
        obj["origin"] = scope.origin
    if scope.identifiers:
        obj["identifiers"] = [{"type": t, "value": v} for t, v in sorted(scope.identifiers)]
    if scope.csr_digests:
        obj["csr-digests"] = sorted(scope.csr_digests)
    if scope.profiles:
        obj["profiles"] = sorted(scope.profiles)
    if scope.contact:
        obj["contact"] = list(scope.contact)
    if scope.tos:
        obj["tos"] = True
    if scope.certificates:
        obj["certificates"] = [{"digest": d, "reason": r} for d, r in
                               sorted(scope.certificates, key=lambda c: (c[0], c[1] or 0))]
    return jws.canonical_json(obj) + b"\r\n"


def parse_scope(line: bytes) -> Scope:
    """The scope in ``line`` (CRLF included), or Refused."""
    if not line.endswith(b"\r\n") or b"\n" in line[:-2]:
        raise Refused("scope: not one CRLF-terminated line")
    if len(line) > MAX_SCOPE_LINE:
        raise Refused(f"scope: longer than {MAX_SCOPE_LINE} octets")
    obj = decode_object(line[:-2], "scope", Refused)
    if obj.get(SCOPE_MEMBER) != SCOPE_VERSION:
        raise Refused(f"scope: {SCOPE_MEMBER} is not {SCOPE_VERSION}")
    unknown = sorted(set(obj) - {SCOPE_MEMBER, "origin", "operations", "identifiers", "csr-digests",
                                 "profiles", "contact", "tos", "certificates"})
    if unknown:
        raise Refused(f"scope: unknown member {unknown[0]!r}")
    operations = _strings(obj.get("operations", []), "operations")
    bad = sorted(set(operations) - set(OPERATIONS))
    if bad:
        raise Refused(f"scope: unknown operation {bad[0]!r}")
    origin = obj.get("origin")
    if origin is not None and (not isinstance(origin, str) or not origin):
        raise Refused("scope: origin is not a non-empty string")
    tos = obj.get("tos", False)
    if not isinstance(tos, bool):
        raise Refused("scope: tos is not a boolean")
    return Scope(
        origin=origin,
        operations=frozenset(operations),
        identifiers=frozenset(_identifiers(obj.get("identifiers", []), "scope: identifiers")),
        csr_digests=frozenset(_strings(obj.get("csr-digests", []), "csr-digests")),
        profiles=frozenset(_strings(obj.get("profiles", []), "profiles")),
        contact=tuple(_strings(obj.get("contact", []), "contact")),
        tos=tos,
        certificates=frozenset(_certificates(obj.get("certificates", []))),
    )


def _strings(value: Any, what: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise Refused(f"scope: {what} is not a list of non-empty strings")
    return value


def _identifiers(value: Any, what: str) -> Iterable[tuple[str, str]]:
    if not isinstance(value, list) or (not value and what.startswith("newOrder")):
        raise Refused(f"{what}: not a non-empty list")
    for item in value:
        if (not isinstance(item, dict) or set(item) != {"type", "value"}
                or not all(isinstance(item[k], str) and item[k] for k in ("type", "value"))):
            raise Refused(f"{what}: not a list of {{type, value}} objects")
        yield identifier(item["type"], item["value"])


def _certificates(value: Any) -> Iterable[tuple[str, int | None]]:
    if not isinstance(value, list):
        raise Refused("scope: certificates is not a list")
    for item in value:
        if not isinstance(item, dict) or not isinstance(item.get("digest"), str) \
                or not _is_reason(item.get("reason")) or set(item) - {"digest", "reason"}:
            raise Refused("scope: certificates is not a list of {digest, reason} objects")
        yield item["digest"], item.get("reason")


def _is_reason(value: Any) -> bool:
    return value is None or (isinstance(value, int) and not isinstance(value, bool))


# ---------------------------------------------------------------------------
# The classifier


def classify(header: dict, body: dict | None, *, new_jwk: dict | None = None) -> Operation:
    """What a signing input asks for: ``header`` is its protected header,
    ``body`` its decoded payload (None for POST-as-GET); ``new_jwk``: the new
    key of a rollover, whose requests (lacme.protocol.rollover) are the
    keyChange's inner JWS and the lookup."""
    if new_jwk is not None and header.get("jwk") == new_jwk:
        if body == {"onlyReturnExisting": True}:
            return Operation(LOOKUP)
        return Operation(KEY_CHANGE, digest=_thumbprint(new_jwk))
    if is_binding(header):  # its payload is the account's JWK (lacme.protocol.eab)
        return Operation(BINDING)
    members = set(body or ())
    if "jwk" in header:  # RFC 8555 6.2: only newAccount and revokeCert are signed with the JWK
        if "certificate" in members:
            return _revocation(body or {}, members)
        if body is None or not members <= _REGISTER_MEMBERS:
            return Operation(OTHER)
        if body.get("onlyReturnExisting") is True:
            return Operation(LOOKUP) if members == {"onlyReturnExisting"} else Operation(OTHER)
        contact = body.get("contact", [])
        tos = body.get("termsOfServiceAgreed", False)
        if "onlyReturnExisting" in members or not _string_list(contact) or not isinstance(tos, bool):
            return Operation(OTHER)
        eab = body.get("externalAccountBinding")
        binding = _binding_key(eab) if "externalAccountBinding" in members else None
        return Operation(NEW_ACCOUNT, contact=tuple(contact), tos=tos, binding=binding)
    if body is None:
        return Operation(POST_AS_GET)
    if not members:
        return Operation(CHALLENGE)
    if members <= _JWS_MEMBERS and "signature" in members:
        return Operation(KEY_CHANGE, digest=_inner_key(body["protected"] if "protected" in members else None))
    if "identifiers" in members and members <= _ORDER_MEMBERS:
        profile = body.get("profile", "")
        if not isinstance(profile, str) or ("profile" in members and not profile):
            return Operation(OTHER)
        try:
            idents = frozenset(_identifiers(body["identifiers"], "newOrder identifiers"))
        except Refused:
            return Operation(OTHER)
        return Operation(NEW_ORDER, identifiers=idents, profile=profile)
    if members == {"csr"}:
        return Operation(FINALIZE, digest=_der_digest(body["csr"]))
    if "certificate" in members:
        return _revocation(body, members)
    if members == {"status"} and body["status"] == "deactivated":
        return Operation(DEACTIVATE_ACCOUNT)
    if members == {"contact"} and _string_list(body["contact"]):
        return Operation(UPDATE_ACCOUNT, contact=tuple(body["contact"]))
    return Operation(OTHER)


def _revocation(body: dict, members: set[str]) -> Operation:
    reason = body.get("reason")
    if not members <= {"certificate", "reason"} or not _is_reason(reason):
        return Operation(OTHER)
    return Operation(REVOKE_CERT, digest=_der_digest(body["certificate"]), reason=reason)


def _inner_key(protected: Any) -> str:
    """The thumbprint of the ``jwk`` in keyChange's inner JWS (the key the
    account would answer to, RFC 8555 7.3.5); "" (matches nothing) if unreadable."""
    try:
        header = decode_object(jws.b64u_decode(protected), "inner JWS", ValueError)
    except (TypeError, ValueError):
        return ""
    return _thumbprint(header.get("jwk"))


def _binding_key(value: Any) -> tuple[str, str]:
    """The MAC (alg, kid) of newAccount's externalAccountBinding, a flattened
    JWS (7.3.4); ("", "") (matches nothing) if it is anything else."""
    if not isinstance(value, dict) or set(value) != _JWS_MEMBERS:
        return "", ""
    try:
        header = decode_object(jws.b64u_decode(value["protected"]), "binding", ValueError)
    except (TypeError, ValueError):
        return "", ""
    alg, kid = header.get("alg"), header.get("kid")
    return (alg, kid) if isinstance(alg, str) and isinstance(kid, str) else ("", "")


def _thumbprint(jwk: Any) -> str:
    try:
        return jws.jwk_thumbprint(jwk) if isinstance(jwk, dict) else ""
    except ValueError:
        return ""


def _string_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _der_digest(value: Any) -> str:
    """The digest of a base64url DER member; "" (matches nothing) if malformed or empty."""
    if not isinstance(value, str) or not value:
        return ""
    try:
        return digest(jws.b64u_decode(value))
    except ValueError:
        return ""


def key_change_refusal(op: Operation, new_jwk: dict | None) -> str | None:
    """Why ``op``, a keyChange, is refused by a signer holding ``new_jwk`` (the
    rollover's new key, or None): the outer JWS is signed only when the inner
    one names that key, since the inner key is the one the account gets.
    Otherwise whoever may ask for a keyChange could move the account to a
    key of its own.  None for anything else."""
    if op.kind != KEY_CHANGE:
        return None
    if new_jwk is None:
        return "keyChange, and this accountd holds no new key (--new-privkey)"
    if op.digest != _thumbprint(new_jwk):
        return "keyChange to a key that is not this accountd's new key"
    return None


def binding_refusal(op: Operation, binding: tuple[str, str] | None) -> str | None:
    """Why ``op``, a newAccount with an External Account Binding, is refused by
    a signer whose MAC key is ``binding`` ((alg, kid), or None): only its own
    binding is signed, since the binding says whose account at the CA the new
    account joins (a client with MAC credentials of its own would bind this
    key to them).  None for anything else."""
    if op.kind != NEW_ACCOUNT or op.binding is None:
        return None
    if binding is None:
        return "newAccount with an External Account Binding, and this accountd holds no MAC key"
    if op.binding != binding:
        return ("newAccount with an External Account Binding that is not this accountd's "
                f"(eab-kid {binding[1]})")
    return None


def refusal(scope: Scope, op: Operation) -> str | None:
    """Why ``scope`` does not cover ``op``, or None when it does."""
    if op.kind not in scope.covers():
        return f"{op.describe()} is outside the scope"
    if op.kind == NEW_ORDER:
        if not op.identifiers:
            return "newOrder without identifiers"
        extra = sorted(v for _, v in op.identifiers - scope.identifiers)
        if extra:
            return f"newOrder for {show_names(extra)}, not in the scope"
        # The profile decides what the CA issues (its lifetime, its usages):
        # only one the configuration asked for.  None is the CA's default,
        # what a section without a profile gets.
        if op.profile and op.profile not in scope.profiles:
            return f"newOrder with profile {show_names([op.profile])}, not in the scope"
    elif op.kind == FINALIZE and op.digest not in scope.csr_digests:
        return "finalize with a CSR that is not in the scope"
    elif op.kind in (NEW_ACCOUNT, UPDATE_ACCOUNT) and sorted(op.contact) != sorted(scope.contact):
        return f"{op.kind} with contacts that are not the scope's"
    elif op.kind == NEW_ACCOUNT and op.tos and not scope.tos:
        return "newAccount agreeing to terms of service the scope did not"
    elif op.kind == REVOKE_CERT and (op.digest, op.reason) not in scope.certificates:
        return "revokeCert of a certificate (or with a reason) not in the scope"
    return None
