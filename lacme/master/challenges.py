"""Where the master publishes http-01 answers (RFC 8555 8.3), as root.

The ACME client never writes anything: it asks the master, over the control
channel, to publish a token's key authorization, and the master writes it
here.  Two kinds of directory:

* a private temporary directory (mode 0711: the webserver may open a file
  whose name it knows but cannot list them), removed after the run;
* the configured ``challenge-directory`` of an external HTTP daemon (or the
  socket-activated webserver): it must exist and be empty; a lock file
  ``.lacme.lock`` keeps two runs apart, and everything the run wrote is
  removed afterwards.  A lock left by a killed run is taken over: the lock
  file is also flock(2)ed, so a lock whose holder died is free.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import shutil
import tempfile

from lacme.core.errors import LacmeError
from lacme.protocol.http01 import is_valid_token

log = logging.getLogger("lacme")

LOCK_NAME = ".lacme.lock"


class ChallengeDirectory:
    """A directory of challenge files, written by the master only."""

    def __init__(self, path: str, *, private: bool) -> None:
        self.path = path
        self.private = private
        self._lock_fd: int | None = None
        self._dir_fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self._published: set[str] = set()

    @classmethod
    def create_private(cls) -> ChallengeDirectory:
        path = tempfile.mkdtemp(prefix="lacme-challenges.")
        os.chmod(path, 0o711)
        return cls(path, private=True)

    @classmethod
    def open_shared(cls, path: str) -> ChallengeDirectory:
        """Lock and check the configured ``challenge-directory``."""
        where = f"[webserver] challenge-directory {path}"
        try:
            self = cls(path, private=False)
        except OSError as exc:
            raise LacmeError(f"{where}: {exc.strerror}") from None
        try:
            stale = self._lock()
            if stale:
                # The previous holder was killed: what it left is ours to remove.
                log.warning("%s: removing what a killed run left behind", where)
                self._remove_leftovers()
            leftovers = [n for n in os.listdir(self._dir_fd) if n != LOCK_NAME]
            if leftovers:
                raise LacmeError(f"{where}: not empty ({', '.join(sorted(leftovers)[:3])})")
        except BaseException:
            self.close()
            raise
        return self

    def _lock(self) -> bool:
        """Take the lock; True when it was left by a run that died."""
        where = f"[webserver] challenge-directory {self.path}"
        flags = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC
        stale = True
        try:
            try:
                fd = os.open(LOCK_NAME, flags | os.O_CREAT | os.O_EXCL, 0o600, dir_fd=self._dir_fd)
                stale = False
            except FileExistsError:
                fd = os.open(LOCK_NAME, flags, dir_fd=self._dir_fd)
        except OSError as exc:
            raise LacmeError(f"{where}: cannot create lock file: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise LacmeError(f"{where}: in use by another lacme run") from None
            raise LacmeError(f"{where}: cannot lock: {exc.strerror}") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd
        return stale

    def _remove_leftovers(self) -> None:
        """Remove challenge files (and their temporaries) in the directory."""
        for name in os.listdir(self._dir_fd):
            if name != LOCK_NAME and is_valid_token(name.removeprefix(".").removesuffix(".tmp")):
                try:
                    os.unlink(name, dir_fd=self._dir_fd)
                except OSError:
                    pass

    def publish(self, token: str, content: str) -> None:
        """Write one answer (atomically: the webserver never sees half)."""
        if not is_valid_token(token):
            raise LacmeError(f"challenge token {token!r}: not base64url")
        tmp = f".{token}.tmp"
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(tmp, flags, 0o644, dir_fd=self._dir_fd)
        try:
            os.fchmod(fd, 0o644)
            os.write(fd, content.encode("ascii"))
        finally:
            os.close(fd)
        os.rename(tmp, token, src_dir_fd=self._dir_fd, dst_dir_fd=self._dir_fd)
        self._published.add(token)

    def unpublish(self, token: str) -> None:
        if token in self._published:
            self._published.discard(token)
            try:
                os.unlink(token, dir_fd=self._dir_fd)
            except FileNotFoundError:
                pass

    def close(self) -> None:
        """Remove what this run wrote, unlock, and drop a private directory."""
        if self._dir_fd < 0:
            return
        for token in list(self._published):
            self.unpublish(token)
        if self.private:
            shutil.rmtree(self.path, ignore_errors=True)
        elif self._lock_fd is not None:
            self._remove_leftovers()
            try:
                os.unlink(LOCK_NAME, dir_fd=self._dir_fd)
            except OSError:
                pass
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        os.close(self._dir_fd)
        self._dir_fd = -1
