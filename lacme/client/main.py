"""lacme-client: the unprivileged ACME client program.

Runs as an unprivileged user (``[client] user``) with no write access
anywhere: the master spawns it (or systemd starts it per connection) with
one inherited descriptor, the control channel (``lacme.protocol.control``).  The
first message, ``hello``, carries the settings and the accountd connection
(SCM_RIGHTS), over which every JWS is signed.  It then serves exactly one
command (account, orders or revoke) with one ACME session (``lacme.client.acme.session``:
RFC 8555 sections 7.3, 7.4, 7.5 and 7.6), answers, says ``done`` and exits.
Challenge files (RFC 8555 8.3) are written by the master on request.
"""

from __future__ import annotations

import argparse
import logging
import socket
import sys
import threading
import time
from typing import Any, NoReturn

from lacme import __version__
from lacme.core import descriptors, log
from lacme.core.errors import AcmeError, LacmeError, ProtocolError, UsageError
from lacme.core.record import Factory, Record
from lacme.protocol import control, http01, jws, wire

NAME = "lacme-client"
DEFAULT_SERVER = "https://acme-v02.api.letsencrypt.org/directory"
DEFAULT_TIMEOUT = 30.0
COMMANDS = frozenset({"account", "orders", "revoke", "renewal_info"})
#: Orders processed at once: enough to keep a CA busy, few enough that the
#: nonces returned by in-flight requests feed the next ones (no newNonce storm).
MAX_CONCURRENT_ORDERS = 12

logger = logging.getLogger(NAME)


# ---------------------------------------------------------------------------
# The accountd connection: a thread-safe Signer


class AccountdSigner:
    """Signs over an accountd connection: one request line out, one signature in.

    Implements ``acme.Signer``; a lock keeps concurrent orders' requests and
    answers paired.  Losing the connection (accountd refuses a request by
    closing it) raises ProtocolError and marks the signer broken.
    """

    def __init__(self, sock: socket.socket, timeout: float) -> None:
        self._sock = sock
        self._sock.settimeout(timeout)  # a signature never takes longer than the whole run
        self._rfile = sock.makefile("rb")
        self._lock = threading.Lock()
        self.broken: ProtocolError | None = None
        greeting = self._read_greeting()
        self.alg = greeting.alg
        self.jwk = greeting.jwk
        self.thumbprint = greeting.jwk_thumbprint
        self.kid = greeting.kid

    def _read_greeting(self) -> wire.Greeting:
        """The two CRLF lines accountd sends first (version, alg, thumbprint; JWK)."""
        try:
            first = self._rfile.readline(wire.MAX_LINE + 1)
            second = self._rfile.readline(wire.MAX_LINE + 1) if first else b""
        except OSError as exc:
            raise ProtocolError(f"lacme-accountd: no greeting ({exc.strerror or 'timed out'})") from None
        if not first or not second:
            raise ProtocolError("lacme-accountd: connection closed before the greeting")
        return wire.parse_greeting(first, second)

    def sign(self, signing_input: bytes) -> bytes:
        with self._lock:
            if self.broken is not None:
                raise self.broken
            try:
                self._sock.sendall(signing_input + wire.CRLF)
                line = self._rfile.readline(wire.MAX_LINE + 1)
            except OSError as exc:
                line = b""
                reason = exc.strerror or "timed out"
            else:
                reason = "connection closed (request refused?)"
            if not line:
                self.broken = ProtocolError(f"lacme-accountd: {reason}")
                raise self.broken
            return wire.parse_signature(line)

    def close(self) -> None:
        self._rfile.close()
        self._sock.close()


# ---------------------------------------------------------------------------
# The control channel after hello: sending, and answers to publish


class _Publication(Record, frozen=False):
    event: threading.Event = Factory(threading.Event)
    ok: bool = False
    message: str = ""
    refs: int = 1


