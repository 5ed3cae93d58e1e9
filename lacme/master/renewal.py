"""When to renew: the lifetime-aware and ARI (RFC 9773) renewal decisions.

Pure: certificate facts, persisted state and the clock in, decisions out.
The master (root) calls it for each certificate section before anything
else, so that a run where nothing is due reads the configuration, the
certificates and the state file and contacts nobody.

The rules (README "How lacme decides when to renew"):

* ``min-days`` set (lacme-certs.conf or --min-days): the manual's rule,
  alone: renew when fewer than that many days remain (negative: always).
* the margin: whatever the CA's window says, the moment lacme renews at
  leaves at least 1/4 of the lifetime plus one timer period (``run-interval``
  in lacme.conf) before notAfter, so that the first attempt, made by the
  first run after that moment, still has a quarter of the lifetime for
  retries (a CA outage of that length cannot make the certificate lapse).
  When the timer is too slow for the lifetime (a period over 1/4 of it) the
  bound is the middle of the lifetime instead.
* ARI window known (RFC 9773 4.2): one moment is chosen at random in the
  suggested window and kept until the window changes; the certificate is
  due once that moment (or the margin's bound, if earlier) has passed.  A
  window wholly before the bound is followed as is; a window reaching past
  it is clamped: its part in the last 1/32 of the lifetime before the
  bound (renew as late as the margin allows, 1.33 renewals per lifetime
  being the floor); a window entirely in the past means "renew now".
* otherwise: due when 2/3 of the lifetime has passed (1/2 for lifetimes
  under 10 days), or at the margin's bound if that is earlier.
* back-off: after failed orders, the next attempt waits one timer period,
  then twice that after each further failure, at most BACKOFF_CAP, but never
  past the margin's bound (past it, every run tries: a certificate near
  expiry is always tried); a ``rateLimited`` problem's Retry-After is waited
  for whatever else (the CA refuses until then), except once expired.
  ``--force`` ignores both; so does a changed configuration
  (``lacme.master.plan.held_back``).
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
MARGIN_SHARE = 1 / 4  # left before notAfter, plus one timer period, whatever the window
FLOOR_SHARE = 1 / 2  # the bound is never earlier than this share (a timer too slow to keep it)
LATE_SPREAD = 1 / 32  # a window reaching past the bound: its part in this share before it
DEFAULT_RUN_INTERVAL = 3600.0  # lacme-renew.timer: OnCalendar=hourly
BACKOFF_CAP = 86400.0  # the longest wait between two failed attempts (before the margin)
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


def margin_bound(lifetime: Lifetime, period: float = DEFAULT_RUN_INTERVAL) -> float:
    """The latest moment to renew at: 1/4 of the lifetime plus one timer
    period before notAfter, but not before the middle of the lifetime."""
    bound = lifetime.not_after - lifetime.length * MARGIN_SHARE - max(period, 0.0)
    return max(bound, lifetime.at(FLOOR_SHARE))


def decide(lifetime: Lifetime | None, chosen: float | None, now: float,
           period: float = DEFAULT_RUN_INTERVAL) -> Decision:
    """The default rule: the chosen ARI moment, else a share of the lifetime;
    never later than the margin's bound."""
    if lifetime is None:
        return Decision(True, "no certificate installed")
    if now >= lifetime.not_after:
        return Decision(True, "expired")
    bound = margin_bound(lifetime, period)
    if chosen is not None and chosen <= bound:
        if now >= chosen:
            return Decision(True, "the chosen moment in the ARI window has passed", chosen)
        return Decision(False, "before the chosen moment in the ARI window", chosen)
    if chosen is not None:  # chosen before the margin (an older rule, another run-interval)
        renew_at, what = bound, "the renewal margin"
    else:
        share = fallback_share(lifetime)
        renew_at = min(lifetime.at(share), bound)
        what = ("the renewal margin" if renew_at == bound and renew_at < lifetime.at(share)
                else "half of the lifetime" if share == SHARE_SHORT
                else "two thirds of the lifetime")
        what += " (no ARI window)"
    if now >= renew_at:
        return Decision(True, f"{what} reached", renew_at)
    return Decision(False, f"before {what}", renew_at)


def usable_window(window: Window, lifetime: Lifetime, now: float,
                  period: float = DEFAULT_RUN_INTERVAL) -> Window:
    """The part of a suggested window the moment is chosen in.

    A window wholly in the past: now.  A window ending at or before the
    margin's bound (``margin_bound``): all of it (the CA wants an earlier
    renewal).  Otherwise it is clamped: its part in the last 1/32 of the
    lifetime before the bound; a window starting after the bound: the bound.
    """
    if window.end <= now:
        return Window(now, now)
    bound = margin_bound(lifetime, period)
    if window.end <= bound:
        return window
    if window.start >= bound:
        return Window(bound, bound)
    return Window(max(window.start, bound - lifetime.length * LATE_SPREAD), bound)


def choose_moment(window: Window, lifetime: Lifetime, now: float,
                  rng: random.Random | None = None,
                  period: float = DEFAULT_RUN_INTERVAL) -> float:
    """A uniformly random moment in the usable part of ``window``."""
    usable = usable_window(window, lifetime, now, period)
    if usable.end <= usable.start:
        return usable.start
    if rng is None:
        import random  # only when an ARI window is learned

        return random.uniform(usable.start, usable.end)
    return rng.uniform(usable.start, usable.end)


def next_attempt(failures: int, last_attempt: float | None, retry_until: float | None,
                 lifetime: Lifetime | None, period: float = DEFAULT_RUN_INTERVAL
                 ) -> tuple[float, str] | None:
    """When an order may be tried again after ``failures`` failed ones, and why;
    None when nothing holds it back."""
    at: float | None = None
    why = ""
    if failures > 0 and last_attempt is not None:
        delay = min(max(period, 1.0) * 2.0 ** min(failures - 1, 64), BACKOFF_CAP)
        at = last_attempt + delay
        if lifetime is not None:
            at = min(at, margin_bound(lifetime, period))  # a certificate near expiry: every run
        why = f"back-off after {failures} failed attempt{'s' if failures > 1 else ''}"
    if (retry_until is not None and (at is None or retry_until > at)
            and (lifetime is None or retry_until < lifetime.not_after)):
        at, why = retry_until, "rate limited by the CA (Retry-After)"
    return None if at is None else (at, why)


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
