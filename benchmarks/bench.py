#!/usr/bin/env python3
"""The benchmark runner: every scenario for every client against one local Pebble.

Run by ``benchmarks/run.sh`` as root inside a private mount namespace
(``unshare --mount``), where it bind-mounts a CA bundle holding Pebble's TLS
CA over the system one so the peers trust Pebble without options; the
namespace, and the mount, end with this process.  Starts Pebble and
pebble-challtestsrv on 127.0.0.1 (PEBBLE_VA_NOSLEEP=1, PEBBLE_AUTHZREUSE=0)
and, for webroot clients, a static server on the http-01 port for the
duration of each of their runs.  Runs are interleaved: round by round,
every client once, in the same order.  Writes results.json and RESULTS.md.

lacme in systemd mode (``lacme-systemd``, systemd_mode.py) runs in a
container booted once for the whole benchmark and powered off at the end,
also after an error or an interruption (SIGINT, SIGTERM).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

from accountd_rate import measure_rate  # noqa: E402
from clients import (  # noqa: E402
    PERL_ACCOUNTD,
    AcmeTiny,
    Adapter,
    Certbot,
    Context,
    Lacme,
    LacmeBase,
    LacmePerl,
    Uacme,
    clean_env,
    unique_names,
)
from measure import Command, become_subreaper, run_commands  # noqa: E402
from report import BASE, SYSTEMD, write_reports  # noqa: E402
from systemd_mode import LacmeSystemd  # noqa: E402

from tests.pebble import start_pebble  # noqa: E402

SYSTEM_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
PEBBLE_ENV = {"PEBBLE_VA_NOSLEEP": "1", "PEBBLE_AUTHZREUSE": "0"}
# What every client trusts, one variant at a time: "system" (the system bundle
# plus Pebble's TLS CA, as users trust a real CA) and "pebble" (Pebble's CA
# alone).  Results of the "pebble" variant are recorded as "S1/pebble" etc.
TRUST = ("system", "pebble")
TRUSTED_SCENARIOS = ("S1", "S2", "S3", "S4")
ADAPTERS = (Lacme, LacmeBase, LacmeSystemd, LacmePerl, AcmeTiny, Uacme, Certbot)
# lacme-base (a baseline tree) runs when asked for or when LACME_BENCH_BASELINE names its venv
DEFAULT_CLIENTS = [a.name for a in ADAPTERS
                   if a is not LacmeBase or "LACME_BENCH_BASELINE" in os.environ]
# Modules a no-op run must not load: the network, cryptography, the client
# package, the master's run set-up, the protocols and the X.509 code that needs
# cryptography (lacme.x509.der, the DER reader of the no-op path, is allowed).
PROTOCOL_MODULES = ("requests", "urllib3", "ssl", "http.client", "cryptography", "lacme.client",
                    "lacme.master.run", "lacme.master.children", "lacme.master.components",
                    "lacme.master.lock", "lacme.protocol.jws", "lacme.protocol.wire",
                    "lacme.x509.chain", "lacme.x509.csr", "lacme.x509.keys")


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


# -- the machine -------------------------------------------------------------

def require_private_namespace() -> None:
    if os.geteuid() != 0:
        sys.exit("bench: must run as root (run benchmarks/run.sh)")
    # run.sh records the namespace it was started in before it calls unshare
    if os.readlink("/proc/self/ns/mnt") == os.environ.get("LACME_BENCH_HOST_NS", "/proc/self/ns/mnt") \
            or "LACME_BENCH_HOST_NS" not in os.environ:
        sys.exit("bench: refusing to touch the system CA bundle outside a private mount "
                 "namespace (run benchmarks/run.sh)")


def trust_files(tls_ca_file: str, work: Path) -> dict[str, Path]:
    """The trust file of each variant (TRUST): the system bundle plus Pebble's TLS CA,
    or Pebble's TLS CA alone.  Read before any bind mount, from the machine's bundle."""
    pebble_ca = Path(tls_ca_file).read_bytes()
    files = {"system": Path(SYSTEM_BUNDLE).read_bytes() + pebble_ca, "pebble": pebble_ca}
    out = {}
    for variant, data in files.items():
        out[variant] = work / f"trust-{variant}.crt"
        out[variant].write_bytes(data)
        out[variant].chmod(0o644)
    subprocess.run(["mount", "--make-rprivate", "/"], check=True)
    return out


def trust(bundle: Path) -> None:
    """Every client trusts ``bundle``: the peers through the system bundle's path
    (bind-mounted over, in this namespace only), lacme through SSL_ca_file."""
    target = os.path.realpath(SYSTEM_BUNDLE)
    with open("/proc/self/mountinfo") as fh:
        stacked = sum(1 for line in fh if line.split()[4] == target)
    for _ in range(stacked):
        subprocess.run(["umount", target], check=True)
    subprocess.run(["mount", "--bind", str(bundle), SYSTEM_BUNDLE], check=True)


def use_trust(variant: str, bundles: dict[str, Path], adapters: list[Adapter]) -> None:
    if variant not in bundles:
        raise SystemExit(f"bench: unknown trust variant {variant!r} (one of {', '.join(TRUST)})")
    trust(bundles[variant])
    for adapter in adapters:
        adapter.trust(bundles[variant])
    log(f"trust: {variant} ({bundles[variant]})")


def package_version(package: str) -> str:
    done = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package],
                          capture_output=True, text=True)
    return done.stdout or "absent"


def describe_machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                if line.startswith("model name")), platform.processor())
    mem_kb = next(int(line.split()[1]) for line in open("/proc/meminfo")
                  if line.startswith("MemTotal"))
    rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "lacme"],
                           capture_output=True, text=True).stdout.strip()
    from lacme import __version__
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu, "cores": os.cpu_count(), "memory_gb": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(), "os": platform.freedesktop_os_release().get("PRETTY_NAME", ""),
        "versions": {
            "lacme (this project)": f"{__version__} (git {rev}{' + uncommitted changes' if dirty else ''}), "
                                    f"Python {platform.python_version()}",
            "lacme-systemd (the same, make install in a systemd-nspawn container)":
                f"systemd {package_version('systemd')}",
            "lacme-perl (Debian lacme)": package_version("lacme"),
            "acme-tiny": package_version("acme-tiny"),
            "uacme": package_version("uacme"),
            "certbot": package_version("certbot"),
            "pebble": package_version("pebble"),
            "system python3": package_version("python3"),
        },
    }


# -- services ----------------------------------------------------------------

def wait_listening(port: int, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"static server exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.01)
    raise RuntimeError(f"static server: port {port} not listening")


def start_webroot(directory: Path, port: int) -> subprocess.Popen:
    """The http-01 port for webroot clients: Python's threading static file server."""
    directory.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(["/usr/bin/python3", "-m", "http.server", "--bind", "127.0.0.1",
                             "--directory", str(directory), str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=clean_env())
    wait_listening(port, proc)
    return proc


def stop_process(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- runs --------------------------------------------------------------------

class Runner:
    def __init__(self, ctx: Context, pebble, services: set[int]) -> None:
        self.ctx = ctx
        self.pebble = pebble
        self.services = services
        self.results: dict[str, dict[str, list[dict]]] = {}
        self.states: dict[str, Path] = {}

    def untimed(self, adapter: Adapter, state: Path, commands: list[Command]) -> None:
        """Preparation (e.g. an account for S3): run, check, not recorded."""
        with adapter.around(state):
            self._untimed(adapter, state, commands)

    def _untimed(self, adapter: Adapter, state: Path, commands: list[Command]) -> None:
        web = start_webroot(adapter.webroot_dir(state), self.ctx.http_port) if adapter.webroot else None
        try:
            for command in commands:
                done = subprocess.run(command.argv, env=dict(command.env), cwd=command.cwd,
                                      capture_output=True, text=True, timeout=600)
                if done.returncode not in command.ok_codes:
                    raise RuntimeError(f"{adapter.name}: preparation {command.argv[1:3]} exited "
                                       f"{done.returncode}: {done.stderr.strip()[-300:]}")
        finally:
            if web:
                stop_process(web)

    def timed(self, scenario: str, adapter: Adapter, state: Path, commands: list[Command]) -> dict:
        with adapter.around(state):
            return self._timed(scenario, adapter, state, commands)

    def _timed(self, scenario: str, adapter: Adapter, state: Path, commands: list[Command]) -> dict:
        web = start_webroot(adapter.webroot_dir(state), self.ctx.http_port) if adapter.webroot else None
        try:
            offset = self.pebble.log_offset()
            excluded = self.services | ({web.pid} if web else set())
            m = run_commands(commands, state / "run.log", excluded, adapter.outside(), adapter.programs)
            requests = dict(sorted(self.pebble.requests_since(offset).items()))
        finally:
            if web:
                stop_process(web)
        record = {**asdict(m), "invocations": len(commands), "requests": requests,
                  "state": str(state)}
        self.results.setdefault(scenario, {}).setdefault(adapter.name, []).append(record)
        status = f"FAILED {m.failed} (see {state}/run.log)" if m.failed else "ok"
        log(f"{scenario} {adapter.name:13} {m.wall:7.3f}s cpu {m.cpu:6.3f}s "
            f"rss {m.rss_largest_kb // 1024}/{m.rss_tree_kb // 1024} MB "
            f"pss {m.pss_programs_kb // 1024}/{m.pss_tree_kb // 1024} MB "
            f"req {sum(requests.values())} {status}")
        return record

    def issuance(self, scenario: str, adapters: list[Adapter], runs: int, certs: int,
                 names: int, register: bool, limits: dict[str, int] | None = None) -> None:
        for round_ in range(runs):
            for adapter in adapters:
                if limits and round_ >= limits.get(adapter.name, runs):
                    continue
                state = adapter.state_dir(scenario.replace("/", "-").replace(" N=", "-"))
                certificates = [unique_names(names) for _ in range(certs)]
                if not register:
                    self.untimed(adapter, state, adapter.register(state))
                commands = adapter.issue(state, certificates, register=register)
                self.timed(scenario, adapter, state, commands)
                self.states[adapter.name] = state

    def scale(self, n: int, adapters: list[Adapter], runs: int) -> None:
        """S7 at one size: ``n`` certificates of one name in one run, then the no-op over them."""
        for _ in range(runs):
            for adapter in adapters:
                self.issuance(f"S7 N={n}", [adapter], 1, certs=n, names=1, register=False)
                self.renewal(f"S7 N={n} no-op", [adapter], 1)

    def renewal(self, scenario: str, adapters: list[Adapter], runs: int) -> None:
        for _ in range(runs):
            for adapter in adapters:
                state = self.states[adapter.name]
                self.timed(scenario, adapter, state, adapter.renew(state))

    def imports_of_noop(self, adapter: Adapter) -> list[str]:
        """Protocol modules the master imports in a no-op renewal (-X importtime)."""
        state = self.states[adapter.name]
        command = adapter.renew(state)[0]
        env = dict(command.env, PYTHONPROFILEIMPORTTIME="1")
        done = subprocess.run(command.argv, env=env, cwd=command.cwd, capture_output=True, text=True)
        imported = {line.rsplit("|", 1)[1].strip() for line in done.stderr.splitlines()
                    if line.startswith("import time:") and "|" in line}
        return sorted(m for m in imported if m in PROTOCOL_MODULES
                      or any(m.startswith(p + ".") for p in PROTOCOL_MODULES))


def accountd_rates(work: Path, seconds: float, runs: int) -> dict:
    ours = str(Path(sys.executable).with_name("lacme-accountd"))
    rates: dict[str, dict[str, list[float]]] = {}
    for _ in range(runs):
        for client, program, kinds in (("lacme", ours, ("rsa", "ec")),
                                       ("lacme-perl", PERL_ACCOUNTD, ("rsa",))):
            for kind in kinds:
                label = "RSA-2048" if kind == "rsa" else "P-256"
                rate = measure_rate(program, kind, work, seconds)
                rates.setdefault(label, {}).setdefault(client, []).append(rate.per_second)
                log(f"S6 {client:10} {label:8} {rate.per_second:8.0f} signatures/s")
    return rates


# -- main --------------------------------------------------------------------

def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description="lacme against its peers on a local Pebble")
    p.add_argument("--runs", type=int, default=5, help="runs per client and scenario (default 5)")
    p.add_argument("--s5-runs", type=int, default=5, help="runs of S5 for lacme (default 5)")
    p.add_argument("--s5-perl-runs", type=int, default=1,
                   help="runs of S5 for lacme-perl (default 1: about 5 minutes each)")
    p.add_argument("--scenarios", default="S1,S2,S3,S4,S5,S6,S7")
    p.add_argument("--trust", default=",".join(TRUST), type=lambda v: v.split(","),
                   help="trust variants, in order (default system,pebble): the system bundle "
                        "plus Pebble's TLS CA, or Pebble's CA alone; S1-S4 run in each, S5-S7 "
                        "in the first")
    p.add_argument("--curve", default="20,100,300,1000",
                   type=lambda v: [int(n) for n in v.split(",")],
                   help="S7: certificates per run, one run per size (default 20,100,300,1000)")
    p.add_argument("--s7-runs", type=int, default=1, help="runs of each S7 size (default 1)")
    p.add_argument("--clients", default=",".join(DEFAULT_CLIENTS))
    p.add_argument("--out", default=str(HERE), help="where results.json and RESULTS.md go")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    return p.parse_args()


def stop_on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def stage(name: str, notes: dict, function, *args, **kwargs) -> None:
    """Run one scenario; a failure is recorded and the next scenario still runs."""
    try:
        function(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - reported in the results, not fatal
        notes.setdefault("errors", []).append(f"{name}: {exc}")
        log(f"{name}: {exc}")


def set_up(adapters: list[Adapter], notes: dict) -> list[Adapter]:
    """Each adapter's one-time set-up (the systemd box); one that fails is left out."""
    ready = []
    for adapter in adapters:
        try:
            adapter.setup()
        except Exception as exc:  # noqa: BLE001 - reported in the results, not fatal
            adapter.teardown()
            notes.setdefault("errors", []).append(f"{adapter.name} set-up: {exc}")
            log(f"{adapter.name}: set-up failed, left out: {exc}")
            continue
        ready.append(adapter)
    return ready


def tear_down(adapters: list[Adapter]) -> None:
    for adapter in adapters:
        try:
            adapter.teardown()
        except Exception as exc:  # noqa: BLE001 - the others must still be torn down
            log(f"{adapter.name}: teardown: {exc}")


def remove_work(work: Path) -> None:
    """The work directory, unless something is still mounted below it."""
    with open("/proc/self/mountinfo") as fh:
        mounted = [line.split()[4] for line in fh if line.split()[4].startswith(f"{work}/")]
    if mounted:
        log(f"left {work} in place: {mounted[0]} is still mounted")
        return
    shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    args = parse_args()
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    require_private_namespace()
    become_subreaper()
    scenarios = set(args.scenarios.split(","))
    wanted = args.clients.split(",")
    unknown = set(wanted) - {cls.name for cls in ADAPTERS}
    if unknown:
        sys.exit(f"bench: unknown clients: {', '.join(sorted(unknown))}")
    work = Path(tempfile.mkdtemp(prefix="lacme-bench-"))
    work.chmod(0o755)
    started = time.monotonic()
    pebble = start_pebble(work / "pebble", env=PEBBLE_ENV)
    adapters: list[Adapter] = []
    try:
        bundles = trust_files(pebble.tls_ca_file, work)
        root_file = work / "pebble-root.pem"
        pebble.write_root(root_file)
        root_file.chmod(0o644)
        tls_ca = work / "pebble-tls-ca.pem"
        shutil.copy(pebble.tls_ca_file, tls_ca)
        tls_ca.chmod(0o644)
        ctx = Context(pebble.directory_url, pebble.http_port, str(tls_ca), str(root_file), work)
        notes: dict = {"runs": args.runs, "s5_runs": args.s5_runs,
                       "s5_perl_runs": args.s5_perl_runs, "trust": args.trust,
                       "s7_runs": args.s7_runs}
        adapters = set_up([cls(ctx) for cls in ADAPTERS if cls.name in wanted], notes)
        services = {pebble._process.pid, pebble._dns_process.pid}
        runner = Runner(ctx, pebble, services.union(*(a.services() for a in adapters)))
        out = Path(args.out)
        machine = describe_machine()
        rates: dict = {}

        def save() -> None:
            notes["duration_s"] = round(time.monotonic() - started)
            write_reports(out, machine, runner.results, rates, notes)

        for variant in args.trust:
            use_trust(variant, bundles, adapters)
            sfx = "" if variant == "system" else f"/{variant}"
            if "S1" in scenarios:
                stage("S1" + sfx, notes, runner.issuance, "S1" + sfx, adapters, args.runs,
                      certs=1, names=1, register=True)
                save()
            if "S2" in scenarios:
                stage("S2" + sfx, notes, runner.issuance, "S2" + sfx, adapters, args.runs,
                      certs=1, names=10, register=True)
                save()
            if "S3" in scenarios or "S4" in scenarios:
                stage("S3" + sfx, notes, runner.issuance, "S3" + sfx, adapters, args.runs,
                      certs=20, names=1, register=False)
                save()
            if "S4" in scenarios:
                renewers = [a for a in adapters if a.renews]
                stage("S4" + sfx, notes, runner.renewal, "S4" + sfx, renewers, args.runs)
                if variant == "system":
                    for ours, key in (("lacme", "s4_protocol_imports"),
                                      (SYSTEMD, "s4_protocol_imports_systemd")):
                        adapter = next((a for a in adapters if a.name == ours), None)
                        if adapter and adapter.name in runner.states:
                            notes[key] = runner.imports_of_noop(adapter)
                save()
        use_trust(args.trust[0], bundles, adapters)
        if "S5" in scenarios:
            lacmes = [a for a in adapters if a.name in ("lacme", BASE, SYSTEMD, "lacme-perl")]
            limits = {"lacme": args.s5_runs, BASE: args.s5_runs, SYSTEMD: args.s5_runs,
                      "lacme-perl": args.s5_perl_runs}
            stage("S5", notes, runner.issuance, "S5", lacmes, args.s5_runs, certs=100, names=1,
                  register=False, limits=limits)
            save()
        if "S7" in scenarios:
            lacmes = [a for a in adapters if a.name in ("lacme", BASE, SYSTEMD)]
            notes["s7_curve"] = args.curve
            for n in args.curve:
                stage(f"S7 N={n}", notes, runner.scale, n, lacmes, args.s7_runs)
                save()
        if "S6" in scenarios:
            stage("S6", notes, lambda: rates.update(accountd_rates(work, 2.0, args.runs)))
            save()
        log(f"wrote {out / 'RESULTS.md'} and {out / 'results.json'} "
            f"in {notes['duration_s']} s")
        return 0
    finally:
        tear_down(adapters)
        pebble.stop()
        if not args.keep:
            remove_work(work)


if __name__ == "__main__":
    sys.exit(main())
