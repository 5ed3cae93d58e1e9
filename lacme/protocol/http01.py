"""http-01 challenge rules and the small HTTP/1.1 subset the webserver speaks.

Pure: no I/O.  Used by the unprivileged ``lacme-webserver`` (request heads
in, responses out) and by the ACME client (token check, key authorization).
Implements RFC 8555 section 8.1 (key authorization) and 8.3 (token alphabet,
the ``/.well-known/acme-challenge/`` path), and the request-head syntax of
RFC 9112 sections 2-5 with the limits a server may impose (RFC 9110 15.5).

Routing is deliberately an exact match on the raw request target: only the
origin form ``/.well-known/acme-challenge/<token>`` with a base64url token
is a candidate.  Percent-encodings, dot segments, queries, fragments,
absolute-form targets (we are no proxy) and trailing slashes are all 403:
an ACME server never sends them, and no decoding means no decoding bugs.

Cheap to import: both the client and a freshly started webserver load it,
so it compiles no regular expression and builds no dataclass at import;
the checks are character-set tests with ``str.strip`` (C speed).
"""

from __future__ import annotations

import time

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing
if TYPE_CHECKING:
    import re

CHALLENGE_PREFIX = "/.well-known/acme-challenge/"
# RFC 8555 8.3: the token uses the base64url alphabet (RFC 4648 section 5),
# without padding.
BASE64URL_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
MAX_TOKEN_LENGTH = 256

MAX_HEAD = 8192  # whole request head, request line and fields
MAX_REQUEST_LINE = 4096
MAX_TARGET = 2048
MAX_FIELDS = 100
ALLOWED_METHODS = ("GET", "HEAD")

REASONS = {
    200: "OK",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    414: "URI Too Long",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}

_TCHARS = "!#$%&'*+.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz-"  # RFC 9110 5.6.2
_DIGITS = "0123456789"
# RFC 9110 5.5: a field value is VCHAR, obs-text, SP and HTAB; every other control is refused.
_FIELD_VALUE_BAD = bytes([*range(0x00, 0x09), *range(0x0A, 0x20), 0x7F])
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def _all_in(text: str, charset: str) -> bool:
    """True for a non-empty ``text`` made only of characters of ``charset``."""
    return bool(text) and not text.strip(charset)


def __getattr__(name: str) -> re.Pattern[str]:
    # TOKEN_RE, the token rule as a regular expression, for callers that
    # want one; compiled on first use only.  \A...\Z rather than ^...$: "$"
    # would accept a final "\n".
    if name == "TOKEN_RE":
        import re

        pattern = re.compile(r"\A[A-Za-z0-9_-]+\Z")
        globals()["TOKEN_RE"] = pattern
        return pattern
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def is_valid_token(token: str) -> bool:
    """True for a non-empty base64url token of at most MAX_TOKEN_LENGTH."""
    return len(token) <= MAX_TOKEN_LENGTH and _all_in(token, BASE64URL_ALPHABET)


def key_authorization(token: str, thumbprint: str) -> str:
    """RFC 8555 8.1: token "." base64url(JWK thumbprint)."""
    if not is_valid_token(token):
        raise ValueError(f"invalid http-01 token {_escape(token)}")
    if not _all_in(thumbprint, BASE64URL_ALPHABET):
        raise ValueError(f"invalid JWK thumbprint {_escape(thumbprint)}")
    return f"{token}.{thumbprint}"


def _escape(text: str) -> str:
    """Foreign text for an error line, by lacme.core.text's rule."""
    from lacme.core.text import escape_text  # errors only: typing (hence re) stays unloaded

    return escape_text(text, 80, ascii_only=True, quote=True)


