"""Back-off between runs after failed orders (lacme.master.renewal.next_attempt).

Against real CAs: Pebble, whose validation fails while lacme's webserver
listens where Pebble's VA does not connect (port 80 blocked, in effect), and
the hostile CA of tests/hostile in its ``rate-limited`` mode (Pebble has no
rate limits), which answers newOrder with a ``rateLimited`` problem and a
Retry-After.  Hourly runs are simulated by running the master under
faketime(1), an hour further each run; the components keep the real clock
(the master starts them with a clean environment), as the CAs do.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lacme.master.renewal import (
    BACKOFF_CAP,
    DAY,
    Lifetime,
    margin_bound,
    next_attempt,
)
from tests.hostile.server import RATE_LIMIT_RETRY_AFTER, HostileCA
from tests.lacmeenv import TREE_ROOT, LacmeSetup, unique_name, write_key
from tests.pebble import free_port

HOUR = 3600.0
T0 = 1_900_000_000.0
ORDERS = "POST /order-plz"
needs_faketime = pytest.mark.skipif(shutil.which("faketime") is None,
                                    reason="faketime missing: run scripts/setup-debian.sh")


# -- the rule --------------------------------------------------------------------------

def test_backoff_doubles_from_one_timer_period_up_to_the_cap():
    waits = [next_attempt(n, T0, None, None, HOUR)[0] - T0 for n in range(1, 9)]
    assert waits == [HOUR, 2 * HOUR, 4 * HOUR, 8 * HOUR, 16 * HOUR, BACKOFF_CAP, BACKOFF_CAP,
                     BACKOFF_CAP]
    assert next_attempt(0, T0, None, None, HOUR) is None
    assert "3 failed attempts" in next_attempt(3, T0, None, None, HOUR)[1]


@settings(max_examples=300, deadline=None)
@given(length=st.floats(min_value=600, max_value=400 * DAY),
       failures=st.integers(min_value=1, max_value=200),
       last=st.floats(min_value=0, max_value=1.2), period_share=st.floats(0.0001, 0.25))
def test_backoff_never_waits_past_the_margin(length, failures, last, period_share):
    lifetime, period = Lifetime(T0, T0 + length), length * period_share
    at, _ = next_attempt(failures, T0 + last * length, None, lifetime, period)
    assert at <= max(margin_bound(lifetime, period), T0 + last * length + period) + 1e-6
    assert at <= margin_bound(lifetime, period) + 1e-6  # past it: every run tries


def test_retry_after_is_honoured_unless_expired():
    lifetime = Lifetime(T0, T0 + 90 * DAY)
    at, why = next_attempt(1, T0 + 80 * DAY, T0 + 80 * DAY + 5 * HOUR, lifetime, HOUR)
    assert at == T0 + 80 * DAY + 5 * HOUR and "Retry-After" in why
    assert next_attempt(0, None, T0 + 91 * DAY, lifetime, HOUR) is None  # expired by then


# -- against Pebble: validation keeps failing, then is fixed -----------------------------

def master_at(setup: LacmeSetup, hours: float, *args: str, env: dict | None = None
              ) -> subprocess.CompletedProcess[str]:
    """The master with its clock ``hours`` ahead (faketime), monotonic time real."""
    argv = ["faketime", "-f", f"+{hours * 3600:.0f}s", sys.executable, "-m", "lacme.master",
            f"--config={setup.conf}", *args]
    environ = {**os.environ, "PYTHONPATH": str(TREE_ROOT), "FAKETIME_DONT_FAKE_MONOTONIC": "1",
               **(env or {})}
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, env=environ,
                          cwd=str(setup.root))


@pytest.mark.pebble
@needs_faketime
def test_failing_validation_backs_off_then_renews_once_fixed(pebble, tmp_path):
    key = write_key(tmp_path / "account.key", "p256")
    # lacme's webserver where Pebble's VA does not look: every http-01 validation fails
    setup = LacmeSetup(root=tmp_path / "etc", pebble=pebble, account_key=key,
                       listen=f"127.0.0.1:{free_port()}")
    setup.add_section("www", [unique_name()], key_kind="p256")
    setup.write()
    env = {"STATE_DIRECTORY": str(tmp_path / "state")}
    assert setup.run("account", "--register", "--tos-agreed", env=env).returncode == 0
    cert = Path(setup.sections["www"]["certificate"])
    runs = 24
    orders = []
    for hour in range(runs):  # a day of hourly runs
        offset = pebble.log_offset()
        done = master_at(setup, hour, "newOrder", env=env)
        sent = pebble.requests_since(offset)[ORDERS]
        orders.append(sent)
        assert done.returncode == (1 if sent else 0), done.stderr
        if not sent:
            assert "back-off after" in done.stderr and "skipping" in done.stderr, done.stderr
    assert not cert.exists()
    # an order at hours 0, 1, 3, 7 and 15: exponential from one timer period
    assert [h for h, n in enumerate(orders) if n] == [0, 1, 3, 7, 15], orders
    assert sum(orders) == 5 and sum(orders) <= runs / 4
    status = master_at(setup, runs - 1, "status", "--json", env=env)
    www = json.loads(status.stdout)[0]
    assert "back-off after 5 failed attempts" in www["renew_reason"]
    assert www["last_outcome"] == "failed" and status.returncode == 1

    setup.listen = None  # fixed in lacme.conf: the webserver where Pebble's VA connects
    setup.write()
    offset = pebble.log_offset()
    done = master_at(setup, runs, "newOrder", env=env)  # the configuration changed: at once
    assert pebble.requests_since(offset)[ORDERS] == 1 and done.returncode == 0, done.stderr
    assert "configuration changed since the failure" in done.stderr
    assert cert.exists()
    state = json.loads((tmp_path / "state" / "renewal.json").read_text())["entries"][0]
    assert state["last_outcome"] == "installed" and state["failures"] == 0


@pytest.mark.pebble
@needs_faketime
def test_fix_outside_the_configuration_is_found_by_the_next_attempt(pebble, tmp_path):
    """Port 80 unblocked (here: something else starts answering where Pebble's VA
    connects): lacme.conf unchanged, so the back-off's schedule finds it."""
    key = write_key(tmp_path / "account.key", "p256")
    setup = LacmeSetup(root=tmp_path / "etc", pebble=pebble, account_key=key,
                       listen=f"127.0.0.1:{pebble.http_port}")
    setup.add_section("www", [unique_name()], key_kind="p256")
    setup.write()
    env = {"STATE_DIRECTORY": str(tmp_path / "state")}
    assert setup.run("account", "--register", "--tos-agreed", env=env).returncode == 0
    blocker = socket.socket()  # the VA's port taken by something that never answers
    blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    blocker.bind(("127.0.0.1", pebble.http_port))
    blocker.listen(1)
    try:
        for hour in (0, 1):  # two failures (the webserver cannot even listen)
            assert master_at(setup, hour, "newOrder", env=env).returncode != 0
    finally:
        blocker.close()
    cert = Path(setup.sections["www"]["certificate"])
    offset = pebble.log_offset()
    done = master_at(setup, 2, "newOrder", env=env)  # next attempt at 1 + 2 = 3
    assert pebble.requests_since(offset)[ORDERS] == 0 and "back-off after 2" in done.stderr
    done = master_at(setup, 3, "newOrder", env=env)
    assert done.returncode == 0 and cert.exists(), done.stderr


