"""Tests for lacme.protocol.wire: the accountd protocol, version 1."""

from __future__ import annotations

import base64
import json
from urllib.parse import urlsplit

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from lacme.core.errors import ProtocolError
from lacme.protocol import jwk_keys, jws, wire

RSA_KEY = rsa.generate_private_key(65537, 2048)
RSA_JWK = jwk_keys.public_jwk(RSA_KEY.public_key())
EC_JWK = jwk_keys.public_jwk(ec.generate_private_key(ec.SECP256R1()).public_key())
ORIGIN = "https://ca.example:14000"
KID = "https://ca.example:14000/my-account/1"


def b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def request_line(header: dict, payload: dict | bytes | None = None) -> bytes:
    if isinstance(payload, dict):
        payload = json.dumps(payload).encode()
    return b64(json.dumps(header).encode()) + b"." + b64(payload or b"") + b"\r\n"


def good_header(**changes) -> dict:
    header = {"alg": "RS256", "nonce": "bm9uY2U", "url": ORIGIN + "/new-order", "kid": KID}
    header.update(changes)
    return {k: v for k, v in header.items() if v is not None}


def parse(line: bytes, *, kid: str | None = None, origin: str | None = None, alg: str = "RS256", jwk=None):
    return wire.parse_sign_request(line, alg=alg, jwk=RSA_JWK if jwk is None else jwk, kid=kid, origin=origin)


def assert_well_formed(req: wire.SignRequest, line: bytes, *, kid: str | None, origin: str | None) -> None:
    """Re-check an accepted request independently of wire's own code."""
    assert line.endswith(b"\r\n") and req.signing_input == line[:-2]
    protected, payload = line[:-2].split(b".")
    pad = lambda part: part + b"=" * (-len(part) % 4)  # noqa: E731
    header = json.loads(base64.urlsafe_b64decode(pad(protected)))
    assert header == req.header and isinstance(header, dict)
    assert set(header) <= {"alg", "nonce", "url", "jwk", "kid"}
    assert header["alg"] == "RS256"
    assert isinstance(header["nonce"], str) and header["nonce"]
    assert isinstance(header["url"], str) and header["url"]
    assert ("jwk" in header) != ("kid" in header)
    if "jwk" in header:
        assert kid is None and header["jwk"] == RSA_JWK
    elif kid is not None:
        assert header["kid"] == kid
    body = base64.urlsafe_b64decode(pad(payload))
    assert body == req.payload
    assert body == b"" or isinstance(json.loads(body), dict)
    if origin is not None:
        url = urlsplit(header["url"])
        assert url.scheme == "https" and url.hostname == "ca.example" and url.port == 14000
        assert "@" not in url.netloc


# --- greeting ---------------------------------------------------------------

@pytest.mark.parametrize("jwk,alg", [(RSA_JWK, "RS256"), (EC_JWK, "ES256")])
def test_greeting_round_trip_with_jwk(jwk, alg):
    g = wire.Greeting(alg, jws.jwk_thumbprint(jwk), None, jwk)
    data = wire.encode_greeting(g)
    first, second, rest = data.split(b"\r\n")
    assert rest == b"" and first.startswith(b"1 OK {")
    assert second == jws.canonical_json(jwk)
    assert wire.parse_greeting(first + b"\r\n", second + b"\r\n") == g


def test_greeting_with_kid_sends_empty_jwk():
    g = wire.Greeting("RS256", jws.jwk_thumbprint(RSA_JWK), KID, RSA_JWK)
    first, second, _ = wire.encode_greeting(g).split(b"\r\n")
    assert second == b"{}"
    assert json.loads(first[5:]) == {"alg": "RS256", "jwk-thumbprint": g.jwk_thumbprint, "kid": KID}
    assert wire.parse_greeting(first + b"\r\n", b"{}\r\n") == wire.Greeting("RS256", g.jwk_thumbprint, KID, {})


def test_greeting_without_extra_defaults_to_rs256_and_computed_thumbprint():
    g = wire.parse_greeting(b"1 OK\r\n", jws.canonical_json(RSA_JWK) + b"\r\n")
    assert g.alg == "RS256" and g.jwk_thumbprint == jws.jwk_thumbprint(RSA_JWK) and g.kid is None


