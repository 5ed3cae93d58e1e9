"""%-specifier expansion, as documented in lacme(8) and lacme-accountd(1).

Used by every lacme program, at whatever privilege it runs: the master
(root) expands its settings with its own identity, and lacme-accountd's
command is expanded after the privilege drop.  ``expand`` and ``check`` are
pure: the identity (uid, names, home, environment) is passed explicitly, and
only ``Identity.current()`` looks at the running process.  No RFC applies.

    %C  /var/cache (root), else $XDG_CACHE_HOME or $HOME/.cache
    %E  /etc (root), else $XDG_CONFIG_HOME or $HOME/.config
    %g  group name          %G  group ID
    %h  home directory      %u  user name      %U  user ID
    %t  /run (root), else $XDG_RUNTIME_DIR (which must be non-empty)
    %T  $TMPDIR, or /tmp
    %%  a literal %

"Root" is the real uid 0.  An environment variable that is unset or empty
falls back to the default.
"""

from __future__ import annotations

import grp
import os
import pwd
from collections.abc import Mapping
from types import MappingProxyType

from lacme.core.errors import SpecifierError
from lacme.core.record import Factory, Record

SPECIFIER_CHARS = frozenset("CEgGhtTuU%")



class Identity(Record):
    """Who expands: real uid/gid, their names, home and environment."""

    uid: int
    gid: int
    user: str
    group: str
    home: str
    environ: Mapping[str, str] = Factory(lambda: MappingProxyType({}))

    @classmethod
    def current(cls) -> Identity:
        """The identity of this process (real ids, passwd/group entries)."""
        uid, gid = os.getuid(), os.getgid()
        try:
            pw = pwd.getpwuid(uid)
            user, home = pw.pw_name, pw.pw_dir
        except KeyError:
            user, home = "", ""
        try:
            group = grp.getgrgid(gid).gr_name
        except KeyError:
            group = ""
        return cls(uid, gid, user, group, home, MappingProxyType(dict(os.environ)))

    @property
    def is_root(self) -> bool:
        return self.uid == 0


def _env(ident: Identity, name: str) -> str:
    """The value of environment variable ``name``, "" when unset."""
    return ident.environ.get(name, "") or ""


def _home_subdir(ident: Identity, sub: str) -> str:
    home = _env(ident, "HOME") or ident.home
    return f"{home}/{sub}" if home else ""


def _expand_one(char: str, ident: Identity) -> str:
    """The expansion of ``%char``; "" when it is undefined."""
    if char == "%":
        return "%"
    if char == "C":
        return "/var/cache" if ident.is_root else (
            _env(ident, "XDG_CACHE_HOME") or _home_subdir(ident, ".cache"))
    if char == "E":
        return "/etc" if ident.is_root else (
            _env(ident, "XDG_CONFIG_HOME") or _home_subdir(ident, ".config"))
    if char == "t":
        return "/run" if ident.is_root else _env(ident, "XDG_RUNTIME_DIR")
    if char == "T":
        return _env(ident, "TMPDIR") or "/tmp"
    if char == "g":
        return ident.group
    if char == "G":
        return str(ident.gid)
    if char == "h":
        return ident.home
    if char == "u":
        return ident.user
    if char == "U":
        return str(ident.uid)
    raise AssertionError(char)


def _check_char(char: str, value: str) -> None:
    if char == "":
        raise SpecifierError(f'lone % at the end of "{value}"')
    if char not in SPECIFIER_CHARS:
        raise SpecifierError(f'unknown specifier %{char} in "{value}"')


def _split(value: str) -> list[str]:
    """``value`` as [text, char, text, char, ..., text]: each ``char`` is what
    follows a ``%`` ("" for a ``%`` at the very end)."""
    parts = []
    start = 0
    while (at := value.find("%", start)) >= 0:
        parts += [value[start:at], value[at + 1:at + 2]]
        start = at + 2
    parts.append(value[start:])
    return parts


def check(value: str) -> None:
    """Raise SpecifierError if ``value`` has an unknown or incomplete specifier."""
    for char in _split(value)[1::2]:
        _check_char(char, value)


def expand(value: str, ident: Identity) -> str:
    """``value`` with every %-specifier replaced, for identity ``ident``."""
    parts = _split(value)
    for i in range(1, len(parts), 2):
        char = parts[i]
        _check_char(char, value)
        parts[i] = _expand_one(char, ident)
        if parts[i] == "":
            raise SpecifierError(f'undefined expansion %{char} in "{value}"')
    return "".join(parts)
