"""The installed units in a booted systemd: what boot sets up, what
systemd-analyze says about them, the timer.  Needs no ACME server."""

from __future__ import annotations

import os
import stat

import pytest

from tests.systemd.box import UNITDIR, VENV, Box

pytestmark = pytest.mark.systemd

UNITS = ("lacme-accountd.socket", "lacme-accountd@.service", "lacme-client.socket",
         "lacme-client@.service", "lacme-webserver.socket", "lacme-webserver.service",
         "lacme-renew.service", "lacme-renew.timer", "lacme-notify@.service",
         "lacme-reload@.service", "lacme-placeholder.service", "lacme-renew-boot.timer",
         "lacme-dns.socket", "lacme-dns.service")

# systemd-analyze security --threshold is in tenths.
THRESHOLDS = {"lacme-accountd@x.service": 2, "lacme-webserver.service": 2,
              "lacme-client@x.service": 11, "lacme-renew.service": 10,
              "lacme-placeholder.service": 10, "lacme-dns.service": 15}


def test_install_puts_every_unit_in_unitdir_with_bindir_substituted(box: Box) -> None:
    for unit in UNITS:
        text = box.host_path(f"{UNITDIR}/{unit}").read_text()
        assert "@bindir@" not in text and "@docdir@" not in text, unit
    assert f"ExecStart={VENV}/bin/lacme newOrder" in box.host_path(
        f"{UNITDIR}/lacme-renew.service").read_text()
    assert os.access(box.host_path(f"{VENV}/bin/lacme-accountd"), os.X_OK)


def test_boot_creates_sysusers_users(box: Box) -> None:
    for user in ("_lacme-client", "_lacme-www"):
        entry = box.run("getent", "passwd", user).stdout.split(":")
        assert entry[0] == user
        assert 0 < int(entry[2]) < 1000, entry  # a system user


def test_boot_creates_runtime_directories_root_only_writable(box: Box) -> None:
    for path in ("/run/lacme", "/run/lacme/challenges"):
        out = box.run("stat", "--format=%U %G %a %F", path).stdout.split()
        assert out == ["root", "root", "755", "directory"], (path, out)


@pytest.mark.parametrize("unit", ["lacme-renew.service", "lacme-placeholder.service"])
def test_generator_writes_dropin_at_boot(box: Box, unit: str) -> None:
    out = box.systemctl("cat", unit).stdout
    assert f"/run/systemd/generator/{unit}.d/50-certificate-paths.conf" in out
    paths = box.show(unit, "ReadWritePaths")["ReadWritePaths"]
    # the unit's own, or the drop-in's (which may be missing: "-")
    assert {"/run/lacme/challenges", "-/run/lacme/challenges"} & set(paths.split()), paths


def test_verify_prints_nothing(box: Box) -> None:
    names = [u.replace("@.", "@check.") for u in UNITS]
    proc = box.run("systemd-analyze", "verify", *names, check=False)
    assert proc.returncode == 0 and proc.stdout == "" and proc.stderr == "", \
        proc.stdout + proc.stderr


@pytest.mark.parametrize("unit,threshold", sorted(THRESHOLDS.items()))
def test_security_exposure_within_threshold(box: Box, unit: str, threshold: int) -> None:
    template = unit.split("@")[0] + "@.service" if "@" in unit else unit
    proc = box.run("sh", "-c", f"cd {UNITDIR} && systemd-analyze security --offline=true "
                   f"--threshold={threshold} --no-pager ./{unit}", check=False)
    last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr
    assert proc.returncode == 0, f"{template}: {last}"
    assert "Overall exposure level" in last


def test_sockets_listen_root_only_after_enable(box: Box) -> None:
    # lacme-dns.socket listens only once lacme-dns.conf (its service's credential) exists.
    box.write("/etc/lacme/lacme-dns.conf", "[example.test]\ncommand = /bin/false\n", mode=0o600)
    try:
        box.systemctl("enable", "--now", "lacme-accountd.socket", "lacme-client.socket",
                      "lacme-webserver.socket", "lacme-dns.socket")
    finally:
        box.host_path("/etc/lacme/lacme-dns.conf").unlink()
    for sock, mode in (("/run/lacme/accountd.socket", "600"), ("/run/lacme/client.socket", "600"),
                       ("/run/lacme-www.socket", "666"), ("/run/lacme/dns.socket", "600")):
        out = box.run("stat", "--format=%U %a %F", sock).stdout.strip().split(maxsplit=2)
        assert out == ["root", mode, "socket"], (sock, out)
    for unit in ("lacme-accountd.socket", "lacme-client.socket", "lacme-webserver.socket",
                 "lacme-dns.socket"):
        assert box.show(unit, "ActiveState")["ActiveState"] == "active"


def test_timer_enabled_has_next_elapse(box: Box) -> None:
    box.systemctl("enable", "--now", "lacme-renew.timer")
    props = box.show("lacme-renew.timer", "ActiveState", "NextElapseUSecRealtime",
                     "UnitFileState")
    assert props["ActiveState"] == "active"
    assert props["UnitFileState"] == "enabled"
    assert props["NextElapseUSecRealtime"] not in ("", "0", "n/a"), props
    listing = box.systemctl("list-timers", "--no-legend", "lacme-renew.timer").stdout
    assert "lacme-renew.timer" in listing and "lacme-renew.service" in listing


def test_installed_config_is_the_systemd_wiring(box: Box) -> None:
    text = box.host_path("/etc/lacme/lacme.conf").read_text()
    assert "connect = /run/lacme/client.socket" in text
    assert "socket = /run/lacme/accountd.socket" in text
    st = box.host_path("/etc/lacme/lacme.conf").stat()
    assert stat.S_IMODE(st.st_mode) == 0o644
