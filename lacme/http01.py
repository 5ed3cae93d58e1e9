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
"""

from __future__ import annotations

import re
from dataclasses import dataclass

CHALLENGE_PREFIX = "/.well-known/acme-challenge/"
# RFC 8555 8.3: the token uses the base64url alphabet (RFC 4648 section 5),
# without padding.  \A...\Z rather than ^...$: "$" would accept a final "\n".
TOKEN_RE = re.compile(r"\A[A-Za-z0-9_-]+\Z")
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

_TCHAR = r"[!#$%&'*+.^_`|~0-9A-Za-z-]"  # RFC 9110 5.6.2
_REQUEST_LINE_RE = re.compile(rf"\A({_TCHAR}+) ([\x21-\x7e]+) (HTTP/[0-9]\.[0-9])\Z")
_FIELD_RE = re.compile(rf"\A({_TCHAR}+):[ \t]*(.*?)[ \t]*\Z", re.DOTALL)
_FIELD_VALUE_BAD_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # VCHAR, obs-text, SP, HTAB only
_HEAD_END_RE = re.compile(rb"\n\r?\n")
_LOG_UNSAFE_RE = re.compile(r'[\x00-\x1f\x7f-\U0010ffff"\\]')


def is_valid_token(token: str) -> bool:
    """True for a non-empty base64url token of at most MAX_TOKEN_LENGTH."""
    return len(token) <= MAX_TOKEN_LENGTH and TOKEN_RE.match(token) is not None


def key_authorization(token: str, thumbprint: str) -> str:
    """RFC 8555 8.1: token "." base64url(JWK thumbprint)."""
    if not is_valid_token(token):
        raise ValueError(f"invalid http-01 token {escape_for_log(token[:80])!s}")
    if TOKEN_RE.match(thumbprint) is None:
        raise ValueError(f"invalid JWK thumbprint {escape_for_log(thumbprint[:80])!s}")
    return f"{token}.{thumbprint}"


@dataclass(frozen=True)
class RequestHead:
    """A parsed request head; field names are lower-cased, values trimmed."""

    method: str
    target: str
    version: str
    headers: tuple[tuple[str, str], ...]

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
    match = _HEAD_END_RE.search(buf, start)
    if match is not None:
        return match.end()
    if b"\n" not in buf[start:] and len(buf) - start > MAX_REQUEST_LINE:
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


def _parse_request_line(line: bytes) -> tuple[str, str, str]:
    try:
        text = line.decode("ascii")
    except UnicodeDecodeError:
        raise BadRequest(400, "non-ASCII request line") from None
    match = _REQUEST_LINE_RE.match(text)
    if match is None:
        raise BadRequest(400, "malformed request line")
    method, target, version = match.groups()
    if len(target) > MAX_TARGET:
        raise BadRequest(414, "request target too long")
    if version not in ("HTTP/1.0", "HTTP/1.1"):
        raise BadRequest(505, f"unsupported version {version}")
    return method, target, version


def _parse_field(line: bytes) -> tuple[str, str]:
    if line[:1] in (b" ", b"\t"):
        raise BadRequest(400, "obsolete line folding")
    match = _FIELD_RE.match(line.decode("latin-1"))
    if match is None:
        raise BadRequest(400, "malformed header field")
    name, value = match.groups()
    if _FIELD_VALUE_BAD_RE.search(value):
        raise BadRequest(400, f"control character in header field {name}")
    return name.lower(), value


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


def escape_for_log(data: bytes | str) -> str:
    """Printable ASCII: controls, non-ASCII, quote and backslash escaped as \\xNN (\\uNNNN)."""
    text = data.decode("latin-1") if isinstance(data, bytes) else data
    return _LOG_UNSAFE_RE.sub(_escape_char, text)


def _escape_char(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def first_line(data: bytes, limit: int = 200) -> bytes:
    """The first non-empty line of ``data`` (for logging a bad request), truncated."""
    line = data.lstrip(b"\r\n").split(b"\n", 1)[0].rstrip(b"\r")
    return line[:limit]
