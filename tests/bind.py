"""Test harness: a real BIND 9 (Debian's bind9) primary on a loopback port.

Run by the test process.  ``start_bind`` writes a named.conf with one zone
(``example.test``, the zone file of tests/knot.py) and one TSIG key whose
``update-policy`` grants TXT records at ``_acme-challenge.www`` only (BIND
answers REFUSED to anything else), then runs ``named -g`` in the foreground
and waits until it answers the zone's SOA.
"""

from __future__ import annotations

import base64
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import dns.message
import dns.query

from tests.knot import KEY_NAME, ZONE, zone_text
from tests.pebble import PebbleError, die_with_parent, free_port, read_tail, stop_process

NAMED = "/usr/sbin/named"
GRANTED = f"_acme-challenge.www.{ZONE}"


@dataclass
class Bind:
    port: int
    secret: str
    _process: subprocess.Popen = field(repr=False)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        stop_process(self._process)


def start_bind(workdir: Path) -> Bind:
    workdir.mkdir(parents=True, exist_ok=True)
    secret = base64.b64encode(os.urandom(32)).decode()
    (workdir / f"{ZONE}.zone").write_text(zone_text(ZONE))
    for _ in range(3):
        port, control = free_port(), free_port()
        conf = workdir / "named.conf"
        conf.write_text("\n".join([
            f'key "{KEY_NAME}" {{ algorithm hmac-sha256; secret "{secret}"; }};',
            "options {", f'    directory "{workdir}";', f"    listen-on port {port} {{ 127.0.0.1; }};",
            "    listen-on-v6 { none; };", f'    pid-file "{workdir}/named.pid";',
            "    recursion no;", "    dnssec-validation no;", "};",
            f"controls {{ inet 127.0.0.1 port {control} allow {{ none; }}; }};",
            f'zone "{ZONE}" {{', "    type primary;", f'    file "{workdir}/{ZONE}.zone";',
            f'    journal "{workdir}/{ZONE}.jnl";',
            f"    update-policy {{ grant {KEY_NAME} name {GRANTED}. TXT; }};", "};", ""]))
        log_path = workdir / "named.log"
        with open(log_path, "ab") as log:
            process = subprocess.Popen([NAMED, "-g", "-c", str(conf)], stdin=subprocess.DEVNULL,
                                       stdout=log, stderr=subprocess.STDOUT,
                                       preexec_fn=die_with_parent)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and process.poll() is None:
            try:
                answer = dns.query.udp(dns.message.make_query(ZONE, "SOA"), "127.0.0.1",
                                       timeout=1, port=port)
                if answer.answer:
                    return Bind(port, secret, process)
            except Exception:  # noqa: BLE001 - any failure means not answering yet
                pass
            time.sleep(0.05)
        stop_process(process)
    raise PebbleError(f"named did not start: {read_tail(workdir / 'named.log')}")
