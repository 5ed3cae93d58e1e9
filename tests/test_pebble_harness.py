"""The Pebble harness (tests/pebble.py) works against the real Pebble.

These tests speak RFC 8555 directly with a minimal RS256 JWS signer (RFC 7515
flattened serialization, ``jwk`` then ``kid`` headers) written here, so that
the harness is checked independently of lacme's own ACME code.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import threading
import time
from collections.abc import Iterator

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID
from hypothesis import given
from hypothesis import strategies as st

from tests.pebble import Pebble, PebbleError, endpoint_name, free_dual_port, free_port, start_pebble

pytestmark = pytest.mark.pebble


# -- a minimal ACME account for the tests ----------------------------------

def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def int_b64url(value: int) -> str:
    return b64url(value.to_bytes((value.bit_length() + 7) // 8, "big"))


class Account:
    """An RS256 account key and the session state needed to sign requests."""

    def __init__(self, pebble: Pebble) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        numbers = self.key.public_key().public_numbers()
        self.jwk = {"e": int_b64url(numbers.e), "kty": "RSA", "n": int_b64url(numbers.n)}
        self.session = requests.Session()
        # REQUESTS_CA_BUNDLE in the environment would override session.verify
        self.session.trust_env = False
        self.session.verify = pebble.tls_ca_file
        self.directory = self.session.get(pebble.directory_url, timeout=10).json()
        self.kid: str | None = None

    def thumbprint(self) -> str:
        canonical = json.dumps(self.jwk, sort_keys=True, separators=(",", ":")).encode()
        return b64url(hashlib.sha256(canonical).digest())

    def new_nonce(self) -> str:
        return self.session.head(self.directory["newNonce"], timeout=10).headers["Replay-Nonce"]

    def post(self, url: str, payload: dict | None) -> requests.Response:
        """A JWS POST (payload None means POST-as-GET), signed with jwk or kid."""
        protected = {"alg": "RS256", "nonce": self.new_nonce(), "url": url}
        if self.kid is None:
            protected["jwk"] = self.jwk
        else:
            protected["kid"] = self.kid
        protected_b64 = b64url(json.dumps(protected).encode())
        payload_b64 = "" if payload is None else b64url(json.dumps(payload).encode())
        signature = self.key.sign(
            f"{protected_b64}.{payload_b64}".encode(), padding.PKCS1v15(), hashes.SHA256()
        )
        body = {"protected": protected_b64, "payload": payload_b64, "signature": b64url(signature)}
        return self.session.post(
            url, data=json.dumps(body), timeout=10,
            headers={"Content-Type": "application/jose+json"},
        )

    def register(self) -> None:
        response = self.post(self.directory["newAccount"], {"termsOfServiceAgreed": True})
        assert response.status_code == 201, response.text
        self.kid = response.headers["Location"]


def poll_status(account: Account, url: str, done: set[str]) -> dict:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        resource = account.post(url, None).json()
        if resource["status"] in done:
            return resource
        time.sleep(0.1)
    raise AssertionError(f"{url}: still {resource['status']}")


class ChallengeHandler(http.server.BaseHTTPRequestHandler):
    answers: dict[str, str] = {}

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        token = self.path.rsplit("/", 1)[-1]
        answer = self.answers.get(token)
        self.send_response(200 if answer else 404)
        self.end_headers()
        if answer:
            self.wfile.write(answer.encode())

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def http01_server(pebble: Pebble) -> Iterator[dict[str, str]]:
    """A real http-01 responder on 127.0.0.1:pebble.http_port; yields token -> answer."""
    answers: dict[str, str] = {}
    handler = type("Handler", (ChallengeHandler,), {"answers": answers})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", pebble.http_port), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield answers
    server.shutdown()
    server.server_close()


# -- the directory and request counting --------------------------------------

def test_directory_lists_acme_resources_when_started(pebble: Pebble) -> None:
    directory = requests.get(pebble.directory_url, verify=pebble.tls_ca_file, timeout=10).json()
    for resource in ("newNonce", "newAccount", "newOrder", "revokeCert"):
        assert directory[resource].startswith("https://127.0.0.1:")


def test_new_nonce_answers_with_replay_nonce_on_head(pebble: Pebble) -> None:
    account = Account(pebble)
    response = account.session.head(account.directory["newNonce"], timeout=10)
    assert response.status_code == 200
    assert len(response.headers["Replay-Nonce"]) >= 16


def test_requests_since_counts_exactly_the_requests_made(pebble: Pebble) -> None:
    account = Account(pebble)
    offset = pebble.log_offset()
    for _ in range(3):
        account.new_nonce()
    assert pebble.requests_since(offset) == {"HEAD /nonce-plz": 3}


def test_requests_since_ignores_management_requests(pebble: Pebble) -> None:
    offset = pebble.log_offset()
    pebble.root_pem()
    assert pebble.requests_since(offset) == {}


@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_",
               min_size=1, max_size=64))
def test_endpoint_name_strips_ids_from_paths(resource_id: str) -> None:
    assert endpoint_name("POST", f"/authZ/{resource_id}") == "POST /authZ"
    assert endpoint_name("POST", f"/certZ/{resource_id}/1?x=y") == "POST /certZ"
    assert endpoint_name("GET", "/dir") == "GET /dir"


# -- trust anchors ------------------------------------------------------------

def test_root_pem_parses_as_ca_certificate(pebble: Pebble, tmp_path) -> None:
    root = x509.load_pem_x509_certificate(pebble.root_pem())
    assert root.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert root.subject == root.issuer
    path = pebble.write_root(tmp_path / "root.pem")
    assert x509.load_pem_x509_certificate(open(path, "rb").read()) == root


def test_tls_ca_file_is_required_to_reach_pebble(pebble: Pebble) -> None:
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(pebble.directory_url, timeout=10)


# -- environment knobs reach Pebble -------------------------------------------

def test_new_account_succeeds_when_nonce_rejection_is_off(pebble: Pebble) -> None:
    account = Account(pebble)
    account.register()
    assert account.kid.startswith("https://127.0.0.1:")


def test_nonce_reject_knob_rejects_jws_post_with_bad_nonce(pebble_factory) -> None:
    rejecting = pebble_factory(env={"PEBBLE_WFE_NONCEREJECT": "100"})
    account = Account(rejecting)
    response = account.post(account.directory["newAccount"], {"termsOfServiceAgreed": True})
    assert response.status_code == 400
    assert response.headers["Content-Type"].split(";")[0] == "application/problem+json"
    assert response.json()["type"] == "urn:ietf:params:acme:error:badNonce"


# -- a whole issuance: http_port, DNS and certificate status -----------------

def make_csr(name: str) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.DER)


def issue_certificate(pebble: Pebble, answers: dict[str, str], name: str) -> tuple[Account, x509.Certificate]:
    account = Account(pebble)
    account.register()
    response = account.post(account.directory["newOrder"],
                            {"identifiers": [{"type": "dns", "value": name}]})
    assert response.status_code == 201, response.text
    order_url, order = response.headers["Location"], response.json()
    authz = account.post(order["authorizations"][0], None).json()
    challenge = next(c for c in authz["challenges"] if c["type"] == "http-01")
    answers[challenge["token"]] = f"{challenge['token']}.{account.thumbprint()}"
    assert account.post(challenge["url"], {}).status_code == 200
    authz = poll_status(account, order["authorizations"][0], {"valid", "invalid"})
    assert authz["status"] == "valid", authz
    response = account.post(order["finalize"], {"csr": b64url(make_csr(name))})
    assert response.status_code == 200, response.text
    order = poll_status(account, order_url, {"valid", "invalid"})
    pem = account.post(order["certificate"], None).content
    return account, x509.load_pem_x509_certificate(pem)


def test_http01_validation_reaches_http_port_for_any_name(pebble: Pebble, http01_server) -> None:
    _, cert = issue_certificate(pebble, http01_server, "www.harness.test")
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["www.harness.test"]
    assert pebble.cert_status(cert.serial_number) == "Valid"


def test_cert_status_shows_revoked_after_revocation(pebble: Pebble, http01_server) -> None:
    account, cert = issue_certificate(pebble, http01_server, "revoked.harness.test")
    der = cert.public_bytes(serialization.Encoding.DER)
    response = account.post(account.directory["revokeCert"], {"certificate": b64url(der)})
    assert response.status_code == 200, response.text
    assert pebble.cert_status(cert.serial_number) == "Revoked"


def test_authorizations_are_not_reused_in_session_instance(pebble: Pebble, http01_server) -> None:
    """PEBBLE_AUTHZREUSE=0 makes reuse rare, not impossible: Pebble makes a new
    authorization when rand.Intn(100) > the percentage, so it still reuses a
    valid one 1 time in 100.  Of twenty orders at most three may (a run fails
    about once in twenty thousand); at Pebble's default of 50, ten would."""
    account, _ = issue_certificate(pebble, http01_server, "again.harness.test")
    statuses = []
    for _ in range(20):
        response = account.post(account.directory["newOrder"],
                                {"identifiers": [{"type": "dns", "value": "again.harness.test"}]})
        statuses.append(account.post(response.json()["authorizations"][0], None).json()["status"])
    assert statuses.count("pending") >= 17, statuses


# -- process control ---------------------------------------------------------

def test_pause_stalls_requests_until_resume(pebble_factory) -> None:
    instance = pebble_factory()
    instance.pause()
    try:
        with pytest.raises(requests.exceptions.Timeout):
            requests.get(instance.directory_url, verify=instance.tls_ca_file, timeout=0.5)
    finally:
        instance.resume()
    response = requests.get(instance.directory_url, verify=instance.tls_ca_file, timeout=10)
    assert response.status_code == 200


def test_stop_closes_the_listener(tmp_path) -> None:
    instance = start_pebble(tmp_path)
    instance.stop()
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(instance.directory_url, verify=instance.tls_ca_file, timeout=2)


def test_start_pebble_names_the_log_when_pebble_cannot_start(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr("tests.pebble.PEBBLE", "/bin/false")
    with pytest.raises(PebbleError, match=r"pebble\.log: pebble exited with 1"):
        start_pebble(tmp_path)


def test_free_ports_are_bindable() -> None:
    import socket
    for port in (free_port(), free_dual_port()):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))
