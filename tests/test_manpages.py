"""The man pages of man/, kept true to the code and free of lint.

Runs in the test process, unprivileged, with mandoc(1), groff(1) and man(1)
(Debian packages mandoc, groff-base, man-db).  What the pages must cover is
read from the code, never copied here: the settings each configuration
schema accepts, the options of the four programs' parsers (and the
master's and the webserver's fast paths), the master's commands, the exit
codes, the %-specifiers and the value lists.  A page must define each of
them in the marked form of mdoc(7) that this file looks for (``.It Cm
setting`` under the section's heading, ``.It Fl option``, ``.It Li %X``,
``.It 2`` under EXIT STATUS), and may define nothing else that way, so a
renamed or removed setting or option fails here too.  The INI examples of
the pages are parsed by the real configuration reader.
"""

from __future__ import annotations

import argparse
import importlib
import types
import inspect
import os
import re
import shutil
import stat
import subprocess
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest

# ---------------------------------------------------------------------------
# Where the code keeps what the pages document.  lacme/ is being split into
# packages: when a module moves, fix the module paths here and nothing else.

CODE = {
    # *_SETTINGS, CERT_ALIASES, value lists, parse_ini, validate_*: one namespace over the config modules
    "config": ("lacme.config.ini", "lacme.config.master", "lacme.config.certs", "lacme.config.accountd",
               "lacme.config.dns"),
    "specifiers": ("lacme.config.specifiers",),  # SPECIFIER_CHARS, Identity
    "errors": ("lacme.core.errors",),            # EXIT_*
    "master": ("lacme.master.main", "lacme.master.cli"),  # build_parser, quick_parse, REASONS
    "accountd": ("lacme.accountd.main",),        # parse_args
    "client": ("lacme.client.main",),            # parse_args
    "webserver": ("lacme.webserver.main",),      # _VALUE_OPTIONS, _FLAG_OPTIONS, _parse_with_argparse
    "dns": ("lacme.dns.main",),                  # parse_args
    "status": ("lacme.master.status",),          # METRICS, format_prometheus
}


def code(name: str):
    """The modules of CODE[name] as one namespace (the later module wins a clash)."""
    merged: dict = {}
    for module in CODE[name]:
        merged.update(vars(importlib.import_module(module)))
    return types.SimpleNamespace(**merged)


def schemas() -> dict[str, dict[str, tuple[str, ...]]]:
    """Per page, per heading of the page: the settings the schema accepts there."""
    config = code("config")
    return {
        "lacme.conf.5": {
            ".Ss Default section": config.MASTER_DEFAULT_SETTINGS,
            ".Ss [client] section": config.CLIENT_SETTINGS,
            ".Ss [webserver] section": config.WEBSERVER_SETTINGS,
            ".Ss [accountd] section": config.ACCOUNTD_SECTION_SETTINGS,
            ".Ss [dns] section": config.DNS_SECTION_SETTINGS,
        },
        "lacme-dns.conf.5": {
            ".Ss Default section": config.DNS_DEFAULT_SETTINGS,
            ".Ss Zone sections": config.ZONE_SETTINGS,
        },
        "lacme-certs.conf.5": {
            ".Sh SETTINGS": (*config.CERT_SETTINGS, *config.CERT_ALIASES),
        },
        "lacme-accountd.conf.5": {
            ".Sh SETTINGS": config.ACCOUNTD_SETTINGS,
        },
    }


def value_lists() -> dict[str, dict[str, Iterable[str]]]:
    """Per page, the words of the code's value lists that it must show as ``Li``."""
    config, master, status = code("config"), code("master"), code("status")
    metrics = {name for name, _, _ in status.METRICS}
    metrics |= set(re.findall(r'"(lacme_\w+)"', inspect.getsource(status.format_prometheus)))
    booleans = config._BOOLEANS
    return {
        "lacme-certs.conf.5": {"keyUsage": config.KEY_USAGES, "tlsfeature": config.TLS_FEATURES,
                               "hash": config.HASHES, "subject types": config.SUBJECT_TYPES},
        "lacme.conf.5": {"booleans": booleans},
        "lacme-accountd.conf.5": {"booleans": booleans,
                                  "privkey kinds": [k + ":" for k in config.PRIVKEY_KINDS]},
        "lacme.8": {"revocation reasons": master.REASONS, "metrics": metrics},
    }


class _Built(Exception):
    def __init__(self, parser: argparse.ArgumentParser) -> None:
        super().__init__()
        self.parser = parser


