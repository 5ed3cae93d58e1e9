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
from lacme.protocol import dns01, http01, jws

#: Orders processed at once: enough to keep a CA busy, few enough that the
#: nonces returned by in-flight requests feed the next ones (no newNonce storm).
MAX_CONCURRENT_ORDERS = 12

logger = logging.getLogger("lacme-client")


class OrderOptions(Record, frozen=False):
    """The optional parts of one order; ``report`` goes back with the certificate."""

    replaces: str | None = None  # RFC 9773 certificate ID of the replaced certificate
    profile: str | None = None
    alternates: bool = False  # fetch the alternate chains too (preferred-chain)
    challenge: str | None = None  # http-01 | dns-01 | dns-persist-01 (None: by name)
    report: dict = Factory(dict)


class Prepared(Record, frozen=False):
    """An order between its authorizations and finalize: what the DNS batch waits for."""

    sid: str
    order: Order
    csr: bytes
    options: OrderOptions
    budget: int
    tokens: list = Factory(list)  # http-01 tokens published for it
    records: list = Factory(list)  # dns-01 (name, value) to be published in the batch
    respond: list = Factory(list)  # challenge URLs to answer once the batch is served


def serve_orders(ctx: Context, msg: dict) -> bool:
    """Every order of the run at once, one thread each; True if all succeeded.

    Two rounds: every order is created and its authorizations read (http-01
    answers published as they come), then the dns-01 records of every order
    go to the master in one batch (one UPDATE per zone, one propagation
    wait), then each order answers its challenges and is finalized."""
    orders = msg.get("orders")
    if not isinstance(orders, list) or not orders:
        raise ProtocolError("control channel: orders without orders")
    prepared = run_all(lambda entry: prepare_entry(ctx, entry), orders)
    ready = [p for p in prepared if p is not None]
    records = list(dict.fromkeys(r for p in ready for r in p.records))
    try:
        if records:
            try:
                ctx.link.dns_publish(records, ctx.session.remaining())
                logger.info("%d DNS record(s) published", len(records))
            except LacmeError as exc:
                for p in [p for p in ready if p.records]:
                    release(ctx, p)
                    report_failure(ctx, "failed", p.sid, exc)
                    ready.remove(p)
        results = run_all(lambda p: finish_entry(ctx, p), ready)
    finally:
        ctx.link.dns_unpublish(records)
    return len(results) == len(orders) and all(results)


def run_all(work: Any, items: list) -> list:
    """``work`` on every item, in threads when there are several."""
    if len(items) <= 1:  # no pool for one order: no thread to start and join
        return [work(item) for item in items]
    from concurrent.futures import ThreadPoolExecutor  # only for several orders

    workers = min(len(items), MAX_CONCURRENT_ORDERS)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="order") as pool:
        return list(pool.map(work, items))


def guarded(ctx: Context, sid: str, step: Any) -> Any:
    """``step()``, or None once the failure is reported to the master."""
    try:
        return step()
    except LacmeError as exc:
        report_failure(ctx, "failed", sid, exc)
    except Exception as exc:  # a bug must not stop the other orders
        logger.debug("[%s] unexpected error", sid, exc_info=True)
        report_failure(ctx, "failed", sid, LacmeError(f"internal error: {exc!r}"))
    return None


def prepare_entry(ctx: Context, entry: Any) -> Prepared | None:
    sid = str(entry.get("id", "?")) if isinstance(entry, dict) else "?"

    def step() -> Prepared:
        identifiers, csr = parse_order(entry)
        options = parse_order_options(entry)
        budget = request_budget(identifiers, ctx.session.remaining())
        with ctx.session.request_budget(budget):
            return prepare_order(ctx, sid, identifiers, csr, options, budget)

    return guarded(ctx, sid, step)


def finish_entry(ctx: Context, prepared: Prepared) -> bool:
    def step() -> bool:
        try:
            with ctx.session.request_budget(prepared.budget):
                pem = finish_order(ctx, prepared)
        finally:
            release(ctx, prepared)
        ctx.link.send("certificate", id=prepared.sid, pem=pem, **prepared.options.report)
        return True

    return guarded(ctx, prepared.sid, step) is True


def release(ctx: Context, prepared: Prepared) -> None:
    for token in prepared.tokens:
        ctx.link.unpublish(token)
    prepared.tokens.clear()


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
    challenge = entry.get("challenge")
    if challenge is not None and challenge not in dns01.CHALLENGES:
        raise ProtocolError(f"control channel: order {entry['id']}: bad challenge")
    return OrderOptions(replaces=replaces or None, profile=profile or None,
                        alternates=entry.get("alternates") is True, challenge=challenge)