class RequestHead:
    """A parsed request head; field names are lower-cased, values trimmed.

    Immutable, compared and hashed by value (what a frozen dataclass would
    give, without the cost of building one at import).
    """

    __slots__ = ("headers", "method", "target", "version")

    method: str
    target: str
    version: str
    headers: tuple[tuple[str, str], ...]

    def __init__(self, method: str, target: str, version: str,
                 headers: tuple[tuple[str, str], ...]) -> None:
        for name, value in (("method", method), ("target", target), ("version", version),
                            ("headers", headers)):
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"RequestHead is immutable: cannot set {name}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"RequestHead is immutable: cannot delete {name}")

    def _fields(self) -> tuple[str, str, str, tuple[tuple[str, str], ...]]:
        return (self.method, self.target, self.version, self.headers)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        assert isinstance(other, RequestHead)
        return self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        return (f"RequestHead(method={self.method!r}, target={self.target!r}, "
                f"version={self.version!r}, headers={self.headers!r})")

    def header(self, name: str) -> str | None:
        """Value of the first field called ``name`` (case-insensitive)."""
        wanted = name.lower()
        return next((v for k, v in self.headers if k == wanted), None)


class BadRequest(ValueError):
    """A request that gets an error status instead of routing."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def find_head_end(buf: bytes) -> int | None:
    """Offset just past the blank line that ends the head in ``buf``.

    None while the head is incomplete.  Empty lines before the request line
    are skipped (RFC 9112 2.2).  Raises BadRequest (414 or 431) as soon as
    ``buf`` has outgrown the limits without completing.
    """
    start = len(buf) - len(buf.lstrip(b"\r\n"))
    # The first LF followed by an empty line: "\n\n" or "\n\r\n" (bare LF
    # line ends are accepted, RFC 9112 2.2), whichever starts first.
    lf_lf = buf.find(b"\n\n", start)
    lf_crlf = buf.find(b"\n\r\n", start)
    if lf_lf >= 0 and (lf_crlf < 0 or lf_lf < lf_crlf):
        return lf_lf + 2
    if lf_crlf >= 0:
        return lf_crlf + 3
    if buf.find(b"\n", start) < 0 and len(buf) - start > MAX_REQUEST_LINE:
        raise BadRequest(414, "request line too long")
    if len(buf) > MAX_HEAD:
        raise BadRequest(431, "request head too large")
    return None


def _split_lines(data: bytes) -> list[bytes]:
    """Lines of a head, CRLF or bare LF terminated (RFC 9112 2.2)."""
    if len(data) > MAX_HEAD:
        raise BadRequest(431, "request head too large")
    if not data.endswith(b"\n"):
        raise BadRequest(400, "request head not terminated")
    lines = [line[:-1] if line.endswith(b"\r") else line for line in data.split(b"\n")]
    while lines and lines[0] == b"":  # leading empty lines
        lines.pop(0)
    if len(lines) < 3 or lines[-1] != b"" or lines[-2] != b"":
        raise BadRequest(400, "request head not terminated by an empty line")
    lines = lines[:-2]
    if any(b"\r" in line for line in lines):
        raise BadRequest(400, "bare CR in request head")
    if len(lines[0]) > MAX_REQUEST_LINE:
        raise BadRequest(414, "request line too long")
    return lines


def _is_version(text: str) -> bool:
    """HTTP-version syntax (RFC 9112 2.3): "HTTP/" DIGIT "." DIGIT."""
    return (len(text) == 8 and text.startswith("HTTP/") and text[6] == "."
            and text[5] in _DIGITS and text[7] in _DIGITS)


def _parse_request_line(line: bytes) -> tuple[str, str, str]:
    """RFC 9112 3: method SP request-target SP HTTP-version, single spaces."""
    try:
        text = line.decode("ascii")
    except UnicodeDecodeError:
        raise BadRequest(400, "non-ASCII request line") from None
    parts = text.split(" ")
    if len(parts) != 3:
        raise BadRequest(400, "malformed request line")
    method, target, version = parts
    # The target: visible ASCII (%x21-7E); ASCII, no space, all printable.
    if not (_all_in(method, _TCHARS) and target and target.isprintable() and _is_version(version)):
        raise BadRequest(400, "malformed request line")
    if len(target) > MAX_TARGET:
        raise BadRequest(414, "request target too long")
    if version not in ("HTTP/1.0", "HTTP/1.1"):
        raise BadRequest(505, f"unsupported version {version}")
    return method, target, version


def _parse_field(line: bytes) -> tuple[str, str]:
    """RFC 9112 5.1: field-name ":" OWS field-value OWS, no space before the colon."""
    if line[:1] in (b" ", b"\t"):
        raise BadRequest(400, "obsolete line folding")
    name, colon, value = line.decode("latin-1").partition(":")
    if not colon or not _all_in(name, _TCHARS):
        raise BadRequest(400, "malformed header field")
    # The name is tchars only: any control character is in the value.
    if len(line.translate(None, _FIELD_VALUE_BAD)) != len(line):
        raise BadRequest(400, f"control character in header field {name}")
    return name.lower(), value.strip(" \t")


def parse_request_head(data: bytes) -> RequestHead:
    """Parse a request head, ``data`` up to and including the blank line.

    Raises BadRequest with 400 (syntax; also a missing or repeated Host in
    HTTP/1.1, RFC 9112 3.2), 414 (request line or target too long), 431
    (head or field count too large) or 505 (not HTTP/1.0 or 1.1).
    """
    lines = _split_lines(data)
    method, target, version = _parse_request_line(lines[0])
    if len(lines) - 1 > MAX_FIELDS:
        raise BadRequest(431, "too many header fields")
    headers = tuple(_parse_field(line) for line in lines[1:])
    hosts = sum(1 for name, _ in headers if name == "host")
    if hosts > 1 or (version == "HTTP/1.1" and hosts == 0):
        raise BadRequest(400, "HTTP/1.1 needs exactly one Host field")
    return RequestHead(method, target, version, headers)


def route(head: RequestHead) -> tuple[int, str | None]:
    """(200, token) for GET/HEAD of a challenge; else (405 or 403, None).

    200 means "candidate": the caller still answers 404 when there is no
    such file.  The method is checked first, so a POST anywhere is 405.
    """
    if head.method not in ALLOWED_METHODS:
        return 405, None
    if not head.target.startswith(CHALLENGE_PREFIX):
        return 403, None
    token = head.target[len(CHALLENGE_PREFIX):]
    if not is_valid_token(token):
        return 403, None
    return 200, token


def http_date(seconds: float) -> str:
    """``seconds`` since the epoch as an IMF-fixdate (RFC 9110 5.6.7), e.g.
    "Sun, 06 Nov 1994 08:49:37 GMT"; English names whatever the locale."""
    t = time.gmtime(seconds)
    return (f"{_DAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year:04d} "
            f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT")


def format_response(
    status: int,
    body: bytes = b"",
    *,
    date: str,
    head_only: bool = False,
    content_type: str | None = None,
) -> bytes:
    """One complete HTTP/1.1 response; the connection is closed after it.

    ``head_only`` (a HEAD request) keeps Content-Length but drops the body
    (RFC 9110 9.3.2).  ``date`` is an IMF-fixdate (RFC 9110 6.6.1).
    """
    lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}", f"Date: {date}"]
    if content_type is not None:
        lines.append(f"Content-Type: {content_type}")
    if status == 405:
        lines.append("Allow: " + ", ".join(ALLOWED_METHODS))
    lines += [f"Content-Length: {len(body)}", "Cache-Control: no-store", "Connection: close"]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")
    return head if head_only else head + body


def first_line(data: bytes, limit: int = 200) -> bytes:
    """The first non-empty line of ``data`` (for logging a bad request), truncated."""
    line = data.lstrip(b"\r\n").split(b"\n", 1)[0].rstrip(b"\r")
    return line[:limit]
