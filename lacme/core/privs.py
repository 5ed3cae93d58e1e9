"""Privilege drop for the components the forking master spawns.

Runs in the master's forked child, as root, just before exec: supplementary
groups reduced to the one group, then gid, then uid (in that order, since
after setuid nothing else may change), and the result verified, so that a
half-dropped process never runs a component.  An empty user or group skips
that part of the drop, as the manual says (not recommended).
"""

from __future__ import annotations

import grp
import os
import pwd

from lacme.core.errors import PrivilegeError
from lacme.core.record import Record

#: Environment handed to every component: nothing inherited but these.
SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
KEPT_VARIABLES = ("LANG", "LC_ALL", "LC_CTYPE", "TZ", "GPG_TTY", "JOURNAL_STREAM", "TERM")


class Credentials(Record):
    """Resolved user and group of a component (None: keep the current one)."""

    uid: int | None
    gid: int | None
    user: str
    group: str
    home: str


def resolve(user: str, group: str, *, where: str) -> Credentials:
    """Look up ``user`` and ``group``; ``where`` names the setting for errors."""
    uid = gid = None
    home = "/"
    if user:
        try:
            pw = pwd.getpwnam(user)
        except KeyError:
            raise PrivilegeError(f"{where} user: no such user {user!r}") from None
        uid, home = pw.pw_uid, pw.pw_dir
    if group:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise PrivilegeError(f"{where} group: no such group {group!r}") from None
    return Credentials(uid, gid, user, group, home)


def drop_privileges(creds: Credentials) -> None:
    """Become ``creds`` for good (real, effective and saved ids), or raise."""
    if creds.gid is not None:
        os.setgroups([creds.gid])
        os.setresgid(creds.gid, creds.gid, creds.gid)
    if creds.uid is not None:
        os.setresuid(creds.uid, creds.uid, creds.uid)
    verify_dropped(creds)


def verify_dropped(creds: Credentials) -> None:
    """Check that the drop took and cannot be undone."""
    if creds.gid is not None and (os.getresgid() != (creds.gid,) * 3
                                  or set(os.getgroups()) - {creds.gid}):
            raise PrivilegeError(f"could not drop to group {creds.group}")
    if creds.uid is not None:
        if os.getresuid() != (creds.uid,) * 3:
            raise PrivilegeError(f"could not drop to user {creds.user}")
        if creds.uid != 0:
            try:
                os.setuid(0)
            except PermissionError:
                pass
            else:
                raise PrivilegeError(f"user {creds.user}: root could be regained")


def clean_environment(creds: Credentials, extra: dict[str, str] | None = None) -> dict[str, str]:
    """A minimal environment for a component running as ``creds``."""
    env = {k: os.environ[k] for k in KEPT_VARIABLES if k in os.environ}
    env["PATH"] = SAFE_PATH
    if creds.uid is not None:
        env["HOME"] = creds.home or "/"
        env["USER"] = env["LOGNAME"] = creds.user
    else:
        for key in ("HOME", "USER", "LOGNAME", "XDG_RUNTIME_DIR", "XDG_CONFIG_HOME",
                    "XDG_CACHE_HOME", "TMPDIR"):
            if key in os.environ:
                env[key] = os.environ[key]
    if extra:
        env.update(extra)
    return env
