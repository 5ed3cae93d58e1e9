"""A component that cannot be started is one line: fork mode as root, with a
real privilege drop, and commands that the component's user cannot run (in
a 0700 directory, behind an interpreter in one, or missing).

The master must print exactly one error line naming the setting, the path and
the user (and the directory that user cannot search), exit 2, print no
traceback, and leave no second line from the components it had already
started (no "Broken pipe", no "connection closed before the greeting").
Nothing talks to a CA: the run ends before the client's first request.
"""

from __future__ import annotations

import grp
import os
import pwd
import subprocess
import sys
from pathlib import Path

import pytest

from tests.lacmeenv import TREE_ROOT, public_dir, write_key

pytestmark = [pytest.mark.root, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]

USER = "lacmet-start"
GROUP = "lacmet"
# accountd as root from this tree (its user may enter /root): what a client
# or webserver that cannot start leaves behind is this tree's behaviour.
TREE_ACCOUNTD = f"/usr/bin/env PYTHONPATH={TREE_ROOT} {sys.executable} -m lacme.accountd"


@pytest.fixture(scope="module")
def user() -> str:
    try:
        grp.getgrnam(GROUP)
    except KeyError:
        subprocess.run(["groupadd", "--system", GROUP], check=True)
    try:
        pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent",
                        "--shell", "/usr/sbin/nologin", "--gid", GROUP, USER], check=True)
    return USER


@pytest.fixture
def etc(tmp_path) -> Path:
    root = public_dir()
    key = write_key(root / "account.key")
    (root / "lacme-accountd.conf").write_text(f"privkey = file:{key}\n")
    (root / "www.key").write_bytes(key.read_bytes())
    (root / "lacme-certs.conf").write_text(
        f"[www]\ncertificate-key = {root}/www.key\ncertificate = {root}/www.crt\n"
        "subject = /CN=www.example.com\nsubjectAltName = DNS:www.example.com\n")
    (root / "state").mkdir()
    return root


def script(path: Path, first_line: str = "#!/bin/sh") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{first_line}\nexit 0\n")
    path.chmod(0o755)
    return path


def closed_dir(root: Path) -> Path:
    """A 0700 directory, like /root: its owner may enter it, nobody else."""
    path = root / "private"
    path.mkdir()
    path.chmod(0o700)
    return path


def write_conf(root: Path, component: str, command: str, user: str) -> Path:
    commands = {"client": "/bin/true", "webserver": "/bin/true", "accountd": TREE_ACCOUNTD}
    users = {"client": user, "webserver": user, "accountd": ""}
    commands[component] = command
    conf = root / "lacme.conf"
    conf.write_text(
        f"state-directory = {root}/state\n"
        f"[client]\nserver = https://127.0.0.1:1/dir\ncommand = {commands['client']}\n"
        f"user = {users['client']}\ngroup = {GROUP}\n"
        f"[webserver]\nlisten = {root}/www.sock\ncommand = {commands['webserver']}\n"
        f"user = {users['webserver']}\ngroup = {GROUP}\n"
        f"[accountd]\ncommand = {commands['accountd']}\nconfig = {root}/lacme-accountd.conf\n"
        f"user = {user if component == 'accountd' else ''}\n")
    return conf


def run_master(conf: Path, component: str) -> subprocess.CompletedProcess[str]:
    """newOrder for the webserver (the only command that starts one), account otherwise."""
    command = ["newOrder"] if component == "webserver" else ["account"]
    env = {k: v for k, v in os.environ.items() if k not in ("JOURNAL_STREAM", "INVOCATION_ID")}
    env["PYTHONPATH"] = str(TREE_ROOT)
    # capture_output waits for every writer of stderr: a component started
    # before the failure that wrote later would still be seen here.
    return subprocess.run([sys.executable, "-m", "lacme.master", f"--config={conf}", *command],
                          capture_output=True, text=True, timeout=60, env=env, cwd="/")


def assert_one_line(done: subprocess.CompletedProcess[str], *parts: str) -> str:
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr
    for part in parts:
        assert part in lines[0], lines[0]
    assert done.returncode == 2, done.stderr
    return lines[0]


