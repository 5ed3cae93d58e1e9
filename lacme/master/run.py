"""The master's side of a run: wiring the other three components together.

Run by the master (root).  ``ClientSession`` opens the accountd connection
(spawning ``lacme-accountd --stdio`` over a socketpair, or connecting to its
socket after checking its permissions), starts the client (spawned after a
privilege drop, or reached through its socket-activated socket) and hands it
the accountd connection with SCM_RIGHTS, and for newOrder sets up where the
challenges are served (webservers spawned on sockets the master binds, or an
existing challenge directory) and optional temporary iptables rules.

The children start without waiting for one another (three interpreters
starting side by side); the webservers' READY=1 is awaited only before the
first challenge is published, while a webserver that exits first is named
at once.  Everything it starts or creates is undone on exit, including on
errors and SIGINT/SIGTERM (turned into KeyboardInterrupt so that the same
cleanup runs): the channels are closed and the webservers signalled first,
then every child is reaped together, so that shutdown costs the slowest
child rather than the sum.
Children it spawns get SIGTERM when the master dies, even by SIGKILL
(PR_SET_PDEATHSIG), so that no webserver keeps a port from the next run.
Runs of one configuration are serialized by flock(2) on its file; the
kernel drops the lock of a killed run.  A spawned accountd is told the CA's
origin (``LACME_ACCOUNTD_ORIGIN``) and signs for nothing else.
"""

from __future__ import annotations

import ctypes
import fcntl
import logging
import os
import select
import shutil
import signal
import socket
import stat
import struct
import sys
import time
from contextlib import ExitStack
from typing import Any, Callable, Iterable, Sequence

from lacme.config.schema import AccountdSettings, ListenAddress, MasterConfig
from lacme.config.specifiers import Identity, expand
from lacme.core.descriptors import Channel, spawn
from lacme.core.errors import LacmeError, ProtocolError
from lacme.core.privs import clean_environment, drop_privileges, resolve
from lacme.master.challenges import ChallengeDirectory
from lacme.protocol import control, wire
from lacme.protocol.jws import b64u_encode
from lacme.protocol.wire import normalize_origin

log = logging.getLogger("lacme")

#: Default program names and the modules that implement them, so that the
#: defaults work from a virtual environment or a source tree alike.
PROGRAMS = {
    "lacme-client": "lacme.client",
    "lacme-webserver": "lacme.webserver",
    "lacme-accountd": "lacme.accountd",
}


def resolve_command(command: Sequence[str]) -> list[str]:
    """Absolute argv for a configured command.

    A bare name is looked up next to the running interpreter first (the
    scripts of the same installation), then in PATH; this package's own
    programs fall back to ``python -m`` when not installed as scripts.
    """
    if not command:
        raise LacmeError("empty command")
    head, *rest = command
    if "/" not in head:
        here = os.path.dirname(sys.executable)
        found = shutil.which(head, path=os.pathsep.join([here, os.environ.get("PATH", "")]))
        if found:
            return [found, *rest]
        if head in PROGRAMS:
            return [sys.executable, "-m", PROGRAMS[head], *rest]
    return [head, *rest]


LOCK_POLL = 0.1
PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None, use_errno=True)  # loaded before fork, used in the child


def lock_wait(cfg: MasterConfig) -> float:
    """How long a run waits for another one to finish."""
    return cfg.client.timeout * 2 + 60


def lock_run(path: str, wait: float) -> int:
    """flock(2) the configuration file: one run per configuration at a time.

    A second run waits (up to ``wait`` seconds) instead of interleaving its
    challenges and installs with the first.  Returns the descriptor to close.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise LacmeError(f"{path}: cannot open to lock: {exc.strerror}") from None
    deadline = time.monotonic() + wait
    waiting = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            pass
        except OSError as exc:
            os.close(fd)
            raise LacmeError(f"{path}: cannot lock: {exc.strerror}") from None
        if not waiting:
            log.info("%s: another lacme run is in progress, waiting for it", path)
            waiting = True
        if time.monotonic() > deadline:
            os.close(fd)
            raise LacmeError(f"{path}: another lacme run still holds the lock after {wait:.0f} s")
        time.sleep(LOCK_POLL)


def die_with_master(master: int) -> None:
    """In a spawned child, after the privilege drop (which clears it): SIGTERM
    when the master dies; exit now if it already has."""
    if _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")
    if os.getppid() != master:
        os._exit(1)


def accountd_origin(server: str) -> dict[str, str]:
    """The environment that pins a spawned accountd to the CA's origin."""
    try:
        return {wire.ORIGIN_VARIABLE: normalize_origin(server)}
    except ValueError:  # not https: the client refuses it anyway
        return {}


