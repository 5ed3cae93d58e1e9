"""The ``lacme`` program: the master, run as root; its entry point.

It is the only component that reads the service keys.  Per certificate
section the data path is: configuration -> CSR -> the ACME client (another
process, unprivileged, the only one that speaks to the network) -> chain
verification -> atomic install -> notify.  The master never opens a
connection to the network itself.

Wiring (see docs/architecture.md and docs/systemd.md):
* fork mode: the master spawns accountd (``[accountd]`` present and no
  ``--socket``), the client (``[client] command``) and one webserver per
  ``[webserver] listen`` address, each after dropping privileges;
* systemd mode: ``[client] connect`` names the socket of a socket-activated
  client, the accountd is reached through ``[client] socket`` and the
  webserver serves ``[webserver] challenge-directory``; nothing is forked.

When to renew is decided from the installed certificates and the state
file (``lacme.master.state``) by ``lacme.master.renewal`` (ARI, RFC 9773, and the
lifetime-aware rule).  A newOrder run where nothing is due reads the
configuration, the certificates and the state file and exits: no network,
protocol or X.509 module is imported, and the client is started only when a
renewalInfo check is due (it fetches; the master persists and decides) or
a certificate is.  ``lacme status`` reports the same facts (text, JSON or a
Prometheus textfile) and contacts nobody.

This module reads the command line (the common newOrder forms without
argparse: ``lacme.master.cli`` has the parser) and runs the command:
newOrder (``lacme.master.neworder``), account, revokeCert, status,
placeholder, each imported only when it runs.
"""

from __future__ import annotations

import logging
import os
import sys

from lacme.config.defaults import DEFAULT_MASTER_CONFIG, NEW_ORDER_COMMANDS
from lacme.config.master import load_master_config
from lacme.config.specifiers import Identity, expand
from lacme.core.errors import EXIT_FAILURE, ConfigError, LacmeError, ReportedError, UsageError
from lacme.core.log import exit_now
from lacme.core.log import setup as setup_logging

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence
    from typing import Any, NoReturn

    from lacme.config.master import MasterConfig

log = logging.getLogger("lacme")


