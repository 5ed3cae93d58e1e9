"""One RFC 8555 (ACME) session: the server's resources, in the RFC's order.

Run inside the unprivileged ACME client (``lacme-client``); it never sees a
private key: every JWS is signed by a ``Signer`` (the accountd connection).
The HTTP side (origin, TLS, deadline, bounds, nonces) is the transport's
(``lacme.client.acme.transport``); the objects read back are the records of
``lacme.client.acme.messages``.  Implements RFC 8555 6.2 (flattened JWS with
``kid`` or ``jwk``), 6.3 (POST-as-GET), 7.1.1 (directory), 7.2 (newNonce),
7.3 (accounts), 7.4 (orders, finalization, polling with Retry-After,
download with alternates), 7.5 (authorizations, challenges), 7.6
(revocation), and RFC 9773 (renewalInfo, ``replaces``).

Thread-safe: the client drives all orders of a run concurrently over one
session (one connection pool, one nonce pool, one directory, one account).
Every request is bounded by the session's deadline.
"""

from __future__ import annotations

import threading
import urllib.parse
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from typing import Any, Protocol

from lacme import __version__
from lacme.client.acme.messages import Account, Authorization, Order, parse_retry_after
from lacme.client.acme.transport import (
    MAX_CHAIN_BYTES,
    MAX_JSON_BYTES,
    Response,
    Transport,
)
from lacme.core.errors import AcmeError
from lacme.core.text import escape_text
from lacme.protocol import jws

POLL_FIRST = 0.05  # first poll of an order at most this soon after the last step
POLL_QUICK = 0.01  # ... and at least this soon: a CA a round trip of 2.5 ms away
POLL_ROUND_TRIPS = 4  # ... else this many round trips of the last step's request
POLL_FACTOR = 1.5
POLL_MAX = 2.0
POLL_FLOOR = POLL_QUICK  # never poll more often than this, whatever Retry-After says
RETRY_AFTER_MIN = 1.0  # a server's Retry-After below this (0 included) is raised to it
PEM_CHAIN = "application/pem-certificate-chain"


class Signer(Protocol):
    """Signs JWS signing inputs with the account key (or a certificate key)."""

    alg: str
    jwk: dict
    thumbprint: str
    kid: str | None

    def sign(self, signing_input: bytes) -> bytes:
        """The raw JWS signature; must be safe to call from several threads."""
        ...


