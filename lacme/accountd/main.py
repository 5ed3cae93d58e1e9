"""lacme-accountd: the account key holder, signing over the accountd wire protocol.

Runs as whichever user owns the account key (never needs root), possibly on
another host behind ssh.  It loads the key (a PEM file, or one decrypted by
gpg), then serves the protocol of ``lacme.protocol.wire`` on stdin/stdout
(``--stdio``), on descriptors handed over with sd_listen_fds(3) (a listening
socket: accept loop; a connection: serve it and exit), or on a UNIX socket
it binds itself.  Only RFC 8555 section 6.2 signing inputs for this key (and,
with ``--origin``, for one CA) are signed: see ``wire.parse_sign_request``.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import math
import os
import select
import signal
import socket
import stat
import sys
import threading
import time
from typing import Any, BinaryIO, NoReturn

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from lacme.config import schema as config
from lacme.config import specifiers
from lacme.core import descriptors, log
from lacme.core.errors import ConfigError, LacmeError, UsageError
from lacme.core.record import Record
from lacme.protocol import jwk_keys, jws, wire

NAME = "lacme-accountd"
DEFAULT_SOCKET = "%t/S.lacme"
DEFAULT_GPG = "gpg --quiet"
LISTEN_BACKLOG = 16
# The CA origin lacme passes when it spawns accountd (fork mode).  An
# environment variable, not an option: Debian's lacme-accountd ignores it
# where it would refuse an unknown option.  --origin and the configuration
# file's origin win over it.

logger = logging.getLogger(NAME)


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
    origin: str | None


class _ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one line, exit code 2
        raise UsageError(f"{NAME}: {message} (try --help)")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = _ArgumentParser(prog=NAME, description="Hold an ACME account key and sign requests for lacme.")
    p.add_argument("--config", metavar="FILE", help="configuration file (default %%E/lacme/lacme-accountd.conf)")
    p.add_argument("--privkey", metavar="file:PATH|gpg:PATH", help="the account key")
    p.add_argument("--socket", metavar="PATH", help="UNIX socket to bind (default %%t/S.lacme)")
    p.add_argument("--stdio", action="store_true", help="serve one connection on stdin/stdout")
    p.add_argument("--origin", metavar="URL", help="sign only requests for this https origin (the CA's)")
    p.add_argument("-q", "--quiet", action="store_true", default=None, help="do not log signatures on stderr")
    p.add_argument("--debug", action="store_true", help="debug output")
    return p.parse_args(argv)


def load_settings(args: argparse.Namespace) -> Settings:
    """Merge the command line (which wins) and the configuration file."""
    ident = specifiers.Identity.current()
    path = None if args.config is None else config.expand_specifiers(args.config, ident, "--config")
    cfg = config.load_accountd_config(path, ident)
    privkey = args.privkey or cfg.privkey
    if not privkey:
        raise ConfigError(f"{path or 'lacme-accountd.conf'}: privkey is not set (nor --privkey)")
    if args.privkey:
        config.check_privkey(args.privkey, "--privkey")
    origin = config.parse_origin(args.origin, "--origin") if args.origin else cfg.origin
    if origin is None and os.environ.get(wire.ORIGIN_VARIABLE):
        origin = config.parse_origin(os.environ[wire.ORIGIN_VARIABLE], wire.ORIGIN_VARIABLE)

    def expanded(value: str | None, loc: str) -> str | None:
        return None if value is None else config.expand_specifiers(value, ident, loc)

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


def escape_control(text: str) -> str:
    """``text`` with control characters (C0, DEL, C1) as \\xNN, for one log line."""
    return "".join(f"\\x{ord(c):02x}" if ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 else c for c in text)


def show_request(req: wire.SignRequest) -> str:
    header = jws.b64u_decode(req.signing_input.split(b".", 1)[0]).decode("utf-8", "backslashreplace")
    payload = req.payload.decode("utf-8", "backslashreplace")
    return f"header={escape_control(header)} payload={escape_control(payload)}"


# ---------------------------------------------------------------------------
# The account key

class AccountKey(Record):
    """The private key and what the greeting says about it."""

    private_key: Any
    alg: str
    jwk: dict
    thumbprint: str

    def sign(self, signing_input: bytes) -> bytes:
        return jwk_keys.sign(self.private_key, self.alg, signing_input)


def read_key_material(privkey: str, gpg: str) -> tuple[str, bytes]:
    """(path, PEM octets) for ``file:PATH`` or ``gpg:PATH``."""
    kind, _, path = privkey.partition(":")
    if kind == "file":
        try:
            with open(path, "rb") as f:
                return path, f.read()
        except OSError as exc:
            raise LacmeError(f"{path}: {exc.strerror or exc}") from None
    if kind == "gpg":
        import subprocess  # noqa: PLC0415 - only for gpg: keys are mostly plain files

        command = gpg.split() + ["-o", "-", "--decrypt", "--", path]
        try:
            proc = subprocess.run(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, check=False)
        except OSError as exc:
            raise LacmeError(f"{path}: cannot run {command[0]}: {exc.strerror or exc}") from None
        if proc.returncode != 0:
            raise LacmeError(f"{path}: {command[0]} exited with status {proc.returncode}")
        return path, proc.stdout
    raise ConfigError(f"privkey: expected file:PATH or gpg:PATH: {privkey!r}")


def load_account_key(privkey: str, gpg: str) -> AccountKey:
    """Load and check the account key (RSA >= 2048 bits, EC P-256 or P-384)."""
    path, pem = read_key_material(privkey, gpg)
    try:
        # RSA: check_rsa_private_key replaces the library's check, which also
        # tests p and q for primality: most of a start with an RSA-2048 key
        key = load_pem_private_key(pem, None, unsafe_skip_rsa_key_validation=True)
    except TypeError:  # the PEM is encrypted and we gave no password
        raise LacmeError(f"{path}: encrypted PEM keys are not supported (use gpg:)") from None
    except (ValueError, UnsupportedAlgorithm):
        raise LacmeError(f"{path}: not a PEM private key") from None
    try:
        alg = jwk_keys.alg_for_key(key)
        if isinstance(key, rsa.RSAPrivateKey):
            check_rsa_private_key(key)
    except ValueError as exc:
        raise LacmeError(f"{path}: {exc}") from None
    jwk = jwk_keys.public_jwk(key.public_key())
    return AccountKey(key, alg, jwk, jws.jwk_thumbprint(jwk))


def check_rsa_private_key(key: rsa.RSAPrivateKey) -> None:
    """The private numbers agree with each other (RFC 8017 3.2, second form),
    as OpenSSL's RSA_check_key verifies them: n = p q, d e = 1 mod lcm(p-1, q-1),
    dP e = 1 mod p-1, dQ e = 1 mod q-1, qInv q = 1 mod p.  A damaged key file
    (a CRT signature computed with a wrong dP leaks p) fails here; whether p
    and q are prime is the key generator's business.  ValueError otherwise."""
    priv = key.private_numbers()
    p, q, d = priv.p, priv.q, priv.d
    e, n = priv.public_numbers.e, priv.public_numbers.n
    consistent = (
        p > 2 and q > 2 and p != q and p * q == n and e % 2 == 1
        and d * e % math.lcm(p - 1, q - 1) == 1
        and priv.dmp1 * e % (p - 1) == 1 and priv.dmq1 * e % (q - 1) == 1
        and priv.iqmp * q % p == 1
    )
    if not consistent:
        raise ValueError("inconsistent RSA private key (damaged?)")


