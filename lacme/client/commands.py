"""The commands of lacme-client other than orders: account, revoke, renewal_info.

Run inside the unprivileged ACME client (``lacme-client``), one command per
run, over one ACME session.  ``account``: newAccount or its lookup, contact
update, deactivation (RFC 8555 7.3); ``revoke``: revokeCert with the account
key or the certificate's own key (7.6); ``renewal_info``: the CA's suggested
renewal windows (RFC 9773 4.1).  Each answer goes back to the master.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any

from lacme.client.acme.messages import Account
from lacme.client.link import Context, report_failure
from lacme.core.errors import LacmeError, ProtocolError
from lacme.core.text import escape_text
from lacme.protocol import eab, jws

logger = logging.getLogger("lacme-client")


def serve_account(ctx: Context, msg: dict) -> bool:
    """newAccount (or lookup), then update contacts or deactivate (RFC 8555 7.3)."""
    session = ctx.session
    if msg.get("rollover"):
        from lacme.client.rollover import serve_rollover  # one command in years: only then

        url, body, already = serve_rollover(ctx)
        ctx.link.send("account", account=body, location=url, rolled_over=True, already=already,
                      jwk_thumbprint=jws.jwk_thumbprint(ctx.signer.new_jwk or {}), kid="")
        return True
    register = bool(msg.get("register"))
    contact = [str(c) for c in msg.get("contact") or []]
    if register:
        logger.info("requesting a new registration%s", f" for {', '.join(contact)}" if contact else "")
    if session.kid and not register:
        # accountd serves a key id (and no JWK, which newAccount needs): the
        # account is that URL, read with POST-as-GET (RFC 8555 7.3, 6.3)
        account = Account(url=session.kid, body=session.get(session.kid), created=False)
    else:
        binding = external_binding(ctx, str(msg.get("eab_kid") or "")) if register else None
        account = session.new_account(contact=contact, tos_agreed=bool(msg.get("tos_agreed")),
                                      only_existing=not register, binding=binding)
    tos = session.terms_of_service()
    if tos:
        line = f"Terms of Service: {escape_text(tos)}"
        print(line, file=sys.stderr, flush=True)  # noqa: T201 - for the user, whatever the log level
    logger.info("account %s: %s", "created" if account.created else "found", escape_text(account.url))
    body = account.body
    if contact and not account.created:
        body = session.update_account({"contact": contact})
        logger.info("account contacts updated")
    if msg.get("deactivate"):
        body = session.deactivate_account()
        logger.info("account deactivated")
    elif not isinstance(body.get("status"), str):  # RFC 8555 7.3.1 has the body; some CAs do not
        body = session.get(account.url)
    ctx.link.send("account", account=body, location=account.url,
                  jwk_thumbprint=ctx.signer.thumbprint, kid=ctx.signer.kid or "")
    return True


def external_binding(ctx: Context, wanted_kid: str) -> Callable[[str], dict] | None:
    """How newAccount gets its externalAccountBinding (RFC 8555 7.3.4), if it
    needs one: accountd MACs the binding over the account's JWK; the MAC key
    never leaves it.  ``wanted_kid``: the key identifier the user named
    (``lacme account --eab-kid``), which must be accountd's.  Checked before
    anything is signed: a CA that requires a binding and none available, or a
    binding that accountd cannot make, is one error line."""
    signer, session = ctx.signer, ctx.session
    if wanted_kid and signer.eab_kid is None:
        raise LacmeError(f"--eab-kid {escape_text(wanted_kid)}: this lacme-accountd holds no External "
                         "Account Binding MAC key (set eab-kid and eab-hmac-key in its "
                         "lacme-accountd.conf; Debian's lacme-accountd 0.8.2 cannot bind)")
    if wanted_kid and wanted_kid != signer.eab_kid:
        raise LacmeError(f"--eab-kid {escape_text(wanted_kid)}: lacme-accountd's MAC key is for "
                         f"eab-kid {escape_text(signer.eab_kid or '')}")
    if signer.eab_kid is None:
        if session.external_account_required():
            raise LacmeError(f"{escape_text(session.directory_url)}: the CA requires External Account "
                             "Binding (meta.externalAccountRequired): set eab-kid and eab-hmac-key "
                             "in lacme-accountd.conf")
        return None
    kid, alg = signer.eab_kid, signer.eab_alg or eab.DEFAULT_ALGORITHM
    if not signer.jwk:
        raise LacmeError("External Account Binding: lacme-accountd serves a key id and no JWK")

    def bind(url: str) -> dict:
        text = eab.binding_input(alg, kid, url, signer.jwk)
        return jws.flattened(text, signer.sign(text.encode("ascii")))

    logger.info("binding the new account to external account %s (%s)", escape_text(kid), alg)
    return bind


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


def serve_dns_persist(ctx: Context, msg: dict) -> bool:
    """The account URL and the CA's issuer domain names, for dns-persist-01 records.

    The CA names itself only in a dns-persist-01 challenge
    (draft-ietf-acme-dns-persist: ``issuer-domain-names``): one order per
    section (RFC 8555 7.4), read, and its authorizations deactivated (7.5.2)."""
    sections = msg.get("sections")
    if not isinstance(sections, list):
        raise ProtocolError("control channel: dns_persist without sections")
    session = ctx.session
    account = session.lookup_account()
    ok = True
    for entry in sections:
        sid = str(entry.get("id", "?")) if isinstance(entry, dict) else "?"
        try:
            identifiers = entry.get("identifiers") if isinstance(entry, dict) else None
            if not isinstance(identifiers, list) or not identifiers:
                raise ProtocolError(f"control channel: dns_persist {sid}: no identifiers")
            issuer = persist_issuer(session, identifiers)
        except LacmeError as exc:
            ok = report_failure(ctx, "failed", sid, exc) and ok
            continue
        ctx.link.send("persist_info", id=sid, account=account, issuer=issuer)
    return ok


def persist_issuer(session: object, identifiers: list) -> str:
    from lacme.core.errors import AcmeError

    s: Any = session
    order = s.new_order([{"type": str(i.get("type")), "value": str(i.get("value"))}
                         for i in identifiers if isinstance(i, dict)])
    issuer = ""
    for authz_url in order.authorizations:
        url = s.check_url(authz_url, "authorization")
        authz = s.authorization(url)
        challenge = authz.challenge("dns-persist-01")
        if challenge is not None and challenge.issuer_domain_names and not issuer:
            issuer = challenge.issuer_domain_names[0]
        # the pending authorizations are left to expire: accountd's scope for
        # this run signs no deactivation (a {"status": "deactivated"} payload)
    if not issuer:
        raise AcmeError(f"{escape_text(order.url)}: the CA offers no dns-persist-01 challenge")
    return escape_text(issuer, 253)
