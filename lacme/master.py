"""The ``lacme`` program: the master, run as root.

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

A newOrder run where every certificate is still fresh reads the
configuration and the certificates' notAfter dates and exits: no network,
protocol or X.509 module is imported.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

from . import __version__
from .config import CertSection, MasterConfig, load_cert_sections, load_master_config
from .errors import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, ConfigError, LacmeError, UsageError
from .log import setup as setup_logging
from .specifiers import Identity, expand

if TYPE_CHECKING:
    from .session import ClientSession

log = logging.getLogger("lacme")

DEFAULT_MIN_DAYS = 21

MSG_INSTALLED = "0b1f7e4c9d2a4f60a3c5e8d1b2a7c901"
MSG_SKIPPED = "5c8e2d1a7b3f4e69a0d4c7b2e1f8a302"
MSG_FAILED = "9e4d3c2b1a0f4e5d8c7b6a5f4e3d2c03"


# --------------------------------------------------------------------------
# command line

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lacme",
        description="Privilege-separated ACME client (master process).",
        epilog="Exit status: 0 success, 1 a section, file or request failed, "
        "2 usage or configuration error.",
    )
    p.add_argument("--config", metavar="FILENAME", help="default: %%E/lacme/lacme.conf")
    p.add_argument("--socket", metavar="PATH", help="lacme-accountd socket (ignores [accountd])")
    p.add_argument("-q", "--quiet", action="store_true", help="be quiet")
    p.add_argument("--debug", action="store_true", help="turn on debug mode")
    p.add_argument("--version", action="version", version=f"lacme {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    acc = sub.add_parser("account", help="register, update or deactivate the account")
    acc.add_argument("--tos-agreed", action="store_true", help="agree to the terms of service")
    acc.add_argument("--register", action="store_true", help="register the account key")
    acc.add_argument("--deactivate", action="store_true", help="deactivate the account")
    acc.add_argument("contact", nargs="*", metavar="CONTACT", help="e.g. mailto:admin@example.com")

    for name, alias in (("newOrder", "new-order"),):
        new = sub.add_parser(name, aliases=[alias, "new-cert"], help="issue or renew certificates")
        new.add_argument("--config-certs", action="append", metavar="FILE",
                         help="certificate configuration file or directory (repeatable)")
        grp = new.add_mutually_exclusive_group()
        grp.add_argument("--min-days", type=int, metavar="INT",
                         help="renew when fewer days than this remain")
        grp.add_argument("--force", action="store_true", help="renew regardless (= --min-days=-1)")
        new.add_argument("section", nargs="*", metavar="SECTION")

    rev = sub.add_parser("revokeCert", aliases=["revoke-cert"], help="revoke certificates")
    rev.add_argument("--reason", type=int, metavar="CODE",
                     help="RFC 5280 revocation reason code")
    rev.add_argument("file", nargs="+", metavar="FILE")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: 0 for --help, 2 for usage errors
        return int(exc.code or 0)
    setup_logging("lacme", quiet=args.quiet and not args.debug, debug=args.debug)
    try:
        return run(args)
    except KeyboardInterrupt:
        log.error("interrupted")
        return EXIT_FAILURE
    except LacmeError as exc:
        log.error("%s", exc, exc_info=args.debug)
        return exc.exit_code
    except OSError as exc:
        log.error("%s", exc, exc_info=args.debug)
        return EXIT_FAILURE


def run(args: argparse.Namespace) -> int:
    ident = Identity.current()
    config_path = expand(args.config or "%E/lacme/lacme.conf", ident)
    socket_override = expand(args.socket, ident) if args.socket else None
    cfg = load_master_config(config_path, ident, socket_override=socket_override)
    command = args.command
    if command in ("newOrder", "new-order", "new-cert"):
        return new_order(cfg, args, ident)
    if command == "account":
        return account(cfg, args)
    if command in ("revokeCert", "revoke-cert"):
        return revoke(cfg, args)
    raise UsageError(f"unknown command {command!r}")  # argparse prevents this


# --------------------------------------------------------------------------
# newOrder

@dataclass
class Pending:
    """A section whose order is with the client."""

    section: CertSection
    csr: bytes


def new_order(cfg: MasterConfig, args: argparse.Namespace, ident: Identity) -> int:
    items = cfg.config_certs
    if args.config_certs:
        base = os.path.dirname(os.path.abspath(cfg.path))
        items = tuple(_resolve_item(expand(i, ident), base) for i in args.config_certs)
    sections = load_cert_sections(items)
    cli_min_days = -1 if args.force else args.min_days

    rv = EXIT_OK
    names = list(args.section) if args.section else sorted(sections)
    due: list[CertSection] = []
    for name in names:
        section = sections.get(name)
        if section is None:
            log.warning("no such section [%s], skipping", name)
            rv = EXIT_FAILURE
            continue
        if is_due(section, cli_min_days, quiet=args.quiet):
            due.append(section)
    if not due:
        return rv

    # Only now is there work: the heavier modules come in here.
    from . import x509

    pending: dict[str, Pending] = {}
    for section in due:
        try:
            key = x509.load_private_key(section.certificate_key)
            csr = x509.build_csr(key, section.subject, section.names,
                                 key_usage=section.key_usage, tlsfeature=section.tlsfeature,
                                 hash_name=section.hash)
        except LacmeError as exc:
            _section_failed(section, f"cannot build the CSR: {exc}")
            rv = EXIT_FAILURE
            continue
        pending[section.name] = Pending(section, csr)
    if not pending:
        return rv

    from .session import ClientSession

    installed: list[str] = []
    with ClientSession(cfg, debug=args.debug, challenges=True) as session:
        results = session.order(
            [(p.section.name, p.section.names, p.csr) for p in pending.values()],
            on_certificate=lambda sid, pem: _on_certificate(pending[sid], pem, installed),
        )
    for sid, outcome in results.items():
        if outcome is not True:
            _section_failed(pending[sid].section, outcome)
            rv = EXIT_FAILURE
    for sid in installed:
        if not _notify(pending[sid].section):
            rv = EXIT_FAILURE
    if installed and _under_systemd():
        rv = max(rv, _notify_units(installed))
    return rv


def is_due(section: CertSection, cli_min_days: int | None, *, quiet: bool = False) -> bool:
    """The manual's rule: renew unless the existing certificate expires more
    than min-days days from now (negative: always; 0: only when expired)."""
    from .x509dates import read_not_after

    path = section.certificate_chain or section.certificate
    min_days = cli_min_days if cli_min_days is not None else section.min_days
    if min_days is None:
        min_days = DEFAULT_MIN_DAYS
    if min_days < 0 or path is None:
        return True
    try:
        not_after = read_not_after(path)
    except (ValueError, OSError) as exc:
        log.warning("[%s] %s: unreadable certificate, renewing (%s)", section.name, path, exc)
        return True
    if not_after is None:
        return True
    remaining = not_after.timestamp() - time.time()
    if remaining > min_days * 86400:
        if not quiet:
            log.info("[%s] valid until %s, skipping", section.name,
                     not_after.strftime("%Y-%m-%d %H:%M:%S UTC"),
                     extra={"MESSAGE_ID": MSG_SKIPPED, "LACME_SECTION": section.name,
                            "LACME_OUTCOME": "skipped"})
        return False
    return True


def _on_certificate(pending: Pending, pem: str, installed: list[str]) -> str | None:
    """Verify and install one issued chain; None on success, else the reason."""
    from . import x509
    from .install import install_file

    section = pending.section
    try:
        chain = x509.parse_chain(pem.encode("ascii", "replace"))
        x509.check_issued(chain, pending.csr, section.names, section.cafile)
        leaf_pem, full_pem = x509.chain_pem(chain)
    except LacmeError as exc:
        return f"issued certificate refused: {exc}"
    try:
        for path, data in ((section.certificate_chain, full_pem), (section.certificate, leaf_pem)):
            if path:
                install_file(path, data, mode=section.chmod, owner=section.chown)
                log.info("[%s] installed %s", section.name, path,
                         extra={"MESSAGE_ID": MSG_INSTALLED, "LACME_SECTION": section.name,
                                "LACME_FILE": path, "LACME_OUTCOME": "installed",
                                "LACME_IDENTIFIERS": ",".join(section.names)})
    except (LacmeError, OSError) as exc:
        return f"install failed: {exc}"
    installed.append(section.name)
    return None


def _notify(section: CertSection) -> bool:
    if not section.notify:
        return True
    from .install import run_notify

    status = run_notify(section.notify)
    if status != 0:
        log.error("[%s] notify: %r exited with status %d", section.name, section.notify, status,
                  extra={"LACME_SECTION": section.name, "LACME_OUTCOME": "notify-failed"})
        return False
    return True


def _under_systemd() -> bool:
    return bool(os.environ.get("INVOCATION_ID")) and os.path.isdir("/run/systemd/system")


def _notify_units(sections: list[str]) -> int:
    try:
        from .systemd_glue import start_notify_units
    except ImportError:
        return EXIT_OK
    return EXIT_OK if start_notify_units(sections) == 0 else EXIT_FAILURE


def _section_failed(section: CertSection, reason: str) -> None:
    log.error("[%s] %s", section.name, reason,
              extra={"MESSAGE_ID": MSG_FAILED, "LACME_SECTION": section.name,
                     "LACME_IDENTIFIERS": ",".join(section.names), "LACME_OUTCOME": "failed"})


def _resolve_item(item: str, base: str) -> str:
    path = item if item.startswith("/") else os.path.join(base, item)
    return path


# --------------------------------------------------------------------------
# account and revokeCert

def account(cfg: MasterConfig, args: argparse.Namespace) -> int:
    from .session import ClientSession

    with ClientSession(cfg, debug=args.debug, challenges=False) as session:
        reply = session.account(register=args.register, tos_agreed=args.tos_agreed,
                                deactivate=args.deactivate, contact=list(args.contact) or None)
    obj: Any = reply.get("account", {})
    text = json.dumps(obj, indent=4 if sys.stdout.isatty() else None, sort_keys=True)
    sys.stdout.write(text + "\n")
    sys.stdout.flush()
    return EXIT_OK


def revoke(cfg: MasterConfig, args: argparse.Namespace) -> int:
    from . import x509
    from .session import ClientSession

    rv = EXIT_OK
    certificates: list[tuple[str, bytes, str]] = []
    for path in args.file:
        try:
            with open(path, "rb") as fh:
                chain = x509.parse_chain(fh.read())
            der = x509.chain_der(chain)[0]
            certificates.append((path, der, x509.public_key_thumbprint(der)))
        except (OSError, LacmeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            log.error("%s: %s", path, reason)
            rv = EXIT_FAILURE
    if not certificates:
        return rv
    with ClientSession(cfg, debug=args.debug, challenges=False) as session:
        results = session.revoke(certificates, reason=args.reason)
    for path, outcome in results.items():
        if outcome is True:
            log.info("%s: revoked", path)
        else:
            log.error("%s: %s", path, outcome)
            rv = EXIT_FAILURE
    return rv


if __name__ == "__main__":
    sys.exit(main())
