"""ARI renewal benchmark: lacme, certbot and lego side by side against Pebble 2.10.

Run by hand as root (not a test, not run by CI): ``python3 benchmarks/ari/run.py``
from the tree root.  Each client gets its own Pebble 2.10 (Debian unstable's,
see scripts/setup-debian.sh) issuing LIFETIME-second certificates from a
profile, with ARI, and its renewal command is run every TIMER seconds for
DURATION seconds; the three clients run at the same time, each on its own
loopback ports.  Along the way the CA goes away (SIGSTOP) for OUTAGE seconds
at swept phases of the current certificate's lifetime, and twice asks for an
early renewal (management ``POST /set-renewal-info/`` with a window in the
past, RFC 9773 section 4.2).  Reported per client: seconds without a valid
certificate installed, renewals per lifetime, share of renewal orders with
``replaces`` (RFC 9773 section 5, from Pebble's log), and reaction time to the
early-renewal signal.  Writes results.json beside this file.

A second scenario, ``outage`` (``run.py outage``; ``run.py sweep`` is the one
above, no argument runs both, one after the other): one CA outage of a
quarter lifetime over the last quarter of the first certificate's life (the
worst place: [3/4, 1] of it), then quiet lifetimes until OUTAGE_DURATION;
reported the same way, in results-outage.json.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

TREE = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(TREE))

from tests.lacmeenv import LacmeSetup, unique_name, write_key  # noqa: E402
from tests.pebble import PEBBLE_SID, Pebble, free_dual_port, start_pebble  # noqa: E402

LIFETIME = 60
TIMER = 2.0
DURATION = float(os.environ.get("ARI_BENCH_DURATION", "480"))
OUTAGE_DURATION = float(os.environ.get("ARI_BENCH_OUTAGE_DURATION", "360"))
LAST_QUARTER = 3 / 4  # the outage scenario: the CA goes away at 3/4 of the first lifetime
OUTAGE = LIFETIME / 4
PHASES = (0.3, 0.5, 0.7, 0.9)  # outage starts, as a share of the current lifetime
SIGNALS = 2
SAMPLE = 0.2
CERTBOT = os.environ.get("ARI_BENCH_CERTBOT", "/opt/lacme-ari-certbot/bin/certbot")
LEGO = os.environ.get("ARI_BENCH_LEGO", "/opt/lacme-ari-lego/usr/bin/lego")
# the python of a venv holding another lacme tree (e.g. the one before a change): client
# "lacme-before", its master run by that python, its components found beside it
LACME_BEFORE = os.environ.get("ARI_BENCH_LACME_BEFORE", "")
REPLACEMENT_LOG = "is a replacement of"
ORDER_LOG = "POST /order-plz -> calling handler()"


@dataclass
class Installed:
    serial: int
    not_before: float
    not_after: float
    seen_at: float
    pem: bytes


@dataclass
class Client:
    """One client under test: how to issue, how to renew, where the certificate is."""

    name: str
    pebble: Pebble
    workdir: Path
    domain: str = field(default_factory=unique_name)
    env: dict = field(default_factory=dict)
    cert_path: Path = Path("/nonexistent")
    issue_argv: list = field(default_factory=list)
    renew_argv: list = field(default_factory=list)
    lacme: LacmeSetup | None = None
    helper: subprocess.Popen | None = None
    python: str | None = None  # lacme-before: another tree's venv

    def run(self, argv: list) -> subprocess.CompletedProcess:
        if self.lacme is not None and self.python is not None:
            argv = [self.python, "-m", "lacme.master", f"--config={self.lacme.conf}", *argv]
        elif self.lacme is not None:
            return self.lacme.run(*argv, env=self.env, timeout=120)
        environ = dict(os.environ)
        environ.update(self.env)
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=120,
                                  env=environ, cwd=self.workdir)
        except subprocess.TimeoutExpired as exc:
            return subprocess.CompletedProcess(argv, 124, "", f"timeout: {exc}")


def make_lacme(pebble: Pebble, workdir: Path, before: str | None = None) -> Client:
    client = Client("lacme-before" if before else "lacme", pebble, workdir, python=before)
    key = write_key(workdir / "account.key", "p256")
    setup = LacmeSetup(root=workdir / "etc", pebble=pebble, account_key=key,
                       extra_default="" if before else f"run-interval = {TIMER}",
                       extra_client="timeout = 4")
    setup.add_section("www", [client.domain], key_kind="p256", profile="default")
    setup.write()
    client.lacme = setup
    client.env = {"STATE_DIRECTORY": str(workdir / "state")}
    client.cert_path = Path(setup.sections["www"]["certificate"])
    done = client.run(["account", "--register", "--tos-agreed"])
    if done.returncode != 0:
        raise RuntimeError(f"lacme account --register: {done.stderr.strip()}")
    client.issue_argv = client.renew_argv = ["newOrder"]
    return client


def make_lacme_before(pebble: Pebble, workdir: Path) -> Client:
    return make_lacme(pebble, workdir, before=LACME_BEFORE)


def make_certbot(pebble: Pebble, workdir: Path) -> Client:
    client = Client("certbot", pebble, workdir)
    webroot = workdir / "webroot"
    webroot.mkdir()
    client.helper = subprocess.Popen(
        [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "--directory", str(webroot),
         str(pebble.http_port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    dirs = ["--config-dir", str(workdir / "conf"), "--work-dir", str(workdir / "work"),
            "--logs-dir", str(workdir / "logs")]
    client.env = {"REQUESTS_CA_BUNDLE": pebble.tls_ca_file}
    client.issue_argv = [CERTBOT, "certonly", *dirs, "--non-interactive", "--agree-tos",
                         "--register-unsafely-without-email", "--server", pebble.directory_url,
                         "--webroot", "-w", str(webroot), "-d", client.domain,
                         "--key-type", "ecdsa"]
    client.renew_argv = [CERTBOT, "renew", *dirs, "--non-interactive",
                         "--no-random-sleep-on-renew"]
    client.cert_path = workdir / "conf" / "live" / client.domain / "cert.pem"
    return client


def make_lego(pebble: Pebble, workdir: Path) -> Client:
    client = Client("lego", pebble, workdir)
    common = [LEGO, "--server", pebble.directory_url, "--accept-tos", "--email",
              "bench@example.com", "--domains", client.domain, "--path", str(workdir / "lego"),
              "--http", "--http.port", f"127.0.0.1:{pebble.http_port}", "--key-type", "ec256"]
    client.env = {"LEGO_CA_CERTIFICATES": pebble.tls_ca_file}
    client.issue_argv = [*common, "run"]
    client.renew_argv = [*common, "renew", "--dynamic", "--no-random-sleep"]
    client.cert_path = workdir / "lego" / "certificates" / f"{client.domain}.crt"
    return client


@dataclass
class Simulation:
    client: Client
    runs: list = field(default_factory=list)  # (start, end, returncode)
    installed: list = field(default_factory=list)
    lapse: float = 0.0
    outages: list = field(default_factory=list)  # (start, end, phase)
    signals: list = field(default_factory=list)  # (sent, serial, reaction or None)
    stop: threading.Event = field(default_factory=threading.Event)
    log: list = field(default_factory=list)

    def timer(self) -> None:
        while not self.stop.is_set():
            start = time.time()
            done = self.client.run(self.client.renew_argv)
            self.runs.append((start, time.time(), done.returncode))
            if done.returncode != 0:
                self.log.append(f"{start:.0f} rc={done.returncode} {done.stderr.strip()[-200:]}")
            self.stop.wait(max(0.0, start + TIMER - time.time()))

    def sampler(self) -> None:
        last = time.time()
        while not self.stop.is_set():
            now = time.time()
            try:
                cert = x509.load_pem_x509_certificate(self.client.cert_path.read_bytes())
            except (OSError, ValueError):
                cert = None
            if cert is not None:
                if not self.installed or self.installed[-1].serial != cert.serial_number:
                    self.installed.append(Installed(
                        cert.serial_number, cert.not_valid_before_utc.timestamp(),
                        cert.not_valid_after_utc.timestamp(), now,
                        cert.public_bytes(serialization.Encoding.PEM)))
                if now > cert.not_valid_after_utc.timestamp():
                    self.lapse += now - last
            elif self.installed:
                self.lapse += now - last
            last = now
            self.stop.wait(SAMPLE)

    def wait_new(self, count: int, deadline: float) -> Installed | None:
        while len(self.installed) <= count:
            if time.time() > deadline:
                return None
            time.sleep(0.1)
        return self.installed[-1]

    def scenario(self, deadline: float) -> None:
        """A quiet lifetime, outages swept across the lifetime, then CA signals."""
        time.sleep(min(LIFETIME, max(0.0, deadline - time.time())))
        for phase in PHASES:
            current = self.wait_new(len(self.installed) - 1, deadline)
            if current is None or time.time() > deadline - 2 * LIFETIME:
                break
            start = current.not_before + phase * LIFETIME
            if start < time.time():  # already past this phase: take the next certificate
                current = self.wait_new(len(self.installed), deadline)
                if current is None:
                    break
                start = current.not_before + phase * LIFETIME
            time.sleep(max(0.0, start - time.time()))
            began = time.time()
            self.client.pebble.pause()
            try:
                self.stop.wait(OUTAGE)
            finally:
                self.client.pebble.resume()
            self.outages.append((began, time.time(), phase))
            self.wait_new(len(self.installed), deadline)  # let it recover first
        for _ in range(SIGNALS):
            if time.time() > deadline - 20:
                return
            time.sleep(3)
            current, count = self.installed[-1], len(self.installed)
            past = time.time() - 120
            window = {"suggestedWindow": {"start": rfc3339(past), "end": rfc3339(past + 60)}}
            sent = time.time()
            self.client.pebble.set_renewal_info(current.pem, json.dumps(window))
            renewed = self.wait_new(count, min(deadline, sent + LIFETIME))
            reaction = None
            if renewed is not None and renewed.serial != current.serial:
                reaction = renewed.seen_at - sent
            self.signals.append((sent, current.serial, reaction))
            self.wait_new(len(self.installed), time.time())  # no wait: just go on

    def outage_scenario(self, deadline: float) -> None:
        """One outage of a quarter lifetime over the first certificate's last quarter."""
        first = self.wait_new(0, deadline)
        if first is None:
            return
        start = first.not_before + LAST_QUARTER * LIFETIME
        time.sleep(max(0.0, start - time.time()))
        began = time.time()
        self.client.pebble.pause()
        try:
            self.stop.wait(OUTAGE)
        finally:
            self.client.pebble.resume()
        self.outages.append((began, time.time(), LAST_QUARTER))

    def summary(self, started: float, ended: float) -> dict:
        text = Path(self.client.pebble.log_path).read_text(errors="replace")
        orders = text.count(ORDER_LOG)
        replacing = text.count(REPLACEMENT_LOG)
        signalled = {serial for _, serial, _ in self.signals}
        gaps = [new.not_before - old.not_before
                for old, new in zip(self.installed, self.installed[1:])
                if old.serial not in signalled]
        reactions = [r for _, _, r in self.signals]
        return {
            "client": self.client.name,
            "observed_s": round(ended - started, 1),
            "lifetimes": round((ended - started) / LIFETIME, 2),
            "certificates": len(self.installed),
            "renewals": len(self.installed) - 1,
            "lapse_s": round(self.lapse, 1),
            "renewals_per_lifetime_overall": round(
                (len(self.installed) - 1) / ((ended - started) / LIFETIME), 2),
            "renewals_per_lifetime_scheduled": round(LIFETIME / (sum(gaps) / len(gaps)), 2)
            if gaps else None,
            "renewal_share_of_lifetime": [round(g / LIFETIME, 2) for g in gaps],
            "orders": orders,
            "renewal_orders": max(0, orders - 1),
            "orders_with_replaces": replacing,
            "replaces_share": round(replacing / (orders - 1), 2) if orders > 1 else None,
            "runs": len(self.runs),
            "failed_runs": sum(1 for r in self.runs if r[2] != 0),
            "outages": [{"phase": p, "seconds": round(e - s, 1)} for s, e, p in self.outages],
            "signal_reaction_s": [None if r is None else round(r, 1) for r in reactions],
            "errors_tail": self.log[-3:],
        }


