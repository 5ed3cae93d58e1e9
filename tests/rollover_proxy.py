"""A fault injector for the rollover tests: runs in place of lacme-accountd
(``[accountd] command``), starts the real one, relays the wire both ways,
and SIGKILLs the master (its parent) at one point of a key rollover:

* ``before``: when the outer keyChange request is signed, before the
  signature is passed on, so the request never reaches the CA;
* ``after``: when the first request after keyChange's answer comes (the
  lookup with the new key), so the CA has switched keys and the run has not
  finished.

Usage: rollover_proxy.py before|after REAL-ACCOUNTD-ARGV... (the master's
options follow).  Test code only.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys


def header_of(line: bytes) -> dict:
    head = line.split(b".", 1)[0]
    head += b"=" * (-len(head) % 4)
    try:
        value = json.loads(base64.urlsafe_b64decode(head))
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def main() -> int:
    point, argv = sys.argv[1], sys.argv[2:]
    master = os.getppid()
    real = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert real.stdin is not None and real.stdout is not None
    out = os.fdopen(1, "wb", buffering=0)
    out.write(real.stdout.readline() + real.stdout.readline())  # the greeting
    changed = False
    for line in iter(sys.stdin.buffer.readline, b""):
        if line.startswith(b"{"):  # the master's scope (lacme.protocol.scope): no answer
            real.stdin.write(line)
            real.stdin.flush()
            continue
        header = header_of(line)
        # the outer keyChange JWS: the current key, with its kid (the inner one has the new jwk)
        is_change = str(header.get("url", "")).endswith("/rollover-account-key") and "kid" in header
        if changed and point == "after":
            os.kill(master, signal.SIGKILL)
            return 0
        real.stdin.write(line)
        real.stdin.flush()
        answer = real.stdout.readline()
        if is_change and point == "before":
            os.kill(master, signal.SIGKILL)
            return 0
        changed = changed or is_change
        out.write(answer)
    return 0


if __name__ == "__main__":
    sys.exit(main())
