"""The control channel between the master and the ACME client.

Pure: messages in, bytes out, and back.  The channel is a UNIX stream socket
(a socketpair in fork mode, a socket-activated connection under systemd);
each message is one JSON object on one line.  The first message from the
master (``hello``) carries the accountd connection as SCM_RIGHTS.

Master -> client
    hello    {"version": 1, "settings": {...[client] settings...}, "debug": bool}
    account  {"register", "tos_agreed", "deactivate": bool, "contact": [str] | null,
              "eab_kid": str | null (External Account Binding, with register)}
    orders   {"orders": [{"id": str, "identifiers": [{"type", "value"}], "csr": b64url(DER),
                          "replaces": str?, "profile": str?, "alternates": bool?}]}
             challenge: "http-01" | "dns-01" | "dns-persist-01" (absent: by name)
             replaces: RFC 9773 certificate ID (the order is retried once without
             it when refused); alternates: send the alternate chains too
    renewal_info {"certificates": [{"id": str, "cert_id": str}]}   RFC 9773 4.1
    revoke   {"certificates": [{"id": str, "der": b64url(DER), "jwk_thumbprint": str}],
              "reason": int | null}
    dns_persist {"sections": [{"id": str, "identifiers": [{"type", "value"}]}]}
             the account URL and the CA's dns-persist-01 issuer domain name
    published {"token": str, "ok": bool, "message": str}   (answer to publish)
    dns_published {"id": str, "ok": bool, "message": str}  (answer to dns_publish)

Client -> master
    publish    {"token": str, "content": str}   master writes the challenge file
    unpublish  {"token": str}                   master removes it
    dns_publish {"id": str, "records": [{"name", "value"}]}
                                                dns-01 TXT records, relayed to lacme-dns
                                                (lacme.master.dnsrelay); one batch, answered
                                                once they are served, removed at the end of
                                                the run (never a dns-persist-01 record)
    dns_unpublish {"records": [{"name", "value"}]}
    persist_info {"id": str, "account": str, "issuer": str}   (answer to dns_persist)
    account    {"account": {...}, "location": str, "jwk_thumbprint": str, "kid": str}
    certificate {"id": str, "pem": str, "alternates": [str]?, "replaces_dropped": str?}
    renewal_info {"id": str, "supported": bool, "info": {...}?, "retry_after": float?}
                                                the raw renewalInfo object, validated by
                                                the master (lacme.master.ari)
    clock      {"date": float, "url": str}      the Date header (RFC 9110 6.6.1) of the
                                                first response from the CA, POSIX seconds:
                                                the master compares it to its own clock
    revoked    {"id": str}
    failed     {"id": str, "message": str, "problem": str?, "retry_after": float?}
                                                one order or revocation failed; problem:
                                                the ACME error type (RFC 8555 6.7), with the
                                                answer's Retry-After in seconds if it had one
    error      {"message": str}                 the whole command failed
    done       {}                               the command is finished
"""

from __future__ import annotations

import json
from typing import Any

from lacme.core.errors import ProtocolError

VERSION = 1
MAX_LINE = 1 << 20  # a certificate chain fits many times over

CLIENT_TYPES = frozenset(
    {"publish", "unpublish", "account", "certificate", "revoked", "renewal_info", "failed",
     "clock", "error", "done", "dns_publish", "dns_unpublish", "persist_info"}
)


def encode_message(kind: str, **fields: Any) -> bytes:
    """One message as a line of JSON."""
    return json.dumps({"type": kind, **fields}, separators=(",", ":")).encode() + b"\n"


def decode_message(line: bytes, allowed: frozenset[str]) -> dict[str, Any]:
    """Parse one line; the ``type`` must be one of ``allowed``."""
    if len(line) > MAX_LINE:
        raise ProtocolError("control channel: message too long")
    try:
        msg = json.loads(line)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"control channel: malformed message ({exc})") from None
    if not isinstance(msg, dict) or msg.get("type") not in allowed:
        kind = msg.get("type") if isinstance(msg, dict) else type(msg).__name__
        raise ProtocolError(f"control channel: unexpected message {kind!r}")
    return msg
