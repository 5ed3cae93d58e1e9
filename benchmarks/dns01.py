#!/usr/bin/env python3
"""The dns-01 scenario: lacme with lacme-dns against Knot DNS and Pebble 2.10.

Run as root from a clone after ``scripts/setup-debian.sh`` (``python3
benchmarks/dns01.py [--runs N]``).  Starts Knot DNS on a loopback port
(tests/knot.py: a test zone, a TSIG key) and Pebble 2.10 with
``-dnsserver`` at it (PEBBLE_VA_NOSLEEP=1, PEBBLE_AUTHZREUSE=0), registers
one account, then runs each scenario ``--runs`` times in fork mode, one
``lacme newOrder --force`` each, and prints per scenario the median and
range of the wall time, the CPU seconds of the process tree (user +
system, from wait4 through RUSAGE_CHILDREN) and the number of zone
changes (the SOA serial's increase: one per UPDATE):

    D1  one certificate, a wildcard and its apex, over dns-01
    D20 twenty certificates of one name each, over dns-01, one invocation
    H20 the same twenty over http-01 (the webserver), for comparison

The issue's target: D20 takes about as long as D1 plus the CA's work for
the other nineteen orders, and writes the zone twice (one UPDATE adds every
record, one removes them), whatever the number of certificates.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from tests.knot import KEY_NAME, SESSION_ZONES, Knot, name, start_knot  # noqa: E402
from tests.lacmeenv import LacmeSetup, public_dir, write_key  # noqa: E402
from tests.pebble import PEBBLE_SID, start_pebble  # noqa: E402

SCENARIOS = {
    "D1": [("wild", [name(), "*." + name()], "dns-01")],
    "D20": [(f"h{i:02d}", [name(f"h{i:02d}")], "dns-01") for i in range(1, 21)],
    "H20": [(f"h{i:02d}", [name(f"h{i:02d}")], "http-01") for i in range(1, 21)],
}


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def make_setup(pebble: object, knot: Knot, account_key: Path, sections: list) -> LacmeSetup:
    root = public_dir()
    setup = LacmeSetup(root=root, pebble=pebble, account_key=account_key)
    setup.write()
    conf = root / "lacme-dns.conf"
    conf.write_text("\n".join(["timeout = 30", "[example.test]", f"server = {knot.address}",
                               f"key-name = {KEY_NAME}", f"key-secret = {knot.secret}",
                               f"check = {knot.address}", ""]))
    conf.chmod(0o600)
    with open(setup.conf, "a") as fh:
        fh.write(f"[dns]\nuser =\ngroup =\nconfig = {conf}\n")
    for section, names, challenge in sections:
        setup.add_section(section, names, challenge=challenge, key_kind="p256")
    setup.write_certs()
    return setup


def run_once(setup: LacmeSetup, knot: Knot) -> tuple[float, float, int]:
    serial, cpu = knot.serial(), children_cpu()
    start = time.monotonic()
    done = setup.run("newOrder", "--force", timeout=300)
    wall = time.monotonic() - start
    if done.returncode != 0:
        raise SystemExit(f"lacme newOrder failed ({done.returncode}): {done.stderr.strip()}")
    return wall, children_cpu() - cpu, knot.serial() - serial


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="lacme-dns-bench."))
    # The runs' renewal state and DNS leftovers go here, never to /var/lib/lacme.
    os.environ["STATE_DIRECTORY"] = str(work / "state")
    knot = start_knot(work / "knot", SESSION_ZONES)
    pebble = start_pebble(work / "pebble", binary=PEBBLE_SID, dns_server=knot.address,
                          env={"PEBBLE_VA_NOSLEEP": "1", "PEBBLE_AUTHZREUSE": "0"})
    try:
        account_key = write_key(public_dir() / "account.key", "p256")
        first = make_setup(pebble, knot, account_key, [])
        done = first.run("account", "--register", "--tos-agreed")
        if done.returncode != 0:
            raise SystemExit(f"registration failed: {done.stderr.strip()}")
        out = sys.stdout
        out.write(f"{'scenario':<9} {'wall s: median (min-max)':<24} {'CPU s':>6} {'zone changes':>13}\n")
        for label in args.scenarios.split(","):
            setup = make_setup(pebble, knot, account_key, SCENARIOS[label])
            results = [run_once(setup, knot) for _ in range(args.runs)]
            walls = [r[0] for r in results]
            span = f"{statistics.median(walls):.2f} ({min(walls):.2f}-{max(walls):.2f})"
            out.write(f"{label:<9} {span:<24} {statistics.median(r[1] for r in results):6.2f} "
                      f"{statistics.median(r[2] for r in results):>13}\n")
            out.flush()
    finally:
        pebble.stop()
        knot.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
