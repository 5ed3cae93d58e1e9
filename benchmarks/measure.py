"""Measure a run of one or more commands: wall time, CPU, peak RSS, process tree.

Run by the benchmark runner (root, inside its private mount namespace).  A
run is a list of commands executed one after the other and timed as a whole.
Per run it reports:

* wall seconds, from the first fork to the last reap (time.perf_counter);
* CPU seconds (user + system) from wait4(2) on each command, which includes
  every descendant the command waited for, plus any orphan the runner
  reaped as child subreaper (PR_SET_CHILD_SUBREAPER);
* peak RSS of the largest single process (its VmHWM, the kernel's own
  high-water mark, last read before it exited);
* peak RSS summed over the live process tree (VmRSS);
* peak PSS summed over the same processes (Pss of smaps_rollup): the
  resident memory they hold together, each shared page (the interpreter,
  libcrypto, a module mapped by several processes) divided among its users
  instead of counted once per process as summed RSS does;
* the same peak PSS summed over the client's own programs only (for lacme,
  its five programs, as named by program_of): what the client holds, apart
  from processes a run causes that are not the client's (nsenter into a
  container, a systemd-run, systemd's fork of itself before a unit's exec).
Both are sampled every SAMPLE_INTERVAL seconds from /proc: a process that
lives less than the interval can be missed.  (ru_maxrss is not used: Linux
carries the forking runner's own high-water mark over the exec.)

Long-running services the runner starts (Pebble, the static webroot server,
the systemd container) are excluded from the tree by pid.

A run can also cause processes that are not the runner's descendants:
lacme in systemd mode, whose socket-activated units are started by the
container's systemd.  An ``Outside`` source names those processes (sampled
with the tree) and gives their CPU as a counter read before and after the
run (systemd_mode.py: the units' cgroup).
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

SAMPLE_INTERVAL = 0.010
PR_SET_CHILD_SUBREAPER = 36


@dataclass(frozen=True)
class Command:
    """One program invocation of a run."""

    argv: tuple[str, ...]
    env: Mapping[str, str]
    cwd: str
    ok_codes: frozenset[int] = frozenset({0})
    stdout: str | None = None  # file for stdout (else the run log)


@dataclass(frozen=True)
class Measurement:
    wall: float
    cpu: float
    rss_largest_kb: int
    rss_tree_kb: int
    pss_tree_kb: int = 0
    pss_programs_kb: int = 0  # the client's own programs (all of the tree when it names none)
    failed: str = ""  # the first command that exited with an unexpected code
    processes: tuple[tuple[str, int], ...] = ()  # (program, VmHWM kB), largest first
    cpu_parts: dict[str, float] = field(default_factory=dict)  # CPU s by origin, if split
    pss_by_program_kb: dict[str, int] = field(default_factory=dict)  # at the own-programs peak


class Outside(Protocol):
    """Processes a run causes outside the runner's process tree."""

    def pids(self) -> set[int]:
        """The live processes, at one sample."""

    def cpu_usec(self) -> int:
        """CPU (user + system) of every such process so far, dead ones included."""

    def settle(self) -> None:
        """After the last command: wait until those processes are done."""

    def unmeasured_usec(self) -> dict[str, int]:
        """Counters of work the run causes but is not charged with (reported apart)."""


@dataclass
class _Tree:
    """pid -> ppid cache of /proc, refreshed lazily (ppid changes on reparenting)."""

    parents: dict[int, int] = field(default_factory=dict)

    def refresh(self) -> None:
        live = {int(n) for n in os.listdir("/proc") if n.isdigit()}
        for pid in list(self.parents):
            if pid not in live:
                del self.parents[pid]
        for pid in live:
            ppid = self.parents.get(pid)
            if ppid is None or (ppid not in live and ppid > 1):
                ppid = read_ppid(pid)
                if ppid is None:
                    continue
                self.parents[pid] = ppid

    def descendants(self, root: int, excluded: set[int]) -> set[int]:
        children: dict[int, list[int]] = {}
        for pid, ppid in self.parents.items():
            children.setdefault(ppid, []).append(pid)
        found: set[int] = set()
        stack = [root]
        while stack:
            for child in children.get(stack.pop(), ()):
                if child not in excluded and child not in found:
                    found.add(child)
                    stack.append(child)
        return found


def read_ppid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
    except OSError:
        return None
    return int(data[data.rindex(b")") + 2:].split()[1])


def read_cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read()
    except OSError:
        return b""


def program_of(pid: int, known: dict[int, tuple[str, int]]) -> str:
    """The program a process runs: the script for an interpreter, else argv[0].

    Read at every sample: a child seen between fork and exec still shows its parent's.
    """
    argv = [a.decode(errors="replace") for a in read_cmdline(pid).split(b"\0") if a]
    if not argv and pid in known:
        return known[pid][0]
    for arg in argv[1:3]:
        if not arg.startswith("-"):
            if "/" in argv[0] and os.path.basename(argv[0]).startswith(("python", "perl")):
                return os.path.basename(arg)
            break
    return os.path.basename(argv[0]) if argv else "?"


def read_pss_kb(pid: int) -> int:
    """Proportional set size of ``pid`` in kB; 0 for a process that is gone."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as fh:
            for line in fh:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def read_rss_kb(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of ``pid`` in kB; zeros for a process that is gone."""
    try:
        with open(f"/proc/{pid}/status", "rb") as fh:
            text = fh.read()
    except OSError:
        return 0, 0
    fields = dict(line.split(b":", 1) for line in text.splitlines() if line.startswith(b"Vm"))
    return (int(fields.get(b"VmRSS", b"0 kB").split()[0]),
            int(fields.get(b"VmHWM", b"0 kB").split()[0]))