def quick_parse(argv: Sequence[str]) -> argparse.Namespace | None:
    """The common ``[--config F] [--socket P] [-q] [--debug] newOrder [--config-certs F]...
    [--min-days N | --force] [SECTION...]`` without argparse (whose import and
    parser build are a good part of a no-op run); None for anything else, which
    lacme.master.cli.build_parser() then reads (help, errors, abbreviations, other commands).
    The result equals argparse's (tests/test_master_cli.py checks it)."""
    from types import SimpleNamespace

    args: dict[str, Any] = {"config": None, "socket": None, "quiet": False, "debug": False,
                            "command": None, "config_certs": None, "min_days": None,
                            "force": False, "section": []}
    tokens = list(argv)
    i = 0

    def value(name: str) -> str | None:
        nonlocal i
        token = tokens[i]
        if token.startswith(name + "="):
            return token[len(name) + 1:]
        if token == name and i + 1 < len(tokens) and not tokens[i + 1].startswith("-"):
            i += 1
            return tokens[i]
        return None

    while i < len(tokens) and args["command"] is None:
        token = tokens[i]
        if token in ("-q", "--quiet"):
            args["quiet"] = True
        elif token == "--debug":
            args["debug"] = True
        elif token in NEW_ORDER_COMMANDS:
            args["command"] = token
        elif token.startswith("--config") and (found := value("--config")) is not None:
            args["config"] = found
        elif token.startswith("--socket") and (found := value("--socket")) is not None:
            args["socket"] = found
        else:
            return None
        i += 1
    if args["command"] is None:
        return None
    while i < len(tokens) and tokens[i].startswith("-"):
        token = tokens[i]
        if token == "--force" and not args["force"] and args["min_days"] is None:
            args["force"] = True
        elif token.startswith("--config-certs") and (found := value("--config-certs")) is not None:
            args["config_certs"] = [*(args["config_certs"] or []), found]
        elif (token.startswith("--min-days") and not args["force"] and args["min_days"] is None
              and (found := value("--min-days")) is not None and found.isascii()
              and found.lstrip("+-").isdigit() and len(found.lstrip("+-")) >= len(found) - 1):
            args["min_days"] = int(found)
        else:
            return None
        i += 1
    if any(token.startswith("-") for token in tokens[i:]):
        return None
    args["section"] = tokens[i:]
    return SimpleNamespace(**args)  # type: ignore[return-value]  # Namespace's fields; argparse not loaded


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line; SystemExit from argparse for --help and usage errors."""
    argv = sys.argv[1:] if argv is None else argv
    if (quick := quick_parse(argv)) is not None:
        return quick
    from lacme.master.cli import build_parser

    return build_parser().parse_args(argv)


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """The ``lacme`` program (its console script): ``run_main``'s exit code,
    without the interpreter's teardown.  Everything is written, installed,
    reaped and removed by then; the teardown of the modules a run loaded
    (cryptography among them) would only add tens of ms of CPU."""
    exit_now(run_main(argv))


def run_main(argv: Sequence[str] | None = None) -> int:
    """Read the command line, run the command; the exit code."""
    try:
        args = parse_args(argv)
    except SystemExit as exc:  # argparse: 0 for --help, 2 for usage errors
        return int(exc.code or 0)
    setup_logging("lacme", quiet=args.quiet and not args.debug, debug=args.debug)
    try:
        return run(args)
    except KeyboardInterrupt:
        log.error("interrupted")
        return EXIT_FAILURE
    except ReportedError as exc:  # the component that failed has said why
        log.debug("%s", exc, exc_info=args.debug)
        return exc.exit_code
    except LacmeError as exc:
        log.error("%s", exc, exc_info=args.debug)
        return exc.exit_code
    except OSError as exc:
        log.error("%s", exc, exc_info=args.debug)
        return EXIT_FAILURE


def run(args: argparse.Namespace) -> int:
    ident = Identity.current()
    config_path = expand(args.config or DEFAULT_MASTER_CONFIG, ident)
    socket_override = expand(args.socket, ident) if args.socket else None
    cfg = load_master_config(config_path, ident, socket_override=socket_override)
    command = args.command
    if command != "status":
        check_unit_wiring(cfg)
    if command in NEW_ORDER_COMMANDS:
        from lacme.master.neworder import new_order

        return new_order(cfg, args, ident)
    if command == "account":
        from lacme.master.account import account

        return account(cfg, args)
    if command in ("revokeCert", "revoke-cert"):
        from lacme.master.revoke import revoke

        return revoke(cfg, args)
    if command == "status":
        from lacme.master.status import status

        return status(cfg, args, ident)
    if command == "placeholder":
        from lacme.master.placeholder import placeholder

        return placeholder(cfg, args, ident)
    raise UsageError(f"unknown command {command!r}")  # argparse prevents this


RENEW_UNIT = "lacme-renew.service"


def check_unit_wiring(cfg: MasterConfig) -> None:
    """Refuse a configuration that would fork components inside
    lacme-renew.service, whose sandbox has no network, no privilege drop
    and a read-only /run: the fork-mode lacme.conf of Debian's lacme, kept by
    ``make install``, would otherwise fail later and name neither the cause
    nor the fix.  One line, exit 2, nothing done.  Cheap: /proc/self/cgroup
    is read only under systemd ($INVOCATION_ID) and for a fork-mode file."""
    if "INVOCATION_ID" not in os.environ:
        return
    from lacme.config.wiring import MOVING_HINT, forked_by

    forked = forked_by(cfg)
    if forked and runs_in_unit(RENEW_UNIT):
        raise ConfigError(f"{cfg.path}: a fork-mode configuration ({', '.join(forked)}) cannot run "
                          f"in {RENEW_UNIT}, which needs the systemd-mode one (lacme.conf.systemd "
                          f"among the examples; {MOVING_HINT})")


def runs_in_unit(unit: str) -> bool:
    """This process is in the cgroup of systemd unit ``unit`` (cgroups(7):
    "hierarchy-ID:controllers:path" lines; v2 and systemd's named v1)."""
    try:
        with open("/proc/self/cgroup", encoding="utf-8", errors="replace") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return False
    return any(line.split(":", 2)[-1].rsplit("/", 1)[-1] == unit for line in lines)
