"""Moving over from Debian's lacme, in the booted box: ``make install`` keeps
the existing /etc/lacme/lacme.conf, and on such a host that is the Perl
package's fork-mode file.  ``lacme-renew.service`` must then fail at once with
one journal line that names the file and what the unit needs, exit status 2,
and start no component.

The box is the session's: every file changed here is put back as it was.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.systemd.box import Box

pytestmark = pytest.mark.systemd

CONF = "/etc/lacme/lacme.conf"
# A lacme.conf as Debian's lacme 0.8.2 installs it has its three sections
# with every setting commented out, i.e. fork mode with the defaults.
PERL_SECTIONS = "[client]\n\n[webserver]\n\n[accountd]\n"


def perl_lacme_conf() -> str:
    """The host's lacme.conf of Debian's lacme when that package owns one,
    else a file with the same settings (none)."""
    owner = subprocess.run(["dpkg", "-S", CONF], capture_output=True, text=True, check=False)
    if owner.returncode == 0 and owner.stdout.startswith("lacme:") and Path(CONF).is_file():
        return Path(CONF).read_text()
    return PERL_SECTIONS


@pytest.fixture
def fork_mode_conf(box: Box) -> Iterator[str]:
    """The box's /etc/lacme/lacme.conf replaced by the Perl package's, for one test."""
    path = box.host_path(CONF)
    saved, mode = path.read_bytes(), path.stat().st_mode & 0o7777
    text = perl_lacme_conf()
    box.write(CONF, text)
    try:
        yield text
    finally:
        box.write(CONF, saved.decode(), mode)
        box.systemctl("reset-failed", "lacme-renew.service", check=False)
    assert path.read_bytes() == saved


def unit_entries(box: Box, cursor: str) -> list[dict]:
    """What the programs of lacme-renew.service wrote to the journal, not
    systemd's pre-exec child (identifier "(lacme)": "cannot configure loopback")."""
    entries = box.wait_journal(after=cursor, _SYSTEMD_UNIT="lacme-renew.service")
    return [e for e in entries if not str(e.get("SYSLOG_IDENTIFIER", "(")).startswith("(")]


def test_fork_mode_conf_in_renew_service_is_one_line_exit_2(box: Box, fork_mode_conf: str) -> None:
    assert "[accountd]" in fork_mode_conf
    cursor = box.cursor()
    box.systemctl("start", "lacme-renew.service", check=False)
    props = box.show("lacme-renew.service", "Result", "ExecMainStatus")
    assert props == {"Result": "exit-code", "ExecMainStatus": "2"}, props
    entries = unit_entries(box, cursor)
    messages = [str(e.get("MESSAGE")) for e in entries]
    assert len(messages) == 1, messages
    line = messages[0]
    assert line.startswith(f"{CONF}: a fork-mode configuration (an [accountd] section, "
                           "no [client] connect, no [webserver] challenge-directory)"), line
    assert "cannot run in lacme-renew.service" in line and "lacme.conf.systemd" in line, line
    assert int(entries[0]["PRIORITY"]) == 3
    # Nothing was started: no accountd ran, in the unit or as a socket service.
    assert box.journal(after=cursor, SYSLOG_IDENTIFIER="lacme-accountd") == []


def test_fork_mode_conf_in_another_unit_is_not_refused(box: Box, fork_mode_conf: str) -> None:
    """The check is for lacme-renew.service only: the same file in another
    unit (systemd sets INVOCATION_ID there too) is fork mode as its
    administrator meant it.  A section that does not exist: nothing starts."""
    proc = box.run("systemd-run", "--wait", "--pipe", "--quiet", "--collect",
                   "/opt/lacme/bin/lacme", "newOrder", "no-such-section", check=False)
    out = proc.stdout + proc.stderr
    assert "no such section [no-such-section]" in out, out
    assert "fork-mode" not in out and proc.returncode == 1, out
