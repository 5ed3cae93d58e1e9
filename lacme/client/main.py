"""lacme-client: the unprivileged ACME client program.

Runs as an unprivileged user (``[client] user``) with no write access
anywhere: the master spawns it (or systemd starts it per connection) with
one inherited descriptor, the control channel (``lacme.protocol.control``).  The
first message, ``hello``, carries the settings and the accountd connection
(SCM_RIGHTS), over which every JWS is signed (``lacme.client.link``).  It then
serves exactly one command with one ACME session (``lacme.client.acme``):
orders (``lacme.client.flow``: RFC 8555 7.4, 7.5), or account, revoke and
renewal_info (``lacme.client.commands``: RFC 8555 7.3, 7.6, RFC 9773), answers,
says ``done`` and exits.  Challenge files (RFC 8555 8.3) are written by the
master on request.
"""

from __future__ import annotations

import argparse
import logging
import socket
import sys
import time
from typing import Any, NoReturn

from lacme import __version__
from lacme.client.commands import serve_account, serve_renewal_info, serve_revoke
from lacme.client.flow import serve_orders
from lacme.client.link import AccountdSigner, Context, ControlLink
from lacme.config.defaults import DEFAULT_SERVER, DEFAULT_TIMEOUT
from lacme.core import descriptors, log
from lacme.core.cli import ArgumentParser
from lacme.core.errors import LacmeError, ProtocolError, ReportedError, UsageError
from lacme.core.record import Record
from lacme.core.text import escape_text
from lacme.protocol import control

NAME = "lacme-client"
COMMANDS = frozenset({"account", "orders", "revoke", "renewal_info"})
HANDLERS = {"account": serve_account, "orders": serve_orders, "revoke": serve_revoke,
            "renewal_info": serve_renewal_info}

logger = logging.getLogger(NAME)


# ---------------------------------------------------------------------------
# Settings from hello


class ClientSettings(Record):
    server: str
    timeout: float
    verify: bool | str
    ssl_version: str | None
    ssl_cipher_list: str | None


def parse_settings(raw: Any) -> ClientSettings:
    """The [client] settings the master sends in hello (already validated there)."""
    if not isinstance(raw, dict):
        raise ProtocolError("control channel: hello settings is not an object")
    server = raw.get("server") or DEFAULT_SERVER
    try:
        timeout = float(raw.get("timeout") or DEFAULT_TIMEOUT)
    except (TypeError, ValueError):
        raise ProtocolError("control channel: hello timeout is not a number") from None
    verify_flag = raw.get("SSL_verify", True)
    if isinstance(verify_flag, str):
        verify_flag = verify_flag.strip().lower() not in ("no", "false", "off", "0")
    ca_file = raw.get("SSL_ca_file")
    verify: bool | str = bool(verify_flag)
    if verify is True and isinstance(ca_file, str) and ca_file:
        verify = ca_file
    return ClientSettings(
        server=str(server), timeout=timeout, verify=verify,
        ssl_version=raw.get("SSL_version") or None,
        ssl_cipher_list=raw.get("SSL_cipher_list") or None,
    )


# ---------------------------------------------------------------------------
# The program


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = ArgumentParser(
        prog=NAME,
        description="The unprivileged ACME client of lacme.  Started by lacme (or systemd) "
        "with its control channel as the one inherited descriptor (sd_listen_fds).",
        epilog="Exit status: 0 success, 1 a request failed, 2 usage error.",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="be quiet")
    p.add_argument("--debug", action="store_true", help="turn on debug mode")
    p.add_argument("--version", action="version", version=f"{NAME} {__version__}")
    return p.parse_args(argv)


def control_socket() -> socket.socket:
    fds = descriptors.inherited_fds()
    if len(fds) != 1:
        raise UsageError(f"{NAME}: expects exactly one inherited descriptor, the control channel "
                         f"(got {len(fds)}); it is started by lacme")
    return socket.socket(fileno=fds[0].fd)


def receive_hello(channel: descriptors.Channel) -> tuple[dict, socket.socket]:
    line, fd = channel.recv_line(control.MAX_LINE, want_fd=True)
    if line is None:
        if fd is not None:
            socket.socket(fileno=fd).close()
        raise ProtocolError("control channel: closed before hello")
    msg = control.decode_message(line, frozenset({"hello"}))
    if fd is None:
        raise ProtocolError("control channel: hello without the accountd connection")
    accountd = socket.socket(fileno=fd)
    if msg.get("version") != control.VERSION:
        accountd.close()
        raise ProtocolError(f"control channel: unsupported version {msg.get('version')!r}")
    return msg, accountd


