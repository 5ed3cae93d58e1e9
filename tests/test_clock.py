"""Clock skew: the master's clock shifted with Debian's libfaketime (faketime(1))
against a real Pebble, which does not backdate notBefore.

Only the master runs under faketime: it starts its components with a clean
environment (no LD_PRELOAD), so the client, accountd and webserver keep the
real clock, as Pebble does.  The master compares the CA's Date header (passed
on by the client, lacme.protocol.control ``clock``) with its own clock, and
checks the issued certificate against it (lacme.x509.chain, with the
tolerance of lacme.x509.validity).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography import x509

from lacme.master.clock import ClockCheck
from lacme.x509.validity import CLOCK_TOLERANCE, describe_offset
from tests.lacmeenv import TREE_ROOT, LacmeSetup, unique_name, write_key

pytestmark = [pytest.mark.pebble,
              pytest.mark.skipif(shutil.which("faketime") is None,
                                 reason="faketime missing: run scripts/setup-debian.sh")]

CLOCK_WARNING = "this machine's clock is"


@pytest.fixture(scope="module")
def account(pebble, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("clock-account")
    key = write_key(root / "account.key", "p256")
    setup = LacmeSetup(root=root / "conf", pebble=pebble, account_key=key)
    setup.write()
    assert setup.run("account", "--register", "--tos-agreed").returncode == 0
    return key


@pytest.fixture
def setup(tmp_path, pebble, account) -> LacmeSetup:
    s = LacmeSetup(root=tmp_path / "etc", pebble=pebble, account_key=account)
    s.add_section("www", [unique_name()], key_kind="p256")
    s.write()
    return s


def run_shifted(setup: LacmeSetup, shift: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The master under ``faketime -f SHIFT`` (e.g. -5m, +3h); monotonic time is real."""
    argv = ["faketime", "-f", shift, sys.executable, "-m", "lacme.master",
            f"--config={setup.conf}", *args]
    env = {**os.environ, "PYTHONPATH": str(TREE_ROOT), "FAKETIME_DONT_FAKE_MONOTONIC": "1"}
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env,
                          cwd=str(setup.root))


def cert_bytes(setup: LacmeSetup) -> bytes:
    return Path(setup.sections["www"]["certificate"]).read_bytes()


def clock_warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if CLOCK_WARNING in line]


def test_clock_minutes_behind_still_installs_without_a_warning(setup):
    done = run_shifted(setup, "-5m", "newOrder")
    assert done.returncode == 0, done.stderr
    cert = x509.load_pem_x509_certificate(cert_bytes(setup))
    # Pebble does not backdate: for this master the certificate starts ~5 min from now
    master_now = time.time() - 300
    assert cert.not_valid_before_utc.timestamp() > master_now + 240
    assert clock_warnings(done.stderr) == []


def test_clock_hours_behind_refuses_and_warns_once_naming_the_clock(setup):
    assert setup.run("newOrder").returncode == 0  # the real clock: installed
    before = cert_bytes(setup)
    done = run_shifted(setup, "-3h", "newOrder", "--force")
    assert done.returncode == 1, done.stderr
    warnings = clock_warnings(done.stderr)
    assert len(warnings) == 1, done.stderr
    assert "behind the CA's (Date header of https://" in warnings[0] and "NTP" in warnings[0]
    assert "is the clock right?" in done.stderr  # the refusal says why, in one line
    assert cert_bytes(setup) == before  # the old certificate, byte for byte


def test_clock_hours_ahead_warns_and_still_installs(setup):
    done = run_shifted(setup, "+3h", "newOrder")
    assert done.returncode == 0, done.stderr  # valid (Pebble's certificates last years)
    warnings = clock_warnings(done.stderr)
    assert len(warnings) == 1 and "ahead of the CA's" in warnings[0], done.stderr
    assert cert_bytes(setup)


# -- the rule, without Pebble ---------------------------------------------------------

@pytest.mark.parametrize("offset, warned", [(0, False), (CLOCK_TOLERANCE - 1, False),
                                            (-CLOCK_TOLERANCE + 1, False),
                                            (CLOCK_TOLERANCE + 1, True), (-7200, True)])
def test_clock_check_warns_beyond_the_tolerance_once(caplog, offset, warned):
    check = ClockCheck()
    with caplog.at_level(logging.WARNING, logger="lacme"):
        check.observe(1_900_000_000.0 + offset, "https://ca.example/dir", now=1_900_000_000.0)
        check.observe(1_900_000_000.0 + 99999, "https://ca.example/dir", now=1_900_000_000.0)
    assert check.offset == offset
    assert [r for r in caplog.records if CLOCK_WARNING in r.getMessage()] != [] if warned \
        else caplog.records == []
    assert len(caplog.records) == (1 if warned else 0)


def test_describe_offset():
    assert describe_offset(CLOCK_TOLERANCE) == "10 min 0 s"
    assert describe_offset(-10800) == "3 h 0 min"
    assert describe_offset(2 * 86400 + 7200) == "2 d 2 h"
