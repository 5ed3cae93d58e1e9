"""One run per configuration at a time: flock(2) on the configuration file.

Run by the master (root) when a run has work to do, before it starts any
component.  A second run waits for the first instead of interleaving its
challenges and installs with it; the kernel drops the lock of a killed run.
No RFC applies.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time

from lacme.config.defaults import run_deadline
from lacme.config.master import MasterConfig
from lacme.core.errors import LacmeError

log = logging.getLogger("lacme")

LOCK_POLL = 0.1


def lock_wait(cfg: MasterConfig) -> float:
    """How long a run waits for another one to finish."""
    return run_deadline(cfg.client.timeout)


def lock_run(path: str, wait: float) -> int:
    """flock(2) the configuration file: one run per configuration at a time.

    A second run waits (up to ``wait`` seconds) instead of interleaving its
    challenges and installs with the first.  Returns the descriptor to close.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise LacmeError(f"{path}: cannot open to lock: {exc.strerror}") from None
    deadline = time.monotonic() + wait
    waiting = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            pass
        except OSError as exc:
            os.close(fd)
            raise LacmeError(f"{path}: cannot lock: {exc.strerror}") from None
        if not waiting:
            log.info("%s: another lacme run is in progress, waiting for it", path)
            waiting = True
        if time.monotonic() > deadline:
            os.close(fd)
            raise LacmeError(f"{path}: another lacme run still holds the lock after {wait:.0f} s")
        time.sleep(LOCK_POLL)
