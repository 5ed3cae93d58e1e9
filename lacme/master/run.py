"""The master's side of a run: the control conversation with the client.

Run by the master (root).  ``ClientSession`` sets a run up (the run lock,
the challenge directory and webservers for newOrder, accountd, the client:
``lacme.master.components``), hands the client the accountd connection
with SCM_RIGHTS in its ``hello``, and then speaks the control protocol
(``lacme.protocol.control``): it sends one command (account, orders,
renewal_info, revoke) and answers what the client asks while it works
(publish and unpublish the http-01 challenges of RFC 8555 8.3) until the
client says ``done``.

The children start without waiting for one another (three interpreters
starting side by side); the webservers' READY=1 is awaited only before the
first challenge is published, while a webserver that exits first is named
at once.  Everything it starts or creates is undone on exit, including on
errors and SIGINT/SIGTERM (turned into KeyboardInterrupt so that the same
cleanup runs): the channels are closed and the webservers signalled first,
then every child is reaped together (``lacme.master.children``).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack
from typing import Any

from lacme.config.defaults import run_deadline
from lacme.config.master import MasterConfig
from lacme.core.descriptors import Channel
from lacme.core.errors import LacmeError, ProtocolError, ReportedError
from lacme.master.challenges import ChallengeDirectory, PublishGate
from lacme.master.children import Children
from lacme.master.clock import ClockCheck
from lacme.master.components import (
    Webservers,
    open_accountd,
    open_challenges,
    said_by_accountd,
    shutdown_quietly,
    start_client,
)
from lacme.master.lock import lock_run, lock_wait
from lacme.master.scoping import (
    ClientFirst,
    account_scope,
    lookup_scope,
    orders_scope,
    profiles_of,
    revoke_scope,
    scope_connection,
)
from lacme.protocol import control
from lacme.protocol.jws import b64u_encode
from lacme.protocol.scope import Scope

TYPE_CHECKING = False
if TYPE_CHECKING:
    from lacme.master.dnsrelay import DnsRelay

log = logging.getLogger("lacme")

RATE_LIMITED = "urn:ietf:params:acme:error:rateLimited"  # RFC 8555 6.7


class _Terminated(KeyboardInterrupt):
    """SIGTERM, delivered like SIGINT so the same cleanup runs."""


def _raise_terminated(signum: int, _frame: Any) -> None:
    raise _Terminated(f"signal {signum}")


def install_signal_handlers(stack: ExitStack) -> None:
    """SIGTERM as KeyboardInterrupt, SIGPIPE ignored, until ``stack`` closes."""
    old = signal.signal(signal.SIGTERM, _raise_terminated)
    stack.callback(signal.signal, signal.SIGTERM, old)
    # Ignore SIGPIPE-style failures as errors, never as signals.
    old_pipe = signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    stack.callback(signal.signal, signal.SIGPIPE, old_pipe)


def client_settings(cfg: MasterConfig) -> dict[str, Any]:
    """The [client] settings that hello carries."""
    c = cfg.client
    return {
        "server": c.server,
        "timeout": c.timeout,
        "SSL_verify": c.ssl_verify,
        "SSL_version": c.ssl_version,
        "SSL_cipher_list": c.ssl_cipher_list,
        "SSL_ca_file": c.ssl_ca_file,
    }


class ClientSession:
    """One run of the ACME client, with its accountd and webservers."""

    def __init__(self, cfg: MasterConfig, *, debug: bool = False, challenges: bool = False,
                 locked: bool = False, dns_names: Iterable[str] = ()) -> None:
        """``locked``: the caller already holds the run lock (``lock_run``);
        ``dns_names``: names whose DNS records lacme-dns may write this run."""
        self.cfg = cfg
        self.locked = locked
        self.debug = debug
        self.with_challenges = challenges
        self.stack = ExitStack()
        self.challenges: ChallengeDirectory | None = None
        self.channel: Channel | None = None
        self.client_pid: int | None = None
        self.accountd_pid: int | None = None  # when this run spawned it
        self.aborting = False
        self.children = Children()
        self.webservers: Webservers | None = None  # until every one is ready
        self.accountd: socket.socket | None = None  # until handed to the client in hello
        self.gate: PublishGate | None = None  # known with accountd's greeting
        self.clock = ClockCheck()  # the CA's Date header against our clock
        self.rate_limited: dict[str, float] = {}  # order id -> the CA's Retry-After, seconds
        self.problems: dict[str, str] = {}  # order id -> the problem type (RFC 8555 6.7) it failed on
        self.dns_names = tuple(dns_names)
        self.dns: DnsRelay | None = None

    # ------------------------------------------------------------------ setup
    def __enter__(self) -> ClientSession:
        try:
            install_signal_handlers(self.stack)
            if not self.locked:
                self.stack.callback(os.close, lock_run(self.cfg.path, lock_wait(self.cfg)))
            # Runs after everything registered below: channels closed, then this.
            self.stack.callback(self._stop_children)
            if self.with_challenges:
                self.challenges, self.webservers = open_challenges(
                    self.cfg, self.children, self.stack, self.debug)
            if self.dns_names:
                self.dns = open_dns_relay(self)
            self.accountd, self.accountd_pid = open_accountd(self.cfg, self.children, self.debug)
            # Kept until the end and then shut down, so that accountd sees the
            # end at once instead of after the client's exit.
            self.stack.callback(shutdown_quietly, self.accountd)
            self.channel, self.client_pid = start_client(
                self.cfg, self.children, self.stack, self.debug)
        except BaseException as exc:
            self.aborting = isinstance(exc, KeyboardInterrupt)
            self.stack.close()
            raise
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        # Interrupted: children are told to stop at once, not waited for.
        self.aborting = self.aborting or (
            isinstance(exc_type, type) and issubclass(exc_type, KeyboardInterrupt))
        self.stack.close()

    def _hello(self, scope: Scope) -> None:
        """Scope accountd's connection, then hand it over in hello (lacme.master.scoping)."""
        assert self.channel is not None and self.accountd is not None
        try:
            greeting = scope_connection(self.accountd, scope, run_deadline(self.cfg.client.timeout),
                                        self.channel.sock)
        except ClientFirst:  # it failed: its error, or its end, is the run's one line
            list(self._messages())
            raise LacmeError("the ACME client spoke before hello") from None
        hello = control.encode_message("hello", version=control.VERSION,
                                       settings=client_settings(self.cfg), debug=self.debug)
        self.channel.send(hello, fd=self.accountd.fileno())
        self.gate = PublishGate(greeting.jwk_thumbprint if greeting else "")

    def cancel(self) -> None:
        """No command will be sent: the children are told to stop at the end."""
        self.aborting = True

    def _stop_children(self) -> None:
        self.children.stop(self.aborting)

    # ------------------------------------------------------------- commands
    def account(self, **fields: Any) -> dict[str, Any]:
        assert self.channel is not None
        self._hello(account_scope(self.cfg.client.server, fields))
        self.channel.send(control.encode_message("account", **fields))
        reply: dict[str, Any] | None = None
        for msg in self._messages():
            if msg["type"] == "account":
                reply = msg
            elif msg["type"] == "done":
                break
        if reply is None:
            raise LacmeError("the ACME client ended without an answer")
        return reply

    def order(
        self,
        orders: Iterable[tuple[str, Sequence[str | tuple[str, str]], bytes]],
        on_certificate: Callable[..., str | None],
        options: dict[str, dict[str, Any]] | None = None,
    ) -> dict[str, bool | str]:
        """Send every order at once; call ``on_certificate(id, pem)`` as
        chains arrive (it returns None, or why the chain was refused), with
        ``alternates=[pem, ...]`` when the client sent alternate chains.

        A name is a DNS name or a (type, value) identifier (RFC 8738 "ip");
        ``options`` maps an id to extra order fields (replaces, profile,
        alternates: see lacme.protocol.control)."""
        assert self.channel is not None
        payload = [
            {"id": sid, "identifiers": [{"type": n[0], "value": n[1]} if isinstance(n, tuple)
                                        else {"type": "dns", "value": n} for n in names],
             "csr": b64u_encode(csr), **(options or {}).get(sid, {})}
            for sid, names, csr in orders
        ]
        results: dict[str, bool | str] = {o["id"]: "no answer from the ACME client" for o in payload}
        self._hello(orders_scope(self.cfg.client.server, [o[1:] for o in orders], profiles_of(payload)))
        assert self.gate is not None
        self.gate.open([(i["type"], i["value"]) for o in payload for i in o["identifiers"]])
        self.channel.send(control.encode_message("orders", orders=payload))
        try:
            return self._order_messages(results, on_certificate)
        finally:
            self.gate.close()

    def _order_messages(self, results: dict[str, bool | str],
                        on_certificate: Callable[..., str | None]) -> dict[str, bool | str]:
        assert self.channel is not None
        for msg in self._messages():
            kind = msg["type"]
            if kind == "unpublish" and self.challenges is not None:
                self.challenges.unpublish(str(msg.get("token", "")))
            elif kind in ("dns_publish", "dns_unpublish"):
                from lacme.master.dnsrelay import answer_request

                answer_request(self.dns, self.channel, msg)
            elif kind == "certificate" and msg.get("id") in results:
                pem = str(msg.get("pem", ""))
                alternates = [a for a in msg.get("alternates") or [] if isinstance(a, str)]
                refused = (on_certificate(msg["id"], pem, alternates=alternates) if alternates
                           else on_certificate(msg["id"], pem))
                results[msg["id"]] = True if refused is None else refused
            elif kind == "failed" and msg.get("id") in results:
                results[msg["id"]] = str(msg.get("message", "failed"))
                note_problem(msg, self.problems, self.rate_limited)
            elif kind == "done":
                break
        return results

    def renewal_info(self, certificates: Sequence[tuple[str, str]]) -> dict[str, dict | str]:
        """renewalInfo (RFC 9773) for each (id, certificate ID): the client's
        ``renewal_info`` message per id, or why it failed."""
        assert self.channel is not None
        payload = [{"id": sid, "cert_id": cert_id} for sid, cert_id in certificates]
        results: dict[str, dict | str] = {c["id"]: "no answer from the ACME client" for c in payload}
        self._hello(lookup_scope(self.cfg.client.server))
        self.channel.send(control.encode_message("renewal_info", certificates=payload))
        return collect(self._messages(), results, "renewal_info", lambda msg: msg)

    def dns_persist(self, sections: Sequence[tuple[str, Sequence[str]]]) -> dict[str, dict | str]:
        """For each (id, names): the client's ``persist_info`` (account URL and
        the CA's issuer domain name), or why it failed."""
        assert self.channel is not None
        payload: list[dict[str, Any]] = [
            {"id": sid, "identifiers": [{"type": "dns", "value": n} for n in names]}
            for sid, names in sections]
        results: dict[str, dict | str] = {str(s["id"]): "no answer from the ACME client"
                                          for s in payload}
        # newOrder for these names, to read the CA's issuer name; no CSR is finalized
        self._hello(orders_scope(self.cfg.client.server, [(names, b"") for _, names in sections]))
        self.channel.send(control.encode_message("dns_persist", sections=payload))
        return collect(self._messages(), results, "persist_info", lambda msg: msg)

    def revoke(self, certificates: Sequence[tuple[str, bytes, str]],
               reason: int | None = None) -> dict[str, bool | str]:
        assert self.channel is not None
        payload = [{"id": path, "der": b64u_encode(der), "jwk_thumbprint": thumb}
                   for path, der, thumb in certificates]
        results: dict[str, bool | str] = {c["id"]: "no answer from the ACME client" for c in payload}
        self._hello(revoke_scope(self.cfg.client.server, [der for _, der, _ in certificates], reason))
        self.channel.send(control.encode_message("revoke", certificates=payload, reason=reason))
        return collect(self._messages(), results, "revoked", lambda msg: True)

    def _publish(self, token: str, content: str) -> None:
        """Publish an http-01 answer if the gate allows it (lacme.master.challenges)."""
        assert self.channel is not None and self.gate is not None
        try:
            self.gate.check_http01(token, content)
            if self.challenges is None:  # every section of the run is proven over DNS
                raise LacmeError("no section of this run uses http-01 (no webserver started)")
            if self.webservers is not None:
                self.webservers.wait()
                self.webservers = None
            self.challenges.publish(token, content)
            answer = control.encode_message("published", token=token, ok=True, message="")
            log.debug("published challenge %s", token)
        except (LacmeError, OSError, UnicodeError) as exc:
            answer = control.encode_message("published", token=token, ok=False, message=str(exc))
            log.error("cannot publish challenge %r: %s", token, exc)
        self.channel.send(answer)

    def _messages(self) -> Iterator[dict[str, Any]]:
        """Messages from the client until it ends the conversation.

        ``error`` (the whole command failed) is raised, but only once the
        client has ended the conversation (``done``, or its end after an error
        it met before the command): the client, which has said why, then sees
        no closed channel to report as a second error."""
        assert self.channel is not None
        failure: str | None = None
        while True:
            if (self.webservers is not None and not self.channel.has_line()
                    and self.webservers.wait(until_readable=self.channel.sock)):
                self.webservers = None
            try:
                line, _ = self.channel.recv_line(control.MAX_LINE)
            except TimeoutError:
                if failure is not None:
                    raise failed_command(self, failure) from None
                raise LacmeError("the ACME client stopped answering") from None
            except OSError as exc:  # e.g. reset: it ended with our messages unread
                if failure is not None:
                    raise failed_command(self, failure) from None
                raise LacmeError(f"the ACME client ended unexpectedly ({exc.strerror or exc})"
                                 + self._client_status()) from None
            if line is None and failure is not None:
                raise failed_command(self, failure)
            if line is None:
                raise LacmeError("the ACME client ended unexpectedly" + self._client_status())
            try:
                msg = control.decode_message(line, control.CLIENT_TYPES)
            except ProtocolError as exc:
                raise LacmeError(f"the ACME client: {exc}") from None
            if msg["type"] == "publish":  # any command: the gate says whether
                self._publish(str(msg.get("token", "")), str(msg.get("content", "")))
            elif msg["type"] == "clock":  # any command: checked here, once
                self.clock.observe(msg.get("date"), msg.get("url"))
            elif msg["type"] == "error":
                failure = str(msg.get("message") or "the ACME client failed")
            elif msg["type"] == "done" and failure is not None:
                raise failed_command(self, failure)
            else:
                yield msg

    def _client_status(self) -> str:
        """How the spawned client ended, e.g. " (killed by signal 9)", if it has."""
        return "" if self.client_pid is None else self.children.exit_status(self.client_pid, wait=1.0)

    def said_by_accountd(self, message: str) -> str | None:
        """How our accountd ended, if it said why ``message`` (said_by_accountd)."""
        return said_by_accountd(message, self.children, self.accountd_pid)


