"""Test harness: one signer host and several client hosts, each in a network
namespace of its own, joined by veth pairs; Debian's OpenSSH server runs on
the signer with lacme-accountd as the forced command of each host's key.

Only the ssh leg crosses namespaces: a host's ``[accountd] command`` is
``ip netns exec HOST ssh ... signer@ADDRESS``, while its master, client and
webserver stay on this machine's loopback, where Pebble is.  The addresses
are those of the veth pairs made here (``10.231.N.0/30``): traffic never
leaves the namespaces this harness creates, and everything is removed at
the end.  Needs root, iproute2 and openssh-server; nothing here is skipped.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

SSHD = "/usr/sbin/sshd"
SSH = "/usr/bin/ssh"
SIGNER_USER = "lacmet-signer"
PORT = 2222
START_TIMEOUT = 10.0


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=30)


def ensure_user(name: str, home: Path) -> pwd.struct_passwd:
    """The signer's user, with ``home`` (sshd without PAM refuses a locked
    account: the password field is ``*``, no password, not ``!``)."""
    try:
        pwd.getpwnam(name)
    except KeyError:
        run("useradd", "--system", "--no-create-home", "--home-dir", str(home),
            "--shell", "/bin/sh", name)
    run("usermod", "--home", str(home), "--password", "*", name)
    return pwd.getpwnam(name)


@dataclass
class Host:
    """A client host: its namespace, its address on the link, its ssh key."""

    name: str
    netns: str
    address: str  # the signer's address as this host sees it
    key: Path
    known_hosts: Path

    def ssh_command(self, user: str = SIGNER_USER, extra: str = "") -> str:
        """The ``[accountd] command`` of this host (ends at the destination)."""
        return (f"ip netns exec {self.netns} {SSH} -T -F /dev/null -o BatchMode=yes "
                f"-o IdentitiesOnly=yes -i {self.key} -o UserKnownHostsFile={self.known_hosts} "
                f"-o StrictHostKeyChecking=yes -o ConnectTimeout=5 {extra}-p {PORT} {user}@{self.address}")


@dataclass
class Fleet:
    """The signer's namespace and sshd, and the hosts."""

    root: Path
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    hosts: list[Host] = field(default_factory=list)
    sshd: subprocess.Popen | None = None
    namespaces: list[str] = field(default_factory=list)

    @property
    def signer_ns(self) -> str:
        return f"lacmet-sig-{self.tag}"

    @property
    def home(self) -> Path:
        return self.root / "signer-home"

    @property
    def authorized_keys(self) -> Path:
        return self.home / "authorized_keys"

    def setup(self, count: int) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755)
        self.home.mkdir(mode=0o755, exist_ok=True)
        user = ensure_user(SIGNER_USER, self.home)
        os.chown(self.home, user.pw_uid, user.pw_gid)
        self._netns(self.signer_ns)
        run("ip", "-n", self.signer_ns, "link", "set", "lo", "up")
        host_key = self.root / "ssh_host_ed25519_key"
        run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key))
        for n in range(count):
            self.hosts.append(self._host(n, host_key))
        self.authorized_keys.write_text("")
        self._start_sshd(host_key)

    def _netns(self, name: str) -> None:
        run("ip", "netns", "add", name)
        self.namespaces.append(name)

    def _host(self, n: int, host_key: Path) -> Host:
        name = f"host{n}"
        netns = f"lacmet-{name}-{self.tag}"
        self._netns(netns)
        here, there = f"lh{n}{self.tag}"[:15], f"ls{n}{self.tag}"[:15]
        run("ip", "link", "add", here, "netns", netns, "type", "veth", "peer", "name", there,
            "netns", self.signer_ns)
        signer_ip, host_ip = f"10.231.{n}.1", f"10.231.{n}.2"
        run("ip", "-n", self.signer_ns, "addr", "add", f"{signer_ip}/30", "dev", there)
        run("ip", "-n", netns, "addr", "add", f"{host_ip}/30", "dev", here)
        for ns, dev in ((self.signer_ns, there), (netns, here)):
            run("ip", "-n", ns, "link", "set", dev, "up")
        run("ip", "-n", netns, "link", "set", "lo", "up")
        key = self.root / f"{name}_id"
        run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(key))
        known = self.root / f"{name}_known_hosts"
        public = (host_key.with_suffix(".pub")).read_text().split()
        known.write_text(f"[{signer_ip}]:{PORT} {public[0]} {public[1]}\n")
        return Host(name=name, netns=netns, address=signer_ip, key=key, known_hosts=known)

    def authorize(self, host: Host, forced_command: str) -> None:
        """Let ``host``'s key run ``forced_command`` only (restrict, from its address)."""
        public = host.key.with_suffix(".pub").read_text().strip()
        host_ip = host.address.rsplit(".", 1)[0] + ".2"
        line = f'restrict,from="{host_ip}",command="{forced_command}" {public}\n'
        with self.authorized_keys.open("a") as f:
            f.write(line)

    def _start_sshd(self, host_key: Path) -> None:
        config = self.root / "sshd_config"
        config.write_text("\n".join([
            f"Port {PORT}", "ListenAddress 0.0.0.0", f"HostKey {host_key}",
            f"AuthorizedKeysFile {self.authorized_keys}", "PasswordAuthentication no",
            "KbdInteractiveAuthentication no", "UsePAM no", "StrictModes no",
            f"AllowUsers {SIGNER_USER}", f"PidFile {self.root / 'sshd.pid'}",
            "LogLevel INFO", "MaxStartups 100:30:200", "PerSourcePenalties no",
        ]) + "\n")
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        check = run(SSHD, "-t", "-f", str(config), check=False)
        if check.returncode != 0 and "PerSourcePenalties" in check.stderr:
            # OpenSSH 9.2 has no PerSourcePenalties (9.8 does)
            config.write_text(config.read_text().replace("PerSourcePenalties no\n", ""))
            run(SSHD, "-t", "-f", str(config))
        log = (self.root / "sshd.log").open("wb")
        self.sshd = subprocess.Popen(
            ["ip", "netns", "exec", self.signer_ns, SSHD, "-D", "-e", "-f", str(config)],
            stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            probe = run("ip", "netns", "exec", self.signer_ns, "ss", "-ltn", f"sport = :{PORT}",
                        check=False)
            if f":{PORT}" in probe.stdout:
                return
            if self.sshd.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"sshd did not start: {(self.root / 'sshd.log').read_text()}")

    def stop_sshd(self) -> None:
        if self.sshd is not None and self.sshd.poll() is None:
            self.sshd.terminate()
            self.sshd.wait(timeout=10)

    def teardown(self) -> None:
        self.stop_sshd()
        for ns in reversed(self.namespaces):
            run("ip", "netns", "del", ns, check=False)
        self.namespaces.clear()
        shutil.rmtree(self.home, ignore_errors=True)
