"""Tests for lacme.master.install: atomic install, mode and owner, notify.

Run as root (owner changes go to the system user ``nobody``).  Atomicity is
checked with a real writer process racing a reader for a bounded time.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lacme.core.errors import LacmeError
from lacme.master.install import install_file, run_notify

TREE_ROOT = Path(__file__).resolve().parent.parent
STALE = ".cert.pem.lacme-tmp.0123456789abcdef"

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for chown")


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_install_file_writes_content_and_mode(tmp_path):
    path = tmp_path / "cert.pem"
    install_file(str(path), b"new content\n", mode=0o640)
    assert path.read_bytes() == b"new content\n"
    assert mode_of(path) == 0o640
    assert os.listdir(tmp_path) == ["cert.pem"]


def test_install_file_replaces_existing_file(tmp_path):
    path = tmp_path / "cert.pem"
    path.write_bytes(b"old" * 1000)
    inode = path.stat().st_ino
    install_file(str(path), b"new", mode=0o600)
    assert path.read_bytes() == b"new"
    assert mode_of(path) == 0o600
    assert path.stat().st_ino != inode  # replaced by rename, not rewritten in place


@pytest.mark.parametrize("umask,expected", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_install_file_default_mode_follows_umask(tmp_path, umask, expected):
    path = tmp_path / "cert.pem"
    old = os.umask(umask)
    try:
        install_file(str(path), b"x")
    finally:
        os.umask(old)
    assert mode_of(path) == expected


def test_install_file_relative_path_in_current_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    install_file("cert.pem", b"here", mode=0o644)
    assert (tmp_path / "cert.pem").read_bytes() == b"here"


@needs_root
def test_install_file_changes_owner_and_group(tmp_path):
    nobody = pwd.getpwnam("nobody")
    group = grp.getgrgid(nobody.pw_gid).gr_name
    path = tmp_path / "cert.pem"
    install_file(str(path), b"x", mode=0o640, owner=f"nobody:{group}")
    st = path.stat()
    assert (st.st_uid, st.st_gid) == (nobody.pw_uid, nobody.pw_gid)
    assert mode_of(path) == 0o640  # chown did not undo the chmod


@needs_root
def test_install_file_owner_without_group_keeps_group(tmp_path):
    path = tmp_path / "cert.pem"
    install_file(str(path), b"x", owner="nobody")
    st = path.stat()
    assert (st.st_uid, st.st_gid) == (pwd.getpwnam("nobody").pw_uid, os.getegid())


@needs_root
def test_install_file_numeric_owner(tmp_path):
    path = tmp_path / "cert.pem"
    install_file(str(path), b"x", owner="1234:4321")
    assert (path.stat().st_uid, path.stat().st_gid) == (1234, 4321)


def test_install_file_removes_stale_temporaries_only(tmp_path):
    path = tmp_path / "cert.pem"
    keep = [".cert.pem.lacme-tmp.notrandom", ".other.pem.lacme-tmp.0123456789abcdef",
            "cert.pem.lacme-tmp.0123456789abcdef"]
    for name in [STALE, ".cert.pem.lacme-tmp.fedcba9876543210", *keep]:
        (tmp_path / name).write_bytes(b"leftover")
    os.symlink("/etc/passwd", tmp_path / ".cert.pem.lacme-tmp.00000000000000aa")
    install_file(str(path), b"fresh", mode=0o644)
    assert sorted(os.listdir(tmp_path)) == sorted(["cert.pem", *keep])
    assert Path("/etc/passwd").exists()


@pytest.mark.parametrize("owner,message", [
    ("no-such-user-lacme", "chown no-such-user-lacme: no such user 'no-such-user-lacme'"),
    ("root:no-such-group-lacme", "chown root:no-such-group-lacme: no such group"),
])
def test_install_file_unknown_owner_leaves_old_file(tmp_path, owner, message):
    path = tmp_path / "cert.pem"
    path.write_bytes(b"old content")
    os.chmod(path, 0o604)
    with pytest.raises(LacmeError, match=f"^{path}: {message}"):
        install_file(str(path), b"new content", owner=owner)
    assert path.read_bytes() == b"old content"
    assert mode_of(path) == 0o604
    assert os.listdir(tmp_path) == ["cert.pem"]


def test_install_file_failed_rename_removes_temporary(tmp_path):
    path = tmp_path / "cert.pem"
    path.mkdir()
    (path / "inside").write_bytes(b"kept")
    with pytest.raises(LacmeError, match=f"^{path}: "):
        install_file(str(path), b"new", mode=0o644)
    assert os.listdir(tmp_path) == ["cert.pem"]
    assert (path / "inside").read_bytes() == b"kept"


def test_install_file_missing_directory_names_path(tmp_path):
    path = tmp_path / "absent" / "cert.pem"
    with pytest.raises(LacmeError, match=f"^{path}: directory: no such file or directory$"):
        install_file(str(path), b"x")


def test_install_file_replaces_symlink_not_its_target(tmp_path):
    target = tmp_path / "target"
    target.write_bytes(b"target")
    path = tmp_path / "cert.pem"
    path.symlink_to(target)
    install_file(str(path), b"new", mode=0o644)
    assert not path.is_symlink() and path.read_bytes() == b"new"
    assert target.read_bytes() == b"target"


WRITER = """
import sys, time
from lacme.master.install import install_file
path, deadline = sys.argv[1], time.monotonic() + float(sys.argv[2])
contents = [b"a" * 262144, b"b" * 262144]
n = 0
while time.monotonic() < deadline:
    install_file(path, contents[n % 2], mode=0o644)
    n += 1
print(n)
"""


def test_install_file_reader_never_sees_partial_file(tmp_path):
    path = tmp_path / "cert.pem"
    contents = {b"a" * 262144, b"b" * 262144}
    install_file(str(path), b"a" * 262144, mode=0o644)
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path), "1.0"], cwd=TREE_ROOT,
                              stdout=subprocess.PIPE)
    seen, reads = set(), 0
    deadline = time.monotonic() + 10
    while writer.poll() is None and time.monotonic() < deadline:
        data = path.read_bytes()
        assert data in contents, f"partial read of {len(data)} bytes"
        seen.add(data[:1])
        reads += 1
    out, _ = writer.communicate(timeout=10)
    assert writer.returncode == 0
    assert int(out) > 10 and reads > 10
    assert seen == {b"a", b"b"}  # the race really happened
    assert os.listdir(tmp_path) == ["cert.pem"]


# -- notify -------------------------------------------------------------------

@pytest.mark.parametrize("command,status", [("true", 0), ("exit 3", 3), ("false", 1),
                                            ("no-such-command-lacme 2>/dev/null", 127),
                                            ("kill -TERM $$", 128 + 15),
                                            ("kill -KILL $$", 128 + 9)])
def test_run_notify_returns_exit_status(command, status):
    assert run_notify(command) == status


def test_run_notify_passes_environment(tmp_path):
    out = tmp_path / "out"
    status = run_notify(f'printf %s "$LACME_TEST-$HOME" > {out}', env={"LACME_TEST": "yes"})
    assert status == 0
    assert out.read_text() == "yes-"  # env replaces the environment


def test_run_notify_inherits_environment_by_default(tmp_path, monkeypatch):
    monkeypatch.setenv("LACME_TEST", "inherited")
    assert run_notify('test "$LACME_TEST" = inherited') == 0


def test_run_notify_stdin_is_dev_null(tmp_path):
    assert run_notify('test -z "$(cat)"') == 0
    assert run_notify("read line") == 1  # end of file at once
