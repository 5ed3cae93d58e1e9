"""A booted systemd for the systemd-mode tests: install, boot, run inside.

``boot_box`` makes a fresh container root (copies of /etc and /var/lib,
/usr bound read-only from the host), installs lacme into it with exactly the
documented command ``make install DESTDIR=ROOT PREFIX=/usr/local
VENV=/opt/lacme``, boots it with systemd-nspawn and waits until systemd is
running.  Tests run commands inside with ``Box.run`` (nsenter into every
namespace of the container's PID 1).  The test process runs as root on the
host and needs systemd-container; nothing here is skipped.

Facts this relies on (found on this machine kind): without systemd on the
host every nspawn payload lands in one ``/payload`` cgroup, so the launcher
first moves into a cgroup of its own; the container shares the host's
network (Pebble on the loopback is reachable, ports must not collide); /usr
is the host's, so the installation's /usr/local is bound over it.

``boot_box(base, unified=True)`` gives the box the unified cgroup hierarchy
(cgroup v2 only, SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1) even on a host with the
hybrid layout: every unit then has a cgroup with cpu.stat under
``Box.cgroup_tree`` (the benchmark measures the units' CPU there).
"""

from __future__ import annotations

import ctypes
import fcntl
import fnmatch
import json
import os
import shutil
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

TREE_ROOT = Path(__file__).resolve().parents[2]
VENV = "/opt/lacme"
PREFIX = "/usr/local"
UNITDIR = f"{PREFIX}/lib/systemd/system"
INSTALL_ARGS = ("PREFIX=" + PREFIX, "VENV=" + VENV, "PYTHON=/usr/bin/python3")
BOOT_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0
PR_SET_PDEATHSIG = 1
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Units of the host (copied with /etc) that are slow, useless or harmful in
# the box.  The web servers are the host's test peers: a test that needs one
# in the box unmasks it and gives it a configuration of its own; so are the
# DNS servers of the dns-01 tests and sshd of the fleet tests (the box shares
# the host's ports).
MASKED = (
    "apache2.service", "apache-htcacheclean.service", "nginx.service", "knot.service",
    "apt-daily.service", "apt-daily.timer", "apt-daily-upgrade.service",
    "apt-daily-upgrade.timer", "bind9.service", "certbot.service", "certbot.timer",
    "console-getty.service", "dpkg-db-backup.timer", "knot.service", "named.service",
    "e2scrub_all.timer", "e2scrub_reap.service", "fstrim.timer", "getty@tty1.service",
    "man-db.timer", "postgresql.service", "ssh.service", "ssh.socket", "systemd-pstore.service",
    "systemd-timesyncd.service",
)


#: Boxes share the host's network, so two test sessions (two work trees on
#: one machine) must not have boxes up at once: every booted box of this
#: process holds this lock, taken when the first boots and dropped when the
#: last stops.
BOX_LOCK = Path("/run/lock/lacme-test-box.lock")
_box_lock: list[int] = []  # [fd, boxes up]


