"""The architecture, checked.

``lacme/`` holds one package per program (one process and privilege level
each) and shared packages.  These tests keep that picture honest: a program
package never imports another program package, the pure modules do no I/O,
only the client's HTTP transport imports requests, package ``__init__``
files are empty, and no module or class outgrows a size a reader can hold.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "lacme"
PROGRAMS = ("master", "accountd", "client", "webserver", "dns")
SHARED = ("core", "config", "protocol", "x509", "systemd")
# Modules that compute and decide but never touch the world.
PURE_PACKAGES = ("protocol",)
PURE_MODULES = ("core/errors.py", "core/record.py", "x509/der.py", "master/ari.py",
                "master/renewal.py")
IO_MODULES = {"socket", "subprocess", "requests", "urllib3", "http", "asyncio", "selectors",
              "shutil", "tempfile", "os", "pwd", "grp", "fcntl"}
REQUESTS_MODULE = "client/acme/transport.py"
MAX_MODULE_LINES = 400
MAX_CLASS_LINES = 250


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    here = module_name(path).split(".")
    if path.name != "__init__.py":
        here = here[:-1]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - node.level + 1]
                prefix = ".".join(base + ([node.module] if node.module else []))
                found.add(prefix)
                found.update(f"{prefix}.{alias.name}" for alias in node.names)
            elif node.module:
                found.add(node.module)
                found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def modules(under: str = "") -> list[Path]:
    return sorted((PACKAGE / under).rglob("*.py"))


def rel(path: Path) -> str:
    return str(path.relative_to(PACKAGE))


def test_every_package_is_a_program_or_shared():
    packages = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists())
    assert packages == sorted(PROGRAMS + SHARED)
    assert not [p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py"]


@pytest.mark.parametrize("path", modules(), ids=rel)
def test_package_init_files_are_empty(path):
    if path.name != "__init__.py":
        return
    tree = ast.parse(path.read_text())
    body = [n for n in tree.body if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))]
    if path.parent == PACKAGE:  # the top package carries the version, nothing else
        assert [type(n) for n in body] == [ast.Assign]
    else:
        assert body == []


@pytest.mark.parametrize("program", PROGRAMS)
def test_program_packages_do_not_import_each_other(program):
    others = tuple(f"lacme.{p}" for p in PROGRAMS if p != program)
    for path in modules(program):
        bad = {name for name in imports_of(path) if name.startswith(others) and
               name.split(".")[1] in PROGRAMS}
        assert not bad, f"{rel(path)} imports {sorted(bad)}"


@pytest.mark.parametrize("shared", SHARED)
def test_shared_packages_import_no_program(shared):
    programs = tuple(f"lacme.{p}" for p in PROGRAMS)
    for path in modules(shared):
        bad = {name for name in imports_of(path) if name.startswith(programs)}
        assert not bad, f"{rel(path)} imports {sorted(bad)}"


def pure_modules() -> list[Path]:
    found = [p for pkg in PURE_PACKAGES for p in modules(pkg)]
    return sorted(found + [PACKAGE / m for m in PURE_MODULES])


@pytest.mark.parametrize("path", pure_modules(), ids=rel)
def test_pure_modules_do_no_io(path):
    heads = {name.split(".")[0] for name in imports_of(path)}
    assert not heads & IO_MODULES
    assert "open(" not in path.read_text()


@pytest.mark.parametrize("path", modules(), ids=rel)
def test_only_the_client_transport_imports_requests(path):
    heads = {name.split(".")[0] for name in imports_of(path)}
    assert ("requests" in heads) == (rel(path) == REQUESTS_MODULE)


@pytest.mark.parametrize("path", modules("master"), ids=rel)
def test_master_never_imports_the_network_side(path):
    assert not {n for n in imports_of(path) if n.startswith(("lacme.client", "requests"))}


@pytest.mark.parametrize("path", modules(), ids=rel)
def test_modules_stay_readable(path):
    lines = path.read_text().count("\n")
    assert lines <= MAX_MODULE_LINES, f"{rel(path)}: {lines} lines"
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ClassDef):
            size = node.end_lineno - node.lineno + 1
            assert size <= MAX_CLASS_LINES, f"{rel(path)}: class {node.name}: {size} lines"


@pytest.mark.parametrize("program", PROGRAMS)
def test_programs_run_with_python_m(program):
    assert (PACKAGE / program / "__main__.py").exists()


SUPPRESSION = re.compile(r"#\s*(noqa(?::\s*[A-Z]+[0-9]+(?:\s*,\s*[A-Z]+[0-9]+)*)?|type:\s*ignore(?:\[[\w, -]+\])?)(.*)")


@pytest.mark.parametrize("path", modules(), ids=rel)
def test_every_suppression_says_why(path):
    # "# noqa: BLE001 - whatever the CA sent" or "# type: ignore[x]  # why": a reason on the line
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        match = SUPPRESSION.search(line)
        if match:
            reason = match.group(2).strip(" -#:")
            assert reason, f"{rel(path)}:{number}: {match.group(1)} without a reason"
