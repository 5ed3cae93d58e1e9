"""``lacme status``: what each certificate section looks like, for people and machines.

Run by the master (root, or any user who can read the configuration and
the certificates).  ``status`` gathers the facts (configuration,
certificate dates, the renewal state file) and decides as newOrder would
(``lacme.master.plan``); the rest is pure: a ``SectionStatus`` per
section, turned into a text table, JSON, or a Prometheus textfile
(node_exporter's textfile collector format, replaced atomically).  It
contacts nobody.

A section has a problem (exit status 1) when its certificate is missing,
unreadable or expired, when less than 1/8 of its lifetime is left (renewal
is overdue: lacme renews by 3/4 at the latest), or when its last renewal
attempt failed.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence

from lacme.config.certs import CertSection
from lacme.config.master import MasterConfig
from lacme.config.specifiers import Identity
from lacme.core.errors import LacmeError, UsageError
from lacme.core.record import Record, replace
from lacme.master.drift import drift_reason
from lacme.master.plan import (
    config_stamp,
    format_time,
    held_back,
    lifetime_of,
    load_sections,
    read_facts,
)
from lacme.master.renewal import (
    DEFAULT_RUN_INTERVAL,
    Decision,
    Lifetime,
    decide,
    decide_min_days,
    near_expiry,
)
from lacme.master.state import Entry, StateStore, default_directory, entry_key

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse


def status(cfg: MasterConfig, args: argparse.Namespace, ident: Identity) -> int:
    """The status command: the report on stdout (and the textfile); its exit status."""
    sections = load_sections(cfg, args, ident)
    names = list(args.section) if args.section else sorted(sections)
    unknown = [n for n in names if n not in sections]
    if unknown:
        raise UsageError(f"no such section: {', '.join(f'[{n}]' for n in unknown)}")
    entries = StateStore(default_directory(cfg.state_directory)).load()
    now = time.time()
    statuses = [section_status(sections[n], entries, now, cfg.run_interval, cfg.path)
                for n in names]
    if args.prometheus:
        write_prometheus(args.prometheus, format_prometheus(statuses, now))
    text = format_json(statuses) if args.json else format_text(statuses)
    sys.stdout.write(text)
    sys.stdout.flush()
    return exit_status(statuses)


def write_prometheus(path: str, text: str) -> None:
    """Atomically, as node_exporter's textfile collector wants (no partial file)."""
    from lacme.core.atomic import replace_file

    try:
        replace_file(path, text.encode("utf-8"), 0o644)
    except LacmeError as exc:
        raise LacmeError(f"--prometheus {exc}") from None


class SectionStatus(Record):
    section: str
    identifiers: tuple[str, ...]
    file: str
    profile: str | None
    not_before: float | None
    not_after: float | None
    renew_at: float | None
    renew_reason: str
    window_start: float | None
    window_end: float | None
    chosen: float | None
    next_check: float | None
    explanation_url: str | None
    last_outcome: str | None
    last_attempt: float | None
    last_success: float | None
    last_error: str | None
    problem: str | None

    def to_json(self) -> dict:
        out = self.asdict()
        out["identifiers"] = list(self.identifiers)
        for key in ("not_before", "not_after", "renew_at", "window_start", "window_end", "chosen",
                    "next_check", "last_attempt", "last_success"):
            out[key] = format_rfc3339(out[key])
        return out


def section_status(section: CertSection, entries: dict[str, Entry], now: float,
                   period: float = DEFAULT_RUN_INTERVAL, config_path: str = "") -> SectionStatus:
    """What ``section`` looks like now, decided as newOrder would."""
    path = section.certificate_chain or section.certificate or ""
    facts, unreadable = read_facts(path)
    entry = entries.get(entry_key(section.name, path))
    if entry is not None and facts is not None:
        current = entry.for_certificate(facts.cert_id or f"serial:{facts.serial_hex}",
                                        facts.not_before.timestamp(), facts.not_after.timestamp())
        if current is not entry:  # installed by something else: what was learned is stale
            entry = replace(current, last_outcome=entry.last_outcome, last_error=entry.last_error)
    lifetime = lifetime_of(facts)
    decision = (decide_min_days(lifetime, section.min_days, now) if section.min_days is not None
                else decide(lifetime, entry.chosen if entry else None, now, period))
    if reason := drift_reason(section, path, facts, entry):  # renewed at once (lacme.master.drift)
        decision = Decision(True, reason)
    if entry is not None and (section.min_days is None or section.min_days >= 0):
        decision = held_back(decision, entry, lifetime, period, now,  # the next attempt, and why
                             config_stamp(config_path, section))
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