def built_parser(build: Callable[[], object]) -> argparse.ArgumentParser:
    """The parser that ``build`` constructs and then parses with (stopped there)."""
    original = argparse.ArgumentParser.parse_args

    def stop(self: argparse.ArgumentParser, *args: object, **kwargs: object) -> None:
        raise _Built(self)

    argparse.ArgumentParser.parse_args = stop  # type: ignore[method-assign]
    try:
        build()
    except _Built as built:
        return built.parser
    finally:
        argparse.ArgumentParser.parse_args = original  # type: ignore[method-assign]
    raise AssertionError(f"{build!r} built no parser")


def master_parser() -> argparse.ArgumentParser:
    return code("master").build_parser()


def parser_options(parser: argparse.ArgumentParser) -> set[str]:
    """Every option string of ``parser`` and of its sub-commands."""
    found: set[str] = set()
    for action in parser._actions:
        found.update(action.option_strings)
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found |= parser_options(sub)
    return found


def program_options() -> dict[str, set[str]]:
    """Per page, the command-line options of its program."""
    webserver = code("webserver")
    return {
        "lacme.8": parser_options(master_parser()),
        "lacme-accountd.1": parser_options(built_parser(lambda: code("accountd").parse_args([]))),
        "lacme-client.8": parser_options(built_parser(lambda: code("client").parse_args([]))),
        "lacme-dns.8": parser_options(built_parser(lambda: code("dns").parse_args([]))),
        "lacme-webserver.8": set(webserver._VALUE_OPTIONS) | set(webserver._FLAG_OPTIONS)
        | parser_options(built_parser(lambda: webserver._parse_with_argparse([]))),
    }


def master_commands() -> dict[str, list[str]]:
    """The master's commands: name -> aliases."""
    for action in master_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            commands: dict[int, list[str]] = {}
            for name, sub in action.choices.items():  # a name, then its aliases
                commands.setdefault(id(sub), []).append(name)
            return {names[0]: names[1:] for names in commands.values()}
    raise AssertionError("the master has no sub-commands")


def exit_codes() -> set[int]:
    errors = code("errors")
    return {value for name, value in vars(errors).items() if name.startswith("EXIT_")}


def specifiers() -> set[str]:
    return {"%" + char for char in code("specifiers").SPECIFIER_CHARS}


# ---------------------------------------------------------------------------
# Reading mdoc(7) source

MAN = Path(__file__).resolve().parent.parent / "man"
PAGES = sorted(p.name for p in MAN.iterdir() if re.fullmatch(r".+\.[158]", p.name))
PROGRAM_PAGES = ("lacme.8", "lacme-accountd.1", "lacme-client.8", "lacme-webserver.8", "lacme-dns.8")
DELIMITERS = set(".,:;()[]?!|")
MACRO = re.compile(r"[A-Z][a-z]{1,2}|%[A-Z]")  # Fl, Ar, Ns, ... and the %A of .Rs


def source(page: str) -> str:
    return (MAN / page).read_text(encoding="utf-8")


def words(line: str) -> list[str]:
    """The words of a macro line, quotes removed (escapes kept)."""
    return [w.strip('"') for w in re.findall(r'"[^"]*"|\S+', line)]


def unescape(word: str) -> str:
    return word.replace("\\&", "")


def part(text: str, heading: str) -> str:
    """The lines after ``heading`` (``.Sh X`` or ``.Ss X``) up to the next one of
    the same or a higher level."""
    lines = text.splitlines()
    start = lines.index(heading) + 1  # ValueError: no such heading
    stops = (".Sh ",) if heading.startswith(".Sh ") else (".Sh ", ".Ss ")
    end = next((i for i in range(start, len(lines)) if lines[i].startswith(stops)), len(lines))
    return "\n".join(lines[start:end])


def macro_arguments(line: str, macro: str) -> list[str]:
    """The words that ``macro`` applies to on a macro line (delimiters skipped)."""
    out: list[str] = []
    active = False
    for word in words(line.lstrip(".")):
        if word == macro:
            active = True
        elif MACRO.fullmatch(word):  # \\&%C is an argument, %C would be a macro
            active = False
        elif active and unescape(word) and not set(unescape(word)) <= DELIMITERS:
            out.append(unescape(word))
    return out


def defined(text: str, macro: str) -> list[str]:
    """What the ``.It`` lines of ``text`` define with ``macro`` (list items)."""
    found = []
    for line in text.splitlines():
        if line.startswith(".It "):
            found += macro_arguments(line, macro)
    return found


def used(text: str, macro: str) -> set[str]:
    """Every word ``macro`` applies to anywhere in ``text``."""
    return {w for line in text.splitlines() if line.startswith(".")
            for w in macro_arguments(line, macro)}


