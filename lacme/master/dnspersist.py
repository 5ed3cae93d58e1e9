"""The dns-persist command: the dns-persist-01 TXT records of the account.

Run by the master (root).  For each section (the named ones, else those
with ``challenge = dns-persist-01``) the client finds the account URL and
the CA's issuer domain name (``lacme.client.commands.serve_dns_persist``);
the master prints one record per name, ``_validation-persist.<name>`` with
``<issuer>; accounturi=<account>`` and ``; policy=wildcard`` where the
section has the wildcard of that name (draft-ietf-acme-dns-persist; the
format is ``lacme.protocol.dns01``'s).  ``--publish`` writes them once
through lacme-dns; they stay until removed by hand, and renewals then
write nothing to DNS.
"""

from __future__ import annotations

import logging
import sys

from lacme.config.master import MasterConfig
from lacme.config.specifiers import Identity
from lacme.core.errors import EXIT_FAILURE, EXIT_OK, UsageError
from lacme.core.text import escape_text
from lacme.master.plan import load_sections
from lacme.protocol import dns01

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse

    from lacme.config.certs import CertSection


def persist_records(section: CertSection, issuer: str, account: str) -> list[tuple[str, str]]:
    """One record per base name; the wildcard policy where ``*.name`` is ordered."""
    names = list(section.names)
    bases = dict.fromkeys(dns01.base_name(n) for n in names)
    return [(dns01.persist_name(base),
             dns01.persist_value(issuer, account, wildcard=f"*.{base}" in names))
            for base in bases]


def dns_persist(cfg: MasterConfig, args: argparse.Namespace, ident: Identity) -> int:
    from lacme.master.run import ClientSession

    sections = load_sections(cfg, args, ident)
    chosen = list(args.section) or sorted(n for n, s in sections.items()
                                          if s.challenge == "dns-persist-01")
    unknown = [n for n in chosen if n not in sections]
    if unknown:
        raise UsageError(f"no such section: {', '.join(f'[{n}]' for n in unknown)}")
    if not chosen:
        raise UsageError("no section has challenge = dns-persist-01 (name the sections)")
    names = [n for sid in chosen for n in sections[sid].names] if args.publish else []
    rv = EXIT_OK
    with ClientSession(cfg, debug=args.debug, dns_names=names) as session:
        results = session.dns_persist([(sid, sections[sid].names) for sid in chosen])
        for sid in chosen:
            info = results[sid]
            if not isinstance(info, dict):
                log_failure(sid, str(info))
                rv = EXIT_FAILURE
                continue
            records = persist_records(sections[sid], str(info.get("issuer", "")),
                                      str(info.get("account", "")))
            for name, value in records:
                sys.stdout.write(f'{name}. IN TXT "{escape_text(value)}"\n')
            sys.stdout.flush()
            if args.publish and session.dns is not None:
                ok, message = session.dns.publish(records, persistent=True)
                if not ok:
                    log_failure(sid, f"cannot publish: {message}")
                    rv = EXIT_FAILURE
    return rv


def log_failure(sid: str, message: str) -> None:
    logging.getLogger("lacme").error("[%s] %s", sid, message, extra={"LACME_SECTION": sid})
