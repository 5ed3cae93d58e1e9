"""The newOrder command: plan, then configuration -> CSR -> client -> verify -> install -> notify.

Run by the master (root).  Every section is planned first
(``lacme.master.plan``); when nothing is due the run ends there, having
read the configuration, the certificates and the state file only.  Otherwise
the run lock is taken, the plans are made again, due renewalInfo checks
(RFC 9773) are made, and one client session orders every due certificate
(RFC 8555 7.4, with ``replaces`` of RFC 9773 5 and the ``profile`` of the
ACME profiles extension).  Each chain is verified against its CSR and
CAfile as it arrives, installed atomically and recorded; the notify
commands run at the end.  A failing section is logged and recorded, and
the others go on.  The X.509 and run modules are imported only here, when
there is work.
"""

from __future__ import annotations

import logging
import os
import time

from lacme.config.certs import CertSection
from lacme.config.master import MasterConfig
from lacme.config.specifiers import Identity
from lacme.core import journal
from lacme.core.errors import EXIT_FAILURE, EXIT_OK, LacmeError
from lacme.core.record import replace
from lacme.master import drift
from lacme.master.ari import certificate_facts
from lacme.master.plan import (
    Plan,
    check_renewal_info,
    config_stamp,
    lifetime_of,
    load_sections,
    log_skip,
    plan_section,
)
from lacme.master.renewal import check_interval
from lacme.master.state import Entry, StateStore, default_directory

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence
    from typing import Any

log = logging.getLogger("lacme")


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
    plans = [plan_section(s, entries, cli_min_days, time.time(), cfg.run_interval, cfg.path)
             for s in selected]
    if not any(p.check or p.decision.due for p in plans):
        if not args.quiet:
            for plan in plans:
                log_skip(plan)
        if any(p.refreshed for p in plans):  # a key or CAfile changed, and still fits
            store.save(p.entry for p in plans if p.refreshed)
        return rv
    # Work to do: take the run lock, then decide again, since a run that
    # held the lock meanwhile may have renewed or checked these already.
    from lacme.master.lock import lock_run, lock_wait

    lock = lock_run(cfg.path, lock_wait(cfg))
    try:
        entries = store.load()
        plans = [plan_section(s, entries, cli_min_days, time.time(), cfg.run_interval, cfg.path)
             for s in selected]
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
            log_skip(plan)
    if any(p.refreshed and not p.check and not p.decision.due for p in plans):
        store.save(p.entry for p in plans if p.refreshed and not p.check and not p.decision.due)
    if not due:
        return rv
    try:
        rv = max(rv, order_certificates(cfg, args, due))
    finally:
        store.save(p.entry for p in due)
    return rv


def order_certificates(cfg: MasterConfig, args: argparse.Namespace, due: list[Plan]) -> int:
    """One client session for every order, verify and install as chains arrive.

    The components are started first and the CSRs made while they start
    (cryptography's import, the keys): the client's start-up is the longer."""
    from lacme.master.run import ClientSession

    rv = EXIT_OK
    installed: list[str] = []
    pending: dict[str, Plan] = {}
    try:
        dns_names = [n for p in due for n in p.section.dns_names]
        # http-01 needs the webservers; a run proven over DNS alone starts none.
        http = any(p.section.ip_addresses or len(p.section.dns_names) < len(p.section.names)
                   for p in due)
        with ClientSession(cfg, debug=args.debug, challenges=http, locked=True,
                           dns_names=dns_names) as session:
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
                # the run failed as a whole (accountd, the account, the client):
                # said and kept, but no back-off, which is for orders the CA refused
                plan.entry = _failed_entry(plan, str(exc), counts=False)
        raise
    for sid, outcome in results.items():
        if outcome is not True:
            # accountd refused (or could not go on) and has said so: the
            # section's line would say it twice; a run-level failure, no back-off
            said = session.said_by_accountd(str(outcome)) is not None
            _record_failure(pending[sid], str(outcome), session.rate_limited.get(sid),
                            counts=not said and session.problems.get(sid) != NO_ACCOUNT,
                            said=said)
            rv = EXIT_FAILURE
    for sid in installed:
        if not _notify(pending[sid].section):
            rv = EXIT_FAILURE
    if installed:
        rv = max(rv, _notify_units(installed))
    return rv