def _hold_box_lock() -> None:
    if not _box_lock:
        fd = os.open(BOX_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        _box_lock[:] = [fd, 0]
    _box_lock[1] += 1


def _drop_box_lock() -> None:
    if _box_lock:
        _box_lock[1] -= 1
        if _box_lock[1] <= 0:
            os.close(_box_lock[0])  # closing the only descriptor releases the flock
            _box_lock.clear()


class BoxError(RuntimeError):
    """The box could not be built, booted or driven."""


@dataclass
class Box:
    """A booted container: its root directory on the host and its PID 1."""

    root: Path
    name: str
    launcher: subprocess.Popen | None = None
    leader: int = 0
    cgroups: list[Path] = field(default_factory=list)
    unified: bool = False  # cgroup v2 only inside, even on a hybrid host
    booted: bool = False  # holds a share of BOX_LOCK

    @property
    def local(self) -> Path:
        """The installed PREFIX, bound over the host's (sources of binds are
        resolved after /usr is bound, so it cannot stay under root/usr)."""
        return self.root.parent / "prefix"

    # -- running things inside ---------------------------------------------

    def run(self, *argv: str, check: bool = True, input: str | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside the box (all namespaces of its PID 1)."""
        env = {"PATH": PATH, "LANG": "C.UTF-8", "SYSTEMD_COLORS": "0", "SYSTEMD_PAGER": "cat",
               "TERM": "dumb"}
        proc = subprocess.run(["nsenter", "-t", str(self.leader), "-a", "--", *argv],
                              input=input, capture_output=True, text=True, timeout=timeout,
                              env=env, check=False)
        if check and proc.returncode != 0:
            raise BoxError(f"in box: {' '.join(argv)}: exit {proc.returncode}\n"
                           f"{proc.stdout}{proc.stderr}")
        return proc

    def sh(self, script: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return self.run("/bin/sh", "-ec", script, check=check, timeout=timeout)

    def systemctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run("systemctl", *args, check=check, timeout=120)

    def show(self, unit: str, *props: str) -> dict[str, str]:
        out = self.run("systemctl", "show", unit, *(f"--property={p}" for p in props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def cursor(self) -> str:
        out = self.run("journalctl", "--lines=0", "--show-cursor", "--quiet").stdout
        return out.strip().rsplit("cursor: ", 1)[-1]

    def journal(self, after: str | None = None, **fields: str) -> list[dict]:
        """Journal entries (JSON) after cursor ``after`` whose ``fields`` match
        (values are fnmatch patterns).  Filtering is done here: journalctl
        with a match and --after-cursor can miss entries."""
        self.run("journalctl", "--sync", check=False)
        args = ["journalctl", "--output=json", "--no-pager", "--quiet"]
        if after:
            args.append(f"--after-cursor={after}")
        out = self.run(*args, check=False).stdout
        entries = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        return [e for e in entries
                if all(isinstance(e.get(k), str) and fnmatch.fnmatchcase(e[k], v)
                       for k, v in fields.items())]

    def wait_journal(self, after: str | None = None, count: int = 1, timeout: float = 10,
                     **fields: str) -> list[dict]:
        """``journal`` once it has ``count`` entries (journald may lag)."""
        deadline = time.monotonic() + timeout
        while True:
            entries = self.journal(after=after, **fields)
            if len(entries) >= count or time.monotonic() > deadline:
                time.sleep(0.3)  # and let a surplus show up too
                return self.journal(after=after, **fields)
            time.sleep(0.2)

    def write(self, path: str, text: str, mode: int = 0o644) -> None:
        """Write a file of the box's disk (not /run or /tmp, which are tmpfs)."""
        host = self.root / path.lstrip("/")
        host.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(host, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.chmod(host, mode)

    @property
    def cgroup_tree(self) -> Path:
        """The box's root cgroup in the host's cgroup2 hierarchy (the parent of
        its init.scope): with ``unified``, every unit's cgroup is below it."""
        for base in self.cgroups:
            for d in walk_dirs(base):
                if d.name == "init.scope" and (d / "cpu.stat").exists():
                    return d.parent
        raise BoxError("no cgroup2 tree of the box (boot it with unified=True)")

    def host_path(self, path: str) -> Path:
        if path == PREFIX or path.startswith(PREFIX + "/"):
            return self.local / path[len(PREFIX):].lstrip("/")
        return self.root / path.lstrip("/")

    # -- lifecycle -----------------------------------------------------------

    def boot(self) -> None:
        _hold_box_lock()
        self.booted = True
        self.cgroups = make_cgroups(f"lacme-test-{self.name}")
        log = open(self.root.parent / "nspawn.log", "wb")
        argv = ["systemd-nspawn", "-D", str(self.root), "--bind-ro=/usr",
                f"--bind-ro={self.local}:{PREFIX}", "--console=passive", "-b",
                "--register=no", "--keep-unit", "-M", self.name]
        cgroups = list(self.cgroups)
        env = dict(os.environ)
        if self.unified:
            env["SYSTEMD_NSPAWN_UNIFIED_HIERARCHY"] = "1"
        self.launcher = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=lambda: join_cgroups(cgroups), env=env,
        )
        log.close()
        self.leader = self.wait_leader()
        self.wait_running()

    def wait_leader(self) -> int:
        assert self.launcher is not None
        deadline = time.monotonic() + BOOT_TIMEOUT
        while time.monotonic() < deadline:
            if self.launcher.poll() is not None:
                raise BoxError(f"systemd-nspawn exited {self.launcher.returncode}:\n{self.nspawn_log()}")
            for child in children(self.launcher.pid):
                if read_comm(child) == "systemd":
                    return child
            time.sleep(0.05)
        raise BoxError(f"no systemd in the box after {BOOT_TIMEOUT}s:\n{self.nspawn_log()}")

    def wait_running(self) -> None:
        deadline = time.monotonic() + BOOT_TIMEOUT
        state = ""
        while time.monotonic() < deadline:
            proc = self.run("systemctl", "is-system-running", "--wait", check=False,
                            timeout=BOOT_TIMEOUT)
            state = proc.stdout.strip()
            if state in ("running", "degraded"):
                break
            time.sleep(0.1)
        if state != "running":
            failed = self.run("systemctl", "--failed", "--no-legend", check=False).stdout
            raise BoxError(f"box is {state or 'not up'}; failed units:\n{failed}")

    def nspawn_log(self) -> str:
        try:
            return (self.root.parent / "nspawn.log").read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def stop(self) -> None:
        """Power off, then make sure no process, cgroup or mount is left."""
        if self.launcher is not None and self.launcher.poll() is None:
            if self.leader:
                self.save_journal()
            self.launcher.send_signal(signal.SIGTERM)  # nspawn: orderly poweroff
            try:
                self.launcher.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                kill_cgroups(self.cgroups)
                self.launcher.kill()
                self.launcher.wait(timeout=STOP_TIMEOUT)
        kill_cgroups(self.cgroups)
        remove_cgroups(self.cgroups)
        unmount_below(self.root)
        if self.booted:
            self.booted = False
            _drop_box_lock()

    def reboot(self) -> None:
        """Power off, then boot the same root again: what is enabled on its
        disk starts, in the order systemd chooses."""
        self.stop()
        self.boot()

    def save_journal(self) -> None:
        """Keep the box's journal next to its root, for post-mortems."""
        try:
            out = self.run("journalctl", "--no-pager", "-o", "short-precise", check=False,
                           timeout=30).stdout
            (self.root.parent / "journal.txt").write_text(out)
        except (OSError, subprocess.SubprocessError):
            pass


# -- building the root --------------------------------------------------------

def make_root(root: Path) -> None:
    """A container root: host /etc and /var/lib copies, usr/ to bind onto."""
    root.mkdir(parents=True)
    for d in ("usr", "proc", "sys", "dev", "run", "tmp", "var/log", "var/tmp", "root",
              "opt", "srv", f"{PREFIX.lstrip('/')}"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for link in ("bin", "lib", "lib64", "sbin"):
        (root / link).symlink_to(f"usr/{link}")
    shutil.copytree("/etc", root / "etc", symlinks=True)
    shutil.copytree("/var/lib", root / "var/lib", symlinks=True,
                    ignore=shutil.ignore_patterns("postgresql", "apt", "dpkg"))
    os_release = root / "etc/os-release"
    os_release.unlink(missing_ok=True)
    shutil.copyfile("/usr/lib/os-release", os_release)
    (root / "etc/machine-id").write_text(uuid.uuid4().hex + "\n")
    for stale in ("var/lib/dbus/machine-id", "etc/.updated", "var/.updated"):
        (root / stale).unlink(missing_ok=True)
    shutil.rmtree(root / "etc/lacme", ignore_errors=True)  # the Perl lacme's files
    drop_accounts(root, ("_lacme-client", "_lacme-www"))  # sysusers.d must make them
    for unit in MASKED:
        target = root / "etc/systemd/system" / unit
        target.unlink(missing_ok=True)
        target.symlink_to("/dev/null")


def drop_accounts(root: Path, names: Sequence[str]) -> None:
    """Remove users and groups copied from the host (its Perl lacme made them)."""
    for db in ("passwd", "group", "shadow", "gshadow", "subuid", "subgid"):
        path = root / "etc" / db
        if not path.exists():
            continue
        lines = path.read_text().splitlines(keepends=True)
        kept = [line for line in lines if line.split(":", 1)[0] not in names]
        if kept != lines:
            mode = path.stat().st_mode
            path.write_text("".join(kept))
            path.chmod(mode)


def install_into(root: Path) -> subprocess.CompletedProcess[str]:
    """The documented install command, with DESTDIR the box's root."""
    argv = ["make", "-C", str(TREE_ROOT), "install", f"DESTDIR={root}", *INSTALL_ARGS]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
    if proc.returncode != 0:
        raise BoxError(f"{' '.join(argv)}: exit {proc.returncode}\n{proc.stdout[-2000:]}"
                       f"{proc.stderr[-3000:]}")
    return proc


# -- processes and cgroups ----------------------------------------------------

def children(pid: int) -> list[int]:
    result: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as fh:
                result += [int(p) for p in fh.read().split()]
    except OSError:
        pass
    return result


def read_comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as fh:
            return fh.read().strip()
    except OSError:
        return ""


def cgroup_roots() -> list[Path]:
    """Our cgroup in the unified hierarchy and in the name=systemd one."""
    mounts: dict[str, Path] = {}
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            fields = line.split()
            sep = fields.index("-")
            fstype, options = fields[sep + 1], fields[-1]
            if fstype == "cgroup2":
                mounts.setdefault("", Path(fields[4]))
            elif fstype == "cgroup" and "name=systemd" in options.split(","):
                mounts.setdefault("name=systemd", Path(fields[4]))
    result = []
    with open("/proc/self/cgroup") as fh:
        for line in fh:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            if controllers in mounts:
                result.append(mounts[controllers] / path.lstrip("/"))
    return result


def make_cgroups(name: str) -> list[Path]:
    made = []
    for base in cgroup_roots():
        path = base / name
        path.mkdir(exist_ok=True)
        made.append(path)
    return made


def join_cgroups(cgroups: Sequence[Path]) -> None:
    """preexec_fn: move the launcher (and so the box) into its own cgroups,
    and have it power the box off if the test process dies."""
    for path in cgroups:
        with open(path / "cgroup.procs", "w") as fh:
            fh.write("0")
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def kill_cgroups(cgroups: Sequence[Path]) -> None:
    for path in cgroups:
        for d in sorted(walk_dirs(path), key=lambda p: -len(p.parts)):
            kill_file = d / "cgroup.kill"
            if kill_file.exists():
                try:
                    kill_file.write_text("1")
                except OSError:
                    pass
            else:
                try:
                    pids = (d / "cgroup.procs").read_text().split()
                except OSError:
                    pids = []
                for pid in pids:
                    try:
                        os.kill(int(pid), signal.SIGKILL)
                    except (ProcessLookupError, ValueError):
                        pass


def remove_cgroups(cgroups: Sequence[Path]) -> None:
    deadline = time.monotonic() + 10
    for path in cgroups:
        for d in sorted(walk_dirs(path), key=lambda p: -len(p.parts)):
            while True:
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)


def walk_dirs(path: Path) -> list[Path]:
    if not path.is_dir():
        return []
    return [Path(d) for d, _, _ in os.walk(path)]


def unmount_below(root: Path) -> None:
    prefix = str(root)
    with open("/proc/self/mountinfo") as fh:
        points = [line.split()[4] for line in fh]
    for point in sorted((p for p in points if p == prefix or p.startswith(prefix + "/")),
                        key=len, reverse=True):
        subprocess.run(["umount", "-l", point], check=False, capture_output=True)


def boot_box(base: Path, unified: bool = False) -> Box:
    """Build a root under ``base``, install lacme into it and boot it
    (``unified``: cgroup v2 only inside the box)."""
    root = base / "root"
    make_root(root)
    install_into(root)
    instance = Box(root=root, name=f"lacme{uuid.uuid4().hex[:8]}", unified=unified)
    (root / PREFIX.lstrip("/")).rename(instance.local)
    (root / PREFIX.lstrip("/")).mkdir()
    try:
        instance.boot()
    except BaseException:
        instance.stop()
        raise
    return instance
