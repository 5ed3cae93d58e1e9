"""lacme-certs.conf and lacme-certs.conf.d/*.conf: the certificates to issue.

Read by the master (root) on every run, and by the systemd generator; the
files are read here, the rest is pure validation into CertSection records.
Names follow RFC 1035 section 2.3.1 (host names) and RFC 8738 (IP
identifiers); the subject, keyUsage, tlsfeature and hash vocabularies are
the ones lacme.x509.csr turns into a PKCS#10 request.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Collection, Mapping, Sequence
from types import MappingProxyType

from lacme.config.dns import check_challenge, parse_challenge
from lacme.config.ini import read_ini, where
from lacme.core.errors import ConfigError
from lacme.core.record import Record

log = logging.getLogger(__name__)

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
# keyUsage bits, by their x509v3_config(5ssl) names -> the KeyUsage argument.
KEY_USAGES: Mapping[str, str] = MappingProxyType({
    "digitalSignature": "digital_signature",
    "nonRepudiation": "content_commitment",
    "contentCommitment": "content_commitment",
    "keyEncipherment": "key_encipherment",
    "dataEncipherment": "data_encipherment",
    "keyAgreement": "key_agreement",
    "keyCertSign": "key_cert_sign",
    "cRLSign": "crl_sign",
    "encipherOnly": "encipher_only",
    "decipherOnly": "decipher_only",
})
# The TLSFeatureType members and the hashes lacme.x509.csr signs with, by name.
TLS_FEATURES = ("status_request", "status_request_v2")
HASHES = ("sha256", "sha384", "sha512")
CERT_SETTINGS = ("certificate", "certificate-chain", "certificate-key", "min-days", "subject",
                 "subjectAltName", "CAfile", "hash", "keyUsage", "tlsfeature", "chown", "chmod",
                 "notify", "profile", "preferred-chain", "challenge")
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
    challenge: str | None = None  # http-01 | dns-01 | dns-persist-01; None: http-01, dns-01 for *.

    @property
    def dns_names(self) -> tuple[str, ...]:
        """The names proven over DNS: all, or the wildcards (RFC 8555 7.1.3)."""
        return self.names if self.challenge in ("dns-01", "dns-persist-01") else tuple(
            n for n in self.names if n.startswith("*."))

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


def parse_choices(value: str, choices: Collection[str], loc: str) -> tuple[str, ...]:
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
        challenge=parse_challenge(get("challenge"), loc("challenge")),
    )
    check_challenge(section, loc("challenge"))
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
