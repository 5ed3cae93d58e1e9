"""lacme.conf: the master's configuration ([client], [webserver], [accountd], [dns], the default section).

Read by the master (root) on every run, and by the systemd generator; pure
validation into a MasterConfig, cheap on the no-op path (ipaddress and
urllib.parse are imported only for values that need them).  No RFC applies.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Mapping

from lacme.config.defaults import DEFAULT_CONFIG_CERTS, DEFAULT_SERVER, DEFAULT_TIMEOUT
from lacme.config.dns import DnsSettings, validate_dns_section
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

# ---------------------------------------------------------------------------
# [webserver] listen

class ListenAddress(Record):
    """One address of ``[webserver] listen``: a UNIX path or an IP and port."""

    family: str  # "unix" | "inet" | "inet6"
    host: str | None = None
    port: int | None = None
    path: str | None = None

    def __str__(self) -> str:
        if self.family == "unix":
            return str(self.path)
        if self.family == "inet6":
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


HTTP_PORT = 80
# Patterns are compiled on first use (re's cache): most runs never need them.
_INET = r"(?P<host>[0-9.]+)(?::(?P<port>[0-9]+))?"
_INET6 = r"\[(?P<host>[0-9A-Fa-f:.]+)\](?::(?P<port>[0-9]+))?"


def parse_port(text: str | None, loc: str) -> int:
    if text is None:
        return HTTP_PORT
    port = int(text)
    if not 1 <= port <= 65535:
        raise ConfigError(f"{loc}: port out of range: {text}")
    return port


def parse_listen_address(item: str, loc: str) -> ListenAddress:
    if item.startswith("/"):
        return ListenAddress("unix", path=item)
    host, colon, port = item.partition(":")
    if is_canonical_ipv4(host) and (not colon or (port.isascii() and port.isdigit())):
        return ListenAddress("inet", host=host, port=parse_port(port or None, loc))
    import ipaddress

    for family, pattern, kind in (("inet", _INET, ipaddress.IPv4Address),
                                  ("inet6", _INET6, ipaddress.IPv6Address)):
        m = re.fullmatch(pattern, item)
        if m is None:
            continue
        try:
            host = str(kind(m.group("host")))
        except ValueError:
            break
        return ListenAddress(family, host=host, port=parse_port(m.group("port"), loc))
    raise ConfigError(f'{loc}: not IPV4[:PORT], [IPV6][:PORT] or an absolute path: "{item}"')


def is_canonical_ipv4(text: str) -> bool:
    """Dotted-quad IPv4 as ipaddress writes it (no leading zeros): the common
    case, checked without importing ipaddress."""
    parts = text.split(".")
    return len(parts) == 4 and all(
        0 < len(p) <= 3 and p.isascii() and p.isdigit() and (p == "0" or p[0] != "0")
        and int(p) <= 255 for p in parts)


def parse_listen(value: str, loc: str = "listen") -> tuple[ListenAddress, ...]:
    """Comma- or space-separated addresses; ``""`` is the empty tuple."""
    items = value.replace(",", " ").split()  # str.split: the whitespace of re's \s
    return tuple(parse_listen_address(i, loc) for i in items)


# ---------------------------------------------------------------------------
# [client], [webserver], [accountd] and the default section

class ClientSettings(Record):
    """[client]: the unprivileged ACME client and how to reach accountd."""

    socket: str
    user: str = "_lacme-client"
    group: str = "nogroup"
    command: tuple[str, ...] = ("lacme-client",)
    connect: str | None = None
    server: str = DEFAULT_SERVER
    timeout: float = DEFAULT_TIMEOUT
    ssl_verify: bool = True
    ssl_version: str | None = None
    ssl_cipher_list: str | None = None
    ssl_ca_file: str | None = None


class WebserverSettings(Record):
    """[webserver]: the http-01 responder, or an existing HTTPd's directory."""

    listen: tuple[ListenAddress, ...] = (ListenAddress("unix", path="/run/lacme-www.socket"),)
    challenge_directory: str | None = None
    activate: str | None = None  # a socket-activated webserver's UNIX socket
    user: str = "_lacme-www"
    group: str = "nogroup"
    command: tuple[str, ...] = ("lacme-webserver",)
    iptables: bool = False


class AccountdSettings(Record):
    """[accountd]: the lacme-accountd child.  Raw values: expanded after the drop."""

    user: str = ""
    group: str = ""
    command: tuple[str, ...] = ("lacme-accountd",)
    config: str = ""
    privkey: str = ""
    quiet: bool = True
    new_privkey: str = ""  # not a setting: lacme account --rollover --new-privkey


