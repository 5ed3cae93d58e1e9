"""Atomic file replacement: the one way lacme writes a file that others read.

The data goes to a new temporary file in the destination's directory
(``.<name>.lacme-tmp.<random>``, 0600, created with O_EXCL and never through
a symlink), gets its mode and then its owner, is flushed to disk, and is
renamed over the destination; the directory is flushed last.  rename(2)
within a directory is atomic, so a reader sees the old file or the new one,
never a part, and a crash at any point leaves one of them.  A failure
removes the temporary and leaves the destination byte for byte; temporaries
of a killed run are removed by the next replacement of the same file.

``replace_files`` replaces several files together (a certificate and its
chain): every temporary is written and flushed before the first rename, so
that a full disk (ENOSPC) or quota (EDQUOT), which strike while writing or
flushing, leaves every destination as it was, never a new chain beside an
old certificate.

``create_file`` is the no-clobber variant: the temporary is hard-linked to
the destination (link(2) fails when any file, even a dangling symbolic link,
is there), then unlinked, so that a file is written only where none was and
a crash leaves no file or the whole one, never a part over another.

Used by the master (certificates, the renewal state, the Prometheus
textfile, placeholder certificates) and the systemd generator (its drop-in).
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Callable, Sequence
from typing import TypeVar

from lacme.core.errors import LacmeError

TEMP_MARK = ".lacme-tmp."
TEMP_RANDOM = re.compile(r"[0-9a-f]{16}")
CREATE_ATTEMPTS = 8
T = TypeVar("T")


def temp_prefix(basename: str) -> str:
    """Prefix of the temporaries of ``basename``: ``.<basename>.lacme-tmp.``"""
    return f".{basename}{TEMP_MARK}"


def describe(error: OSError) -> str:
    """An OSError as a short lower-case reason."""
    reason = error.strerror or str(error)
    return reason[:1].lower() + reason[1:]


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


def write_temporary(dir_fd: int, basename: str, data: bytes, mode: int, uid: int, gid: int) -> str:
    """A new, flushed temporary next to ``basename`` holding ``data``; its name.

    Stale temporaries of ``basename`` are removed first; on a failure the
    new one is removed too."""
    remove_stale_temporaries(dir_fd, basename)
    name, fd = create_temporary(dir_fd, basename)
    try:
        try:
            fill_temporary(fd, data, mode, uid, gid)
        finally:
            os.close(fd)
    except BaseException:
        discard_temporary(dir_fd, name)
        raise
    return name


def discard_temporary(dir_fd: int, name: str) -> None:
    """Remove the temporary ``name`` if it is still there."""
    try:
        os.unlink(name, dir_fd=dir_fd)
    except OSError:
        pass


def open_directory(path: str) -> tuple[int, str]:
    """(descriptor of ``path``'s directory, its base name); one LacmeError naming ``path``."""
    directory, basename = os.path.split(path)
    if not basename:
        raise LacmeError(f"{path}: not a file name")
    try:
        return os.open(directory or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC), basename
    except OSError as e:
        raise LacmeError(f"{path}: directory: {describe(e)}") from None


def _in_directory(path: str, step: Callable[[int, str, bytes, int, int, int], T],
                  data: bytes, mode: int, uid: int, gid: int) -> T:
    """Run ``step`` on ``path``'s directory (opened once) and base name; an
    OSError becomes one LacmeError naming ``path``."""
    dir_fd, basename = open_directory(path)
    try:
        return step(dir_fd, basename, data, mode, uid, gid)
    except OSError as e:
        raise LacmeError(f"{path}: {describe(e)}") from None
    finally:
        os.close(dir_fd)


def replace_file(path: str, data: bytes, mode: int, uid: int = -1, gid: int = -1) -> None:
    """Atomically replace ``path`` with ``data`` (``uid``/``gid`` -1: unchanged).

    On any failure the temporary is gone, ``path`` is untouched and a
    LacmeError ``"PATH: reason"`` is raised."""
    _in_directory(path, replace_in, data, mode, uid, gid)


def replace_in(dir_fd: int, basename: str, data: bytes, mode: int, uid: int, gid: int) -> None:
    """The replacement proper, relative to an open directory."""
    name = write_temporary(dir_fd, basename, data, mode, uid, gid)
    try:
        os.rename(name, basename, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        discard_temporary(dir_fd, name)
        raise
    os.fsync(dir_fd)


def replace_files(items: Sequence[tuple[str, bytes]], mode: int, uid: int = -1,
                  gid: int = -1) -> None:
    """Replace each ``(path, data)`` of ``items``: all temporaries written and
    flushed first, then renamed in order, then the directories flushed.

    A failure before the renames removes every temporary and leaves every
    path untouched (LacmeError ``"PATH: reason"``, the path that failed)."""
    staged: list[tuple[str, int, str, str]] = []  # (path, dir fd, temporary, basename)
    try:
        for path, data in items:
            dir_fd, basename = open_directory(path)
            try:
                name = write_temporary(dir_fd, basename, data, mode, uid, gid)
            except BaseException as e:
                os.close(dir_fd)
                if isinstance(e, OSError):
                    raise LacmeError(f"{path}: {describe(e)}") from None
                raise
            staged.append((path, dir_fd, name, basename))
        for path, dir_fd, name, basename in staged:
            try:
                os.rename(name, basename, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            except OSError as e:
                raise LacmeError(f"{path}: {describe(e)}") from None
        for path, dir_fd, _name, _basename in staged:
            try:
                os.fsync(dir_fd)
            except OSError as e:
                raise LacmeError(f"{path}: directory: {describe(e)}") from None
    finally:
        for _path, dir_fd, name, _basename in staged:
            discard_temporary(dir_fd, name)  # gone once renamed; still there after a failure
            os.close(dir_fd)


def create_file(path: str, data: bytes, mode: int, uid: int = -1, gid: int = -1) -> bool:
    """Atomically create ``path`` with ``data`` unless something is there:
    True if it was created, False if ``path`` existed (it is left alone).

    On any failure the temporary is gone, ``path`` is untouched and a
    LacmeError ``"PATH: reason"`` is raised."""
    return bool(_in_directory(path, create_in, data, mode, uid, gid))


def create_in(dir_fd: int, basename: str, data: bytes, mode: int, uid: int, gid: int) -> bool:
    """The creation proper, relative to an open directory."""
    name = write_temporary(dir_fd, basename, data, mode, uid, gid)
    try:
        try:
            os.link(name, basename, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
        except FileExistsError:
            return False
    finally:
        discard_temporary(dir_fd, name)
        os.fsync(dir_fd)
    return True
