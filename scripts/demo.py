#!/usr/bin/env python3
"""The main job, end to end on this machine: start a local Pebble test CA,
register an account and issue a certificate through all four lacme
components (the master spawns lacme-accountd, the ACME client and the
webserver, fork mode), then verify and print what was installed.

Usage: python3 scripts/demo.py [--keep]   (after scripts/setup-debian.sh)
Traffic stays on 127.0.0.1.  Exits non-zero if anything fails.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.lacmeenv import LacmeSetup, load_chain, san_names, unique_name, write_key  # noqa: E402
from tests.pebble import start_pebble  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="lacme-demo-"))
    pebble = start_pebble(work / "pebble", env={"PEBBLE_VA_NOSLEEP": "1"})
    try:
        key = write_key(work / "account.key")
        setup = LacmeSetup(root=work / "etc", pebble=pebble, account_key=key)
        names = [unique_name("www"), unique_name("api")]
        section = setup.add_section("www", names, key_kind="p256")
        setup.write()
        print(f"# Pebble at {pebble.directory_url}; configuration in {setup.root}")
        for argv in (("account", "--register", "--tos-agreed", "mailto:admin@example.com"),
                     ("newOrder",)):
            print("$ lacme --config=" + str(setup.conf), *argv, flush=True)
            done = setup.run(*argv)
            sys.stdout.write(done.stdout)
            sys.stderr.write(done.stderr)
            if done.returncode != 0:
                print(f"demo: lacme {argv[0]} exited with {done.returncode}", file=sys.stderr)
                return 1
        leaf = load_chain(Path(section["certificate"]))[0]
        chain = load_chain(Path(section["certificate-chain"]))
        assert san_names(leaf) == set(names), "names differ from the request"
        print(f"# installed {section['certificate']} ({len(chain)} certificates in the chain)")
        print(f"#   subject  {leaf.subject.rfc4514_string()}")
        print(f"#   names    {', '.join(sorted(san_names(leaf)))}")
        print(f"#   issuer   {leaf.issuer.rfc4514_string()}")
        print(f"#   valid    {leaf.not_valid_before_utc:%Y-%m-%d} .. {leaf.not_valid_after_utc:%Y-%m-%d}")
        print("demo: OK")
        return 0
    finally:
        pebble.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