class _Terminated(KeyboardInterrupt):
    """SIGTERM, delivered like SIGINT so the same cleanup runs."""


def _raise_terminated(signum: int, _frame: Any) -> None:
    raise _Terminated(f"signal {signum}")


class _Child:
    """A spawned component and how it is stopped (see ``_reap_all``)."""

    def __init__(self, pid: int, what: str, grace: float, terminate: bool) -> None:
        self.pid, self.what, self.grace, self.terminate = pid, what, grace, terminate
        self.deadline = 0.0
        self.stage = 0  # 0: waiting for it to end, 1: SIGTERM sent at the deadline, 2: SIGKILL
        self.pidfd: int | None = None


class _Webservers:
    """Spawned webservers until each has said READY=1 (sd_notify(3) datagrams
    on the master's socket, the sender's pid from SCM_CREDENTIALS)."""

    def __init__(self, sock: socket.socket, children: dict[int, ListenAddress],
                 timeout: float = 15.0) -> None:
        self.sock = sock
        self.children = children
        self.waiting = set(children)
        self.deadline = time.monotonic() + timeout
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        sock.setblocking(False)

    def wait(self, until_readable: socket.socket | None = None) -> bool:
        """Until every webserver is ready (True) or ``until_readable`` has data
        (False).  LacmeError if a webserver exits first or none is ready in time."""
        watched = [self.sock] if until_readable is None else [self.sock, until_readable]
        while self.waiting:
            readable, _, _ = select.select(watched, [], [], 0.05)
            self._receive()
            self._check_exits()
            if until_readable is not None and until_readable in readable:
                return not self.waiting
            if self.waiting and time.monotonic() > self.deadline:
                raise LacmeError("[webserver] the webserver did not start in time")
        return True

    def _receive(self) -> None:
        creds_size = struct.calcsize("3i")
        while True:
            try:
                data, ancdata, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(creds_size))
            except (BlockingIOError, InterruptedError):
                return
            sender = None
            for level, kind, value in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    sender = struct.unpack("3i", value[:creds_size])[0]
            if sender in self.waiting and b"READY=1" in data.split(b"\n"):
                self.waiting.discard(sender)

    def _check_exits(self) -> None:
        for pid in sorted(self.waiting):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done, status = pid, 0
            if done:
                code = os.waitstatus_to_exitcode(status)
                raise LacmeError(f"[webserver] the webserver on {self.children[pid]} exited "
                                 f"with status {code} before serving")


