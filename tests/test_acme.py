"""Tests for lacme.client.acme: the RFC 8555 session against a real Pebble.

The account key lives in this process (a local Signer over a cryptography
key; in production it is accountd).  http-01 answers are served by a real
``http.server`` on Pebble's http port from a temporary directory.  Request
counts are read from Pebble's own log.
"""

from __future__ import annotations

import email.utils
import http.server
import socket
import threading
import time
import unicodedata
import uuid
from pathlib import Path
from typing import Iterator

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given
from hypothesis import strategies as st

from lacme.client.acme.messages import AcmeProblemError, Problem, parse_retry_after
from lacme.client.acme.session import AcmeSession
from lacme.client.acme.tls import tls_version_range
from lacme.core.errors import AcmeError
from lacme.core.origin import origin_of
from lacme.core.text import DETAIL_LIMIT, escape_text
from lacme.protocol import jwk_keys, jws

ERR = "urn:ietf:params:acme:error:"


class KeySigner:
    """A Signer over a key held in the test process."""

    def __init__(self, key=None, kid: str | None = None) -> None:
        self.key = key if key is not None else ec.generate_private_key(ec.SECP256R1())
        self.alg = jwk_keys.alg_for_key(self.key)
        self.jwk = jwk_keys.public_jwk(self.key)
        self.thumbprint = jws.jwk_thumbprint(self.jwk)
        self.kid = kid
        self.count = 0

    def sign(self, signing_input: bytes) -> bytes:
        self.count += 1
        return jwk_keys.sign(self.key, self.alg, signing_input)


class ChallengeServer:
    """A real HTTP server answering /.well-known/acme-challenge/ from a directory."""

    def __init__(self, root: Path, port: int) -> None:
        self.dir = root / ".well-known" / "acme-challenge"
        self.dir.mkdir(parents=True)
        directory = str(root)

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args) -> None:
                super().__init__(*args, directory=directory)

            def log_message(self, *args) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def publish(self, token: str, content: str) -> None:
        (self.dir / token).write_text(content)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def challenges(pebble, tmp_path_factory) -> Iterator[ChallengeServer]:
    server = ChallengeServer(tmp_path_factory.mktemp("www"), pebble.http_port)
    yield server
    server.close()


def make_session(pebble, signer, timeout: float = 20.0, **kwargs) -> AcmeSession:
    kwargs.setdefault("verify", pebble.tls_ca_file)
    return AcmeSession(pebble.directory_url, signer, deadline=time.monotonic() + timeout, **kwargs)


def registered(pebble, **kwargs) -> AcmeSession:
    session = make_session(pebble, KeySigner(), **kwargs)
    session.new_account(tos_agreed=True)
    return session


