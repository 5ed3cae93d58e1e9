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

When to renew is decided from the installed certificates and the state
file (``lacme.master.state``) by ``lacme.master.renewal`` (ARI, RFC 9773, and the
lifetime-aware rule).  A newOrder run where nothing is due reads the
configuration, the certificates and the state file and exits: no network,
protocol or X.509 module is imported, and the client is started only when a
renewalInfo check is due (it fetches; the master persists and decides) or
a certificate is.  ``lacme status`` reports the same facts (text, JSON or a
Prometheus textfile) and contacts nobody.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time

from lacme import __version__
from lacme.config.schema import CertSection, MasterConfig, load_cert_sections, load_master_config
from lacme.config.specifiers import Identity, expand
from lacme.core.errors import EXIT_FAILURE, EXIT_OK, LacmeError, UsageError
from lacme.core.log import exit_now
from lacme.core.log import setup as setup_logging
from lacme.core.record import Record, replace
from lacme.master.ari import CertificateFacts, certificate_facts, parse_renewal_info
from lacme.master.renewal import (
    Decision,
    Lifetime,
    Window,
    check_interval,
    choose_moment,
    decide,
    decide_min_days,
    failed_check_interval,
)
from lacme.master.state import Entry, StateStore, default_directory, entry_key
from lacme.master.status import format_time

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence
    from typing import Any, NoReturn

log = logging.getLogger("lacme")

NO_ARI_RECHECK = 86400.0  # a CA without renewalInfo: look again a day later

MSG_INSTALLED = "0b1f7e4c9d2a4f60a3c5e8d1b2a7c901"
MSG_SKIPPED = "5c8e2d1a7b3f4e69a0d4c7b2e1f8a302"
MSG_FAILED = "9e4d3c2b1a0f4e5d8c7b6a5f4e3d2c03"


# --------------------------------------------------------------------------
# command line

def build_parser() -> argparse.ArgumentParser:
    import argparse

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
    rev.add_argument("--reason", type=parse_reason, metavar="REASON",
                     help="RFC 5280 reason: a code or a name (" + ", ".join(REASONS) + ")")
    rev.add_argument("file", nargs="+", metavar="FILE")

    st = sub.add_parser("status", help="show the certificates and their renewal state",
                        description="Exit status: 0 all good, 1 a certificate is missing, "
                        "expired, near expiry or its last renewal failed, 2 usage error.")
    st.add_argument("--config-certs", action="append", metavar="FILE",
                    help="certificate configuration file or directory (repeatable)")
    st.add_argument("--json", action="store_true", help="JSON on stdout")
    st.add_argument("--prometheus", metavar="FILE",
                    help="also write the facts as a Prometheus textfile (atomically)")
    st.add_argument("section", nargs="*", metavar="SECTION")
    return p


# RFC 5280 5.3.1 CRLReason (7 is unused).
REASONS = {
    "unspecified": 0, "keyCompromise": 1, "cACompromise": 2, "affiliationChanged": 3,
    "superseded": 4, "cessationOfOperation": 5, "certificateHold": 6, "removeFromCRL": 8,
    "privilegeWithdrawn": 9, "aACompromise": 10,
}


def parse_reason(text: str) -> int:
    """A revocation reason by code or by name (case-insensitive)."""
    if text.isdigit() and int(text) in REASONS.values():
        return int(text)
    for name, code in REASONS.items():
        if name.lower() == text.lower():
            return code
    import argparse

    raise argparse.ArgumentTypeError(f"unknown revocation reason {text!r}")


NEW_ORDER_COMMANDS = ("newOrder", "new-order", "new-cert")


def quick_parse(argv: Sequence[str]) -> argparse.Namespace | None:
    """The common ``[--config F] [--socket P] [-q] [--debug] newOrder [--config-certs F]...
    [--min-days N | --force] [SECTION...]`` without argparse (whose import and
    parser build are a good part of a no-op run); None for anything else, which
    build_parser() then reads (help, errors, abbreviations, other commands).
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
    return SimpleNamespace(**args)  # type: ignore[return-value]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line; SystemExit from argparse for --help and usage errors."""
    argv = sys.argv[1:] if argv is None else argv
    return quick_parse(argv) or build_parser().parse_args(argv)


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
    if command == "status":
        return status(cfg, args, ident)
    raise UsageError(f"unknown command {command!r}")  # argparse prevents this


