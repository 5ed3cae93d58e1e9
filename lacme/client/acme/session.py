"""One RFC 8555 (ACME) session: the only lacme module that speaks HTTP.

Run inside the unprivileged ACME client (``lacme-client``); it never sees a
private key: every JWS is signed by a ``Signer`` (the accountd connection).
Implements RFC 8555 sections 6.1 (HTTPS, User-Agent, Accept-Language),
6.2 (flattened JWS with ``kid`` or ``jwk``), 6.3 (POST-as-GET), 6.5 (nonces
and ``badNonce`` retries), 6.7 (problem documents, RFC 7807), 7.1.1
(directory), 7.3 (accounts), 7.4 (orders, finalization, download, polling
with Retry-After, RFC 9110 10.2.3) and 7.6 (revocation).

Thread-safe: the client drives all orders of a run concurrently over one
session (one connection pool, one nonce pool, one directory, one account).
Every request is bounded by the session's deadline.
"""

from __future__ import annotations

import _socket
import contextlib
import email.utils
import json
import logging
import socket
import ssl
import threading
import time
import urllib.parse
import weakref
from typing import Any, Iterable, Protocol

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.util.ssl_ import create_urllib3_context

from lacme import __version__
from lacme.core.errors import AcmeError
from lacme.core.log import VERBOSE
from lacme.core.record import Record
from lacme.protocol import jws

log = logging.getLogger("lacme-client")

ERROR_NS = "urn:ietf:params:acme:error:"
BAD_NONCE = ERROR_NS + "badNonce"
# RFC 8555 6.5 lets the client retry a badNonce with the nonce that came
# with the error.  A real CA rejects a nonce rarely; test CAs (Pebble's
# PEBBLE_WFE_NONCEREJECT=50) reject half of them at random: 12 retries make
# a spurious failure a 1 in 8192 event per request.  A storm (every nonce
# rejected) is cut sooner across the session: BAD_NONCE_STORM rejections in
# a row, whichever requests they answered, end every request of the run.
MAX_BAD_NONCE_RETRIES = 12
BAD_NONCE_STORM = 16
# Concurrent orders share one nonce pool; every answer brings a nonce back
# (RFC 8555 7.2).  With one nonce in circulation only one POST is ever in
# flight, and the run goes at the CA's round-trip time; so while fewer than
# NONCES_IN_FLIGHT POSTs are in flight and the pool is empty, a HEAD
# newNonce puts one more in circulation (a run with several orders fetches
# at most this many nonces in all).  Beyond that a POST waits for an
# answer's nonce: within one round trip, or NONCE_WAIT at most.
NONCES_IN_FLIGHT = 4
NONCE_WAIT = 1.0
POLL_FIRST = 0.05  # first poll of an order this soon after the last step
POLL_FACTOR = 1.5
POLL_MAX = 2.0
POLL_FLOOR = 0.05  # never poll more often than this, whatever Retry-After says
RETRY_AFTER_MIN = 1.0  # a server's Retry-After below this (0 included) is raised to it
DETAIL_LIMIT = 300  # characters of server text kept in one error line
# Bounds on what the server may send (memory stays far below 100 MB).
MAX_JSON_BYTES = 128 * 1024  # a directory, account, order, authorization or problem
MAX_CHAIN_BYTES = 512 * 1024  # a PEM certificate chain (it must fit a control message)
MAX_JSON_DEPTH = 32  # nesting of arrays and objects
MAX_GET_REDIRECTS = 3  # GET redirects followed, and only within the server's origin
READ_CHUNK = 64 * 1024
JSON_TYPES = ("application/json", "application/problem+json")
PEM_CHAIN = "application/pem-certificate-chain"

# SSL_version values in the spelling of IO::Socket::SSL / OpenSSL.
_TLS_VERSIONS = {
    "tlsv1": ssl.TLSVersion.TLSv1,
    "tlsv1_1": ssl.TLSVersion.TLSv1_1,
    "tlsv1_2": ssl.TLSVersion.TLSv1_2,
    "tlsv1_3": ssl.TLSVersion.TLSv1_3,
}
_TLS_ANY = frozenset({"sslv23", "tls", "any", "default"})
_TLS_NEVER = frozenset({"sslv2", "sslv3"})  # never enabled: excluding them is a no-op


class Signer(Protocol):
    """Signs JWS signing inputs with the account key (or a certificate key)."""

    alg: str
    jwk: dict
    thumbprint: str
    kid: str | None

    def sign(self, signing_input: bytes) -> bytes:
        """The raw JWS signature; must be safe to call from several threads."""
        ...


