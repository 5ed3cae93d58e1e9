"""``make install`` over an existing /etc/lacme, as on a host that had
Debian's lacme: the files there are kept byte for byte, the kept ones are
listed, and a kept lacme.conf whose wiring is not the one WIRING installs is
named with what the units need.  Into a DESTDIR, run as the test user (the
full install once, with the system's interpreter like the systemd box).

Also the rule that decides the wiring (lacme.config.wiring.forked_by) on
the two lacme.conf files this tree ships.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from lacme.config.master import load_master_config
from lacme.config.specifiers import Identity
from lacme.config.wiring import forked_by
from tests.lacmeenv import TREE_ROOT, public_dir

DOCDIR = "/usr/local/share/doc/lacme"
# Debian's lacme 0.8 ships lacme.conf with its three sections and every
# setting commented out: fork mode, with the defaults.
PERL_STYLE = ("# kept from the Perl lacme\n#config-certs = lacme-certs.conf lacme-certs.conf.d/\n"
              "\n[client]\n#command = /usr/libexec/lacme/client\n\n[webserver]\n"
              "#listen = /run/lacme-www.socket\n\n[accountd]\n#quiet = Yes\n")
FORK_WARNING = ("a fork-mode configuration (an [accountd] section, no [client] connect, "
                "no [webserver] challenge-directory); the systemd units need the systemd-mode "
                f"one ({DOCDIR}/examples/lacme.conf.systemd, {DOCDIR}/systemd.md); "
                "see lacme(8), \"Moving over from Debian's lacme\"")
ETC_FILES = ("lacme.conf", "lacme-certs.conf", "lacme-accountd.conf", "lacme-certs.conf.d/README",
             "nginx.conf", "nginx-static.conf", "apache2.conf", "apache2-static.conf")


def make(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    if shutil.which("make") is None:
        pytest.fail("make is not installed (scripts/setup-debian.sh installs it)")
    return subprocess.run(["make", "-C", str(TREE_ROOT), *args], capture_output=True, text=True,
                          timeout=timeout, check=False)


def existing(dest: Path, text: str = PERL_STYLE) -> Path:
    conf = dest / "etc/lacme/lacme.conf"
    conf.parent.mkdir(parents=True)
    conf.write_text(text)
    conf.chmod(0o640)
    return conf


def kept_line(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("kept ")]


def test_make_install_keeps_perl_lacme_conf_and_says_what_the_units_need(tmp_path):
    dest = tmp_path / "root"
    conf = existing(dest)
    before = conf.read_bytes(), conf.stat().st_mode, conf.stat().st_mtime_ns
    done = make("install", f"DESTDIR={dest}", "PREFIX=/usr/local", "VENV=/opt/lacme",
                "PYTHON=/usr/bin/python3", timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (conf.read_bytes(), conf.stat().st_mode, conf.stat().st_mtime_ns) == before
    assert kept_line(done.stdout) == [f"kept (existing files are never replaced): {conf}"]
    warnings = [line for line in done.stderr.splitlines() if line.startswith("warning: kept ")]
    assert warnings == [f"warning: kept {conf}, {FORK_WARNING}"]
    # What the warning points at is installed.
    assert (dest / DOCDIR.lstrip("/") / "examples/lacme.conf.systemd").read_bytes() == \
        (TREE_ROOT / "etc/systemd/lacme.conf").read_bytes()
    assert (dest / DOCDIR.lstrip("/") / "systemd.md").exists()
    # The other files were not there: installed, not listed.
    assert (dest / "etc/lacme/lacme-certs.conf").read_bytes() == \
        (TREE_ROOT / "etc/lacme-certs.conf").read_bytes()


def test_make_install_etc_lists_every_kept_file_and_changes_none(tmp_path):
    dest = tmp_path / "root"
    done = make("install-etc", f"DESTDIR={dest}")
    assert done.returncode == 0, done.stderr
    assert kept_line(done.stdout) == [] and "warning" not in done.stderr
    etc = dest / "etc/lacme"
    for name in ETC_FILES:
        (etc / name).write_text(f"# edited {name}\n")
    done = make("install-etc", f"DESTDIR={dest}")
    assert done.returncode == 0, done.stderr
    assert kept_line(done.stdout) == [
        "kept (existing files are never replaced): " + " ".join(str(etc / n) for n in ETC_FILES)]
    assert "install -m" not in done.stdout
    assert all((etc / n).read_text() == f"# edited {n}\n" for n in ETC_FILES)


def test_make_install_etc_kept_systemd_conf_is_not_warned_about(tmp_path):
    dest = tmp_path / "root"
    existing(dest, (TREE_ROOT / "etc/systemd/lacme.conf").read_text())
    done = make("install-etc", f"DESTDIR={dest}")
    assert done.returncode == 0, done.stderr
    assert kept_line(done.stdout) and done.stderr == ""


def test_make_install_etc_fork_wiring_names_kept_systemd_conf(tmp_path):
    dest = tmp_path / "root"
    conf = existing(dest, (TREE_ROOT / "etc/systemd/lacme.conf").read_text())
    done = make("install-etc", f"DESTDIR={dest}", "WIRING=fork")
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == [
        f"warning: kept {conf}, a systemd-mode configuration; fork mode's is "
        f"{DOCDIR}/examples/lacme.conf.fork"]


def test_make_install_etc_unreadable_kept_conf_is_named(tmp_path):
    dest = tmp_path / "root"
    conf = existing(dest, "[client]\nno-such-setting = 1\n")
    done = make("install-etc", f"DESTDIR={dest}")
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == [
        f"warning: kept {conf}, which lacme cannot read: {conf} [client]: "
        'unknown setting "no-such-setting"']
    assert conf.read_text() == "[client]\nno-such-setting = 1\n"


@pytest.mark.parametrize("path,forked", [
    ("etc/lacme.conf", ("an [accountd] section", "no [client] connect",
                        "no [webserver] challenge-directory")),
    ("etc/systemd/lacme.conf", ()),
])
def test_shipped_configurations_have_the_wiring_they_say(path, forked):
    cfg = load_master_config(str(TREE_ROOT / path), Identity.current())
    assert forked_by(cfg) == forked


def test_check_interpreter_names_directory_other_users_cannot_search(tmp_path):
    """A Python behind a 0700 directory (like /root/.pyenv): the warning names
    the directory; the install goes on (exit 0)."""
    private = public_dir() / "home"
    private.mkdir(mode=0o700)
    python = private / "python3"
    python.symlink_to("/usr/bin/python3")
    done = make("check-interpreter", f"PYTHON={python}")
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == [
        f"warning: the installed programs run {python}: {private} is not searchable by other "
        "users, so the components cannot run as their users; make install VENV=DIR "
        "PYTHON=/usr/bin/python3 makes a venv they can run (see lacme(8), "
        '"Components run as other users")']


def test_check_interpreter_is_silent_for_the_system_python():
    done = make("check-interpreter", "PYTHON=/usr/bin/python3")
    assert done.returncode == 0 and done.stderr == "", done.stderr