# ---------------------------------------------------------------------------
# One connection

class Signer(Record):
    key: AccountKey
    keyid: str | None
    origin: str | None

    def greeting(self) -> bytes:
        return wire.encode_greeting(wire.Greeting(self.key.alg, self.key.thumbprint, self.keyid, self.key.jwk))


def serve_connection(rfile: BinaryIO, wfile: BinaryIO, signer: Signer, conn_id: str) -> None:
    """Greet, then sign request lines until EOF or the first refusal."""
    try:
        wfile.write(signer.greeting())
        wfile.flush()
        while True:
            line = rfile.readline(wire.MAX_LINE + 1)
            if not line:
                return
            try:
                req = wire.parse_sign_request(
                    line, alg=signer.key.alg, jwk=signer.key.jwk, kid=signer.keyid, origin=signer.origin)
            except wire.Refused as exc:
                logger.warning("[%s] NOSIGN %s", conn_id, exc.reason)
                return
            sig = signer.key.sign(req.signing_input)
            logger.log(log.VERBOSE, "[%s] SIGNED %s", conn_id, show_request(req))
            wfile.write(wire.encode_signature(sig))
            wfile.flush()
    except OSError as exc:
        logger.debug("[%s] connection error: %s", conn_id, exc)


def serve_socket(sock: socket.socket, signer: Signer, conn_id: str) -> None:
    """Serve one connected socket and close it."""
    logger.log(log.VERBOSE, "[%s] accepted new connection", conn_id)
    try:
        with sock, sock.makefile("rb") as rfile, sock.makefile("wb") as wfile:
            serve_connection(rfile, wfile, signer, conn_id)
    except OSError as exc:
        logger.debug("[%s] close: %s", conn_id, exc)
    logger.log(log.VERBOSE, "[%s] connection terminated", conn_id)


