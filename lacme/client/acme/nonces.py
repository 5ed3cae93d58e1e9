"""The nonce pool of one ACME session (RFC 8555 6.5, 7.2).

Run inside the unprivileged ACME client (``lacme-client``) by the transport
(``lacme.client.acme.transport``), shared by every order of the run.  Every
answer brings a Replay-Nonce back; a signed POST takes one from here, and
only when none is coming does the transport fetch one (HEAD newNonce).
It also counts ``badNonce`` answers in a row, so that a storm ends the run.
Threads only; no I/O.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

# RFC 8555 6.5 lets the client retry a badNonce with the nonce that came
# with the error.  A real CA rejects a nonce rarely; test CAs (Pebble's
# PEBBLE_WFE_NONCEREJECT=50) reject half of them at random: 12 retries make
# a spurious failure a 1 in 8192 event per request.  A storm (every nonce
# rejected) is cut sooner across the session: BAD_NONCE_STORM rejections in
# a row, whichever requests they answered, end every request of the run.
MAX_BAD_NONCE_RETRIES = 12
BAD_NONCE_STORM = 16
# Concurrent orders share one nonce pool; every answer brings a nonce back
# (RFC 8555 7.2).  With one nonce in circulation only one POST is ever in
# flight, and the run goes at the CA's round-trip time; so while fewer than
# NONCES_IN_FLIGHT POSTs are in flight and the pool is empty, a HEAD
# newNonce puts one more in circulation (a run with several orders fetches
# at most this many nonces in all).  Beyond that a POST waits for an
# answer's nonce: within one round trip, or NONCE_WAIT at most.
NONCES_IN_FLIGHT = 4
NONCE_WAIT = 1.0


class NoncePool:
    """Nonces from answers, waiting for the next POST; thread-safe."""

    def __init__(self, cancelled: threading.Event) -> None:
        self._cancelled = cancelled
        self._nonces: list[str] = []
        self._in_flight = 0  # POSTs between take() and release()
        self._bad_nonce_run = 0  # badNonce answers in a row, session-wide
        self._cond = threading.Condition()

    def put(self, nonce: str) -> None:
        """A Replay-Nonce from an answer (any answer: RFC 8555 6.5)."""
        with self._cond:
            self._nonces.append(nonce)
            self._cond.notify()

    def take(self, remaining: Callable[[], float], fetch: Callable[[], str]) -> str:
        """A fresh nonce: from the pool, from a response in flight, or ``fetch()``.

        The caller is counted as in flight from here until it calls
        ``release`` (when its POST is answered); ``remaining()`` is how long
        the session may still wait.
        """
        give_up = time.monotonic() + NONCE_WAIT
        with self._cond:
            while not self._nonces and self._in_flight >= NONCES_IN_FLIGHT \
                    and not self._cancelled.is_set():
                wait = min(give_up - time.monotonic(), remaining())
                if wait <= 0:
                    break
                self._cond.wait(wait)
            self._in_flight += 1
            if self._nonces:
                return self._nonces.pop()
        try:
            return fetch()
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        """The caller's POST is answered (or abandoned): its nonce is no longer awaited."""
        with self._cond:
            self._in_flight -= 1
            self._cond.notify_all()

    def count_bad_nonce(self, rejected: bool) -> int:
        """Track badNonce answers in a row across the session; returns the run length."""
        with self._cond:
            self._bad_nonce_run = self._bad_nonce_run + 1 if rejected else 0
            return self._bad_nonce_run

    def wake(self) -> None:
        """Wake every waiting POST (the session was cancelled)."""
        with self._cond:
            self._cond.notify_all()
