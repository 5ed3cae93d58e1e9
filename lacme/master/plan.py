"""Renewal planning: what each certificate section of a newOrder run needs.

Run by the master (root), on every newOrder run, before anything else
happens; also read by ``lacme status``.  From the installed certificate and
the state file (``lacme.master.state``) alone, without the network, it
decides per section whether to renew now (at once when the certificate no
longer follows its configuration: ``lacme.master.drift``; else
``lacme.master.renewal``: the ARI window of RFC 9773 4.2 or the
lifetime-aware rule, or the manual's ``min-days``) and whether a
renewalInfo request is due.  When one is, the
client fetches the answers and this module learns the windows and chooses
the moments.  A no-op run ends here, so this module imports nothing heavy
(and not ``lacme.master.status``, which imports it).
"""

from __future__ import annotations

import logging
import os
import time

from lacme.config.certs import CertSection, load_cert_sections
from lacme.config.master import MasterConfig
from lacme.config.specifiers import Identity, expand
from lacme.core import journal
from lacme.core.errors import LacmeError
from lacme.core.record import Record, replace
from lacme.master.ari import CertificateFacts, certificate_facts, parse_renewal_info
from lacme.master.drift import Drift, check_drift, file_stamp, stamps_only
from lacme.master.renewal import (
    DEFAULT_RUN_INTERVAL,
    Decision,
    Lifetime,
    Window,
    check_interval,
    choose_moment,
    decide,
    decide_min_days,
    failed_check_interval,
    next_attempt,
)
from lacme.master.state import Entry, entry_key

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse

log = logging.getLogger("lacme")

NO_ARI_RECHECK = 86400.0  # a CA without renewalInfo: look again a day later
TIME_FORMAT = "%Y-%m-%d %H:%M:%S UTC"


def format_time(when: float | None) -> str:
    """A moment as the log lines and ``lacme status`` show it."""
    return "-" if when is None else time.strftime(TIME_FORMAT, time.gmtime(when))


class Plan(Record, frozen=False):
    """One section of a newOrder run: what is installed, what is known, what to do."""

    section: CertSection
    path: str
    facts: CertificateFacts | None
    entry: Entry
    decision: Decision
    check: bool = False  # a renewalInfo request is due
    csr: bytes = b""
    drift: Drift | None = None  # how the certificate follows its configuration
    config_path: str = ""  # lacme.conf: its stat is kept with a failure (config_stamp)

    @property
    def refreshed(self) -> bool:
        """The entry learned something about the key or CAfile: save it."""
        return self.drift is not None and self.drift.refreshed

    @property
    def lifetime(self) -> Lifetime | None:
        return lifetime_of(self.facts)


def lifetime_of(facts: CertificateFacts | None) -> Lifetime | None:
    if facts is None:
        return None
    return Lifetime(facts.not_before.timestamp(), facts.not_after.timestamp())


def load_sections(cfg: MasterConfig, args: argparse.Namespace, ident: Identity) -> dict[str, CertSection]:
    """The certificate sections: of ``--config-certs`` (relative to the
    configuration's directory) if given, else of ``config-certs``."""
    items = cfg.config_certs
    if args.config_certs:
        base = os.path.dirname(os.path.abspath(cfg.path))
        items = tuple(os.path.join(base, expand(i, ident)) for i in args.config_certs)
    return load_cert_sections(items)


def read_facts(path: str) -> tuple[CertificateFacts | None, str | None]:
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
                 now: float, period: float = DEFAULT_RUN_INTERVAL, config_path: str = "") -> Plan:
    """Decide from the certificate and the persisted state alone (no network)."""
    plan = _plan_section(section, entries, cli_min_days, now, period, config_path)
    plan.config_path = config_path
    return plan


