"""Configuration files of lacme: the INI reader, schemas and validation.

Read by the master (root) for lacme.conf and the certificate files, and by
lacme-accountd (at whatever privilege it runs) for lacme-accountd.conf.  The
files are read here; everything else is pure validation into frozen
dataclasses.  No RFC applies (RFC 1035 section 2.3.1 for host names).

The INI dialect is the original's (Perl Config::Tiny), not configparser's:
a header-less default section, case-sensitive keys (``CAfile``), no ``%``
interpolation, no quoting, no inline comments.  A line is blank, a comment
(first non-space character ``#`` or ``;``), a ``[section]`` header or a
``key = value`` pair; anything else is ``FILE:LINE: syntax error``.  A key
repeated: the later one wins; a section repeated: the two are merged.

Every error is one ConfigError whose message starts with the file, the
section and the setting: ``lacme.conf [client] timeout: not a number: "x"``.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Mapping, Sequence
from types import MappingProxyType

from lacme.config import specifiers
from lacme.config.specifiers import Identity
from lacme.core.errors import ConfigError, SpecifierError
from lacme.core.record import Record

log = logging.getLogger(__name__)

DEFAULT_MASTER_CONFIG = "%E/lacme/lacme.conf"
DEFAULT_ACCOUNTD_CONFIG = "%E/lacme/lacme-accountd.conf"


# ---------------------------------------------------------------------------
# The INI reader

class Ini(Record):
    """A parsed INI text: the default section and the named ones, in order."""

    source: str
    defaults: Mapping[str, str]
    sections: Mapping[str, Mapping[str, str]]


_BLANK = " \t\f\v"


def split_lines(text: str) -> list[str]:
    """Lines ended by CRLF, CR or LF (not the other separators of str.splitlines)."""
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def parse_ini(text: str, source: str) -> Ini:
    """Parse ``text`` (the contents of file ``source``) into an Ini."""
    defaults: dict[str, str] = {}
    sections: dict[str, dict[str, str]] = {}
    current = defaults
    for number, line in enumerate(split_lines(text), start=1):
        stripped = line.strip(_BLANK)
        if stripped == "" or stripped[0] in "#;":
            continue
        if stripped[0] == "[" and stripped[-1] == "]":
            name = stripped[1:-1].strip(_BLANK)
            if name == "":
                raise ConfigError(f"{source}:{number}: syntax error: empty section name")
            current = sections.setdefault(name, {})
            continue
        key, sep, value = stripped.partition("=")
        key = key.strip(_BLANK)
        if not sep or key == "":
            raise ConfigError(f"{source}:{number}: syntax error")
        current[key] = value.strip(_BLANK)
    return Ini(source, MappingProxyType(defaults),
               MappingProxyType({k: MappingProxyType(v) for k, v in sections.items()}))


def read_ini(path: str) -> Ini:
    """Read and parse file ``path``; ConfigError when it can't be read."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ConfigError(f"{path}: {e.strerror or e}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start})") from None
    return parse_ini(text, path)


# ---------------------------------------------------------------------------
# Value parsers shared by the schemas

def where(source: str, section: str | None, setting: str | None = None) -> str:
    """The location prefix of an error: ``FILE [SECTION] SETTING``."""
    out = source
    if section is not None:
        out += f" [{section}]"
    if setting is not None:
        out += f" {setting}"
    return out


_BOOLEANS = {"yes": True, "true": True, "on": True, "1": True,
             "no": False, "false": False, "off": False, "0": False}


def parse_bool(value: str, loc: str) -> bool:
    try:
        return _BOOLEANS[value.lower()]
    except KeyError:
        raise ConfigError(f'{loc}: not a boolean (yes/no): "{value}"') from None


def check_specifiers(value: str, loc: str) -> str:
    """``value`` unchanged, after checking its %-specifier syntax."""
    try:
        specifiers.check(value)
    except SpecifierError as e:
        raise SpecifierError(f"{loc}: {e}") from None
    return value


