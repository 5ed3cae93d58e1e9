"""The hostile ACME server: RFC 8555 over real TLS, with one switch per misbehaviour.

Runs in threads of the test process (no privilege).  By default it is a
small but correct CA: directory, nonces (RFC 8555 7.2), JWS verification
(6.2-6.4: signature, nonce, url), accounts (7.3), orders, authorizations,
http-01 validation against ``127.0.0.1:http_port`` with the identifier as
Host (8.3), finalization with a CSR and a chain leaf + intermediate whose
root is ``root_pem`` (7.4), revocation (7.6).

``mode`` (one string, set per test with ``set_mode``) makes it misbehave;
the names are listed in MODES.  An order whose first identifier starts
with a mode's name as its first label (``cert-expired.www.example.com``)
gets that mode whatever the global one, so that one lacme run can hold many
cases, one per certificate section.  A second HTTPS listener, the canary, is the
foreign origin the hostile modes point URLs at: it records every request and
the tests assert that it never saw a signed one.
"""

from __future__ import annotations

import datetime
import email.utils
import http.client
import http.server
import itertools
import json
import secrets
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from lacme.protocol import jwk_keys, jws
from tests.pebble import write_tls_files

ERR = "urn:ietf:params:acme:error:"
EVIL = "\x1b[31mEVIL\x07\r\nerror: forged line\x1b]0;title\x07\u2028"

MODES = {
    # certificates (issue 5, item 1)
    "cert-extra-name", "cert-missing-name", "cert-wrong-key", "cert-expired", "cert-not-yet-valid",
    "cert-wrong-issuer", "cert-unrelated-in-chain", "cert-chain-too-long", "cert-garbage",
    "cert-private-key-block", "cert-html",
    # origins (item 2): where a URL of the given kind points
    "origin-order", "origin-authz", "origin-challenge", "origin-finalize", "origin-certificate",
    "origin-account", "origin-directory-newOrder", "origin-directory-newNonce",
    "http-finalize", "http-certificate", "file-certificate", "userinfo-finalize",
    "redirect-post-finalize", "redirect-directory-foreign", "redirect-directory-file",
    "redirect-directory-local",
    # bounds (item 3)
    "big-json", "big-json-chunked", "deep-json", "big-chain", "slow-drip", "stall-after-headers",
    "slow-headers", "many-authz", "extra-authz", "gzip-bomb",
    # polling (item 4)
    "processing-retry-after-0", "pending-forever", "retry-after-huge", "retry-after-date",
    # nonces (item 5)
    "bad-nonce-once", "bad-nonce-storm", "no-replay-nonce",
    # output (item 6)
    "evil-problem", "evil-tos", "evil-identifier", "garbage-json", "problem-odd-types",
    # faults: slow but correct, to spread kill points
    "slow",
    # back-off (issue 15, item 5): newOrder answers rateLimited with a Retry-After
    "rate-limited",
}


_MODES_BY_LABEL = {m.lower(): m for m in MODES}
RATE_LIMIT_RETRY_AFTER = 5400  # seconds: the Retry-After of mode rate-limited


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def make_ca(name: str, issuer: tuple[Any, x509.Certificate] | None = None
            ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A CA certificate: self-signed root, or an intermediate under ``issuer``."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    signer_key, signer_cert = issuer if issuer else (key, None)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(signer_cert.subject if signer_cert else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now() - datetime.timedelta(hours=1))
        .not_valid_after(now() + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(signer_key.public_key()),
                       critical=False)
    )
    return key, builder.sign(signer_key, hashes.SHA256())


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@dataclass
class Order:
    id: str
    account: str
    identifiers: list[dict]
    authz: list[str]
    status: str = "pending"
    cert: str | None = None
    polls: int = 0


@dataclass
class Authz:
    id: str
    order: str
    identifier: dict
    token: str
    status: str = "pending"
    error: dict | None = None


@dataclass
class Record:
    """One request as a listener saw it."""

    listener: str  # "main" or "canary"
    method: str
    path: str
    signed: bool
    at: float = field(default_factory=time.monotonic)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, ca: "HostileCA", name: str, context: ssl.SSLContext) -> None:
        self.ca = ca
        self.name = name
        self.context = context
        super().__init__(("127.0.0.1", 0), _Handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = self.socket.accept()
        # the handshake happens in the handler's thread, not in the accept loop
        return self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients that hang up are part of the game


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, *args: Any) -> None:
        pass

    def setup(self) -> None:
        self.request.settimeout(30)
        try:
            self.request.do_handshake()
        except (OSError, ssl.SSLError):
            self.request.close()
            raise
        super().setup()

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def do_GET(self) -> None:
        self.server.ca.dispatch(self, "GET", b"")

    def do_HEAD(self) -> None:
        self.server.ca.dispatch(self, "HEAD", b"")

    def do_POST(self) -> None:
        self.server.ca.dispatch(self, "POST", self._body())