class TreeSampler(threading.Thread):
    """Samples the summed RSS of the runner's descendants (minus services).

    ``programs``, if given, names the client's own programs (program_of):
    pss_programs_peak_kb sums those alone, pss_peak_kb every process.
    """

    def __init__(self, excluded: set[int], outside: Outside | None = None,
                 programs: frozenset[str] | None = None) -> None:
        super().__init__(daemon=True)
        self.excluded = excluded
        self.outside = outside
        self.programs = programs
        self.peak_kb = 0
        self.pss_peak_kb = 0
        self.pss_programs_peak_kb = 0
        self.pss_by_program_kb: dict[str, int] = {}  # PSS by program in the sample of that peak
        self.largest_kb = 0
        self.by_pid: dict[int, tuple[str, int]] = {}  # pid -> (program, VmHWM kB)
        self._done = threading.Event()
        self._tree = _Tree()

    def run(self) -> None:
        me = os.getpid()
        own = read_cmdline(me)
        while not self._done.is_set():
            self._tree.refresh()
            pids = self._tree.descendants(me, self.excluded)
            # a child between fork and exec is still a copy of the runner: not measured
            pids = {p for p in pids if self._tree.parents.get(p) != me or read_cmdline(p) != own}
            if self.outside is not None:
                pids |= self.outside.pids()
            sizes = []
            by_program: dict[str, int] = {}
            for pid in pids:
                rss, hwm = read_rss_kb(pid)
                sizes.append((rss, hwm))
                program = program_of(pid, self.by_pid)
                if hwm:
                    self.by_pid[pid] = (program, hwm)
                by_program[program] = by_program.get(program, 0) + read_pss_kb(pid)
            pss_own = sum(kb for program, kb in by_program.items()
                          if self.programs is None or program in self.programs)
            self.peak_kb = max(self.peak_kb, sum(rss for rss, _ in sizes))
            self.pss_peak_kb = max(self.pss_peak_kb, sum(by_program.values()))
            if pss_own > self.pss_programs_peak_kb:
                self.pss_programs_peak_kb = pss_own
                self.pss_by_program_kb = by_program
            self.largest_kb = max([self.largest_kb] + [hwm for _, hwm in sizes])
            self._done.wait(SAMPLE_INTERVAL)

    def stop(self) -> tuple[int, int]:
        """(peak summed RSS, largest single-process high-water mark), kB."""
        self._done.set()
        self.join()
        return self.peak_kb, self.largest_kb


def become_subreaper() -> None:
    """Orphans of measured commands are reparented to us, stay in the tree and are reaped."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def service_pids(processes: Sequence[subprocess.Popen]) -> set[int]:
    return {p.pid for p in processes}


def orphan_pids(excluded: set[int]) -> list[int]:
    me = os.getpid()
    tree = _Tree()
    tree.refresh()
    return [pid for pid, ppid in tree.parents.items() if ppid == me and pid not in excluded]


def run_commands(commands: Sequence[Command], log_path: Path, excluded: set[int],
                 outside: Outside | None = None,
                 programs: frozenset[str] | None = None) -> Measurement:
    """Run ``commands`` in order (stop at the first unexpected exit code) and measure them.

    With ``outside``, its processes count too: sampled with the tree until
    the last command exits, and their CPU is the difference of its counter
    from before the first fork to after ``settle`` (not part of the wall time,
    and not sampled: what settle runs to wait is not the run's).
    """
    sampler = TreeSampler(excluded, outside, programs)
    cpu = 0.0
    failed = ""
    with open(log_path, "ab") as log:
        before = outside.cpu_usec() if outside else 0
        side_before = outside.unmeasured_usec() if outside else {}
        sampler.start()
        start = time.perf_counter()
        for command in commands:
            log.write(f"$ {' '.join(command.argv)}\n".encode())
            log.flush()
            out = open(command.stdout, "wb") if command.stdout else log
            try:
                proc = subprocess.Popen(command.argv, env=dict(command.env), cwd=command.cwd,
                                        stdin=subprocess.DEVNULL, stdout=out, stderr=log)
            finally:
                if command.stdout:
                    out.close()
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            cpu += usage.ru_utime + usage.ru_stime
            for orphan in orphan_pids(excluded | {proc.pid}):
                _, _, ousage = os.wait4(orphan, 0)
                cpu += ousage.ru_utime + ousage.ru_stime
            if proc.returncode not in command.ok_codes:
                failed = f"{command.argv[0]} exited {proc.returncode}"
                break
        wall = time.perf_counter() - start
        tree_peak, largest = sampler.stop()
        parts: dict[str, float] = {}
        if outside is not None:
            outside.settle()
            units = (outside.cpu_usec() - before) / 1e6
            parts = {"commands": round(cpu, 4), "units": round(units, 4)}
            side_after = outside.unmeasured_usec()
            parts.update({name: round((side_after[name] - side_before.get(name, 0)) / 1e6, 4)
                          for name in side_after})
            cpu += units
        processes = tuple(sorted(sampler.by_pid.values(), key=lambda p: -p[1])[:8])
        log.write(f"# wall {wall:.3f}s cpu {cpu:.3f}s {parts or ''} {failed}\n".encode())
    return Measurement(wall=wall, cpu=cpu, rss_largest_kb=largest, rss_tree_kb=tree_peak,
                       pss_tree_kb=sampler.pss_peak_kb,
                       pss_programs_kb=sampler.pss_programs_peak_kb,
                       pss_by_program_kb=dict(sorted(sampler.pss_by_program_kb.items(),
                                                     key=lambda item: -item[1])),
                       failed=failed, processes=processes, cpu_parts=parts)
