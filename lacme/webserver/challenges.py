"""The challenge files: the directory the master writes, one file per token.

Runs in the unprivileged webserver (the _lacme-www user), which can search
the master's challenge directory but not list it.  A challenge (RFC 8555
8.3: the key authorization of a token) is served only from a regular file,
never through a symbolic link, and only up to MAX_CHALLENGE_SIZE bytes.
"""

from __future__ import annotations

import errno
import os
import stat

from lacme.core.errors import UsageError
from lacme.webserver.log import logger

MAX_CHALLENGE_SIZE = 4096  # a key authorization is about 90 bytes


def open_challenge_directory(path: str) -> int:
    # O_PATH: search permission is enough (the master's private directory is
    # 0711: files can be opened by name, never listed).
    try:
        return os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise UsageError(f"--challenge-directory={path}: {exc.strerror}") from None


def read_challenge(dir_fd: int, token: str) -> tuple[int, bytes]:
    """(200, content) for a regular file named ``token``; (404 or 500, b"") otherwise.

    O_NOFOLLOW refuses a symbolic link (ELOOP); O_NONBLOCK makes opening a
    FIFO return at once, and fstat then refuses anything but a regular file.
    """
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    try:
        fd = os.open(token, flags, dir_fd=dir_fd)
    except FileNotFoundError:
        return 404, b""
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            logger.warning("challenge file %s: a symbolic link, not served", token)
            return 404, b""
        logger.warning("challenge file %s: %s", token, exc.strerror)
        return 500, b""
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            logger.warning("challenge file %s: not a regular file, not served", token)
            return 404, b""
        content = _read_bounded(fd, MAX_CHALLENGE_SIZE + 1)
    except OSError as exc:
        logger.warning("challenge file %s: %s", token, exc.strerror)
        return 500, b""
    finally:
        os.close(fd)
    if len(content) > MAX_CHALLENGE_SIZE:
        logger.warning("challenge file %s: larger than %d bytes, not served", token, MAX_CHALLENGE_SIZE)
        return 404, b""
    return 200, content


def _read_bounded(fd: int, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = os.read(fd, limit - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)

