"""What lacme remembers between runs: the renewal state file.

Read and written by the master (root) in its state directory, read by
``lacme status``.  A timer-driven master lives for one run; this file makes
it behave like a daemon: per certificate the ARI (RFC 9773) window, the
moment chosen in it, when to ask again, and the outcome of the last run.

Where (documented in README and lacme(8)): ``state-directory`` in
lacme.conf; else ``$STATE_DIRECTORY`` (systemd's ``StateDirectory=lacme``
sets it); else ``/var/lib/lacme`` for root and
``${XDG_STATE_HOME:-~/.local/state}/lacme`` for other users.

One JSON file, ``renewal.json``, replaced atomically (``lacme.core.atomic``:
temporary file, fsync, rename) under an flock on ``renewal.lock``; entries
are merged one by one so that concurrent runs for other sections lose
nothing.  Entries are keyed by section name and certificate path.  Nothing
in it is secret.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import time
from collections.abc import Iterable, Mapping

from lacme.core.errors import LacmeError
from lacme.core.record import Record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

log = logging.getLogger("lacme")

STATE_FILE = "renewal.json"
LOCK_FILE = "renewal.lock"
VERSION = 1
STALE_AFTER = 30 * 86400  # forget entries of vanished certificates after this


class Entry(Record):
    """The remembered renewal state of one certificate section."""

    section: str
    path: str
    cert_id: str | None = None  # RFC 9773 certificate ID (or serial:HEX without AKI)
    not_before: float | None = None
    not_after: float | None = None
    ari: bool | None = None  # the CA has renewalInfo (None: not known yet)
    window_start: float | None = None
    window_end: float | None = None
    chosen: float | None = None
    explanation_url: str | None = None
    next_check: float | None = None
    last_check: float | None = None
    last_attempt: float | None = None
    last_outcome: str | None = None  # installed | failed
    last_error: str | None = None
    last_success: float | None = None
    failures: int = 0  # failed orders since the last installed certificate (back-off)
    retry_until: float | None = None  # a rateLimited problem's Retry-After, POSIX seconds
    failed_config: str | None = None  # stats of lacme.conf and the section's file at the failure
    replaced: str | None = None  # certificate ID the last order replaced
    # What lacme.master.drift learned, so that a no-op run needs no cryptography:
    key_file: str | None = None  # stat of certificate-key when key_spki was read
    key_spki: str | None = None  # its public key (SubjectPublicKeyInfo, base64url DER)
    cafile_check: str | None = None  # which certificate was checked against which CAfile
    cafile_ok: bool | None = None  # ... and whether it verified
    updated: float = 0.0

    @property
    def key(self) -> str:
        return entry_key(self.section, self.path)

    def for_certificate(self, cert_id: str | None, not_before: float | None,
                        not_after: float | None) -> Entry:
        """This entry for the installed certificate: what was learned about
        another certificate (window, moment, next check) is dropped."""
        if cert_id == self.cert_id and not_after == self.not_after:
            return self
        return self.replace(
            cert_id=cert_id, not_before=not_before, not_after=not_after,
            window_start=None, window_end=None, chosen=None, explanation_url=None,
            next_check=None, last_check=None, failures=0)


# The JSON type of every field but section and path (str, required).
_FIELD_TYPES: dict[str, type] = {
    name: (bool if name in ("ari", "cafile_ok") else str if name in (
        "cert_id", "explanation_url", "last_outcome", "last_error", "replaced", "key_file",
        "key_spki", "cafile_check", "failed_config") else float)
    for name in Entry._fields[2:]
}
_DEFAULTS = {name: Entry._defaults.get(name) for name in Entry._fields}


def entry_key(section: str, path: str) -> str:
    return f"[{section}] {path}"


def default_directory(configured: str | None = None) -> str:
    """The state directory (see the module docstring)."""
    if configured:
        return configured
    systemd = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    if systemd:
        return systemd
    if os.geteuid() == 0:
        return "/var/lib/lacme"
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local/state")
    return os.path.join(base, "lacme")


def entry_from_json(raw: Any) -> Entry | None:
    """An entry of the file; None without a section and a path.  A field of
    the wrong type (or null, or unknown) is dropped: as if never learned."""
    if not isinstance(raw, dict):
        return None
    section, path = raw.get("section"), raw.get("path")
    if not isinstance(section, str) or not isinstance(path, str):
        return None
    values = _DEFAULTS.copy()
    values["section"], values["path"] = section, path
    for name, value in raw.items():
        kind = _FIELD_TYPES.get(name)
        if kind is None or value is None:
            continue
        if kind is float:
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                values[name] = value
        elif isinstance(value, kind):
            values[name] = value
    return Entry._trusted(values)


def _parse(text: str) -> dict[str, Entry] | None:
    """Entries of a state file; None when it is not one."""
    try:
        raw = json.loads(text)
    except ValueError:
        return None
    if not isinstance(raw, dict) or not isinstance(raw.get("entries"), list):
        return None
    entries = (entry_from_json(item) for item in raw["entries"])
    return {e.key: e for e in entries if e is not None}


def parse_state(text: str) -> dict[str, Entry]:
    """Entries of a state file; a damaged file is an empty state."""
    return _parse(text) or {}


def dump_state(entries: Mapping[str, Entry]) -> str:
    """The file's text: one entry per line (sorted keys, so diffs stay small),
    written by the C encoder (an indent would need the pure-Python one)."""
    encode = json.JSONEncoder(sort_keys=True).encode
    lines = [encode(entries[key].asdict()) for key in sorted(entries)]
    if not lines:
        return f'{{"version": {VERSION}, "entries": []}}\n'
    return f'{{"version": {VERSION}, "entries": [\n' + ",\n".join(lines) + "\n]}\n"


class StateStore:
    """The state file of one directory.

    A run reads it up to three times (to decide, again under the run lock,
    and to merge when saving): the bytes read last and their entries are
    kept, so that an unchanged file is read but not parsed again.
    """

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.path = os.path.join(directory, STATE_FILE)
        self._seen: tuple[bytes, dict[str, Entry]] | None = None

    def load(self) -> dict[str, Entry]:
        """Every entry; empty when the file is missing or unreadable (logged)."""
        try:
            with open(self.path, "rb") as fh:
                data = fh.read()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            log.warning("%s: cannot read the renewal state (%s)", self.path, exc)
            return {}
        if self._seen is not None and self._seen[0] == data:
            return dict(self._seen[1])
        try:
            entries = _parse(data.decode("utf-8"))
        except UnicodeDecodeError as exc:
            log.warning("%s: cannot read the renewal state (%s)", self.path, exc)
            return {}
        if entries is None:
            if data.strip():
                log.warning("%s: damaged renewal state, starting afresh", self.path)
            return {}
        self._seen = (data, entries)
        return dict(entries)

    def save(self, entries: Iterable[Entry]) -> bool:
        """Merge ``entries`` into the file; False (logged) if it cannot be written."""
        try:
            self._save(list(entries))
        except OSError as exc:
            log.warning("%s: cannot save the renewal state (%s)", self.path,
                        exc.strerror or exc)
            return False
        except LacmeError as exc:  # replace_file: "PATH: reason"
            log.warning("cannot save the renewal state: %s", exc)
            return False
        return True

    def _save(self, entries: list[Entry]) -> None:
        from lacme.core.atomic import replace_file  # secrets and re: not on a no-op run's path

        os.makedirs(self.directory, mode=0o755, exist_ok=True)
        lock_fd = os.open(os.path.join(self.directory, LOCK_FILE),
                          os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            current = self.load()
            now = time.time()
            for entry in entries:
                current[entry.key] = entry.replace(updated=now)
            current = {k: e for k, e in current.items() if not _stale(e, now)}
            data = dump_state(current).encode("utf-8")
            replace_file(self.path, data, 0o644)
            self._seen = (data, current)
        finally:
            os.close(lock_fd)


def _stale(entry: Entry, now: float) -> bool:
    return now - entry.updated > STALE_AFTER and not os.path.exists(entry.path)
