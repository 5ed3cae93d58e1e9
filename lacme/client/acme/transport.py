"""HTTPS towards one ACME server: the only lacme module that imports requests.

Run inside the unprivileged ACME client (``lacme-client``).  ``Transport``
sends every request of a session: only to URLs on the directory's origin,
over TLS with the ``[client]`` settings, within one deadline (the socket
watchdog of ``lacme.client.acme.tls``), with bounded bodies, a bounded JSON
depth and a bounded number of requests per order.  Signed POSTs take their
nonce from the session's ``NoncePool`` and are retried on ``badNonce``.  It
never signs: the caller's ``sign(nonce)`` makes each JWS.
Implements RFC 8555 6.1 (HTTPS, User-Agent, Accept-Language), 6.5 (nonces,
``badNonce``), 6.7 (problem documents) and Retry-After (RFC 9110 10.2.3).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import ssl
import sys
import threading
import time
import urllib.parse
import warnings
from collections.abc import Callable, Iterator
from typing import Any

from lacme.client.acme import messages
from lacme.client.acme.messages import BAD_NONCE, AcmeProblemError, Problem, parse_json
from lacme.client.acme.nonces import BAD_NONCE_STORM, MAX_BAD_NONCE_RETRIES, NoncePool
from lacme.client.acme.tls import Watchdog, describe_os_error, tls_version_range
from lacme.core.errors import AcmeError
from lacme.core.log import VERBOSE
from lacme.core.origin import origin_of
from lacme.core.text import escape_text

# requests imports a charset guesser for ``.text`` (charset_normalizer: 90 modules,
# 6 ms, 1.6 MB); bodies are read here as octets and JSON is UTF-8 (RFC 8259 8.1),
# so it is not loaded (None in sys.modules fails the import; requests copes).
for _guesser in ("charset_normalizer", "chardet"):
    sys.modules.setdefault(_guesser, None)  # type: ignore[arg-type]  # None blocks an import (importlib docs)
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", "Unable to find acceptable character detection")
    import requests
    import urllib3
    from requests.adapters import HTTPAdapter
    from urllib3.util.ssl_ import create_urllib3_context

log = logging.getLogger("lacme-client")

# Bounds on what the server may send (memory stays far below 100 MB).
MAX_JSON_BYTES = 128 * 1024  # a directory, account, order, authorization or problem
MAX_CHAIN_BYTES = 512 * 1024  # a PEM certificate chain (it must fit a control message)
MAX_GET_REDIRECTS = 3  # GET redirects followed, and only within the server's origin
READ_CHUNK = 64 * 1024
JSON_TYPES = ("application/json", "application/problem+json")
Response = requests.Response  # what every request returns (the session's type for it)


def describe_exception(exc: BaseException) -> str:  # a failure's short reason
    return "timed out" if isinstance(exc, requests.Timeout) else describe_os_error(exc)


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
    """Connections with one SSLContext, the trust anchors (SSL_ca_file, or requests'
    bundle) loaded into it once, not parsed again for each new connection (10 ms
    for a system bundle); a missing file is left to requests, whose error names it."""

    def __init__(self, context: ssl.SSLContext, **kwargs: Any) -> None:
        self._context = context
        self._trust_lock = threading.Lock()
        self._trusted: str | None = None  # the file or directory loaded
        super().__init__(**kwargs)

    def _load_trust(self, verify: Any) -> None:
        where = verify if isinstance(verify, str) else requests.utils.DEFAULT_CA_BUNDLE_PATH
        with self._trust_lock:
            if verify and self._trusted != where and os.path.exists(where):
                self._context.load_verify_locations(*(None, where) if os.path.isdir(where) else (where,))
                self._trusted = where

    def build_connection_pool_key_attributes(self, request: Any, verify: Any,
                                             cert: Any = None) -> tuple[Any, Any]:
        self._load_trust(verify)
        host, pool_kwargs = super().build_connection_pool_key_attributes(request, verify, cert)
        if self._trusted is not None:  # in the context already
            pool_kwargs.pop("ca_certs", None), pool_kwargs.pop("ca_cert_dir", None)
        return host, pool_kwargs

    def cert_verify(self, conn: Any, url: str, verify: Any, cert: Any) -> None:
        super().cert_verify(conn, url, verify, cert)  # its checks, its error for a missing file
        if self._trusted is not None and verify:
            conn.ca_certs = conn.ca_cert_dir = None

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["ssl_context"] = self._context
        super().init_poolmanager(*args, **kwargs)

    def proxy_manager_for(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["ssl_context"] = self._context
        return super().proxy_manager_for(*args, **kwargs)


def make_http(verify: bool | str, ssl_version: str | None, ssl_cipher_list: str | None,
              user_agent: str, pool_size: int, socket_class: type[ssl.SSLSocket]) -> requests.Session:
    """A requests Session for HTTPS only, with nothing taken from the environment."""
    http = requests.Session()
    http.trust_env = False  # no proxies, .netrc or CA bundle from the environment
    http.verify = verify
    if verify is False:  # SSL_verify = No was asked for: no warning per request
        urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
    # identity: a compressed body could inflate past every size bound
    http.headers.update({"User-Agent": user_agent, "Accept-Language": "en",
                         "Accept-Encoding": "identity"})
    context = make_ssl_context(verify=verify, ssl_version=ssl_version, ssl_cipher_list=ssl_cipher_list)
    context.sslsocket_class = socket_class
    http.mount("https://", _TLSAdapter(context, pool_maxsize=max(1, pool_size)))
    http.mount("http://", _RefusingAdapter())  # every URL is checked before; a second wall
    return http


class Transport:
    """Every HTTP request of one session, bounded and on one origin; thread-safe.

    ``new_nonce`` (the session's HEAD newNonce, RFC 8555 7.2) is called when
    a signed POST finds the nonce pool empty.
    """

    def __init__(
        self, directory_url: str, *, deadline: float, new_nonce: Callable[[], str],
        verify: bool | str, ssl_version: str | None, ssl_cipher_list: str | None,
        user_agent: str, pool_size: int,
    ) -> None:
        try:
            self.origin = origin_of(directory_url)
        except ValueError as exc:
            raise ValueError(f"server: {escape_text(directory_url, 200)}: {exc}") from None
        self.directory_url = directory_url
        self.deadline = deadline  # time.monotonic() based
        self._new_nonce = new_nonce
        self._cancelled = threading.Event()
        self._watchdog = Watchdog(deadline)
        try:
            self._http = make_http(verify, ssl_version, ssl_cipher_list, user_agent, pool_size,
                                   self._watchdog.socket_class())
        except BaseException:
            self._watchdog.stop()
            raise
        self._budget = threading.local()  # requests left to the calling thread's order
        self._timing = threading.local()  # the calling thread's last round trip
        self.nonces = NoncePool(self._cancelled)
        # The CA's clock (RFC 9110 6.6.1 Date) from the first response that has one:
        # given once to on_date(posix_seconds, url); the master compares it to its clock.
        self.on_date: Callable[[float, str], None] | None = None
        self._date_seen = False
        self._date_lock = threading.Lock()

    # -- lifetime ------------------------------------------------------------

    def remaining(self) -> float:
        """Seconds left before the deadline (may be negative)."""
        return self.deadline - time.monotonic()

    def cancel(self) -> None:
        """Make every pending and future request or poll fail at once."""
        self._cancelled.set()
        self._watchdog.expire()
        self.nonces.wake()

    def close(self) -> None:
        self._watchdog.stop()
        self._http.close()

    @contextlib.contextmanager
    def request_budget(self, limit: int) -> Iterator[None]:
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

    def check_time(self, url: str) -> float:
        """Seconds left; AcmeError naming ``url`` once cancelled or past the deadline."""
        if self._cancelled.is_set():
            raise AcmeError(f"{escape_text(url, 200)}: cancelled")
        left = self.remaining()
        if left <= 0:
            raise AcmeError(f"{escape_text(url, 200)}: timed out (client timeout reached)")
        return left

    def last_round_trip(self) -> float | None:  # seconds, body included; None before one
        return getattr(self._timing, "round_trip", None)

    def sleep(self, url: str, seconds: float) -> None:
        """Wait ``seconds``, or AcmeError as soon as the session is cancelled."""
        if self._cancelled.wait(seconds):
            raise AcmeError(f"{escape_text(url, 200)}: cancelled")

    # -- requests --------------------------------------------------------------

    def send(self, method: str, url: str, *, pool_nonce: bool = True,
             limit: int = MAX_JSON_BYTES, **kwargs: Any) -> requests.Response:
        """One HTTP request bounded by the deadline and ``limit`` body octets.

        Only URLs on the server's origin; redirects are never followed here.
        Pools the response's Replay-Nonce.
        """
        self.check_url(url)
        left = self.check_time(url)
        self._spend_request(url)
        log.debug("%s %s", method, escape_text(url))
        started = time.monotonic()
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
        self._timing.round_trip = time.monotonic() - started
        nonce = response.headers.get("Replay-Nonce")
        if nonce and pool_nonce:
            self.nonces.put(nonce)
        if not self._date_seen and self.on_date is not None:
            self._see_date(response.headers.get("Date"), url)
        log.log(VERBOSE, "%s %s -> %d", method, escape_text(url), response.status_code)
        return response

    def _see_date(self, value: str | None, url: str) -> None:
        if (when := messages.parse_http_date(value)) is None or self.on_date is None:
            return
        with self._date_lock:
            if self._date_seen:
                return
            self._date_seen = True
        self.on_date(when, url)

    def _read_body(self, response: requests.Response, url: str, limit: int) -> None:
        """Read the body into ``response`` (``.content``), refusing more than ``limit`` octets."""
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > limit:
            raise AcmeError(f"{escape_text(url, 200)}: {response.status_code} with a body of "
                            f"{int(declared)} octets, over the limit of {limit}")
        chunks: list[bytes] = []
        size = 0
        while True:
            self.check_time(url)
            chunk = response.raw.read(READ_CHUNK, decode_content=False)
            if not chunk:
                break
            size += len(chunk)
            if size > limit:
                raise AcmeError(f"{escape_text(url, 200)}: {response.status_code} with a body "
                                f"over the limit of {limit} octets")
            chunks.append(chunk)
        # what requests' .content returns, set as Response.content does after reading
        response._content = b"".join(chunks)
        response._content_consumed = True  # type: ignore[attr-defined]  # requests' own; not in its stubs

    def get(self, url: str) -> requests.Response:
        """An unsigned GET; redirects followed, a few, and only within the origin."""
        for _ in range(MAX_GET_REDIRECTS + 1):
            response = self.send("GET", url)
            if response.status_code not in (301, 302, 303, 307, 308):
                return response
            target = urllib.parse.urljoin(url, response.headers.get("Location", ""))
            self.check_url(target, f"redirect from {escape_text(url, 200)} to")
            url = target
        raise AcmeError(f"{escape_text(url, 200)}: more than {MAX_GET_REDIRECTS} redirects")

    def post(self, url: str, sign: Callable[[str], dict], *, accept: str | None = None,
             limit: int = MAX_JSON_BYTES) -> requests.Response:
        """A signed POST: ``sign(nonce)`` makes the JWS of each attempt (RFC 8555 6.2).

        Retries badNonce with a fresh nonce (6.5); never follows a redirect.
        Returns the successful response; AcmeProblemError for an error answer.
        """
        headers = {"Content-Type": "application/jose+json"}
        if accept:
            headers["Accept"] = accept
        for attempt in range(MAX_BAD_NONCE_RETRIES + 1):
            nonce = self.nonces.take(self.remaining, self._new_nonce)
            try:
                body = sign(nonce)
                response = self.send("POST", url, data=json.dumps(body), headers=headers, limit=limit)
            finally:
                self.nonces.release()
            if 200 <= response.status_code < 300:
                self.nonces.count_bad_nonce(False)
                return response
            problem = self.problem(response)
            if problem.type != BAD_NONCE:
                self.nonces.count_bad_nonce(False)
                raise AcmeProblemError(url, problem,
                                       messages.parse_retry_after(response.headers.get("Retry-After")))
            in_a_row = self.nonces.count_bad_nonce(True)
            if in_a_row >= BAD_NONCE_STORM or attempt == MAX_BAD_NONCE_RETRIES:
                raise AcmeError(f"{escape_text(url, 200)}: {max(in_a_row, attempt + 1)} badNonce "
                                f"answers in a row, giving up ({problem})")
            log.debug("%s: badNonce, retrying with a fresh nonce", escape_text(url))
        raise AssertionError("unreachable")

    # -- answers -----------------------------------------------------------------

    @staticmethod
    def problem(response: requests.Response) -> Problem:
        """The problem document of an error answer (RFC 8555 6.7), or one made from the status."""
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

    def decode(self, response: requests.Response, url: str) -> Any:
        """The JSON body of a successful response, or AcmeProblemError."""
        if not 200 <= response.status_code < 300:
            raise AcmeProblemError(url, self.problem(response))
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

    @staticmethod
    def header_links(response: requests.Response) -> list[dict[str, str]]:
        """The response's ``Link`` header (RFC 8288), parsed."""
        value = response.headers.get("Link")
        return requests.utils.parse_header_links(value) if value else []
