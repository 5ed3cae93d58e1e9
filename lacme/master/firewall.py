"""Temporary iptables(8) rules opening the webserver's ports (``[webserver]
iptables = Yes``), run by the master as root.

The tables are saved with ``iptables-save`` before the rules are inserted and
restored with ``iptables-restore`` afterwards, whatever happened in between
(the master calls ``restore`` from its cleanup, which also runs on INT/TERM).
IPv4 addresses use iptables, IPv6 addresses ip6tables; a wildcard IPv6
address (``[::]``, usually dual-stack) opens both.
"""

from __future__ import annotations

import logging
import subprocess
from dataclasses import dataclass, field

from lacme.core.errors import LacmeError

log = logging.getLogger("lacme")

EMPTY_FILTER_TABLE = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n"


@dataclass
class TemporaryRules:
    """Rules inserted for one run, and the saved tables to put back."""

    saved: dict[str, bytes] = field(default_factory=dict)

    def open_ports(self, ports: dict[str, set[int]]) -> None:
        """``ports`` maps "4"/"6" to TCP ports; saves, then inserts rules."""
        for version, wanted in sorted(ports.items()):
            if not wanted:
                continue
            tool = "iptables" if version == "4" else "ip6tables"
            saved = _run([f"{tool}-save", "-c"])
            if "*filter" not in saved.splitlines():
                # A filter table never used yet is not listed: restoring
                # must still bring it back to empty with ACCEPT policies.
                saved += EMPTY_FILTER_TABLE
            self.saved[version] = saved.encode("latin-1")
            for port in sorted(wanted):
                _run([tool, "-w", "-I", "INPUT", "-p", "tcp", "-m", "tcp",
                      "--dport", str(port), "-j", "ACCEPT"])
                _run([tool, "-w", "-I", "OUTPUT", "-p", "tcp", "-m", "tcp",
                      "--sport", str(port), "-j", "ACCEPT"])
                log.debug("iptables: opened TCP port %d (IPv%s)", port, version)

    def restore(self) -> None:
        """Put back every table saved by ``open_ports`` (idempotent)."""
        while self.saved:
            version, data = self.saved.popitem()
            tool = "iptables-restore" if version == "4" else "ip6tables-restore"
            try:
                subprocess.run([tool, "-w", "-c"], input=data, check=True,
                               capture_output=True, timeout=30)
            except (OSError, subprocess.SubprocessError) as exc:
                log.error("%s: could not restore the saved tables: %s", tool, exc)


def ports_for(addresses) -> dict[str, set[int]]:
    """TCP ports per IP version for the [webserver] listen addresses."""
    ports: dict[str, set[int]] = {"4": set(), "6": set()}
    for addr in addresses:
        if addr.family == "inet":
            ports["4"].add(addr.port or 80)
        elif addr.family == "inet6":
            ports["6"].add(addr.port or 80)
            if addr.host in ("::", "0:0:0:0:0:0:0:0"):
                ports["4"].add(addr.port or 80)
    return ports


def _run(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, check=True, capture_output=True, timeout=30)
    except FileNotFoundError:
        raise LacmeError(f"[webserver] iptables: {argv[0]}: command not found") from None
    except subprocess.CalledProcessError as exc:
        detail = exc.stderr.decode(errors="replace").strip().splitlines()
        raise LacmeError(f"[webserver] iptables: {' '.join(argv)}: "
                         f"{detail[-1] if detail else f'exit status {exc.returncode}'}") from None
    except subprocess.TimeoutExpired:
        raise LacmeError(f"[webserver] iptables: {argv[0]}: timed out") from None
    return done.stdout.decode("latin-1")