def failed_command(session: ClientSession, message: str) -> LacmeError:
    """The client's one line about a failed command; a ReportedError when the
    accountd of the run has said why (ClientSession.said_by_accountd)."""
    status = session.said_by_accountd(message)
    return LacmeError(message) if status is None else ReportedError(message + status)


def note_problem(msg: dict[str, Any], problems: dict[str, str],
                 rate_limited: dict[str, float]) -> None:
    """Keep a failed order's problem type (RFC 8555 6.7) and, for rateLimited,
    the CA's Retry-After in seconds."""
    if isinstance(msg.get("problem"), str):
        problems[msg["id"]] = msg["problem"]
    retry = msg.get("retry_after")
    if (msg.get("problem") == RATE_LIMITED and isinstance(retry, (int, float))
            and not isinstance(retry, bool) and retry >= 0):
        rate_limited[msg["id"]] = float(retry)


def collect(messages: Iterable[dict[str, Any]], results: dict[str, Any], answer: str,
            value: Callable[[dict[str, Any]], Any]) -> dict[str, Any]:
    """Per-id outcomes until ``done``: ``answer`` messages give ``value(msg)``,
    ``failed`` ones the reason (``error`` is raised by the messages)."""
    for msg in messages:
        kind = msg["type"]
        if kind == answer and msg.get("id") in results:
            results[msg["id"]] = value(msg)
        elif kind == "failed" and msg.get("id") in results:
            results[msg["id"]] = str(msg.get("message", "failed"))
        elif kind == "done":
            break
    return results


def open_dns_relay(session: ClientSession) -> DnsRelay:
    """lacme-dns for the run's dns-01 names (lacme.master.dnsrelay)."""
    from lacme.config.dns import DnsSettings
    from lacme.master.dnsrelay import open_dns
    from lacme.master.state import default_directory

    return open_dns(session.cfg.dns or DnsSettings(), session.children, session.stack,
                    session.debug, session.dns_names,
                    default_directory(session.cfg.state_directory), lambda: session.aborting)