class ControlLink:
    """Messages to the master (thread-safe) and a reader of its answers.

    Orders sharing an authorization share its token: ``publish`` is sent
    once per token and ``unpublish`` when its last user is done.
    """

    def __init__(self, channel: descriptors.Channel) -> None:
        self._channel = channel
        self._send_lock = threading.Lock()
        self._lock = threading.Lock()
        self._publications: dict[str, _Publication] = {}
        self.closed = threading.Event()
        self.close_reason = ""
        self._on_close: list[Any] = []

    def on_close(self, callback: Any) -> None:
        self._on_close.append(callback)

    def send(self, kind: str, **fields: Any) -> None:
        data = control.encode_message(kind, **fields)
        with self._send_lock:
            if self.closed.is_set():
                raise ProtocolError(self.close_reason)
            try:
                self._channel.send(data)
            except OSError as exc:
                self._mark_closed(f"control channel: {exc.strerror or 'closed'}")
                raise ProtocolError(self.close_reason) from None

    def start_reader(self) -> None:
        threading.Thread(target=self._read_answers, name="control-reader", daemon=True).start()

    def _read_answers(self) -> None:
        try:
            while True:
                line, _fd = self._channel.recv_line(control.MAX_LINE)
                if line is None:
                    self._mark_closed("control channel: closed by the master")
                    return
                msg = control.decode_message(line, frozenset({"published"}))
                self._answer(str(msg.get("token", "")), bool(msg.get("ok")), str(msg.get("message", "")))
        except (OSError, ProtocolError) as exc:
            self._mark_closed(str(exc) if isinstance(exc, ProtocolError) else f"control channel: {exc}")

    def _answer(self, token: str, ok: bool, message: str) -> None:
        with self._lock:
            pub = self._publications.get(token)
        if pub is not None and not pub.event.is_set():
            pub.ok, pub.message = ok, message
            pub.event.set()

    def _mark_closed(self, reason: str) -> None:
        if self.closed.is_set():
            return
        self.close_reason = reason
        self.closed.set()
        with self._lock:
            for pub in self._publications.values():
                pub.event.set()
        for callback in self._on_close:
            callback()

    def publish(self, token: str, content: str, timeout: float) -> None:
        """Have the master publish ``content`` for ``token``; wait for its answer."""
        with self._lock:
            pub = self._publications.get(token)
            first = pub is None
            if first:
                pub = self._publications[token] = _Publication()
            else:
                pub.refs += 1
        try:
            if first:
                self.send("publish", token=token, content=content)
            if not pub.event.wait(max(timeout, 0)):
                raise LacmeError(f"challenge {token}: no answer from the master before the timeout")
            if self.closed.is_set() and not pub.ok:
                raise ProtocolError(self.close_reason)
            if not pub.ok:
                raise LacmeError(f"challenge {token}: cannot publish ({acme_escape(pub.message)})")
        except BaseException:
            self._release(token, notify=False)
            raise

    def unpublish(self, token: str) -> None:
        self._release(token, notify=True)

    def _release(self, token: str, *, notify: bool) -> None:
        with self._lock:
            pub = self._publications.get(token)
            if pub is None:
                return
            pub.refs -= 1
            if pub.refs > 0:
                return
            del self._publications[token]
        if notify and pub.ok and not self.closed.is_set():
            self.send("unpublish", token=token)


def acme_escape(text: Any, limit: int = 300) -> str:
    from lacme.client.acme.session import escape_text  # imports requests: only once a session is needed

    return escape_text(text, limit)


# ---------------------------------------------------------------------------
# Settings from hello


class ClientSettings(Record):
    server: str
    timeout: float
    verify: bool | str
    ssl_version: str | None
    ssl_cipher_list: str | None


def parse_settings(raw: Any) -> ClientSettings:
    """The [client] settings the master sends in hello (already validated there)."""
    if not isinstance(raw, dict):
        raise ProtocolError("control channel: hello settings is not an object")
    server = raw.get("server") or DEFAULT_SERVER
    try:
        timeout = float(raw.get("timeout") or DEFAULT_TIMEOUT)
    except (TypeError, ValueError):
        raise ProtocolError("control channel: hello timeout is not a number") from None
    verify_flag = raw.get("SSL_verify", True)
    if isinstance(verify_flag, str):
        verify_flag = verify_flag.strip().lower() not in ("no", "false", "off", "0")
    ca_file = raw.get("SSL_ca_file")
    verify: bool | str = bool(verify_flag)
    if verify is True and isinstance(ca_file, str) and ca_file:
        verify = ca_file
    return ClientSettings(
        server=str(server), timeout=timeout, verify=verify,
        ssl_version=raw.get("SSL_version") or None,
        ssl_cipher_list=raw.get("SSL_cipher_list") or None,
    )


# ---------------------------------------------------------------------------
# Commands


class Context(Record):
    session: Any  # acme.AcmeSession (imported lazily: requests is heavy)
    link: ControlLink
    signer: AccountdSigner


