"""lacme-accountd: the account key holder, signing over the accountd wire protocol.

Runs as whichever user owns the account key (never needs root), possibly on
another host behind ssh.  It loads the key (a PEM file, or one decrypted by
gpg: ``keys``), then serves the protocol of ``lacme.protocol.wire`` on
stdin/stdout (``--stdio``), on descriptors handed over with sd_listen_fds(3)
(a listening socket: accept loop; a connection: serve it and exit), or on a
UNIX socket it binds itself (``server``).  Only RFC 8555 section 6.2 signing
inputs for this key (and, with ``--origin``, for one CA) are signed: see
``wire.parse_sign_request``; and only those that the connection's scope and
the policy (``--operations``, ``--names``, ``--require-scope``) allow: see
``lacme.accountd.policy``.  This module is the program: the command line
over the configuration file, logging, and the exit code.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from typing import NoReturn

from lacme.accountd.keys import Signer, load_account_key, load_mac_key
from lacme.accountd.policy import Policy
from lacme.accountd.server import NAME, Waiter, logger, run_bound, run_inherited, run_stdio
from lacme.config import specifiers
from lacme.config.accountd import load_accountd_config, parse_names, parse_operations, parse_origin
from lacme.config.defaults import DEFAULT_ACCOUNTD_CONFIG
from lacme.config.ini import check_privkey, expand_specifiers
from lacme.core import descriptors, log
from lacme.core.cli import ArgumentParser
from lacme.core.errors import ConfigError, LacmeError
from lacme.core.record import Record
from lacme.protocol import eab, wire

DEFAULT_SOCKET = "%t/S.lacme"
DEFAULT_GPG = "gpg --quiet"
EAB_CREDENTIAL = "eab-hmac-key"  # the MAC key's credential name in systemd mode


# ---------------------------------------------------------------------------
# Settings: command line over configuration file

class Settings(Record):
    privkey: str
    gpg: str
    socket: str | None  # None with --stdio or inherited descriptors
    logfile: str | None
    keyid: str | None
    quiet: bool
    debug: bool
    stdio: bool
    origin: str | None  # --origin or the configuration's: wins over any other
    fallback_origin: str | None  # the spawning master's environment (a scope replaces it)
    policy: Policy
    eab_kid: str | None = None
    eab_hmac_key: str | None = None  # a file holding the base64url MAC key
    eab_alg: str = eab.DEFAULT_ALGORITHM
    new_privkey: str | None = None  # an account key rollover's new key


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = ArgumentParser(prog=NAME, description="Hold an ACME account key and sign requests for lacme.")
    p.add_argument("--config", metavar="FILE",
                   help=f"configuration file (default {DEFAULT_ACCOUNTD_CONFIG.replace('%', '%%')})")
    p.add_argument("--privkey", metavar="file:PATH|gpg:PATH", help="the account key")
    p.add_argument("--socket", metavar="PATH",
                   help=f"UNIX socket to bind (default {DEFAULT_SOCKET.replace('%', '%%')})")
    p.add_argument("--stdio", action="store_true", help="serve one connection on stdin/stdout")
    p.add_argument("--origin", metavar="URL", help="sign only requests for this https origin (the CA's)")
    p.add_argument("--operations", metavar="LIST",
                   help="sign only these operations (newOrder, newAccount, updateAccount, "
                        "deactivateAccount, revokeCert, keyChange; or none)")
    p.add_argument("--names", metavar="LIST",
                   help='sign orders only for these names (".example.org": any name under it)')
    p.add_argument("--require-scope", action="store_true", default=None,
                   help="refuse a connection whose first line is not the master's scope")
    p.add_argument("--new-privkey", metavar="file:PATH|gpg:PATH",
                   help="account key rollover: the new key, which signs only keyChange's inner "
                   "JWS and the account lookup")
    p.add_argument("--eab-kid", metavar="KID",
                   help="External Account Binding: the key identifier the CA gave")
    p.add_argument("--eab-hmac-key", metavar="FILE",
                   help="External Account Binding: the file holding the CA's MAC key (base64url)")
    p.add_argument("-q", "--quiet", action="store_true", default=None, help="do not log signatures on stderr")
    p.add_argument("--debug", action="store_true", help="debug output")
    return p.parse_args(argv)


def load_settings(args: argparse.Namespace) -> Settings:
    """Merge the command line (which wins) and the configuration file."""
    ident = specifiers.Identity.current()
    path = None if args.config is None else expand_specifiers(args.config, ident, "--config")
    cfg = load_accountd_config(path, ident)
    privkey = args.privkey or cfg.privkey
    if not privkey:
        raise ConfigError(f"{path or 'lacme-accountd.conf'}: privkey is not set (nor --privkey)")
    if args.privkey:
        check_privkey(args.privkey, "--privkey")
    # The CA origin lacme passes when it spawns accountd (fork mode).  An
    # environment variable, not an option: Debian's lacme-accountd ignores it
    # where it would refuse an unknown option.  --origin and the configuration
    # file's origin win over it.
    # A master's scope carries the origin too (ssh does not forward this
    # variable), and replaces it, never the pin of the two settings.
    origin = parse_origin(args.origin, "--origin") if args.origin else cfg.origin
    fallback = None
    if origin is None and os.environ.get(wire.ORIGIN_VARIABLE):
        fallback = parse_origin(os.environ[wire.ORIGIN_VARIABLE], wire.ORIGIN_VARIABLE)
    policy = Policy(
        operations=(parse_operations(args.operations, "--operations") if args.operations
                    else cfg.operations),
        names=parse_names(args.names, "--names") if args.names else (cfg.names or ()),
        require_scope=bool(args.require_scope if args.require_scope is not None
                           else cfg.require_scope),
    )

    def expanded(value: str | None, loc: str) -> str | None:
        return None if value is None else expand_specifiers(value, ident, loc)

    eab_kid = args.eab_kid or cfg.eab_kid
    eab_key = expanded(args.eab_hmac_key, "--eab-hmac-key") if args.eab_hmac_key else expanded(
        cfg.eab_hmac_key, "eab-hmac-key")
    if eab_kid and not eab_key and os.environ.get("CREDENTIALS_DIRECTORY"):
        # systemd mode: the MAC key is the credential of that name (docs/systemd.md)
        eab_key = os.path.join(os.environ["CREDENTIALS_DIRECTORY"], EAB_CREDENTIAL)
    if bool(eab_kid) != bool(eab_key):
        missing = "eab-hmac-key (nor --eab-hmac-key)" if eab_kid else "eab-kid (nor --eab-kid)"
        raise ConfigError(f"{path or 'lacme-accountd.conf'}: External Account Binding needs "
                          f"{missing}")
    new_privkey = None
    if args.new_privkey:
        check_privkey(args.new_privkey, "--new-privkey")
        new_kind, _, new_path = args.new_privkey.partition(":")
        new_privkey = f"{new_kind}:{expanded(new_path, '--new-privkey')}"
    kind, _, key_path = privkey.partition(":")
    socket_path = None if args.stdio else (args.socket or cfg.socket or DEFAULT_SOCKET)
    return Settings(
        privkey=f"{kind}:{expanded(key_path, 'privkey')}",
        gpg=cfg.gpg or DEFAULT_GPG,
        socket=socket_path,  # expanded by run(), only when there is a socket to bind
        logfile=expanded(cfg.logfile, "logfile"),
        keyid=cfg.keyid or None,
        quiet=bool(args.quiet if args.quiet is not None else cfg.quiet),
        debug=args.debug,
        stdio=args.stdio,
        origin=origin,
        fallback_origin=fallback,
        policy=policy,
        eab_kid=eab_kid or None,
        eab_hmac_key=eab_key or None,
        eab_alg=cfg.eab_alg or eab.DEFAULT_ALGORITHM,
        new_privkey=new_privkey,
    )


# ---------------------------------------------------------------------------
# Logging: stderr (or journald) plus the optional log file

class _LogfileFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        prefix = "" if record.levelno < logging.WARNING else record.levelname.lower() + ": "
        stamp = time.strftime("%Y-%m-%d %H:%M:%S%z", time.localtime(record.created))
        return f"[{stamp}] {prefix}{record.getMessage()}"


def setup_logging(quiet: bool, debug: bool, logfile: str | None) -> None:
    """stderr shows signatures unless quiet; the log file always has them."""
    log.setup(NAME, quiet=quiet, debug=debug)
    root = logging.getLogger()
    stderr_level = logging.DEBUG if debug else (logging.INFO if quiet else log.VERBOSE)
    for handler in root.handlers:
        handler.setLevel(stderr_level)
    root.setLevel(min(stderr_level, log.VERBOSE))
    if logfile:
        try:
            handler = logging.FileHandler(logfile, mode="a", encoding="utf-8")
        except OSError as exc:
            raise LacmeError(f"{logfile}: {exc.strerror or exc}") from None
        handler.setFormatter(_LogfileFormatter())
        handler.setLevel(min(stderr_level, log.VERBOSE))
        root.addHandler(handler)


# ---------------------------------------------------------------------------
# The program

def run(settings: Settings) -> None:
    """Load the key, then serve on stdio, inherited descriptors or a bound socket."""
    mac = None
    if settings.eab_kid and settings.eab_hmac_key:
        mac = load_mac_key(settings.eab_hmac_key, settings.eab_kid, settings.eab_alg, "eab-hmac-key")
    key = load_account_key(settings.privkey, settings.gpg)
    new_key = load_account_key(settings.new_privkey, settings.gpg) if settings.new_privkey else None
    if new_key is not None and new_key.jwk == key.jwk:
        raise ConfigError("--new-privkey: the new key is the current account key")
    signer = Signer(key, settings.keyid, settings.origin, mac, new_key, settings.fallback_origin,
                    settings.policy)
    logger.debug("account key: %s, thumbprint %s", key.alg, key.thumbprint)
    waiter = Waiter()  # from here on SIGINT/SIGTERM end the program cleanly
    try:
        if settings.stdio:
            run_stdio(signer, waiter)
            return
        fds = descriptors.inherited_fds()
        if fds:
            run_inherited(fds, signer, waiter)
            return
        assert settings.socket is not None  # expanded only now: %t may be undefined with --stdio
        path = expand_specifiers(settings.socket, specifiers.Identity.current(), "socket")
        run_bound(path, signer, waiter)
    finally:
        waiter.close()


def main(argv: list[str] | None = None) -> NoReturn:
    """The program: exits with ``run_program``'s code, without interpreter teardown."""
    code = run_program(argv)
    log.exit_now(code)


def run_program(argv: list[str] | None = None) -> int:
    """Parse the settings, load the key, serve; the exit code."""
    debug = "--debug" in (sys.argv[1:] if argv is None else argv)
    log.setup(NAME, debug=debug)
    try:
        args = parse_args(argv)
        settings = load_settings(args)
        setup_logging(settings.quiet, settings.debug, settings.logfile)
        run(settings)
    except LacmeError as exc:
        # named: a spawned accountd shares the master's stderr, and the master
        # leaves this line as the only one about the failure (lacme.master.run)
        logger.error("%s: %s", NAME, exc, exc_info=debug)
        return exc.exit_code
    except KeyboardInterrupt:  # before serving, e.g. at gpg's passphrase prompt
        return 130
    return 0
