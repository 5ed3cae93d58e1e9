"""The DNS component's settings: ``[dns]`` of lacme.conf and lacme-dns.conf.

``[dns]`` (read by the master, root) says how to reach ``lacme-dns``: the
command and user to spawn it as, or the UNIX socket of a socket-activated
unit, and where its own configuration is.  lacme-dns.conf (read by
``lacme-dns`` only, unprivileged: it holds the TSIG secrets) has one section
per zone: the primary server to send RFC 2136 UPDATEs to and the TSIG key
(RFC 8945; hmac-sha256, -384 or -512), or a hook ``command``, and the
servers to ask before a challenge is answered.  Pure validation into
records; errors name the file, section and setting.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from lacme.config.ini import Ini, reject_unknown, where
from lacme.core.errors import ConfigError
from lacme.core.record import Record
from lacme.protocol.dns01 import is_dns_name

DNS_SECTION_SETTINGS = ("command", "user", "group", "config", "connect")
DNS_DEFAULT_SETTINGS = ("timeout", "ttl")
ZONE_SETTINGS = ("server", "key-name", "key-algorithm", "key-secret", "check", "command")
TSIG_ALGORITHMS = ("hmac-sha256", "hmac-sha384", "hmac-sha512")
DEFAULT_DNS_CONFIG = "/etc/lacme/lacme-dns.conf"
DEFAULT_PROPAGATION_TIMEOUT = 120.0
DEFAULT_TTL = 60
DNS_PORT = 53


class DnsSettings(Record):
    """lacme.conf [dns]: the lacme-dns child, or a socket-activated one (``connect``)."""

    command: tuple[str, ...] = ("lacme-dns",)
    user: str = "_lacme-dns"
    group: str = "nogroup"
    config: str = ""  # lacme-dns --config; "" lets lacme-dns use its default or credential
    connect: str | None = None


def validate_dns_section(s: Mapping[str, str], source: str) -> DnsSettings:
    reject_unknown(s, DNS_SECTION_SETTINGS, where(source, "dns"))
    d = DnsSettings()
    command = tuple(s["command"].split()) if "command" in s else d.command
    if not command:
        raise ConfigError(f"{where(source, 'dns', 'command')}: empty command")
    connect = s.get("connect") or None
    if connect is not None and not connect.startswith("/"):
        raise ConfigError(f"{where(source, 'dns', 'connect')}: not an absolute path: {connect!r}")
    return DnsSettings(command=command, user=s.get("user", d.user), group=s.get("group", d.group),
                       config=s.get("config", d.config), connect=connect)


def parse_challenge(value: str | None, loc: str) -> str | None:
    """lacme-certs.conf ``challenge``: http-01, dns-01 or dns-persist-01."""
    from lacme.protocol.dns01 import CHALLENGES

    if not value:
        return None
    if value not in CHALLENGES:
        raise ConfigError(f'{loc}: not one of {", ".join(CHALLENGES)}: "{value}"')
    return value


def check_challenge(section: Any, loc: str) -> None:
    """A section that asks for http-01 has no wildcard (RFC 8555 7.1.3: dns-01 only)."""
    if section.challenge == "http-01" and section.dns_names:
        raise ConfigError(f"{loc}: http-01 cannot prove {section.dns_names[0]} "
                          "(a wildcard needs dns-01 or dns-persist-01)")


# ---------------------------------------------------------------------------
# lacme-dns.conf

class Server(Record):
    host: str
    port: int = DNS_PORT

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


class Zone(Record):
    """One zone of lacme-dns.conf: RFC 2136 with TSIG, or a hook command."""

    name: str
    source: str
    server: Server | None = None
    key_name: str = ""
    key_algorithm: str = "hmac-sha256"
    key_secret: bytes = b""
    check: tuple[Server, ...] = ()  # () : the zone's NS addresses, port 53
    command: str | None = None


class DnsConfig(Record):
    source: str
    zones: Mapping[str, Zone]
    timeout: float = DEFAULT_PROPAGATION_TIMEOUT
    ttl: int = DEFAULT_TTL

    def zone_for(self, name: str) -> Zone | None:
        """The configured zone holding ``name``: the longest suffix."""
        labels = name.split(".")
        for i in range(len(labels)):
            zone = self.zones.get(".".join(labels[i:]))
            if zone is not None:
                return zone
        return None


def parse_server(value: str, loc: str) -> Server:
    """``IP``, ``IP:PORT`` or ``[IPv6]:PORT`` (an address: lacme-dns resolves nothing)."""
    import ipaddress

    text, port = value.strip(), DNS_PORT
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest:
            if not rest.startswith(":") or not rest[1:].isdigit():
                raise ConfigError(f"{loc}: not IP[:PORT] or [IPv6]:PORT: {value!r}")
            port = int(rest[1:])
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
        if not port_text.isdigit():
            raise ConfigError(f"{loc}: not IP[:PORT] or [IPv6]:PORT: {value!r}")
        port = int(port_text)
    else:
        host = text
    try:
        host = str(ipaddress.ip_address(host))
    except ValueError:
        raise ConfigError(f"{loc}: not an IP address: {value!r}") from None
    if not 1 <= port <= 65535:
        raise ConfigError(f"{loc}: port out of range: {value!r}")
    return Server(host, port)


def parse_zone(name: str, s: Mapping[str, str], source: str) -> Zone:
    def loc(key: str | None = None) -> str:
        return where(source, name, key)

    reject_unknown(s, ZONE_SETTINGS, loc())
    zone_name = name.lower().rstrip(".")
    if not is_dns_name(zone_name):
        raise ConfigError(f"{loc()}: not a zone name")
    check = tuple(parse_server(v, loc("check")) for v in s.get("check", "").replace(",", " ").split())
    command = s.get("command") or None
    if command is not None:
        if not command.startswith("/"):
            raise ConfigError(f"{loc('command')}: not an absolute path: {command!r}")
        extra = [k for k in ("server", "key-name", "key-secret") if k in s]
        if extra:
            raise ConfigError(f"{loc(extra[0])}: not with command (a hook zone)")
        return Zone(zone_name, source, check=check, command=command)
    if not s.get("server"):
        raise ConfigError(f"{loc('server')}: required (or command)")
    algorithm = s.get("key-algorithm", "hmac-sha256").lower()
    if algorithm not in TSIG_ALGORITHMS:
        raise ConfigError(f"{loc('key-algorithm')}: not one of {', '.join(TSIG_ALGORITHMS)}: "
                          f"{algorithm!r}")
    key_name = s.get("key-name", "").lower().rstrip(".")
    server = parse_server(s["server"], loc("server"))
    if not key_name and not s.get("key-secret"):
        # No key: a zone only looked up (the CNAME of _acme-challenge is followed
        # into a zone that has one); writing into it is an error.
        return Zone(zone_name, source, server=server, check=check)
    if not is_dns_name(key_name):
        raise ConfigError(f"{loc('key-name')}: required with key-secret, a DNS name")
    import base64
    import binascii

    try:
        secret = base64.b64decode(s.get("key-secret", ""), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(f"{loc('key-secret')}: not base64") from None
    if len(secret) < 16:
        raise ConfigError(f"{loc('key-secret')}: required, base64 of 16 bytes at least")
    return Zone(zone_name, source, server=server, key_name=key_name, key_algorithm=algorithm,
                key_secret=secret, check=check)


def validate_dns_config(ini: Ini) -> DnsConfig:
    reject_unknown(ini.defaults, DNS_DEFAULT_SETTINGS, ini.source)
    zones = {}
    for name, settings in ini.sections.items():
        zone = parse_zone(name, settings, ini.source)
        if zone.name in zones:
            raise ConfigError(f"{where(ini.source, name)}: zone {zone.name} defined twice")
        zones[zone.name] = zone
    if not zones:
        raise ConfigError(f"{ini.source}: no zone section")
    timeout, ttl = DEFAULT_PROPAGATION_TIMEOUT, DEFAULT_TTL
    if "timeout" in ini.defaults:
        try:
            timeout = float(ini.defaults["timeout"])
        except ValueError:
            timeout = -1.0
        if not math.isfinite(timeout) or timeout <= 0:
            raise ConfigError(f"{where(ini.source, None, 'timeout')}: not a positive number")
    if "ttl" in ini.defaults:
        text = ini.defaults["ttl"]
        if not text.isdigit() or not 0 <= int(text) <= 86400:
            raise ConfigError(f"{where(ini.source, None, 'ttl')}: not 0 to 86400 seconds")
        ttl = int(text)
    return DnsConfig(ini.source, zones, timeout=timeout, ttl=ttl)
