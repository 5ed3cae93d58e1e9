"""Account key rollover (RFC 8555 7.3.5): what the new key may sign.

Shared by the client, which makes the requests, and lacme-accountd, which
holds both keys during a rollover (``--new-privkey``) and signs with the new
one only these two requests, both with the new key's ``jwk`` in the
protected header:

* the inner JWS of keyChange: header exactly ``alg``, ``jwk``, ``url`` (no
  nonce, RFC 8555 7.3.5), payload exactly ``{"account": URL, "oldKey": the
  current key's JWK}``;
* the account lookup (7.3.1): header ``alg``, ``jwk``, ``nonce``, ``url``,
  payload exactly ``{"onlyReturnExisting": true}``, which tells whether an
  interrupted rollover already reached the CA.

Everything else stays the current key's.  Pure: no I/O.
"""

from __future__ import annotations

import json

INNER_MEMBERS = frozenset({"alg", "jwk", "url"})
LOOKUP_MEMBERS = frozenset({"alg", "jwk", "nonce", "url"})
LOOKUP_PAYLOAD = {"onlyReturnExisting": True}


class RolloverError(ValueError):
    """A request the new key does not sign."""


def is_new_key_request(header: dict, new_jwk: dict | None) -> bool:
    return new_jwk is not None and header.get("jwk") == new_jwk


def check_new_key_request(header: dict, payload: bytes, *, new_alg: str, new_jwk: dict,
                          old_jwk: dict) -> None:
    """One of the two requests above, or RolloverError (the url's origin is the caller's)."""
    if header.get("alg") != new_alg:
        raise RolloverError(f"new key: alg {header.get('alg')!r} is not {new_alg}")
    if not isinstance(header.get("url"), str) or not header["url"]:
        raise RolloverError("new key: url missing or not a non-empty string")
    try:
        body = json.loads(payload) if payload else None
    except ValueError:
        raise RolloverError("new key: payload is not JSON") from None
    members = set(header)
    if members == INNER_MEMBERS:
        if (not isinstance(body, dict) or set(body) != {"account", "oldKey"}
                or not isinstance(body["account"], str) or body["oldKey"] != old_jwk):
            raise RolloverError("new key: keyChange payload is not {account, oldKey: this account key}")
        return
    if members == LOOKUP_MEMBERS:
        if body != LOOKUP_PAYLOAD:
            raise RolloverError("new key: only the onlyReturnExisting lookup is signed with a nonce")
        return
    raise RolloverError(f"new key: protected header members {sorted(members)} are neither "
                        "keyChange's inner JWS nor the account lookup")
