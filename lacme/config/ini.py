"""The INI reader of lacme's configuration files, and the value parsers the schemas share.

Pure apart from ``read_ini``, which reads one file: used by the master
(root) for lacme.conf and the certificate files, by lacme-accountd (at
whatever privilege it runs) for lacme-accountd.conf, and by the systemd
generator.  No RFC applies.

The INI dialect is the original's (Perl Config::Tiny), not configparser's:
a header-less default section, case-sensitive keys (``CAfile``), no ``%``
interpolation, no quoting, no inline comments.  A line is blank, a comment
(first non-space character ``#`` or ``;``), a ``[section]`` header or a
``key = value`` pair; anything else is ``FILE:LINE: syntax error``.  A key
repeated: the later one wins; a section repeated: the two are merged.

Every error is one ConfigError whose message starts with the file, the
section and the setting (``where``): ``lacme.conf [client] timeout: not a number: "x"``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType

from lacme.config import specifiers
from lacme.config.specifiers import Identity
from lacme.core.errors import ConfigError, SpecifierError
from lacme.core.record import Record

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


# privkey of lacme-accountd.conf, and the deprecated [accountd] privkey of lacme.conf.
PRIVKEY_KINDS = ("file", "gpg")


def check_privkey(value: str, loc: str) -> str:
    """``file:PATH`` or ``gpg:PATH``, PATH checked for specifier syntax."""
    kind, sep, path = value.partition(":")
    if not sep or kind not in PRIVKEY_KINDS or path == "":
        raise ConfigError(f'{loc}: expected file:PATH or gpg:PATH: "{value}"')
    check_specifiers(path, loc)
    return value
