"""Privilege drop for the components the forking master spawns.

Runs in the master's forked child, as root, just before exec: supplementary
groups reduced to the one group, then gid, then uid (in that order, since
after setuid nothing else may change), and the result verified, so that a
half-dropped process never runs a component.  An empty user or group skips
that part of the drop, as the manual says (not recommended).

``why_not_executable`` runs there too, after the drop and only when exec
failed: it walks the command's path (symbolic links followed, then the
``#!`` interpreter of a script) as the dropped user, to name the directory
that user cannot search or the file it cannot execute.  ``make install``
makes the same walk over the programs' interpreter with the permission bits
of "others" (``why_others_cannot_execute``).
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from collections.abc import Callable

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


MAX_SYMLINKS = 40  # the kernel's limit (path_resolution(7))


def why_not_executable(path: str, search_path: str = SAFE_PATH) -> str:
    """Why the current user cannot execute ``path``: one clause about "that
    user" (the caller names it), e.g. "/root is not searchable by that user";
    "" when nothing on the way explains it (a noexec mount, a security module)."""
    if "/" not in path:
        for directory in (d for d in search_path.split(os.pathsep) if d):
            if os.path.lexists(os.path.join(directory, path)):
                return _walk(os.path.join(directory, path), _may_execute, "that user")
        return f"{path} is not found in PATH={search_path}"
    return _walk(path, _may_execute, "that user")


def why_others_cannot_execute(path: str) -> str:
    """Why users other than the owners (the components' users) cannot execute
    ``path``, from the permission bits for "others" alone; "" if they can.
    For ``make install``, about the interpreter of the installed programs."""
    return _walk(path, _others_may_execute, "other users")


def _may_execute(path: str) -> bool:
    return os.access(path, os.X_OK)


def _others_may_execute(path: str) -> bool:
    return bool(os.stat(path).st_mode & stat.S_IXOTH)


def _walk(path: str, may: Callable[[str], bool], who: str, depth: int = 0) -> str:
    """The first step of ``path`` that ``may`` refuses: each directory must be
    searchable, symbolic links are followed, the file must be executable and
    so must a script's interpreter."""
    current = "/" if path.startswith("/") else "."
    parts = [p for p in path.split("/") if p and p != "."]
    links = 0
    mode = os.stat(current).st_mode
    while parts:
        if not may(current):
            return f"{current} is not searchable by {who}"
        step = os.path.normpath(os.path.join(current, parts.pop(0)))  # no link in current
        try:
            mode = os.lstat(step).st_mode
        except FileNotFoundError:
            return f"{step} does not exist"
        except OSError as exc:
            return f"{step}: {exc.strerror}"
        if stat.S_ISLNK(mode):
            links += 1
            if links > MAX_SYMLINKS:
                return f"{path}: too many levels of symbolic links"
            target = os.readlink(step)
            parts = [p for p in target.split("/") if p and p != "."] + parts
            current = "/" if target.startswith("/") else current
            mode = os.stat(current).st_mode
        elif parts and not stat.S_ISDIR(mode):
            return f"{step} is not a directory"
        else:
            current = step
    if stat.S_ISDIR(mode):
        return f"{current} is a directory"
    if not may(current):
        return f"{current} is not executable by {who}"
    interpreter = _interpreter(current) if depth < 4 else None
    if interpreter is None:
        return ""
    why = _walk(interpreter, may, who, depth + 1)
    return f"its interpreter {interpreter}: {why}" if why else ""


def _interpreter(path: str) -> str | None:
    """The program named by a script's ``#!`` line, if it has one we may read."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(256)
    except OSError:
        return None
    if not head.startswith(b"#!"):
        return None
    words = head[2:].split(b"\n", 1)[0].split()
    return os.fsdecode(words[0]) if words else None