@pytest.mark.parametrize("component", ["client", "webserver", "accountd"])
def test_command_in_unsearchable_directory_is_one_line(etc, user, component):
    program = script(closed_dir(etc) / "bin" / f"lacme-{component}")
    done = run_master(write_conf(etc, component, str(program), user), component)
    line = assert_one_line(done, f"[{component}] command {program}:", f"user {user}",
                           "permission denied", f"{etc}/private is not searchable by that user",
                           '"Components run as other users"')
    assert line.startswith("error: ")
    assert not (etc / "www.crt").exists()


@pytest.mark.parametrize("component", ["client", "webserver", "accountd"])
def test_missing_command_is_one_line(etc, user, component):
    program = etc / "nowhere" / f"lacme-{component}"
    done = run_master(write_conf(etc, component, str(program), user), component)
    assert_one_line(done, f"[{component}] command {program}:", f"user {user}",
                    "no such file or directory", f"{etc}/nowhere does not exist")


def test_command_not_on_path_is_one_line(etc, user):
    done = run_master(write_conf(etc, "client", "lacme-no-such-client", user), "client")
    assert_one_line(done, "[client] command lacme-no-such-client:", f"user {user}",
                    "lacme-no-such-client is not found in PATH=/usr/local/sbin:")


def test_interpreter_in_unsearchable_directory_is_named(etc, user):
    """A venv made from an interpreter under a 0700 home: the script is
    reachable, the interpreter it names (through a symbolic link) is not."""
    interpreter = script(closed_dir(etc) / "python3")
    venv = etc / "venv" / "bin"
    venv.mkdir(parents=True)
    (venv / "python").symlink_to(interpreter)
    program = script(venv / "lacme-client", f"#!{venv}/python")
    done = run_master(write_conf(etc, "client", str(program), user), "client")
    assert_one_line(done, f"[client] command {program}:", "permission denied",
                    f"its interpreter {venv}/python: {etc}/private is not searchable by that user")


def test_command_that_is_not_executable_is_named(etc, user):
    program = script(etc / "bin" / "lacme-client")
    program.chmod(0o644)
    done = run_master(write_conf(etc, "client", str(program), user), "client")
    assert_one_line(done, "permission denied", f"{program} is not executable by that user")


def test_start_failure_with_debug_shows_the_traceback(etc, user):
    program = script(closed_dir(etc) / "lacme-client")
    conf = write_conf(etc, "client", str(program), user)
    env = {k: v for k, v in os.environ.items() if k not in ("JOURNAL_STREAM", "INVOCATION_ID")}
    env["PYTHONPATH"] = str(TREE_ROOT)
    done = subprocess.run([sys.executable, "-m", "lacme.master", "--debug", f"--config={conf}",
                           "account"], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 2
    assert "Traceback" in done.stderr and "is not searchable by that user" in done.stderr


def others_can_enter(path: Path) -> bool:
    return all(p.stat().st_mode & 0o001 for p in [path, *path.parents])


@pytest.mark.skipif(not others_can_enter(TREE_ROOT), reason="the tree is not readable by nobody")
def test_privilege_drop_failure_is_one_line(etc, user):
    """A master that is not root cannot drop to the client's user: one line
    naming the section, the component and the user, exit 1."""
    conf = write_conf(etc, "client", "/bin/true", user)
    # As nobody: %t has no value, and accountd needs an interpreter nobody can run.
    conf.write_text(conf.read_text().replace("[client]\n", f"[client]\nsocket = {etc}/S.lacme\n")
                    .replace(TREE_ACCOUNTD, TREE_ACCOUNTD.replace(sys.executable, "/usr/bin/python3")))
    etc.chmod(0o755)
    for path in etc.rglob("*"):
        path.chmod(0o777 if path.is_dir() else 0o666)
    (etc / "account.key").chmod(0o644)
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(TREE_ROOT)}
    done = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                           "/usr/bin/python3", "-m", "lacme.master", f"--config={conf}", "account"],
                          capture_output=True, text=True, timeout=60, env=env, cwd="/")
    lines = done.stderr.splitlines()
    assert lines == [f"error: [client]: cannot start the ACME client as user {user}: "
                     "cannot drop privileges: Operation not permitted"], done.stderr
    assert done.returncode == 1
