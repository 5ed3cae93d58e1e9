"""The architecture, checked: program modules never import each other,
pure modules do no I/O, and only acme.py imports requests."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "lacme"
PROGRAMS = {"master", "accountd", "client", "webserver"}
PURE = {"jws", "jwk_keys", "record", "wire", "control", "http01", "specifiers", "x509dates"}
IO_MODULES = {"socket", "subprocess", "requests", "urllib3", "http", "asyncio", "selectors",
              "shutil", "tempfile"}


def imports_of(module: str) -> set[str]:
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from . import x / from .x import y
                if node.module:
                    found.add("lacme." + node.module)
                else:
                    found.update("lacme." + alias.name for alias in node.names)
            elif node.module:
                found.add(node.module)
    return found


def all_modules() -> list[str]:
    return sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")


@pytest.mark.parametrize("program", sorted(PROGRAMS))
def test_program_modules_do_not_import_each_other(program):
    others = {f"lacme.{p}" for p in PROGRAMS - {program}}
    assert not imports_of(program) & others


@pytest.mark.parametrize("module", sorted(PURE))
def test_pure_modules_do_no_io(module):
    heads = {name.split(".")[0] for name in imports_of(module)}
    assert not heads & IO_MODULES
    assert "open(" not in (PACKAGE / f"{module}.py").read_text()


@pytest.mark.parametrize("module", all_modules())
def test_only_acme_imports_requests(module):
    heads = {name.split(".")[0] for name in imports_of(module)}
    assert ("requests" in heads) == (module == "acme")


def test_master_never_imports_the_network_session():
    assert "lacme.acme" not in imports_of("master")
    assert "lacme.acme" not in imports_of("session")
