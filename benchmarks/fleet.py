"""Fleet benchmark: N hosts renew at once through one signer over ssh.

Run as root from the repository: ``python3 benchmarks/fleet.py [--hosts
1,3,10] [--runs 3]`` (after scripts/setup-debian.sh).  It starts a Pebble
(``PEBBLE_VA_NOSLEEP=1``, ``PEBBLE_AUTHZREUSE=0``) and the test suite's
fleet (tests/fleet.py: a signer namespace with Debian's sshd, one namespace
per host, lacme-accountd as each host's forced command, origin and key id
pinned on the signer), registers one RSA-2048 account, then for each N and
each variant runs N masters at once, each ordering one certificate
(``newOrder --force``), and prints per variant: the wall time of the whole
round (median and min-max over the runs), the signatures of the round
(POSTs in Pebble's log), signatures per second, and the ratio to the local
variant of the same round.  Variants, interleaved in every round:

* ``local``: accountd spawned on the host itself (no ssh), the floor;
* ``ssh``: ``ssh -T`` per run, a fresh handshake each time;
* ``ssh+mux``: the same with ``ControlMaster=auto``/``ControlPersist``: a
  master connection per host, opened by a first, untimed run, reused by the
  timed one (``ControlPath`` under the run's directory).

Prints figures only; nothing is asserted.  Everything it starts is stopped.
"""

from __future__ import annotations

import argparse
import os
import pwd
import statistics
import subprocess
import sys
import time
from pathlib import Path

TREE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TREE))

from tests.fleet import SIGNER_USER, Fleet  # noqa: E402 - after the path set-up above
from tests.lacmeenv import LacmeSetup, public_dir, unique_name, write_key  # noqa: E402 - same
from tests.pebble import start_pebble  # noqa: E402 - same
from tests.sysvenv import system_venv  # noqa: E402 - same

VARIANTS = ("local", "ssh", "ssh+mux")


def host_setup(root: Path, pebble, fleet: Fleet, n: int, variant: str, key: Path) -> LacmeSetup:
    address = f"127.0.0.{n + 2}"
    if variant == "local":
        command = "lacme-accountd"
    else:
        extra = ""
        if variant == "ssh+mux":
            control = root / "mux"
            extra = (f"-o ControlMaster=auto -o ControlPath={control} -o ControlPersist=120 ")
        command = fleet.hosts[n].ssh_command(extra=extra)
    s = LacmeSetup(root=root, pebble=pebble, account_key=key, accountd_command=command,
                   listen=f"{address}:{pebble.http_port}")
    name = unique_name()
    pebble.add_a(name, address)
    s.add_section("www", [name])
    s.write()
    if variant != "local":
        conf = s.conf.read_text().replace(f"config = {s.root / 'lacme-accountd.conf'}\n", "")
        s.conf.write_text(conf)
    return s


def round_of(setups: list[LacmeSetup]) -> float:
    """Run every host's newOrder at once; the wall time of the round."""
    start = time.monotonic()
    procs = [subprocess.Popen([*s.master_argv(), "--quiet", "newOrder", "--force"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              env=s.master_env(), cwd=s.root) for s in setups]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    wall = time.monotonic() - start
    for p, err in zip(procs, errors, strict=True):
        if p.returncode != 0:
            raise SystemExit(f"fleet: a run failed (exit {p.returncode}): {err.strip()}")
    return wall


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hosts", default="1,3,10", help="host counts, comma-separated")
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args()
    counts = [int(x) for x in args.hosts.split(",")]
    work = public_dir()
    pebble = start_pebble(work / "pebble", env={"PEBBLE_VA_NOSLEEP": "1", "PEBBLE_AUTHZREUSE": "0"})
    fleet = Fleet(root=work / "fleet")
    try:
        venv = system_venv()
        fleet.setup(max(counts))
        signer = pwd.getpwnam(SIGNER_USER)
        key = write_key(fleet.home / "account.key")
        os.chown(key, signer.pw_uid, signer.pw_gid)
        reg = LacmeSetup(root=work / "register", pebble=pebble, account_key=key)
        reg.write()
        done = reg.run("account", "--register", "--tos-agreed")
        if done.returncode != 0:
            raise SystemExit(f"fleet: registration failed: {done.stderr.strip()}")
        (line,) = [x for x in done.stderr.splitlines() if "(JWK thumbprint)" in x]
        kid = line.split(" ", 2)[1].rstrip(":")
        conf = fleet.home / "lacme-accountd.conf"
        conf.write_text(f"privkey = file:{key}\norigin = {pebble.directory_url.rsplit('/', 1)[0]}\n"
                        f"keyid = {kid}\n")
        os.chown(conf, signer.pw_uid, signer.pw_gid)
        for host in fleet.hosts:
            fleet.authorize(host, f"{venv}/lacme-accountd --stdio --quiet --config={conf}")
        print(f"fleet benchmark: Pebble {pebble.directory_url}, RSA-2048 account, "
              f"{args.runs} runs, one certificate per host per run")
        print(f"{'hosts':>5} {'variant':<8} {'wall s (median, min-max)':<28} {'sigs':>5} "
              f"{'sigs/s':>7} {'x local':>8}")
        for count in counts:
            walls: dict[str, list[float]] = {v: [] for v in VARIANTS}
            sigs: dict[str, list[int]] = {v: [] for v in VARIANTS}
            for run in range(args.runs):
                for variant in VARIANTS:
                    setups = [host_setup(work / f"n{count}-{variant}-{run}-{n}", pebble, fleet, n,
                                         variant, key) for n in range(count)]
                    if variant == "ssh+mux":
                        round_of(setups)  # opens the master connections (untimed)
                    offset = pebble.log_offset()
                    walls[variant].append(round_of(setups))
                    posts = pebble.requests_since(offset)
                    sigs[variant].append(sum(v for k, v in posts.items() if k.startswith("POST ")))
            local = statistics.median(walls["local"])
            for variant in VARIANTS:
                w = walls[variant]
                med = statistics.median(w)
                n_sigs = statistics.median(sigs[variant])
                print(f"{count:>5} {variant:<8} {med:>6.2f} ({min(w):.2f}-{max(w):.2f}){'':<14} "
                      f"{n_sigs:>5.0f} {n_sigs / med:>7.1f} {med / local:>8.2f}")
    finally:
        subprocess.run(["pkill", "-f", f"ControlPath={work}"], check=False)
        fleet.teardown()
        pebble.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
