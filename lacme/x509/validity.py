"""How far a certificate's validity may disagree with this machine's clock.

Pure and cheap (no cryptography): read by ``lacme.x509.chain`` when an
issued certificate is checked, and by the master's clock check
(``lacme.master.clock``) when the CA's Date header arrives.

A CA that does not backdate notBefore (RFC 5280 4.1.2.5 leaves it to the
CA; Pebble does not, Let's Encrypt backdates by an hour) issues
certificates that, on a clock a little behind, start a little in the
future.  Such a certificate is still installed when it starts within
CLOCK_TOLERANCE; beyond that, and whenever the CA's Date header is further
away than that, the clock is named as the likely culprit.
"""

from __future__ import annotations

CLOCK_TOLERANCE = 600.0  # seconds: 10 minutes (README, "What lacme guarantees")


def describe_offset(seconds: float) -> str:
    """A duration for a log line: "4 min 10 s", "3 h 2 min", "2 d 5 h"."""
    seconds = abs(seconds)
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60)} s"
    if seconds < 86400:
        return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60)} min"
    return f"{int(seconds // 86400)} d {int(seconds % 86400 // 3600)} h"
