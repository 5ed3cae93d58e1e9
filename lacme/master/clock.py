"""The master's clock against the CA's: one warning when they disagree.

Run by the master (root) while it talks to the client
(``lacme.master.run``): the client passes on the Date header (RFC 9110
6.6.1) of the first response it got from the CA (a ``clock`` message of
``lacme.protocol.control``), and the master compares it with its own clock,
the one that decides renewals and checks that an issued certificate is
valid now.  Further than CLOCK_TOLERANCE (``lacme.x509.validity``) from it
is one warning naming the clock, once per run; within it, nothing (a
certificate starting that much in the future is still installed).
"""

from __future__ import annotations

import logging
import time

from lacme.core.text import escape_text
from lacme.x509.validity import CLOCK_TOLERANCE, describe_offset

log = logging.getLogger("lacme")


class ClockCheck:
    """What one run learned about the clocks (the first Date only)."""

    def __init__(self) -> None:
        self.offset: float | None = None  # the CA's clock minus ours, seconds

    def observe(self, date: object, url: object, now: float | None = None) -> None:
        if self.offset is not None or not isinstance(date, (int, float)) or isinstance(date, bool):
            return
        self.offset = float(date) - (time.time() if now is None else now)
        if abs(self.offset) > CLOCK_TOLERANCE:
            side = "behind" if self.offset > 0 else "ahead of"
            log.warning("this machine's clock is %s %s the CA's (Date header of %s), more than "
                        "the tolerance of %s: certificates will look not yet valid or expired; "
                        "set the clock (NTP)", describe_offset(self.offset), side,
                        escape_text(str(url), 200), describe_offset(CLOCK_TOLERANCE))
