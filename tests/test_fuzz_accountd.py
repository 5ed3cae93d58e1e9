"""Fuzzing lacme-accountd's input: the wire protocol's request lines.

Whatever arrives, ``wire.parse_sign_request`` either refuses it or returns a
well-formed RFC 8555 6.2 signing input for this key and origin (checked
here independently), and never raises anything else; a real
``lacme-accountd`` process fed hostile lines signs only those, verifiably,
and survives.  Hypothesis drives both; atheris (coverage-guided, when
installed) drives the parser too: this file is also its fuzz target
(``python3 tests/test_fuzz_accountd.py -atheris [libFuzzer options]``).
"""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TREE_ROOT = Path(__file__).resolve().parent.parent
if str(TREE_ROOT) not in sys.path:
    sys.path.insert(0, str(TREE_ROOT))

from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402

from lacme.core.origin import origin_of
from lacme.protocol import jwk_keys, wire  # noqa: E402

ORIGIN = "https://ca.example:8443"
KEY = ec.generate_private_key(ec.SECP256R1())
JWK = jwk_keys.public_jwk(KEY.public_key())
KID = "https://ca.example:8443/acct/1"
LINE = re.compile(rb"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*\r\n\Z")


def b64u(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def check_accepted(line: bytes, req: wire.SignRequest, *, kid: str | None, origin: str | None) -> None:
    """An accepted line is exactly a well-formed ACME signing input (independent checks)."""
    assert LINE.match(line)
    assert req.signing_input == line[:-2]
    protected, payload = line[:-2].split(b".")
    header = json.loads(base64.urlsafe_b64decode(protected + b"=" * (-len(protected) % 4)))
    assert isinstance(header, dict) and header == req.header
    assert set(header) <= {"alg", "nonce", "url", "jwk", "kid"}
    assert header["alg"] == "ES256"
    assert isinstance(header["nonce"], str) and header["nonce"]
    assert isinstance(header["url"], str) and header["url"]
    assert ("jwk" in header) != ("kid" in header)
    if "jwk" in header:
        assert kid is None and header["jwk"] == JWK
    else:
        assert isinstance(header["kid"], str) and header["kid"]
        assert kid is None or header["kid"] == kid
    if origin is not None:
        assert origin_of(header["url"]) == origin
    if payload:
        assert isinstance(json.loads(base64.urlsafe_b64decode(payload + b"=" * (-len(payload) % 4))), dict)
    else:
        assert req.payload == b""


def parse(line: bytes, *, kid: str | None = None, origin: str | None = ORIGIN) -> wire.SignRequest | None:
    try:
        req = wire.parse_sign_request(line, alg="ES256", jwk=JWK, kid=kid, origin=origin)
    except wire.Refused as exc:
        assert exc.reason and "\n" not in exc.reason
        return None
    check_accepted(line, req, kid=kid, origin=origin)
    return req


def encode(header: Any, payload: Any) -> bytes:
    def part(value: Any) -> bytes:
        if value is None:
            return b""
        raw = value if isinstance(value, bytes) else json.dumps(value).encode()
        return b64u(raw)
    return part(header) + b"." + part(payload) + b"\r\n"


# ---------------------------------------------------------------- atheris target

def atheris_target(data: bytes) -> None:
    parse(data)
    parse(data, kid=KID, origin=None)
    if len(data) > 2:  # the same bytes as a protected header inside a well-formed line
        parse(b64u(data[2:]) + b"." + b64u(b'{"a":1}') + b"\r\n")
    try:
        wire.parse_greeting(data, b"{}\r\n")
    except Exception as exc:  # noqa: BLE001 - only ProtocolError is allowed out
        assert isinstance(exc, wire.ProtocolError), repr(exc)


def run_atheris(argv: list[str]) -> None:
    import atheris

    atheris.instrument_all()  # every loaded function: wire, jws, json and the checks here
    atheris.Setup(argv, atheris_target)
    atheris.Fuzz()


if __name__ == "__main__" and "-atheris" in sys.argv:
    run_atheris([a for a in sys.argv if a != "-atheris"])
    sys.exit(0)


# ---------------------------------------------------------------- hypothesis (pytest)

import pytest  # noqa: E402
from hypothesis import HealthCheck, example, given, settings  # noqa: E402
from hypothesis import strategies as st

TEXT = st.text(max_size=40)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | TEXT,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(TEXT, children, max_size=3),
    max_leaves=8,
)
URLS = st.sampled_from([
    ORIGIN + "/new-order", "https://ca.example:8443/x", "https://CA.example:8443/y",
    "https://ca.example/new-order", "http://ca.example:8443/new-order", "https://evil.example/new-order",
    "https://ca.example:8443@evil.example/", "file:///etc/passwd", "https://ca.example:8443\x00/",
    "", "https://ca.example:08443/", "https://ca.example:99999/",
]) | TEXT
HEADERS = st.fixed_dictionaries(
    {},
    optional={
        "alg": st.sampled_from(["ES256", "RS256", "none", "HS256"]) | JSON_VALUES,
        "nonce": TEXT | JSON_VALUES,
        "url": URLS | JSON_VALUES,
        "jwk": st.just(JWK) | JSON_VALUES,
        "kid": st.just(KID) | TEXT | JSON_VALUES,
        "crit": JSON_VALUES,
        "b64": st.booleans(),
    },
)
PAYLOADS = st.none() | JSON_VALUES | st.binary(max_size=40)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_refused_or_well_formed(data):
    parse(data)
    parse(data + b"\r\n")