def expand_specifiers(value: str, ident: Identity, loc: str) -> str:
    try:
        return specifiers.expand(value, ident)
    except SpecifierError as e:
        raise SpecifierError(f"{loc}: {e}") from None


def reject_unknown(settings: Mapping[str, str], known: Sequence[str], loc: str) -> None:
    for key in settings:
        if key not in known:
            raise ConfigError(f'{loc}: unknown setting "{key}"')


# ---------------------------------------------------------------------------
# lacme-accountd.conf

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


ACCOUNTD_SETTINGS = ("privkey", "gpg", "socket", "logfile", "keyid", "quiet", "origin")
PRIVKEY_KINDS = ("file", "gpg")


def check_privkey(value: str, loc: str) -> str:
    """``file:PATH`` or ``gpg:PATH``, PATH checked for specifier syntax."""
    kind, sep, path = value.partition(":")
    if not sep or kind not in PRIVKEY_KINDS or path == "":
        raise ConfigError(f'{loc}: expected file:PATH or gpg:PATH: "{value}"')
    check_specifiers(path, loc)
    return value


def parse_origin(value: str, loc: str) -> str:
    """An https origin ``https://host[:port]``, normalised."""
    from urllib.parse import urlsplit

    try:
        url = urlsplit(value)
        port = url.port
    except ValueError:
        raise ConfigError(f'{loc}: not a URL: "{value}"') from None
    if url.scheme.lower() != "https" or not url.hostname:
        raise ConfigError(f'{loc}: not an https origin: "{value}"')
    if url.username is not None or url.path not in ("", "/") or url.query or url.fragment:
        raise ConfigError(f'{loc}: an origin is only https://host[:port]: "{value}"')
    host = url.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    return f"https://{host}" if port in (None, 443) else f"https://{host}:{port}"


def validate_accountd(ini: Ini) -> AccountdConfig:
    """Validate a parsed lacme-accountd.conf."""
    for name in ini.sections:
        raise ConfigError(f"{ini.source}: unknown section [{name}]")
    s = ini.defaults
    reject_unknown(s, ACCOUNTD_SETTINGS, ini.source)

    def get(key: str) -> str | None:
        return s.get(key) or None

    loc = lambda key: where(ini.source, None, key)  # noqa: E731
    privkey, socket, logfile = get("privkey"), get("socket"), get("logfile")
    quiet, origin = get("quiet"), get("origin")
    return AccountdConfig(
        privkey=check_privkey(privkey, loc("privkey")) if privkey else None,
        gpg=get("gpg"),
        socket=check_specifiers(socket, loc("socket")) if socket else None,
        logfile=check_specifiers(logfile, loc("logfile")) if logfile else None,
        keyid=get("keyid"),
        quiet=parse_bool(quiet, loc("quiet")) if quiet else None,
        origin=parse_origin(origin, loc("origin")) if origin else None,
    )


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


# ---------------------------------------------------------------------------
# lacme.conf: [webserver] listen

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
    host, _, port = item.partition(":")
    if is_canonical_ipv4(host) and (not port or (port.isascii() and port.isdigit())):
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
# lacme.conf

DEFAULT_CONFIG_CERTS = "lacme-certs.conf lacme-certs.conf.d/"


class ClientSettings(Record):
    """[client]: the unprivileged ACME client and how to reach accountd."""

    socket: str
    user: str = "_lacme-client"
    group: str = "nogroup"
    command: tuple[str, ...] = ("lacme-client",)
    connect: str | None = None
    server: str = "https://acme-v02.api.letsencrypt.org/directory"
    timeout: float = 30.0
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


class MasterConfig(Record):
    path: str
    config_certs: tuple[str, ...]
    client: ClientSettings
    webserver: WebserverSettings
    accountd: AccountdSettings | None
    state_directory: str | None = None  # None: lacme.master.state.default_directory()