class SignedSession:
    """What every resource is reached through: the directory, nonces and
    signed requests (RFC 8555 6.2, 6.3, 7.1.1, 7.2) over one transport.

    The account URL (``kid``) is set by AcmeSession's newAccount.
    """

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
        self.http = Transport(directory_url, deadline=deadline, new_nonce=self.new_nonce,
                              verify=verify, ssl_version=ssl_version, ssl_cipher_list=ssl_cipher_list,
                              user_agent=user_agent, pool_size=pool_size)
        self.directory_url = directory_url
        self.signer = signer
        self.kid: str | None = signer.kid
        self._directory: dict | None = None
        self._directory_lock = threading.Lock()
        self._account_lock = threading.Lock()

    # -- the transport's bounds, for the flow ----------------------------------

    def remaining(self) -> float:
        """Seconds left before the deadline (may be negative)."""
        return self.http.remaining()

    def cancel(self) -> None:
        """Make every pending and future request or poll fail at once."""
        self.http.cancel()

    def close(self) -> None:
        self.http.close()

    def request_budget(self, limit: int) -> AbstractContextManager[None]:
        """Bound the HTTP requests the calling thread makes in the block (one order)."""
        return self.http.request_budget(limit)

    def check_url(self, url: Any, what: str = "URL") -> str:
        """``url`` if it lies on the directory's origin; AcmeError naming ``what`` if not."""
        return self.http.check_url(url, what)

    # -- signed requests (RFC 8555 6.2, 6.3) -----------------------------------

    def post(self, url: str, payload: dict | None, *, use_jwk: bool = False,
             accept: str | None = None, limit: int = MAX_JSON_BYTES,
             key: Signer | None = None) -> Response:
        """A JWS-signed POST; ``payload`` None is POST-as-GET.  Retries badNonce.

        Signed with ``kid`` unless ``use_jwk`` (newAccount, revokeCert with the
        certificate key), and only for a URL on the server's origin.  Never
        follows a redirect.  Returns the successful response; raises
        AcmeProblemError for any error answer.
        """
        self.check_url(url)  # before anything is signed
        signer = key or self.signer  # key: another key (a rollover's new one), with its JWK
        use_jwk = use_jwk or key is not None
        if not use_jwk and not self.kid:
            raise AcmeError(f"{escape_text(url, 200)}: no account URL (kid) to sign with")
        if use_jwk and not signer.jwk:
            raise AcmeError(f"{escape_text(url, 200)}: accountd serves a key id and no JWK")

        def sign(nonce: str) -> dict:
            protected: dict[str, Any] = {"alg": signer.alg, "nonce": nonce, "url": url}
            if use_jwk:
                protected["jwk"] = signer.jwk
            else:
                protected["kid"] = self.kid
            text = jws.signing_input(protected, payload)
            return jws.flattened(text, signer.sign(text.encode("ascii")))

        return self.http.post(url, sign, accept=accept, limit=limit)

    def post_json(self, url: str, payload: dict | None, *,
                  use_jwk: bool = False) -> tuple[Response, Any]:
        response = self.post(url, payload, use_jwk=use_jwk)
        return response, self.http.decode(response, url)

    def post_object(self, url: str, payload: dict | None) -> dict:
        """POST ``payload``; the JSON object answered."""
        _response, body = self.post_json(url, payload)
        if not isinstance(body, dict):
            raise AcmeError(f"{escape_text(url, 200)}: not a JSON object")
        return body

    def get(self, url: str) -> dict:
        """POST-as-GET (6.3) of a JSON object."""
        return self.post_object(url, None)

    # -- the directory (RFC 8555 7.1.1) ------------------------------------------

    def directory(self) -> dict:
        """The directory object, fetched once per session (unsigned GET)."""
        with self._directory_lock:
            if self._directory is None:
                response = self.http.get(self.directory_url)
                body = self.http.decode(response, self.directory_url)
                if not isinstance(body, dict):
                    raise AcmeError(f"{escape_text(self.directory_url, 200)}: directory is not a JSON object")
                self._directory = body
            return self._directory

    def resource(self, name: str) -> str:
        """The URL of resource ``name`` (``newOrder``...), on the server's origin."""
        url = self.directory().get(name)
        if not isinstance(url, str) or not url:
            raise AcmeError(f"{escape_text(self.directory_url, 200)}: no {name!r} resource in the directory")
        return self.check_url(url, f"directory {name}")

    def external_account_required(self) -> bool:
        """meta.externalAccountRequired (RFC 8555 7.1.1)."""
        meta = self.directory().get("meta")
        return isinstance(meta, dict) and meta.get("externalAccountRequired") is True

    def terms_of_service(self) -> str | None:
        """meta.termsOfService, if the directory has one."""
        meta = self.directory().get("meta")
        tos = meta.get("termsOfService") if isinstance(meta, dict) else None
        return tos if isinstance(tos, str) else None

    def profiles(self) -> dict | None:
        """The directory's meta.profiles (name -> description; the ACME
        profiles extension), None if absent."""
        meta = self.directory().get("meta")
        profiles = meta.get("profiles") if isinstance(meta, dict) else None
        return profiles if isinstance(profiles, dict) else None

    def has_renewal_info(self) -> bool:
        """Whether the directory has a renewalInfo resource (RFC 9773 3)."""
        return isinstance(self.directory().get("renewalInfo"), str)

    # -- nonces (RFC 8555 7.2) ---------------------------------------------------

    def new_nonce(self) -> str:
        """HEAD newNonce; the nonce goes straight to the caller, not to the pool."""
        url = self.resource("newNonce")
        response = self.http.send("HEAD", url, pool_nonce=False)
        nonce = response.headers.get("Replay-Nonce")
        if response.status_code not in (200, 204) or not nonce:
            raise AcmeError(f"{escape_text(url, 200)}: {response.status_code}, no Replay-Nonce")
        return nonce