# --------------------------------------------------------------------------
# newOrder

class Plan(Record, frozen=False):
    """One section of a newOrder run: what is installed, what is known, what to do."""

    section: CertSection
    path: str
    facts: CertificateFacts | None
    entry: Entry
    decision: Decision
    check: bool = False  # a renewalInfo request is due
    csr: bytes = b""

    @property
    def lifetime(self) -> Lifetime | None:
        return lifetime_of(self.facts)


def lifetime_of(facts: CertificateFacts | None) -> Lifetime | None:
    if facts is None:
        return None
    return Lifetime(facts.not_before.timestamp(), facts.not_after.timestamp())


def new_order(cfg: MasterConfig, args: argparse.Namespace, ident: Identity) -> int:
    sections = load_sections(cfg, args, ident)
    cli_min_days = -1 if args.force else args.min_days
    store = StateStore(default_directory(cfg.state_directory))
    entries = store.load()
    rv = EXIT_OK
    selected: list[CertSection] = []
    for name in list(args.section) if args.section else sorted(sections):
        section = sections.get(name)
        if section is None:
            log.warning("no such section [%s], skipping", name)
            rv = EXIT_FAILURE
            continue
        selected.append(section)
    plans = [plan_section(s, entries, cli_min_days, time.time()) for s in selected]
    if not any(p.check or p.decision.due for p in plans):
        if not args.quiet:
            for plan in plans:
                _log_skip(plan)
        return rv
    # Work to do: take the run lock, then decide again, since a run that
    # held the lock meanwhile may have renewed or checked these already.
    from lacme.master.run import lock_run, lock_wait

    lock = lock_run(cfg.path, lock_wait(cfg))
    try:
        entries = store.load()
        plans = [plan_section(s, entries, cli_min_days, time.time()) for s in selected]
        return max(rv, check_and_order(cfg, args, store, plans))
    finally:
        os.close(lock)


def check_and_order(cfg: MasterConfig, args: argparse.Namespace, store: StateStore,
                    plans: list[Plan]) -> int:
    """Under the run lock: renewalInfo checks that are due, then the orders."""
    rv = EXIT_OK
    checks = [p for p in plans if p.check]
    if checks:
        check_renewal_info(cfg, args, checks)
        store.save(p.entry for p in checks)
    due = [p for p in plans if p.decision.due]
    for plan in plans:
        if not plan.decision.due and not args.quiet:
            _log_skip(plan)
    if not due:
        return rv
    try:
        rv = max(rv, order_certificates(cfg, args, due))
    finally:
        store.save(p.entry for p in due)
    return rv


def load_sections(cfg: MasterConfig, args: argparse.Namespace, ident: Identity) -> dict[str, CertSection]:
    items = cfg.config_certs
    if args.config_certs:
        base = os.path.dirname(os.path.abspath(cfg.path))
        items = tuple(_resolve_item(expand(i, ident), base) for i in args.config_certs)
    return load_cert_sections(items)


