"""Does the installed certificate still follow its configuration?

Run by the master (root) for every section of every newOrder run, and by
``lacme status``, once the installed certificate's facts are read
(``lacme.master.ari``: a DER walk, no cryptography).  A certificate that
no longer answers its section is renewed at once, whatever its dates:

* ``placeholder`` / ``self-signed``: issuer and subject are one Name (RFC
  5280 4.1.2.4); no ACME CA issues such a leaf, and ``lacme placeholder``
  writes one (its OU says so) so that a web server can start;
* ``names changed``: its subjectAltName (RFC 5280 4.2.1.6) DNS names and IP
  addresses (RFC 8738) are not exactly the section's;
* ``key changed``: its SubjectPublicKeyInfo (RFC 5280 4.1.2.7) is not
  certificate-key's public key;
* ``not from CAfile``: its chain (certificate-chain) does not verify to
  CAfile, when the chain check is on.

The last two need cryptography (the private key, a path validation), which
a no-op run must not import: what they found is kept in the renewal state
(``lacme.master.state``), keyed by a stat of the key file (device, inode,
size, mtime, ctime) and by the certificate's ID with a stat of CAfile, and
worked out again only when those change.  A section with only
``certificate`` (no chain) is not checked against CAfile: its intermediates
are not on disk.
"""

from __future__ import annotations

import logging
import os

from lacme.core.record import Record, replace
from lacme.master.ari import b64url

TYPE_CHECKING = False
if TYPE_CHECKING:
    from lacme.config.certs import CertSection
    from lacme.master.ari import CertificateFacts
    from lacme.master.state import Entry

log = logging.getLogger("lacme")

PLACEHOLDER = "placeholder"
SELF_SIGNED = "self-signed"
NAMES_CHANGED = "names changed"
KEY_CHANGED = "key changed"
NOT_FROM_CAFILE = "not from CAfile"

# What this run worked out already (the plan is made twice when there is work).
_memo: dict[str, object] = {}


class Drift(Record):
    """Why the installed certificate must be renewed now (None: it fits),
    the entry with what was learned, and the stats that were used."""

    reason: str | None
    entry: Entry
    refreshed: bool = False  # the entry learned something: save it
    key_stamp: str | None = None
    cafile_stamp: str | None = None


def file_stamp(path: str) -> str | None:
    """What changes when the file at ``path`` is replaced or written; None if
    it cannot be seen."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns} {path}"


def cafile_of(section: CertSection) -> str | None:
    """The CAfile the section's chain is checked against; None: no check."""
    if section.cafile == "":
        return None
    if section.cafile:
        return section.cafile
    from lacme.x509.cafile import default_cafile

    return default_cafile()


def check_drift(section: CertSection, path: str, facts: CertificateFacts, entry: Entry) -> Drift:
    """Whether the certificate at ``path`` (``facts``) follows ``section``."""
    if facts.self_signed:
        return Drift(PLACEHOLDER if facts.placeholder else SELF_SIGNED, entry)
    reason = names_reason(section, facts)
    if reason:
        return Drift(reason, entry)
    refreshed = False
    key_stamp = file_stamp(section.certificate_key)
    if key_stamp is not None:
        if entry.key_file != key_stamp or entry.key_spki is None:
            spki = key_spki(section.certificate_key, key_stamp)
            if spki is not None:
                entry, refreshed = replace(entry, key_file=key_stamp, key_spki=spki), True
        if entry.key_file == key_stamp and entry.key_spki != b64url(facts.spki):
            return Drift(KEY_CHANGED, entry, refreshed, key_stamp)
    cafile = cafile_of(section)
    cafile_stamp = file_stamp(cafile) if cafile and section.certificate_chain else None
    if cafile and cafile_stamp is not None:
        check = cafile_check(facts, cafile_stamp)
        if entry.cafile_check != check or entry.cafile_ok is None:
            ok = verifies(section, path, facts, cafile, cafile_stamp)
            if ok is not None:
                entry, refreshed = replace(entry, cafile_check=check, cafile_ok=ok), True
        if entry.cafile_check == check and entry.cafile_ok is False:
            return Drift(NOT_FROM_CAFILE, entry, refreshed, key_stamp, cafile_stamp)
    return Drift(None, entry, refreshed, key_stamp, cafile_stamp)