class ClientSession:
    """One run of the ACME client, with its accountd and webservers."""

    def __init__(self, cfg: MasterConfig, *, debug: bool = False, challenges: bool = False,
                 locked: bool = False) -> None:
        """``locked``: the caller already holds the run lock (``lock_run``)."""
        self.cfg = cfg
        self.locked = locked
        self.debug = debug
        self.with_challenges = challenges
        self.stack = ExitStack()
        self.challenges: ChallengeDirectory | None = None
        self.channel: Channel | None = None
        self.client_pid: int | None = None
        self.aborting = False
        self.children: list[_Child] = []
        self.close_after_children: list[socket.socket] = []  # the READY socket
        self.webservers: _Webservers | None = None  # until every one is ready

    # ------------------------------------------------------------------ setup
    def __enter__(self) -> "ClientSession":
        try:
            self._install_signal_handlers()
            if not self.locked:
                self.stack.callback(os.close, lock_run(self.cfg.path, lock_wait(self.cfg)))
            # Runs after everything registered below: channels closed, then this.
            self.stack.callback(self._stop_children)
            if self.with_challenges:
                self._setup_challenges()
            accountd = self._open_accountd()
            # Kept until the end and then shut down, so that accountd sees the
            # end at once instead of after the client's exit.
            self.stack.callback(_shutdown_quietly, accountd)
            self.channel = self._start_client()
            hello = control.encode_message(
                "hello", version=control.VERSION, settings=self._client_settings(), debug=self.debug
            )
            self.channel.send(hello, fd=accountd.fileno())
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

    def cancel(self) -> None:
        """No command will be sent: the children are told to stop at the end."""
        self.aborting = True

    def _reap_later(self, pid: int, what: str, *, grace: float, terminate: bool = False) -> None:
        self.children.append(_Child(pid, what, grace, terminate))

    def _stop_children(self) -> None:
        """Signal the children to stop (the webservers always, every one when
        interrupted), then reap them all together."""
        children, self.children = self.children, []
        for child in children:
            child.terminate = child.terminate or self.aborting
            if child.terminate:
                _kill(child.pid, signal.SIGTERM)
        try:
            _reap_all(children)
        finally:
            # Open until the webservers are gone: their STOPPING=1 finds a reader.
            for sock in self.close_after_children:
                sock.close()

    def _install_signal_handlers(self) -> None:
        old = signal.signal(signal.SIGTERM, _raise_terminated)
        self.stack.callback(signal.signal, signal.SIGTERM, old)
        # Ignore SIGPIPE-style failures as errors, never as signals.
        old_pipe = signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        self.stack.callback(signal.signal, signal.SIGPIPE, old_pipe)

    def _client_settings(self) -> dict[str, Any]:
        c = self.cfg.client
        return {
            "server": c.server,
            "timeout": c.timeout,
            "SSL_verify": c.ssl_verify,
            "SSL_version": c.ssl_version,
            "SSL_cipher_list": c.ssl_cipher_list,
            "SSL_ca_file": c.ssl_ca_file,
        }

    # -------------------------------------------------------------- accountd
    def _open_accountd(self) -> socket.socket:
        settings = self.cfg.accountd
        if settings is not None:
            return self._spawn_accountd(settings)
        return connect_accountd(self.cfg.client.socket)

    def _spawn_accountd(self, settings: AccountdSettings) -> socket.socket:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        creds = resolve(settings.user, settings.group, where="[accountd]")
        debug = self.debug
        master = os.getpid()

        def argv() -> list[str]:
            # %-specifiers of [accountd] expand after the privilege drop.
            ident = Identity.current()
            items = [expand(item, ident) for item in settings.command]
            args = resolve_command(items) + ["--stdio"]
            if settings.config:
                args.append("--config=" + expand(settings.config, ident))
            if settings.privkey:
                args.append("--privkey=" + expand(settings.privkey, ident))
            if settings.quiet and not debug:
                args.append("--quiet")
            if debug:
                args.append("--debug")
            return args

        def child() -> None:
            drop_privileges(creds)
            die_with_master(master)
            os.chdir("/")

        pid = spawn(argv, stdin=theirs.fileno(), stdout=theirs.fileno(),
                    env=clean_environment(creds, accountd_origin(self.cfg.client.server)),
                    before_exec=child)
        theirs.close()
        log.debug("spawned lacme-accountd, pid %d", pid)
        self._reap_later(pid, "lacme-accountd", grace=5.0)
        return ours

    # ---------------------------------------------------------------- client
    def _start_client(self) -> Channel:
        c = self.cfg.client
        if c.connect:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(c.connect)
            except OSError as exc:
                sock.close()
                raise LacmeError(f"[client] connect {c.connect}: {exc.strerror}") from None
            log.debug("connected to the client socket %s", c.connect)
        else:
            sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            creds = resolve(c.user, c.group, where="[client]")
            argv = resolve_command(c.command) + (["--debug"] if self.debug else [])
            master = os.getpid()

            def child() -> None:
                drop_privileges(creds)
                die_with_master(master)
                os.chdir("/")
                os.umask(0o077)

            self.client_pid = spawn(argv, fds=[(theirs.fileno(), "control")],
                                    env=clean_environment(creds), before_exec=child)
            theirs.close()
            log.debug("spawned the client %s, pid %d", argv[0], self.client_pid)
            self._reap_later(self.client_pid, "the ACME client", grace=10.0)
        sock.settimeout(self.cfg.client.timeout * 2 + 60)
        self.stack.callback(_shutdown_quietly, sock)
        return Channel(sock)

    # ------------------------------------------------------------ challenges
    def _setup_challenges(self) -> None:
        w = self.cfg.webserver
        if w.challenge_directory:
            self.challenges = ChallengeDirectory.open_shared(w.challenge_directory)
            self.stack.callback(self.challenges.close)
            if w.activate:
                activate_webserver(w.activate)
            return
        if not w.listen:
            raise LacmeError("[webserver] listen: empty, and no challenge-directory is set")
        self.challenges = ChallengeDirectory.create_private()
        self.stack.callback(self.challenges.close)
        if w.iptables:
            from lacme.master.firewall import TemporaryRules, ports_for

            rules = TemporaryRules()
            self.stack.callback(rules.restore)
            rules.open_ports(ports_for(w.listen))
        creds = resolve(w.user, w.group, where="[webserver]")
        argv = resolve_command(w.command) + [f"--challenge-directory={self.challenges.path}"]
        if self.debug:
            argv.append("--debug")
        master = os.getpid()

        def child() -> None:
            drop_privileges(creds)
            die_with_master(master)
            os.chdir("/")

        # The webservers say when they serve with the sd_notify protocol
        # (READY=1), as under systemd: a datagram socket of the master's.
        ready = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.close_after_children.append(ready)
        ready.bind(f"\0lacme-ready-{os.getpid()}-{os.urandom(6).hex()}")
        notify_env = {"NOTIFY_SOCKET": "@" + ready.getsockname()[1:].decode()}
        started: dict[int, ListenAddress] = {}
        for address in w.listen:
            sock = self._bind(address)
            pid = spawn(argv, fds=[(sock.fileno(), "http")],
                        env=clean_environment(creds, notify_env), before_exec=child)
            sock.close()
            log.debug("spawned the webserver on %s, pid %d", address, pid)
            self._reap_later(pid, f"the webserver on {address}", grace=2.0, terminate=True)
            started[pid] = address
        self.webservers = _Webservers(ready, started)  # awaited before the first publish

    def _bind(self, address: ListenAddress) -> socket.socket:
        where = f"[webserver] listen {address}"
        try:
            if address.family == "unix":
                assert address.path is not None
                _remove_stale_socket(address.path, where)
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.bind(address.path)
                os.chmod(address.path, 0o666)
                self.stack.callback(_unlink_quietly, address.path)
            else:
                family = socket.AF_INET if address.family == "inet" else socket.AF_INET6
                sock = socket.socket(family, socket.SOCK_STREAM)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((address.host or "", address.port or 80))
            sock.listen(128)
        except OSError as exc:
            raise LacmeError(f"{where}: {exc.strerror or exc}") from None
        return sock

    # ------------------------------------------------------------- commands
    def account(self, **fields: Any) -> dict[str, Any]:
        assert self.channel is not None
        self.channel.send(control.encode_message("account", **fields))
        reply: dict[str, Any] | None = None
        for msg in self._messages():
            if msg["type"] == "account":
                reply = msg
            elif msg["type"] == "error":
                raise LacmeError(str(msg.get("message", "account request failed")))
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
        assert self.channel is not None and self.challenges is not None
        payload = [
            {"id": sid, "identifiers": [{"type": n[0], "value": n[1]} if isinstance(n, tuple)
                                        else {"type": "dns", "value": n} for n in names],
             "csr": b64u_encode(csr), **(options or {}).get(sid, {})}
            for sid, names, csr in orders
        ]
        results: dict[str, bool | str] = {o["id"]: "no answer from the ACME client" for o in payload}
        self.channel.send(control.encode_message("orders", orders=payload))
        for msg in self._messages():
            kind = msg["type"]
            if kind == "publish":
                self._publish(str(msg.get("token", "")), str(msg.get("content", "")))
            elif kind == "unpublish":
                self.challenges.unpublish(str(msg.get("token", "")))
            elif kind == "certificate" and msg.get("id") in results:
                pem = str(msg.get("pem", ""))
                alternates = [a for a in msg.get("alternates") or [] if isinstance(a, str)]
                refused = (on_certificate(msg["id"], pem, alternates=alternates) if alternates
                           else on_certificate(msg["id"], pem))
                results[msg["id"]] = True if refused is None else refused
            elif kind == "failed" and msg.get("id") in results:
                results[msg["id"]] = str(msg.get("message", "failed"))
            elif kind == "error":  # the whole command failed: one line says why
                raise LacmeError(str(msg.get("message", "the ACME client failed")))
            elif kind == "done":
                break
        return results

    def renewal_info(self, certificates: Sequence[tuple[str, str]]) -> dict[str, dict | str]:
        """renewalInfo (RFC 9773) for each (id, certificate ID): the client's
        ``renewal_info`` message per id, or why it failed."""
        assert self.channel is not None
        payload = [{"id": sid, "cert_id": cert_id} for sid, cert_id in certificates]
        results: dict[str, dict | str] = {c["id"]: "no answer from the ACME client" for c in payload}
        self.channel.send(control.encode_message("renewal_info", certificates=payload))
        return self._collect(results, "renewal_info", lambda msg: msg)

    def revoke(self, certificates: Sequence[tuple[str, bytes, str]],
               reason: int | None = None) -> dict[str, bool | str]:
        assert self.channel is not None
        payload = [{"id": path, "der": b64u_encode(der), "jwk_thumbprint": thumb}
                   for path, der, thumb in certificates]
        results: dict[str, bool | str] = {c["id"]: "no answer from the ACME client" for c in payload}
        self.channel.send(control.encode_message("revoke", certificates=payload, reason=reason))
        return self._collect(results, "revoked", lambda msg: True)

    def _collect(self, results: dict[str, Any], answer: str,
                 value: Callable[[dict[str, Any]], Any]) -> dict[str, Any]:
        """Per-id outcomes until ``done``: ``answer`` messages give ``value(msg)``,
        ``failed`` ones the reason; ``error`` means the whole command failed."""
        for msg in self._messages():
            kind = msg["type"]
            if kind == answer and msg.get("id") in results:
                results[msg["id"]] = value(msg)
            elif kind == "failed" and msg.get("id") in results:
                results[msg["id"]] = str(msg.get("message", "failed"))
            elif kind == "error":  # one line says why
                raise LacmeError(str(msg.get("message", "the ACME client failed")))
            elif kind == "done":
                break
        return results

    def _publish(self, token: str, content: str) -> None:
        assert self.channel is not None and self.challenges is not None
        if self.webservers is not None:
            self.webservers.wait()
            self.webservers = None
        try:
            self.challenges.publish(token, content)
            answer = control.encode_message("published", token=token, ok=True, message="")
            log.debug("published challenge %s", token)
        except (LacmeError, OSError, UnicodeError) as exc:
            answer = control.encode_message("published", token=token, ok=False, message=str(exc))
            log.error("cannot publish challenge %r: %s", token, exc)
        self.channel.send(answer)

    def _messages(self):
        """Messages from the client until it ends the conversation."""
        assert self.channel is not None
        while True:
            if self.webservers is not None and not self.channel.has_line():
                if self.webservers.wait(until_readable=self.channel.sock):
                    self.webservers = None
            try:
                line, _ = self.channel.recv_line(control.MAX_LINE)
            except socket.timeout:
                raise LacmeError("the ACME client stopped answering") from None
            if line is None:
                raise LacmeError("the ACME client ended unexpectedly" + self._client_status())
            try:
                yield control.decode_message(line, control.CLIENT_TYPES)
            except ProtocolError as exc:
                raise LacmeError(f"the ACME client: {exc}") from None


    def _client_status(self) -> str:
        """How the spawned client ended, e.g. " (killed by signal 9)", if it has."""
        if self.client_pid is None:
            return ""
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            try:
                done, status = os.waitpid(self.client_pid, os.WNOHANG)
            except ChildProcessError:
                return ""
            if done:
                code = os.waitstatus_to_exitcode(status)
                return f" (killed by signal {-code})" if code < 0 else f" (exit status {code})"
            time.sleep(0.01)
        return ""