class AcmeSession(SignedSession):
    """The resources of one ACME server, in RFC 8555's order: accounts,
    orders, authorizations and challenges, finalization, the certificate,
    revocation, and renewal information (RFC 9773)."""

    # -- accounts (RFC 8555 7.3) -------------------------------------------------

    def new_account(
        self, *, contact: Iterable[str] | None = None, tos_agreed: bool = False,
        only_existing: bool = False, binding: Callable[[str], dict] | None = None,
    ) -> Account:
        """newAccount signed with the JWK (7.3, 7.3.1); sets ``kid`` from the Location header.
        ``binding(url)`` gives the externalAccountBinding JWS (7.3.4) for newAccount's url."""
        url = self.resource("newAccount")
        payload: dict[str, Any] = {}
        if only_existing:
            payload["onlyReturnExisting"] = True
        else:
            if contact:
                payload["contact"] = list(contact)
            if tos_agreed:
                payload["termsOfServiceAgreed"] = True
            if binding is not None:
                payload["externalAccountBinding"] = binding(url)
        response, body = self.post_json(url, payload, use_jwk=True)
        location = response.headers.get("Location")
        if not location:
            raise AcmeError(f"{escape_text(url, 200)}: {response.status_code} without a Location header")
        self.kid = self.check_url(location, "account Location")
        return Account(url=location, body=body if isinstance(body, dict) else {},
                       created=response.status_code == 201)

    def lookup_account(self) -> str:
        """The account URL: accountd's kid, or newAccount onlyReturnExisting (7.3.1), once."""
        with self._account_lock:
            if not self.kid:
                self.new_account(only_existing=True)
            assert self.kid
            return self.kid

    def update_account(self, changes: dict) -> dict:
        """POST ``changes`` to the account URL (7.3.2)."""
        if not changes:
            raise ValueError("update_account: nothing to change")
        return self.post_object(self.lookup_account(), changes)

    def deactivate_account(self) -> dict:
        """Deactivate the account (7.3.6)."""
        return self.update_account({"status": "deactivated"})

    # -- orders (RFC 8555 7.4) ---------------------------------------------------

    def new_order(self, identifiers: list[dict], *, replaces: str | None = None,
                  profile: str | None = None) -> Order:
        """newOrder (7.4); the order at its Location.  ``replaces``: the RFC 9773
        certificate ID of the certificate this order replaces; ``profile``: a
        key of the directory's meta.profiles."""
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
        return Order.from_json(self.check_url(location, "order Location"), body)

    # -- authorizations and challenges (RFC 8555 7.5) ----------------------------

    def authorization(self, url: str) -> Authorization:
        """POST-as-GET an authorization (7.5)."""
        return Authorization.from_json(url, self.get(url))

    def respond_challenge(self, url: str) -> dict:
        """Tell the server the challenge is ready (7.5.1): POST {}."""
        return self.post_object(url, {})

    # -- finalization, polling and download (RFC 8555 7.4, 7.4.2) ----------------

    def finalize(self, order: Order, csr_der: bytes) -> Order:
        """Send the CSR to a ready order's finalize URL (7.4); the order it answers."""
        if not order.finalize:
            raise AcmeError(f"{escape_text(order.url, 200)}: ready order without a finalize URL")
        url = self.check_url(order.finalize, "finalize URL")
        body = self.post_object(url, {"csr": jws.b64u_encode(csr_der)})
        return Order.from_json(order.url, body, source=url)

    def poll_order(self, url: str, until: Iterable[str] = ("ready", "valid", "invalid"),
                   *, status: str = "pending") -> Order:
        """POST-as-GET the order until its status is in ``until`` (7.4).

        First poll after POLL_ROUND_TRIPS round trips of the request that
        started the step (the challenge's or the finalize POST), within
        POLL_QUICK..POLL_FIRST: a CA that validates or issues at once and
        is near is not waited for longer than it works, one farther away
        (10 ms and more) is polled after POLL_FIRST.  Then backing off to
        POLL_MAX; a server's Retry-After is honoured, but never below
        POLL_FLOOR nor beyond the deadline.  AcmeError when the deadline
        comes first.
        """
        wanted = frozenset(until)
        rtt = self.http.last_round_trip()
        wait = POLL_FIRST if rtt is None else min(POLL_FIRST,
                                                   max(POLL_QUICK, POLL_ROUND_TRIPS * rtt))
        while True:
            self._sleep_before_poll(url, wait, status)
            response, body = self.post_json(url, None)
            order = Order.from_json(url, body)  # an unknown status is refused here
            if order.status in wanted:
                return order
            status = order.status
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            # RFC 8555 7.4 / RFC 9110 10.2.3, but never a busy loop: 0 is RETRY_AFTER_MIN;
            # a wait past the deadline is cut to it by _sleep_before_poll.
            wait = (max(retry_after, RETRY_AFTER_MIN) if retry_after is not None
                    else min(wait * POLL_FACTOR, POLL_MAX))

    def _sleep_before_poll(self, url: str, wait: float, status: str) -> None:
        left = self.http.check_time(url)
        if left <= 2 * POLL_FLOOR:
            raise AcmeError(f"{escape_text(url, 200)}: order still {escape_text(status, 40)} "
                            f"when the client timeout was reached")
        self.http.sleep(url, min(max(wait, POLL_FLOOR), left - POLL_FLOOR))

    def download_certificate(self, url: str) -> str:
        """POST-as-GET the PEM chain (7.4.2)."""
        response = self.post(url, None, accept=PEM_CHAIN, limit=MAX_CHAIN_BYTES)
        return self._pem_chain(response, url)

    def download_certificate_chains(self, url: str, max_alternates: int = 4) -> list[str]:
        """The default PEM chain and its alternates (7.4.2: ``Link:
        rel="alternate"`` on the download), default first."""
        response = self.post(url, None, accept=PEM_CHAIN, limit=MAX_CHAIN_BYTES)
        chains = [self._pem_chain(response, url)]
        for link in self.http.header_links(response):
            if len(chains) > max_alternates:
                break
            if "alternate" not in str(link.get("rel", "")).split():
                continue
            alt_url = self.check_url(urllib.parse.urljoin(url, link.get("url", "")), "alternate chain")
            alt = self.post(alt_url, None, accept=PEM_CHAIN, limit=MAX_CHAIN_BYTES)
            chains.append(self._pem_chain(alt, alt_url))
        return chains

    @staticmethod
    def _pem_chain(response: Response, url: str) -> str:
        text = response.content.decode("ascii", errors="replace")
        if "-----BEGIN CERTIFICATE-----" not in text:
            ctype = response.headers.get("Content-Type", "")
            raise AcmeError(f"{escape_text(url, 200)}: no PEM certificate chain "
                            f"(Content-Type {escape_text(ctype, 80)})")
        return text

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

    # -- renewal information (RFC 9773) ------------------------------------------

    def renewal_info(self, cert_id: str) -> tuple[Any, float | None]:
        """GET renewalInfo/CERT-ID (RFC 9773 4.1, unauthenticated); returns the
        decoded body (validated by the caller) and Retry-After in seconds."""
        base = self.resource("renewalInfo")
        url = base.rstrip("/") + "/" + urllib.parse.quote(cert_id, safe="._-")
        response = self.http.get(url)
        body = self.http.decode(response, url)
        return body, parse_retry_after(response.headers.get("Retry-After"))