def read_facts(section: CertSection, path: str) -> tuple[CertificateFacts | None, str | None]:
    """The installed certificate's facts; (None, None) if there is none, (None, why)
    if it cannot be read."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        return None, None
    except OSError as exc:
        return None, exc.strerror or str(exc)
    try:
        return certificate_facts(data), None
    except ValueError as exc:
        return None, str(exc)


def plan_section(section: CertSection, entries: dict[str, Entry], cli_min_days: int | None,
                 now: float) -> Plan:
    """Decide from the certificate and the persisted state alone (no network)."""
    path = section.certificate_chain or section.certificate or ""
    facts, unreadable = read_facts(section, path)
    if unreadable:
        log.warning("[%s] %s: unreadable certificate, renewing (%s)", section.name, path, unreadable)
    entry = entries.get(entry_key(section.name, path)) or Entry(section.name, path)
    if facts is not None:
        entry = entry.for_certificate(facts.cert_id or f"serial:{facts.serial_hex}",
                                      facts.not_before.timestamp(), facts.not_after.timestamp())
    lifetime = lifetime_of(facts)
    min_days = cli_min_days if cli_min_days is not None else section.min_days
    if min_days is not None:  # the manual's rule, alone
        return Plan(section, path, facts, entry, decide_min_days(lifetime, min_days, now))
    decision = decide(lifetime, entry.chosen, now)
    check = (facts is not None and facts.cert_id is not None and lifetime is not None
             and now < lifetime.not_after
             and (entry.next_check is None or now >= entry.next_check)
             and not (decision.due and entry.chosen is not None))
    return Plan(section, path, facts, entry, decision, check)


def check_renewal_info(cfg: MasterConfig, args: argparse.Namespace, plans: list[Plan]) -> None:
    """Ask the CA's renewalInfo about each certificate (through the client),
    learn the windows, choose the moments, and decide again."""
    from lacme.master.run import ClientSession

    now = time.time()
    try:
        with ClientSession(cfg, debug=args.debug, challenges=False, locked=True) as session:
            answers = session.renewal_info([(p.section.name, p.facts.cert_id) for p in plans
                                            if p.facts is not None and p.facts.cert_id])
    except LacmeError as exc:
        answers = {p.section.name: str(exc) for p in plans}
    for plan in plans:
        answer = answers.get(plan.section.name, "no answer from the ACME client")
        plan.entry = learn_renewal_info(plan, answer, now)
        plan.decision = decide(plan.lifetime, plan.entry.chosen, time.time())


def learn_renewal_info(plan: Plan, answer: dict | str, now: float) -> Entry:
    """The entry updated with one renewalInfo answer (or failure)."""
    entry, lifetime, name = plan.entry, plan.lifetime, plan.section.name
    if isinstance(answer, dict) and answer.get("supported") is False:
        log.debug("[%s] the CA has no renewalInfo", name)
        return replace(entry, ari=False, last_check=now, next_check=now + NO_ARI_RECHECK)
    try:
        if isinstance(answer, str):
            raise ValueError(answer)
        info = parse_renewal_info(answer.get("info"))
    except ValueError as exc:
        log.warning("[%s] ARI check failed, keeping what is known: %s", name, exc,
                    extra={"LACME_SECTION": name})
        return replace(entry, last_check=now, next_check=now + failed_check_interval(lifetime))
    retry_after = answer.get("retry_after")
    retry = float(retry_after) if isinstance(retry_after, (int, float)) else None
    entry = replace(entry, ari=True, last_check=now,
                    next_check=now + check_interval(lifetime, retry))
    if (info.start, info.end) == (entry.window_start, entry.window_end) and entry.chosen is not None:
        return entry
    assert lifetime is not None
    chosen = choose_moment(Window(info.start, info.end), lifetime, now)
    log.info("[%s] ARI window %s .. %s, renewal planned at %s", name, format_time(info.start),
             format_time(info.end), format_time(chosen),
             extra={"LACME_SECTION": name, "LACME_OUTCOME": "ari-window"})
    if info.explanation_url:
        log.info("[%s] the CA explains its window at %s", name,
                 escape_line(info.explanation_url), extra={"LACME_SECTION": name})
    elif entry.window_start is not None:
        log.info("[%s] the CA changed its ARI window", name, extra={"LACME_SECTION": name})
    return replace(entry, window_start=info.start, window_end=info.end, chosen=chosen,
                   explanation_url=info.explanation_url)


def escape_line(text: str, limit: int = 300) -> str:
    """CA-provided text made safe for one log line."""
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text[:limit])


def _log_skip(plan: Plan) -> None:
    section, decision = plan.section, plan.decision
    not_after = plan.facts.not_after.strftime("%Y-%m-%d %H:%M:%S UTC") if plan.facts else "-"
    log.info("[%s] valid until %s, renewal at %s (%s), skipping", section.name, not_after,
             format_time(decision.renew_at), decision.reason,
             extra={"MESSAGE_ID": MSG_SKIPPED, "LACME_SECTION": section.name,
                    "LACME_OUTCOME": "skipped"})


def order_certificates(cfg: MasterConfig, args: argparse.Namespace, due: list[Plan]) -> int:
    """One client session for every order, verify and install as chains arrive.

    The components are started first and the CSRs made while they start
    (cryptography's import, the keys): the client's start-up is the longer."""
    from lacme.master.run import ClientSession

    rv = EXIT_OK
    installed: list[str] = []
    pending: dict[str, Plan] = {}
    try:
        with ClientSession(cfg, debug=args.debug, challenges=True, locked=True) as session:
            rv = build_csrs(due, pending)
            if not pending:
                session.cancel()  # nothing to order: the components are stopped
                return rv
            results = session.order(
                [(p.section.name, p.section.identifiers, p.csr) for p in pending.values()],
                on_certificate=lambda sid, pem, alternates=(): _on_certificate(
                    pending[sid], pem, installed, alternates),
                options={p.section.name: order_options(p) for p in pending.values()},
            )
    except LacmeError as exc:
        for plan in (pending.values() if pending else due):
            if plan.section.name not in installed:
                plan.entry = _failed_entry(plan.entry, str(exc))
        raise
    for sid, outcome in results.items():
        if outcome is not True:
            _record_failure(pending[sid], outcome)
            rv = EXIT_FAILURE
    for sid in installed:
        if not _notify(pending[sid].section):
            rv = EXIT_FAILURE
    if installed and _under_systemd():
        rv = max(rv, _notify_units(installed))
    return rv


def build_csrs(due: list[Plan], pending: dict[str, Plan]) -> int:
    """A CSR for each plan; those made go into ``pending``.  EXIT_FAILURE if one
    could not be made (recorded)."""
    from lacme.x509 import chain as x509  # only now is there work: the heavier modules come in here

    rv = EXIT_OK
    for plan in due:
        section = plan.section
        log.info("[%s] renewing: %s", section.name, plan.decision.reason,
                 extra={"LACME_SECTION": section.name})
        try:
            key = x509.load_private_key(section.certificate_key)
            plan.csr = x509.build_csr(key, section.subject, section.names,
                                      key_usage=section.key_usage, tlsfeature=section.tlsfeature,
                                      hash_name=section.hash, ip_addresses=section.ip_addresses)
        except LacmeError as exc:
            _record_failure(plan, f"cannot build the CSR: {exc}")
            rv = EXIT_FAILURE
            continue
        pending[section.name] = plan
    return rv


def order_options(plan: Plan) -> dict[str, Any]:
    """replaces (every renewal of a certificate with an ID), profile, alternates."""
    options: dict[str, Any] = {}
    if plan.facts is not None and plan.facts.cert_id:
        options["replaces"] = plan.facts.cert_id
    if plan.section.profile:
        options["profile"] = plan.section.profile
    if plan.section.preferred_chain:
        options["alternates"] = True
    return options


def _record_failure(plan: Plan, reason: str) -> None:
    _section_failed(plan.section, reason)
    plan.entry = _failed_entry(plan.entry, reason)


def _failed_entry(entry: Entry, reason: str) -> Entry:
    return replace(entry, last_attempt=time.time(), last_outcome="failed", last_error=reason[:500])


def _on_certificate(pending: Plan, pem: str, installed: list[str],
                    alternates: Sequence[str] = ()) -> str | None:
    """Verify and install one issued chain (the preferred one among the
    alternates); None on success, else the reason."""
    from lacme.master.install import install_file
    from lacme.x509 import chain as x509

    section = pending.section
    if alternates:
        chains = [c.encode("ascii", "replace") for c in (pem, *alternates)]
        index = x509.select_chain(chains, section.preferred_chain)
        log.info("[%s] %s chain (preferred-chain %r, %d offered)", section.name,
                 "alternate" if index else "default", section.preferred_chain, len(chains))
        pem = (pem, *alternates)[index]
    try:
        chain = x509.parse_chain(pem.encode("ascii", "replace"))
        x509.check_issued(chain, pending.csr, section.names, section.cafile,
                          ip_addresses=section.ip_addresses)
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
    pending.entry = installed_entry(pending, leaf_pem)
    return None


def installed_entry(plan: Plan, leaf_pem: bytes) -> Entry:
    """The state of a freshly installed certificate: nothing known about its
    window yet; the first ARI check after Retry-After's default (capped)."""
    now = time.time()
    facts = certificate_facts(leaf_pem)
    lifetime = lifetime_of(facts)
    old = plan.entry
    fresh = Entry(plan.section.name, plan.path, ari=old.ari, last_attempt=now,
                  last_outcome="installed", last_success=now,
                  replaced=plan.facts.cert_id if plan.facts else None)
    fresh = fresh.for_certificate(facts.cert_id or f"serial:{facts.serial_hex}",
                                  facts.not_before.timestamp(), facts.not_after.timestamp())
    return replace(fresh, next_check=now + check_interval(lifetime, None))


def _notify(section: CertSection) -> bool:
    if not section.notify:
        return True
    from lacme.master.install import run_notify

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
        from lacme.systemd.glue import start_notify_units
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
    from lacme.master.run import ClientSession

    with ClientSession(cfg, debug=args.debug, challenges=False) as session:
        reply = session.account(register=args.register, tos_agreed=args.tos_agreed,
                                deactivate=args.deactivate, contact=list(args.contact) or None)
    obj: Any = reply.get("account", {})
    text = json.dumps(obj, indent=4 if sys.stdout.isatty() else None, sort_keys=True)
    sys.stdout.write(text + "\n")
    sys.stdout.flush()
    return EXIT_OK


def revoke(cfg: MasterConfig, args: argparse.Namespace) -> int:
    from lacme.master.run import ClientSession
    from lacme.x509 import chain as x509

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
    revoked = []
    for path, outcome in results.items():
        if outcome is True:
            log.info("%s: revoked", path)
            revoked.append(os.path.realpath(path))
        else:
            log.error("%s: %s", path, outcome)
            rv = EXIT_FAILURE
    if revoked:
        recheck_now(cfg, revoked)
    return rv


def recheck_now(cfg: MasterConfig, paths: list[str]) -> None:
    """Revoked certificates that a section manages: ask ARI on the next run
    (it answers with a window in the past) instead of after Retry-After."""
    store = StateStore(default_directory(cfg.state_directory))
    hits = [replace(e, next_check=None) for e in store.load().values()
            if os.path.realpath(e.path) in paths]
    if hits:
        store.save(hits)


# --------------------------------------------------------------------------
# status

def status(cfg: MasterConfig, args: argparse.Namespace, ident: Identity) -> int:
    from lacme.master import status as report

    sections = load_sections(cfg, args, ident)
    names = list(args.section) if args.section else sorted(sections)
    unknown = [n for n in names if n not in sections]
    if unknown:
        raise UsageError(f"no such section: {', '.join(f'[{n}]' for n in unknown)}")
    entries = StateStore(default_directory(cfg.state_directory)).load()
    now = time.time()
    statuses = [section_status(sections[n], entries, now) for n in names]
    if args.prometheus:
        write_textfile(args.prometheus, report.format_prometheus(statuses, now))
    text = report.format_json(statuses) if args.json else report.format_text(statuses)
    sys.stdout.write(text)
    sys.stdout.flush()
    return report.exit_status(statuses)


def section_status(section: CertSection, entries: dict[str, Entry], now: float):
    from lacme.master.status import SectionStatus, find_problem

    path = section.certificate_chain or section.certificate or ""
    facts, unreadable = read_facts(section, path)
    entry = entries.get(entry_key(section.name, path))
    if entry is not None and facts is not None:
        current = entry.for_certificate(facts.cert_id or f"serial:{facts.serial_hex}",
                                        facts.not_before.timestamp(), facts.not_after.timestamp())
        if current is not entry:  # installed by something else: what was learned is stale
            entry = replace(current, last_outcome=entry.last_outcome, last_error=entry.last_error)
    lifetime = lifetime_of(facts)
    decision = (decide_min_days(lifetime, section.min_days, now) if section.min_days is not None
                else decide(lifetime, entry.chosen if entry else None, now))
    return SectionStatus(
        section=section.name,
        identifiers=tuple(v for _, v in section.identifiers),
        file=path, profile=section.profile,
        not_before=lifetime.not_before if lifetime else None,
        not_after=lifetime.not_after if lifetime else None,
        renew_at=decision.renew_at if decision.renew_at is not None else now,
        renew_reason=decision.reason,
        window_start=entry.window_start if entry else None,
        window_end=entry.window_end if entry else None,
        chosen=entry.chosen if entry else None,
        next_check=entry.next_check if entry else None,
        explanation_url=entry.explanation_url if entry else None,
        last_outcome=entry.last_outcome if entry else None,
        last_attempt=entry.last_attempt if entry else None,
        last_success=entry.last_success if entry else None,
        last_error=entry.last_error if entry else None,
        problem=find_problem(lifetime, unreadable, entry, now),
    )


def write_textfile(path: str, text: str) -> None:
    """Atomically, as node_exporter's textfile collector wants (no partial file)."""
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.rename(tmp, path)
    except OSError as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise LacmeError(f"--prometheus {path}: {exc.strerror or exc}") from None