CLIENT_SETTINGS = ("socket", "user", "group", "command", "connect", "server", "timeout",
                   "SSL_verify", "SSL_version", "SSL_cipher_list", "SSL_ca_file")
WEBSERVER_SETTINGS = ("listen", "challenge-directory", "activate", "user", "group", "command",
                      "iptables")
ACCOUNTD_SECTION_SETTINGS = ("user", "group", "command", "config", "privkey", "quiet")
MASTER_DEFAULT_SETTINGS = ("config-certs", "state-directory")


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
    loc = lambda key: where(source, "client", key)  # noqa: E731
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
    loc = lambda key: where(source, "webserver", key)  # noqa: E731
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
    loc = lambda key: where(source, "accountd", key)  # noqa: E731
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
        if name not in ("client", "webserver", "accountd"):
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
    )


def load_master_config(path: str, ident: Identity, *,
                       socket_override: str | None = None) -> MasterConfig:
    """Read and validate lacme.conf at ``path`` (already expanded).

    ``socket_override`` is the CLI's --socket: it replaces [client] socket and
    makes the [accountd] section ignored (it is still validated).
    """
    return validate_master(read_ini(path), ident, socket_override)


# ---------------------------------------------------------------------------
# lacme-certs.conf and lacme-certs.conf.d/*.conf

# Subject attribute types: the name in the setting -> the NameOID attribute.
SUBJECT_TYPES: Mapping[str, str] = MappingProxyType({
    "CN": "COMMON_NAME", "commonName": "COMMON_NAME",
    "C": "COUNTRY_NAME", "countryName": "COUNTRY_NAME",
    "ST": "STATE_OR_PROVINCE_NAME", "stateOrProvinceName": "STATE_OR_PROVINCE_NAME",
    "L": "LOCALITY_NAME", "localityName": "LOCALITY_NAME",
    "O": "ORGANIZATION_NAME", "organizationName": "ORGANIZATION_NAME",
    "OU": "ORGANIZATIONAL_UNIT_NAME", "organizationalUnitName": "ORGANIZATIONAL_UNIT_NAME",
    "street": "STREET_ADDRESS", "streetAddress": "STREET_ADDRESS",
    "postalCode": "POSTAL_CODE",
    "emailAddress": "EMAIL_ADDRESS",
    "serialNumber": "SERIAL_NUMBER",
    "DC": "DOMAIN_COMPONENT", "domainComponent": "DOMAIN_COMPONENT",
    "UID": "USER_ID", "userId": "USER_ID",
    "title": "TITLE",
    "GN": "GIVEN_NAME", "givenName": "GIVEN_NAME",
    "SN": "SURNAME", "surname": "SURNAME",
    "initials": "INITIALS",
    "pseudonym": "PSEUDONYM",
    "generationQualifier": "GENERATION_QUALIFIER",
    "dnQualifier": "DN_QUALIFIER",
    "businessCategory": "BUSINESS_CATEGORY",
    "jurisdictionC": "JURISDICTION_COUNTRY_NAME",
    "jurisdictionST": "JURISDICTION_STATE_OR_PROVINCE_NAME",
    "jurisdictionL": "JURISDICTION_LOCALITY_NAME",
    "organizationIdentifier": "ORGANIZATION_IDENTIFIER",
})
KEY_USAGES = ("digitalSignature", "nonRepudiation", "contentCommitment", "keyEncipherment", "dataEncipherment",
              "keyAgreement", "keyCertSign", "cRLSign", "encipherOnly", "decipherOnly")
TLS_FEATURES = ("status_request", "status_request_v2")
HASHES = ("sha256", "sha384", "sha512")
CERT_SETTINGS = ("certificate", "certificate-chain", "certificate-key", "min-days", "subject",
                 "subjectAltName", "CAfile", "hash", "keyUsage", "tlsfeature", "chown", "chmod",
                 "notify", "profile", "preferred-chain")
CERT_ALIASES: Mapping[str, str] = MappingProxyType({"owner": "chown", "mode": "chmod"})