def defined_items(text: str) -> list[str]:
    """The first word of each ``.It`` line of ``text``."""
    return [line.split()[1] for line in text.splitlines() if line.startswith(".It ")]

def options_defined(text: str) -> set[str]:
    return {"-" + flag for flag in defined(text, "Fl")}


def literal_blocks(text: str) -> list[str]:
    """The ``.Bd -literal`` displays, roff escapes undone."""
    blocks = re.findall(r"^\.Bd -literal[^\n]*\n(.*?)^\.Ed$", text, flags=re.M | re.S)
    return [b.replace("\\e", "\\").replace("\\&", "") for b in blocks]


def run(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False, **kwargs)


def need(program: str) -> None:
    if shutil.which(program) is None:
        pytest.skip(f"{program} is not installed")


# ---------------------------------------------------------------------------
# Lint and rendering

def test_the_pages_are_there():
    assert set(PAGES) == {"lacme.8", "lacme-accountd.1", "lacme-client.8", "lacme-webserver.8",
                          "lacme.conf.5", "lacme-certs.conf.5", "lacme-accountd.conf.5",
                          "lacme-dns.8", "lacme-dns.conf.5"}


@pytest.mark.parametrize("page", PAGES)
def test_mandoc_lint_warning_level_is_silent(page):
    need("mandoc")
    done = run(["mandoc", "-T", "lint", "-W", "warning", str(MAN / page)])
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


# mandoc's style level also reports cross-references to manuals that are not
# installed on this machine (and a stale mandoc.db): that depends on the
# machine, not on the page, so those two messages alone are let through.
MACHINE_DEPENDENT = re.compile(r"referenced manual not found|outdated mandoc\.db")


@pytest.mark.parametrize("page", PAGES)
def test_mandoc_lint_style_level_is_silent(page):
    need("mandoc")
    done = run(["mandoc", "-T", "lint", "-W", "style", str(MAN / page)])
    messages = [m for m in (done.stdout + done.stderr).splitlines() if not MACHINE_DEPENDENT.search(m)]
    assert messages == []


@pytest.mark.parametrize("page", PAGES)
def test_groff_lint_is_silent(page):
    need("groff")
    done = run(["groff", "-ww", "-z", "-mandoc", str(MAN / page)])
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


@pytest.mark.parametrize("page", PAGES)
def test_man_renders_the_page(page, tmp_path):
    need("man")
    env = {**os.environ, "MANPAGER": "cat", "PAGER": "cat", "MANWIDTH": "80", "HOME": str(tmp_path)}
    done = run(["man", "-l", str(MAN / page)], env=env)
    assert (done.returncode, done.stderr) == (0, "")
    name = page.rsplit(".", 1)[0]
    assert re.search(rf"^NAME\n\s+{re.escape(name)} ", done.stdout, flags=re.M), done.stdout[:500]


@pytest.mark.parametrize("page", PAGES)
def test_mandoc_renders_the_page(page):
    need("mandoc")
    done = run(["mandoc", "-T", "utf8", str(MAN / page)])
    assert (done.returncode, done.stderr) == (0, "")
    assert "\nSEE ALSO\n" in re.sub(".\b", "", done.stdout)  # overstrike removed


@pytest.mark.parametrize("page", PAGES)
def test_title_and_cross_references(page):
    """.Dt names the file; every lacme page a page refers to exists."""
    text = source(page)
    name, section = page.rsplit(".", 1)
    assert f"\n.Dt {name.upper()} {section}\n" in text
    for ref_name, ref_section in re.findall(r"^\.Xr (lacme\S*) (\d)", text, flags=re.M):
        assert (MAN / f"{ref_name}.{ref_section}").exists(), f"{page}: Xr {ref_name} {ref_section}"


# ---------------------------------------------------------------------------
# Settings, options, commands, exit codes, specifiers, values


@pytest.mark.parametrize("page, heading", [(page, heading) for page, parts in schemas().items()
                                           for heading in parts])
def test_every_setting_is_documented_under_its_section(page, heading):
    accepted = schemas()[page][heading]
    documented = defined(part(source(page), heading), "Cm")
    assert sorted(documented) == sorted(accepted), f"{page} {heading}: .It Cm SETTING items"


@pytest.mark.parametrize("page", PROGRAM_PAGES)
def test_every_option_is_documented(page):
    options = program_options()[page]
    documented = options_defined(source(page))
    assert sorted(options - documented) == [], f"{page}: options without an .It Fl item"
    assert sorted(documented - options) == [], f"{page}: .It Fl items that are no option"