class Problem(Record):
    """An RFC 7807 problem document as ACME uses it (RFC 8555 6.7)."""

    type: str
    detail: str
    status: int
    subproblems: tuple["Problem", ...] = ()
    identifier: str = ""

    @classmethod
    def from_json(cls, obj: Any, status: int = 0) -> "Problem":
        """Build from a decoded problem document; tolerant of missing members."""
        if not isinstance(obj, dict):
            return cls(type="", detail="", status=status)
        subs = obj.get("subproblems")
        ident = obj.get("identifier")
        return cls(
            type=_text(obj.get("type")),
            detail=_text(obj.get("detail")),
            status=obj["status"] if isinstance(obj.get("status"), int) else status,
            subproblems=tuple(cls.from_json(s, status) for s in subs) if isinstance(subs, list) else (),
            identifier=_identifier_text(ident) if isinstance(ident, dict) else "",
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

    def __init__(self, url: str, problem: Problem) -> None:
        super().__init__(f"{escape_text(url, 200)}: {problem}")
        self.url = url
        self.problem = problem


class Account(Record):
    """An account as newAccount returns it (RFC 8555 7.3)."""

    url: str
    body: dict
    created: bool  # 201: a new account; 200: the key was already registered


def escape_text(text: Any, limit: int = DETAIL_LIMIT) -> str:
    """Server-provided text made safe for one log line: no control characters.

    C0, DEL, C1 and the Unicode line/paragraph separators become \\xNN or
    \\uNNNN; the result is cut at ``limit`` characters.
    """
    text = str(text)
    if text.isprintable() and "\\" not in text:  # nothing to escape (the usual case)
        return text if len(text) <= limit else text[:limit] + "..."
    out = []
    for ch in text[:limit]:
        code = ord(ch)
        if code < 0x20 or 0x7F <= code < 0xA0:
            out.append(f"\\x{code:02x}")
        elif code in (0x2028, 0x2029) or ch == "\\":
            out.append("\\\\" if ch == "\\" else f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out) + ("..." if len(text) > limit else "")


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _identifier_text(ident: dict) -> str:
    return escape_text(f"{_text(ident.get('type'))}:{_text(ident.get('value'))}", 120)


def origin_of(url: Any) -> str:
    """``https://host[:port]`` of an absolute https URL (RFC 6454 origin).

    ValueError for anything else: another scheme (plain http included),
    user information, control characters or spaces, a bad port.
    """
    # printable ASCII without space: 0x21-0x7E
    if not isinstance(url, str) or not url or not (url.isascii() and url.isprintable()) \
            or " " in url:
        raise ValueError("not a printable ASCII URL")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme.lower() != "https" or not parts.hostname:
        raise ValueError("not an https URL")
    if "@" in parts.netloc:
        raise ValueError("user information in the URL")
    port = parts.port  # ValueError when not a number in range
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"https://{host}" if port in (None, 443) else f"https://{host}:{port}"


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


class _Watchdog:
    """Shuts down every TLS socket of a session at its deadline (or when cancelled).

    Socket timeouts bound each read, not their sum: a server sending one
    byte a second would hold a read for ever.  shutdown(2) from this timer
    thread ends any read or handshake in progress at once.
    """

    def __init__(self, deadline: float) -> None:
        self._sockets: weakref.WeakSet[ssl.SSLSocket] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._expired = False
        self._timer = threading.Timer(max(0.0, deadline - time.monotonic()), self.expire)
        self._timer.daemon = True
        self._timer.start()

    def socket_class(self) -> type[ssl.SSLSocket]:
        watchdog = self

        class _WatchedSSLSocket(ssl.SSLSocket):
            def do_handshake(self, block: bool = False) -> None:
                watchdog.watch(self)
                super().do_handshake(block)

        return _WatchedSSLSocket

    def watch(self, sock: ssl.SSLSocket) -> None:
        with self._lock:
            self._sockets.add(sock)
            expired = self._expired
        if expired:
            _shutdown_socket(sock)

    def expire(self) -> None:
        with self._lock:
            self._expired = True
            sockets = list(self._sockets)
        for sock in sockets:
            _shutdown_socket(sock)

    def stop(self) -> None:
        self._timer.cancel()


def _shutdown_socket(sock: socket.socket) -> None:
    try:  # the descriptor's shutdown(2), not SSLSocket's (which unwraps TLS)
        _socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except (OSError, ValueError):
        pass


def tls_version_range(spec: str) -> tuple[ssl.TLSVersion | None, ssl.TLSVersion | None]:
    """(minimum, maximum) TLS versions for an ``SSL_version`` value.

    Accepted, case-insensitive, as IO::Socket::SSL spells them: one version
    ``TLSv1``, ``TLSv1_1``, ``TLSv1_2``, ``TLSv1_3`` (also ``TLSv1.2`` or
    ``TLSv12``) pins exactly that version; ``SSLv23``, ``TLS``, ``any`` or
    ``default`` leave the library's range; a colon-separated base with
    ``!`` exclusions, e.g. ``SSLv23:!TLSv1:!TLSv1_1``, allows what remains
    (which must be contiguous).  ``SSLv2``/``SSLv3`` may only be excluded.
    Anything else raises ValueError.
    """
    parts = [p.strip() for p in spec.split(":") if p.strip()]
    if not parts:
        raise ValueError(f"SSL_version: empty value {spec!r}")
    base, exclusions = parts[0], parts[1:]
    if any(not p.startswith("!") for p in exclusions):
        raise ValueError(f"SSL_version: {spec!r}: only the first item may name a version")
    if base.startswith("!"):
        exclusions.insert(0, base)
        base = "SSLv23"
    if _normal_version(base) in _TLS_VERSIONS:
        if exclusions:
            raise ValueError(f"SSL_version: {spec!r}: exclusions need SSLv23 as the base")
        version = _TLS_VERSIONS[_normal_version(base)]
        return version, version
    if _normal_version(base) not in _TLS_ANY:
        raise ValueError(f"SSL_version: unknown version {base!r}")
    if not exclusions:
        return None, None
    allowed = dict(_TLS_VERSIONS)
    for item in exclusions:
        name = _normal_version(item[1:])
        if name in _TLS_NEVER:
            continue
        if name not in _TLS_VERSIONS:
            raise ValueError(f"SSL_version: unknown version {item[1:]!r}")
        allowed.pop(name, None)
    order = list(_TLS_VERSIONS)
    kept = [order.index(name) for name in allowed]
    if not kept:
        raise ValueError(f"SSL_version: {spec!r} excludes every version")
    if kept != list(range(kept[0], kept[-1] + 1)):
        raise ValueError(f"SSL_version: {spec!r} leaves a gap between versions")
    return _TLS_VERSIONS[order[kept[0]]], _TLS_VERSIONS[order[kept[-1]]]


def _normal_version(name: str) -> str:
    name = name.lower().replace(".", "_")
    if name in ("tlsv11", "tlsv12", "tlsv13"):
        name = name[:5] + "_" + name[5:]
    return name


def make_ssl_context(
    *, verify: bool | str, ssl_version: str | None, ssl_cipher_list: str | None
) -> ssl.SSLContext:
    """The TLS context for SSL_version / SSL_cipher_list (ValueError if invalid).

    Trust anchors are not loaded here: requests hands the CA file (its
    default bundle, or SSL_ca_file) to every new connection.
    """
    low, high = tls_version_range(ssl_version) if ssl_version else (None, None)
    try:
        return create_urllib3_context(
            cert_reqs=ssl.CERT_REQUIRED if verify else ssl.CERT_NONE,
            ciphers=ssl_cipher_list,
            ssl_minimum_version=low,
            ssl_maximum_version=high,
        )
    except ssl.SSLError as exc:
        raise ValueError(f"SSL_cipher_list: {ssl_cipher_list!r}: {exc}") from None


class _RefusingAdapter(HTTPAdapter):
    """Mounted for http://: plain HTTP is never used."""

    def send(self, request: Any, *args: Any, **kwargs: Any) -> Any:
        raise requests.exceptions.InvalidURL("plain http refused")


class _TLSAdapter(HTTPAdapter):
    """An HTTPAdapter whose connections use one given SSLContext."""

    def __init__(self, context: ssl.SSLContext, **kwargs: Any) -> None:
        self._context = context
        super().__init__(**kwargs)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["ssl_context"] = self._context
        super().init_poolmanager(*args, **kwargs)

    def proxy_manager_for(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["ssl_context"] = self._context
        return super().proxy_manager_for(*args, **kwargs)


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


def describe_exception(exc: BaseException) -> str:
    """A short reason for a transport failure, from the deepest OSError."""
    if isinstance(exc, requests.Timeout):
        return "timed out"
    seen: set[int] = set()
    best: BaseException | None = None
    todo: list[Any] = [exc]
    while todo:
        cur = todo.pop()
        if not isinstance(cur, BaseException) or id(cur) in seen:
            continue
        seen.add(id(cur))
        if isinstance(cur, ssl.SSLError):
            return f"TLS error: {escape_text(cur.reason or cur, 200)}"
        if isinstance(cur, OSError) and cur.strerror:
            best = cur
        todo.extend([cur.__cause__, cur.__context__, getattr(cur, "reason", None), *cur.args])
    if best is not None:
        return escape_text(best.strerror, 200)
    return escape_text(str(exc) or type(exc).__name__, 200)


class AcmeSession:
    """Directory, nonces and signed requests towards one ACME server."""

    def __init__(
        self,
        directory_url: str,
        signer: Signer,
        *,
        deadline: float,
        verify: bool | str = True,
        ssl_version: str | None = None,
        ssl_cipher_list: str | None = None,
        user_agent: str = f"lacme/{__version__}",
        pool_size: int = 10,
    ) -> None:
        try:
            self.origin = origin_of(directory_url)
        except ValueError as exc:
            raise ValueError(f"server: {escape_text(directory_url, 200)}: {exc}") from None
        self.directory_url = directory_url
        self.signer = signer
        self.deadline = deadline  # time.monotonic() based
        self.kid: str | None = signer.kid
        self._watchdog = _Watchdog(deadline)
        try:
            self._http = self._make_http(verify, ssl_version, ssl_cipher_list, user_agent, pool_size,
                                         self._watchdog.socket_class())
        except BaseException:
            self._watchdog.stop()
            raise
        self._budget = threading.local()  # requests left to the calling thread's order
        self._bad_nonce_run = 0  # badNonce answers in a row, session-wide
        self._directory: dict | None = None
        self._directory_lock = threading.Lock()
        self._account_lock = threading.Lock()
        self._nonces: list[str] = []
        self._in_flight = 0
        self._nonce_cond = threading.Condition()
        self._cancelled = threading.Event()

    @staticmethod
    def _make_http(
        verify: bool | str, ssl_version: str | None, ssl_cipher_list: str | None,
        user_agent: str, pool_size: int, socket_class: type[ssl.SSLSocket],
    ) -> requests.Session:
        http = requests.Session()
        http.trust_env = False  # no proxies, .netrc or CA bundle from the environment
        http.verify = verify
        if verify is False:  # SSL_verify = No was asked for: no warning per request
            urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
        # identity: a compressed body could inflate past every size bound
        http.headers.update({"User-Agent": user_agent, "Accept-Language": "en",
                             "Accept-Encoding": "identity"})
        size = max(1, pool_size)
        context = make_ssl_context(verify=verify, ssl_version=ssl_version,
                                   ssl_cipher_list=ssl_cipher_list)
        context.sslsocket_class = socket_class
        http.mount("https://", _TLSAdapter(context, pool_maxsize=size))
        http.mount("http://", _RefusingAdapter())  # every URL is checked before; a second wall
        return http

    # -- lifetime ------------------------------------------------------------

    def remaining(self) -> float:
        """Seconds left before the deadline (may be negative)."""
        return self.deadline - time.monotonic()

    def cancel(self) -> None:
        """Make every pending and future request or poll fail at once."""
        self._cancelled.set()
        self._watchdog.expire()
        with self._nonce_cond:
            self._nonce_cond.notify_all()

    def close(self) -> None:
        self._watchdog.stop()
        self._http.close()

    @contextlib.contextmanager
    def request_budget(self, limit: int) -> Any:
        """Bound the HTTP requests the calling thread makes in the block (one order)."""
        self._budget.left = limit
        self._budget.limit = limit
        try:
            yield
        finally:
            self._budget.left = None

    def _spend_request(self, url: str) -> None:
        left = getattr(self._budget, "left", None)
        if left is None:
            return
        if left <= 0:
            raise AcmeError(f"{escape_text(url, 200)}: more than {self._budget.limit} requests "
                            f"for one order, giving up")
        self._budget.left = left - 1

    def check_url(self, url: Any, what: str = "URL") -> str:
        """``url`` if it lies on the directory's origin (https, same host and port).

        Every URL the server hands out goes through here before it is used.
        """
        try:
            if origin_of(url) == self.origin:
                return url
            reason = f"not on the ACME server's origin {self.origin}"
        except ValueError as exc:
            reason = str(exc)
        raise AcmeError(f"{escape_text(self.directory_url, 200)}: {what} {escape_text(repr(url), 200)} "
                        f"refused: {reason}")

    def _check_time(self, url: str) -> float:
        if self._cancelled.is_set():
            raise AcmeError(f"{escape_text(url, 200)}: cancelled")
        left = self.remaining()
        if left <= 0:
            raise AcmeError(f"{escape_text(url, 200)}: timed out (client timeout reached)")
        return left

    # -- HTTP ------------------------------------------------------------------

    def _send(self, method: str, url: str, *, pool_nonce: bool = True,
              limit: int = MAX_JSON_BYTES, **kwargs: Any) -> requests.Response:
        """One HTTP request bounded by the deadline and ``limit`` body octets.

        Only URLs on the server's origin; redirects are never followed here.
        Pools the response's Replay-Nonce.
        """
        self.check_url(url)
        left = self._check_time(url)
        self._spend_request(url)
        log.debug("%s %s", method, escape_text(url))
        try:
            response = self._http.request(method, url, timeout=left, allow_redirects=False,
                                          stream=True, **kwargs)
            try:
                self._read_body(response, url, limit)
            finally:
                response.close()
        except (OSError, urllib3.exceptions.HTTPError) as exc:  # requests' exceptions, a missing CA file
            if self._cancelled.is_set():
                raise AcmeError(f"{escape_text(url, 200)}: cancelled") from None
            if self.remaining() <= 0:
                raise AcmeError(f"{escape_text(url, 200)}: timed out (client timeout reached)") from None
            raise AcmeError(f"{escape_text(url, 200)}: {describe_exception(exc)}") from None
        nonce = response.headers.get("Replay-Nonce")
        if nonce and pool_nonce:
            with self._nonce_cond:
                self._nonces.append(nonce)
                self._nonce_cond.notify()
        log.log(VERBOSE, "%s %s -> %d", method, escape_text(url), response.status_code)
        return response

    def _read_body(self, response: requests.Response, url: str, limit: int) -> None:
        """Read the body into ``response`` (``.content``), refusing more than ``limit`` octets."""
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > limit:
            raise AcmeError(f"{escape_text(url, 200)}: {response.status_code} with a body of "
                            f"{int(declared)} octets, over the limit of {limit}")
        chunks: list[bytes] = []
        size = 0
        while True:
            self._check_time(url)
            chunk = response.raw.read(READ_CHUNK, decode_content=False)
            if not chunk:
                break
            size += len(chunk)
            if size > limit:
                raise AcmeError(f"{escape_text(url, 200)}: {response.status_code} with a body "
                                f"over the limit of {limit} octets")
            chunks.append(chunk)
        response._content = b"".join(chunks)  # what requests' .content returns
        response._content_consumed = True

    def _take_nonce(self, url: str) -> str:
        """A fresh nonce: from the pool, from a response in flight, or HEAD newNonce.

        The caller is counted as in flight from here until its POST is answered.
        """
        give_up = time.monotonic() + NONCE_WAIT
        with self._nonce_cond:
            while not self._nonces and self._in_flight >= NONCES_IN_FLIGHT \
                    and not self._cancelled.is_set():
                wait = min(give_up - time.monotonic(), self.remaining())
                if wait <= 0:
                    break
                self._nonce_cond.wait(wait)
            self._in_flight += 1
            if self._nonces:
                return self._nonces.pop()
        try:
            return self._fetch_nonce(url)
        except BaseException:
            self._release_slot()
            raise

    def _release_slot(self) -> None:
        """The caller's POST is answered (or abandoned): its nonce is no longer awaited."""
        with self._nonce_cond:
            self._in_flight -= 1
            self._nonce_cond.notify_all()

    def _fetch_nonce(self, url: str) -> str:
        """HEAD newNonce (RFC 8555 7.2); the nonce goes straight to the caller."""
        nonce_url = self.resource("newNonce")
        response = self._send("HEAD", nonce_url, pool_nonce=False)
        nonce = response.headers.get("Replay-Nonce")
        if response.status_code not in (200, 204) or not nonce:
            raise AcmeError(f"{escape_text(nonce_url, 200)}: {response.status_code}, no Replay-Nonce")
        return nonce

    def _get(self, url: str) -> requests.Response:
        """An unsigned GET; redirects followed, a few, and only within the origin."""
        for _ in range(MAX_GET_REDIRECTS + 1):
            response = self._send("GET", url)
            if response.status_code not in (301, 302, 303, 307, 308):
                return response
            target = urllib.parse.urljoin(url, response.headers.get("Location", ""))
            self.check_url(target, f"redirect from {escape_text(url, 200)} to")
            url = target
        raise AcmeError(f"{escape_text(url, 200)}: more than {MAX_GET_REDIRECTS} redirects")

    def directory(self) -> dict:
        """The directory object (RFC 8555 7.1.1), fetched once per session."""
        with self._directory_lock:
            if self._directory is None:
                response = self._get(self.directory_url)
                body = self._decode(response, self.directory_url)
                if not isinstance(body, dict):
                    raise AcmeError(f"{escape_text(self.directory_url, 200)}: directory is not a JSON object")
                self._directory = body
            return self._directory

    def resource(self, name: str) -> str:
        url = self.directory().get(name)
        if not isinstance(url, str) or not url:
            raise AcmeError(f"{escape_text(self.directory_url, 200)}: no {name!r} resource in the directory")
        return self.check_url(url, f"directory {name}")

    def terms_of_service(self) -> str | None:
        meta = self.directory().get("meta")
        tos = meta.get("termsOfService") if isinstance(meta, dict) else None
        return tos if isinstance(tos, str) else None

    @staticmethod
    def _problem(response: requests.Response) -> Problem:
        content_type = response.headers.get("Content-Type", "").split(";")[0].strip()
        if content_type in JSON_TYPES:
            try:
                return Problem.from_json(parse_json(response.content), response.status_code)
            except ValueError:
                pass
        if 300 <= response.status_code < 400:
            location = escape_text(response.headers.get("Location", ""), 200)
            return Problem(type="", detail=f"redirect to {location} not followed",
                           status=response.status_code)
        return Problem(type="", detail=response.reason or "", status=response.status_code)

    def _decode(self, response: requests.Response, url: str) -> Any:
        """The JSON body of a successful response, or AcmeProblemError."""
        if not 200 <= response.status_code < 300:
            raise AcmeProblemError(url, self._problem(response))
        if not response.content:
            return {}
        content_type = response.headers.get("Content-Type", "").split(";")[0].strip()
        if content_type not in JSON_TYPES:
            raise AcmeError(f"{escape_text(url, 200)}: {response.status_code} with "
                            f"Content-Type {escape_text(content_type, 80)!s}, not JSON")
        try:
            return parse_json(response.content)
        except ValueError as exc:
            raise AcmeError(f"{escape_text(url, 200)}: {response.status_code} with malformed JSON "
                            f"({escape_text(exc, 100)})") from None

    # -- signed requests (RFC 8555 6.2, 6.3, 6.5) ------------------------------

    def post(
        self, url: str, payload: dict | None, *, use_jwk: bool = False,
        accept: str | None = None, limit: int = MAX_JSON_BYTES,
    ) -> requests.Response:
        """A JWS-signed POST; ``payload`` None is POST-as-GET.  Retries badNonce.

        Signed with ``kid`` unless ``use_jwk`` (newAccount, revokeCert with the
        certificate key), and only for a URL on the server's origin.  Never
        follows a redirect.  Returns the successful response; raises
        AcmeProblemError for any error answer.
        """
        headers = {"Content-Type": "application/jose+json"}
        if accept:
            headers["Accept"] = accept
        self.check_url(url)  # before anything is signed
        self._check_signer(url, use_jwk)
        for attempt in range(MAX_BAD_NONCE_RETRIES + 1):
            nonce = self._take_nonce(url)
            try:
                body = self._sign(url, payload, use_jwk, nonce)
                response = self._send("POST", url, data=json.dumps(body), headers=headers, limit=limit)
            finally:
                self._release_slot()
            if 200 <= response.status_code < 300:
                self._count_bad_nonce(False)
                return response
            problem = self._problem(response)
            if problem.type != BAD_NONCE:
                self._count_bad_nonce(False)
                raise AcmeProblemError(url, problem)
            in_a_row = self._count_bad_nonce(True)
            if in_a_row >= BAD_NONCE_STORM or attempt == MAX_BAD_NONCE_RETRIES:
                raise AcmeError(f"{escape_text(url, 200)}: {max(in_a_row, attempt + 1)} badNonce "
                                f"answers in a row, giving up ({problem})")
            log.debug("%s: badNonce, retrying with a fresh nonce", escape_text(url))
        raise AssertionError("unreachable")

    def _count_bad_nonce(self, rejected: bool) -> int:
        """Track badNonce answers in a row across the session; returns the run length."""
        with self._nonce_cond:
            self._bad_nonce_run = self._bad_nonce_run + 1 if rejected else 0
            return self._bad_nonce_run

    def _check_signer(self, url: str, use_jwk: bool) -> None:
        if not use_jwk and not self.kid:
            raise AcmeError(f"{escape_text(url, 200)}: no account URL (kid) to sign with")
        if use_jwk and not self.signer.jwk:
            raise AcmeError(f"{escape_text(url, 200)}: accountd serves a key id and no JWK")

    def _sign(self, url: str, payload: dict | None, use_jwk: bool, nonce: str) -> dict:
        protected: dict[str, Any] = {"alg": self.signer.alg, "nonce": nonce, "url": url}
        if use_jwk:
            protected["jwk"] = self.signer.jwk
        else:
            protected["kid"] = self.kid
        text = jws.signing_input(protected, payload)
        return jws.flattened(text, self.signer.sign(text.encode("ascii")))

    def post_json(self, url: str, payload: dict | None, *, use_jwk: bool = False) -> tuple[requests.Response, Any]:
        response = self.post(url, payload, use_jwk=use_jwk)
        return response, self._decode(response, url)

    def get(self, url: str) -> dict:
        """POST-as-GET (RFC 8555 6.3) of a JSON resource."""
        _response, body = self.post_json(url, None)
        if not isinstance(body, dict):
            raise AcmeError(f"{escape_text(url, 200)}: not a JSON object")
        return body

    # -- accounts (RFC 8555 7.3) -------------------------------------------------

    def new_account(
        self, *, contact: Iterable[str] | None = None, tos_agreed: bool = False,
        only_existing: bool = False,
    ) -> Account:
        """newAccount signed with the JWK; sets ``kid`` from the Location header."""
        url = self.resource("newAccount")
        payload: dict[str, Any] = {}
        if only_existing:
            payload["onlyReturnExisting"] = True
        else:
            if contact:
                payload["contact"] = list(contact)
            if tos_agreed:
                payload["termsOfServiceAgreed"] = True
        response, body = self.post_json(url, payload, use_jwk=True)
        location = response.headers.get("Location")
        if not location:
            raise AcmeError(f"{escape_text(url, 200)}: {response.status_code} without a Location header")
        self.kid = self.check_url(location, "account Location")
        return Account(url=location, body=body if isinstance(body, dict) else {},
                       created=response.status_code == 201)

    def lookup_account(self) -> str:
        """The account URL: accountd's kid, or newAccount onlyReturnExisting, once."""
        with self._account_lock:
            if not self.kid:
                self.new_account(only_existing=True)
            assert self.kid
            return self.kid

    def update_account(self, changes: dict) -> dict:
        """POST ``changes`` to the account URL (RFC 8555 7.3.2)."""
        if not changes:
            raise ValueError("update_account: nothing to change")
        return self._post_object(self.lookup_account(), changes)

    def deactivate_account(self) -> dict:
        """RFC 8555 7.3.6."""
        return self.update_account({"status": "deactivated"})

    def _post_object(self, url: str, payload: dict | None) -> dict:
        _response, body = self.post_json(url, payload)
        if not isinstance(body, dict):
            raise AcmeError(f"{escape_text(url, 200)}: not a JSON object")
        return body

    # -- orders (RFC 8555 7.4, 7.5) ----------------------------------------------

    def new_order(self, identifiers: list[dict], *, replaces: str | None = None,
                  profile: str | None = None) -> tuple[str, dict]:
        """newOrder; returns (order URL, order object).  ``replaces``: the
        RFC 9773 certificate ID of the certificate this order replaces;
        ``profile``: a key of the directory's meta.profiles."""
        url = self.resource("newOrder")
        self.lookup_account()
        payload: dict[str, Any] = {"identifiers": identifiers}
        if replaces:
            payload["replaces"] = replaces
        if profile:
            payload["profile"] = profile
        response, body = self.post_json(url, payload)
        location = response.headers.get("Location")
        if not location or not isinstance(body, dict):
            raise AcmeError(f"{escape_text(url, 200)}: {response.status_code} without an order or Location")
        return self.check_url(location, "order Location"), body

    def respond_challenge(self, url: str) -> dict:
        """Tell the server the challenge is ready (RFC 8555 7.5.1): POST {}."""
        return self._post_object(url, {})

    def poll_order(self, url: str, until: Iterable[str] = ("ready", "valid", "invalid"),
                   *, status: str = "pending") -> dict:
        """POST-as-GET the order until its status is in ``until``.

        First poll after POLL_FIRST, then backing off to POLL_MAX; a server's
        Retry-After is honoured, but never below POLL_FLOOR nor beyond the
        deadline.  AcmeError when the deadline comes first.
        """
        wanted = frozenset(until)
        wait = POLL_FIRST
        while True:
            self._sleep_before_poll(url, wait, status)
            response, order = self.post_json(url, None)
            if not isinstance(order, dict):
                raise AcmeError(f"{escape_text(url, 200)}: order is not a JSON object")
            status = _text(order.get("status"))
            if status in wanted:
                return order
            if status not in ("pending", "ready", "processing", "valid", "invalid"):
                raise AcmeError(f"{escape_text(url, 200)}: unknown order status {escape_text(status, 40)!r}")
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            # RFC 8555 7.4 / RFC 9110 10.2.3, but never a busy loop: 0 is RETRY_AFTER_MIN;
            # a wait past the deadline is cut to it by _sleep_before_poll.
            wait = (max(retry_after, RETRY_AFTER_MIN) if retry_after is not None
                    else min(wait * POLL_FACTOR, POLL_MAX))

    def _sleep_before_poll(self, url: str, wait: float, status: str) -> None:
        left = self._check_time(url)
        if left <= 2 * POLL_FLOOR:
            raise AcmeError(f"{escape_text(url, 200)}: order still {escape_text(status, 40)} "
                            f"when the client timeout was reached")
        wait = min(max(wait, POLL_FLOOR), left - POLL_FLOOR)
        if self._cancelled.wait(wait):
            raise AcmeError(f"{escape_text(url, 200)}: cancelled")

    def finalize(self, url: str, csr_der: bytes) -> dict:
        """Send the CSR (RFC 8555 7.4); returns the order object."""
        return self._post_object(url, {"csr": jws.b64u_encode(csr_der)})

    def download_certificate(self, url: str) -> str:
        """POST-as-GET the PEM chain (RFC 8555 7.4.2)."""
        response = self.post(url, None, accept=PEM_CHAIN, limit=MAX_CHAIN_BYTES)
        return self._pem_chain(response, url)

    def download_certificate_chains(self, url: str, max_alternates: int = 4) -> list[str]:
        """The default PEM chain and its alternates (RFC 8555 7.4.2: ``Link:
        rel="alternate"`` on the download), default first."""
        response = self.post(url, None, accept=PEM_CHAIN, limit=MAX_CHAIN_BYTES)
        chains = [self._pem_chain(response, url)]
        links = requests.utils.parse_header_links(response.headers.get("Link", "")) \
            if response.headers.get("Link") else []
        for link in links:
            if len(chains) > max_alternates:
                break
            if "alternate" not in str(link.get("rel", "")).split():
                continue
            alt_url = self.check_url(urllib.parse.urljoin(url, link.get("url", "")), "alternate chain")
            alt = self.post(alt_url, None, accept=PEM_CHAIN, limit=MAX_CHAIN_BYTES)
            chains.append(self._pem_chain(alt, alt_url))
        return chains

    @staticmethod
    def _pem_chain(response: requests.Response, url: str) -> str:
        text = response.content.decode("ascii", errors="replace")
        if "-----BEGIN CERTIFICATE-----" not in text:
            ctype = response.headers.get("Content-Type", "")
            raise AcmeError(f"{escape_text(url, 200)}: no PEM certificate chain "
                            f"(Content-Type {escape_text(ctype, 80)})")
        return text

    # -- profiles and renewal information (RFC 9773) ----------------------------

    def profiles(self) -> dict | None:
        """The directory's meta.profiles (name -> description), None if absent."""
        meta = self.directory().get("meta")
        profiles = meta.get("profiles") if isinstance(meta, dict) else None
        return profiles if isinstance(profiles, dict) else None

    def has_renewal_info(self) -> bool:
        return isinstance(self.directory().get("renewalInfo"), str)

    def renewal_info(self, cert_id: str) -> tuple[Any, float | None]:
        """GET renewalInfo/CERT-ID (RFC 9773 4.1, unauthenticated); returns the
        decoded body (validated by the caller) and Retry-After in seconds."""
        base = self.resource("renewalInfo")
        url = base.rstrip("/") + "/" + urllib.parse.quote(cert_id, safe="._-")
        response = self._get(url)
        body = self._decode(response, url)
        return body, parse_retry_after(response.headers.get("Retry-After"))

    # -- revocation (RFC 8555 7.6) -----------------------------------------------

    def revoke(self, der: bytes, reason: int | None = None, *, use_jwk: bool = False) -> None:
        """revokeCert signed with the account (kid) or the certificate key (jwk)."""
        url = self.resource("revokeCert")
        if not use_jwk:
            self.lookup_account()
        payload: dict[str, Any] = {"certificate": jws.b64u_encode(der)}
        if reason is not None:
            payload["reason"] = reason
        self.post(url, payload, use_jwk=use_jwk)
