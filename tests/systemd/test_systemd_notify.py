"""lacme.systemd.glue.start_notify_units against the real systemd of the box:
drop-ins run once per section, reloads wanted by several sections merge into
one, failures are counted.  Independent of the ACME programs."""

from __future__ import annotations

import time

import pytest

from tests.systemd.box import VENV, Box

pytestmark = pytest.mark.systemd

LOG = "/var/lib/lacme-notify-test"
PROBE = "lacme-notify-probe.service"
RELOAD = "lacme-reload@lacme\\x2dnotify\\x2dprobe.service"


@pytest.fixture(scope="module")
def notify_box(box: Box) -> Box:
    box.write(f"/etc/systemd/system/{PROBE}", f"""\
[Service]
ExecStart=/bin/sleep infinity
ExecReload=/bin/sh -c 'echo reload >> {LOG}/reload.log'
""")
    for section, escaped in (("alpha", "alpha"), ("beta.x-1", "beta.x\\x2d1")):
        box.write(f"/etc/systemd/system/lacme-notify@{escaped}.service.d/50-test.conf", f"""\
[Unit]
Wants={RELOAD}
[Service]
ExecStart=/bin/sh -c 'echo "%I" >> {LOG}/notify.log'
""")
    box.write("/etc/systemd/system/lacme-notify@broken.service.d/50-test.conf",
              "[Service]\nExecStart=/bin/false\n")
    box.run("mkdir", "-p", LOG)
    box.systemctl("daemon-reload")
    box.systemctl("start", PROBE)
    return box


def start_notify_units(box: Box, *sections: str) -> int:
    code = ("import logging, sys; from systemd.journal import JournalHandler; "
            "logging.getLogger().addHandler(JournalHandler()); "
            "from lacme.systemd.glue import start_notify_units; "
            "sys.exit(start_notify_units(sys.argv[1:]))")
    return box.run(f"{VENV}/bin/python", "-c", code, *sections, check=False).returncode


def settled_reloads(box: Box, before: int, expected: int) -> list[str]:
    """reload.log lines after ``before`` once the reload unit is idle.

    The reload is pulled in (Wants=) but not waited for by the transaction.
    """
    deadline = time.monotonic() + 15
    while True:
        lines = read_log(box, "reload.log")[before:]
        idle = box.show(RELOAD, "ActiveState", "Job")
        if (len(lines) >= expected and idle.get("ActiveState") != "activating"
                and not idle.get("Job")) or time.monotonic() > deadline:
            return lines
        time.sleep(0.1)


def read_log(box: Box, name: str) -> list[str]:
    proc = box.run("cat", f"{LOG}/{name}", check=False)
    return proc.stdout.splitlines()


def test_notify_units_run_once_each_and_shared_reload_once(notify_box: Box) -> None:
    box = notify_box
    before_notify, before_reload = read_log(box, "notify.log"), read_log(box, "reload.log")
    assert start_notify_units(box, "alpha", "beta.x-1") == 0
    assert sorted(read_log(box, "notify.log")[len(before_notify):]) == ["alpha", "beta.x-1"]
    assert settled_reloads(box, len(before_reload), 1) == ["reload"]


def test_notify_units_again_in_a_later_run_reload_again(notify_box: Box) -> None:
    box = notify_box
    before = read_log(box, "reload.log")
    assert start_notify_units(box, "alpha") == 0
    assert settled_reloads(box, len(before), 1) == ["reload"]
    assert start_notify_units(box, "beta.x-1") == 0
    assert settled_reloads(box, len(before), 2) == ["reload", "reload"]


def test_notify_failure_counted_and_others_still_run(notify_box: Box) -> None:
    box = notify_box
    before = read_log(box, "notify.log")
    cursor = box.cursor()
    assert start_notify_units(box, "alpha", "broken") == 1
    assert read_log(box, "notify.log")[len(before):] == ["alpha"]
    assert box.show("lacme-notify@broken.service", "Result")["Result"] == "exit-code"
    logged = box.wait_journal(after=cursor, MESSAGE_ID="d81f3b6a4c2e4b97a05e6c9d1f3a7b52")
    assert [e.get("LACME_SECTION") for e in logged] == ["broken"]


def test_notify_section_without_dropin_succeeds(notify_box: Box) -> None:
    assert start_notify_units(notify_box, "no-drop-in.example") == 0