@pytest.mark.parametrize(
    "first,jwk_line",
    [
        (b"2 OK {}\r\n", None),  # other version
        (b"1 OK {}\n", None),  # no CR
        (b"1 OK [1]\r\n", None),  # extra not an object
        (b'1 OK {"alg":"HS256"}\r\n', None),  # unknown alg
        (b'1 OK {"alg":"ES256"}\r\n', None),  # alg does not fit the JWK
        (b'1 OK {"jwk-thumbprint":"wrong"}\r\n', None),
        (b"1 OK {}\r\n", b"{}\r\n"),  # no JWK and no kid
        (b"1 OK {}\r\n", b'{"kty":"RSA"}\r\n'),  # broken JWK
        (b"1 OK {}\r\n", b"null\r\n"),
    ],
)
def test_greeting_odd_raises_protocol_error(first, jwk_line):
    with pytest.raises(ProtocolError):
        wire.parse_greeting(first, jwk_line or jws.canonical_json(RSA_JWK) + b"\r\n")


@given(st.binary(max_size=300), st.binary(max_size=300))
def test_greeting_fuzz_raises_only_protocol_error(first, second):
    try:
        g = wire.parse_greeting(first, second)
    except ProtocolError:
        return
    assert g.alg in wire.ALGORITHMS and g.jwk_thumbprint


# --- sign requests: examples ------------------------------------------------

def test_accepts_kid_request_with_payload():
    line = request_line(good_header(), {"identifiers": [{"type": "dns", "value": "a.example"}]})
    req = parse(line, origin=ORIGIN)
    assert req.signing_input == line[:-2]
    assert json.loads(req.payload)["identifiers"][0]["value"] == "a.example"


def test_accepts_post_as_get_empty_payload():
    req = parse(request_line(good_header()))
    assert req.payload == b""


def test_accepts_jwk_request_for_served_key():
    req = parse(request_line(good_header(kid=None, jwk=RSA_JWK), {"termsOfServiceAgreed": True}))
    assert req.header["jwk"] == RSA_JWK


@pytest.mark.parametrize(
    "line,reason",
    [
        (b"hello\r\n", "not a JWS"),
        (b"e30.e30\n", "not a JWS"),  # bare LF
        (b"e30.e30.e30\r\n", "not a JWS"),
        (b".e30\r\n", "not a JWS"),
        (b"e30=.e30\r\n", "not a JWS"),
        (b"e31.\r\n", "protected header"),  # non-canonical base64url
        (request_line(good_header(alg="ES256")), "alg"),
        (request_line(good_header(alg=None)), "alg"),
        (request_line(good_header(alg="none")), "alg"),
        (request_line(good_header(nonce=None)), "nonce"),
        (request_line(good_header(nonce=7)), "nonce"),
        (request_line(good_header(url=None)), "url"),
        (request_line(good_header(url="")), "url"),
        (request_line(good_header(jwk=RSA_JWK)), "exactly one"),
        (request_line(good_header(kid=None)), "exactly one"),
        (request_line(good_header(kid=None, jwk=EC_JWK)), "not this account key"),
        (request_line(good_header(kid=["x"])), "kid"),
        (request_line(good_header(crit=["b64"], b64=False)), "unexpected member"),
        (request_line(good_header(), b"[1]"), "payload"),
        (request_line(good_header(), b'"x"'), "payload"),
        (request_line(good_header(), b"{,}"), "payload"),
        (request_line(good_header(), b'{"a":NaN}'), "payload"),
        (request_line(good_header(), b'{"a":1,"a":2}'), "payload"),
        # a second object after the first: Go's json.Unmarshal refuses it too, but a
        # streaming decoder would read the first and classify nothing of the second
        (request_line(good_header(), b'{"csr":"AA"}{"status":"deactivated"}'), "payload"),
        (request_line(good_header(), b'{"csr":"AA"} {}'), "payload"),
        (b64(b'{"alg":"RS256","alg":"RS256","nonce":"n","url":"u","kid":"k"}') + b".\r\n", "duplicate"),
        (b64(b"[]") + b".\r\n", "not a JSON object"),
        (b64(b"\xff") + b".\r\n", "invalid JSON"),
        (b"e" * (wire.MAX_LINE + 1), "longer than"),
    ],
)
def test_refuses_malformed_request(line, reason):
    with pytest.raises(wire.Refused) as info:
        parse(line)
    assert reason in info.value.reason


def test_refuses_jwk_when_keyid_configured():
    with pytest.raises(wire.Refused, match="key id is configured"):
        parse(request_line(good_header(kid=None, jwk=RSA_JWK)), kid=KID)


def test_refuses_other_kid_when_keyid_configured():
    parse(request_line(good_header()), kid=KID)
    with pytest.raises(wire.Refused, match="configured key id"):
        parse(request_line(good_header(kid=KID + "0")), kid=KID)


