"""pytest configuration shared by every test file: markers and Pebble fixtures.

Runs in the test process (no privilege needed).  ``pebble`` is one real
Pebble CA for the whole session; ``pebble_factory`` starts extra instances
with other PEBBLE_* knobs (fault tests) and stops them after the test.
Other fixtures live in the test files that use them.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest

TREE_ROOT = Path(__file__).resolve().parent.parent
if str(TREE_ROOT) not in sys.path:
    sys.path.insert(0, str(TREE_ROOT))  # "import lacme" without installing

from tests.pebble import Pebble, start_pebble  # noqa: E402

SESSION_ENV = {"PEBBLE_VA_NOSLEEP": "1", "PEBBLE_AUTHZREUSE": "0"}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "pebble: talks to a real Pebble ACME server")
    config.addinivalue_line("markers", "root: needs to run as root")
    config.addinivalue_line("markers", "systemd: needs systemd-nspawn")


@pytest.fixture(scope="session", autouse=True)
def private_state_directory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """No test writes the host's renewal state (/var/lib/lacme, ~/.local/state):
    every master a test starts, in or out of process, inherits STATE_DIRECTORY
    (tests of the default-directory rule set their own environment)."""
    old = os.environ.get("STATE_DIRECTORY")
    os.environ["STATE_DIRECTORY"] = str(tmp_path_factory.mktemp("lacme-state"))
    yield
    if old is None:
        os.environ.pop("STATE_DIRECTORY", None)
    else:
        os.environ["STATE_DIRECTORY"] = old


@pytest.fixture(scope="session")
def pebble(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pebble]:
    """One Pebble for the session: no validation sleeps, no authorization reuse."""
    instance = start_pebble(tmp_path_factory.mktemp("pebble"), env=SESSION_ENV)
    yield instance
    instance.stop()


@pytest.fixture
def pebble_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Pebble]]:
    """``pebble_factory(env={...}, http_port=None)`` starts a private Pebble.

    ``env`` is added to the session's knobs; instances stop after the test.
    """
    started: list[Pebble] = []

    def make(env: Mapping[str, str] = {}, http_port: int | None = None) -> Pebble:
        instance = start_pebble(
            tmp_path_factory.mktemp("pebble-extra"),
            env={**SESSION_ENV, **env}, http_port=http_port,
        )
        started.append(instance)
        return instance

    yield make
    for instance in started:
        instance.stop()
