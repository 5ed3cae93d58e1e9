"""Account key rollover (RFC 8555 7.3.5), in the unprivileged ACME client.

lacme-accountd holds both keys (started with ``--new-privkey``) and signs with
the new one only keyChange's inner JWS and the account lookup
(lacme.protocol.rollover): the new key never reaches this process either.
The steps, each safe to interrupt:

1. look the account up with the current key (its kid, or onlyReturnExisting);
   if the CA no longer knows that key, look it up with the new key: a
   rollover that reached the CA before an interruption is then complete, and
   is reported as such (``already``);
2. POST keyChange: the inner JWS (new key: ``jwk``, ``url``; payload
   ``account`` and ``oldKey``) as the payload of an outer JWS signed by the
   current key with its kid;
3. look the account up with the new key: the CA must give the same URL.

Until step 2 is answered only the current key works at the CA; after it,
only the new one.  Either way one of the two keys, both on accountd's disk,
is the account's.
"""

from __future__ import annotations

import logging

from lacme.client.acme.messages import ERROR_NS, AcmeProblemError
from lacme.client.link import AccountdSigner, Context
from lacme.core.errors import AcmeError, LacmeError, ProtocolError
from lacme.core.text import escape_text
from lacme.protocol import jws, rollover

logger = logging.getLogger("lacme-client")

GONE = (ERROR_NS + "accountDoesNotExist", ERROR_NS + "unauthorized")


class NewKey:
    """The rollover's new key, as a session Signer: accountd signs with it."""

    kid = None

    def __init__(self, signer: AccountdSigner) -> None:
        assert signer.new_jwk is not None and signer.new_alg is not None
        self.alg, self.jwk = signer.new_alg, signer.new_jwk
        self.thumbprint = jws.jwk_thumbprint(self.jwk)
        self._signer = signer

    def sign(self, signing_input: bytes) -> bytes:
        return self._signer.sign(signing_input)


def lookup(ctx: Context, key: NewKey) -> tuple[str, dict]:
    """(account URL, account object) of ``key``: newAccount onlyReturnExisting (7.3.1)."""
    session = ctx.session
    url = session.resource("newAccount")
    response = session.post(url, rollover.LOOKUP_PAYLOAD, key=key)
    location = response.headers.get("Location")
    if not location:
        raise AcmeError(f"{escape_text(url, 200)}: {response.status_code} without a Location header")
    body = session.http.decode(response, url)
    return session.check_url(location, "account Location"), body if isinstance(body, dict) else {}


def serve_rollover(ctx: Context) -> tuple[str, dict, bool]:
    """(account URL, account object, already): roll the account over to the new key."""
    signer, session = ctx.signer, ctx.session
    if signer.new_jwk is None:
        raise LacmeError("account --rollover: this lacme-accountd holds no new key (lacme passes "
                         "--new-privkey to the accountd it spawns; Debian's lacme-accountd 0.8.2 "
                         "cannot roll a key over)")
    if not signer.jwk:
        raise ProtocolError("account --rollover: lacme-accountd announces a new key and no JWK "
                            "of the current one, which keyChange names (oldKey)")
    new = NewKey(signer)
    try:
        account_url = session.lookup_account()
    except AcmeProblemError as exc:
        if exc.problem.type not in GONE:
            raise
        logger.info("the current key is not an account at the CA: has the new key taken over?")
        url, body = lookup(ctx, new)
        return url, body, True
    url = session.resource("keyChange")
    inner = jws.signing_input({"alg": new.alg, "jwk": new.jwk, "url": url},
                              {"account": account_url, "oldKey": signer.jwk})
    logger.info("rolling account %s over to key %s", escape_text(account_url), new.thumbprint)
    session.post_object(url, jws.flattened(inner, new.sign(inner.encode("ascii"))))
    found, body = lookup(ctx, new)
    if found != account_url:
        raise AcmeError(f"{escape_text(url, 200)}: keyChange answered, but the new key is account "
                        f"{escape_text(found)}, not {escape_text(account_url)}")
    return found, body, False