def serve_account(ctx: Context, msg: dict) -> bool:
    """newAccount (or lookup), then update contacts or deactivate (RFC 8555 7.3)."""
    session = ctx.session
    register = bool(msg.get("register"))
    contact = [str(c) for c in msg.get("contact") or []]
    if register:
        logger.info("requesting a new registration%s", f" for {', '.join(contact)}" if contact else "")
    account = session.new_account(contact=contact, tos_agreed=bool(msg.get("tos_agreed")),
                                  only_existing=not register)
    tos = session.terms_of_service()
    if tos:
        print(f"Terms of Service: {acme_escape(tos)}", file=sys.stderr, flush=True)
    logger.info("account %s: %s", "created" if account.created else "found", acme_escape(account.url))
    body = account.body
    if contact and not account.created:
        body = session.update_account({"contact": contact})
        logger.info("account contacts updated")
    if msg.get("deactivate"):
        body = session.deactivate_account()
        logger.info("account deactivated")
    elif not isinstance(body.get("status"), str):  # RFC 8555 7.3.1 has the body; some CAs do not
        body = session.get(account.url)
    ctx.link.send("account", account=body, location=account.url)
    return True


def serve_orders(ctx: Context, msg: dict) -> bool:
    """Every order of the run at once, one thread each; True if all succeeded."""
    orders = msg.get("orders")
    if not isinstance(orders, list) or not orders:
        raise ProtocolError("control channel: orders without orders")
    if len(orders) == 1:  # no pool for one order: no thread to start and join
        return serve_order(ctx, orders[0])
    from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415 - only for several orders

    workers = min(len(orders), MAX_CONCURRENT_ORDERS)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="order") as pool:
        results = list(pool.map(lambda entry: serve_order(ctx, entry), orders))
    return all(results)


def serve_order(ctx: Context, entry: Any) -> bool:
    sid = str(entry.get("id", "?")) if isinstance(entry, dict) else "?"
    try:
        identifiers, csr = parse_order(entry)
        options = parse_order_options(entry)
        pem = obtain_certificate(ctx, sid, identifiers, csr, options)
    except LacmeError as exc:
        return report_failure(ctx, "failed", sid, exc)
    except Exception as exc:  # noqa: BLE001 - a bug must not stop the other orders
        logger.debug("[%s] unexpected error", sid, exc_info=True)
        return report_failure(ctx, "failed", sid, LacmeError(f"internal error: {exc!r}"))
    ctx.link.send("certificate", id=sid, pem=pem, **options.report)
    return True


class OrderOptions(Record, frozen=False):
    """The optional parts of one order; ``report`` goes back with the certificate."""

    replaces: str | None = None  # RFC 9773 certificate ID of the replaced certificate
    profile: str | None = None
    alternates: bool = False  # fetch the alternate chains too (preferred-chain)
    report: dict = Factory(dict)


def parse_order_options(entry: dict) -> OrderOptions:
    replaces, profile = entry.get("replaces"), entry.get("profile")
    for name, value in (("replaces", replaces), ("profile", profile)):
        if value is not None and (not isinstance(value, str) or not value.isprintable()
                                  or len(value) > 512):
            raise ProtocolError(f"control channel: order {entry['id']}: bad {name}")
    return OrderOptions(replaces=replaces or None, profile=profile or None,
                        alternates=entry.get("alternates") is True)


def check_profile(session: Any, profile: str) -> None:
    """The profile is one the CA offers (its directory's meta.profiles)."""
    offered = session.profiles()
    if offered is None:
        raise AcmeError(f"{acme_escape(session.directory_url)}: profile {acme_escape(profile, 64)!r} "
                        f"requested, but the CA offers no profiles")
    if profile not in offered:
        names = ", ".join(sorted(acme_escape(n, 64) for n in offered)) or "none"
        raise AcmeError(f"{acme_escape(session.directory_url)}: unknown profile "
                        f"{acme_escape(profile, 64)!r} (the CA offers: {names})")