class MasterConfig(Record):
    path: str
    config_certs: tuple[str, ...]
    client: ClientSettings
    webserver: WebserverSettings
    accountd: AccountdSettings | None
    state_directory: str | None = None  # None: lacme.master.state.default_directory()
    run_interval: float = 3600.0  # seconds between two runs of lacme-renew.timer (hourly)
    dns: DnsSettings | None = None  # [dns]: lacme-dns (lacme.config.dns)


CLIENT_SETTINGS = ("socket", "user", "group", "command", "connect", "server", "timeout",
                   "SSL_verify", "SSL_version", "SSL_cipher_list", "SSL_ca_file")
WEBSERVER_SETTINGS = ("listen", "challenge-directory", "activate", "user", "group", "command",
                      "iptables")
ACCOUNTD_SECTION_SETTINGS = ("user", "group", "command", "config", "privkey", "quiet")
MASTER_DEFAULT_SETTINGS = ("config-certs", "state-directory", "run-interval")
DURATION_UNITS = {"": 1.0, "s": 1.0, "min": 60.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_command(value: str, loc: str) -> tuple[str, ...]:
    words = tuple(value.split())
    if not words:
        raise ConfigError(f"{loc}: empty command")
    return words


def parse_timeout(value: str, loc: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise ConfigError(f'{loc}: not a number: "{value}"') from None
    if not math.isfinite(seconds) or seconds <= 0:
        raise ConfigError(f'{loc}: not a positive number: "{value}"')
    return seconds


def parse_duration(value: str, loc: str) -> float:
    """Seconds of ``N`` or ``N`` followed by s, min (or m), h or d; positive."""
    text = value.strip()
    number = text.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = DURATION_UNITS.get(text[len(number):].strip())
    try:
        seconds = float(number) * unit if unit is not None else math.nan
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds <= 0:
        raise ConfigError(f'{loc}: not a positive duration (N, Ns, Nmin, Nh or Nd): "{value}"')
    return seconds


def parse_server(value: str, loc: str) -> str:
    if _plain_http_url(value):
        return value
    from urllib.parse import urlsplit

    url = urlsplit(value)
    if url.scheme not in ("https", "http") or not url.netloc:
        raise ConfigError(f'{loc}: not an http(s) URL: "{value}"')
    return value


def _plain_http_url(value: str) -> bool:
    """``http(s)://HOST...`` in printable ASCII without brackets: a URL that
    urlsplit would accept, recognised without importing urllib.parse."""
    rest = value[8:] if value.startswith("https://") else (
        value[7:] if value.startswith("http://") else None)
    if rest is None or not value.isascii() or not value.isprintable() or " " in value:
        return False
    netloc = rest.split("/", 1)[0].split("?", 1)[0].split("#", 1)[0]
    return netloc != "" and "[" not in netloc and "]" not in netloc


def validate_client(s: Mapping[str, str], source: str, ident: Identity,
                    socket_override: str | None) -> ClientSettings:
    def loc(key: str) -> str:
        return where(source, "client", key)

    reject_unknown(s, CLIENT_SETTINGS, where(source, "client"))
    d = ClientSettings(socket="%t/S.lacme")
    socket = socket_override if socket_override is not None else s.get("socket", d.socket)
    connect, ca_file = s.get("connect"), s.get("SSL_ca_file")
    return ClientSettings(
        socket=expand_specifiers(socket, ident, loc("socket") if socket_override is None
                                 else "--socket"),
        user=s.get("user", d.user),
        group=s.get("group", d.group),
        command=parse_command(s["command"], loc("command")) if "command" in s else d.command,
        connect=expand_specifiers(connect, ident, loc("connect")) if connect else None,
        server=parse_server(s["server"], loc("server")) if s.get("server") else d.server,
        timeout=parse_timeout(s["timeout"], loc("timeout")) if s.get("timeout") else d.timeout,
        ssl_verify=parse_bool(s["SSL_verify"], loc("SSL_verify"))
        if s.get("SSL_verify") else d.ssl_verify,
        ssl_version=s.get("SSL_version") or None,
        ssl_cipher_list=s.get("SSL_cipher_list") or None,
        ssl_ca_file=expand_specifiers(ca_file, ident, loc("SSL_ca_file")) if ca_file else None,
    )


def validate_webserver(s: Mapping[str, str], source: str, ident: Identity) -> WebserverSettings:
    def loc(key: str) -> str:
        return where(source, "webserver", key)

    reject_unknown(s, WEBSERVER_SETTINGS, where(source, "webserver"))
    d = WebserverSettings()
    listen = parse_listen(s["listen"], loc("listen")) if "listen" in s else d.listen
    directory = s.get("challenge-directory")
    if not listen and not directory:
        raise ConfigError(f"{loc('challenge-directory')}: required when listen is empty")
    return WebserverSettings(
        listen=listen,
        challenge_directory=expand_specifiers(directory, ident, loc("challenge-directory"))
        if directory else None,
        activate=parse_activate(s["activate"], loc("activate"), ident) if s.get("activate") else None,
        user=s.get("user", d.user),
        group=s.get("group", d.group),
        command=parse_command(s["command"], loc("command")) if "command" in s else d.command,
        iptables=parse_bool(s["iptables"], loc("iptables")) if s.get("iptables") else d.iptables,
    )


def parse_activate(value: str, where_: str, ident: Identity) -> str:
    """[webserver] activate: the absolute path of a UNIX socket (%-expanded)."""
    path = expand_specifiers(value.strip(), ident, where_)
    if not path.startswith("/"):
        raise ConfigError(f"{where_}: {value!r} is not an absolute path")
    return path


def validate_accountd_section(s: Mapping[str, str], source: str) -> AccountdSettings:
    def loc(key: str) -> str:
        return where(source, "accountd", key)

    reject_unknown(s, ACCOUNTD_SECTION_SETTINGS, where(source, "accountd"))
    d = AccountdSettings()
    command = parse_command(s["command"], loc("command")) if "command" in s else d.command
    for word in command:
        check_specifiers(word, loc("command"))
    privkey = s.get("privkey", "")
    if privkey:
        check_privkey(privkey, loc("privkey"))
    return AccountdSettings(
        user=s.get("user", d.user),
        group=s.get("group", d.group),
        command=command,
        config=check_specifiers(s.get("config", d.config), loc("config")),
        privkey=privkey,
        quiet=parse_bool(s["quiet"], loc("quiet")) if s.get("quiet") else d.quiet,
    )


def resolve_config_certs(value: str, base: str, ident: Identity, loc: str) -> tuple[str, ...]:
    """The items of ``config-certs``, expanded and made absolute (``/`` kept)."""
    out = []
    for item in value.split():
        item = expand_specifiers(item, ident, loc)
        out.append(item if item.startswith("/") else os.path.join(base, item))
    return tuple(out)


def validate_master(ini: Ini, ident: Identity, socket_override: str | None) -> MasterConfig:
    for name in ini.sections:
        if name not in ("client", "webserver", "accountd", "dns"):
            raise ConfigError(f"{ini.source}: unknown section [{name}]")
    reject_unknown(ini.defaults, MASTER_DEFAULT_SETTINGS, ini.source)
    empty: Mapping[str, str] = {}
    base = os.path.dirname(os.path.abspath(ini.source))
    accountd = ini.sections.get("accountd")
    settings = validate_accountd_section(accountd, ini.source) if accountd is not None else None
    if settings is not None and settings.privkey and socket_override is None:
        log.warning("%s: deprecated, set privkey in lacme-accountd.conf",
                    where(ini.source, "accountd", "privkey"))
    return MasterConfig(
        path=ini.source,
        config_certs=resolve_config_certs(ini.defaults.get("config-certs", DEFAULT_CONFIG_CERTS),
                                          base, ident, where(ini.source, None, "config-certs")),
        client=validate_client(ini.sections.get("client", empty), ini.source, ident,
                               socket_override),
        webserver=validate_webserver(ini.sections.get("webserver", empty), ini.source, ident),
        accountd=None if socket_override is not None else settings,
        state_directory=expand_specifiers(ini.defaults["state-directory"], ident,
                                          where(ini.source, None, "state-directory"))
        if ini.defaults.get("state-directory") else None,
        run_interval=parse_duration(ini.defaults["run-interval"],
                                    where(ini.source, None, "run-interval"))
        if ini.defaults.get("run-interval") else MasterConfig._defaults["run_interval"],
        dns=validate_dns_section(ini.sections["dns"], ini.source) if "dns" in ini.sections else None,
    )


def load_master_config(path: str, ident: Identity, *,
                       socket_override: str | None = None) -> MasterConfig:
    """Read and validate lacme.conf at ``path`` (already expanded).

    ``socket_override`` is the CLI's --socket: it replaces [client] socket and
    makes the [accountd] section ignored (it is still validated).
    """
    return validate_master(read_ini(path), ident, socket_override)
