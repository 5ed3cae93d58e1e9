"""Which bundle of trusted CAs an issued chain is verified against.

Run by the master (root), when it verifies an issued chain
(``lacme.x509.chain``) and when it checks, on every newOrder run, that the
installed certificate still comes from CAfile (``lacme.master.drift``):
the rule lives here, apart from cryptography, so that the no-op path can
name the file without importing it.  A section's ``CAfile`` unset means
lacme's own bundle if it is installed, else the system's trust store;
``CAfile =`` (empty) turns the chain check off.
"""

from __future__ import annotations

import os

DEFAULT_CAFILE = "/usr/share/lacme/ca-certificates.crt"
SYSTEM_CAFILE = "/etc/ssl/certs/ca-certificates.crt"


def default_cafile() -> str:
    """The bundle used when CAfile is unset: lacme's own, else the system's."""
    return DEFAULT_CAFILE if os.path.exists(DEFAULT_CAFILE) else SYSTEM_CAFILE