def create_order(ctx: Context, sid: str, identifiers: list[dict],
                 options: OrderOptions) -> tuple[str, dict]:
    """newOrder with the options.  An order carrying ``replaces`` that the
    CA refuses (alreadyReplaced, a server error, anything) is sent once more
    without it: a renewal must never depend on the CA accepting the hint."""
    session = ctx.session
    if options.profile:
        check_profile(session, options.profile)
    if not options.replaces:
        return session.new_order(identifiers, profile=options.profile)
    from lacme.client.acme.session import AcmeProblemError

    try:
        return session.new_order(identifiers, replaces=options.replaces, profile=options.profile)
    except AcmeProblemError as exc:
        logger.warning("[%s] order replacing %s refused (%s); ordering without replaces", sid,
                       acme_escape(options.replaces, 120), exc, extra={"LACME_SECTION": sid})
        options.report["replaces_dropped"] = str(exc)
        return session.new_order(identifiers, profile=options.profile)


def serve_renewal_info(ctx: Context, msg: dict) -> bool:
    """renewalInfo for each certificate ID (RFC 9773 4.1); True if all answered."""
    certificates = msg.get("certificates")
    if not isinstance(certificates, list) or not all(
            isinstance(c, dict) and isinstance(c.get("id"), str) and isinstance(c.get("cert_id"), str)
            for c in certificates):
        raise ProtocolError("control channel: renewal_info without certificates")
    if not ctx.session.has_renewal_info():
        for entry in certificates:
            ctx.link.send("renewal_info", id=entry["id"], supported=False)
        return True
    ok = True
    for entry in certificates:
        try:
            body, retry_after = ctx.session.renewal_info(entry["cert_id"])
        except LacmeError as exc:
            ok = report_failure(ctx, "failed", entry["id"], exc) and ok
            continue
        ctx.link.send("renewal_info", id=entry["id"], supported=True, info=body,
                      retry_after=retry_after)
    return ok


def report_failure(ctx: Context, kind: str, sid: str, exc: BaseException) -> bool:
    message = str(ctx.signer.broken or exc)
    logger.debug("[%s] %s", sid, message, extra={"LACME_SECTION": sid})
    if not ctx.link.closed.is_set():
        ctx.link.send(kind, id=sid, message=message)
    return False


def parse_order(entry: Any) -> tuple[list[dict], bytes]:
    if not isinstance(entry, dict) or not isinstance(entry.get("id"), str):
        raise ProtocolError("control channel: order without an id")
    identifiers = entry.get("identifiers")
    if not isinstance(identifiers, list) or not identifiers or not all(
        isinstance(i, dict) and isinstance(i.get("type"), str) and isinstance(i.get("value"), str)
        for i in identifiers
    ):
        raise ProtocolError(f"control channel: order {entry['id']}: bad identifiers")
    try:
        csr = jws.b64u_decode(str(entry.get("csr", "")))
    except ValueError:
        raise ProtocolError(f"control channel: order {entry['id']}: csr is not base64url") from None
    if not csr:
        raise ProtocolError(f"control channel: order {entry['id']}: empty csr")
    return [{"type": i["type"], "value": i["value"]} for i in identifiers], csr


def request_budget(identifiers: list[dict], seconds: float) -> int:
    """HTTP requests one order may take: a few per name and badNonce retries,
    and two rounds of polls backing off to POLL_MAX over ``seconds``."""
    from lacme.client.acme.session import POLL_MAX

    return 60 + 6 * len(identifiers) + 2 * int(max(seconds, 0) / POLL_MAX)


def obtain_certificate(ctx: Context, sid: str, identifiers: list[dict], csr: bytes,
                       options: OrderOptions | None = None) -> str:
    """RFC 8555 7.4, with a bounded number of requests."""
    with ctx.session.request_budget(request_budget(identifiers, ctx.session.remaining())):
        return run_order(ctx, sid, identifiers, csr, options or OrderOptions())


def check_order(url: str, order: dict, identifiers: list[dict]) -> list[str]:
    """The order is for exactly the requested identifiers; its authorization URLs.

    A CA may not add names (we would prove control of them for nothing) nor
    hand out more authorizations than there are names.
    """
    wanted = {(i["type"], i["value"].lower()) for i in identifiers}
    got = order.get("identifiers")
    if got is not None:
        if not isinstance(got, list) or not all(isinstance(i, dict) for i in got):
            raise AcmeError(f"{acme_escape(url)}: malformed identifiers in the order")
        names = {(str(i.get("type")), str(i.get("value")).lower()) for i in got}
        if names != wanted:
            raise AcmeError(f"{acme_escape(url)}: the order is for "
                            f"{acme_escape(', '.join(sorted(v for _, v in names)), 200)}, "
                            f"not the requested identifiers")
    authorizations = order.get("authorizations") or []
    if not isinstance(authorizations, list) or not all(isinstance(a, str) for a in authorizations):
        raise AcmeError(f"{acme_escape(url)}: malformed authorizations in the order")
    if len(authorizations) > len(wanted):
        raise AcmeError(f"{acme_escape(url)}: {len(authorizations)} authorizations "
                        f"for {len(wanted)} identifiers")
    return authorizations


