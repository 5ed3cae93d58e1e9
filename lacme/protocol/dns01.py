"""dns-01 and dns-persist-01 records, and the wire between the master and lacme-dns.

Pure: no I/O.  Used by the ACME client (the digest it asks for), the master
(which records it relays) and ``lacme-dns`` (which records it writes): the
rule lives here once, so the three agree.

* dns-01 (RFC 8555 8.4): a TXT record at ``_acme-challenge.<name>`` (a
  wildcard's base name) whose value is base64url(SHA-256(key authorization)),
  43 characters without padding.
* dns-persist-01 (draft-ietf-acme-dns-persist, as Pebble 2.10 validates it):
  a TXT record at ``_validation-persist.<name>`` of the form
  ``<issuer-domain-name>; accounturi=<account URL>[; policy=wildcard]``.
  The draft is still changing: its format is written only in this module.

The master <-> lacme-dns wire is one JSON object per line (the control
channel's framing, ``lacme.protocol.control``):

Master -> lacme-dns
    allow   {"names": [str]}             the names of the sections being ordered
    update  {"id": int, "add": [{"name", "value"}], "delete": [{"name", "value"}],
             "wait": bool, "persistent": bool}
                                         one batch: one UPDATE per zone, one wait;
                                         persistent: not removed when the connection ends
lacme-dns -> master
    updated {"id": int, "ok": bool, "message": str, "written": bool}
            written: some added record is in the zone (to be deleted later)
"""

from __future__ import annotations

ACME_PREFIX = "_acme-challenge."
PERSIST_PREFIX = "_validation-persist."
DIGEST_LENGTH = 43  # base64url of 32 bytes, unpadded
_B64URL = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
# 43 characters carry 258 bits: the last one encodes 4 bits and two zeros.
_LAST = frozenset("AEIMQUYcgkosw048")
_LABEL = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_")
MAX_NAME = 253
# A TXT character-string (RFC 1035 3.3.14): a record is written as one string,
# the form every validator reads the same way.
MAX_TXT = 255

CHALLENGES = ("http-01", "dns-01", "dns-persist-01")
MASTER_TYPES = frozenset({"allow", "update"})
DNS_TYPES = frozenset({"updated"})


def base_name(identifier: str) -> str:
    """The name whose control is proven: lower case, no trailing dot, no ``*.``."""
    return identifier.lower().rstrip(".").removeprefix("*.")


def is_dns_name(name: str) -> bool:
    """A host name in lower case, labels of letters, digits, ``-`` and ``_``."""
    if not name or len(name) > MAX_NAME:
        return False
    return all(0 < len(label) <= 63 and set(label) <= _LABEL and not label.startswith("-")
               and not label.endswith("-") for label in name.split("."))


def challenge_name(identifier: str) -> str:
    """Where the dns-01 TXT record goes (RFC 8555 8.4)."""
    return ACME_PREFIX + base_name(identifier)


def persist_name(identifier: str) -> str:
    """Where the dns-persist-01 TXT record goes."""
    return PERSIST_PREFIX + base_name(identifier)


def txt_value(key_authorization: str) -> str:
    """base64url(SHA-256(key authorization)) (RFC 8555 8.4)."""
    import hashlib  # lazily: lacme-certs.conf's validation imports this module

    from lacme.protocol.jws import b64u_encode

    return b64u_encode(hashlib.sha256(key_authorization.encode("ascii")).digest())


def is_digest_value(value: str) -> bool:
    """The shape of a dns-01 value: 43 base64url characters, the last one canonical."""
    return (len(value) == DIGEST_LENGTH and set(value) <= _B64URL and value[-1] in _LAST)


def persist_value(issuer: str, account_uri: str, *, wildcard: bool = False) -> str:
    """The dns-persist-01 TXT value for one issuer domain name and account."""
    value = f"{issuer.lower().rstrip('.')}; accounturi={account_uri}"
    return value + "; policy=wildcard" if wildcard else value


def parse_persist_value(value: str) -> tuple[str, str, bool] | None:
    """(issuer, account URI, wildcard) of a record this module writes; None otherwise."""
    parts = [p.strip() for p in value.split(";")]
    if len(parts) not in (2, 3) or not is_dns_name(parts[0]):
        return None
    key, _, uri = parts[1].partition("=")
    if key != "accounturi" or not uri.startswith("https://") or not uri.isprintable() \
            or " " in uri or len(uri) > 512:
        return None
    if len(parts) == 3 and parts[2] != "policy=wildcard":
        return None
    return parts[0], uri, len(parts) == 3


def check_record(name: str, value: str, allowed: frozenset[str] | set[str], *,
                 persistent: bool = False) -> str | None:
    """Why ``name``/``value`` may not be written (None: it may).

    ``allowed`` holds the base names of the sections being ordered.  A
    challenge batch (removed at the end of the run) holds only
    ``_acme-challenge.<allowed>`` with a digest; a ``persistent`` batch
    (kept: ``lacme dns-persist --publish``) only
    ``_validation-persist.<allowed>`` with a persist value.  So a record
    that stays in the zone is never a dns-01 one, and a challenge batch,
    the only kind the ACME client can ask for, never writes an
    authorization that outlives the run.
    """
    if not isinstance(name, str) or not isinstance(value, str):
        return "record name and value must be strings"
    if len(name) > MAX_NAME:  # RFC 1035 2.3.4, the prefix included
        return f"{name[:100]}...: a name longer than {MAX_NAME} characters"
    if len(value.encode()) > MAX_TXT:
        return f"{name[:100]}: a value longer than {MAX_TXT} octets (one TXT string)"
    if name.startswith(PERSIST_PREFIX if not persistent else ACME_PREFIX):
        kind = "a dns-persist-01" if persistent else "a dns-01 challenge"
        return f"{name[:100]}: not {kind} record name"
    if name.startswith(ACME_PREFIX):
        base = name[len(ACME_PREFIX):]
        if not is_digest_value(value):
            return f"{name}: value is not a key authorization digest (43 base64url characters)"
    elif name.startswith(PERSIST_PREFIX):
        base = name[len(PERSIST_PREFIX):]
        if parse_persist_value(value) is None:
            return f"{name}: value is not a dns-persist-01 record"
    else:
        return f"{name[:100]!r}: not an _acme-challenge or _validation-persist name"
    if not is_dns_name(base) or base not in allowed:
        return f"{name[:100]}: not a name of the certificates being ordered"
    return None
