"""Tests of lacme.protocol.http01: token rule, key authorization, request-head parsing,
routing and response formatting (pure functions, no processes)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lacme.core.text import escape_text
from lacme.protocol import http01
from lacme.protocol.http01 import BadRequest, RequestHead, parse_request_head, route

TOKEN = "LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0"
THUMBPRINT = "9jg46WB3rR_AHD-EBXdN7cBkH1WOu0tA3M9fm21mqTI"


def head(method: str = "GET", target: str = "/", version: str = "HTTP/1.1") -> RequestHead:
    return RequestHead(method, target, version, (("host", "example.org"),))


# --- tokens and key authorizations ------------------------------------------------------------

@pytest.mark.parametrize("token", [TOKEN, "a", "A-_9", "x" * http01.MAX_TOKEN_LENGTH])
def test_is_valid_token_accepts_base64url(token: str) -> None:
    assert http01.is_valid_token(token)


@pytest.mark.parametrize("token", ["", "a.b", "a/b", "..", "a=", "a+b", "a b", "abc\n", "é",
                                   "x" * (http01.MAX_TOKEN_LENGTH + 1)])
def test_is_valid_token_rejects_other_strings(token: str) -> None:
    assert not http01.is_valid_token(token)


def test_key_authorization_joins_token_and_thumbprint() -> None:
    assert http01.key_authorization(TOKEN, THUMBPRINT) == f"{TOKEN}.{THUMBPRINT}"


@pytest.mark.parametrize("token, thumbprint", [("../x", THUMBPRINT), ("", THUMBPRINT), (TOKEN, "a.b"), (TOKEN, "")])
def test_key_authorization_rejects_bad_input(token: str, thumbprint: str) -> None:
    with pytest.raises(ValueError):
        http01.key_authorization(token, thumbprint)


# --- request heads --------------------------------------------------------------------------

def test_parse_request_head_reads_line_and_fields() -> None:
    parsed = parse_request_head(b"GET /a HTTP/1.1\r\nHost: example.org\r\nUser-Agent:  x y \r\n\r\n")
    assert (parsed.method, parsed.target, parsed.version) == ("GET", "/a", "HTTP/1.1")
    assert parsed.headers == (("host", "example.org"), ("user-agent", "x y"))
    assert parsed.header("USER-AGENT") == "x y"
    assert parsed.header("accept") is None


def test_parse_request_head_accepts_bare_lf_and_leading_empty_line() -> None:
    parsed = parse_request_head(b"\r\nHEAD /b HTTP/1.0\nAccept: */*\n\n")
    assert (parsed.method, parsed.target, parsed.headers) == ("HEAD", "/b", (("accept", "*/*"),))


@pytest.mark.parametrize("data", [
    b"GET / HTTP/1.1\r\nHost: x\r\n",          # not terminated
    b"GET /  HTTP/1.1\r\nHost: x\r\n\r\n",     # two spaces
    b"GET / HTTP/1.1 \r\nHost: x\r\n\r\n",     # trailing space
    b"GET /\r\n\r\n",                          # HTTP/0.9
    b"G@T / HTTP/1.1\r\nHost: x\r\n\r\n",      # method not a token
    b"GET /\xc3\xa9 HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /\x1b HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost : x\r\n\r\n",     # space before colon (RFC 9112 5.1)
    b"GET / HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\x00y\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\rX: y\r\n\r\n",  # bare CR
    b"GET / HTTP/1.1\r\nno colon\r\n\r\n",
    b"GET / HTTP/1.1\r\n\r\n",                 # HTTP/1.1 without Host
    b"GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n",
    b"GET / http/1.1\r\nHost: x\r\n\r\n",
    b"GET / HTTP/2\r\nHost: x\r\n\r\n",
    b"\r\n\r\n",
    b"",
])
def test_parse_request_head_rejects_malformed_with_400(data: bytes) -> None:
    with pytest.raises(BadRequest) as info:
        parse_request_head(data)
    assert info.value.status == 400


@pytest.mark.parametrize("version", ["HTTP/2.0", "HTTP/1.2", "HTTP/0.9"])
def test_parse_request_head_rejects_other_versions_with_505(version: str) -> None:
    with pytest.raises(BadRequest) as info:
        parse_request_head(f"GET / {version}\r\nHost: x\r\n\r\n".encode())
    assert info.value.status == 505


def test_parse_request_head_rejects_long_target_with_414() -> None:
    with pytest.raises(BadRequest) as info:
        parse_request_head(b"GET /" + b"a" * http01.MAX_TARGET + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert info.value.status == 414


def test_parse_request_head_rejects_too_many_fields_with_431() -> None:
    fields = b"".join(b"X-%d: y\r\n" % i for i in range(http01.MAX_FIELDS + 1))
    with pytest.raises(BadRequest) as info:
        parse_request_head(b"GET / HTTP/1.0\r\n" + fields + b"\r\n")
    assert info.value.status == 431


def test_parse_request_head_rejects_large_head_with_431() -> None:
    with pytest.raises(BadRequest) as info:
        parse_request_head(b"GET / HTTP/1.0\r\nX: " + b"y" * http01.MAX_HEAD + b"\r\n\r\n")
    assert info.value.status == 431


# --- finding the end of a head -----------------------------------------------------------------

@pytest.mark.parametrize("data, end", [
    (b"GET / HTTP/1.0\r\n\r\nBODY", 18),
    (b"GET / HTTP/1.0\n\nBODY", 16),
    (b"\r\n\r\nGET / HTTP/1.0\r\n\r\n", 22),
    (b"GET / HTTP/1.0\r\nHost: x\r\n", None),
    (b"", None),
    (b"\r\n", None),
])
def test_find_head_end_finds_blank_line(data: bytes, end: int | None) -> None:
    assert http01.find_head_end(data) == end


def test_find_head_end_rejects_endless_request_line_with_414() -> None:
    with pytest.raises(BadRequest) as info:
        http01.find_head_end(b"GET /" + b"a" * http01.MAX_REQUEST_LINE)
    assert info.value.status == 414


def test_find_head_end_rejects_endless_fields_with_431() -> None:
    with pytest.raises(BadRequest) as info:
        http01.find_head_end(b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * (http01.MAX_HEAD // 6))
    assert info.value.status == 431


# --- routing --------------------------------------------------------------------------------

def test_route_returns_token_for_get_and_head() -> None:
    assert route(head("GET", http01.CHALLENGE_PREFIX + TOKEN)) == (200, TOKEN)
    assert route(head("HEAD", http01.CHALLENGE_PREFIX + TOKEN)) == (200, TOKEN)


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS", "get", "TRACE"])
def test_route_refuses_other_methods_with_405(method: str) -> None:
    assert route(head(method, http01.CHALLENGE_PREFIX + TOKEN)) == (405, None)


@pytest.mark.parametrize("target", [
    "/", "*", "/index.html", http01.CHALLENGE_PREFIX, http01.CHALLENGE_PREFIX.rstrip("/"),
    http01.CHALLENGE_PREFIX + "..", http01.CHALLENGE_PREFIX + "../etc/passwd",
    http01.CHALLENGE_PREFIX + "%2e%2e", http01.CHALLENGE_PREFIX + "a%2fb", http01.CHALLENGE_PREFIX + TOKEN + "/",
    http01.CHALLENGE_PREFIX + TOKEN + "?x=1", http01.CHALLENGE_PREFIX + TOKEN + "#f",
    http01.CHALLENGE_PREFIX + "a/b", "/.well-known/acme-challenge//" + TOKEN,
    "/.well-known/./acme-challenge/" + TOKEN, "/.WELL-KNOWN/acme-challenge/" + TOKEN,
    "http://example.org" + http01.CHALLENGE_PREFIX + TOKEN, "//example.org" + http01.CHALLENGE_PREFIX + TOKEN,
    http01.CHALLENGE_PREFIX + "x" * (http01.MAX_TOKEN_LENGTH + 1),
])
def test_route_forbids_other_targets_with_403(target: str) -> None:
    assert route(head("GET", target)) == (403, None)


# --- responses and logging -------------------------------------------------------------------

DATE = "Sun, 06 Nov 1994 08:49:37 GMT"


def test_format_response_get_has_body_and_length() -> None:
    response = http01.format_response(200, b"abc", date=DATE, content_type="text/plain")
    head_part, _, body = response.partition(b"\r\n\r\n")
    assert head_part.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"\r\nContent-Length: 3" in head_part and b"\r\nContent-Type: text/plain" in head_part
    assert b"\r\nConnection: close" in head_part and f"\r\nDate: {DATE}".encode() in head_part
    assert body == b"abc"


def test_format_response_head_keeps_length_drops_body() -> None:
    response = http01.format_response(200, b"abc", date=DATE, head_only=True)
    assert response.endswith(b"\r\n\r\n") and b"Content-Length: 3\r\n" in response
    assert b"abc" not in response


def test_format_response_405_lists_allowed_methods() -> None:
    assert b"\r\nAllow: GET, HEAD\r\n" in http01.format_response(405, date=DATE)


def log_escape(data: bytes | str) -> str:
    """What the webserver logs of a request: the shared rule (lacme.core.text), octets as latin-1."""
    text = data.decode("latin-1") if isinstance(data, bytes) else data
    return escape_text(text, None, ascii_only=True, quote=True)


def test_log_escaping_escapes_controls_non_ascii_quote_and_backslash() -> None:
    assert log_escape(b'a\x1b[31m\r\n"\\\xff') == 'a\\x1b[31m\\x0d\\x0a\\x22\\x5c\\xff'
    assert log_escape("é\u2028") == "\\xe9\\u2028"


def test_key_authorization_error_escapes_the_token() -> None:
    with pytest.raises(ValueError, match=r"invalid http-01 token a\\x1b\\x22b$"):
        http01.key_authorization('a\x1b"b', THUMBPRINT)


# --- properties -----------------------------------------------------------------------------

PIECES = st.sampled_from([b"GET", b"HEAD", b"POST", b" ", b"\r\n", b"\n", b"\r", b":", b"/", b"HTTP/1.1",
                          b"HTTP/1.0", b"Host: x", b"%2f", b"..", b"?", b"\x00", b"\xff", b"\t",
                          http01.CHALLENGE_PREFIX.encode(), TOKEN.encode()])
HEADS = st.one_of(st.binary(max_size=300), st.lists(PIECES, max_size=30).map(b"".join))


@settings(max_examples=200, deadline=None)
@given(HEADS)
def test_parse_request_head_raises_only_bad_request(data: bytes) -> None:
    try:
        parsed = parse_request_head(data)
    except BadRequest as exc:
        assert exc.status in (400, 414, 431, 505)
        return
    status, token = route(parsed)
    assert status in (200, 403, 405)
    assert (status == 200) == (token is not None)
    if token is not None:
        assert http01.TOKEN_RE.match(token) and parsed.method in ("GET", "HEAD")
        assert parsed.target == http01.CHALLENGE_PREFIX + token


B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
SUFFIXES = st.one_of(st.text(max_size=60), st.text(B64URL, min_size=1, max_size=300))


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["GET", "HEAD", "POST"]), SUFFIXES, st.sampled_from(["HTTP/1.0", "HTTP/1.1"]))
def test_route_never_yields_token_failing_token_re(method: str, suffix: str, version: str) -> None:
    data = f"{method} {http01.CHALLENGE_PREFIX}{suffix} {version}\r\nHost: x\r\n\r\n".encode("utf-8", "replace")
    try:
        parsed = parse_request_head(data)
    except BadRequest:
        return
    status, token = route(parsed)
    if token is not None:
        assert token == suffix and http01.is_valid_token(token)
    else:
        assert status == 405 or not http01.is_valid_token(suffix)


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=http01.MAX_HEAD + 200))
def test_find_head_end_returns_offset_or_raises_bad_request(data: bytes) -> None:
    try:
        end = http01.find_head_end(data)
    except BadRequest as exc:
        assert exc.status in (414, 431)
        assert len(data) > http01.MAX_REQUEST_LINE
        return
    if end is not None:
        assert 0 < end <= len(data) and data[:end].endswith(b"\n")


# --- the regex-free parser against the regular expressions of the grammar -------------------------
# http01 avoids compiling regular expressions at import (both the client and
# every webserver start load it); these reference versions state the RFC 9110
# and 9112 rules as regular expressions, and the parser must agree with them.

import re  # noqa: E402

REF_TCHAR = r"[!#$%&'*+.^_`|~0-9A-Za-z-]"
REF_REQUEST_LINE = re.compile(rf"\A({REF_TCHAR}+) ([\x21-\x7e]+) (HTTP/[0-9]\.[0-9])\Z")
REF_FIELD = re.compile(rf"\A({REF_TCHAR}+):[ \t]*(.*?)[ \t]*\Z", re.DOTALL)
REF_FIELD_VALUE_BAD = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
REF_HEAD_END = re.compile(rb"\n\r?\n")
REF_LOG_UNSAFE = re.compile(r'[\x00-\x1f\x7f-\U0010ffff"\\]')
REF_TOKEN = re.compile(r"\A[A-Za-z0-9_-]+\Z")


def ref_request_line(text: str) -> tuple[str, str, str] | None:
    match = REF_REQUEST_LINE.match(text)
    return None if match is None else match.groups()  # type: ignore[return-value]


def ref_field(text: str) -> tuple[str, str] | None:
    match = REF_FIELD.match(text)
    if match is None or REF_FIELD_VALUE_BAD.search(match.group(2)):
        return None
    return match.group(1).lower(), match.group(2)


def ref_head_end(buf: bytes) -> int | None:
    start = len(buf) - len(buf.lstrip(b"\r\n"))
    match = REF_HEAD_END.search(buf, start)
    return None if match is None else match.end()


def ref_escape(text: str) -> str:
    def escape(match: re.Match[str]) -> str:
        code = ord(match.group())
        return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"
    return REF_LOG_UNSAFE.sub(escape, text)


LINE_PIECES = st.sampled_from(["GET", "HEAD", "G@T", " ", "  ", "\t", "/", "/a", "%2f", "*", "HTTP/1.1", "HTTP/1.0",
                               "HTTP/2", "HTTP/x.1", "HTTP/1.", "http/1.1", "\x7f", "\x00", "\x1b", "é", "~", '"'])
LINES = st.one_of(st.text(max_size=40), st.lists(LINE_PIECES, max_size=8).map("".join))


@settings(max_examples=400, deadline=None)
@given(LINES)
def test_request_line_agrees_with_grammar(text: str) -> None:
    expected = ref_request_line(text) if text.isascii() else None
    try:
        got: tuple[str, str, str] | None = http01._parse_request_line(text.encode("utf-8"))
    except BadRequest as exc:
        if exc.status == 400:
            got = None
        else:  # 414 or 505: the syntax was right
            assert expected is not None
            return
    assert got == expected


FIELD_PIECES = st.sampled_from(["Host", "X-A", "a b", ":", " ", "\t", "value", "\x00", "\x7f", "\x1f", "\x80",
                                "\xff", "é", "(", "@"])
FIELDS = st.one_of(st.text(max_size=40), st.lists(FIELD_PIECES, max_size=8).map("".join))


@settings(max_examples=400, deadline=None)
@given(FIELDS)
def test_field_agrees_with_grammar(text: str) -> None:
    line = text.encode("latin-1", "replace").replace(b"\n", b"").replace(b"\r", b"")
    expected = None if line[:1] in (b" ", b"\t") else ref_field(line.decode("latin-1"))
    try:
        got: tuple[str, str] | None = http01._parse_field(line)
    except BadRequest:
        got = None
    assert got == expected


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from([b"\r", b"\n", b"\r\n", b"GET / HTTP/1.0", b"x", b"\n\r"]), max_size=12).map(b"".join))
def test_find_head_end_agrees_with_grammar(data: bytes) -> None:
    assert http01.find_head_end(data) == ref_head_end(data)


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=40))
def test_log_escaping_agrees_with_grammar(text: str) -> None:
    assert log_escape(text) == ref_escape(text)
    assert log_escape(text.encode("utf-8")) == ref_escape(text.encode("utf-8").decode("latin-1"))


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.text(max_size=20), st.text(B64URL, max_size=300)))
def test_is_valid_token_agrees_with_grammar(token: str) -> None:
    expected = len(token) <= http01.MAX_TOKEN_LENGTH and REF_TOKEN.match(token) is not None
    assert http01.is_valid_token(token) == expected
    assert (http01.TOKEN_RE.match(token) is not None) == (REF_TOKEN.match(token) is not None)


def test_import_compiles_no_regular_expression() -> None:
    import subprocess
    import sys
    from pathlib import Path

    # -S: without site, whose start-up may load re itself
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r}); "
            "import lacme.protocol.http01; print('re' in sys.modules, 'dataclasses' in sys.modules)")
    done = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "False"]


def test_request_head_is_immutable_and_compares_by_value() -> None:
    a = head("GET", "/x")
    assert a == head("GET", "/x") and hash(a) == hash(head("GET", "/x")) and a != head("HEAD", "/x")
    with pytest.raises(AttributeError):
        a.method = "POST"  # type: ignore[misc]
    assert "method='GET'" in repr(a)