def run_order(ctx: Context, sid: str, identifiers: list[dict], csr: bytes,
              options: OrderOptions) -> str:
    """RFC 8555 7.4: order, authorize (http-01), finalize, download."""
    session = ctx.session
    extra = {"LACME_SECTION": sid}
    url, order = create_order(ctx, sid, identifiers, options)
    logger.info("[%s] order created: %s", sid, acme_escape(url), extra=extra)
    authorizations = check_order(url, order, identifiers)
    status = order_status(order)
    if status == "pending":
        tokens: list[str] = []
        try:
            for authz_url in authorizations:
                authorize(ctx, sid, session.check_url(authz_url, "authorization"), tokens,
                          identifiers)
            # pending -> ready once every authorization is valid: poll the
            # order, not each authorization (one request per round).
            order = session.poll_order(url, until=("ready", "valid", "invalid", "processing"))
        finally:
            for token in tokens:
                ctx.link.unpublish(token)
        status = order_status(order)
    if status == "invalid":
        raise AcmeError(explain_invalid(session, url, order))
    logger.info("[%s] authorizations valid", sid, extra=extra)
    if status == "ready":
        order = session.finalize(session.check_url(order.get("finalize"), "finalize URL"), csr)
        status = order_status(order)
    if status == "processing":  # the CA is issuing: poll until valid
        order = session.poll_order(url, until=("valid", "invalid"), status="processing")
        status = order_status(order)
    if status != "valid":
        raise AcmeError(explain_invalid(session, url, order) if status == "invalid"
                        else f"{acme_escape(url)}: order is {acme_escape(status, 40)} after finalize")
    cert_url = order.get("certificate")
    if not isinstance(cert_url, str) or not cert_url:
        raise AcmeError(f"{acme_escape(url)}: valid order without a certificate URL")
    if options.alternates:
        chains = session.download_certificate_chains(session.check_url(cert_url, "certificate URL"))
        pem = chains[0]
        options.report["alternates"] = chains[1:]
    else:
        pem = session.download_certificate(session.check_url(cert_url, "certificate URL"))
    logger.info("[%s] certificate issued", sid, extra=extra)
    return pem


def order_status(order: dict) -> str:
    status = order.get("status")
    return status if isinstance(status, str) else ""


def authorize(ctx: Context, sid: str, authz_url: str, tokens: list[str],
              identifiers: list[dict]) -> None:
    """One authorization (RFC 8555 7.5): publish its http-01 answer and respond."""
    session = ctx.session
    authz = session.get(authz_url)
    ident = describe_identifier(authz.get("identifier"))
    if not is_requested(authz.get("identifier"), identifiers):
        raise AcmeError(f"{acme_escape(authz_url)}: authorization for {ident}, "
                        f"which was not requested")
    status = authz.get("status")
    if status == "valid":
        return
    if status != "pending":
        raise AcmeError(f"{acme_escape(authz_url)}: authorization for {ident} is {acme_escape(status, 40)}")
    challenge = next((c for c in authz.get("challenges") or []
                      if isinstance(c, dict) and c.get("type") == "http-01"), None)
    if challenge is None:
        raise AcmeError(f"{acme_escape(authz_url)}: no http-01 challenge for {ident}")
    token = challenge.get("token")
    if not isinstance(token, str) or not http01.is_valid_token(token):  # before anything else
        raise AcmeError(f"{acme_escape(authz_url)}: invalid http-01 token {acme_escape(repr(token), 100)}")
    chall_url = challenge.get("url")
    if not isinstance(chall_url, str) or not chall_url:
        raise AcmeError(f"{acme_escape(authz_url)}: http-01 challenge without a URL")
    session.check_url(chall_url, "challenge URL")  # before the answer is published
    content = http01.key_authorization(token, ctx.signer.thumbprint)
    ctx.link.publish(token, content, session.remaining())
    tokens.append(token)
    logger.info("[%s] challenge published for %s", sid, ident, extra={"LACME_SECTION": sid})
    if challenge.get("status", "pending") == "pending":
        session.respond_challenge(chall_url)


