"""``[webserver] iptables = Yes``: the master opens the listen ports with
temporary rules and restores the saved tables on exit, on error and on
SIGTERM.  Runs the real master inside a network namespace of its own
(``unshare --net``), so the host's tables are never touched."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.lacmeenv import TREE_ROOT

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
    pytest.mark.skipif(shutil.which("iptables") is None, reason="needs iptables"),
]


def write_setup(tmp_path: Path, client_script: str) -> Path:
    client = tmp_path / "client.sh"
    client.write_text("#!/bin/sh\n" + client_script)
    client.chmod(0o755)
    # accountd stand-in: holds the connection until the client is gone
    accountd = tmp_path / "accountd.sh"
    accountd.write_text("#!/bin/sh\nexec cat > /dev/null\n")
    accountd.chmod(0o755)
    conf = tmp_path / "lacme.conf"
    (tmp_path / "certs.conf").write_text("")
    conf.write_text(
        "config-certs = certs.conf\n"
        "[client]\nuser =\ngroup =\n"
        f"command = {client}\n"
        "server = https://127.0.0.1:9/dir\n"
        "[webserver]\nlisten = 127.0.0.1:8081 [::1]:8082\nuser =\ngroup =\niptables = Yes\n"
        f"[accountd]\ncommand = {accountd}\n"
    )
    return conf


def in_netns(script: str, timeout: float = 60) -> subprocess.Popen:
    return subprocess.Popen(["unshare", "--net", "sh", "-c", script], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(TREE_ROOT)})


def lacme_argv(conf: Path) -> str:
    return f"{sys.executable} -m lacme.master --config={conf} newOrder"


def test_rules_opened_for_listen_ports_and_restored(tmp_path):
    from tests.lacmeenv import write_key

    conf = write_setup(tmp_path, f"iptables -S > {tmp_path}/v4; ip6tables -S > {tmp_path}/v6\n")
    write_key(tmp_path / "svc.key")
    (tmp_path / "certs.conf").write_text(
        f"[www]\ncertificate-key = {tmp_path}/svc.key\ncertificate = {tmp_path}/www.crt\n"
        "subject = /CN=www.example.com\n")
    script = (f"ip link set lo up; {lacme_argv(conf)}; "
              f"echo rc=$?; iptables -S > {tmp_path}/after4; ip6tables -S > {tmp_path}/after6")
    proc = in_netns(script)
    out, err = proc.communicate(timeout=60)
    assert "rc=1" in out, out + err  # the stand-in client ends without an answer
    v4, v6 = (tmp_path / "v4").read_text(), (tmp_path / "v6").read_text()
    assert "--dport 8081 -j ACCEPT" in v4 and "--sport 8081 -j ACCEPT" in v4
    assert "--dport 8082 -j ACCEPT" in v6
    assert "8081" not in (tmp_path / "after4").read_text()
    assert "8082" not in (tmp_path / "after6").read_text()
    assert not (tmp_path / "www.crt").exists()


def test_rules_restored_on_sigterm(tmp_path):
    from tests.lacmeenv import write_key

    conf = write_setup(tmp_path, f"iptables -S > {tmp_path}/v4; touch {tmp_path}/started; "
                                 "exec sleep 30\n")
    write_key(tmp_path / "svc.key")
    (tmp_path / "certs.conf").write_text(
        f"[www]\ncertificate-key = {tmp_path}/svc.key\ncertificate = {tmp_path}/www.crt\n"
        "subject = /CN=www.example.com\n")
    master = lacme_argv(conf)
    script = (f"ip link set lo up; {master} & pid=$!; "
              f"while [ ! -e {tmp_path}/started ]; do sleep 0.05; done; "
              f"kill -TERM $pid; wait $pid; echo rc=$?; iptables -S > {tmp_path}/after4")
    proc = in_netns(script)
    out, err = proc.communicate(timeout=60)
    assert "--dport 8081" in (tmp_path / "v4").read_text()
    assert "rc=1" in out, out + err
    assert "8081" not in (tmp_path / "after4").read_text()