def request_budget(identifiers: list[dict], seconds: float) -> int:
    """HTTP requests one order may take: a few per name and badNonce retries,
    and two rounds of polls backing off to POLL_MAX over ``seconds``."""
    from lacme.client.acme.session import POLL_MAX

    return 60 + 6 * len(identifiers) + 2 * int(max(seconds, 0) / POLL_MAX)


def prepare_order(ctx: Context, sid: str, identifiers: list[dict], csr: bytes,
                  options: OrderOptions, budget: int) -> Prepared:
    """RFC 8555 7.4 newOrder, then 7.5 each authorization's challenge chosen."""
    session = ctx.session
    # 7.4: newOrder; the CA answers with the order and its authorizations
    order = create_order(ctx, sid, identifiers, options)
    logger.info("[%s] order created: %s", sid, escape_text(order.url), extra={"LACME_SECTION": sid})
    check_order(order, identifiers)
    prepared = Prepared(sid, order, csr, options, budget)
    # 7.5: "pending": prove control of each identifier; the order turns "ready"
    if order.status == "pending":
        try:
            for authz_url in order.authorizations:
                authorize(ctx, sid, session.check_url(authz_url, "authorization"), prepared,
                          identifiers)
        except BaseException:
            release(ctx, prepared)
            raise
    return prepared


def finish_order(ctx: Context, prepared: Prepared) -> str:
    """The challenges answered (7.5.1), then finalize and download (7.4, 7.4.2)."""
    session, sid, order = ctx.session, prepared.sid, prepared.order
    extra = {"LACME_SECTION": sid}
    if order.status == "pending":
        for url in prepared.respond:
            session.respond_challenge(url)
        # pending -> ready once every authorization is valid: poll the
        # order, not each authorization (one request per round).
        order = session.poll_order(order.url, until=("ready", "valid", "invalid", "processing"))
    if order.status == "invalid":
        raise AcmeError(explain_invalid(session, order))
    logger.info("[%s] authorizations valid", sid, extra=extra)
    # 7.4: "ready": finalize with the CSR; "processing": the CA is issuing
    if order.status == "ready":
        order = session.finalize(order, prepared.csr)
    if order.status == "processing":
        order = session.poll_order(order.url, until=("valid", "invalid"), status="processing")
    if order.status != "valid":
        raise AcmeError(explain_invalid(session, order) if order.status == "invalid"
                        else f"{escape_text(order.url)}: order is {escape_text(order.status, 40)} "
                             f"after finalize")
    # 7.4.2: "valid": download the chain (and its alternates, when asked)
    pem = download_chain(session, order, prepared.options)
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


def authorize(ctx: Context, sid: str, authz_url: str, prepared: Prepared,
              identifiers: list[dict]) -> None:
    """One authorization (RFC 8555 7.5): its http-01 answer published now (8.3),
    its dns-01 record added to the batch (8.4), or its dns-persist-01 record
    expected in place; the challenge URL is answered after the batch (7.5.1)."""
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
    kind, challenge = choose_challenge(authz, prepared.options.challenge)
    if challenge is None:
        raise AcmeError(f"{escape_text(authz_url)}: no {kind} challenge for {ident}")
    if not challenge.url:
        raise AcmeError(f"{escape_text(authz_url)}: {kind} challenge without a URL")
    session.check_url(challenge.url, "challenge URL")  # before the answer is published
    if kind != "dns-persist-01":
        token = challenge.token
        if not http01.is_valid_token(token):  # before anything else
            raise AcmeError(f"{escape_text(authz_url)}: invalid {kind} token "
                            f"{escape_text(repr(token), 100)}")
        content = http01.key_authorization(token, ctx.signer.thumbprint)
    if kind == "http-01":
        ctx.link.publish(token, content, session.remaining())
        prepared.tokens.append(token)
        logger.info("[%s] challenge published for %s", sid, ident, extra={"LACME_SECTION": sid})
    elif kind == "dns-01":
        assert authz.identifier is not None
        prepared.records.append((dns01.challenge_name(authz.identifier.value),
                                 dns01.txt_value(content)))
    if challenge.status == "pending":
        prepared.respond.append(challenge.url)


def choose_challenge(authz: Authorization, wanted: str | None) -> tuple[str, Any]:
    """The section's challenge type, dns-01 for a wildcard by default;
    dns-persist-01 falls back to dns-01 when the CA does not offer it."""
    kind = wanted or ("dns-01" if authz.wildcard else "http-01")
    challenge = authz.challenge(kind)
    if challenge is None and kind == "dns-persist-01":
        kind, challenge = "dns-01", authz.challenge("dns-01")
    return kind, challenge


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
