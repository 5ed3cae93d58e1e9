"""S6: lacme-accountd alone, signatures per second over one connection.

Run by the benchmark runner (root; no network).  The accountd is started
with ``--stdio`` (one connection: its stdin/stdout) and sent well-formed
RFC 8555 section 6.2 signing inputs one at a time, each answered before the
next is sent (how the ACME client uses it).  Speaks wire protocol version 1.
"""

from __future__ import annotations

import base64
import json
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from clients import PERL_ACCOUNTD, clean_env, write_pem_key


@dataclass(frozen=True)
class Rate:
    per_second: float
    count: int
    seconds: float


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def signing_input(alg: str, i: int) -> bytes:
    protected = {"alg": alg, "kid": "https://127.0.0.1:14000/my-account/1",
                 "nonce": b64u(i.to_bytes(8, "big")), "url": "https://127.0.0.1:14000/my-order/1"}
    return f"{b64u(json.dumps(protected).encode())}.{b64u(b'{}')}\r\n".encode()


def measure_rate(program: str, key_kind: str, work: Path, seconds: float) -> Rate:
    """Signatures per second of ``program`` with a fresh key of ``key_kind`` ('rsa' or 'ec')."""
    key = write_pem_key(work / f"accountd-{key_kind}.key", key_kind)
    argv = [program, f"--privkey=file:{key}", "--stdio", "--quiet"]
    if program != PERL_ACCOUNTD:
        argv.append(f"--config={work / 'empty-accountd.conf'}")
        (work / "empty-accountd.conf").write_text("")
    else:
        argv.append("--config=/dev/null")
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, env=clean_env())
    try:
        greeting = proc.stdout.readline()
        proc.stdout.readline()  # the JWK
        alg = json.loads(greeting.split(b" OK ", 1)[1])["alg"]
        count = 0
        start = time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds:
            proc.stdin.write(signing_input(alg, count))
            proc.stdin.flush()
            if not proc.stdout.readline().endswith(b"\r\n"):
                raise RuntimeError(f"{program}: no signature for request {count}")
            count += 1
        return Rate(per_second=count / elapsed, count=count, seconds=elapsed)
    finally:
        proc.stdin.close()
        proc.wait(timeout=10)