def is_requested(ident: Any, identifiers: list[dict]) -> bool:
    """An authorization's identifier is one of the order's (a wildcard's base name too)."""
    if not isinstance(ident, dict) or not isinstance(ident.get("value"), str):
        return False
    value = ident["value"].lower()
    for wanted in identifiers:
        name = wanted["value"].lower()
        if wanted["type"] == ident.get("type") and value in (name, name.removeprefix("*.")):
            return True
    return False


def describe_identifier(ident: Any) -> str:
    if not isinstance(ident, dict):
        return "?"
    return acme_escape(f"{ident.get('type')}:{ident.get('value')}", 120)


def explain_invalid(session: Any, url: str, order: dict) -> str:
    """Why an order is invalid: its error, or its authorizations' (fetched only now)."""
    from lacme.client.acme.session import Problem

    reasons = []
    if isinstance(order.get("error"), dict):
        reasons.append(str(Problem.from_json(order["error"])))
    authorizations = order.get("authorizations")
    for authz_url in authorizations[:10] if isinstance(authorizations, list) else []:
        try:
            authz = session.get(session.check_url(authz_url, "authorization"))
        except AcmeError:  # the order's own status is reason enough
            continue
        if authz.get("status") == "valid":
            continue
        errors = [str(Problem.from_json(c["error"])) for c in authz.get("challenges") or []
                  if isinstance(c, dict) and isinstance(c.get("error"), dict)]
        state = acme_escape(authz.get("status"), 40)
        reasons.append(f"{describe_identifier(authz.get('identifier'))} {state}"
                       + (f": {errors[0]}" if errors else ""))
    return f"{acme_escape(url)}: order invalid" + (f": {'; '.join(reasons)}" if reasons else "")


def serve_revoke(ctx: Context, msg: dict) -> bool:
    """revokeCert for each certificate (RFC 8555 7.6); True if all succeeded."""
    certificates = msg.get("certificates")
    if not isinstance(certificates, list):
        raise ProtocolError("control channel: revoke without certificates")
    reason = msg.get("reason")
    if reason is not None and not isinstance(reason, int):
        raise ProtocolError("control channel: revoke reason is not an integer")
    ok = True
    for entry in certificates:
        cid = str(entry.get("id", "?")) if isinstance(entry, dict) else "?"
        try:
            der = jws.b64u_decode(str(entry.get("der", ""))) if isinstance(entry, dict) else b""
            if not der:
                raise ProtocolError(f"control channel: certificate {cid}: no DER")
            # accountd serving the certificate's own key: sign with it (jwk)
            use_jwk = bool(ctx.signer.jwk) and entry.get("jwk_thumbprint") == ctx.signer.thumbprint
            ctx.session.revoke(der, reason, use_jwk=use_jwk)
        except (LacmeError, ValueError) as exc:
            ok = report_failure(ctx, "failed", cid, exc) and ok
            continue
        logger.info("[%s] certificate revoked", cid, extra={"LACME_SECTION": cid})
        ctx.link.send("revoked", id=cid)
    return ok


HANDLERS = {"account": serve_account, "orders": serve_orders, "revoke": serve_revoke,
            "renewal_info": serve_renewal_info}


# ---------------------------------------------------------------------------
# The program


class _ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one line, exit code 2
        raise UsageError(f"{NAME}: {message} (try --help)")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = _ArgumentParser(
        prog=NAME,
        description="The unprivileged ACME client of lacme.  Started by lacme (or systemd) "
        "with its control channel as the one inherited descriptor (sd_listen_fds).",
        epilog="Exit status: 0 success, 1 a request failed, 2 usage error.",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="be quiet")
    p.add_argument("--debug", action="store_true", help="turn on debug mode")
    p.add_argument("--version", action="version", version=f"{NAME} {__version__}")
    return p.parse_args(argv)


def control_socket() -> socket.socket:
    fds = descriptors.inherited_fds()
    if len(fds) != 1:
        raise UsageError(f"{NAME}: expects exactly one inherited descriptor, the control channel "
                         f"(got {len(fds)}); it is started by lacme")
    return socket.socket(fileno=fds[0].fd)