# -- against the hostile CA: rateLimited with Retry-After, and --force ------------------

@pytest.fixture
def hostile(tmp_path):
    (tmp_path / "ca").mkdir()
    server = HostileCA(tmp_path / "ca", http_port=free_port())
    yield server
    server.stop()


@needs_faketime
def test_rate_limited_retry_after_is_kept_across_runs_and_force_overrides(hostile, tmp_path):
    key = write_key(tmp_path / "account.key", "p256")
    setup = LacmeSetup(root=tmp_path / "etc", pebble=hostile, account_key=key)
    setup.add_section("www", [unique_name()], key_kind="p256")
    setup.write()
    env = {"STATE_DIRECTORY": str(tmp_path / "state")}
    hostile.set_mode("")
    assert setup.run("account", "--register", "--tos-agreed", env=env).returncode == 0

    def new_orders() -> int:
        return sum(1 for r in hostile.requests() if r.path.startswith("/new-order"))

    hostile.set_mode("rate-limited")
    done = master_at(setup, 0, "newOrder", env=env)
    assert done.returncode == 1 and "rateLimited" in done.stderr, done.stderr
    assert new_orders() == 1
    entry = json.loads((tmp_path / "state" / "renewal.json").read_text())["entries"][0]
    assert entry["retry_until"] - entry["last_attempt"] == pytest.approx(RATE_LIMIT_RETRY_AFTER,
                                                                         abs=2)
    # 1 h later the back-off alone would allow a try; the CA's 1.5 h do not
    done = master_at(setup, 1.1, "newOrder", env=env)
    assert done.returncode == 0 and "rate limited by the CA (Retry-After)" in done.stderr
    assert new_orders() == 1
    status = master_at(setup, 1.1, "status", "--json", env=env)
    assert "Retry-After" in json.loads(status.stdout)[0]["renew_reason"]
    done = master_at(setup, 1.2, "newOrder", "--force", env=env)  # --force: tried at once
    assert done.returncode == 1 and new_orders() == 2, done.stderr
    hostile.set_mode("", clear=False)
    done = master_at(setup, 2.0, "newOrder", env=env)  # 2 failures: 2 h; Retry-After: 1.5 h
    assert done.returncode == 0 and new_orders() == 2
    done = master_at(setup, 3.3, "newOrder", env=env)  # both passed: renewed
    assert done.returncode == 0 and new_orders() == 3, done.stderr
    assert Path(setup.sections["www"]["certificate"]).exists()
