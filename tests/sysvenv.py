"""Test helper: this tree installed into a virtual environment that any user
can run, for tests where components drop privileges.

The interpreter running the tests may live under a directory that other
users cannot traverse (e.g. a per-user Python under a 0700 home), so the
programs that run as unprivileged users come from a venv made with the
system's /usr/bin/python3 under /opt, holding a copy (not a link) of the tree.
Dependencies are installed once; the tree itself is reinstalled each session.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

from tests.lacmeenv import TREE_ROOT

# One venv per tree, so that test sessions of two work trees on one machine
# do not reinstall each other's code under the other's feet.
VENV = Path("/opt/lacme-test-venv-" + hashlib.sha256(str(TREE_ROOT).encode()).hexdigest()[:10])
SYSTEM_PYTHON = "/usr/bin/python3"


def _pip(*args: str) -> None:
    subprocess.run([str(VENV / "bin" / "python"), "-m", "pip", "-q", *args], check=True,
                   stdout=subprocess.DEVNULL, timeout=900)


def system_venv() -> Path:
    """Create (once) and refresh the venv; returns its bin directory."""
    if not (VENV / "bin" / "python").exists():
        subprocess.run([SYSTEM_PYTHON, "-m", "venv", str(VENV)], check=True, timeout=300)
        _pip("install", "--upgrade", "pip", "setuptools", "wheel")
    marker = VENV / ".deps-installed"
    if not marker.exists():
        _pip("install", "cryptography>=42", "requests>=2.28", "systemd-python>=234")
        marker.write_text("ok\n")
    _pip("install", "--no-deps", "--no-build-isolation", "--force-reinstall", str(TREE_ROOT))
    for path in (VENV, *VENV.rglob("*")):
        mode = path.lstat().st_mode
        if not path.is_symlink():
            path.chmod(mode | 0o044 | (0o011 if mode & 0o100 or path.is_dir() else 0))
    return VENV / "bin"
