"""Whether the master announces renewals through lacme-notify@.service:
decided from the running system (systemd is PID 1, the template unit is
installed), never from how the master was started."""

from __future__ import annotations

from pathlib import Path

import pytest

from lacme.systemd import glue


@pytest.fixture
def system(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    units = tmp_path / "lib" / "systemd" / "system"
    units.mkdir(parents=True)
    monkeypatch.setattr(glue, "UNIT_PATH", (str(tmp_path / "etc"), str(units)))
    monkeypatch.setattr(glue, "BOOTED_MARK", str(tmp_path / "run-systemd-system"))
    monkeypatch.delenv("INVOCATION_ID", raising=False)
    return tmp_path


def test_notify_units_used_by_hand_when_systemd_runs_and_they_are_installed(system: Path) -> None:
    (system / "run-systemd-system").mkdir()
    (system / "lib/systemd/system/lacme-notify@.service").write_text("[Service]\n")
    assert glue.notify_units_available()


def test_notify_units_not_used_without_systemd(system: Path) -> None:
    (system / "lib/systemd/system/lacme-notify@.service").write_text("[Service]\n")
    assert not glue.notify_units_available()


def test_notify_units_not_used_when_not_installed(system: Path, monkeypatch) -> None:
    (system / "run-systemd-system").mkdir()
    monkeypatch.setenv("INVOCATION_ID", "0123456789abcdef0123456789abcdef")  # not what decides
    assert not glue.notify_units_available()