@settings(max_examples=600, deadline=None)
@given(HEADERS, PAYLOADS, st.booleans())
def test_structured_headers_refused_or_well_formed(header, payload, pinned_kid):
    parse(encode(header, payload), kid=KID if pinned_kid else None)


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=200), st.binary(max_size=200))
def test_non_json_parts_refused(protected, payload):
    line = b64u(protected) + b"." + b64u(payload) + b"\r\n"
    try:
        json.loads(protected)
    except ValueError:
        assert parse(line) is None


def test_origin_pin_refuses_every_other_origin():
    good = {"alg": "ES256", "nonce": "n", "jwk": JWK}
    assert parse(encode({**good, "url": ORIGIN + "/new-acct"}, {})) is not None
    for url in ["https://ca.example/new-acct", "https://evil.example:8443/", "http://ca.example:8443/",
                "https://ca.example:8443@evil.example/", "https://evil.example/?https://ca.example:8443"]:
        assert parse(encode({**good, "url": url}, {})) is None


# ---------------------------------------------------------------- a real accountd process

@pytest.fixture(scope="module")
def accountd(tmp_path_factory):
    from cryptography.hazmat.primitives import serialization

    root = Path(tempfile.mkdtemp(prefix="accountd-fuzz-"))
    os.chmod(root, 0o700)
    key = root / "account.key"
    key.write_bytes(KEY.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    (root / "accountd.conf").write_text("")
    path = root / "S.lacme"
    env = dict(os.environ, PYTHONPATH=str(TREE_ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "lacme.accountd", f"--config={root / 'accountd.conf'}",
                             f"--privkey=file:{key}", f"--socket={path}", f"--origin={ORIGIN}", "--quiet"],
                            stderr=subprocess.PIPE, env=env, text=True)
    deadline = time.monotonic() + 10
    while not path.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "accountd did not start"
        time.sleep(0.02)
    yield proc, path
    proc.terminate()
    _out, err = proc.communicate(timeout=10)
    assert "Traceback" not in err


def exchange(path: Path, line: bytes) -> bytes:
    """Greeting, one request line; the answer line, or b"" when accountd hangs up."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(str(path))
        rfile = sock.makefile("rb")
        rfile.readline()
        rfile.readline()
        try:
            sock.sendall(line)
            sock.shutdown(socket.SHUT_WR)
            return rfile.readline()
        except (BrokenPipeError, ConnectionResetError):
            return b""


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(HEADERS, PAYLOADS)
@example(header={"alg": "ES256", "nonce": "n", "url": ORIGIN + "/x", "kid": KID}, payload={"a": [1]})
@example(header={"alg": "ES256", "nonce": "n", "url": ORIGIN + "/x", "jwk": JWK}, payload=None)
@example(header={"alg": "ES256", "nonce": "n", "url": "https://evil.example/x", "kid": KID}, payload=None)
def test_accountd_process_signs_only_well_formed_input(accountd, header, payload):
    proc, path = accountd
    line = encode(header, payload)
    answer = exchange(path, line)
    expected = parse(line)
    if expected is None:
        assert answer == b""
    else:
        signature = wire.parse_signature(answer)
        assert jwk_keys.verify(KEY.public_key(), "ES256", line[:-2], signature)
    assert proc.poll() is None


def test_accountd_survives_garbage_and_huge_lines(accountd):
    proc, path = accountd
    for line in [b"\x00" * 100 + b"\r\n", b"A" * (wire.MAX_LINE + 10) + b"\r\n", b"\xff\xfe.\r\n",
                 b"e30.e30\n", b"." * 5000 + b"\r\n", encode({"alg": "ES256"}, {}) * 3]:
        assert exchange(path, line) == b""
    assert proc.poll() is None


def test_atheris_finds_no_crash(tmp_path):
    pytest.importorskip("atheris")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    good = {"alg": "ES256", "nonce": "abc", "url": ORIGIN + "/new-order", "kid": KID}
    (corpus / "kid").write_bytes(encode(good, {"identifiers": []}))
    (corpus / "jwk").write_bytes(encode({"alg": "ES256", "nonce": "n", "url": ORIGIN, "jwk": JWK}, None))
    (corpus / "greeting").write_bytes(b'1 OK {"alg":"ES256","kid":"x"}\r\n')
    done = subprocess.run([sys.executable, __file__, "-atheris", "-runs=30000", "-max_total_time=20",
                           "-max_len=512", str(corpus)], capture_output=True, text=True, timeout=120,
                          cwd=str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(r"Done \d+ runs", done.stderr), done.stderr[-3000:]
