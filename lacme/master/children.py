"""The master's children: how a component is spawned, and how it is stopped.

Run by the master (root).  Every component the master forks (accountd, the
client, the webservers) starts the same way, written once in
``Children.spawn``: in the child, after the descriptors are in place, drop
privileges for good, ask for SIGTERM when the master dies, even by SIGKILL
(PR_SET_PDEATHSIG, so that no webserver keeps a port from the next run),
and leave the master's directory; then exec with a clean environment.
A component that cannot be started is one error line naming the setting,
the command and the user, with what the child found when it walked the
command's path as that user (``SpawnError``; exit status 2: the
configuration names a program that user cannot run).

At the end of a run the children are stopped together (``reap_all``), so
that shutdown costs the slowest child rather than the sum: each has a grace
period to end on its own, then SIGTERM, 2 s more, then SIGKILL; a pidfd
(pidfd_open(2)) per child wakes the master as soon as one exits.  No RFC
applies.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import select
import shutil
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence

from lacme.core.descriptors import SpawnError, spawn
from lacme.core.errors import ConfigError, LacmeError, PrivilegeError
from lacme.core.privs import Credentials, clean_environment, drop_privileges, why_not_executable

log = logging.getLogger("lacme")

#: Default program names and the modules that implement them, so that the
#: defaults work from a virtual environment or a source tree alike.
PROGRAMS = {
    "lacme-client": "lacme.client",
    "lacme-webserver": "lacme.webserver",
    "lacme-accountd": "lacme.accountd",
    "lacme-dns": "lacme.dns",
}

PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None, use_errno=True)  # loaded before fork, used in the child


def resolve_command(command: Sequence[str]) -> list[str]:
    """Absolute argv for a configured command.

    A bare name is looked up next to the running interpreter first (the
    scripts of the same installation), then in PATH; this package's own
    programs fall back to ``python -m`` when not installed as scripts.
    """
    if not command:
        raise LacmeError("empty command")
    head, *rest = command
    if "/" not in head:
        here = os.path.dirname(sys.executable)
        found = shutil.which(head, path=os.pathsep.join([here, os.environ.get("PATH", "")]))
        if found:
            return [found, *rest]
        if head in PROGRAMS:
            return [sys.executable, "-m", PROGRAMS[head], *rest]
    return [head, *rest]


def die_with_master(master: int) -> None:
    """In a spawned child, after the privilege drop (which clears it): SIGTERM
    when the master dies; exit now if it already has."""
    if _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")
    if os.getppid() != master:
        os._exit(1)


class _Child:
    """A spawned component and how it is stopped (see ``reap_all``)."""

    def __init__(self, pid: int, what: str, grace: float, terminate: bool) -> None:
        self.pid, self.what, self.grace, self.terminate = pid, what, grace, terminate
        self.deadline = 0.0
        self.stage = 0  # 0: waiting for it to end, 1: SIGTERM sent at the deadline, 2: SIGKILL
        self.pidfd: int | None = None
        self.status: int | None = None  # waitpid's, once reaped

    def poll(self) -> bool:
        """Reap it if it has ended (its status is kept); whether it has."""
        if self.status is None:
            try:
                done, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # not ours to reap (never happens to a spawned one)
                done, status = self.pid, 0
            if not done:
                return False
            self.status = status
        return True

    def describe_exit(self) -> str:
        """" (exit status N)" or " (killed by signal N)"; "" while it runs."""
        if self.status is None:
            return ""
        code = os.waitstatus_to_exitcode(self.status)
        return f" (killed by signal {-code})" if code < 0 else f" (exit status {code})"


class Children:
    """The components one run spawned, stopped together at its end."""

    def __init__(self) -> None:
        self.children: list[_Child] = []
        self.ended: list[_Child] = []  # stopped: their exit statuses stay known
        self.close_after: list[socket.socket] = []  # the READY socket

    def spawn(self, argv: Sequence[str] | Callable[[], Sequence[str]], creds: Credentials,
              what: str, *, grace: float, terminate: bool = False,
              fds: Sequence[tuple[int, str]] = (), stdin: int | None = None,
              stdout: int | None = None, env: Mapping[str, str] | None = None,
              umask: int | None = None, setting: str | None = None) -> int:
        """Fork and exec ``argv`` as ``creds`` (see the module docstring), with
        the clean environment plus ``env``; its pid.  At the end of the run it
        gets ``grace`` seconds to end (``terminate``: SIGTERM first).
        ``setting`` (e.g. "[client] command") names the command in errors."""
        master = os.getpid()

        def child() -> None:
            try:
                drop_privileges(creds)
            except OSError as exc:
                raise PrivilegeError(f"cannot drop privileges: {exc.strerror or exc}") from None
            die_with_master(master)
            os.chdir("/")
            if umask is not None:
                os.umask(umask)

        try:
            pid = spawn(argv, fds=fds, stdin=stdin, stdout=stdout,
                        env=clean_environment(creds, dict(env or {})), before_exec=child,
                        explain=why_not_executable)
        except SpawnError as exc:
            # The run is over: the components already started are told to stop
            # now, while their sockets are still open, so that they end on the
            # signal and not on a write to a closed socket (a second message).
            self.stop(aborting=True)
            raise start_error(exc, creds, what, setting) from None
        self.children.append(_Child(pid, what, grace, terminate))
        return pid

    def stop(self, aborting: bool) -> None:
        """Signal the children to stop (the webservers always, every one when
        ``aborting``), then reap them all together."""
        children, self.children = self.children, []
        self.ended += children
        for child in children:
            child.terminate = child.terminate or aborting
            if child.terminate:
                _kill(child.pid, signal.SIGTERM)
        try:
            reap_all(children)
        finally:
            # Open until the webservers are gone: their STOPPING=1 finds a reader.
            for sock in self.close_after:
                sock.close()

    def exit_status(self, pid: int, wait: float) -> str:
        """How child ``pid`` ended, e.g. " (killed by signal 9)", if it has
        within ``wait`` seconds (or before: the status is kept once reaped);
        "" otherwise."""
        child = next((c for c in self.children + self.ended if c.pid == pid), None)
        if child is None:
            return ""
        deadline = time.monotonic() + wait
        while not child.poll() and time.monotonic() < deadline:
            time.sleep(0.01)
        return child.describe_exit()


#: Where the administrator reads what to do about a command that the
#: component's user cannot run.
START_HINT = 'see lacme(8), "Components run as other users"'


def start_error(exc: SpawnError, creds: Credentials, what: str,
                setting: str | None) -> LacmeError:
    """The one line for a component that could not be started: at exec, the
    configured command and why that user cannot run it (ConfigError); before
    exec (the privilege drop, for one), what failed."""
    user = creds.user or _current_user()
    if exc.path is None:  # the privilege drop or the rest of the set-up
        section = setting.split()[0] if setting else what
        return LacmeError(f"{section}: cannot start {what} as user {user}: {exc}")
    reason = os.strerror(exc.errno).lower() if exc.errno else "cannot execute"
    details = [exc.why] if exc.why else []
    if exc.errno == errno.EACCES or exc.why:
        details.append(START_HINT)
    detail = f" ({'; '.join(details)})" if details else ""
    return ConfigError(f"{setting or what} {exc.path}: cannot run as user {user}: {reason}{detail}")


def _current_user() -> str:
    import pwd

    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


def reap_all(children: list[_Child]) -> None:
    """Wait for every child at once.  Each has ``grace`` seconds (from now) to
    end; then SIGTERM, 2 s more, then SIGKILL.  A child that exited 127 without
    being told to stop could not be started (logged)."""
    now = start = time.monotonic()
    pending: dict[int, _Child] = {}
    for child in children:
        child.deadline = now + child.grace
        child.pidfd = _pidfd(child.pid)
        pending[child.pid] = child
    try:
        while pending:
            for pid in list(pending):
                if _reaped(pending[pid]):
                    child = pending.pop(pid)
                    _close_pidfd(child)
                    log.debug("%s ended (%.0f ms after the run)", child.what,
                              1000 * (time.monotonic() - start))
            if not pending:
                return
            now = time.monotonic()
            for child in pending.values():
                if child.stage < 2 and now > child.deadline:
                    _escalate(child, now)
            _sleep_until_exit(pending.values(), min(c.deadline for c in pending.values()) - now)
    finally:
        for child in pending.values():
            _close_pidfd(child)


def _reaped(child: _Child) -> bool:
    known = child.status is not None  # reaped before, by exit_status: said already if at all
    if not child.poll():
        return False
    status = child.status
    if not known and not child.terminate and status and os.WIFEXITED(status) \
            and os.WEXITSTATUS(status) == 127:
        log.error("%s could not be started", child.what)
    return True


def _escalate(child: _Child, now: float) -> None:
    if child.stage == 0:
        log.debug("%s (pid %d) still running, terminating it", child.what, child.pid)
        _kill(child.pid, signal.SIGTERM)
        child.stage, child.deadline = 1, now + 2.0
    else:
        _kill(child.pid, signal.SIGKILL)
        child.stage, child.deadline = 2, float("inf")


def _sleep_until_exit(children: Iterable[_Child], timeout: float) -> None:
    """Until one of ``children`` exits (its pidfd is readable) or ``timeout``."""
    children = list(children)
    fds = [c.pidfd for c in children if c.pidfd is not None]
    polling = len(fds) < len(children)
    limit = 0.01 if polling else 1.0  # without pidfds (old kernels): poll
    timeout = max(0.0, min(timeout, limit))
    if fds:
        select.select(fds, [], [], timeout)
    else:
        time.sleep(timeout)


def _pidfd(pid: int) -> int | None:
    """A descriptor readable once ``pid`` has exited (pidfd_open(2), Linux 5.3)."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


def _close_pidfd(child: _Child) -> None:
    if child.pidfd is not None:
        os.close(child.pidfd)
        child.pidfd = None


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
