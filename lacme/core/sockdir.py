"""The one rule for the directory of a UNIX socket that lacme binds or trusts.

A socket whose directory group or others may write to can be removed and
replaced by anyone with that access, who would then receive what is sent to
it (accountd's signatures, the master's commands): lacme-accountd refuses
to bind there and the master refuses to connect there.  No RFC applies.
"""

from __future__ import annotations

import os

from lacme.core.errors import LacmeError


def check_socket_directory(path: str) -> str:
    """The directory of socket ``path``; LacmeError ("DIR: reason") if it
    cannot be examined or group or others may write to it."""
    parent = os.path.dirname(path) or "."
    try:
        st = os.stat(parent)
    except OSError as exc:
        raise LacmeError(f"{parent}: {exc.strerror or exc}") from None
    if st.st_mode & 0o022:
        raise LacmeError(f"{parent}: insecure permissions (writable by group or others)")
    return parent
