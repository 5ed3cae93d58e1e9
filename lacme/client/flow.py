"""The order flow of lacme-client: from newOrder to the certificate, in RFC 8555 order.

Run inside the unprivileged ACME client (``lacme-client``) for the
``orders`` command: every order of the run at once, one thread each, over
one ACME session.  Each order reads top to bottom as RFC 8555 7.4 tells it:
newOrder (7.4, with RFC 9773 ``replaces`` and a profile), the authorizations
(7.5) with their http-01 answers (8.3) published by the master, polling the
order until it is ready, finalize with the CSR, polling while the CA issues,
and the download (7.4.2).  One log line per step; every error names the URL
and what came back.  The certificate is checked by the master, not here.
"""

from __future__ import annotations

import logging
from typing import Any

from lacme.client.acme.messages import AcmeProblemError, Authorization, Identifier, Order
from lacme.client.link import Context, report_failure
from lacme.core.errors import AcmeError, LacmeError, ProtocolError
from lacme.core.record import Factory, Record
from lacme.core.text import escape_text
from lacme.protocol import http01, jws

#: Orders processed at once: enough to keep a CA busy, few enough that the
#: nonces returned by in-flight requests feed the next ones (no newNonce storm).
MAX_CONCURRENT_ORDERS = 12

logger = logging.getLogger("lacme-client")


class OrderOptions(Record, frozen=False):
    """The optional parts of one order; ``report`` goes back with the certificate."""

    replaces: str | None = None  # RFC 9773 certificate ID of the replaced certificate
    profile: str | None = None
    alternates: bool = False  # fetch the alternate chains too (preferred-chain)
    report: dict = Factory(dict)


def serve_orders(ctx: Context, msg: dict) -> bool:
    """Every order of the run at once, one thread each; True if all succeeded."""
    orders = msg.get("orders")
    if not isinstance(orders, list) or not orders:
        raise ProtocolError("control channel: orders without orders")
    if len(orders) == 1:  # no pool for one order: no thread to start and join
        return serve_order(ctx, orders[0])
    from concurrent.futures import ThreadPoolExecutor  # only for several orders

    workers = min(len(orders), MAX_CONCURRENT_ORDERS)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="order") as pool:
        results = list(pool.map(lambda entry: serve_order(ctx, entry), orders))
    return all(results)


def serve_order(ctx: Context, entry: Any) -> bool:
    """One order from the master: the certificate back, or the failure."""
    sid = str(entry.get("id", "?")) if isinstance(entry, dict) else "?"
    try:
        identifiers, csr = parse_order(entry)
        options = parse_order_options(entry)
        pem = obtain_certificate(ctx, sid, identifiers, csr, options)
    except LacmeError as exc:
        return report_failure(ctx, "failed", sid, exc)
    except Exception as exc:  # a bug must not stop the other orders
        logger.debug("[%s] unexpected error", sid, exc_info=True)
        return report_failure(ctx, "failed", sid, LacmeError(f"internal error: {exc!r}"))
    ctx.link.send("certificate", id=sid, pem=pem, **options.report)
    return True


def parse_order(entry: Any) -> tuple[list[dict], bytes]:
    """The identifiers and the DER CSR of an order message."""
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


def parse_order_options(entry: dict) -> OrderOptions:
    replaces, profile = entry.get("replaces"), entry.get("profile")
    for name, value in (("replaces", replaces), ("profile", profile)):
        if value is not None and (not isinstance(value, str) or not value.isprintable()
                                  or len(value) > 512):
            raise ProtocolError(f"control channel: order {entry['id']}: bad {name}")
    return OrderOptions(replaces=replaces or None, profile=profile or None,
                        alternates=entry.get("alternates") is True)


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


def run_order(ctx: Context, sid: str, identifiers: list[dict], csr: bytes,
              options: OrderOptions) -> str:
    """RFC 8555 7.4: order, authorize (http-01), finalize, download."""
    session = ctx.session
    extra = {"LACME_SECTION": sid}
    # 7.4: newOrder; the CA answers with the order and its authorizations
    order = create_order(ctx, sid, identifiers, options)
    logger.info("[%s] order created: %s", sid, escape_text(order.url), extra=extra)
    check_order(order, identifiers)
    # 7.5: "pending": prove control of each identifier; the order turns "ready"
    if order.status == "pending":
        tokens: list[str] = []
        try:
            for authz_url in order.authorizations:
                authorize(ctx, sid, session.check_url(authz_url, "authorization"), tokens,
                          identifiers)
            # pending -> ready once every authorization is valid: poll the
            # order, not each authorization (one request per round).
            order = session.poll_order(order.url, until=("ready", "valid", "invalid", "processing"))
        finally:
            for token in tokens:
                ctx.link.unpublish(token)
    if order.status == "invalid":
        raise AcmeError(explain_invalid(session, order))
    logger.info("[%s] authorizations valid", sid, extra=extra)
    # 7.4: "ready": finalize with the CSR; "processing": the CA is issuing
    if order.status == "ready":
        order = session.finalize(order, csr)
    if order.status == "processing":
        order = session.poll_order(order.url, until=("valid", "invalid"), status="processing")
    if order.status != "valid":
        raise AcmeError(explain_invalid(session, order) if order.status == "invalid"
                        else f"{escape_text(order.url)}: order is {escape_text(order.status, 40)} "
                             f"after finalize")
    # 7.4.2: "valid": download the chain (and its alternates, when asked)
    pem = download_chain(session, order, options)
    logger.info("[%s] certificate issued", sid, extra=extra)
    return pem


