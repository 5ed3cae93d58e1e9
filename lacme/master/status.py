"""``lacme status``: what each certificate section looks like, for people and machines.

Pure: the master (root, or any user who can read the configuration and
the certificates) gathers the facts (configuration, certificate dates, the
renewal state file) and hands them here; this module turns them into a
``SectionStatus`` per section, a text table, JSON, or a Prometheus textfile
(node_exporter's textfile collector format).  It contacts nobody.

A section has a problem (exit status 1) when its certificate is missing,
unreadable or expired, when less than 1/8 of its lifetime is left (renewal
is overdue: lacme renews by 7/8 at the latest), or when its last renewal
attempt failed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence

from lacme.core.record import Record
from lacme.master.renewal import Lifetime, near_expiry
from lacme.master.state import Entry

TIME_FORMAT = "%Y-%m-%d %H:%M:%S UTC"


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


def format_time(when: float | None) -> str:
    return "-" if when is None else time.strftime(TIME_FORMAT, time.gmtime(when))


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
