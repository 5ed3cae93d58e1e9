"""How the master stops its children (lacme.master.children): every child reaped
together, a stubborn one terminated then killed, a failed start named."""

from __future__ import annotations

import logging
import os
import signal
import subprocess

from lacme.master.children import _Child, reap_all


_SPAWNED: list[subprocess.Popen] = []


def spawn(script: str) -> int:
    """A child for reap_all to reap.  Its Popen stays referenced: a Popen
    collected while its child runs goes on subprocess's list of children to
    reap, and the next Popen anywhere in the process (another thread) would
    reap it first, leaving reap_all no exit status to read."""
    _SPAWNED.append(subprocess.Popen(["/bin/sh", "-c", script]))
    return _SPAWNED[-1].pid


def gone(pid: int) -> bool:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return False


def test_every_child_is_reaped():
    pids = [spawn("sleep 0.2"), spawn("exit 3"), spawn("sleep 0.1")]
    reap_all([_Child(pid, f"child {pid}", grace=10.0, terminate=False) for pid in pids])
    assert all(gone(pid) for pid in pids)


def test_stubborn_child_is_terminated_then_killed(caplog):
    caplog.set_level(logging.DEBUG, logger="lacme")
    pid = spawn("trap '' TERM; while :; do sleep 0.05; done")
    reap_all([_Child(pid, "the stubborn one", grace=0.2, terminate=False)])
    assert gone(pid)
    assert "the stubborn one (pid" in caplog.text and "terminating it" in caplog.text


def test_terminated_children_end_at_once():
    pid = spawn("sleep 30")
    os.kill(pid, signal.SIGTERM)
    reap_all([_Child(pid, "sleeper", grace=60.0, terminate=True)])
    assert gone(pid)


def test_child_that_could_not_start_is_named(caplog):
    pid = spawn("exit 127")
    reap_all([_Child(pid, "the ACME client", grace=5.0, terminate=False)])
    assert "the ACME client could not be started" in caplog.text