def rfc3339(when: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))


def run_client(maker, root: Path, results: dict, deadline: float, scenario: str) -> None:
    name = maker.__name__.removeprefix("make_")
    pebble = client = None
    try:
        pebble = start_pebble(
            root / name / "pebble", binary=PEBBLE_SID, http_port=free_dual_port(),
            env={"PEBBLE_VA_NOSLEEP": "1", "PEBBLE_AUTHZREUSE": "100"},
            config={"profiles": {"default": {"description": "short",
                                             "validityPeriod": LIFETIME}}})
        workdir = root / name
        workdir.chmod(0o755)
        client = maker(pebble, workdir)
        if client.lacme is None:
            done = client.run(client.issue_argv)
            if done.returncode != 0:
                raise RuntimeError(f"{name} issue: {done.stderr.strip()[-400:]}")
        sim = Simulation(client)
        threads = [threading.Thread(target=sim.timer, daemon=True),
                   threading.Thread(target=sim.sampler, daemon=True)]
        started = time.time()
        for thread in threads:
            thread.start()
        try:
            if scenario == "outage":
                sim.outage_scenario(deadline)
            else:
                sim.scenario(deadline)
            time.sleep(max(0.0, deadline - time.time()))
        finally:
            sim.stop.set()
            for thread in threads:
                thread.join(timeout=130)
        results[name] = sim.summary(started, time.time())
    except Exception as exc:  # report, do not hide: the other clients go on
        results[name] = {"client": name, "error": f"{type(exc).__name__}: {exc}"}
    finally:
        if client is not None and client.helper is not None:
            client.helper.terminate()
            client.helper.wait()
        if pebble is not None:
            pebble.stop()


