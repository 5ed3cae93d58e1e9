"""The placeholder command: a self-signed certificate where a section has none.

Run by the master (root), before the web server at boot
(``lacme-placeholder.service``, ordered before nginx.service and
apache2.service), or by hand.  For each section whose certificate and
certificate-chain files are both absent it writes a placeholder
(``lacme.x509.placeholder``) of the section's certificate-key to each of
them, so that a web server whose TLS site names them can start and proxy
the http-01 challenge (RFC 8555 8.3) of the first newOrder run, which
renews a placeholder at once (``lacme.master.drift``).  A file is only ever
created where none is (``lacme.core.atomic.create_file``: temporary file,
link(2), unlink), so a real certificate is never overwritten, not even by
a run racing a newOrder that installs one.  Nothing is contacted.
"""

from __future__ import annotations

import logging
import os

from lacme.config.certs import CertSection
from lacme.config.ini import where
from lacme.config.master import MasterConfig
from lacme.config.specifiers import Identity
from lacme.core.errors import EXIT_FAILURE, EXIT_OK, LacmeError, UsageError
from lacme.master.plan import load_sections

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse

log = logging.getLogger("lacme")


def placeholder(cfg: MasterConfig, args: argparse.Namespace, ident: Identity) -> int:
    """The placeholder command over the named sections (all by default)."""
    sections = load_sections(cfg, args, ident)
    names = list(args.section) if args.section else sorted(sections)
    unknown = [n for n in names if n not in sections]
    if unknown:
        raise UsageError(f"no such section: {', '.join(f'[{n}]' for n in unknown)}")
    rv = EXIT_OK
    for name in names:
        try:
            write_placeholder(sections[name])
        except LacmeError as exc:
            log.error("%s", exc, extra={"LACME_SECTION": name})
            rv = EXIT_FAILURE
    return rv


def write_placeholder(section: CertSection) -> bool:
    """Write the section's placeholder if it has no certificate file; True if written."""
    paths = [p for p in (section.certificate_chain, section.certificate) if p]
    present = [p for p in paths if os.path.lexists(p)]
    if present:
        log.debug("[%s] %s exists: no placeholder", section.name, present[0])
        return False
    from lacme.master.install import create_new_file
    from lacme.x509.keys import load_private_key
    from lacme.x509.placeholder import build_placeholder

    try:  # "PATH: no such file" and the like
        key = load_private_key(section.certificate_key)
    except LacmeError as exc:
        raise LacmeError(f"{where(section.source, section.name, 'certificate-key')}: {exc}"
                         " (a placeholder is made with it)") from None
    pem = build_placeholder(key, section.names, section.ip_addresses)
    try:
        written = [p for p in paths
                   if create_new_file(p, pem, mode=section.chmod, owner=section.chown)]
    except LacmeError as exc:
        raise LacmeError(f"[{section.name}] placeholder: {exc}") from None
    if written:
        log.info("[%s] wrote a self-signed placeholder to %s (newOrder replaces it)",
                 section.name, " and ".join(written), extra={"LACME_SECTION": section.name})
    return bool(written)