def receive_command(channel: descriptors.Channel) -> dict:
    line, _fd = channel.recv_line(control.MAX_LINE)
    if line is None:
        raise ProtocolError("control channel: closed by the master before a command")
    return control.decode_message(line, COMMANDS)


def drain_command(channel: descriptors.Channel) -> None:
    """Read the command we will not serve: closing a UNIX socket with unread
    data resets it, and the master would lose our error message."""
    try:
        channel.sock.settimeout(5)
        channel.recv_line(control.MAX_LINE)
    except OSError:
        pass


def run(channel: descriptors.Channel) -> int:
    """hello, one command, done.  Returns the exit code."""
    hello, accountd_sock = receive_hello(channel)
    if hello.get("debug"):
        logging.getLogger().setLevel(logging.DEBUG)
    link = ControlLink(channel)
    try:
        settings = parse_settings(hello.get("settings"))
        # Every command needs the ACME session module, whose import (requests)
        # is most of our start-up: do it now, while lacme-accountd is still
        # loading the key it greets with, rather than after the greeting.
        from lacme.client.acme import session  # noqa: F401 - imported for its cost, now

        signer = AccountdSigner(accountd_sock, settings.timeout)
    except LacmeError as exc:
        accountd_sock.close()
        link.send("error", message=str(exc))  # the master reads it after its command
        drain_command(channel)
        raise reported(exc) from exc
    command = receive_command(channel)
    try:
        ok = serve_command(command, settings, signer, link)
    finally:
        signer.close()
    if signer.broken is not None:  # said in the failed/error messages, printed by the master
        logger.debug("%s", signer.broken)
    try:
        if link.closed.is_set():
            raise ProtocolError(link.close_reason)
        link.send("done")
    except ProtocolError as exc:
        if link.reported:  # the master has our error line and may have stopped listening
            raise reported(exc) from exc
        raise
    return 0 if ok else 1


def reported(exc: LacmeError) -> ReportedError:
    """``exc``, known to the master already (it prints the line), with its exit code."""
    err = ReportedError(str(exc))
    err.exit_code = exc.exit_code
    return err


def serve_command(command: dict, settings: ClientSettings, signer: AccountdSigner,
                  link: ControlLink) -> bool:
    from lacme.client.acme.session import AcmeSession  # requests is costly to import: only now

    orders = command.get("orders") if command["type"] == "orders" else None
    try:
        session = AcmeSession(
            settings.server, signer,
            deadline=time.monotonic() + settings.timeout,
            verify=settings.verify,
            ssl_version=settings.ssl_version,
            ssl_cipher_list=settings.ssl_cipher_list,
            user_agent=f"{NAME}/{__version__}",
            pool_size=max(10, len(orders) if isinstance(orders, list) else 0),
        )
    except ValueError as exc:
        link.send("error", message=f"[client] {exc}")
        return False
    link.on_close(session.cancel)
    session.http.on_date = lambda date, url: link.send("clock", date=date, url=url)
    link.start_reader()
    try:
        return HANDLERS[command["type"]](Context(session, link, signer), command)
    except LacmeError as exc:
        if link.closed.is_set():
            raise ProtocolError(link.close_reason) from None
        message = str(signer.broken or exc)
        logger.debug("%s failed: %s", command["type"], message)
        link.send("error", message=message)
        return False
    finally:
        session.close()


def main(argv: list[str] | None = None) -> NoReturn:
    """The program: exits with ``run_program``'s code, without interpreter teardown."""
    code = run_program(argv)
    log.exit_now(code)


def run_program(argv: list[str] | None = None) -> int:
    """Parse the arguments, serve one command; the exit code."""
    try:
        args = parse_args(argv)
    except UsageError as exc:
        print(exc, file=sys.stderr)  # noqa: T201 - one line, before logging is set up
        return exc.exit_code
    log.setup(NAME, quiet=args.quiet, debug=args.debug)
    try:
        channel = descriptors.Channel(control_socket())
        return run(channel)
    except ReportedError as exc:  # the master prints it: one line, once
        logger.debug("%s", exc, exc_info=args.debug)
        return exc.exit_code
    except LacmeError as exc:
        logger.error("%s", exc, exc_info=args.debug)
        return exc.exit_code
    except KeyboardInterrupt:
        logger.error("interrupted")
        return 1
    except Exception as exc:  # whatever the CA sent: one line, no traceback
        logger.error("internal error: %s", escape_text(repr(exc)), exc_info=args.debug)
        return 1
