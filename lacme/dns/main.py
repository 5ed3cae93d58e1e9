"""The ``lacme-dns`` program: writes dns-01 and dns-persist-01 TXT records.

Runs unprivileged (``[dns] user``, or a systemd ``DynamicUser=``), spawned
by the master with one inherited connection or socket-activated with a
listening socket, both with the sd_listen_fds protocol.  It holds the DNS
secrets (lacme-dns.conf: TSIG keys, or a hook with its own secrets) and
nothing else: no account key, no service key, no certificate.  It speaks
the line protocol of ``lacme.protocol.dns01`` with the master, checks every
record against the same rule as the master, and writes them with RFC 2136
UPDATEs (``lacme.dns.rfc2136``) or a hook (``lacme.dns.publisher``).

Its configuration: ``--config=PATH``, else the systemd credential
``lacme-dns.conf`` ($CREDENTIALS_DIRECTORY), else /etc/lacme/lacme-dns.conf.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
from typing import Any

from lacme.config.defaults import run_deadline
from lacme.config.dns import DEFAULT_DNS_CONFIG, DnsConfig, validate_dns_config
from lacme.config.ini import read_ini
from lacme.core import descriptors, log
from lacme.core.cli import ArgumentParser
from lacme.core.errors import EXIT_OK, LacmeError, ProtocolError, UsageError
from lacme.dns.publisher import Publisher
from lacme.protocol import control, dns01

NAME = "lacme-dns"
CREDENTIAL = "lacme-dns.conf"
IDLE_TIMEOUT = run_deadline(600.0)

logger = logging.getLogger(NAME)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = ArgumentParser(prog=NAME, description="Write ACME DNS challenge records.")
    parser.add_argument("--config", metavar="PATH", help="lacme-dns.conf (the DNS secrets)")
    parser.add_argument("--idle-timeout", type=float, default=0.0, metavar="SECONDS",
                        help="with a listening socket: exit after SECONDS without a connection")
    parser.add_argument("-q", "--quiet", action="store_true")
    parser.add_argument("--debug", action="store_true")
    return parser.parse_args(argv)


def config_path(option: str | None) -> str:
    if option:
        return option
    credentials = os.environ.get("CREDENTIALS_DIRECTORY")
    if credentials and os.path.exists(os.path.join(credentials, CREDENTIAL)):
        return os.path.join(credentials, CREDENTIAL)
    return DEFAULT_DNS_CONFIG


def load_config(path: str) -> tuple[DnsConfig | None, str]:
    """The configuration, or why it cannot be used (said to the master)."""
    try:
        return validate_dns_config(read_ini(path)), ""
    except LacmeError as exc:
        return None, str(exc)


def serve_connection(sock: socket.socket, cfg: DnsConfig | None, error: str) -> None:
    """One master connection: allow, then update batches, until it closes."""
    sock.settimeout(IDLE_TIMEOUT)
    channel = descriptors.Channel(sock)
    publisher = Publisher(cfg, error)
    try:
        while True:
            line, _ = channel.recv_line(control.MAX_LINE)
            if line is None:
                return
            msg = control.decode_message(line, dns01.MASTER_TYPES)
            if msg["type"] == "allow":
                publisher.allow(msg.get("names") or [])
                continue
            channel.send(control.encode_message("updated", id=msg.get("id"),
                                                **handle_update(publisher, msg)))
    finally:
        publisher.clean_up()
        sock.close()


def records(raw: Any) -> list[tuple[str, str]]:
    if not isinstance(raw, list) or not all(
            isinstance(r, dict) and isinstance(r.get("name"), str) and isinstance(r.get("value"), str)
            for r in raw):
        raise ProtocolError("update: records must be [{name, value}]")
    return [(r["name"], r["value"]) for r in raw]


def handle_update(publisher: Publisher, msg: dict) -> dict[str, Any]:
    add = records(msg.get("add", []))
    try:
        publisher.update(add, records(msg.get("delete", [])), wait=msg.get("wait") is True,
                         persistent=msg.get("persistent") is True)
    except LacmeError as exc:
        logger.debug("update failed: %s", exc)
        return {"ok": False, "message": str(exc), "written": publisher.holds(add)}
    return {"ok": True, "message": "", "written": bool(add)}


def run(options: argparse.Namespace) -> int:
    fds = descriptors.inherited_fds()
    if not fds:
        raise UsageError(f"{NAME}: no socket inherited (started by lacme or by systemd)")
    cfg, error = load_config(config_path(options.config))
    if error:
        logger.debug("%s", error)
    for inherited in fds:
        sock = socket.socket(fileno=inherited.fd)
        if descriptors.is_listening(inherited.fd):
            sock.settimeout(options.idle_timeout or None)
            while True:  # systemd Accept=no: one master at a time
                try:
                    conn, _ = sock.accept()
                except TimeoutError:
                    return EXIT_OK  # idle: the socket starts us again
                serve_connection(conn, cfg, error)
        serve_connection(sock, cfg, error)
    return EXIT_OK


def _terminated(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    try:
        options = parse_args(sys.argv[1:] if argv is None else argv)
    except UsageError as exc:
        log.setup(NAME)
        logger.error("%s", exc)
        return exc.exit_code
    log.setup(NAME, quiet=options.quiet, debug=options.debug)
    signal.signal(signal.SIGTERM, _terminated)  # the records are removed on the way out
    try:
        return run(options)
    except KeyboardInterrupt:
        return EXIT_OK
    except (LacmeError, OSError) as exc:
        logger.error("%s", exc, exc_info=options.debug)
        return getattr(exc, "exit_code", 1)
