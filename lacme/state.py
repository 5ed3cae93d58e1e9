"""What lacme remembers between runs: the renewal state file.

Read and written by the master (root) in its state directory, read by
``lacme status``.  A timer-driven master lives for one run; this file makes
it behave like a daemon: per certificate the ARI (RFC 9773) window, the
moment chosen in it, when to ask again, and the outcome of the last run.

Where (documented in README and lacme(8)): ``state-directory`` in
lacme.conf; else ``$STATE_DIRECTORY`` (systemd's ``StateDirectory=lacme``
sets it); else ``/var/lib/lacme`` for root and
``${XDG_STATE_HOME:-~/.local/state}/lacme`` for other users.

One JSON file, ``renewal.json``, replaced atomically (temporary file,
fsync, rename) under an flock on ``renewal.lock``; entries are merged one by
one so that concurrent runs for other sections lose nothing.  Entries are
keyed by section name and certificate path.  Nothing in it is secret.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import logging
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("lacme")

STATE_FILE = "renewal.json"
LOCK_FILE = "renewal.lock"
VERSION = 1
STALE_AFTER = 30 * 86400  # forget entries of vanished certificates after this


@dataclass(frozen=True)
class Entry:
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
    replaced: str | None = None  # certificate ID the last order replaced
    updated: float = 0.0

    @property
    def key(self) -> str:
        return entry_key(self.section, self.path)

    def for_certificate(self, cert_id: str | None, not_before: float | None,
                        not_after: float | None) -> "Entry":
        """This entry for the installed certificate: what was learned about
        another certificate (window, moment, next check) is dropped."""
        if cert_id == self.cert_id and not_after == self.not_after:
            return self
        return dataclasses.replace(
            self, cert_id=cert_id, not_before=not_before, not_after=not_after,
            window_start=None, window_end=None, chosen=None, explanation_url=None,
            next_check=None, last_check=None)


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
    if not isinstance(raw, dict):
        return None
    fields = {f.name: f.type for f in dataclasses.fields(Entry)}
    values = {k: v for k, v in raw.items() if k in fields}
    if not isinstance(values.get("section"), str) or not isinstance(values.get("path"), str):
        return None
    for name, value in list(values.items()):
        if value is not None and not _well_typed(fields[name], value):
            values.pop(name)  # a damaged field: as if never learned
    return Entry(**values)


def _well_typed(declared: Any, value: Any) -> bool:
    text = str(declared)
    if "float" in text:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if "bool" in text:
        return isinstance(value, bool)
    return isinstance(value, str)


def parse_state(text: str) -> dict[str, Entry]:
    """Entries of a state file; a damaged file is an empty state (logged)."""
    try:
        raw = json.loads(text)
    except ValueError:
        raw = None
    if not isinstance(raw, dict) or not isinstance(raw.get("entries"), list):
        return {}
    entries = (entry_from_json(item) for item in raw["entries"])
    return {e.key: e for e in entries if e is not None}


def dump_state(entries: Mapping[str, Entry]) -> str:
    items = [dataclasses.asdict(e) for _, e in sorted(entries.items())]
    return json.dumps({"version": VERSION, "entries": items}, indent=1, sort_keys=True) + "\n"


class StateStore:
    """The state file of one directory."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.path = os.path.join(directory, STATE_FILE)

    def load(self) -> dict[str, Entry]:
        """Every entry; empty when the file is missing or unreadable (logged)."""
        try:
            with open(self.path, encoding="utf-8") as fh:
                text = fh.read()
        except FileNotFoundError:
            return {}
        except (OSError, UnicodeDecodeError) as exc:
            log.warning("%s: cannot read the renewal state (%s)", self.path, exc)
            return {}
        entries = parse_state(text)
        if not entries and text.strip() and '"entries": []' not in text:
            log.warning("%s: damaged renewal state, starting afresh", self.path)
        return entries

    def save(self, entries: Iterable[Entry]) -> bool:
        """Merge ``entries`` into the file; False (logged) if it cannot be written."""
        try:
            self._save(list(entries))
        except OSError as exc:
            log.warning("%s: cannot save the renewal state (%s)", self.path,
                        exc.strerror or exc)
            return False
        return True

    def _save(self, entries: list[Entry]) -> None:
        os.makedirs(self.directory, mode=0o755, exist_ok=True)
        lock_fd = os.open(os.path.join(self.directory, LOCK_FILE),
                          os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            current = self.load()
            now = time.time()
            for entry in entries:
                current[entry.key] = dataclasses.replace(entry, updated=now)
            current = {k: e for k, e in current.items() if not _stale(e, now)}
            self._write(dump_state(current))
        finally:
            os.close(lock_fd)

    def _write(self, text: str) -> None:
        tmp = f"{self.path}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
            os.rename(tmp, self.path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        dir_fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _stale(entry: Entry, now: float) -> bool:
    return now - entry.updated > STALE_AFTER and not os.path.exists(entry.path)
