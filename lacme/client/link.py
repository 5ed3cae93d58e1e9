"""The client's two connections: the accountd signer and the control link to the master.

Run inside the unprivileged ACME client (``lacme-client``).  ``AccountdSigner``
speaks the accountd protocol (``lacme.protocol.wire``) over the connection
the master passed in hello: one signing input out, one signature in; it is
the session's ``Signer`` (RFC 8555 6.2: the client never holds a key).
``ControlLink`` speaks the control protocol (``lacme.protocol.control``)
after hello: results to the master, and the http-01 answers (RFC 8555 8.3)
the master publishes for us.  ``Context`` is what every command works with.
"""

from __future__ import annotations

import logging
import socket
import threading
from typing import Any

from lacme.core import descriptors
from lacme.core.errors import LacmeError, ProtocolError
from lacme.core.record import Factory, Record
from lacme.core.text import escape_text
from lacme.protocol import control, wire

logger = logging.getLogger("lacme-client")


# ---------------------------------------------------------------------------
# The accountd connection: a thread-safe Signer


class AccountdSigner:
    """Signs over an accountd connection: one request line out, one signature in.

    Implements ``acme.Signer``; a lock keeps concurrent orders' requests and
    answers paired.  Losing the connection (accountd refuses a request by
    closing it) raises ProtocolError and marks the signer broken.
    """

    def __init__(self, sock: socket.socket, timeout: float) -> None:
        self._sock = sock
        self._sock.settimeout(timeout)  # a signature never takes longer than the whole run
        self._rfile = sock.makefile("rb")
        self._lock = threading.Lock()
        self.broken: ProtocolError | None = None
        greeting = self._read_greeting()
        self.alg = greeting.alg
        self.jwk = greeting.jwk
        self.thumbprint = greeting.jwk_thumbprint
        self.kid = greeting.kid
        self.eab_kid = greeting.eab_kid  # accountd holds an EAB MAC key (RFC 8555 7.3.4)
        self.eab_alg = greeting.eab_alg
        self.new_alg, self.new_jwk = greeting.new_alg, greeting.new_jwk  # a rollover's new key

    def _read_greeting(self) -> wire.Greeting:
        """The two CRLF lines accountd sends first (version, alg, thumbprint; JWK)."""
        try:
            first = self._rfile.readline(wire.MAX_LINE + 1)
            second = self._rfile.readline(wire.MAX_LINE + 1) if first else b""
        except OSError as exc:
            raise ProtocolError(f"{wire.PEER}: no greeting ({exc.strerror or 'timed out'})") from None
        if not first or not second:
            raise ProtocolError(f"{wire.PEER}: connection closed before the greeting")
        return wire.parse_greeting(first, second)

    def sign(self, signing_input: bytes) -> bytes:
        with self._lock:
            if self.broken is not None:
                raise self.broken
            try:
                self._sock.sendall(signing_input + wire.CRLF)
                line = self._rfile.readline(wire.MAX_LINE + 1)
            except OSError as exc:
                line = b""
                reason = f"connection lost while signing ({exc.strerror or 'timed out'})"
            else:
                # accountd refuses by closing; so does a transport that ends
                reason = "connection closed while signing (refused, or accountd or its transport ended)"
            if not line:
                self.broken = ProtocolError(f"{wire.PEER}: {reason}")
                raise self.broken
            return wire.parse_signature(line)

    def close(self) -> None:
        self._rfile.close()
        self._sock.close()


# ---------------------------------------------------------------------------
# The control channel after hello: sending, and answers to publish


class _Publication(Record, frozen=False):
    event: threading.Event = Factory(threading.Event)
    ok: bool = False
    message: str = ""
    refs: int = 1