class CertSection(Record):
    """One certificate to issue, from lacme-certs.conf.  Values are not %-expanded."""

    name: str
    source: str
    certificate: str | None
    certificate_chain: str | None
    certificate_key: str
    min_days: int | None = None
    subject: tuple[tuple[str, str], ...] = ()
    subject_alt_names: tuple[str, ...] = ()
    cafile: str | None = None  # None: the default bundle; "": no chain check
    hash: str | None = None
    key_usage: tuple[str, ...] = ()
    tlsfeature: tuple[str, ...] = ()
    chown: str | None = None
    chmod: int | None = None
    notify: str | None = None
    ip_addresses: tuple[str, ...] = ()  # RFC 8738 identifiers, canonical text form
    profile: str | None = None  # sent in newOrder; checked against meta.profiles
    preferred_chain: str | None = None  # issuer name of the preferred alternate chain

    @property
    def identifiers(self) -> tuple[tuple[str, str], ...]:
        """What newOrder asks for: ("dns", name) for ``names``, then ("ip", address)."""
        return tuple([("dns", n) for n in self.names] + [("ip", a) for a in self.ip_addresses])

    @property
    def names(self) -> tuple[str, ...]:
        """The identifiers to order: the CN first when it is a domain (the last
        CN if several, as OpenSSL reads it), then the DNS subjectAltNames;
        lower-cased, duplicates removed."""
        cns = [v for t, v in self.subject if t == "CN"]
        names = [cns[-1]] if cns and is_domain(cns[-1]) else []
        names.extend(self.subject_alt_names)
        return tuple(dict.fromkeys(n.lower() for n in names))


_LDH = frozenset("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz-")


def is_label(label: str) -> bool:
    """An LDH label of 1 to 63 characters, no hyphen first or last."""
    return (0 < len(label) <= 63 and label[0] != "-" and label[-1] != "-"
            and _LDH.issuperset(label))


def is_domain(name: str) -> bool:
    """LDH labels (RFC 1035 2.3.1, digits allowed first), two at least,
    253 characters at most; a leading ``*.`` wildcard label is allowed
    (and does not count as one of the two)."""
    if len(name) > 253:
        return False
    labels = name.split(".")
    if labels[0] == "*":
        labels = labels[1:]
    return len(labels) >= 2 and all(is_label(label) for label in labels)


def split_subject(value: str, loc: str) -> list[str]:
    """The ``/``-separated components of a subject, ``\\`` escaping."""
    if not value.startswith("/"):
        raise ConfigError(f'{loc}: not /type=value/...: "{value}"')
    parts, current, escaped = [], [], False
    for char in value[1:]:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == "/":
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    if escaped:
        raise ConfigError(f'{loc}: trailing backslash: "{value}"')
    parts.append("".join(current))
    return parts


def parse_subject(value: str, loc: str) -> tuple[tuple[str, str], ...]:
    """``/CN=www.example.net/O=Example`` as ``(("CN", "www..."), ("O", ...))``.

    Types are canonicalised to the short names of SUBJECT_TYPES' first keys.
    """
    out = []
    for part in split_subject(value, loc):
        kind, sep, text = part.partition("=")
        if not sep or text == "":
            raise ConfigError(f'{loc}: not type=value: "{part}"')
        if kind not in SUBJECT_TYPES:
            raise ConfigError(f'{loc}: unknown attribute type "{kind}"')
        short = next(k for k, v in SUBJECT_TYPES.items() if v == SUBJECT_TYPES[kind])
        if SUBJECT_TYPES[kind].endswith("COUNTRY_NAME") and len(text) != 2:
            raise ConfigError(f'{loc}: {kind} needs a two-letter code: "{text}"')
        out.append((short, text))
    return tuple(out)


def split_list(value: str) -> list[str]:
    return [item.strip() for item in value.split(",")]