def cafile_check(facts: CertificateFacts, cafile_stamp: str) -> str:
    """The state's record of which certificate was checked against which CAfile."""
    return f"{facts.cert_id or 'serial:' + facts.serial_hex} {cafile_stamp}"


def names_reason(section: CertSection, facts: CertificateFacts) -> str | None:
    """``names changed (+added, -removed)``, or None when subjectAltName holds
    exactly the section's names (the rule of lacme.x509.chain.check_names)."""
    wanted = [*section.names, *section.ip_addresses]
    got = [*facts.names, *facts.ip_addresses]
    if set(wanted) == set(got) and not facts.other_names:
        return None
    from lacme.core.text import escape_text

    changes = [f"+{n}" for n in wanted if n not in got]
    changes += [f"-{escape_text(n, ascii_only=True)}" for n in got if n not in wanted]
    if facts.other_names:
        changes.append(f"-{facts.other_names} of another kind")
    return f"{NAMES_CHANGED} ({', '.join(changes)})"


def key_spki(key_path: str, stamp: str) -> str | None:
    """certificate-key's SubjectPublicKeyInfo, base64url; None (logged) when
    it cannot be read: building the CSR will say why."""
    memo = f"key {stamp}"
    if memo in _memo:
        return _memo[memo]  # type: ignore[return-value]  # only str or None is stored under "key "
    from lacme.core.errors import LacmeError
    from lacme.x509 import keys

    try:
        spki: str | None = b64url(keys.spki_der(keys.load_private_key(key_path).public_key()))
    except LacmeError as exc:
        log.debug("%s: cannot compare the key with the certificate: %s", key_path, exc)
        spki = None
    _memo[memo] = spki
    return spki


def verifies(section: CertSection, path: str, facts: CertificateFacts, cafile: str,
             cafile_stamp: str) -> bool | None:
    """Whether the chain at ``path`` verifies to ``cafile`` for the section's
    names at a moment of the leaf's validity (expiry is decided elsewhere);
    None when that cannot be known (CAfile or the chain unreadable)."""
    memo = f"ca {path} {cafile_check(facts, cafile_stamp)}"
    if memo in _memo:
        return _memo[memo]  # type: ignore[return-value]  # only bool or None is stored under "ca "
    import time
    from datetime import UTC, datetime

    from lacme.core.errors import CertificateError
    from lacme.x509 import chain as x509

    result: bool | None
    try:
        x509.load_roots(cafile)
        with open(path, "rb") as fh:
            chain = x509.parse_chain(fh.read())
    except (CertificateError, OSError) as exc:
        log.debug("[%s] cannot check %s against %s: %s", section.name, path, cafile, exc)
        result = None
    else:
        moment = min(max(time.time(), facts.not_before.timestamp()), facts.not_after.timestamp())
        try:
            x509.verify_chain(chain, section.names, cafile, datetime.fromtimestamp(moment, UTC),
                              section.ip_addresses)
            result = True
        except CertificateError as exc:
            log.debug("[%s] %s", section.name, exc)
            result = False
    _memo[memo] = result
    return result


def stamps_only(section: CertSection, entry: Entry) -> Drift:
    """No certificate installed: only the stats that the installation of the
    new one records (taken before the key is read and the chain verified)."""
    cafile = cafile_of(section) if section.certificate_chain else None
    return Drift(None, entry, key_stamp=file_stamp(section.certificate_key),
                 cafile_stamp=file_stamp(cafile) if cafile else None)


def installed(entry: Entry, drift: Drift | None, facts: CertificateFacts) -> Entry:
    """``entry`` of a certificate that lacme just verified and installed: its
    key is certificate-key's (the CSR's) and its chain verified to CAfile."""
    if drift is None:
        return entry
    if drift.key_stamp is not None:
        entry = replace(entry, key_file=drift.key_stamp, key_spki=b64url(facts.spki))
    if drift.cafile_stamp is not None:
        entry = replace(entry, cafile_check=cafile_check(facts, drift.cafile_stamp), cafile_ok=True)
    return entry


def drift_reason(section: CertSection, path: str, facts: CertificateFacts | None,
                 entry: Entry | None) -> str | None:
    """For ``lacme status``: why the installed certificate would be renewed
    at once, or None (nothing is saved)."""
    if facts is None:
        return None
    from lacme.master.state import Entry

    return check_drift(section, path, facts, entry or Entry(section.name, path)).reason