def activate_webserver(path: str) -> None:
    """Connect once to a socket-activated webserver's UNIX socket and hang up.

    systemd starts the webserver on that connection, while the order is
    being created, instead of on the CA's first http-01 fetch, whose answer
    (and the order's validation) would otherwise wait for the start.  Not
    fatal: a webserver that cannot be reached here is named, and the CA's
    fetch decides.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
    try:
        sock.connect(path)
        log.debug("[webserver] activate %s: connected", path)
    except BlockingIOError:
        pass  # the backlog is full: the webserver has been started already
    except OSError as exc:
        log.warning("[webserver] activate %s: %s", path, exc.strerror or exc)
    finally:
        sock.close()


def connect_accountd(path: str) -> socket.socket:
    """Connect to a running lacme-accountd, refusing an unsafe socket."""
    where = f"[client] socket {path}"
    parent = os.path.dirname(path) or "."
    try:
        st = os.stat(parent)
    except OSError as exc:
        raise LacmeError(f"{where}: {parent}: {exc.strerror}") from None
    if st.st_mode & 0o022:
        raise LacmeError(f"{where}: insecure permissions on {parent} (writable by others)")
    try:
        st = os.stat(path)
    except OSError as exc:
        raise LacmeError(f"{where}: {exc.strerror} (is lacme-accountd running?)") from None
    if not stat.S_ISSOCK(st.st_mode):
        raise LacmeError(f"{where}: not a socket")
    if st.st_mode & 0o066:
        raise LacmeError(f"{where}: insecure permissions (accessible by others)")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError as exc:
        sock.close()
        raise LacmeError(f"{where}: {exc.strerror}") from None
    return sock


def _remove_stale_socket(path: str, where: str) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise LacmeError(f"{where}: exists and is not a socket")
    os.unlink(path)


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _shutdown_quietly(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


def _reap_all(children: list[_Child]) -> None:
    """Wait for every child at once.  Each has ``grace`` seconds (from now) to
    end; then SIGTERM, 2 s more, then SIGKILL.  A child that exited 127 without
    being told to stop could not be started (logged)."""
    now = start = time.monotonic()
    pending: dict[int, _Child] = {}
    for child in children:
        child.deadline = now + child.grace
        child.pidfd = _pidfd(child.pid)
        pending[child.pid] = child
    try:
        while pending:
            for pid in list(pending):
                if _reaped(pending[pid]):
                    child = pending.pop(pid)
                    _close_pidfd(child)
                    log.debug("%s ended (%.0f ms after the run)", child.what,
                              1000 * (time.monotonic() - start))
            if not pending:
                return
            now = time.monotonic()
            for child in pending.values():
                if child.stage < 2 and now > child.deadline:
                    _escalate(child, now)
            _sleep_until_exit(pending.values(), min(c.deadline for c in pending.values()) - now)
    finally:
        for child in pending.values():
            _close_pidfd(child)


def _reaped(child: _Child) -> bool:
    try:
        done, status = os.waitpid(child.pid, os.WNOHANG)
    except ChildProcessError:
        return True
    if done and not child.terminate and status and os.WIFEXITED(status) \
            and os.WEXITSTATUS(status) == 127:
        log.error("%s could not be started", child.what)
    return bool(done)


def _escalate(child: _Child, now: float) -> None:
    if child.stage == 0:
        log.debug("%s (pid %d) still running, terminating it", child.what, child.pid)
        _kill(child.pid, signal.SIGTERM)
        child.stage, child.deadline = 1, now + 2.0
    else:
        _kill(child.pid, signal.SIGKILL)
        child.stage, child.deadline = 2, float("inf")


def _sleep_until_exit(children: Iterable[_Child], timeout: float) -> None:
    """Until one of ``children`` exits (its pidfd is readable) or ``timeout``."""
    children = list(children)
    fds = [c.pidfd for c in children if c.pidfd is not None]
    polling = len(fds) < len(children)
    limit = 0.01 if polling else 1.0  # without pidfds (old kernels): poll
    timeout = max(0.0, min(timeout, limit))
    if fds:
        select.select(fds, [], [], timeout)
    else:
        time.sleep(timeout)


def _pidfd(pid: int) -> int | None:
    """A descriptor readable once ``pid`` has exited (pidfd_open(2), Linux 5.3)."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


def _close_pidfd(child: _Child) -> None:
    if child.pidfd is not None:
        os.close(child.pidfd)
        child.pidfd = None


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