@pytest.mark.parametrize(
    "url",
    [
        "http://ca.example:14000/new-order",
        "https://ca.example/new-order",
        "https://ca.example:1400/new-order",
        "https://evil.example:14000/new-order",
        "https://ca.example:14000@evil.example/x",
        "https://user@ca.example:14000/x",
        "https://ca.example.evil.example:14000/x",
        "https://ca.example:14000 /x",
        "https://ca.example:99999/x",
        "https://ca.example:14000\\@evil.example/x",  # userinfo behind a backslash (WHATWG reads it so)
        "https://ca%2Eexample:14000/x",  # a percent-encoded host is another host here
        "https://ca.example.:14000/x",  # the root label: another origin string
        "https://ca.\u00e9xample:14000/x",  # not ASCII (IDNA is the CA's to map, not ours)
        "https://[::1]:14000/x",
        "//ca.example:14000/x",
        "/new-order",
    ],
)
def test_refuses_foreign_origin_when_pinned(url):
    with pytest.raises(wire.Refused):
        parse(request_line(good_header(url=url)), origin=ORIGIN)
    parse(request_line(good_header(url=url)))  # fine when not pinned


@pytest.mark.parametrize("url", ["https://CA.example:14000/x", "HTTPS://ca.example:14000", "https://ca.example:14000/a?b#c"])
def test_accepts_same_origin_spellings_when_pinned(url):
    parse(request_line(good_header(url=url)), origin=ORIGIN)


def test_default_port_matches_origin_without_port():
    parse(request_line(good_header(url="https://ca.example:443/x")), origin="https://ca.example")
    parse(request_line(good_header(url="https://[::1]:14000/x")), origin="https://[::1]:14000")


# --- sign requests: fuzzing -------------------------------------------------

@settings(max_examples=300)
@given(st.binary(max_size=400), st.sampled_from([None, KID]), st.sampled_from([None, ORIGIN]))
def test_fuzz_arbitrary_bytes_refused_or_well_formed(line, kid, origin):
    try:
        req = parse(line, kid=kid, origin=origin)
    except wire.Refused:
        return
    assert_well_formed(req, line, kid=kid, origin=origin)


_json_leaf = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=10))
_json = st.one_of(_json_leaf, st.lists(_json_leaf, max_size=2), st.dictionaries(st.text(max_size=4), _json_leaf, max_size=2))


ABSENT = object()
_member_values = st.one_of(
    st.just(ABSENT),
    st.sampled_from(["RS256", "ES256", "none", "", "n", KID, "https://evil.example/x", "http://ca.example:14000/",
                     ORIGIN + "/y", RSA_JWK, EC_JWK, {}, {**RSA_JWK, "alg": "RS256"}]),
    _json,
)
_mutations = st.lists(st.tuples(st.sampled_from(["alg", "nonce", "url", "jwk", "kid", "b64", "crit"]), _member_values),
                      max_size=3)
_payloads = st.one_of(st.none(), st.dictionaries(st.text(max_size=6), _json, max_size=3), _json)


def test_fuzz_structured_requests_refused_or_well_formed():
    """Mutations of a good request: refused, or accepted and well-formed."""
    accepted = []

    @settings(max_examples=400)
    @given(st.booleans(), _mutations, _payloads, st.sampled_from([None, KID]), st.sampled_from([None, ORIGIN]))
    def check(use_jwk, mutations, payload, kid, origin):
        header = good_header(kid=None, jwk=RSA_JWK) if use_jwk else good_header()
        for member, value in mutations:
            if value is ABSENT:
                header.pop(member, None)
            else:
                header[member] = value
        body = b"" if payload is None else json.dumps(payload).encode()
        line = b64(json.dumps(header).encode()) + b"." + b64(body) + b"\r\n"
        try:
            req = parse(line, kid=kid, origin=origin)
        except wire.Refused:
            return
        assert_well_formed(req, line, kid=kid, origin=origin)
        accepted.append(req)

    check()
    assert len(accepted) > 10, "the generator hardly ever produced an acceptable request"


# --- signatures ---------------------------------------------------------------

@given(st.binary(min_size=1, max_size=600))
def test_signature_line_round_trip(sig):
    line = wire.encode_signature(sig)
    assert line.endswith(b"\r\n") and b"=" not in line
    assert wire.parse_signature(line) == sig


@pytest.mark.parametrize("line", [b"\r\n", b"AP8\n", b"AP8", b"A+8\r\n", b"AP8=\r\n", b"AP\r\n8\r\n"])
def test_parse_signature_rejects_malformed(line):
    with pytest.raises(ProtocolError):
        wire.parse_signature(line)


def test_encode_sign_request_is_the_signing_input_line():
    text = jws.signing_input(good_header(), None)
    line = wire.encode_sign_request(text)
    assert parse(line).signing_input == text.encode()
