"""The lifetime simulation: many short certificate lifetimes, in real time, against
Debian unstable's Pebble 2.10 (ARI, profiles), with no clock faking.

Pebble issues 60-second certificates; the real ``lacme newOrder`` runs on a
short timer (every TIMER seconds, as lacme-renew.timer would) while a
sampler watches the installed certificate.  Along the way the CA changes
its mind twice (``set-renewal-info`` with a window in the past, then a
revocation) and goes away for a quarter of a lifetime (SIGSTOP) around the
moment lacme chose to renew.  Asserted: zero seconds without a valid
certificate installed, at most 1.45 renewals per lifetime for the ordinary
renewals (the margin: a quarter lifetime plus one timer period),
``replaces`` on every renewal (Pebble logs the replacements), and
each change of window followed by the first run after it.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509

from tests.lacmeenv import LacmeSetup, unique_name, write_key
from tests.pebble import PEBBLE_SID, Pebble, start_pebble

pytestmark = [pytest.mark.pebble,
              pytest.mark.skipif(not os.access(PEBBLE_SID, os.X_OK),
                                 reason=f"{PEBBLE_SID} missing: run scripts/setup-debian.sh")]

LIFETIME = 60  # seconds: Pebble's validityPeriod for the profile
TIMER = 1.0  # seconds between the starts of two runs (lacme-renew.timer, sped up)
OUTAGE = LIFETIME / 4
SAMPLE = 0.2
REPLACEMENT_LOG = "is a replacement of"


@dataclass
class Run:
    start: float
    end: float
    returncode: int
    stderr: str


@dataclass
class Installed:
    serial: int
    not_before: float
    not_after: float
    seen_at: float
    pem: bytes


@dataclass
class Simulation:
    setup: LacmeSetup
    env: dict
    runs: list[Run] = field(default_factory=list)
    installed: list[Installed] = field(default_factory=list)
    lapse: float = 0.0
    stop: threading.Event = field(default_factory=threading.Event)
    errors: list[str] = field(default_factory=list)

    @property
    def cert_path(self) -> Path:
        return Path(self.setup.sections["www"]["certificate"])

    def timer(self) -> None:
        while not self.stop.is_set():
            start = time.time()
            done = self.setup.run("newOrder", env=self.env, timeout=120)
            self.runs.append(Run(start, time.time(), done.returncode, done.stderr))
            self.stop.wait(max(0.0, start + TIMER - time.time()))

    def sampler(self) -> None:
        last = time.time()
        while not self.stop.is_set():
            now = time.time()
            try:
                pem = self.cert_path.read_bytes()
                cert = x509.load_pem_x509_certificate(pem)
            except (OSError, ValueError):
                cert = None
            if cert is not None:
                if not self.installed or self.installed[-1].serial != cert.serial_number:
                    self.installed.append(Installed(cert.serial_number,
                                                    cert.not_valid_before_utc.timestamp(),
                                                    cert.not_valid_after_utc.timestamp(), now, pem))
                if now > cert.not_valid_after_utc.timestamp():
                    self.lapse += now - last
            elif self.installed:
                self.lapse += now - last
            last = now
            self.stop.wait(SAMPLE)

    def wait_for(self, predicate, timeout: float, what: str) -> None:
        deadline = time.time() + timeout
        while not predicate():
            assert time.time() < deadline, f"timed out waiting for {what}; runs: {self.tail()}"
            time.sleep(0.1)

    def wait_for_new_certificate(self, timeout: float, count: int | None = None) -> Installed:
        count = len(self.installed) if count is None else count
        self.wait_for(lambda: len(self.installed) > count, timeout, "a new certificate")
        return self.installed[-1]

    def chosen_moment(self) -> float | None:
        state = json.loads((Path(self.env["STATE_DIRECTORY"]) / "renewal.json").read_text())
        entry = next(e for e in state["entries"] if e["section"] == "www")
        current = self.installed[-1]
        if entry["not_after"] != current.not_after:
            return None
        return entry["chosen"]

    def first_run_started_after(self, when: float) -> Run:
        self.wait_for(lambda: any(r.start > when for r in self.runs), 60, "a run")
        return next(r for r in self.runs if r.start > when)

    def tail(self) -> str:
        return " | ".join(f"{r.returncode}:{r.stderr.strip()[-300:]}" for r in self.runs[-3:])


@pytest.fixture
def ari_pebble(tmp_path) -> Pebble:
    instance = start_pebble(
        tmp_path / "pebble", binary=PEBBLE_SID,
        env={"PEBBLE_VA_NOSLEEP": "1", "PEBBLE_AUTHZREUSE": "100"},
        config={"profiles": {"default": {"description": "short", "validityPeriod": LIFETIME}}})
    yield instance
    instance.stop()


def test_short_lifetimes_never_lapse_and_follow_the_ca(ari_pebble, tmp_path):
    key = write_key(tmp_path / "account.key", "p256")
    setup = LacmeSetup(root=tmp_path / "etc", pebble=ari_pebble, account_key=key,
                       extra_default=f"run-interval = {TIMER}", extra_client="timeout = 4")
    setup.add_section("www", [unique_name()], key_kind="p256", profile="default")
    setup.write()
    env = {"STATE_DIRECTORY": str(tmp_path / "state")}
    assert setup.run("account", "--register", "--tos-agreed", env=env).returncode == 0
    sim = Simulation(setup, env)
    threads = [threading.Thread(target=sim.timer, daemon=True),
               threading.Thread(target=sim.sampler, daemon=True)]
    for thread in threads:
        thread.start()
    forced: list[int] = []  # serials replaced because the CA asked, not by schedule
    try:
        first = sim.wait_for_new_certificate(30)
        assert first.not_after - first.not_before + 1 == pytest.approx(LIFETIME, abs=1)

        # 1. ordinary renewals, on the schedule lacme chose in the ARI window
        sim.wait_for(lambda: len(sim.installed) >= 3, 2.2 * LIFETIME, "two ordinary renewals")

        # 2. the CA moves the window into the past: the first run after it renews
        # (once the first check of a new certificate is due: 1/100 of its lifetime)
        current, count = sim.installed[-1], len(sim.installed)
        time.sleep(max(0.0, current.seen_at + LIFETIME / 100 + 0.2 - time.time()))
        past = time.time() - 120
        window = {"suggestedWindow": {"start": _rfc3339(past), "end": _rfc3339(past + 60)},
                  "explanationURL": "https://ca.example/incident/42"}
        changed = time.time()
        ari_pebble.set_renewal_info(current.pem, json.dumps(window))
        forced.append(current.serial)
        renewed = sim.wait_for_new_certificate(10, count)
        run = sim.first_run_started_after(changed)  # a run in flight may have been quicker
        assert renewed.seen_at <= run.end + SAMPLE * 2
        assert any("https://ca.example/incident/42" in r.stderr for r in sim.runs if r.end > changed)

        # 3. a revocation (RFC 5280 reason by name): the first run after it renews
        time.sleep(2)
        current, count = sim.installed[-1], len(sim.installed)
        done = setup.run("revokeCert", "--reason=superseded", str(sim.cert_path), env=env)
        assert done.returncode == 0, done.stderr
        revoked = time.time()
        assert ari_pebble.cert_status(current.serial) == "Revoked"
        forced.append(current.serial)
        renewed = sim.wait_for_new_certificate(10, count)
        run = sim.first_run_started_after(revoked)
        assert renewed.seen_at <= run.end + SAMPLE * 2

        # 4. the CA is away for a quarter of a lifetime around the chosen moment
        current = sim.installed[-1]
        sim.wait_for(lambda: sim.chosen_moment() is not None, LIFETIME / 2, "an ARI window")
        chosen = sim.chosen_moment()
        start = max(time.time(), chosen - OUTAGE + 2)
        time.sleep(start - time.time())
        ari_pebble.pause()
        try:
            time.sleep(OUTAGE)
        finally:
            ari_pebble.resume()
        resumed = time.time()
        after_outage = sim.wait_for_new_certificate(current.not_after - time.time() + 5)
        assert after_outage.seen_at > resumed  # it was not renewed before the outage
        outage_runs = [r for r in sim.runs if start < r.start < resumed]
        assert any(r.returncode != 0 or "ARI check failed" in r.stderr for r in outage_runs), \
            "no run noticed the outage"
        time.sleep(2)
    finally:
        sim.stop.set()
        for thread in threads:
            thread.join(timeout=60)

    assert sim.lapse == 0.0, f"{sim.lapse:.1f} s without a valid certificate"
    renewals = sim.installed[1:]
    ordinary = [new for old, new in zip(sim.installed, renewals) if old.serial not in forced]
    used = [new.not_before - old.not_before
            for old, new in zip(sim.installed, renewals) if old.serial not in forced]
    per_lifetime = LIFETIME / (sum(used) / len(used))
    print(f"lifetime simulation: {len(renewals)} renewals ({len(ordinary)} ordinary, "
          f"{len(forced)} asked by the CA), {per_lifetime:.2f} ordinary renewals per lifetime, "
          f"{sim.lapse:.1f} s lapse, {len(sim.runs)} runs")
    assert len(ordinary) >= 3
    assert per_lifetime <= 1.45, used
    assert ari_pebble.log_text().count(REPLACEMENT_LOG) == len(renewals)


def _rfc3339(when: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))