class ControlLink:
    """Messages to the master (thread-safe) and a reader of its answers.

    Orders sharing an authorization share its token: ``publish`` is sent
    once per token and ``unpublish`` when its last user is done.
    """

    def __init__(self, channel: descriptors.Channel) -> None:
        self._channel = channel
        self._send_lock = threading.Lock()
        self._lock = threading.Lock()
        self._publications: dict[str, _Publication] = {}
        self.closed = threading.Event()
        self.close_reason = ""
        self.reported = False  # an error message reached the master: it prints that line
        self._on_close: list[Any] = []

    def on_close(self, callback: Any) -> None:
        self._on_close.append(callback)

    def send(self, kind: str, **fields: Any) -> None:
        data = control.encode_message(kind, **fields)
        with self._send_lock:
            if self.closed.is_set():
                raise ProtocolError(self.close_reason)
            try:
                self._channel.send(data)
            except OSError as exc:
                self._mark_closed(f"control channel: {exc.strerror or 'closed'}")
                raise ProtocolError(self.close_reason) from None
            self.reported = self.reported or kind == "error"

    def start_reader(self) -> None:
        threading.Thread(target=self._read_answers, name="control-reader", daemon=True).start()

    def _read_answers(self) -> None:
        try:
            while True:
                line, _fd = self._channel.recv_line(control.MAX_LINE)
                if line is None:
                    self._mark_closed("control channel: closed by the master")
                    return
                msg = control.decode_message(line, frozenset({"published"}))
                self._answer(str(msg.get("token", "")), bool(msg.get("ok")), str(msg.get("message", "")))
        except (OSError, ProtocolError) as exc:
            self._mark_closed(str(exc) if isinstance(exc, ProtocolError) else f"control channel: {exc}")

    def _answer(self, token: str, ok: bool, message: str) -> None:
        with self._lock:
            pub = self._publications.get(token)
        if pub is not None and not pub.event.is_set():
            pub.ok, pub.message = ok, message
            pub.event.set()

    def _mark_closed(self, reason: str) -> None:
        if self.closed.is_set():
            return
        self.close_reason = reason
        self.closed.set()
        with self._lock:
            for pub in self._publications.values():
                pub.event.set()
        for callback in self._on_close:
            callback()

    def publish(self, token: str, content: str, timeout: float) -> None:
        """Have the master publish ``content`` for ``token``; wait for its answer."""
        with self._lock:
            pub = self._publications.get(token)
            first = pub is None
            if pub is None:
                pub = self._publications[token] = _Publication()
            else:
                pub.refs += 1
        try:
            if first:
                self.send("publish", token=token, content=content)
            if not pub.event.wait(max(timeout, 0)):
                raise LacmeError(f"challenge {token}: no answer from the master before the timeout")
            if self.closed.is_set() and not pub.ok:
                raise ProtocolError(self.close_reason)
            if not pub.ok:
                raise LacmeError(f"challenge {token}: cannot publish ({escape_text(pub.message)})")
        except BaseException:
            self._release(token, notify=False)
            raise

    def unpublish(self, token: str) -> None:
        self._release(token, notify=True)

    def _release(self, token: str, *, notify: bool) -> None:
        with self._lock:
            pub = self._publications.get(token)
            if pub is None:
                return
            pub.refs -= 1
            if pub.refs > 0:
                return
            del self._publications[token]
        if notify and pub.ok and not self.closed.is_set():
            self.send("unpublish", token=token)


# ---------------------------------------------------------------------------
# What a command works with


class Context(Record):
    session: Any  # acme.session.AcmeSession (imported lazily: requests is heavy)
    link: ControlLink
    signer: AccountdSigner


def report_failure(ctx: Context, kind: str, sid: str, exc: BaseException) -> bool:
    """Tell the master that ``sid`` failed (a broken signer is the reason, if it is); False."""
    message = str(ctx.signer.broken or exc)
    logger.debug("[%s] %s", sid, message, extra={"LACME_SECTION": sid})
    problem_type: Any = getattr(getattr(exc, "problem", None), "type", None)  # AcmeProblemError
    retry_after: Any = getattr(exc, "retry_after", None)  # (not imported here: requests)
    extra: dict[str, Any] = {}
    if isinstance(problem_type, str) and problem_type:
        extra["problem"] = problem_type
        if isinstance(retry_after, (int, float)):
            extra["retry_after"] = retry_after
    if not ctx.link.closed.is_set():
        ctx.link.send(kind, id=sid, message=message, **extra)
    return False
