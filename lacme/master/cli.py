"""The ``lacme`` command line, read by argparse.

Run by the master (root, or any user for ``status``) when the quick reader
of ``lacme.master.main`` does not answer: help, usage errors,
abbreviations, and every command but the common newOrder forms.  The
revocation reasons are RFC 5280 5.3.1's CRLReason codes.
"""

from __future__ import annotations

import argparse

from lacme import __version__
from lacme.config.defaults import DEFAULT_MASTER_CONFIG, NEW_ORDER_COMMANDS


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lacme",
        description="Privilege-separated ACME client (master process).",
        epilog="Exit status: 0 success, 1 a section, file or request failed, "
        "2 usage or configuration error.",
    )
    p.add_argument("--config", metavar="FILENAME",
                   help="default: " + DEFAULT_MASTER_CONFIG.replace("%", "%%"))
    p.add_argument("--socket", metavar="PATH", help="lacme-accountd socket (ignores [accountd])")
    p.add_argument("-q", "--quiet", action="store_true", help="be quiet")
    p.add_argument("--debug", action="store_true", help="turn on debug mode")
    p.add_argument("--version", action="version", version=f"lacme {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    acc = sub.add_parser("account", help="register, update or deactivate the account")
    acc.add_argument("--tos-agreed", action="store_true", help="agree to the terms of service")
    acc.add_argument("--register", action="store_true", help="register the account key")
    acc.add_argument("--deactivate", action="store_true", help="deactivate the account")
    acc.add_argument("--rollover", action="store_true",
                     help="replace the account key with --new-privkey (RFC 8555 7.3.5)")
    acc.add_argument("--new-privkey", metavar="file:PATH|gpg:PATH", default="",
                     help="with --rollover: the new account key, read by lacme-accountd")
    acc.add_argument("--eab-kid", metavar="KID", default="",
                     help="with --register: bind to this external account (its MAC key is "
                     "lacme-accountd's)")
    acc.add_argument("contact", nargs="*", metavar="CONTACT", help="e.g. mailto:admin@example.com")

    new = sub.add_parser(NEW_ORDER_COMMANDS[0], aliases=list(NEW_ORDER_COMMANDS[1:]),
                         help="issue or renew certificates")
    new.add_argument("--config-certs", action="append", metavar="FILE",
                     help="certificate configuration file or directory (repeatable)")
    grp = new.add_mutually_exclusive_group()
    grp.add_argument("--min-days", type=int, metavar="INT",
                     help="renew when fewer days than this remain")
    grp.add_argument("--force", action="store_true", help="renew regardless (= --min-days=-1)")
    new.add_argument("section", nargs="*", metavar="SECTION")

    rev = sub.add_parser("revokeCert", aliases=["revoke-cert"], help="revoke certificates")
    rev.add_argument("--reason", type=parse_reason, metavar="REASON",
                     help="RFC 5280 reason: a code or a name (" + ", ".join(REASONS) + ")")
    rev.add_argument("file", nargs="+", metavar="FILE")

    ph = sub.add_parser("placeholder", help="write a self-signed placeholder where a section "
                        "has no certificate", description="For each section whose certificate "
                        "and certificate-chain files are absent, write a self-signed certificate "
                        "of its certificate-key there, so that a web server can start; newOrder "
                        "replaces it at once.  Existing files are never touched.")
    ph.add_argument("--config-certs", action="append", metavar="FILE",
                    help="certificate configuration file or directory (repeatable)")
    ph.add_argument("section", nargs="*", metavar="SECTION")

    st = sub.add_parser("status", help="show the certificates and their renewal state",
                        description="Exit status: 0 all good, 1 a certificate is missing, "
                        "expired, near expiry or its last renewal failed, 2 usage error.")
    st.add_argument("--config-certs", action="append", metavar="FILE",
                    help="certificate configuration file or directory (repeatable)")
    st.add_argument("--json", action="store_true", help="JSON on stdout")
    st.add_argument("--prometheus", metavar="FILE",
                    help="also write the facts as a Prometheus textfile (atomically)")
    st.add_argument("section", nargs="*", metavar="SECTION")
    return p


# RFC 5280 5.3.1 CRLReason (7 is unused).
REASONS = {
    "unspecified": 0, "keyCompromise": 1, "cACompromise": 2, "affiliationChanged": 3,
    "superseded": 4, "cessationOfOperation": 5, "certificateHold": 6, "removeFromCRL": 8,
    "privilegeWithdrawn": 9, "aACompromise": 10,
}


def parse_reason(text: str) -> int:
    """A revocation reason by code or by name (case-insensitive)."""
    if text.isdigit() and int(text) in REASONS.values():
        return int(text)
    for name, code in REASONS.items():
        if name.lower() == text.lower():
            return code
    raise argparse.ArgumentTypeError(f"unknown revocation reason {text!r}")
