"""lacme-accountd.conf: the account-key holder's configuration.

Read by lacme-accountd (at whatever privilege it runs) at start-up; pure
validation into an AccountdConfig.  ``parse_origin`` also checks accountd's
``--origin`` and the origin a master pins it to: an https origin (RFC 6454)
by the one rule of lacme.core.origin.
"""

from __future__ import annotations

import logging
import os

from lacme.config.defaults import DEFAULT_ACCOUNTD_CONFIG
from lacme.config.ini import (
    Ini,
    check_privkey,
    check_specifiers,
    expand_specifiers,
    parse_bool,
    read_ini,
    reject_unknown,
    where,
)
from lacme.config.specifiers import Identity
from lacme.core.errors import ConfigError
from lacme.core.record import Record

log = logging.getLogger(__name__)


class AccountdConfig(Record):
    """lacme-accountd.conf.  Path values are raw (expanded by the program).

    An empty value is the same as an absent one (None).  ``origin`` is
    normalised to ``https://host`` or ``https://host:port``.
    """

    privkey: str | None = None
    gpg: str | None = None
    socket: str | None = None
    logfile: str | None = None
    keyid: str | None = None
    quiet: bool | None = None
    origin: str | None = None
    operations: frozenset[str] | None = None  # the signing policy (lacme.accountd.policy)
    names: tuple[str, ...] | None = None
    require_scope: bool | None = None
    eab_kid: str | None = None
    eab_hmac_key: str | None = None
    eab_alg: str | None = None


ACCOUNTD_SETTINGS = ("privkey", "gpg", "socket", "logfile", "keyid", "quiet", "origin",
                     "eab-kid", "eab-hmac-key", "eab-alg", "operations", "names", "require-scope")
# What ``operations`` may list (lacme.protocol.scope.OPERATIONS, spelled out
# here: configuration parsing does not import the protocol modules).
POLICY_OPERATIONS = ("newOrder", "newAccount", "updateAccount", "deactivateAccount", "revokeCert",
                     "keyChange")


def parse_operations(value: str, loc: str) -> frozenset[str]:
    """``operations``: RFC 8555 operations separated by spaces or commas; "none" for none."""
    items = value.replace(",", " ").split()
    if items == ["none"]:
        return frozenset()
    for item in items:
        if item not in POLICY_OPERATIONS:
            raise ConfigError(f'{loc}: unknown operation "{item}" '
                              f"(one of {', '.join(POLICY_OPERATIONS)}, or none)")
    if not items:
        raise ConfigError(f"{loc}: empty")
    return frozenset(items)


def parse_names(value: str, loc: str) -> tuple[str, ...]:
    """``names``: DNS names or IP addresses an order may have; ".example.org" is any
    name under example.org."""
    items = tuple(item.lower() for item in value.replace(",", " ").split())
    for item in items:
        bare = item.removeprefix(".")
        if not bare or any(c.isspace() or c in "/*@" for c in bare) or bare.startswith("."):
            raise ConfigError(f'{loc}: not a name or a ".suffix": "{item}"')
    if not items:
        raise ConfigError(f"{loc}: empty")
    return items


def parse_origin(value: str, loc: str) -> str:
    """An https origin ``https://host[:port]``, normalised by lacme.core.origin."""
    from lacme.core.origin import is_bare_origin, origin_of  # urllib.parse: only when set

    try:
        origin = origin_of(value)
    except ValueError as e:
        raise ConfigError(f'{loc}: not an https origin ({e}): "{value}"') from None
    if not is_bare_origin(value):
        raise ConfigError(f'{loc}: an origin is only https://host[:port]: "{value}"')
    return origin


def validate_accountd(ini: Ini) -> AccountdConfig:
    """Validate a parsed lacme-accountd.conf."""
    for name in ini.sections:
        raise ConfigError(f"{ini.source}: unknown section [{name}]")
    s = ini.defaults
    reject_unknown(s, ACCOUNTD_SETTINGS, ini.source)

    def get(key: str) -> str | None:
        return s.get(key) or None

    def loc(key: str) -> str:
        return where(ini.source, None, key)

    privkey, socket, logfile = get("privkey"), get("socket"), get("logfile")
    quiet, origin = get("quiet"), get("origin")
    operations, names, require_scope = get("operations"), get("names"), get("require-scope")
    eab_key, eab_alg = get("eab-hmac-key"), get("eab-alg")
    if eab_alg is not None:
        parse_eab_alg(eab_alg, loc("eab-alg"))
    if eab_key and not get("eab-kid"):
        raise ConfigError(f"{loc('eab-hmac-key')}: needs eab-kid, the key identifier the CA gave")
    return AccountdConfig(
        privkey=check_privkey(privkey, loc("privkey")) if privkey else None,
        gpg=get("gpg"),
        socket=check_specifiers(socket, loc("socket")) if socket else None,
        logfile=check_specifiers(logfile, loc("logfile")) if logfile else None,
        keyid=get("keyid"),
        quiet=parse_bool(quiet, loc("quiet")) if quiet else None,
        origin=parse_origin(origin, loc("origin")) if origin else None,
        operations=parse_operations(operations, loc("operations")) if operations else None,
        names=parse_names(names, loc("names")) if names else None,
        require_scope=parse_bool(require_scope, loc("require-scope")) if require_scope else None,
        eab_kid=get("eab-kid"),
        eab_hmac_key=check_specifiers(eab_key, loc("eab-hmac-key")) if eab_key else None,
        eab_alg=eab_alg,
    )


def parse_eab_alg(value: str, loc: str) -> str:
    """An EAB MAC algorithm: HS256, HS384 or HS512 (RFC 7518 3.2)."""
    from lacme.protocol.eab import ALGORITHMS

    if value not in ALGORITHMS:
        raise ConfigError(f'{loc}: expected one of {", ".join(ALGORITHMS)}: "{value}"')
    return value


def load_accountd_config(path: str | None, ident: Identity) -> AccountdConfig:
    """Read lacme-accountd.conf.

    ``path`` None means the default ``%E/lacme/lacme-accountd.conf`` (expanded
    with ``ident``), which may be missing (an empty configuration); an
    explicit ``path`` (already expanded) must exist.
    """
    if path is None:
        path = expand_specifiers(DEFAULT_ACCOUNTD_CONFIG, ident, "default configuration")
        if not os.path.lexists(path):
            log.debug("%s: missing, using an empty configuration", path)
            return AccountdConfig()
    return validate_accountd(read_ini(path))