def accept_forever(listener: socket.socket, signer: Signer, counter: itertools.count) -> None:
    """Accept connections and serve each in a thread of its own."""
    while True:
        try:
            conn, _ = listener.accept()
        except OSError as exc:
            logger.debug("accept: %s", exc)
            return
        start_thread(serve_socket, conn, signer, str(next(counter)))


def start_thread(target: Any, *args: Any) -> threading.Thread:
    thread = threading.Thread(target=target, args=args, daemon=True)
    thread.start()
    return thread


# ---------------------------------------------------------------------------
# The main thread: waits for a stop signal or for the work to be done

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Waiter:
    """Where the main thread sleeps while threads serve.

    SIGINT/SIGTERM reach it through ``signal.set_wakeup_fd``: the C-level
    handler writes the signal number to a socket we select on, so a signal
    that arrives just before a blocking call is never lost (a Python handler
    raising an exception would only run once that call returns, and a signal
    taken by another thread would not interrupt it at all).  Workers that
    finish write DONE to the same socket.
    """

    DONE = 0xFF  # not a signal number

    def __init__(self) -> None:
        self._r, self._w = socket.socketpair()
        self._r.setblocking(False)
        self._w.setblocking(False)
        for signum in STOP_SIGNALS:
            signal.signal(signum, lambda _signum, _frame: None)
        signal.set_wakeup_fd(self._w.fileno(), warn_on_full_buffer=False)

    def done(self) -> None:
        """Called by a worker thread when it is finished."""
        try:
            self._w.send(bytes([self.DONE]))
        except OSError:
            pass

    def wait(self, workers: int | None = None) -> str | None:
        """The name of the stop signal, or None once ``workers`` have called done()."""
        remaining = workers
        while remaining is None or remaining > 0:
            select.select([self._r], [], [])
            try:
                data = self._r.recv(256)
            except BlockingIOError:
                continue
            for byte in data:
                if byte != self.DONE:
                    return signal.Signals(byte).name
                if remaining is not None:
                    remaining -= 1
        return None

    def close(self) -> None:
        signal.set_wakeup_fd(-1)
        self._r.close()
        self._w.close()