def receive_hello(channel: descriptors.Channel) -> tuple[dict, socket.socket]:
    line, fd = channel.recv_line(control.MAX_LINE, want_fd=True)
    if line is None:
        if fd is not None:
            socket.socket(fileno=fd).close()
        raise ProtocolError("control channel: closed before hello")
    msg = control.decode_message(line, frozenset({"hello"}))
    if fd is None:
        raise ProtocolError("control channel: hello without the accountd connection")
    accountd = socket.socket(fileno=fd)
    if msg.get("version") != control.VERSION:
        accountd.close()
        raise ProtocolError(f"control channel: unsupported version {msg.get('version')!r}")
    return msg, accountd


def receive_command(channel: descriptors.Channel) -> dict:
    line, _fd = channel.recv_line(control.MAX_LINE)
    if line is None:
        raise ProtocolError("control channel: closed by the master before a command")
    return control.decode_message(line, COMMANDS)


def drain_command(channel: descriptors.Channel) -> None:
    """Read the command we will not serve: closing a UNIX socket with unread
    data resets it, and the master would lose our error message."""
    try:
        channel.sock.settimeout(5)
        channel.recv_line(control.MAX_LINE)
    except OSError:
        pass


def run(channel: descriptors.Channel) -> int:
    """hello, one command, done.  Returns the exit code."""
    hello, accountd_sock = receive_hello(channel)
    if hello.get("debug"):
        logging.getLogger().setLevel(logging.DEBUG)
    link = ControlLink(channel)
    try:
        settings = parse_settings(hello.get("settings"))
        # Every command needs the ACME session module, whose import (requests)
        # is most of our start-up: do it now, while lacme-accountd is still
        # loading the key it greets with, rather than after the greeting.
        from lacme.client.acme import session as acme  # noqa: F401, PLC0415

        signer = AccountdSigner(accountd_sock, settings.timeout)
    except LacmeError as exc:
        accountd_sock.close()
        link.send("error", message=str(exc))  # the master reads it after its command
        drain_command(channel)
        raise
    command = receive_command(channel)
    try:
        ok = serve_command(command, settings, signer, link)
    finally:
        signer.close()
    if link.closed.is_set():
        raise ProtocolError(link.close_reason)
    if signer.broken is not None:
        logger.error("%s", signer.broken)
    link.send("done")
    return 0 if ok else 1


def serve_command(command: dict, settings: ClientSettings, signer: AccountdSigner,
                  link: ControlLink) -> bool:
    from lacme.client.acme.session import AcmeSession  # requests is costly to import: only now

    orders = command.get("orders") if command["type"] == "orders" else None
    try:
        session = AcmeSession(
            settings.server, signer,
            deadline=time.monotonic() + settings.timeout,
            verify=settings.verify,
            ssl_version=settings.ssl_version,
            ssl_cipher_list=settings.ssl_cipher_list,
            user_agent=f"{NAME}/{__version__}",
            pool_size=max(10, len(orders) if isinstance(orders, list) else 0),
        )
    except ValueError as exc:
        link.send("error", message=f"[client] {exc}")
        return False
    link.on_close(session.cancel)
    link.start_reader()
    try:
        return HANDLERS[command["type"]](Context(session, link, signer), command)
    except LacmeError as exc:
        if link.closed.is_set():
            raise ProtocolError(link.close_reason) from None
        message = str(signer.broken or exc)
        logger.debug("%s failed: %s", command["type"], message)
        link.send("error", message=message)
        return False
    finally:
        session.close()


def main(argv: list[str] | None = None) -> NoReturn:
    """The program: exits with ``run_program``'s code, without interpreter teardown."""
    code = run_program(argv)
    log.exit_now(code)


def run_program(argv: list[str] | None = None) -> int:
    """Parse the arguments, serve one command; the exit code."""
    try:
        args = parse_args(argv)
    except UsageError as exc:
        print(exc, file=sys.stderr)
        return exc.exit_code
    log.setup(NAME, quiet=args.quiet, debug=args.debug)
    try:
        channel = descriptors.Channel(control_socket())
        return run(channel)
    except LacmeError as exc:
        logger.error("%s", exc, exc_info=args.debug)
        return exc.exit_code
    except KeyboardInterrupt:
        logger.error("interrupted")
        return 1
    except Exception as exc:  # noqa: BLE001 - whatever the CA sent: one line, no traceback
        logger.error("internal error: %s", acme_escape(repr(exc)), exc_info=args.debug)
        return 1