def parse_subject_alt_names(value: str, loc: str) -> tuple[str, ...]:
    """The DNS:name entries (IP: entries are read by ``parse_ip_addresses``)."""
    out = []
    for item in split_list(value):
        kind, sep, name = item.partition(":")
        if sep and kind == "IP":
            continue
        if not sep or kind != "DNS":
            raise ConfigError(f'{loc}: only DNS:name and IP:address are supported: "{item}"')
        name = name.strip()
        if not is_domain(name):
            raise ConfigError(f'{loc}: not a domain name: "{name}"')
        out.append(name)
    return tuple(out)


def parse_ip_addresses(value: str, loc: str) -> tuple[str, ...]:
    """The IP:address entries (RFC 8738), in canonical text form, duplicates removed."""
    out = []
    for item in split_list(value):
        kind, sep, text = item.partition(":")
        if kind != "IP" or not sep:
            continue
        import ipaddress

        try:
            address = ipaddress.ip_address(text.strip())
        except ValueError:
            raise ConfigError(f'{loc}: not an IP address: "{text.strip()}"') from None
        out.append(str(address))
    return tuple(dict.fromkeys(out))


_PROFILE = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"


def parse_profile(value: str, loc: str) -> str:
    """A profile name (the keys of the directory's meta.profiles)."""
    if not re.fullmatch(_PROFILE, value):
        raise ConfigError(f'{loc}: not a profile name: "{value}"')
    return value


def parse_choices(value: str, choices: Sequence[str], loc: str) -> tuple[str, ...]:
    items = split_list(value)
    for item in items:
        if item not in choices:
            raise ConfigError(f'{loc}: unknown value "{item}" (one of {" ".join(choices)})')
    return tuple(dict.fromkeys(items))


def parse_int(value: str, loc: str) -> int:
    if not re.fullmatch(r"[+-]?[0-9]+", value):
        raise ConfigError(f'{loc}: not an integer: "{value}"')
    return int(value)


def parse_mode(value: str, loc: str) -> int:
    if not re.fullmatch(r"[0-7]{1,5}", value) or int(value, 8) > 0o7777:
        raise ConfigError(f'{loc}: not an octal mode: "{value}"')
    return int(value, 8)


def parse_owner(value: str, loc: str) -> str:
    if not re.fullmatch(r"[^\s:]+(?::[^\s:]+)?", value):
        raise ConfigError(f'{loc}: not user[:group]: "{value}"')
    return value


def parse_hash(value: str, loc: str) -> str:
    if value.lower() not in HASHES:
        raise ConfigError(f'{loc}: unknown digest "{value}" (one of {" ".join(HASHES)})')
    return value.lower()


class Setting(Record):
    """A raw value, the file it came from and its name there (maybe an alias)."""

    value: str
    source: str
    key: str = ""


def canonical_settings(settings: Mapping[str, str], source: str,
                       section: str | None) -> dict[str, Setting]:
    """``settings`` under their canonical names; unknown settings rejected."""
    out: dict[str, Setting] = {}
    for key, value in settings.items():
        name = CERT_ALIASES.get(key, key)
        if name not in CERT_SETTINGS:
            raise ConfigError(f'{where(source, section)}: unknown setting "{key}"')
        if name in out:
            raise ConfigError(f"{where(source, section, key)}: both {out[name].key} "
                              f"and {key} are set")
        out[name] = Setting(value, source, key)
    return out


DIRECTORY_README = "README"  # shipped in lacme-certs.conf.d/: skipped without a warning


def list_cert_files(item: str) -> list[str]:
    """The files of one config-certs item: itself, or a directory's *.conf."""
    if not item.endswith("/") and not os.path.isdir(item):
        if not os.path.lexists(item):
            log.debug("%s: missing, skipped", item)
            return []
        return [item]
    directory = item.rstrip("/") or "/"
    try:
        entries = sorted(os.listdir(directory))
    except FileNotFoundError:
        log.debug("%s: missing, skipped", directory)
        return []
    except OSError as e:
        raise ConfigError(f"{directory}: {e.strerror or e}") from None
    files = []
    for entry in entries:
        path = os.path.join(directory, entry)
        if entry.endswith(".conf"):
            files.append(path)
        elif entry != DIRECTORY_README:
            log.warning("%s: not *.conf, ignored", path)
    return files


