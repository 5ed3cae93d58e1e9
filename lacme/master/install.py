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
import re
import secrets
import subprocess
from collections.abc import Mapping

from lacme.core.errors import LacmeError

TEMP_MARK = ".lacme-tmp."
TEMP_RANDOM = re.compile(r"[0-9a-f]{16}")
DEFAULT_MODE = 0o644
CREATE_ATTEMPTS = 8


def temp_prefix(basename: str) -> str:
    """Prefix of the temporaries of ``basename``: ``.<basename>.lacme-tmp.``"""
    return f".{basename}{TEMP_MARK}"


def describe(error: OSError) -> str:
    """An OSError as a short lower-case reason."""
    reason = error.strerror or str(error)
    return reason[:1].lower() + reason[1:]


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


def remove_stale_temporaries(dir_fd: int, basename: str) -> None:
    """Unlink ``.<basename>.lacme-tmp.<random>`` left behind by a killed run."""
    prefix = temp_prefix(basename)
    for entry in os.scandir(dir_fd):
        suffix = entry.name[len(prefix):]
        if (entry.name.startswith(prefix) and TEMP_RANDOM.fullmatch(suffix)
                and not entry.is_dir(follow_symlinks=False)):
            try:
                os.unlink(entry.name, dir_fd=dir_fd)
            except FileNotFoundError:
                pass


def create_temporary(dir_fd: int, basename: str) -> tuple[str, int]:
    """Create a new temporary (0600, never through a symlink); (name, fd)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for _ in range(CREATE_ATTEMPTS):
        name = temp_prefix(basename) + secrets.token_hex(8)
        try:
            return name, os.open(name, flags, 0o600, dir_fd=dir_fd)
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name after {CREATE_ATTEMPTS} attempts")


def write_all(fd: int, data: bytes) -> None:
    """Write every byte (os.write may write less than asked)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def fill_temporary(fd: int, data: bytes, mode: int, uid: int, gid: int) -> None:
    """Content, then mode before owner, then flush it all to disk."""
    write_all(fd, data)
    # chmod before chown: the file changes hands only once its mode is final.
    os.fchmod(fd, mode)
    if uid != -1 or gid != -1:
        os.fchown(fd, uid, gid)
    os.fsync(fd)


def install_file(path: str, data: bytes, *, mode: int | None = None,
                 owner: str | None = None) -> None:
    """Atomically replace ``path`` with ``data``, with ``mode`` and ``owner``.

    ``mode`` None means 0644 minus the umask; ``owner`` is "user[:group]".
    On any failure the temporary is gone, ``path`` is untouched and a
    LacmeError starting with the path is raised.
    """
    uid, gid = resolve_owner(owner, path) if owner else (-1, -1)
    if mode is None:
        mode = DEFAULT_MODE & ~current_umask()
    directory, basename = os.path.split(path)
    if not basename:
        raise LacmeError(f"{path}: not a file name")
    try:
        dir_fd = os.open(directory or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise LacmeError(f"{path}: directory: {describe(e)}") from None
    try:
        install_in(dir_fd, basename, data, mode, uid, gid)
    except OSError as e:
        raise LacmeError(f"{path}: {describe(e)}") from None
    finally:
        os.close(dir_fd)


def install_in(dir_fd: int, basename: str, data: bytes, mode: int, uid: int, gid: int) -> None:
    """The install proper, relative to an open directory."""
    remove_stale_temporaries(dir_fd, basename)
    name, fd = create_temporary(dir_fd, basename)
    try:
        try:
            fill_temporary(fd, data, mode, uid, gid)
        finally:
            os.close(fd)
        os.rename(name, basename, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        try:
            os.unlink(name, dir_fd=dir_fd)
        except OSError:
            pass
        raise
    os.fsync(dir_fd)


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
