"""One lacme-accountd for a fleet, over a real sshd: the key holder's policy.

Debian's sshd runs on a port of its own with an ``authorized_keys`` that
gives each host's key its own forced command: lacme-accountd with a policy
(host 1 on the command line, host 2 in the configuration file named there).
Each host is a network namespace made here (``ip netns add`` and a veth
pair); its master reaches accountd with ``[accountd] command = ip netns
exec HOST ssh -T ...``, so the signing traffic crosses from that namespace
to sshd.  What a host's master asks for cannot widen its policy: host 1
cannot order host 2's names, no host can deactivate the shared account,
and the origin pin holds although ssh does not forward
LACME_ACCOUNTD_ORIGIN (the scope carries it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from lacme.core.origin import origin_of
from tests.hostile.test_scope_attacks import account_state
from tests.lacmeenv import TREE_ROOT, LacmeSetup, write_key
from tests.pebble import free_port

SSHD = "/usr/sbin/sshd"
pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists(SSHD) or not shutil.which("ssh") or not shutil.which("ip"),
    reason="needs root, Debian's openssh-server and iproute2 (scripts/setup-debian.sh)")


def run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=30)


class Host:
    """A network namespace joined to the root one by a veth pair: 10.231.N.2 -> 10.231.N.1."""

    def __init__(self, index: int, tag: str) -> None:
        self.index = index
        self.netns = f"lacme-fleet-{tag}-{index}"
        self.outer, self.inner = f"lf{tag}o{index}", f"lf{tag}i{index}"
        self.server_ip = f"10.231.{index}.1"
        run("ip", "netns", "add", self.netns)
        run("ip", "link", "add", self.outer, "type", "veth", "peer", "name", self.inner)
        run("ip", "link", "set", self.inner, "netns", self.netns)
        run("ip", "addr", "add", f"{self.server_ip}/30", "dev", self.outer)
        run("ip", "link", "set", self.outer, "up")
        for args in (("addr", "add", f"10.231.{index}.2/30", "dev", self.inner),
                     ("link", "set", self.inner, "up"), ("link", "set", "lo", "up")):
            run("ip", "-n", self.netns, *args)
        self.suffix = f".host{index}-{tag}.example.com"

    def name(self) -> str:
        return f"www-{uuid.uuid4().hex[:8]}{self.suffix}"

    def remove(self) -> None:
        subprocess.run(["ip", "link", "del", self.outer], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.netns], capture_output=True)


def keygen(path: Path) -> str:
    run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path))
    return Path(f"{path}.pub").read_text().strip()


class Fleet:
    def __init__(self, root: Path, pebble) -> None:
        self.root = root
        self.pebble = pebble
        tag = uuid.uuid4().hex[:4]
        self.hosts: list[Host] = []
        self.sshd: subprocess.Popen | None = None
        try:
            self.hosts = [Host(1, tag), Host(2, tag)]
            self._start(root)
        except BaseException:
            self.stop()
            raise

    def _start(self, root: Path) -> None:
        self.account_key = write_key(root / "account.key")
        self.port = free_port()
        host_key = root / "host_key"
        host_pub = keygen(host_key)
        entries = []
        python = f"env -i PYTHONPATH={TREE_ROOT} {sys.executable} -m lacme.accountd --stdio"
        for host in self.hosts:
            host.key = root / f"host{host.index}_key"
            pub = keygen(host.key)
            host.log = root / f"accountd{host.index}.log"
            host.conf = root / f"accountd{host.index}.conf"
            settings = f"privkey = file:{self.account_key}\nlogfile = {host.log}\n"
            if host.index == 1:  # the policy on the forced command's command line
                command = f"{python} --config={host.conf} --operations=newOrder --names={host.suffix}"
            else:  # in the configuration file the forced command names
                settings += f"operations = newOrder\nnames = {host.suffix}\nrequire-scope = yes\n"
                command = f"{python} --config={host.conf}"
            host.conf.write_text(settings)
            entries.append(f'command="{command}",restrict {pub}')
            host.known = root / f"known_hosts{host.index}"
            host.known.write_text(f"[{host.server_ip}]:{self.port} {host_pub}\n")
        (root / "authorized_keys").write_text("\n".join(entries) + "\n")
        config = root / "sshd_config"
        config.write_text("\n".join([
            f"Port {self.port}", *(f"ListenAddress {h.server_ip}" for h in self.hosts),
            f"HostKey {host_key}", f"AuthorizedKeysFile {root / 'authorized_keys'}",
            f"PidFile {root / 'sshd.pid'}", "PermitRootLogin prohibit-password",
            "PasswordAuthentication no", "KbdInteractiveAuthentication no", "UsePAM no",
            "StrictModes no", "LogLevel VERBOSE", "",
        ]))
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege separation directory
        self.sshd = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)],
                                     stderr=open(root / "sshd.log", "wb"))
        deadline = time.monotonic() + 10
        while "Server listening" not in (root / "sshd.log").read_text(errors="replace"):
            assert self.sshd.poll() is None, (root / "sshd.log").read_text()
            assert time.monotonic() < deadline, "sshd did not start"
            time.sleep(0.05)
        # The shared account, registered by hand where the key lives.
        setup = LacmeSetup(root=root / "register", pebble=self.pebble, account_key=self.account_key)
        setup.write()
        done = setup.run("account", "--register", "--tos-agreed", "mailto:fleet@example.org")
        assert done.returncode == 0, done.stderr

    def setup_for(self, host: Host, tmp: Path) -> LacmeSetup:
        ssh = (f"ip netns exec {host.netns} ssh -T -F /dev/null -i {host.key} -p {self.port} "
               f"-o BatchMode=yes -o StrictHostKeyChecking=yes -o UserKnownHostsFile={host.known} "
               f"root@{host.server_ip} lacme-accountd")
        return LacmeSetup(root=tmp / f"host{host.index}", pebble=self.pebble,
                          account_key=self.account_key, accountd_command=ssh)

    def stop(self) -> None:
        if self.sshd is not None:
            self.sshd.terminate()
            self.sshd.wait(10)
        for host in self.hosts:
            host.remove()


@pytest.fixture(scope="module")
def fleet(pebble, tmp_path_factory):
    f = Fleet(tmp_path_factory.mktemp("fleet"), pebble)
    yield f
    f.stop()


@pytest.mark.parametrize("index", [1, 2])
def test_each_host_orders_its_own_names_over_ssh(fleet, tmp_path, index):
    host = fleet.hosts[index - 1]
    setup = fleet.setup_for(host, tmp_path)
    section = setup.add_section("www", [host.name()])
    setup.write()
    done = setup.run("newOrder")
    assert done.returncode == 0, done.stderr
    assert Path(section["certificate"]).exists()
    log = host.log.read_text()
    # The origin pin crossed ssh in the scope (the forced command starts accountd with env -i).
    assert f"SCOPE newOrder; origin {origin_of(fleet.pebble.directory_url)}" in log, log
    assert "NOSIGN" not in log
    # ... from the host's own namespace, through sshd.
    sshd_log = (fleet.root / "sshd.log").read_text(errors="replace")
    assert f"Accepted publickey for root from 10.231.{index}.2" in sshd_log


def test_a_host_cannot_order_another_hosts_names(fleet, tmp_path):
    host1, host2 = fleet.hosts
    setup = fleet.setup_for(host1, tmp_path)
    stolen = host2.name()
    section = setup.add_section("www", [stolen])  # host 1's master asks for it: its scope has it
    setup.write()
    offset = fleet.pebble.log_offset()
    done = setup.run("newOrder")
    assert done.returncode == 1
    assert not Path(section["certificate"]).exists()
    assert f"NOSIGN): newOrder for {stolen} is not allowed by this accountd's names" in host1.log.read_text()
    assert fleet.pebble.requests_since(offset)["POST /order-plz"] == 0


@pytest.mark.parametrize("args", [["--deactivate"], ["mailto:evil@example.org"]])
def test_no_host_can_deactivate_or_change_the_shared_account(fleet, tmp_path, args):
    before = account_state(fleet.pebble, fleet.account_key)
    for host in fleet.hosts:
        setup = fleet.setup_for(host, tmp_path / f"h{host.index}")
        setup.write()
        done = setup.run("account", *args)
        assert done.returncode != 0
        assert "is not allowed by this accountd's operations" in host.log.read_text()
    assert account_state(fleet.pebble, fleet.account_key) == before
    assert before["status"] == "valid" and before["contact"] == ["mailto:fleet@example.org"]