def run_in_thread(waiter: Waiter, target: Any, *args: Any) -> None:
    """``target(*args)`` in a thread that tells ``waiter`` when it is done."""

    def work() -> None:
        try:
            target(*args)
        finally:
            waiter.done()

    start_thread(work)


def notify_ready() -> None:
    if os.environ.get("NOTIFY_SOCKET"):
        from systemd import daemon  # noqa: PLC0415 - only under systemd

        daemon.notify("READY=1")


def serve_stdio(signer: Signer) -> None:
    with os.fdopen(0, "rb", closefd=False) as rfile, os.fdopen(1, "wb", closefd=False) as wfile:
        serve_connection(rfile, wfile, signer, str(os.getpid()))


def run_stdio(signer: Signer, waiter: Waiter) -> None:
    run_in_thread(waiter, serve_stdio, signer)
    stopped = waiter.wait(workers=1)
    if stopped:
        logger.debug("stopped by %s", stopped)


def run_inherited(fds: list[descriptors.InheritedFd], signer: Signer, waiter: Waiter) -> None:
    """Listening sockets: accept loops until a signal; connections: serve them, then exit."""
    counter = itertools.count()
    listeners = [fd for fd in fds if descriptors.is_listening(fd.fd)]
    connections = [fd for fd in fds if fd not in listeners]
    for fd in connections:
        run_in_thread(waiter, serve_socket, socket.socket(fileno=fd.fd), signer, str(next(counter)))
    for fd in listeners:
        start_thread(accept_forever, socket.socket(fileno=fd.fd), signer, counter)
    if listeners:
        notify_ready()
    stopped = waiter.wait(workers=None if listeners else len(connections))
    if stopped:
        logger.debug("stopped by %s", stopped)


def check_socket_path(path: str) -> None:
    """Refuse an existing path, or a parent directory others may write to."""
    parent = os.path.dirname(path) or "."
    try:
        st = os.stat(parent)
    except OSError as exc:
        raise LacmeError(f"{parent}: {exc.strerror or exc}") from None
    if st.st_mode & 0o022:
        raise LacmeError(f"{parent}: insecure permissions (writable by group or others), refusing to bind {path}")
    if os.path.lexists(path):
        raise LacmeError(f"{path}: already exists, refusing to bind")


def bind_socket(path: str) -> socket.socket:
    """A listening UNIX socket at ``path``, mode 0600."""
    check_socket_path(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(path)
    except OSError as exc:
        sock.close()
        raise LacmeError(f"{path}: bind: {exc.strerror or exc}") from None
    finally:
        os.umask(old)
    sock.listen(LISTEN_BACKLOG)
    return sock


def remove_socket(path: str, bound: os.stat_result) -> None:
    """Unlink ``path`` if it is still the socket we bound."""
    try:
        st = os.lstat(path)
        if stat.S_ISSOCK(st.st_mode) and (st.st_dev, st.st_ino) == (bound.st_dev, bound.st_ino):
            os.unlink(path)
            logger.debug("removed %s", path)
    except OSError as exc:
        logger.error("%s: cannot remove: %s", path, exc.strerror or exc)


def run_bound(path: str, signer: Signer, waiter: Waiter) -> None:
    sock = bind_socket(path)
    bound = os.lstat(path)
    try:
        logger.log(log.VERBOSE, "listening on %s", path)
        start_thread(accept_forever, sock, signer, itertools.count())
        notify_ready()
        logger.debug("stopped by %s", waiter.wait())
    finally:
        remove_socket(path, bound)
        sock.close()


def run(settings: Settings) -> None:
    key = load_account_key(settings.privkey, settings.gpg)
    signer = Signer(key, settings.keyid, settings.origin)
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
        path = config.expand_specifiers(settings.socket, specifiers.Identity.current(), "socket")
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
        logger.error("%s", exc, exc_info=debug)
        return exc.exit_code
    except KeyboardInterrupt:  # before serving, e.g. at gpg's passphrase prompt
        return 130
    return 0
