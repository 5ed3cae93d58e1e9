"""Fixtures of the systemd-mode tests (tests/systemd/): a booted box.

The harness itself is tests/systemd/box.py.  ``box`` is one container for
the whole session, torn down (powered off, cgroups and mounts gone) at the
end.
"""

from __future__ import annotations

import shutil
from typing import Iterator

import pytest

from tests.systemd.box import VENV, Box, boot_box


@pytest.fixture(scope="session")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Box]:
    """lacme installed with ``make install`` into a booted systemd."""
    instance = boot_box(tmp_path_factory.mktemp("box"))
    try:
        yield instance
    finally:
        instance.stop()
        shutil.rmtree(instance.root / VENV.lstrip("/"), ignore_errors=True)  # the big part