def build_csrs(due: list[Plan], pending: dict[str, Plan]) -> int:
    """A CSR for each plan; those made go into ``pending``.  EXIT_FAILURE if one
    could not be made (recorded)."""
    from lacme.x509 import csr, keys  # only now is there work: the heavier modules come in here

    rv = EXIT_OK
    for plan in due:
        section = plan.section
        log.info("[%s] renewing: %s", section.name, plan.decision.reason,
                 extra={"LACME_SECTION": section.name})
        try:
            key = keys.load_private_key(section.certificate_key)
            plan.csr = csr.build_csr(key, section.subject, section.names,
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
    if plan.section.challenge:
        options["challenge"] = plan.section.challenge
    return options


def _record_failure(plan: Plan, reason: str, retry_after: float | None = None, *,
                    counts: bool = True, said: bool = False) -> None:
    """Log and keep a section's failure; ``counts``: it starts the back-off (not
    when the key has no account yet: the fix, a registration, is the user's);
    ``said``: another process printed the reason, logged only when debugging."""
    section = plan.section
    (log.debug if said else log.error)("[%s] %s", section.name, reason,
              extra={"MESSAGE_ID": journal.ORDER_FAILED, "LACME_SECTION": section.name,
                     "LACME_IDENTIFIERS": ",".join(section.names), "LACME_OUTCOME": "failed"})
    plan.entry = _failed_entry(plan, reason, retry_after, counts=counts)


#: The problem type (RFC 8555 6.7) of a lookup for a key that has no account.
NO_ACCOUNT = "urn:ietf:params:acme:error:accountDoesNotExist"


def _failed_entry(plan: Plan, reason: str, retry_after: float | None = None, *,
                  counts: bool = True) -> Entry:
    """One more failed attempt (the back-off grows); a rateLimited problem's
    Retry-After (seconds) is kept as a moment, for the next runs; the stats of
    the configuration, so that changing it ends the back-off."""
    now, entry = time.time(), plan.entry
    return replace(entry, last_attempt=now, last_outcome="failed", last_error=reason[:500],
                   failures=entry.failures + 1 if counts else entry.failures,
                   retry_until=now + retry_after if retry_after is not None else entry.retry_until,
                   failed_config=str(config_stamp(plan.config_path, plan.section)))


def _on_certificate(pending: Plan, pem: str, installed: list[str],
                    alternates: Sequence[str] = ()) -> str | None:
    """Verify and install one issued chain (the preferred one among the
    alternates); None on success, else the reason."""
    from lacme.master.install import install_files
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
    files = [(path, data) for path, data in ((section.certificate_chain, full_pem),
                                             (section.certificate, leaf_pem)) if path]
    try:  # both written and flushed before either is renamed (a full disk changes neither)
        install_files(files, mode=section.chmod, owner=section.chown)
    except (LacmeError, OSError) as exc:
        return f"install failed: {exc}"
    for path, _data in files:
        log.info("[%s] installed %s", section.name, path,
                 extra={"MESSAGE_ID": journal.CERTIFICATE_INSTALLED,
                        "LACME_SECTION": section.name, "LACME_FILE": path,
                        "LACME_OUTCOME": "installed",
                        "LACME_IDENTIFIERS": ",".join(section.names)})
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
    fresh = drift.installed(fresh, plan.drift, facts)
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


def _notify_units(sections: list[str]) -> int:
    """Start the notify units of the renewed sections where systemd has them
    (lacme.systemd.glue.notify_units_available), whoever started the master."""
    from lacme.systemd.glue import notify_units_available, start_notify_units

    if not notify_units_available():
        return EXIT_OK
    return EXIT_OK if start_notify_units(sections) == 0 else EXIT_FAILURE