def _plan_section(section: CertSection, entries: dict[str, Entry], cli_min_days: int | None,
                  now: float, period: float, config_path: str) -> Plan:
    path = section.certificate_chain or section.certificate or ""
    facts, unreadable = read_facts(path)
    if unreadable:
        log.warning("[%s] %s: unreadable certificate, renewing (%s)", section.name, path, unreadable)
    entry = entries.get(entry_key(section.name, path)) or Entry(section.name, path)
    drift = stamps_only(section, entry) if facts is None else None
    if facts is not None:
        entry = entry.for_certificate(facts.cert_id or f"serial:{facts.serial_hex}",
                                      facts.not_before.timestamp(), facts.not_after.timestamp())
        drift = check_drift(section, path, facts, entry)
        entry = drift.entry
    lifetime = lifetime_of(facts)
    min_days = cli_min_days if cli_min_days is not None else section.min_days
    forced = min_days is not None and min_days < 0
    if drift is not None and drift.reason and not forced:
        decision = held_back(Decision(True, drift.reason), entry, lifetime, period, now,
                             config_stamp(config_path, section))
        return Plan(section, path, facts, entry, decision, drift=drift)
    if min_days is not None:  # the manual's rule, alone
        decision = decide_min_days(lifetime, min_days, now)
        if not forced:
            decision = held_back(decision, entry, lifetime, period, now,
                                 config_stamp(config_path, section))
        return Plan(section, path, facts, entry, decision, drift=drift)
    decision = held_back(decide(lifetime, entry.chosen, now, period), entry, lifetime, period,
                         now, config_stamp(config_path, section))
    check = (facts is not None and facts.cert_id is not None and lifetime is not None
             and now < lifetime.not_after
             and (entry.next_check is None or now >= entry.next_check)
             and not (decision.due and entry.chosen is not None))
    return Plan(section, path, facts, entry, decision, check, drift=drift)


class ConfigStamp:
    """The stats of lacme.conf and of a section's file, taken only when asked
    (a failure to record, a back-off to check): never on a plain no-op run."""

    def __init__(self, config_path: str, section: CertSection) -> None:
        self.paths = (config_path, section.source)

    def __str__(self) -> str:
        return " | ".join(file_stamp(p) or f"- {p}" for p in self.paths if p)


def config_stamp(config_path: str, section: CertSection) -> ConfigStamp:
    return ConfigStamp(config_path, section)


def held_back(decision: Decision, entry: Entry, lifetime: Lifetime | None, period: float,
              now: float, stamp: ConfigStamp | None = None) -> Decision:
    """A due decision waits while the back-off after failed orders, or the CA's
    Retry-After, holds it (``lacme.master.renewal.next_attempt``); --force skips
    this, and so does a change of lacme.conf or of the section's file since the
    failure (the fix is tried at once)."""
    if not decision.due:
        return decision
    hold = next_attempt(entry.failures, entry.last_attempt, entry.retry_until, lifetime, period)
    if hold is None or now >= hold[0]:
        return decision
    if (stamp is not None and entry.failed_config is not None
            and str(stamp) != entry.failed_config and hold[1].startswith("back-off")):
        return Decision(True, f"{decision.reason} (configuration changed since the failure)",
                        decision.renew_at)
    return Decision(False, f"{decision.reason}; {hold[1]}, next attempt then", hold[0])


def log_skip(plan: Plan) -> None:
    section, decision = plan.section, plan.decision
    not_after = plan.facts.not_after.strftime(TIME_FORMAT) if plan.facts else "-"
    log.info("[%s] valid until %s, renewal at %s (%s), skipping", section.name, not_after,
             format_time(decision.renew_at), decision.reason,
             extra={"MESSAGE_ID": journal.RENEWAL_SKIPPED, "LACME_SECTION": section.name,
                    "LACME_OUTCOME": "skipped"})


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
        plan.entry = learn_renewal_info(plan, answer, now, cfg.run_interval)
        plan.decision = held_back(
            decide(plan.lifetime, plan.entry.chosen, time.time(), cfg.run_interval), plan.entry,
            plan.lifetime, cfg.run_interval, time.time(), config_stamp(cfg.path, plan.section))


def learn_renewal_info(plan: Plan, answer: dict | str, now: float,
                       period: float = DEFAULT_RUN_INTERVAL) -> Entry:
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
    chosen = choose_moment(Window(info.start, info.end), lifetime, now, period=period)
    log.info("[%s] ARI window %s .. %s, renewal planned at %s", name, format_time(info.start),
             format_time(info.end), format_time(chosen),
             extra={"LACME_SECTION": name, "LACME_OUTCOME": "ari-window"})
    if info.explanation_url:
        from lacme.core.text import escape_text

        log.info("[%s] the CA explains its window at %s", name,
                 escape_text(info.explanation_url), extra={"LACME_SECTION": name})
    elif entry.window_start is not None:
        log.info("[%s] the CA changed its ARI window", name, extra={"LACME_SECTION": name})
    return replace(entry, window_start=info.start, window_end=info.end, chosen=chosen,
                   explanation_url=info.explanation_url)
