"""Tests for lacme.protocol.jws (base64url, canonical JSON, JWK checks, thumbprints, JWS assembly)
and lacme.protocol.jwk_keys (JWKs of keys, signatures)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from hypothesis import given
from hypothesis import strategies as st

from lacme.protocol import jwk_keys, jws

# RFC 7638 section 3.1
RFC7638_JWK = {
    "kty": "RSA",
    "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3o"
    "knjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6"
    "qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
    "e": "AQAB",
    "alg": "RS256",
    "kid": "2011-04-29",
}
RFC7638_THUMBPRINT = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


@pytest.fixture(scope="module")
def keys():
    return {
        "RS256": rsa.generate_private_key(65537, 2048),
        "ES256": ec.generate_private_key(ec.SECP256R1()),
        "ES384": ec.generate_private_key(ec.SECP384R1()),
    }


@given(st.binary(max_size=200))
def test_b64u_round_trip_any_bytes(data):
    text = jws.b64u_encode(data)
    assert "=" not in text and "+" not in text and "/" not in text
    assert jws.b64u_decode(text) == data
    assert jws.b64u_decode(text.encode()) == data


@pytest.mark.parametrize("bad", ["AB=", "A+B/", "A B", "A", "AB\n", "QR", "é"])
def test_b64u_decode_rejects_noncanonical_or_foreign(bad):
    with pytest.raises(ValueError):
        jws.b64u_decode(bad)


def test_canonical_json_sorted_compact_utf8():
    assert jws.canonical_json({"b": 1, "a": {"d": [1, "é"], "c": None}}) == '{"a":{"c":null,"d":[1,"é"]},"b":1}'.encode()


def test_canonical_json_rejects_nan():
    with pytest.raises(ValueError):
        jws.canonical_json({"x": float("nan")})


@pytest.mark.skipif(shutil.which("perl") is None, reason="perl absent")
def test_canonical_json_matches_perl_json_canonical_utf8():
    """The original client and accountd encode with Perl JSON->canonical->utf8."""
    samples = [
        {"b": "\x01\x1f\x7f/\"\\\n\t", "a": [1, -2, {"z": None, "y": True, "x": False}]},
        {"é": "ü€😀", "B": "", "a": "\u2028"},
        {"url": "https://ca.example/acme/new-order", "nonce": "abc-_", "alg": "RS256", "kid": "k"},
        {"identifiers": [{"type": "dns", "value": "xn--bcher-kva.example"}], "n": 12345678901234},
    ]
    try:
        done = subprocess.run(
            ["perl", "-MJSON", "-ne", "print JSON->new->utf8->canonical->encode(JSON->new->utf8->decode($_)), qq(\\n)"],
            input=b"".join(json.dumps(s).encode() + b"\n" for s in samples), capture_output=True, check=True)
    except subprocess.CalledProcessError:
        pytest.skip("perl JSON module absent")
    assert done.stdout.split(b"\n")[:-1] == [jws.canonical_json(s) for s in samples]


def test_thumbprint_rfc7638_example():
    assert jws.jwk_thumbprint(RFC7638_JWK) == RFC7638_THUMBPRINT


def test_thumbprint_rejects_unknown_kty():
    with pytest.raises(ValueError):
        jws.jwk_thumbprint({"kty": "OKP", "crv": "Ed25519", "x": "AA"})


def test_public_jwk_rfc7638_key_round_trip():
    key = jwk_keys.public_key_from_jwk(RFC7638_JWK)
    assert jwk_keys.public_jwk(key) == {"e": "AQAB", "kty": "RSA", "n": RFC7638_JWK["n"]}


@pytest.mark.parametrize("alg", ["RS256", "ES256", "ES384"])
def test_sign_verify_round_trip(keys, alg):
    key = keys[alg]
    assert jwk_keys.alg_for_key(key) == alg
    jwk = jwk_keys.public_jwk(key.public_key())
    public = jwk_keys.public_key_from_jwk(jwk)
    data = jws.signing_input({"alg": alg, "nonce": "n", "url": "https://ca.example/x", "jwk": jwk}, {"a": 1}).encode()
    sig = jwk_keys.sign(key, alg, data)
    assert jwk_keys.verify(public, alg, data, sig)
    assert not jwk_keys.verify(public, alg, data + b"x", sig)
    assert not jwk_keys.verify(public, "RS256" if alg != "RS256" else "ES256", data, sig)


@pytest.mark.parametrize("alg,size", [("ES256", 32), ("ES384", 48)])
def test_ecdsa_signature_is_fixed_length_r_s(keys, alg, size):
    sig = jwk_keys.sign(keys[alg], alg, b"data")
    assert len(sig) == 2 * size
    jwk = jwk_keys.public_jwk(keys[alg].public_key())
    assert len(jws.b64u_decode(jwk["x"])) == size and len(jws.b64u_decode(jwk["y"])) == size
    assert jwk["crv"] == {"ES256": "P-256", "ES384": "P-384"}[alg]


def test_rsa_signature_is_deterministic(keys):
    assert jwk_keys.sign(keys["RS256"], "RS256", b"x") == jwk_keys.sign(keys["RS256"], "RS256", b"x")


def test_sign_rejects_alg_that_does_not_fit(keys):
    with pytest.raises(ValueError):
        jwk_keys.sign(keys["ES256"], "ES384", b"x")


@pytest.mark.parametrize(
    "make",
    [
        lambda: rsa.generate_private_key(65537, 1024),
        lambda: ec.generate_private_key(ec.SECP521R1()),
        lambda: ed25519.Ed25519PrivateKey.generate(),
    ],
)
def test_alg_for_key_rejects_unsupported(make):
    with pytest.raises(ValueError):
        jwk_keys.alg_for_key(make())


@given(st.integers(1, 2**256 - 1), st.integers(1, 2**256 - 1))
def test_der_raw_round_trip(r, s):
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

    raw = jwk_keys.der_to_raw(encode_dss_signature(r, s), 32)
    assert len(raw) == 64
    assert int.from_bytes(raw[:32], "big") == r and int.from_bytes(raw[32:], "big") == s
    assert decode_dss_signature(jwk_keys.raw_to_der(raw)) == (r, s)


def test_der_to_raw_rejects_oversized_component():
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

    with pytest.raises(ValueError):
        jwk_keys.der_to_raw(encode_dss_signature(2**256, 1), 32)


@given(st.binary(max_size=9).filter(lambda b: len(b) % 2 == 1))
def test_raw_to_der_rejects_odd_length(raw):
    with pytest.raises(ValueError):
        jwk_keys.raw_to_der(raw)


def test_public_key_from_jwk_rejects_point_off_curve(keys):
    jwk = dict(jwk_keys.public_jwk(keys["ES256"].public_key()))
    jwk["y"] = jws.b64u_encode(b"\x01" * 32)
    with pytest.raises(ValueError):
        jwk_keys.public_key_from_jwk(jwk)


def test_signing_input_post_as_get_has_empty_payload():
    text = jws.signing_input({"url": "u", "alg": "ES256"}, None)
    protected, payload = text.split(".")
    assert payload == ""
    assert jws.b64u_decode(protected) == b'{"alg":"ES256","url":"u"}'


def test_signing_input_payload_is_canonical_json():
    _, payload = jws.signing_input({"a": 1}, {"z": 1, "y": [True]}).split(".")
    assert jws.b64u_decode(payload) == b'{"y":[true],"z":1}'


def test_flattened_serialization_members():
    out = jws.flattened("cHJvdA.cGF5", b"\x00\xff")
    assert out == {"protected": "cHJvdA", "payload": "cGF5", "signature": "AP8"}


# --- lacme.protocol.jws checks JWKs without a key library ------------------------------

P256 = jws.CURVES["P-256"]


def _accepted_by_cryptography(jwk: dict) -> bool:
    try:
        jwk_keys.alg_for_key(jwk_keys.public_key_from_jwk(jwk))
        return True
    except ValueError:
        return False


def _cryptography_builds(jwk: dict) -> bool:
    """What cryptography alone says of an EC JWK (not through public_jwk_alg)."""
    row = {"P-256": ec.SECP256R1, "P-384": ec.SECP384R1}[jwk["crv"]]
    x, y = (int.from_bytes(jws.b64u_decode(jwk[c]), "big") for c in ("x", "y"))
    try:
        ec.EllipticCurvePublicNumbers(x, y, row()).public_key()
        return True
    except ValueError:
        return False


@pytest.mark.parametrize("alg", ["RS256", "ES256", "ES384"])
def test_public_jwk_alg_of_real_keys(keys, alg):
    assert jws.public_jwk_alg(jwk_keys.public_jwk(keys[alg].public_key())) == alg


@pytest.mark.parametrize("crv", ["P-256", "P-384"])
def test_curve_parameters_match_cryptography(crv):
    """Points of fresh keys are on our curve; their mirror (x, p - y) too, (x, y + 1) not."""
    curve = jws.CURVES[crv]
    make = {"P-256": ec.SECP256R1, "P-384": ec.SECP384R1}[crv]
    for _ in range(5):
        point = ec.generate_private_key(make()).public_key().public_numbers()
        assert jws.on_curve(curve, point.x, point.y)
        assert jws.on_curve(curve, point.x, curve.p - point.y)
        assert not jws.on_curve(curve, point.x, (point.y + 1) % curve.p)
        assert not jws.on_curve(curve, point.x, point.y + curve.p)  # not a field element


@given(st.binary(min_size=32, max_size=32), st.binary(min_size=32, max_size=32))
def test_ec_check_agrees_with_cryptography(x, y):
    jwk = {"kty": "EC", "crv": "P-256", "x": jws.b64u_encode(x), "y": jws.b64u_encode(y)}
    try:
        ours = jws.public_jwk_alg(jwk) == "ES256"
    except ValueError:
        ours = False
    assert ours == _cryptography_builds(jwk)


def test_ec_check_agrees_with_cryptography_on_curve_points(keys):
    point = keys["ES256"].public_key().public_numbers()
    for y in (point.y, P256.p - point.y, point.y ^ 1):
        jwk = {"kty": "EC", "crv": "P-256", "x": jws.b64u_encode(jws.int_to_bytes(point.x, 32)),
               "y": jws.b64u_encode(jws.int_to_bytes(y, 32))}
        ours = True
        try:
            jws.public_jwk_alg(jwk)
        except ValueError:
            ours = False
        assert ours == _cryptography_builds(jwk) == (y != point.y ^ 1)


@pytest.mark.parametrize(
    "change",
    [
        {"e": jws.b64u_encode(b"\x01\x00\x00")},  # even exponent
        {"e": jws.b64u_encode(b"\x01")},  # e = 1
        {"n": jws.b64u_encode(b"\xff" * 128)},  # 1024 bits
        {"n": "AA"},
        {"kty": "OKP"},
        {"e": 3},
        {"n": "a+b"},
    ],
)
def test_rsa_jwk_check_rejects(change):
    jwk = {**RFC7638_JWK, **change}
    with pytest.raises(ValueError):
        jws.public_jwk_alg(jwk)
    assert not _accepted_by_cryptography(jwk)


@pytest.mark.parametrize(
    "change",
    [
        {"crv": "P-521"},
        {"x": jws.b64u_encode(b"\x01" * 31)},  # short coordinate
        {"y": jws.b64u_encode(b"\xff" * 32)},  # not a field element
    ],
)
def test_ec_jwk_check_rejects(keys, change):
    jwk = {**jwk_keys.public_jwk(keys["ES256"].public_key()), **change}
    with pytest.raises(ValueError):
        jws.public_jwk_alg(jwk)
    assert not _accepted_by_cryptography(jwk)


def test_jws_has_no_key_functions():
    # what needs a key lives in jwk_keys, so that importing jws never loads cryptography
    for name in ("public_jwk", "sign", "verify", "public_key_from_jwk"):
        assert not hasattr(jws, name)


@pytest.mark.parametrize(
    "code",
    [
        "import lacme.client.main",
        "import lacme.client.main, lacme.client.acme.session, lacme.protocol.wire, "
        "lacme.protocol.control, lacme.core.descriptors, lacme.protocol.http01",
        # what the client does with accountd's greeting and the JWS it posts
        "from lacme.protocol import jws, wire\n"
        "jwk = {'kty': 'EC', 'crv': 'P-256', 'x': 'f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU',"
        " 'y': 'x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0'}\n"
        "line = b'1 OK ' + jws.canonical_json({'alg': 'ES256'}) + b'\\r\\n'\n"
        "g = wire.parse_greeting(line, jws.canonical_json(jwk) + b'\\r\\n')\n"
        "jws.flattened(jws.signing_input({'alg': g.alg}, None), b'sig')\n"
        "jws.jwk_thumbprint(g.jwk)",
    ],
)
def test_client_side_never_imports_cryptography(code):
    """The unprivileged client holds no key: its start-up must not pay for a key library."""
    check = code + "\nimport sys\nassert not [m for m in sys.modules if m.startswith('cryptography')]\n"
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
