#!/usr/bin/env python3
"""S1's floor: what two lacme invocations cost before their first request.

    /opt/lacme-bench-venv/bin/python benchmarks/s1_floor.py [--runs 15] [--acme-tiny SECONDS]

S1 is two commands (``lacme account --register``, then ``lacme newOrder``).
In each, the first request to the CA waits for, one after the other: the
master's interpreter, the master's work up to the spawn of the client, the
client's interpreter and the client's imports (requests, then the ACME
session).  accountd and the webserver start beside the client and are not
on that path (TIMELINE.md).  This script times those steps as processes of
their own (the best of ``--runs``, the least disturbed: a lower bound), with
the interpreter that runs it, and prints

* S1's floor: twice (an interpreter for the master, then the client's
  interpreter and imports), as if the master cost nothing past its
  interpreter and no request were made: no scheduling of the components or
  change to the master can go below it;
* beside it, the master's imports (all of them: some come after the spawn,
  so this is an upper bound of its share), the same floor for a client on
  the standard library's http.client instead of requests, and acme-tiny's
  imports (one interpreter, the standard library only);
* with ``--acme-tiny S`` (acme-tiny's S1 measured in the same session by
  benchmarks/run.sh), the ratio of lacme's floor to it.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

#: (label, Python statement): each timed as ``python -c STATEMENT``.
STEPS = (
    ("interpreter", "pass"),
    ("the master's imports (account)",  # all of them: an upper bound
     "import lacme.master.main, lacme.master.account, lacme.master.run"),
    ("the master's imports (newOrder)",
     "import lacme.master.main, lacme.master.neworder, lacme.master.run"),
    ("client imports (main, then the ACME session)",
     "import lacme.client.main; from lacme.client.acme import session"),
    ("requests alone", "import requests"),
    ("http.client, ssl and json alone (a client without requests)",
     "import http.client, ssl, json"),
    ("acme-tiny's imports (standard library)",
     "import argparse, subprocess, json, os, sys, base64, binascii, time, hashlib, re, "
     "copy, textwrap, logging, urllib.request"),
    ("accountd imports (beside the client)", "import lacme.accountd.main, lacme.accountd.keys"),
)


def best_of(statement: str, runs: int) -> float:
    """The shortest wall time of ``python -c statement`` over ``runs`` runs, s."""
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", statement], check=True)
        best = min(best, time.perf_counter() - start)
    return best


def say(line: str) -> None:
    sys.stdout.write(line + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=15, help="runs per step; the best is kept")
    p.add_argument("--acme-tiny", type=float, metavar="SECONDS",
                   help="acme-tiny's S1 wall time measured in the same session")
    args = p.parse_args()
    times = {label: best_of(statement, args.runs) for label, statement in STEPS}
    interp = times["interpreter"]
    say(f"Python {sys.version.split()[0]} ({sys.executable}), best of {args.runs} runs, ms:")
    for label, _ in STEPS:
        extra = "" if label == "interpreter" else f" ({1000 * (times[label] - interp):.1f} over it)"
        say(f"  {label}: {1000 * times[label]:.1f}{extra}")
    client = times["client imports (main, then the ACME session)"]
    floor = 2 * (interp + client)
    say(f"S1 floor (2 x (master interpreter + client interpreter and imports)): {1000 * floor:.1f} ms")
    master = {name: times[f"the master's imports ({name})"] - interp
              for name in ("account", "newOrder")}
    say(f"the master's imports on top (an upper bound of their share): "
          f"{1000 * sum(master.values()):.1f} ms")
    stdlib_client = times["http.client, ssl and json alone (a client without requests)"]
    without = floor - 2 * (times["requests alone"] - stdlib_client)
    say(f"the floor with a client on http.client instead of requests: {1000 * without:.1f} ms")
    if args.acme_tiny:
        say(f"acme-tiny's S1: {1000 * args.acme_tiny:.1f} ms; floor / acme-tiny: "
              f"{floor / args.acme_tiny:.2f} (without requests: {without / args.acme_tiny:.2f})")


if __name__ == "__main__":
    main()
