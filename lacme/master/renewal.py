"""When to renew: the lifetime-aware and ARI (RFC 9773) renewal decisions.

Pure: certificate facts, persisted state and the clock in, decisions out.
The master (root) calls it for each certificate section before anything
else, so that a run where nothing is due reads the configuration, the
certificates and the state file and contacts nobody.

The rules (README "How lacme decides when to renew"):

* ``min-days`` set (lacme-certs.conf or --min-days): the manual's rule,
  alone: renew when fewer than that many days remain (negative: always).
* ARI window known (RFC 9773 4.2): one moment is chosen at random in the
  suggested window and kept until the window changes; the certificate is
  due once that moment has passed.  A window that reaches past 3/4 of the
  lifetime is first narrowed to its part between 3/4 and 7/8 of the
  lifetime (renew late in a wide window, keep the last eighth for
  retries); a window entirely in the past means "renew now".
* otherwise: due when 2/3 of the lifetime has passed (1/2 for lifetimes
  under 10 days).
* ARI is asked again when ``next_check`` has passed: Retry-After (6 hours
  when absent) but never more than 1/100 of the lifetime, so that a
  changed window (revocation, CA incident) is seen within 1/100 of the
  lifetime plus one timer period.
"""

from __future__ import annotations

from lacme.core.record import Record

TYPE_CHECKING = False
if TYPE_CHECKING:
    import random

DAY = 86400.0
SHORT_LIFETIME = 10 * DAY
SHARE_LONG = 2 / 3  # no ARI: renew once this share of the lifetime has passed
SHARE_SHORT = 1 / 2  # ... for lifetimes under SHORT_LIFETIME
LATE_START = 3 / 4  # a wide ARI window is narrowed to [LATE_START, LATE_END]
LATE_END = 7 / 8
CHECK_SHARE = 1 / 100  # never more than this share of the lifetime between ARI checks
DEFAULT_RETRY_AFTER = 6 * 3600.0  # RFC 9773 4.3: absent Retry-After
FAILED_CHECK_RETRY = 3600.0  # an ARI check that failed: again after this (capped as above)
NEAR_EXPIRY_SHARE = 1 / 8  # `lacme status`: less than this share left is a problem


class Lifetime(Record):
    """Validity of the installed certificate, POSIX seconds."""

    not_before: float
    not_after: float

    @property
    def length(self) -> float:
        return max(self.not_after - self.not_before, 1.0)

    def at(self, share: float) -> float:
        return self.not_before + share * self.length


class Window(Record):
    """An ARI suggested window, POSIX seconds."""

    start: float
    end: float


class Decision(Record):
    due: bool
    reason: str
    renew_at: float | None = None  # when it will be due (None: unknown or now)


def fallback_share(lifetime: Lifetime) -> float:
    return SHARE_SHORT if lifetime.length < SHORT_LIFETIME else SHARE_LONG


def decide_min_days(lifetime: Lifetime | None, min_days: int, now: float) -> Decision:
    """The manual's rule: renew unless more than ``min_days`` days remain."""
    if min_days < 0:
        return Decision(True, "forced")
    if lifetime is None:
        return Decision(True, "no certificate installed")
    renew_at = lifetime.not_after - min_days * DAY
    if now >= renew_at:
        return Decision(True, f"fewer than {min_days} days left", renew_at)
    return Decision(False, f"more than {min_days} days left", renew_at)


def decide(lifetime: Lifetime | None, chosen: float | None, now: float) -> Decision:
    """The default rule: the chosen ARI moment, else a share of the lifetime."""
    if lifetime is None:
        return Decision(True, "no certificate installed")
    if now >= lifetime.not_after:
        return Decision(True, "expired")
    if chosen is not None:
        if now >= chosen:
            return Decision(True, "the chosen moment in the ARI window has passed", chosen)
        return Decision(False, "before the chosen moment in the ARI window", chosen)
    renew_at = lifetime.at(fallback_share(lifetime))
    share = "half" if fallback_share(lifetime) == SHARE_SHORT else "two thirds"
    if now >= renew_at:
        return Decision(True, f"{share} of the lifetime has passed (no ARI window)", renew_at)
    return Decision(False, f"less than {share} of the lifetime has passed (no ARI window)",
                    renew_at)


def usable_window(window: Window, lifetime: Lifetime, now: float) -> Window:
    """The part of a suggested window the moment is chosen in.

    A window wholly in the past: now.  A window ending before 3/4 of the
    lifetime: all of it (the CA wants an early renewal).  Otherwise its part
    in [3/4, 7/8] of the lifetime; a window starting after 7/8: 7/8.
    """
    if window.end <= now:
        return Window(now, now)
    late_start, late_end = lifetime.at(LATE_START), lifetime.at(LATE_END)
    if window.end <= late_start:
        return window
    if window.start >= late_end:
        return Window(late_end, late_end)
    return Window(max(window.start, late_start), min(window.end, late_end))


def choose_moment(window: Window, lifetime: Lifetime, now: float,
                  rng: random.Random | None = None) -> float:
    """A uniformly random moment in the usable part of ``window``."""
    usable = usable_window(window, lifetime, now)
    if usable.end <= usable.start:
        return usable.start
    if rng is None:
        import random  # only when an ARI window is learned

        return random.uniform(usable.start, usable.end)
    return rng.uniform(usable.start, usable.end)


def check_interval(lifetime: Lifetime | None, retry_after: float | None) -> float:
    """Seconds until the next ARI check: Retry-After (default 6 h), capped at
    1/100 of the lifetime, never negative."""
    wait = DEFAULT_RETRY_AFTER if retry_after is None else max(retry_after, 0.0)
    if lifetime is not None:
        wait = min(wait, lifetime.length * CHECK_SHARE)
    return wait


def failed_check_interval(lifetime: Lifetime | None) -> float:
    """Seconds until an ARI check that failed (CA unreachable) is tried again."""
    return check_interval(lifetime, FAILED_CHECK_RETRY)


def near_expiry(lifetime: Lifetime, now: float) -> bool:
    """Less than 1/8 of the lifetime left (or expired): renewal is overdue."""
    return lifetime.not_after - now < lifetime.length * NEAR_EXPIRY_SHARE