def test_the_fast_paths_know_no_option_that_the_parsers_do_not():
    """quick_parse and the webserver's _parse_simple read some command lines
    without argparse: their options must be the documented parsers' ones."""
    quick = set(re.findall(r'"(--?[a-z][a-z-]*)', inspect.getsource(code("master").quick_parse)))
    assert quick and quick <= parser_options(master_parser())
    webserver = code("webserver")
    simple = set(webserver._VALUE_OPTIONS) | set(webserver._FLAG_OPTIONS)
    assert simple <= parser_options(built_parser(lambda: webserver._parse_with_argparse([])))


def test_every_command_and_alias_is_documented():
    commands = part(source("lacme.8"), ".Sh COMMANDS")
    items = defined(commands, "Cm")
    for name, aliases in master_commands().items():
        assert name in items, f"lacme.8: no .It Cm {name}"
        for alias in aliases:
            assert alias in used(commands, "Cm"), f"lacme.8: alias {alias} of {name} not named (Cm)"
    assert set(items) == set(master_commands())
    synopsis = used(part(source("lacme.8"), ".Sh SYNOPSIS"), "Cm")
    assert synopsis == set(master_commands())


@pytest.mark.parametrize("page", PROGRAM_PAGES)
def test_every_exit_code_is_documented(page):
    items = {int(w) for w in defined_items(part(source(page), ".Sh EXIT STATUS"))}
    assert exit_codes() <= items
    if page == "lacme.8":
        assert items == exit_codes()


@pytest.mark.parametrize("page", ["lacme.8", "lacme-accountd.1"])
def test_every_specifier_is_documented(page):
    items = defined(part(source(page), ".Sh SPECIFIERS"), "Li")
    assert sorted(items) == sorted(specifiers())


@pytest.mark.parametrize("page, what", [(page, what) for page, lists in value_lists().items()
                                        for what in lists])
def test_every_value_of_a_value_list_is_documented(page, what):
    values = set(value_lists()[page][what])
    assert values and sorted(values - used(source(page), "Li")) == []


# ---------------------------------------------------------------------------
# The examples are valid configuration

INI_START = re.compile(r"\[[^\]\s]+\]|[A-Za-z][\w-]* =( .*)?")
MASTER_SECTIONS = {"client", "webserver", "accountd"}


def ini_examples() -> list[tuple[str, int, str]]:
    out = []
    for page in PAGES:
        for index, block in enumerate(literal_blocks(source(page))):
            first = next((line for line in block.splitlines() if line.strip()), "")
            if INI_START.fullmatch(first):
                out.append((page, index, block))
    return out


@pytest.mark.parametrize("page, index, block", ini_examples(),
                         ids=[f"{p}-{i}" for p, i, _ in ini_examples()])
def test_ini_examples_are_valid(page, index, block, tmp_path):
    config, ident = code("config"), code("specifiers").Identity.current()
    ini = config.parse_ini(block, f"{page} example {index}")
    if page.startswith("lacme-accountd"):
        config.validate_accountd(ini)
    elif page == "lacme-dns.conf.5":
        config.validate_dns_config(ini)
    elif page == "lacme.conf.5" or set(ini.sections) & MASTER_SECTIONS:
        config.validate_master(ini, ident, None)
    else:
        path = tmp_path / "example.conf"
        path.write_text(block, encoding="utf-8")
        assert config.load_cert_sections([str(path)])


def test_there_are_examples_of_every_configuration_file():
    pages = {page for page, _, _ in ini_examples()}
    assert {"lacme.conf.5", "lacme-certs.conf.5", "lacme-accountd.conf.5", "lacme.8"} <= pages


# ---------------------------------------------------------------------------
# make install-man


def test_make_install_man_places_every_page(tmp_path):
    need("make")
    tree = MAN.parent
    done = run(["make", "-C", str(tree), "install-man", f"DESTDIR={tmp_path}", "PREFIX=/usr"])
    assert done.returncode == 0, done.stderr
    for page in PAGES:
        installed = tmp_path / "usr/share/man" / f"man{page[-1]}" / page
        assert installed.read_bytes() == (MAN / page).read_bytes()
        assert stat.S_IMODE(installed.stat().st_mode) == 0o644
    everything = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert len(everything) == len(PAGES)


def test_make_install_installs_the_man_pages(tmp_path):
    need("make")
    done = run(["make", "-n", "-C", str(MAN.parent), "install", f"DESTDIR={tmp_path}",
                "PREFIX=/usr", "MANDIR=/opt/man"])
    assert done.returncode == 0, done.stderr
    assert f"{tmp_path}/opt/man/man8" in done.stdout