def versions() -> dict:
    def first_line(argv):
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=30)
            return (out.stdout or out.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired) as exc:
            return f"unavailable ({exc})"
    return {"pebble": Path(PEBBLE_SID).parents[2].joinpath("VERSION").read_text().strip(),
            "certbot": first_line([CERTBOT, "--version"]),
            "lego": first_line([LEGO, "--version"]),
            "python": sys.version.split()[0]}


def run_scenario(scenario: str) -> dict:
    """Every client at the same time, each against its own Pebble."""
    root = Path(tempfile.mkdtemp(prefix=f"lacme-ari-bench-{scenario}-"))
    root.chmod(0o755)
    results: dict = {}
    duration = OUTAGE_DURATION if scenario == "outage" else DURATION
    deadline = time.time() + 20 + duration
    makers = [make_lacme]
    if LACME_BEFORE:
        makers.append(make_lacme_before)
    if os.access(CERTBOT, os.X_OK):
        makers.append(make_certbot)
    else:
        results["certbot"] = {"client": "certbot", "error": f"{CERTBOT} missing"}
    if os.access(LEGO, os.X_OK):
        makers.append(make_lego)
    else:
        results["lego"] = {"client": "lego", "error": f"{LEGO} missing"}
    threads = [threading.Thread(target=run_client, args=(m, root, results, deadline, scenario))
               for m in makers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    settings = {"scenario": scenario, "lifetime_s": LIFETIME, "timer_s": TIMER,
                "duration_s": duration, "outage_s": OUTAGE}
    if scenario == "outage":
        settings["outage_at_share_of_first_lifetime"] = LAST_QUARTER
    else:
        settings.update(outage_phases=PHASES, signals=SIGNALS)
    report = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "settings": settings, "versions": versions(), "results": results}
    name = "results-outage.json" if scenario == "outage" else "results.json"
    Path(__file__).with_name(name).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    if os.environ.get("ARI_BENCH_KEEP") != "1":
        shutil.rmtree(root, ignore_errors=True)
    return report


def main() -> int:
    choice = sys.argv[1] if len(sys.argv) > 1 else "all"
    if choice not in ("all", "sweep", "outage"):
        print(f"usage: {sys.argv[0]} [sweep|outage|all]", file=sys.stderr)
        return 2
    for scenario in ("sweep", "outage") if choice == "all" else (choice,):
        run_scenario(scenario)
    return 0


if __name__ == "__main__":
    sys.exit(main())