def find_problem(lifetime: Lifetime | None, unreadable: str | None, entry: Entry | None,
                 now: float) -> str | None:
    """Why monitoring should look at this section, or None."""
    if unreadable:
        return f"certificate unreadable: {unreadable}"
    if lifetime is None:
        return "no certificate installed"
    if now >= lifetime.not_after:
        return "certificate expired"
    if entry is not None and entry.last_outcome == "failed":
        return f"last renewal failed: {entry.last_error or 'unknown error'}"
    if near_expiry(lifetime, now):
        return "certificate near expiry (renewal overdue)"
    return None


def exit_status(statuses: Sequence[SectionStatus]) -> int:
    return 1 if any(s.problem for s in statuses) else 0


def format_rfc3339(when: float | None) -> str | None:
    if when is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))


def format_json(statuses: Sequence[SectionStatus]) -> str:
    return json.dumps([s.to_json() for s in statuses], indent=2, sort_keys=True) + "\n"


def format_text(statuses: Sequence[SectionStatus]) -> str:
    """One block per section, aligned, for a terminal."""
    blocks = []
    for s in statuses:
        rows = [
            ("names", ", ".join(s.identifiers)),
            ("file", s.file),
            ("profile", s.profile or "-"),
            ("valid", f"{format_time(s.not_before)} .. {format_time(s.not_after)}"),
            ("renewal", f"{format_time(s.renew_at)} ({s.renew_reason})"),
            ("ARI window", "-" if s.window_start is None
             else f"{format_time(s.window_start)} .. {format_time(s.window_end)}"),
            ("chosen moment", format_time(s.chosen)),
            ("next ARI check", format_time(s.next_check)),
            ("last outcome", "-" if s.last_outcome is None
             else f"{s.last_outcome} at {format_time(s.last_attempt)}"
             + (f": {s.last_error}" if s.last_error and s.last_outcome == "failed" else "")),
            ("status", f"PROBLEM: {s.problem}" if s.problem else "ok"),
        ]
        if s.explanation_url:
            rows.insert(6, ("explanation", s.explanation_url))
        width = max(len(k) for k, _ in rows)
        blocks.append(f"[{s.section}]\n" + "\n".join(f"  {k.ljust(width)}  {v}" for k, v in rows))
    return "\n\n".join(blocks) + ("\n" if blocks else "")


def prometheus_label(value: str) -> str:
    """A label value escaped for the text exposition format."""
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


METRICS = (
    ("lacme_certificate_not_before_seconds", "notBefore of the installed certificate", "not_before"),
    ("lacme_certificate_not_after_seconds", "notAfter of the installed certificate", "not_after"),
    ("lacme_renewal_time_seconds", "when lacme will renew (or would have)", "renew_at"),
    ("lacme_ari_window_start_seconds", "start of the ARI suggested window", "window_start"),
    ("lacme_ari_window_end_seconds", "end of the ARI suggested window", "window_end"),
    ("lacme_ari_chosen_time_seconds", "moment chosen in the ARI window", "chosen"),
    ("lacme_ari_next_check_seconds", "next renewalInfo request", "next_check"),
    ("lacme_last_attempt_timestamp_seconds", "last renewal attempt", "last_attempt"),
    ("lacme_last_success_timestamp_seconds", "last installed renewal", "last_success"),
)


def format_prometheus(statuses: Sequence[SectionStatus], now: float) -> str:
    """The same facts as gauges, one sample per section (absent when unknown)."""
    lines: list[str] = []

    def gauge(name: str, help_text: str, samples: list[tuple[SectionStatus, float]]) -> None:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} gauge")
        for s, value in samples:
            lines.append(f'{name}{{section="{prometheus_label(s.section)}"}} {value:.3f}')

    for name, help_text, attr in METRICS:
        gauge(name, help_text, [(s, getattr(s, attr)) for s in statuses
                                if getattr(s, attr) is not None])
    gauge("lacme_last_renewal_failed", "1 if the last renewal attempt failed",
          [(s, 1.0 if s.last_outcome == "failed" else 0.0) for s in statuses])
    gauge("lacme_certificate_problem", "1 if lacme status reports a problem",
          [(s, 1.0 if s.problem else 0.0) for s in statuses])
    gauge("lacme_status_timestamp_seconds", "when these facts were gathered", [])
    lines.append(f"lacme_status_timestamp_seconds {now:.3f}")
    return "\n".join(lines) + "\n"