def create_order(ctx: Context, sid: str, identifiers: list[dict], options: OrderOptions) -> Order:
    """newOrder with the options.  An order carrying ``replaces`` that the
    CA refuses (alreadyReplaced, a server error, anything) is sent once more
    without it: a renewal must never depend on the CA accepting the hint."""
    session = ctx.session
    if options.profile:
        check_profile(session, options.profile)
    if not options.replaces:
        return session.new_order(identifiers, profile=options.profile)
    try:
        return session.new_order(identifiers, replaces=options.replaces, profile=options.profile)
    except AcmeProblemError as exc:
        logger.warning("[%s] order replacing %s refused (%s); ordering without replaces", sid,
                       escape_text(options.replaces, 120), exc, extra={"LACME_SECTION": sid})
        options.report["replaces_dropped"] = str(exc)
        return session.new_order(identifiers, profile=options.profile)


def check_profile(session: Any, profile: str) -> None:
    """The profile is one the CA offers (its directory's meta.profiles)."""
    offered = session.profiles()
    if offered is None:
        raise AcmeError(f"{escape_text(session.directory_url)}: profile {escape_text(profile, 64)!r} "
                        f"requested, but the CA offers no profiles")
    if profile not in offered:
        names = ", ".join(sorted(escape_text(n, 64) for n in offered)) or "none"
        raise AcmeError(f"{escape_text(session.directory_url)}: unknown profile "
                        f"{escape_text(profile, 64)!r} (the CA offers: {names})")


def check_order(order: Order, identifiers: list[dict]) -> None:
    """The order is for exactly the requested identifiers.

    A CA may not add names (we would prove control of them for nothing) nor
    hand out more authorizations than there are names.
    """
    wanted = {(i["type"], i["value"].lower()) for i in identifiers}
    if order.identifiers is not None:
        names = {(i.type, i.value.lower()) for i in order.identifiers}
        if names != wanted:
            raise AcmeError(f"{escape_text(order.url)}: the order is for "
                            f"{escape_text(', '.join(sorted(v for _, v in names)), 200)}, "
                            f"not the requested identifiers")
    if len(order.authorizations) > len(wanted):
        raise AcmeError(f"{escape_text(order.url)}: {len(order.authorizations)} authorizations "
                        f"for {len(wanted)} identifiers")


def authorize(ctx: Context, sid: str, authz_url: str, tokens: list[str],
              identifiers: list[dict]) -> None:
    """One authorization (RFC 8555 7.5): publish its http-01 answer (8.3) and
    tell the CA (7.5.1); the published token goes on ``tokens``."""
    session = ctx.session
    authz: Authorization = session.authorization(authz_url)
    ident = authz.describe()
    if not is_requested(authz.identifier, identifiers):
        raise AcmeError(f"{escape_text(authz_url)}: authorization for {ident}, "
                        f"which was not requested")
    if authz.status == "valid":
        return
    if authz.status != "pending":
        raise AcmeError(f"{escape_text(authz_url)}: authorization for {ident} is "
                        f"{escape_text(authz.status, 40)}")
    challenge = authz.challenge("http-01")
    if challenge is None:
        raise AcmeError(f"{escape_text(authz_url)}: no http-01 challenge for {ident}")
    token = challenge.token
    if not http01.is_valid_token(token):  # before anything else
        raise AcmeError(f"{escape_text(authz_url)}: invalid http-01 token {escape_text(repr(token), 100)}")
    if not challenge.url:
        raise AcmeError(f"{escape_text(authz_url)}: http-01 challenge without a URL")
    session.check_url(challenge.url, "challenge URL")  # before the answer is published
    content = http01.key_authorization(token, ctx.signer.thumbprint)
    ctx.link.publish(token, content, session.remaining())
    tokens.append(token)
    logger.info("[%s] challenge published for %s", sid, ident, extra={"LACME_SECTION": sid})
    if challenge.status == "pending":
        session.respond_challenge(challenge.url)


def is_requested(ident: Identifier | None, identifiers: list[dict]) -> bool:
    """An authorization's identifier is one of the order's (a wildcard's base name too)."""
    if ident is None or not ident.value:
        return False
    value = ident.value.lower()
    for wanted in identifiers:
        name = wanted["value"].lower()
        if wanted["type"] == ident.type and value in (name, name.removeprefix("*.")):
            return True
    return False


def download_chain(session: Any, order: Order, options: OrderOptions) -> str:
    """The PEM chain of a valid order (RFC 8555 7.4.2); its alternates go in the report."""
    if not order.certificate:
        raise AcmeError(f"{escape_text(order.url)}: valid order without a certificate URL")
    cert_url = session.check_url(order.certificate, "certificate URL")
    if not options.alternates:
        return session.download_certificate(cert_url)
    chains = session.download_certificate_chains(cert_url)
    options.report["alternates"] = chains[1:]
    return chains[0]


def explain_invalid(session: Any, order: Order) -> str:
    """Why an order is invalid: its error, or its authorizations' (fetched only now)."""
    reasons = [str(order.error)] if order.error is not None else []
    for authz_url in order.authorizations[:10]:
        try:
            authz = session.authorization(session.check_url(authz_url, "authorization"))
        except AcmeError:  # the order's own status is reason enough
            continue
        if authz.status == "valid":
            continue
        errors = [str(c.error) for c in authz.challenges if c.error is not None]
        reasons.append(f"{authz.describe()} {escape_text(authz.status, 40)}"
                       + (f": {errors[0]}" if errors else ""))
    return f"{escape_text(order.url)}: order invalid" + (f": {'; '.join(reasons)}" if reasons else "")