def make_csr(names: list[str]) -> tuple[ec.EllipticCurvePrivateKey, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, csr.public_bytes(serialization.Encoding.DER)


def unique_names(count: int) -> list[str]:
    tag = uuid.uuid4().hex[:8]
    return [f"n{i}-{tag}.example.org" for i in range(count)]


def issue(session: AcmeSession, challenges: ChallengeServer, names: list[str]) -> tuple[str, ec.EllipticCurvePrivateKey]:
    """The client's order flow, step by step, through the session's methods."""
    order = session.new_order([{"type": "dns", "value": n} for n in names])
    assert order.status == "pending"
    for authz_url in order.authorizations:
        chall = session.authorization(authz_url).challenge("http-01")
        challenges.publish(chall.token, f"{chall.token}.{session.signer.thumbprint}")
        session.respond_challenge(chall.url)
    order = session.poll_order(order.url, until=("ready", "valid", "invalid"))
    assert order.status == "ready", order
    key, csr = make_csr(names)
    order = session.finalize(order, csr)
    if order.status == "processing":
        order = session.poll_order(order.url, until=("valid", "invalid"), status="processing")
    assert order.status == "valid"
    return session.download_certificate(order.certificate), key


# -- accounts --------------------------------------------------------------


def test_new_account_registers_then_lookup_finds_it(pebble):
    signer = KeySigner()
    first = make_session(pebble, signer)
    account = first.new_account(contact=["mailto:a@example.org"], tos_agreed=True)
    assert account.created and account.body["status"] == "valid"
    assert account.body["contact"] == ["mailto:a@example.org"]
    assert first.kid == account.url

    offset = pebble.log_offset()
    second = make_session(pebble, KeySigner(signer.key))
    assert second.lookup_account() == account.url
    assert second.lookup_account() == account.url  # looked up once
    counts = pebble.requests_since(offset)
    assert counts == {"GET /dir": 1, "HEAD /nonce-plz": 1, "POST /sign-me-up": 1}


def test_lookup_account_unknown_key_raises_account_does_not_exist(pebble):
    session = make_session(pebble, KeySigner())
    with pytest.raises(AcmeProblemError) as info:
        session.lookup_account()
    assert info.value.problem.type == ERR + "accountDoesNotExist"
    message = str(info.value)
    assert message.startswith(session.resource("newAccount") + ": 400 " + ERR + "accountDoesNotExist (")
    assert "\n" not in message


def test_lookup_account_skipped_when_signer_has_kid(pebble):
    session = registered(pebble)
    offset = pebble.log_offset()
    again = make_session(pebble, KeySigner(session.signer.key, kid=session.kid))
    again.new_order([{"type": "dns", "value": unique_names(1)[0]}])
    assert pebble.requests_since(offset)["POST /sign-me-up"] == 0


def test_update_account_replaces_contact(pebble):
    session = registered(pebble)
    body = session.update_account({"contact": ["mailto:new@example.org"]})
    assert body["contact"] == ["mailto:new@example.org"]
    assert session.get(session.kid)["contact"] == ["mailto:new@example.org"]


def test_deactivate_account_refuses_later_orders(pebble):
    session = registered(pebble)
    assert session.deactivate_account()["status"] == "deactivated"
    with pytest.raises(AcmeProblemError) as info:
        session.new_order([{"type": "dns", "value": "x.example.org"}])
    assert info.value.problem.status in (401, 403)
    assert str(info.value).startswith(session.resource("newOrder") + ": ")


def test_update_account_empty_change_refused_locally(pebble):
    session = registered(pebble)
    with pytest.raises(ValueError):
        session.update_account({})


# -- orders ----------------------------------------------------------------


def test_order_two_names_issues_chain_within_request_budget(pebble, challenges):
    names = unique_names(2)
    offset = pebble.log_offset()
    session = make_session(pebble, KeySigner())
    session.new_account(tos_agreed=True)
    pem, key = issue(session, challenges, names)

    chain = x509.load_pem_x509_certificates(pem.encode())
    assert len(chain) >= 2
    leaf = chain[0]
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(sans.get_values_for_type(x509.DNSName)) == set(names)
    assert leaf.public_key().public_numbers() == key.public_key().public_numbers()

    counts = pebble.requests_since(offset)
    assert counts["GET /dir"] == 1 and counts["HEAD /nonce-plz"] == 1
    polls = counts["POST /my-order"]
    n = len(names)
    assert counts["POST /authZ"] == n and counts["POST /chalZ"] == n
    assert sum(counts.values()) - polls <= 2 * n + 5 + 1  # +1: newAccount (registration)


def test_poll_order_pending_stops_at_deadline(pebble):
    session = registered(pebble, timeout=1.5)
    url = session.new_order([{"type": "dns", "value": unique_names(1)[0]}]).url
    started = time.monotonic()
    with pytest.raises(AcmeError) as info:
        session.poll_order(url, until=("ready",))
    elapsed = time.monotonic() - started
    assert elapsed < 1.6
    assert str(info.value).startswith(url + ": order still pending")


def test_poll_order_invalid_when_answer_wrong(pebble, challenges):
    session = registered(pebble)
    order = session.new_order([{"type": "dns", "value": unique_names(1)[0]}])
    chall = session.authorization(order.authorizations[0]).challenge("http-01")
    challenges.publish(chall.token, "wrong")
    session.respond_challenge(chall.url)
    assert session.poll_order(order.url).status == "invalid"
    authz = session.authorization(order.authorizations[0])
    assert authz.status == "invalid"
    failed = authz.challenge("http-01")
    assert failed.error is not None and failed.error.type == ERR + "unauthorized"
    raw = next(c for c in session.get(order.authorizations[0])["challenges"] if c["type"] == "http-01")
    assert Problem.from_json(raw["error"]) == failed.error


def test_bad_nonce_retried_until_issued(pebble_factory, pebble, challenges, caplog):
    caplog.set_level("DEBUG", logger="lacme-client")
    faulty = pebble_factory(env={"PEBBLE_WFE_NONCEREJECT": "50"}, http_port=pebble.http_port)
    offset = faulty.log_offset()
    session = make_session(faulty, KeySigner(), timeout=40)
    session.new_account(tos_agreed=True)
    pem, _key = issue(session, challenges, unique_names(2))
    assert "BEGIN CERTIFICATE" in pem
    counts = faulty.requests_since(offset)
    assert counts["HEAD /nonce-plz"] == 1  # retries use the nonce of the badNonce answer
    retries = [r for r in caplog.records if "badNonce" in r.getMessage()]
    assert retries  # half the nonces are refused: some requests were retried
    posts = sum(v for k, v in counts.items() if k.startswith("POST "))
    assert posts == session.signer.count  # one fresh signature per attempt


def test_revoke_with_account_and_with_certificate_key(pebble, challenges):
    session = registered(pebble)
    for use_jwk in (False, True):
        pem, key = issue(session, challenges, unique_names(1))
        leaf = x509.load_pem_x509_certificates(pem.encode())[0]
        der = leaf.public_bytes(serialization.Encoding.DER)
        if use_jwk:
            by_key = make_session(pebble, KeySigner(key))
            by_key.revoke(der, 4, use_jwk=True)
        else:
            session.revoke(der, 1)
        assert pebble.cert_status(leaf.serial_number) == "Revoked"
        with pytest.raises(AcmeProblemError) as info:
            session.revoke(der)
        assert info.value.problem.type == ERR + "alreadyRevoked"


# -- transport and TLS -----------------------------------------------------


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_server_error_names_url(pebble):
    url = f"https://127.0.0.1:{closed_port()}/dir"
    session = AcmeSession(url, KeySigner(), deadline=time.monotonic() + 5)
    with pytest.raises(AcmeError) as info:
        session.directory()
    assert str(info.value) == f"{url}: Connection refused"


def test_stalled_server_fails_at_deadline(pebble_factory):
    stalled = pebble_factory()
    session = make_session(stalled, KeySigner(), timeout=1.0)
    stalled.pause()
    try:
        started = time.monotonic()
        with pytest.raises(AcmeError) as info:
            session.directory()
        assert time.monotonic() - started < 1.5
    finally:
        stalled.resume()
    assert str(info.value) == f"{stalled.directory_url}: timed out (client timeout reached)"


def test_expired_deadline_sends_nothing(pebble):
    offset = pebble.log_offset()
    session = make_session(pebble, KeySigner(), timeout=-1)
    with pytest.raises(AcmeError, match="timed out"):
        session.directory()
    assert pebble.requests_since(offset)["GET /dir"] == 0


def test_default_trust_rejects_private_ca(pebble):
    session = make_session(pebble, KeySigner(), verify=True)
    with pytest.raises(AcmeError) as info:
        session.directory()
    assert str(info.value).startswith(pebble.directory_url + ": TLS error")


def test_missing_ca_file_error_names_url(pebble, tmp_path):
    session = make_session(pebble, KeySigner(), verify=str(tmp_path / "none.pem"))
    with pytest.raises(AcmeError) as info:
        session.directory()
    assert str(info.value).startswith(pebble.directory_url + ": ")
    assert "none.pem" in str(info.value)


def test_verify_false_accepts_private_ca(pebble, recwarn):
    session = make_session(pebble, KeySigner(), verify=False)
    assert "newOrder" in session.directory()
    assert not [w for w in recwarn if "Unverified" in str(w.message)]  # asked for: no nagging


@pytest.mark.parametrize("version", ["TLSv1_2", "TLSv1.3", "SSLv23:!TLSv1:!TLSv1_1"])
def test_ssl_version_accepted_values_connect(pebble, version):
    session = make_session(pebble, KeySigner(), ssl_version=version,
                           ssl_cipher_list="ECDHE+AESGCM:ECDHE+CHACHA20")
    assert "newAccount" in session.directory()


def test_ssl_version_pinned_above_server_fails(tmp_path):
    # A TLS 1.2-only server: a client pinned to TLSv1_3 cannot talk to it.
    import ssl

    from tests.pebble import write_tls_files
    ca, cert, key = write_tls_files(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        try:
            context.wrap_socket(conn, server_side=True)
        except (ssl.SSLError, OSError):
            pass
        conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    url = f"https://127.0.0.1:{port}/dir"
    session = AcmeSession(url, KeySigner(), deadline=time.monotonic() + 5, verify=str(ca),
                          ssl_version="TLSv1_3")
    with pytest.raises(AcmeError) as info:
        session.directory()
    assert str(info.value).startswith(url + ": TLS error")
    thread.join(5)
    listener.close()


@pytest.mark.parametrize("spec", ["TLSv1_4", "SSLv3", "TLSv1_2:!TLSv1", "SSLv23:!TLSv1_2", "", "foo"])
def test_tls_version_range_rejects(spec):
    with pytest.raises(ValueError):
        tls_version_range(spec)


def test_tls_version_range_values():
    import ssl
    V = ssl.TLSVersion
    assert tls_version_range("TLSv1_2") == (V.TLSv1_2, V.TLSv1_2)
    assert tls_version_range("tlsv12") == (V.TLSv1_2, V.TLSv1_2)
    assert tls_version_range("SSLv23") == (None, None)
    assert tls_version_range("SSLv23:!SSLv3:!TLSv1:!TLSv1_1") == (V.TLSv1_2, V.TLSv1_3)
    assert tls_version_range("SSLv23:!TLSv1_3") == (V.TLSv1, V.TLSv1_2)


def test_bad_cipher_list_is_value_error(pebble):
    with pytest.raises(ValueError, match="SSL_cipher_list"):
        make_session(pebble, KeySigner(), ssl_cipher_list="NO-SUCH-CIPHER")


# -- parsers of server input -----------------------------------------------


def test_parse_retry_after_seconds_and_date():
    assert parse_retry_after("7") == 7.0
    now = time.time()
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert 28 <= parse_retry_after(date, now=now) <= 31
    assert parse_retry_after(email.utils.formatdate(now - 30, usegmt=True), now=now) == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after("-3") is None
    assert parse_retry_after(None) is None


@given(st.text(max_size=60))
def test_parse_retry_after_never_raises_or_goes_negative(value):
    result = parse_retry_after(value)
    assert result is None or result >= 0


@given(st.text(max_size=400))
def test_escape_text_leaves_no_control_characters(text):
    out = escape_text(text)
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 or c in "\u2028\u2029" for c in out)
    assert out.isprintable()
    assert len(out) <= 10 * DETAIL_LIMIT + 3  # \UNNNNNNNN at most per character


def _escape_char_by_char(text: str, limit: int) -> str:
    """The rule of lacme.core.text said from the Unicode database: "Other" (C*) and
    "Separator" (Z*) characters but the ASCII space, and the backslash, are escaped."""
    out = []
    for ch in text[:limit]:
        code = ord(ch)
        category = unicodedata.category(ch)
        if ch == "\\" or (category[0] in "CZ" and ch != " "):
            out.append("\\x%02x" % code if code <= 0xFF else
                       "\\u%04x" % code if code <= 0xFFFF else "\\U%08x" % code)
        else:
            out.append(ch)
    return "".join(out) + ("..." if len(text) > limit else "")


@given(st.text(max_size=300), st.integers(min_value=1, max_value=400))
def test_escape_text_fast_path_escapes_as_the_character_rule(text, limit):
    # the fast path (printable text, no backslash) must not change a single result
    assert escape_text(text, limit) == _escape_char_by_char(text, limit)


@given(st.text(alphabet=st.characters(max_codepoint=0x2100), max_size=40))
def test_origin_of_refuses_exactly_non_printable_ascii(tail):
    url = "https://ca.example/" + tail
    bad = any(ord(c) <= 0x20 or ord(c) >= 0x7F for c in url)
    try:
        origin_of(url)
    except ValueError as exc:
        assert bad or "printable" not in str(exc)
    else:
        assert not bad


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)


@given(st.one_of(json_values, st.fixed_dictionaries(
    {"type": st.text(max_size=30), "detail": st.text(max_size=50)},
    optional={"subproblems": st.lists(json_values, max_size=3), "status": json_values,
              "identifier": json_values})))
def test_problem_from_json_any_input_is_one_line(obj):
    text = str(Problem.from_json(obj, 400))
    assert text and "\n" not in text and "\r" not in text


def test_problem_with_subproblems_names_identifiers():
    problem = Problem.from_json({
        "type": ERR + "rejectedIdentifier", "detail": "some\nnames", "status": 400,
        "subproblems": [{"type": ERR + "caa", "detail": "no", "identifier": {"type": "dns", "value": "a.example"}}],
    })
    assert str(problem) == (f"400 {ERR}rejectedIdentifier (some\\x0anames); dns:a.example: caa (no)")
