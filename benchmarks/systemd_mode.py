"""lacme in systemd mode, in a booted container, as one more benchmark client.

The adapter ``lacme-systemd`` boots one box for the whole benchmark
(tests/systemd/box.py: systemd-nspawn, the working tree installed with
``make install``, the host's network), configures it as docs/systemd.md
says, pointed at the benchmark's Pebble, and powers it off at the end.
Each run is the master run by hand inside the box, as an administrator
would: ``nsenter -t PID1 -a -- /opt/lacme/bin/lacme --config=RUN/lacme.conf
...``; it connects to the socket-activated lacme-accountd@ and lacme-client@
services and writes the challenges that lacme-webserver.service serves.

Sharing the host's network with the other clients, the box holds the
http-01 port only during its own runs: lacme-webserver.socket is started
before each run and stopped after it (untimed), and the runner checks that
the port is free again before the next client.

Measuring processes that are not the runner's descendants: the box runs
the cgroup v2 hierarchy, and a drop-in puts the three socket-activated
services into one slice (``lacmebench.slice``, started once so that it
stays): its ``cgroup.procs`` (recursively) are the processes to sample for
RSS, and its ``cpu.stat`` ``usage_usec`` counts the CPU of every process that
ran in it, including the per-connection services that exited (the kernel
adds a removed cgroup's usage to its parent).  The work of systemd itself
(PID 1's ``init.scope``) and of journald is reported apart, not charged.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from clients import LACME_PROGRAMS, Context, LacmeFamily, clean_env, write_pem_key
from measure import Command

from tests.systemd.box import VENV, Box, boot_box

SLICE = "lacmebench.slice"  # no "-": that would nest it in lacme.slice
SERVICES = ("lacme-accountd@.service", "lacme-client@.service", "lacme-webserver.service")
PER_CONNECTION = ("lacme-accountd@", "lacme-client@")
STATE_ROOT = "/var/lib/lacme-bench"  # the box's own disk (its /tmp and /run are tmpfs)
SETTLE_TIMEOUT = 10.0
PORT_TIMEOUT = 5.0


class SystemdBoxError(RuntimeError):
    """The box could not be set up or driven for a run."""


def read_usage_usec(cgroup: Path) -> int:
    """cpu.stat usage_usec of ``cgroup``; 0 when it does not exist (yet, or any more)."""
    try:
        with open(cgroup / "cpu.stat") as fh:
            for line in fh:
                key, value = line.split()
                if key == "usage_usec":
                    return int(value)
    except OSError:
        pass
    return 0


def cgroup_pids(cgroup: Path) -> set[int]:
    """Every process in ``cgroup`` and below it."""
    pids: set[int] = set()
    for directory, _, files in os.walk(cgroup):
        if "cgroup.procs" in files:
            try:
                with open(os.path.join(directory, "cgroup.procs")) as fh:
                    pids.update(int(p) for p in fh.read().split())
            except OSError:
                pass  # removed while we walked
    return pids


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class UnitCgroups:
    """The ``Outside`` source of measure.run_commands for one box."""

    def __init__(self, box: Box) -> None:
        self.box = box
        tree = box.cgroup_tree
        self.slice = tree / unit_cgroup(box, SLICE)
        if not (self.slice / "cpu.stat").exists():
            raise SystemdBoxError(f"{SLICE}: no cgroup at {self.slice}")
        self.pid1 = tree / "init.scope"
        self.journald = tree / "system.slice" / "systemd-journald.service"

    def pids(self) -> set[int]:
        return cgroup_pids(self.slice)

    def cpu_usec(self) -> int:
        return read_usage_usec(self.slice)

    def unmeasured_usec(self) -> dict[str, int]:
        return {"systemd PID 1": read_usage_usec(self.pid1),
                "journald": read_usage_usec(self.journald)}

    def settle(self) -> None:
        """The per-connection services exit when the master closes their
        connections; the webserver would idle for a minute: stop it, so that
        everything the run started is done (and counted) when we read."""
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while self.per_connection_pids() and time.monotonic() < deadline:
            time.sleep(0.01)
        stop_webserver(self.box)

    def per_connection_pids(self) -> set[int]:
        try:
            units = [d for d in self.slice.iterdir() if d.name.startswith(PER_CONNECTION)]
        except OSError:
            return set()
        return set().union(*(cgroup_pids(d) for d in units)) if units else set()


def unit_cgroup(box: Box, unit: str) -> str:
    """The unit's cgroup, relative to the box's root cgroup (systemd's ControlGroup)."""
    group = box.show(unit, "ControlGroup").get("ControlGroup", "")
    if not group.startswith("/"):
        raise SystemdBoxError(f"{unit} has no cgroup (is it started?)")
    return group.lstrip("/")


def stop_webserver(box: Box) -> None:
    box.systemctl("stop", "lacme-webserver.socket", "lacme-webserver.service")


class LacmeSystemd(LacmeFamily):
    """This project in systemd mode: the master run by hand in a booted box."""

    name = "lacme-systemd"
    program = f"{VENV}/bin/lacme"
    programs = LACME_PROGRAMS
    register_args = ("--register", "--tos-agreed")

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.box: Box | None = None
        self.cgroups: UnitCgroups | None = None
        self.template = ""

    # -- lifecycle ------------------------------------------------------------

    def setup(self) -> None:
        self.box = boot_box(self.ctx.work / "systemd-box", unified=True)
        self.configure(self.box)
        self.cgroups = UnitCgroups(self.box)

    def teardown(self) -> None:
        if self.box is not None:
            self.box.stop()
            self.box = None

    def services(self) -> set[int]:
        launcher = self.box.launcher if self.box else None
        return {launcher.pid} if launcher else set()

    def configure(self, box: Box) -> None:
        """docs/systemd.md's setup, pointed at Pebble; the webserver socket
        on the http-01 port (a drop-in), not started until a run needs it."""
        box.write("/etc/lacme/pebble-tls-ca.pem", Path(self.ctx.tls_ca_file).read_text())
        box.write("/etc/lacme/pebble-root.pem", Path(self.ctx.root_file).read_text())
        installed = box.host_path("/etc/lacme/lacme.conf").read_text()
        self.template = self.pointed_at_pebble(installed)
        box.write("/etc/lacme/lacme.conf", self.template)
        box.write("/etc/systemd/system/lacme-webserver.socket.d/50-bench.conf",
                  f"[Socket]\nListenStream=127.0.0.1:{self.ctx.http_port}\n")
        for unit in SERVICES:  # measurement only: one cgroup for all of them
            box.write(f"/etc/systemd/system/{unit}.d/50-bench-slice.conf",
                      f"[Service]\nSlice={SLICE}\n")
        box.run("mkdir", "-p", "-m", "0755", STATE_ROOT)
        box.systemctl("daemon-reload")
        box.run("systemd-tmpfiles", "--create")
        box.run("systemd-sysusers")
        box.systemctl("disable", "--now", "lacme-renew.timer", "lacme-webserver.socket")
        box.systemctl("enable", "--now", "lacme-accountd.socket", "lacme-client.socket")
        box.systemctl("start", SLICE)
        # a slice gets its cgroup with its first process: make it now, so that
        # it exists (and keeps every later process's CPU) from the first run on
        box.run("systemd-run", "--wait", "--quiet", "--collect", f"--slice={SLICE}", "/bin/true")

    def trust(self, bundle: Path) -> None:
        """The variant's trust file as the box's SSL_ca_file (its lacme.conf names it)."""
        super().trust(bundle)
        if self.box is not None:
            self.box.write("/etc/lacme/pebble-tls-ca.pem", bundle.read_text())

    def pointed_at_pebble(self, conf: str) -> str:
        """The installed systemd-mode lacme.conf with Pebble's URL and TLS CA."""
        conf, found = re.subn(r"(?m)^server = .*$", f"server = {self.ctx.directory_url}", conf)
        conf, ca = re.subn(r"(?m)^#?SSL_ca_file =.*$",
                           "SSL_ca_file = /etc/lacme/pebble-tls-ca.pem", conf)
        if not (found and ca):
            raise SystemdBoxError("installed /etc/lacme/lacme.conf has no server/SSL_ca_file line")
        return conf

    # -- paths: the runner writes under the box's root ------------------------

    @property
    def root_file(self) -> str:
        return "/etc/lacme/pebble-root.pem"

    def state_dir(self, label: str) -> Path:
        assert self.box is not None
        path = self.box.host_path(STATE_ROOT) / f"{self.name}-{label}-{os.urandom(3).hex()}"
        path.mkdir(mode=0o755)
        return path

    def where(self, path: Path) -> str:
        assert self.box is not None
        return "/" + str(path.relative_to(self.box.root))

    # -- configuration and commands ---------------------------------------------

    def prepare(self, state: Path) -> None:
        """The run's own account key (installed as /etc/lacme/account.key
        before each run) and lacme.conf (the installed one, with the run's
        certificates and renewal state)."""
        if (state / "account.key").exists():
            return
        write_pem_key(state / "account.key", "rsa")
        home = self.where(state)
        (state / "lacme.conf").write_text(
            f"config-certs = {home}/lacme-certs.conf\n"
            f"state-directory = {home}/renewal-state\n" + self.template)

    def write_config(self, state: Path) -> None:  # prepare() writes it
        raise NotImplementedError

    def invocation(self, state: Path) -> tuple[str, ...]:
        assert self.box is not None
        home = self.where(state)
        return ("nsenter", "-t", str(self.box.leader), "-a", "--",
                self.program, f"--config={home}/lacme.conf")

    def command(self, state: Path, *args: str, ok: frozenset[int] = frozenset({0})) -> Command:
        return Command((*self.invocation(state), *args), clean_env(), "/", ok)

    # -- around each run -------------------------------------------------------------

    @contextmanager
    def around(self, state: Path) -> Iterator[None]:
        """Untimed: the run's key where the accountd unit loads its credential;
        the http-01 port open during the run only, and free after it."""
        box = self.box
        assert box is not None
        key = state / "account.key"
        if key.exists():
            target = box.host_path("/etc/lacme/account.key")
            shutil.copyfile(key, target)
            target.chmod(0o600)
        box.systemctl("start", "lacme-webserver.socket")
        try:
            yield
        finally:
            stop_webserver(box)
            self.wait_port_free()

    def wait_port_free(self) -> None:
        deadline = time.monotonic() + PORT_TIMEOUT
        while not port_is_free(self.ctx.http_port):
            if time.monotonic() > deadline:
                raise SystemdBoxError(f"the box still holds port {self.ctx.http_port}")
            time.sleep(0.05)

    def outside(self) -> UnitCgroups | None:
        return self.cgroups