def merge_cert_files(files: Sequence[str]) -> tuple[dict[str, Setting], dict[str, dict[str, Setting]]]:
    """Defaults and sections of ``files``, later files winning setting by setting."""
    defaults: dict[str, Setting] = {}
    sections: dict[str, dict[str, Setting]] = {}
    for path in files:
        ini = read_ini(path)
        defaults.update(canonical_settings(ini.defaults, path, None))
        for name, settings in ini.sections.items():
            merged = sections.setdefault(name, {"": Setting("", path)})
            merged[""] = Setting("", path)  # the last file that defined it
            merged.update(canonical_settings(settings, path, name))
    return defaults, sections


def validate_cert_section(name: str, source: str, s: Mapping[str, Setting]) -> CertSection:
    """One CertSection; ``s`` maps canonical settings to values and origins."""

    def loc(key: str) -> str:
        return where(s[key].source, name, s[key].key) if key in s else where(source, name, key)

    def get(key: str) -> str | None:
        return s[key].value if key in s and s[key].value != "" else None

    key = get("certificate-key")
    if key is None:
        raise ConfigError(f"{loc('certificate-key')}: required")
    certificate, chain = get("certificate"), get("certificate-chain")
    if certificate is None and chain is None:
        raise ConfigError(f"{where(source, name)}: certificate or certificate-chain required")
    subject = get("subject")
    if subject is None:
        raise ConfigError(f"{loc('subject')}: required")
    sans, min_days, hash_ = get("subjectAltName"), get("min-days"), get("hash")
    usage, features = get("keyUsage"), get("tlsfeature")
    chown, chmod = get("chown"), get("chmod")
    section = CertSection(
        name=name,
        source=source,
        certificate=certificate,
        certificate_chain=chain,
        certificate_key=key,
        min_days=parse_int(min_days, loc("min-days")) if min_days else None,
        subject=parse_subject(subject, loc("subject")),
        subject_alt_names=parse_subject_alt_names(sans, loc("subjectAltName")) if sans else (),
        cafile=s["CAfile"].value if "CAfile" in s else None,
        hash=parse_hash(hash_, loc("hash")) if hash_ else None,
        key_usage=parse_choices(usage, KEY_USAGES, loc("keyUsage")) if usage else (),
        tlsfeature=parse_choices(features, TLS_FEATURES, loc("tlsfeature")) if features else (),
        chown=parse_owner(chown, loc("chown")) if chown else None,
        chmod=parse_mode(chmod, loc("chmod")) if chmod else None,
        notify=get("notify"),
        ip_addresses=parse_ip_addresses(sans, loc("subjectAltName")) if sans else (),
        profile=parse_profile(get("profile") or "", loc("profile")) if get("profile") else None,
        preferred_chain=get("preferred-chain"),
    )
    if not section.identifiers:
        raise ConfigError(f"{loc('subject')}: no domain name or IP address to order "
                          "(the CN is not a domain and there is no subjectAltName)")
    return section


def load_cert_sections(items: Sequence[str]) -> dict[str, CertSection]:
    """Read the certificate files of ``items`` (absolute paths; a trailing
    ``/`` or a directory means its ``*.conf`` files in lexicographic order).

    Missing items are skipped; later files win.  A default (header-less)
    section applies to every certificate section that does not set the
    setting itself.
    """
    files = [f for item in items for f in list_cert_files(item)]
    defaults, sections = merge_cert_files(files)
    out = {}
    for name, settings in sections.items():
        source = settings[""].source
        effective = {**defaults, **{k: v for k, v in settings.items() if k != ""}}
        out[name] = validate_cert_section(name, source, effective)
    return out
