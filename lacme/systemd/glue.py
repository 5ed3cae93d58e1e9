"""systemd glue of the master: the notify units of renewed certificates.

``notify_units_available`` tells whether they are to be used: systemd is
PID 1 and lacme-notify@.service is installed, however the master was
started (by lacme-renew.service, by hand, by cron).  ``start_notify_units``
is run by the master (root) after a renewal; it
starts lacme-notify@SECTION.service for every renewed section in ONE
systemd transaction (see below), with instance names escaped as
systemd-escape(1) does.  (The journald MESSAGE_IDs of the events are in
lacme.core.journal.)  No RFC is involved; see systemd.unit(5) "String
Escaping".
"""

from __future__ import annotations

import logging
import os
import subprocess
import uuid
from collections.abc import Sequence

from lacme.core import journal

log = logging.getLogger("lacme")


NOTIFY_TEMPLATE = "lacme-notify@{}.service"
# Where systemd looks for system units installed as files (systemd.unit(5),
# "Unit File Load Path"), the administrator's and the runtime ones first.
UNIT_PATH = ("/etc/systemd/system", "/run/systemd/system", "/usr/local/lib/systemd/system",
             "/usr/lib/systemd/system", "/lib/systemd/system")
BOOTED_MARK = "/run/systemd/system"  # exists iff systemd is PID 1 (sd_booted(3))
UNIT_NAME_MAX = 255  # systemd's UNIT_NAME_MAX (256) less the terminating NUL
NOTIFY_TIMEOUT = 600.0  # seconds; lacme-notify@.service itself stops at 5 min

_KEPT = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789:_.")


# --------------------------------------------------------------------------
# unit names

def notify_units_available() -> bool:
    """Whether renewals are announced through lacme-notify@SECTION.service:
    systemd runs the machine and the template unit is installed.

    This is a fact of the running system, not of how the master was started:
    ``lacme newOrder`` run by hand as root reloads what the timer's run would."""
    if not os.path.isdir(BOOTED_MARK):
        return False
    template = NOTIFY_TEMPLATE.format("")
    return any(os.path.exists(os.path.join(directory, template)) for directory in UNIT_PATH)


def escape_instance(name: str) -> str:
    """``name`` escaped as ``systemd-escape NAME`` prints it.

    Bytes of the UTF-8 form: ``/`` becomes ``-``; ASCII letters, digits,
    ``:``, ``_`` and ``.`` (but not a leading ``.``) stay; every other byte
    becomes ``\\xNN`` (lower-case hex).
    """
    out = []
    for i, byte in enumerate(name.encode("utf-8", "surrogateescape")):
        if byte == ord("/"):
            out.append("-")
        elif byte in _KEPT and not (i == 0 and byte == ord(".")):
            out.append(chr(byte))
        else:
            out.append(f"\\x{byte:02x}")
    return "".join(out)


def notify_unit_name(section: str) -> str:
    """lacme-notify@ESCAPED.service; ValueError when systemd cannot name it."""
    if not section:
        raise ValueError("empty section name")
    unit = NOTIFY_TEMPLATE.format(escape_instance(section))
    if len(unit) > UNIT_NAME_MAX:
        raise ValueError(f"unit name longer than {UNIT_NAME_MAX} characters")
    return unit


# --------------------------------------------------------------------------
# notify units

def transaction_argv(units: Sequence[str], run_id: str) -> list[str]:
    """systemd-run command line that starts ``units`` in one transaction.

    A transient oneshot service Requires= and is ordered After= every notify
    unit: starting it enqueues all of them as one transaction, so a unit
    that several of them pull in (Wants=lacme-reload@nginx.service) gets a
    single job and runs once.  --wait returns when they are all done and
    fails if one of them failed.
    """
    # systemd-run splits these values into words, a backslash escaping the
    # next character: double the ones of \xNN escapes.
    deps = " ".join(unit.replace("\\", "\\\\") for unit in units)
    return [
        "systemd-run", "--quiet", "--wait", "--collect",
        f"--unit=lacme-notify-{run_id}",
        "--description=lacme: notify units of renewed certificates",
        "--service-type=oneshot",
        f"--property=Requires={deps}",
        f"--property=After={deps}",
        "/bin/true",
    ]


def failed_units(units: Sequence[str]) -> dict[str, str]:
    """Unit -> Result for the units that did not succeed (systemctl show)."""
    proc = subprocess.run(
        ["systemctl", "show", "--property=Id,ActiveState,Result", "--", *units],
        capture_output=True, text=True, timeout=30, check=False,
    )
    failed: dict[str, str] = {}
    for block in proc.stdout.split("\n\n"):
        props = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        unit, result = props.get("Id"), props.get("Result", "")
        if unit and (props.get("ActiveState") == "failed" or result not in ("", "success")):
            failed[unit] = result or "failed"
    return failed


def start_notify_units(sections: Sequence[str]) -> int:
    """Start lacme-notify@SECTION.service for ``sections``; the failure count.

    All units start in one transaction (``transaction_argv``).  Each failure
    is logged with journal.NOTIFY_FAILED and LACME_SECTION; nothing is
    raised.
    """
    by_unit: dict[str, str] = {}
    failures = 0
    for section in dict.fromkeys(sections):
        try:
            by_unit[notify_unit_name(section)] = section
        except ValueError as exc:
            _log_notify_failure(section, "-", str(exc))
            failures += 1
    if not by_unit:
        return failures
    argv = transaction_argv(list(by_unit), uuid.uuid4().hex[:12])
    try:
        proc = subprocess.run(argv, capture_output=True, text=True,
                              timeout=NOTIFY_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        for unit, section in by_unit.items():
            _log_notify_failure(section, unit, f"systemd-run: {exc}")
        return failures + len(by_unit)
    if proc.returncode == 0:
        return failures
    failed = failed_units(list(by_unit))
    if not failed:  # the transaction itself failed: no unit to blame
        detail = proc.stderr.strip().splitlines()
        reason = detail[-1] if detail else f"systemd-run exited with status {proc.returncode}"
        failed = {unit: reason for unit in by_unit}
    for unit, result in failed.items():
        _log_notify_failure(by_unit.get(unit, unit), unit, result)
    return failures + len(failed)


def _log_notify_failure(section: str, unit: str, reason: str) -> None:
    log.error("[%s] notify: %s: %s", section, unit, reason,
              extra={"MESSAGE_ID": journal.NOTIFY_FAILED, "LACME_SECTION": section,
                     "LACME_UNIT": unit, "LACME_OUTCOME": "notify-failed"})