class Reply(Exception):
    """Raised by a route to answer at once (problems, redirects)."""

    def __init__(self, status: int, body: Any = None, headers: dict[str, str] | None = None,
                 content_type: str = "application/problem+json") -> None:
        super().__init__(status)
        self.status = status
        self.body = body
        self.headers = headers or {}
        self.content_type = content_type


def problem(status: int, kind: str, detail: str) -> Reply:
    return Reply(status, {"type": ERR + kind, "detail": detail, "status": status})


class HostileCA:
    """The CA and its canary; ``http_port`` is where it fetches http-01 answers."""

    def __init__(self, workdir: Path, http_port: int) -> None:
        self.workdir = workdir
        self.http_port = http_port
        self.tls_ca_file, cert, key = write_tls_files(workdir)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self.root_key, self.root = make_ca("hostile root")
        self.inter_key, self.inter = make_ca("hostile intermediate", (self.root_key, self.root))
        self.other_key, self.other = make_ca("unrelated root")
        self.lock = threading.Lock()
        self.ids = itertools.count(1)
        self.nonces: set[str] = set()
        self.accounts: dict[str, Any] = {}  # kid -> public key
        self.account_bodies: dict[str, dict] = {}
        self.thumbs: dict[str, str] = {}  # thumbprint -> kid
        self.orders: dict[str, Order] = {}
        self.authzs: dict[str, Authz] = {}
        self.certs: dict[str, bytes] = {}
        self.records: list[Record] = []
        self.mode = ""
        self.stopping = threading.Event()
        self.main = _Server(self, "main", context)
        self.canary = _Server(self, "canary", context)
        self.base = f"https://127.0.0.1:{self.main.server_address[1]}"
        self.canary_base = f"https://127.0.0.1:{self.canary.server_address[1]}"
        for server in (self.main, self.canary):
            threading.Thread(target=server.serve_forever, daemon=True).start()

    # -- handle for the tests -------------------------------------------------

    @property
    def directory_url(self) -> str:
        return self.base + "/dir"

    def root_pem(self) -> bytes:
        return pem(self.root)

    def set_mode(self, mode: str, *, clear: bool = True) -> None:
        """Behave as ``mode`` says from now on ("" is correct); forget past requests."""
        assert mode in MODES or mode == "", mode
        with self.lock:
            self.mode = mode
            if clear:
                self.records.clear()

    def requests(self, listener: str = "main") -> list[Record]:
        with self.lock:
            return [r for r in self.records if r.listener == listener]

    def stop(self) -> None:
        self.stopping.set()
        for server in (self.main, self.canary):
            server.shutdown()
            server.server_close()

    # -- request plumbing -----------------------------------------------------

    def dispatch(self, h: _Handler, method: str, body: bytes) -> None:
        path = h.path.split("?", 1)[0]
        signed = method == "POST" and b'"protected"' in body
        with self.lock:
            self.records.append(Record(h.server.name, method, path, signed))
        if h.server.name == "canary":  # looks like a CA, records everything
            self.send(h, 200, {"status": "valid"}, "application/json", {"Replay-Nonce": self.nonce()})
            return
        try:
            if self.mode == "slow":
                time.sleep(0.15)
            status, obj, ctype, headers = self.route(h, method, path, body)
        except Reply as reply:
            status, obj, ctype, headers = reply.status, reply.body, reply.content_type, reply.headers
            if method == "POST" and "Replay-Nonce" not in headers and self.mode != "no-replay-nonce":
                headers["Replay-Nonce"] = self.nonce()
        self.send(h, status, obj, ctype, headers, head=method == "HEAD")

    def send(self, h: _Handler, status: int, obj: Any, ctype: str | None,
             headers: dict[str, str], head: bool = False) -> None:
        if obj is None:
            data = b""
        elif isinstance(obj, bytes):
            data = obj
        else:
            data = json.dumps(obj).encode()
        special = headers.pop("X-Hostile", None)
        try:
            if special == "drip-head":  # the response head itself, one byte at a time
                head = f"HTTP/1.1 {status} OK\r\nContent-Type: {ctype}\r\n".encode()
                head += b"".join(f"{k}: {v}\r\n".encode() for k, v in headers.items())
                self.drip(h, head + b"Content-Length: %d\r\n\r\n" % len(data) + data)
                return
            h.send_response(status)
            if ctype and data:
                h.send_header("Content-Type", ctype)
            for name, value in headers.items():
                h.send_header(name, value)
            if special == "chunked":
                h.send_header("Transfer-Encoding", "chunked")
                h.end_headers()
                self.send_chunked(h)
                return
            if special == "stall":
                h.send_header("Content-Length", "100")
                h.end_headers()
                h.wfile.flush()
                self.stall(h)
                return
            if special == "drip":
                h.send_header("Content-Length", str(len(data)))
                h.end_headers()
                h.wfile.flush()
                self.drip(h, data)
                return
            if special == "big":
                h.send_header("Content-Length", str(50 * 1024 * 1024))
                h.end_headers()
                self.send_big(h)
                return
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            if not head:
                h.wfile.write(data)
            h.wfile.flush()
        except OSError:
            h.close_connection = True

    def send_chunked(self, h: _Handler) -> None:
        chunk = b"[" + b"1," * 32767 + b"1]"
        for _ in range(1000):  # 64 MB unless the client hangs up
            if self.stopping.is_set():
                break
            h.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        h.wfile.write(b"0\r\n\r\n")
        h.close_connection = True

    def send_big(self, h: _Handler) -> None:
        block = b" " * 65536
        for _ in range(800):
            if self.stopping.is_set():
                break
            h.wfile.write(block)
        h.close_connection = True

    def stall(self, h: _Handler) -> None:
        h.close_connection = True
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not self.stopping.is_set():
            time.sleep(0.1)
            try:  # a peer that hung up (or shut down) reads as EOF
                h.request.setblocking(False)
                if h.request.recv(1) == b"":
                    return
            except (ssl.SSLWantReadError, BlockingIOError):
                continue
            except OSError:
                return

    def drip(self, h: _Handler, data: bytes) -> None:
        h.close_connection = True
        for i in range(len(data)):
            if self.stopping.is_set():
                return
            h.wfile.write(data[i:i + 1])
            h.wfile.flush()
            time.sleep(0.3)

    def nonce(self) -> str:
        value = secrets.token_urlsafe(16)
        with self.lock:
            self.nonces.add(value)
        return value

    def order_mode(self, order: Order) -> str:
        return self.identifiers_mode(order.identifiers)

    def identifiers_mode(self, identifiers: list[dict]) -> str:
        """The order's own mode (its first name's first label), else the global one."""
        label = str(identifiers[0].get("value", "")).split(".", 1)[0].lower()
        return _MODES_BY_LABEL.get(label, self.mode)

    def url(self, kind: str, path: str, mode: str | None = None) -> str:
        """A URL the server hands out; foreign when the mode says so for ``kind``."""
        mode = self.mode if mode is None else mode
        if mode == f"origin-{kind}":
            return self.canary_base + path
        if mode == f"http-{kind}":
            return self.base.replace("https:", "http:") + path
        if mode == f"file-{kind}":
            return "file:///etc/passwd"
        if mode == f"userinfo-{kind}":
            return self.base.replace("https://", f"https://{self.canary_base[8:]}@") + path
        return self.base + path

    # -- routes ---------------------------------------------------------------

    def route(self, h: _Handler, method: str, path: str, body: bytes
              ) -> tuple[int, Any, str | None, dict[str, str]]:
        if path == "/dir" and method == "GET":
            return self.directory()
        if path == "/dir2" and method == "GET" and self.mode == "redirect-directory-local":
            self.mode = ""
            return self.directory()
        if path == "/nonce" and method in ("HEAD", "GET"):
            return 200 if method == "HEAD" else 204, None, None, {
                "Replay-Nonce": self.nonce(), "Cache-Control": "no-store"}
        if method != "POST":
            raise problem(405, "malformed", "method not allowed")
        header, payload, kid = self.verify(path, body)
        headers = {} if self.mode == "no-replay-nonce" else {"Replay-Nonce": self.nonce()}
        if path == "/new-acct":
            return self.new_account(header, payload, headers)
        name, _, ident = path.strip("/").partition("/")
        handler = {
            "acct": self.post_account, "new-order": self.new_order, "order": self.get_order,
            "authz": self.get_authz, "chall": self.post_challenge, "finalize": self.finalize,
            "cert": self.get_cert, "revoke": self.revoke,
        }.get(name)
        if handler is None:
            raise problem(404, "malformed", f"no such resource {path}")
        return handler(kid, ident, payload, headers)

    def directory(self) -> tuple[int, Any, str, dict[str, str]]:
        if self.mode == "redirect-directory-foreign":
            raise Reply(302, None, {"Location": self.canary_base + "/dir"})
        if self.mode == "redirect-directory-file":
            raise Reply(302, None, {"Location": "file:///etc/passwd"})
        if self.mode == "redirect-directory-local":
            raise Reply(302, None, {"Location": "/dir2"})
        tos = f"https://example.com/tos{EVIL}" if self.mode == "evil-tos" else "https://example.com/tos"
        return 200, {
            "newNonce": self.url("directory-newNonce", "/nonce"),
            "newAccount": self.base + "/new-acct",
            "newOrder": self.url("directory-newOrder", "/new-order"),
            "revokeCert": self.base + "/revoke",
            "meta": {"termsOfService": tos},
        }, "application/json", {}

    def verify(self, path: str, body: bytes) -> tuple[dict, Any, str | None]:
        """RFC 8555 6.2-6.4: flattened JWS, good signature, fresh nonce, matching url."""
        try:
            obj = json.loads(body)
            header = json.loads(jws.b64u_decode(obj["protected"]))
            payload_raw = jws.b64u_decode(obj["payload"])
            signature = jws.b64u_decode(obj["signature"])
        except (ValueError, KeyError, TypeError):
            raise problem(400, "malformed", "not a flattened JWS") from None
        nonce = header.get("nonce")
        with self.lock:
            fresh = nonce in self.nonces
            self.nonces.discard(nonce)
        reject = self.mode == "bad-nonce-storm" or (
            self.mode == "bad-nonce-once" and not getattr(self, "_rejected_once", False))
        if not fresh or reject:
            self._rejected_once = True
            raise problem(400, "badNonce", "JWS has an invalid anti-replay nonce")
        self._rejected_once = False
        if header.get("url") != self.base + path:
            raise problem(401, "unauthorized", "url mismatch")
        kid = header.get("kid")
        key = jwk_keys.public_key_from_jwk(header["jwk"]) if "jwk" in header else self.accounts.get(kid)
        if key is None:
            raise problem(400, "accountDoesNotExist", "unknown kid")
        signing_input = f"{obj['protected']}.{obj['payload']}".encode()
        if not jwk_keys.verify(key, header.get("alg"), signing_input, signature):
            raise problem(400, "malformed", "bad signature")
        payload = json.loads(payload_raw) if payload_raw else None
        return header, payload, kid

    def new_account(self, header: dict, payload: dict, headers: dict[str, str]) -> tuple:
        if "jwk" not in header:
            raise problem(400, "malformed", "newAccount needs jwk")
        thumb = jws.jwk_thumbprint(header["jwk"])
        with self.lock:
            kid = self.thumbs.get(thumb)
            created = kid is None
            if created and (payload or {}).get("onlyReturnExisting"):
                raise problem(400, "accountDoesNotExist", "no account for this key")
            if created:
                kid = self.base + f"/acct/{next(self.ids)}"
                self.thumbs[thumb] = kid
                self.accounts[kid] = jwk_keys.public_key_from_jwk(header["jwk"])
                self.account_bodies[kid] = {"status": "valid", "contact": (payload or {}).get("contact", [])}
        location = self.url("account", kid[len(self.base):])
        return 201 if created else 200, self.account_bodies[kid], "application/json", {
            **headers, "Location": location}

    def post_account(self, kid: str | None, ident: str, payload: Any, headers: dict) -> tuple:
        body = self.account_bodies[kid]
        if isinstance(payload, dict):
            body.update({k: v for k, v in payload.items() if k in ("contact", "status")})
        return 200, body, "application/json", headers

    def order_json(self, order: Order) -> dict:
        mode = self.order_mode(order)
        obj: dict[str, Any] = {
            "status": order.status,
            "identifiers": order.identifiers,
            "authorizations": [self.url("authz", f"/authz/{a}", mode) for a in order.authz],
            "finalize": self.url("finalize", f"/finalize/{order.id}", mode),
        }
        if mode == "many-authz":
            obj["authorizations"] = [self.base + f"/authz/x{i}" for i in range(1000)]
        if order.cert:
            obj["certificate"] = self.url("certificate", f"/cert/{order.cert}", mode)
        return obj

    def new_order(self, kid: str | None, ident: str, payload: Any, headers: dict) -> tuple:
        mode = self.identifiers_mode(payload["identifiers"])
        if mode == "evil-problem":
            raise problem(403, "rejectedIdentifier", f"no certificate for you{EVIL}")
        if mode == "rate-limited":  # RFC 8555 6.6: 429 with Retry-After
            raise Reply(429, {"type": ERR + "rateLimited", "status": 429,
                              "detail": "too many failed authorizations recently"},
                        {**headers, "Retry-After": str(RATE_LIMIT_RETRY_AFTER)})
        if mode == "problem-odd-types":
            raise Reply(400, {"type": 42, "detail": ["a", {"b": None}], "status": "x",
                              "subproblems": [1, None, {"identifier": 7}]})
        identifiers = payload["identifiers"]
        oid = str(next(self.ids))
        authz = []
        for i in identifiers:
            aid = str(next(self.ids))
            value = f"ev{EVIL}il.example.com" if mode == "evil-identifier" else i["value"]
            self.authzs[aid] = Authz(aid, oid, {"type": "dns", "value": value}, secrets.token_urlsafe(32))
            authz.append(aid)
        if mode == "extra-authz":
            aid = str(next(self.ids))
            self.authzs[aid] = Authz(aid, oid, {"type": "dns", "value": "victim.example.net"},
                                     secrets.token_urlsafe(32))
            authz.append(aid)
        order = self.orders[oid] = Order(oid, kid or "", identifiers, authz)
        return 201, self.order_json(order), "application/json", {
            **headers, "Location": self.url("order", f"/order/{oid}", self.order_mode(order))}

    def get_order(self, kid: str | None, ident: str, payload: Any, headers: dict) -> tuple:
        order = self.orders.get(ident)
        if order is None:
            raise problem(404, "malformed", "no such order")
        order.polls += 1
        mode = self.order_mode(order)
        if mode == "big-json":
            headers["X-Hostile"] = "big"
        elif mode == "big-json-chunked":
            headers["X-Hostile"] = "chunked"
        elif mode == "deep-json":
            return 200, b"[" * 5000 + b"]" * 5000, "application/json", headers
        elif mode == "garbage-json":
            return 200, b"\xff\xfe{\x1b[2J not json", "application/json", headers
        elif mode == "slow-drip":
            headers["X-Hostile"] = "drip"
        elif mode == "stall-after-headers":
            headers["X-Hostile"] = "stall"
        elif mode == "slow-headers":
            self.drip_headers(headers)
        elif mode == "gzip-bomb":
            return 200, self.gzip_bomb(), "application/json", {**headers, "Content-Encoding": "gzip"}
        elif mode == "processing-retry-after-0" and order.status in ("processing", "valid"):
            order.status = "processing"
            headers["Retry-After"] = "0"
        elif mode == "retry-after-huge" and order.status == "pending":
            headers["Retry-After"] = "86400"
        elif mode == "retry-after-date" and order.status == "processing":
            when = getattr(order, "ready_at", None)
            if when is None:
                order.ready_at = when = time.time() + 2  # type: ignore[attr-defined]
            if time.time() < when:
                headers["Retry-After"] = email.utils.formatdate(when + 1, usegmt=True)
            else:
                order.status = "valid"
        return 200, self.order_json(order), "application/json", headers

    def drip_headers(self, headers: dict) -> None:
        headers["X-Padding"] = "x" * 200
        headers["X-Hostile"] = "drip-head"

    @staticmethod
    def gzip_bomb() -> bytes:
        import gzip

        return gzip.compress(b" " * (64 * 1024 * 1024), compresslevel=9)

    def authz_json(self, a: Authz) -> dict:
        mode = self.order_mode(self.orders[a.order])
        challenge = {"type": "http-01", "url": self.url("challenge", f"/chall/{a.id}", mode),
                     "token": a.token, "status": "valid" if a.status == "valid" else "pending"}
        if a.error:
            challenge["error"] = a.error
        return {"status": a.status, "identifier": a.identifier, "challenges": [challenge]}

    def get_authz(self, kid: str | None, ident: str, payload: Any, headers: dict) -> tuple:
        a = self.authzs.get(ident)
        if a is None:
            raise problem(404, "malformed", "no such authorization")
        return 200, self.authz_json(a), "application/json", headers

    def post_challenge(self, kid: str | None, ident: str, payload: Any, headers: dict) -> tuple:
        a = self.authzs[ident]
        mode = self.order_mode(self.orders[a.order])
        if mode not in ("pending-forever", "retry-after-huge") and a.status == "pending":
            self.validate(a, kid)
        challenge = self.authz_json(a)["challenges"][0]
        return 200, challenge, "application/json", headers

    def validate(self, a: Authz, kid: str | None) -> None:
        """http-01 (RFC 8555 8.3): GET the token from the lacme webserver, Host: the name."""
        thumb = jws.jwk_thumbprint(jwk_keys.public_jwk(self.accounts[kid]))
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=5)
            conn.request("GET", f"/.well-known/acme-challenge/{a.token}",
                         headers={"Host": a.identifier["value"]})
            response = conn.getresponse()
            ok = response.status == 200 and response.read().strip() == f"{a.token}.{thumb}".encode()
            conn.close()
        except OSError:
            ok = False
        a.status = "valid" if ok else "invalid"
        if not ok:
            a.error = {"type": ERR + "unauthorized", "detail": "wrong key authorization", "status": 403}
        order = self.orders[a.order]
        states = {self.authzs[x].status for x in order.authz}
        if "invalid" in states:
            order.status = "invalid"
        elif states == {"valid"}:
            order.status = "ready"

    def finalize(self, kid: str | None, ident: str, payload: Any, headers: dict) -> tuple:
        order = self.orders[ident]
        mode = self.order_mode(order)
        if mode == "redirect-post-finalize":
            raise Reply(307, None, {**headers, "Location": self.canary_base + f"/finalize/{ident}"})
        if order.status != "ready":
            raise problem(403, "orderNotReady", f"order is {order.status}")
        csr = x509.load_der_x509_csr(jws.b64u_decode(payload["csr"]))
        cid = str(next(self.ids))
        self.certs[cid] = self.issue(csr, [i["value"] for i in order.identifiers], mode)
        order.cert = cid
        order.status = "processing" if mode in (
            "processing-retry-after-0", "retry-after-date") else "valid"
        if mode == "processing-retry-after-0":
            order.cert = None
        return 200, self.order_json(order), "application/json", {
            **headers, "Location": self.base + f"/order/{order.id}"}

    def issue(self, csr: x509.CertificateSigningRequest, names: list[str], mode: str) -> bytes:
        """The PEM chain for ``csr``: correct, or wrong the way ``mode`` says."""
        key = csr.public_key()
        if mode == "cert-wrong-key":
            key = ec.generate_private_key(ec.SECP256R1()).public_key()
        if mode == "cert-extra-name":
            names = names + ["evil.example.org"]
        if mode == "cert-missing-name":
            names = names[:-1]
        begin, end = now() - datetime.timedelta(hours=1), now() + datetime.timedelta(days=90)
        if mode == "cert-expired":
            begin, end = now() - datetime.timedelta(days=90), now() - datetime.timedelta(days=1)
        if mode == "cert-not-yet-valid":
            begin, end = now() + datetime.timedelta(days=1), now() + datetime.timedelta(days=90)
        issuer_key, issuer = (self.other_key, self.other) if mode == "cert-wrong-issuer" \
            else (self.inter_key, self.inter)
        leaf = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(issuer.subject)
            .public_key(key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(begin)
            .not_valid_after(end)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
                           critical=False)
            .sign(issuer_key, hashes.SHA256())
        )
        chain = pem(leaf) + pem(self.other if mode == "cert-wrong-issuer" else self.inter)
        if mode == "cert-unrelated-in-chain":
            chain += pem(self.other)
        if mode == "cert-chain-too-long":
            chain = pem(leaf) + pem(self.inter) * 30
        if mode == "cert-garbage":
            chain = b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n"
        if mode == "cert-private-key-block":
            chain = pem(leaf) + ec.generate_private_key(ec.SECP256R1()).private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption())
        if mode == "cert-html":
            chain = b"<html><body>" + pem(leaf) + b"<script>alert(1)</script></body></html>"
        return chain

    def get_cert(self, kid: str | None, ident: str, payload: Any, headers: dict) -> tuple:
        if self.mode == "big-chain":
            headers["X-Hostile"] = "big"
        return 200, self.certs[ident], "application/pem-certificate-chain", headers

    def revoke(self, kid: str | None, ident: str, payload: Any, headers: dict) -> tuple:
        return 200, None, None, headers
