"""The RFC 8555 objects the client reads, decoded into typed records.

Run inside the unprivileged ACME client (``lacme-client``).  Everything here
comes from the CA and is not trusted: each ``from_json`` takes a decoded JSON
value of any shape, keeps only members of the expected types, and raises
AcmeError (naming the URL) where the flow cannot go on without a member.
Text from the CA is escaped (``lacme.core.text``) wherever it is printed.
``parse_json`` is the first step for every body: JSON of a bounded depth.
Implements RFC 8555 6.7 (problem documents, RFC 7807), 7.1.2 (account),
7.1.3 (order), 7.1.4 (authorization) and 7.1.5 / 8 (challenge).  Pure.
"""

from __future__ import annotations

import email.utils
import json
import time
from typing import Any

from lacme.core.errors import AcmeError
from lacme.core.record import Record
from lacme.core.text import escape_text

ERROR_NS = "urn:ietf:params:acme:error:"
BAD_NONCE = ERROR_NS + "badNonce"
# RFC 8555 7.1.6: every status an order can have.
ORDER_STATUSES = frozenset({"pending", "ready", "processing", "valid", "invalid"})
MAX_JSON_DEPTH = 32  # nesting of arrays and objects in anything the server sends


def json_depth_exceeds(data: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """True when arrays/objects in ``data`` nest deeper than ``limit``.

    A linear scan that skips strings, run before json.loads so that a deeply
    nested document is refused without recursion.
    """
    depth = 0
    in_string = escaped = False
    for byte in data:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > limit:
                return True
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return False


def parse_json(data: bytes) -> Any:
    """Decode a JSON body: size and depth already bounded; ValueError if malformed."""
    if json_depth_exceeds(data):
        raise ValueError(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        return json.loads(data.decode("utf-8"), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, RecursionError) as exc:
        raise ValueError(str(exc)) from None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


class Identifier(Record):
    """An identifier object (RFC 8555 7.1.4, 9.7.7): ``{"type": "dns", "value": ...}``."""

    type: str
    value: str

    @classmethod
    def from_json(cls, obj: Any) -> Identifier | None:
        """None unless ``obj`` is an object; members that are not strings read as ""."""
        if not isinstance(obj, dict):
            return None
        return cls(type=_text(obj.get("type")), value=_text(obj.get("value")))

    def __str__(self) -> str:
        return escape_text(f"{self.type}:{self.value}", 120)


class Problem(Record):
    """An RFC 7807 problem document as ACME uses it (RFC 8555 6.7)."""

    type: str
    detail: str
    status: int
    subproblems: tuple[Problem, ...] = ()
    identifier: str = ""

    @classmethod
    def from_json(cls, obj: Any, status: int = 0) -> Problem:
        """Build from a decoded problem document; tolerant of missing members."""
        if not isinstance(obj, dict):
            return cls(type="", detail="", status=status)
        subs = obj.get("subproblems")
        return cls(
            type=_text(obj.get("type")),
            detail=_text(obj.get("detail")),
            status=obj["status"] if isinstance(obj.get("status"), int) else status,
            subproblems=tuple(cls.from_json(s, status) for s in subs) if isinstance(subs, list) else (),
            identifier=str(Identifier.from_json(obj.get("identifier")) or ""),
        )

    def __str__(self) -> str:
        words = [str(self.status)] if self.status else []
        if self.type:
            words.append(escape_text(self.type, 120))
        text = " ".join(words)
        if self.detail:
            text += f" ({escape_text(self.detail)})"
        for sub in self.subproblems[:5]:
            text += f"; {sub.identifier or '?'}: {sub.type_short()} ({escape_text(sub.detail, 120)})"
        return text or "unknown problem"

    def type_short(self) -> str:
        kind = self.type[len(ERROR_NS):] if self.type.startswith(ERROR_NS) else self.type
        return escape_text(kind, 80)


class AcmeProblemError(AcmeError):
    """The server answered a request with an error; ``problem`` says which."""

    def __init__(self, url: str, problem: Problem, retry_after: float | None = None) -> None:
        super().__init__(f"{escape_text(url, 200)}: {problem}")
        self.url = url
        self.problem = problem
        self.retry_after = retry_after  # the answer's Retry-After, seconds (rateLimited)


class Account(Record):
    """An account as newAccount returns it (RFC 8555 7.3)."""

    url: str
    body: dict
    created: bool  # 201: a new account; 200: the key was already registered


class Challenge(Record):
    """A challenge object (RFC 8555 7.1.5, 8): what to prove, where to say it is ready."""

    type: str
    url: str
    status: str  # "pending" when the CA leaves it out
    token: str  # "" unless a string (http-01, dns-01: RFC 8555 8.3, 8.4)
    error: Problem | None
    issuer_domain_names: tuple[str, ...] = ()  # dns-persist-01 (draft-ietf-acme-dns-persist)

    @classmethod
    def from_json(cls, obj: Any) -> Challenge | None:
        if not isinstance(obj, dict):
            return None
        error = obj.get("error")
        issuers = obj.get("issuer-domain-names")
        return cls(type=_text(obj.get("type")), url=_text(obj.get("url")),
                   status=_text(obj.get("status", "pending")), token=_text(obj.get("token")),
                   error=Problem.from_json(error) if isinstance(error, dict) else None,
                   issuer_domain_names=tuple(i for i in issuers if isinstance(i, str))[:10]
                   if isinstance(issuers, list) else ())


class Authorization(Record):
    """An authorization object (RFC 8555 7.1.4), fetched from ``url``."""

    url: str
    identifier: Identifier | None
    status: str
    challenges: tuple[Challenge, ...]
    wildcard: bool = False  # RFC 8555 7.1.4: for a "*." name of the order

    @classmethod
    def from_json(cls, url: str, obj: Any) -> Authorization:
        if not isinstance(obj, dict):
            raise AcmeError(f"{escape_text(url, 200)}: not a JSON object")
        found = obj.get("challenges")
        challenges = [Challenge.from_json(c) for c in found] if isinstance(found, list) else []
        return cls(url=url, identifier=Identifier.from_json(obj.get("identifier")),
                   status=_text(obj.get("status")), challenges=tuple(c for c in challenges if c),
                   wildcard=obj.get("wildcard") is True)

    def challenge(self, kind: str) -> Challenge | None:
        """The first challenge of type ``kind`` (``http-01``), if the CA offers one."""
        return next((c for c in self.challenges if c.type == kind), None)

    def describe(self) -> str:
        """``dns:www.example.org`` (escaped), ``?`` without an identifier."""
        return str(self.identifier) if self.identifier else "?"


class Order(Record):
    """An order object (RFC 8555 7.1.3) as found at ``url``.

    ``identifiers`` is None when the CA left them out; ``finalize`` and
    ``certificate`` are "" until the CA gives them (checked where they are
    used: finalize when the order is ready, certificate when it is valid).
    """

    url: str
    status: str
    identifiers: tuple[Identifier, ...] | None
    authorizations: tuple[str, ...]
    finalize: str
    certificate: str
    error: Problem | None

    @classmethod
    def from_json(cls, url: str, obj: Any, *, source: str | None = None) -> Order:
        """The order at ``url``, or AcmeError for a status RFC 8555 7.1.6 does
        not know or malformed identifiers, authorizations, finalize or
        certificate.  ``source``: the URL that answered, when it is not the
        order's own (finalize), named in the errors."""
        where = escape_text(source or url, 200)
        if not isinstance(obj, dict):
            raise AcmeError(f"{where}: order is not a JSON object")
        status = _text(obj.get("status"))
        if status not in ORDER_STATUSES:
            raise AcmeError(f"{where}: unknown order status {escape_text(status, 40)!r}")
        found = obj.get("identifiers")
        identifiers = None
        if found is not None:
            if not isinstance(found, list) or not all(isinstance(i, dict) for i in found):
                raise AcmeError(f"{where}: malformed identifiers in the order")
            identifiers = tuple(Identifier(_text(i.get("type")), _text(i.get("value"))) for i in found)
        authorizations = obj.get("authorizations") or []
        if not isinstance(authorizations, list) or not all(isinstance(a, str) for a in authorizations):
            raise AcmeError(f"{where}: malformed authorizations in the order")
        for name in ("finalize", "certificate"):
            if not isinstance(obj.get(name, ""), str):
                raise AcmeError(f"{where}: malformed {name} URL in the order")
        error = obj.get("error")
        return cls(url=url, status=status, identifiers=identifiers,
                   authorizations=tuple(authorizations), finalize=obj.get("finalize", ""),
                   certificate=obj.get("certificate", ""),
                   error=Problem.from_json(error) if isinstance(error, dict) else None)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After value (delay-seconds or HTTP-date)."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def parse_http_date(value: str | None) -> float | None:
    """An HTTP-date (RFC 9110 5.6.7, GMT) as a POSIX timestamp; None if absent or unreadable."""
    try:
        when = email.utils.parsedate_to_datetime(value) if value else None
    except (TypeError, ValueError, IndexError):
        return None
    return None if when is None or when.tzinfo is None else when.timestamp()
