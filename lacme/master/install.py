"""Atomic installation of issued certificates, and the notify command.

Run by the master (root) once a chain has been verified.  A certificate is
written to a temporary file next to its destination, given its mode and
owner, flushed to disk and renamed over the destination, so that a service
reading the path sees the old file or the new one, never a partial one
(rename(2) is atomic within a directory).  No RFC applies; the notify
command runs through ``/bin/sh -c`` as the manual of lacme(8) says.
"""

from __future__ import annotations

import grp
import os
import pwd
import subprocess
from collections.abc import Mapping

from lacme.core.atomic import create_file, describe, replace_file, replace_files
from lacme.core.errors import LacmeError

DEFAULT_MODE = 0o644


def current_umask() -> int:
    """The process umask, read from /proc when possible (no set-and-restore race)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def resolve_owner(owner: str, path: str) -> tuple[int, int]:
    """(uid, gid) for "user[:group]"; -1 leaves that part unchanged."""
    user, _, group = owner.partition(":")
    return lookup_id(user, pwd.getpwnam, "user", owner, path), \
        lookup_id(group, grp.getgrnam, "group", owner, path)


def lookup_id(name: str, lookup, kind: str, owner: str, path: str) -> int:
    """Numeric id of a user or group name (or number); -1 when empty."""
    if not name:
        return -1
    if name.isdigit():
        return int(name)
    try:
        entry = lookup(name)
    except KeyError:
        raise LacmeError(f"{path}: chown {owner}: no such {kind} {name!r}") from None
    return entry.pw_uid if kind == "user" else entry.gr_gid


def install_file(path: str, data: bytes, *, mode: int | None = None,
                 owner: str | None = None) -> None:
    """Atomically replace ``path`` with ``data``, with ``mode`` and ``owner``.

    ``mode`` None means 0644 minus the umask; ``owner`` is "user[:group]".
    On any failure the temporary is gone, ``path`` is untouched and a
    LacmeError starting with the path is raised (lacme.core.atomic).
    """
    uid, gid = resolve_owner(owner, path) if owner else (-1, -1)
    if mode is None:
        mode = DEFAULT_MODE & ~current_umask()
    replace_file(path, data, mode, uid, gid)


def install_files(items: list[tuple[str, bytes]], *, mode: int | None = None,
                  owner: str | None = None) -> None:
    """Like ``install_file`` for several files at once (a chain and its leaf):
    every one is written and flushed before any is renamed, so that a full
    disk or quota leaves them all as they were (lacme.core.atomic)."""
    if not items:
        return
    uid, gid = resolve_owner(owner, items[0][0]) if owner else (-1, -1)
    if mode is None:
        mode = DEFAULT_MODE & ~current_umask()
    replace_files(items, mode, uid, gid)


def create_new_file(path: str, data: bytes, *, mode: int | None = None,
                    owner: str | None = None) -> bool:
    """Like ``install_file``, but only where no file is: True if ``path`` was
    created, False if something was there (left alone)."""
    uid, gid = resolve_owner(owner, path) if owner else (-1, -1)
    if mode is None:
        mode = DEFAULT_MODE & ~current_umask()
    return create_file(path, data, mode, uid, gid)


def run_notify(command: str, *, env: Mapping[str, str] | None = None) -> int:
    """Run ``/bin/sh -c command`` with stdin from /dev/null; its exit status.

    A command killed by signal n gives 128 + n, as in the shell.  Never
    raises for a failing command; LacmeError only if /bin/sh cannot start.
    """
    try:
        result = subprocess.run(["/bin/sh", "-c", command], stdin=subprocess.DEVNULL,
                                env=dict(env) if env is not None else None, check=False)
    except OSError as e:
        raise LacmeError(f"notify {command!r}: /bin/sh: {describe(e)}") from None
    return 128 - result.returncode if result.returncode < 0 else result.returncode
