"""Tests of lacme.config.specifiers: the %-specifier table for root and others."""

from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lacme.config.specifiers import Identity, check, expand
from lacme.core.errors import ConfigError, SpecifierError

ROOT = Identity(0, 0, "root", "root", "/root", {"HOME": "/root", "XDG_RUNTIME_DIR": "/run/user/0",
                                                "XDG_CONFIG_HOME": "/x/config"})
USER_ENV = {"HOME": "/home/alice", "XDG_RUNTIME_DIR": "/run/user/1000",
            "XDG_CONFIG_HOME": "/home/alice/cfg", "XDG_CACHE_HOME": "/home/alice/cache",
            "TMPDIR": "/var/tmp/alice"}
USER = Identity(1000, 1001, "alice", "staff", "/home/alice", USER_ENV)


@pytest.mark.parametrize("spec,root,user", [
    ("%C", "/var/cache", "/home/alice/cache"),
    ("%E", "/etc", "/home/alice/cfg"),
    ("%g", "root", "staff"),
    ("%G", "0", "1001"),
    ("%h", "/root", "/home/alice"),
    ("%t", "/run", "/run/user/1000"),
    ("%T", "/tmp", "/var/tmp/alice"),
    ("%u", "root", "alice"),
    ("%U", "0", "1000"),
    ("%%", "%", "%"),
])
def test_expand_table_root_and_user(spec: str, root: str, user: str) -> None:
    assert expand(spec, ROOT) == root
    assert expand(spec, USER) == user


def test_expand_root_ignores_xdg_variables() -> None:
    assert expand("%E/lacme/lacme.conf", ROOT) == "/etc/lacme/lacme.conf"
    assert expand("%t/S.lacme", ROOT) == "/run/S.lacme"


@pytest.mark.parametrize("value", [None, ""])
def test_expand_xdg_fallback_when_unset_or_empty(value: str | None) -> None:
    env = {"HOME": "/home/bob"}
    if value is not None:
        env.update(XDG_CONFIG_HOME=value, XDG_CACHE_HOME=value, TMPDIR=value)
    bob = Identity(1002, 1002, "bob", "bob", "/nonexistent", env)
    assert expand("%E", bob) == "/home/bob/.config"
    assert expand("%C", bob) == "/home/bob/.cache"
    assert expand("%T", bob) == "/tmp"


@pytest.mark.parametrize("value", [None, ""])
def test_expand_t_undefined_for_user_without_runtime_dir(value: str | None) -> None:
    env = {"HOME": "/home/bob"} if value is None else {"HOME": "/home/bob", "XDG_RUNTIME_DIR": ""}
    bob = Identity(1002, 1002, "bob", "bob", "/home/bob", env)
    with pytest.raises(SpecifierError, match=r'^undefined expansion %t in "%t/S.lacme"$'):
        expand("%t/S.lacme", bob)


def test_expand_keeps_surrounding_text() -> None:
    assert expand("a%u-b%%c%U", USER) == "aalice-b%c1000"


def test_expand_unknown_specifier_fails() -> None:
    with pytest.raises(SpecifierError, match=r'^unknown specifier %x in "/a/%x"$'):
        expand("/a/%x", USER)


def test_expand_lone_percent_fails() -> None:
    with pytest.raises(SpecifierError, match="lone %"):
        expand("abc%", USER)
    with pytest.raises(SpecifierError):
        expand("%%%", USER)


def test_check_accepts_known_and_rejects_unknown() -> None:
    check("%C%E%g%G%h%t%T%u%U%%")
    with pytest.raises(SpecifierError, match="%q"):
        check("x%q")
    with pytest.raises(SpecifierError):
        check("x%")


def test_specifier_error_is_config_error() -> None:
    with pytest.raises(ConfigError):
        check("%Z")


@given(st.text())
def test_expand_fails_exactly_when_check_fails(text: str) -> None:
    # every specifier is defined for USER: only syntax can make expand fail
    try:
        check(text)
    except SpecifierError:
        with pytest.raises(SpecifierError):
            expand(text, USER)
    else:
        out = expand(text, USER)
        if "%" not in text:
            assert out == text


@given(st.text(alphabet=st.characters(blacklist_characters="%")))
def test_expand_of_doubled_percent_is_literal(text: str) -> None:
    assert expand(text.replace("a", "%%"), USER) == text.replace("a", "%")


def test_current_identity_matches_process() -> None:
    ident = Identity.current()
    assert ident.uid == os.getuid() and ident.gid == os.getgid()
    assert expand("%U:%G", ident) == f"{os.getuid()}:{os.getgid()}"
    assert ident.environ.get("PATH") == os.environ.get("PATH")


def _expand_by_pattern(value: str, ident: Identity) -> str:
    """The reference: every ``%(.?)`` match (DOTALL) replaced in turn."""
    import re

    from lacme.config.specifiers import _check_char, _expand_one

    def substitute(m: re.Match[str]) -> str:
        _check_char(m.group(1), value)
        out = _expand_one(m.group(1), ident)
        if out == "":
            raise SpecifierError(f'undefined expansion %{m.group(1)} in "{value}"')
        return out

    return re.sub(r"%(.?)", substitute, value, flags=re.DOTALL)


@given(st.text(alphabet="%%%CEgGhtTuUx\n/é", max_size=16))
def test_expand_is_the_pattern_substitution(text: str) -> None:
    ident = Identity(1000, 1000, "u", "g", "/home/u", {"HOME": "/home/u", "XDG_RUNTIME_DIR": ""})
    try:
        expected: str | Exception = _expand_by_pattern(text, ident)
    except SpecifierError as exc:
        expected = exc
    try:
        got: str | Exception = expand(text, ident)
    except SpecifierError as exc:
        got = exc
    assert str(got) == str(expected) and type(got) is type(expected)
