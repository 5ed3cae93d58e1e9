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

What the client may have published at all is ``PublishGate``'s rule: a
compromised client must not use the master to serve anything else.
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


class PublishGate:
    """What the master publishes for the client, and when (issue: least authority).

    Open only while orders of this run are pending (``open`` .. ``close``);
    at most one answer per authorization of those orders (one per
    identifier, RFC 8555 7.1.4: an authorization is for one identifier);
    each answer a key authorization of this account (RFC 8555 8.1:
    ``token "." thumbprint``, the thumbprint from accountd's greeting).
    Other challenge types join here with their own check over the same
    identifiers (``allows_identifier``).
    """

    def __init__(self, thumbprint: str) -> None:
        self.thumbprint = thumbprint
        self.identifiers: frozenset[tuple[str, str]] = frozenset()
        self.tokens: set[str] = set()
        self.pending = False

    def open(self, identifiers: list[tuple[str, str]]) -> None:
        from lacme.protocol.scope import identifier

        self.identifiers = frozenset(identifier(t, v) for t, v in identifiers)
        self.pending = True

    def close(self) -> None:
        self.pending = False

    def allows_identifier(self, kind: str, value: str) -> bool:
        """Whether a challenge for this identifier may be published now."""
        from lacme.protocol.scope import identifier

        return self.pending and identifier(kind, value) in self.identifiers

    def check_http01(self, token: str, content: str) -> None:
        """LacmeError (the reason, logged by the caller) unless publishing is allowed."""
        if not self.pending:
            raise LacmeError("refused: no order of this run is pending")
        if not self.thumbprint:
            raise LacmeError("refused: no greeting from lacme-accountd, no key authorization")
        if content != f"{token}.{self.thumbprint}":
            raise LacmeError("refused: not a key authorization of this account (token.thumbprint)")
        if token not in self.tokens and len(self.tokens) >= len(self.identifiers):
            raise LacmeError(f"refused: more answers than the {len(self.identifiers)} "
                             f"authorization(s) of this run's orders")
        self.tokens.add(token)


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
