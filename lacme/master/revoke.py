"""The revokeCert command: revoke certificates (RFC 8555 7.6).

Run by the master (root).  It reads each certificate file, hands the
client the leaf's DER and the thumbprint of its public key (so that an
accountd serving the certificate's own key signs with it, as RFC 8555 7.6
allows), with an RFC 5280 5.3.1 reason.  A revoked certificate that a
section manages gets its renewalInfo (RFC 9773) asked on the next run.
"""

from __future__ import annotations

import logging
import os

from lacme.config.master import MasterConfig
from lacme.core.errors import EXIT_FAILURE, EXIT_OK, LacmeError
from lacme.core.record import replace
from lacme.master.run import ClientSession
from lacme.master.state import StateStore, default_directory

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse

log = logging.getLogger("lacme")


def revoke(cfg: MasterConfig, args: argparse.Namespace) -> int:
    from lacme.x509 import chain as x509

    rv = EXIT_OK
    certificates: list[tuple[str, bytes, str]] = []
    for path in args.file:
        try:
            with open(path, "rb") as fh:
                chain = x509.parse_chain(fh.read())
            der = x509.chain_der(chain)[0]
            certificates.append((path, der, x509.public_key_thumbprint(der)))
        except (OSError, LacmeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            log.error("%s: %s", path, reason)
            rv = EXIT_FAILURE
    if not certificates:
        return rv
    with ClientSession(cfg, debug=args.debug, challenges=False) as session:
        results = session.revoke(certificates, reason=args.reason)
    revoked = []
    for path, outcome in results.items():
        if outcome is True:
            log.info("%s: revoked", path)
            revoked.append(os.path.realpath(path))
        else:  # said once: by accountd when it refused, else here
            said = session.said_by_accountd(str(outcome)) is not None
            (log.debug if said else log.error)("%s: %s", path, outcome)
            rv = EXIT_FAILURE
    if revoked:
        recheck_now(cfg, revoked)
    return rv


def recheck_now(cfg: MasterConfig, paths: list[str]) -> None:
    """Revoked certificates that a section manages: ask ARI on the next run
    (it answers with a window in the past) instead of after Retry-After."""
    store = StateStore(default_directory(cfg.state_directory))
    hits = [replace(e, next_check=None) for e in store.load().values()
            if os.path.realpath(e.path) in paths]
    if hits:
        store.save(hits)
