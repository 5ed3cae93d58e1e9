"""The components of a run, started or reached by the master.

Run by the master (root) when a run has work to do.  In fork mode it
spawns accountd (``lacme-accountd --stdio`` over a socketpair, told the
CA's origin in ``LACME_ACCOUNTD_ORIGIN`` so that it signs for nothing
else), the client, and one webserver per ``[webserver] listen`` address
on a socket the master binds, each through ``Children.spawn`` (privilege
drop and the rest).  In systemd mode it connects to accountd's socket
after checking its permissions, to the socket-activated client, and
wakes the socket-activated webserver.  The webservers say READY=1 with the
sd_notify(3) protocol; http-01 (RFC 8555 8.3) is served from the
challenge directory (``lacme.master.challenges``).
"""

from __future__ import annotations

import logging
import os
import select
import socket
import stat
import struct
import time
from contextlib import ExitStack

from lacme.config.defaults import run_deadline
from lacme.config.master import AccountdSettings, ListenAddress, MasterConfig
from lacme.config.remote import option_separator
from lacme.config.specifiers import Identity, expand
from lacme.core.descriptors import Channel
from lacme.core.errors import LacmeError
from lacme.core.origin import origin_of
from lacme.core.privs import Credentials, resolve
from lacme.core.sockdir import check_socket_directory
from lacme.master.challenges import ChallengeDirectory
from lacme.master.children import Children, resolve_command
from lacme.protocol import wire

log = logging.getLogger("lacme")


# ------------------------------------------------------------------ accountd

def open_accountd(cfg: MasterConfig, children: Children,
                  debug: bool) -> tuple[socket.socket, int | None]:
    """The accountd connection: spawned (``[accountd]``, with its pid) or
    connected (``[client] socket``, no pid)."""
    if cfg.accountd is not None:
        return spawn_accountd(cfg.accountd, cfg.client.server, children, debug)
    return connect_accountd(cfg.client.socket), None


def spawn_accountd(settings: AccountdSettings, server: str, children: Children,
                   debug: bool) -> tuple[socket.socket, int]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    creds = resolve(settings.user, settings.group, where="[accountd]")

    def argv() -> list[str]:
        # %-specifiers of [accountd] expand after the privilege drop.
        ident = Identity.current()
        items = [expand(item, ident) for item in settings.command]
        args = [*resolve_command(items), *option_separator(items), "--stdio"]
        if settings.config:
            args.append("--config=" + expand(settings.config, ident))
        if settings.privkey:
            args.append("--privkey=" + expand(settings.privkey, ident))
        if settings.new_privkey:  # as given: the path is on accountd's host
            args.append("--new-privkey=" + settings.new_privkey)
        if settings.quiet and not debug:
            args.append("--quiet")
        else:
            args += verbosity(debug)
        return args

    pid = children.spawn(argv, creds, "lacme-accountd", grace=5.0, stdin=theirs.fileno(),
                         stdout=theirs.fileno(), env=accountd_origin(server),
                         setting="[accountd] command")
    theirs.close()
    log.debug("spawned lacme-accountd, pid %d", pid)
    return ours, pid


def said_by_accountd(message: str, children: Children, accountd_pid: int | None) -> str | None:
    """When ``message`` (the client's, about a command or an order) is about
    the accountd this run spawned (``accountd_pid``) and that accountd exited
    with an error status, how it ended (e.g. " (exit status 1)"): it has said
    why already, on the stderr it shares with the master (a refusal, a key it
    could not load, ssh's own line).  None otherwise, e.g. killed by a
    signal: then nobody has said it."""
    if accountd_pid is None or not message.startswith(wire.PEER + ":"):
        return None
    status = children.exit_status(accountd_pid, wait=0.5)
    return status if status.startswith(" (exit status ") and status != " (exit status 0)" else None


def accountd_origin(server: str) -> dict[str, str]:
    """The environment that pins a spawned accountd to the CA's origin."""
    try:
        return {wire.ORIGIN_VARIABLE: origin_of(server)}
    except ValueError:  # not https: the client refuses it anyway
        return {}


def connect_accountd(path: str) -> socket.socket:
    """Connect to a running lacme-accountd, refusing an unsafe socket."""
    where = f"[client] socket {path}"
    try:
        check_socket_directory(path)
    except LacmeError as exc:
        raise LacmeError(f"{where}: {exc}") from None
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


# -------------------------------------------------------------------- client

def verbosity(debug: bool) -> list[str]:
    """A spawned client's or webserver's option for the master's own
    verbosity: --debug, or --quiet (warnings and errors only) when the
    master is quiet."""
    if debug:
        return ["--debug"]
    return [] if log.isEnabledFor(logging.INFO) else ["--quiet"]


def connect_component(path: str, section: str, hint: str = "") -> socket.socket:
    """A socket-activated component's socket (``[section] connect``);
    ``hint`` is added to the error when nothing listens there."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError as exc:
        sock.close()
        why = f" ({hint})" if hint and isinstance(exc, (FileNotFoundError,
                                                         ConnectionRefusedError)) else ""
        raise LacmeError(f"[{section}] connect {path}: {exc.strerror}{why}") from None
    log.debug("connected to the %s socket %s", section, path)
    return sock


def spawn_component(children: Children, section: str, argv: list[str], creds: Credentials,
                    what: str, grace: float, fdname: str) -> tuple[socket.socket, int]:
    """A component spawned as ``creds`` with one end of a new connection as
    its descriptor ``fdname`` (sd_listen_fds); our end and its pid."""
    sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        pid = children.spawn(argv, creds, what, grace=grace, fds=[(theirs.fileno(), fdname)],
                             umask=0o077, setting=f"[{section}] command")
    except BaseException:
        sock.close()
        raise
    finally:
        theirs.close()
    log.debug("spawned %s %s, pid %d", what, argv[0], pid)
    return sock, pid


def start_client(cfg: MasterConfig, children: Children, stack: ExitStack,
                 debug: bool) -> tuple[Channel, int | None]:
    """The control channel to the client, and the client's pid if spawned."""
    c = cfg.client
    pid = None
    if c.connect:
        sock = connect_component(c.connect, "client")
    else:
        creds = resolve(c.user, c.group, where="[client]")
        argv = [*resolve_command(c.command), *verbosity(debug)]
        sock, pid = spawn_component(children, "client", argv, creds, "the ACME client",
                                    grace=10.0, fdname="control")
    sock.settimeout(run_deadline(c.timeout))
    stack.callback(shutdown_quietly, sock)
    return Channel(sock), pid


# ---------------------------------------------------------------- challenges

def open_challenges(cfg: MasterConfig, children: Children, stack: ExitStack,
                    debug: bool) -> tuple[ChallengeDirectory, Webservers | None]:
    """Where the challenges are served: an existing directory (systemd mode), or
    a private one and webservers spawned on it (their READY=1 still awaited)."""
    w = cfg.webserver
    if w.challenge_directory:
        challenges = ChallengeDirectory.open_shared(w.challenge_directory)
        stack.callback(challenges.close)
        if w.activate:
            activate_webserver(w.activate)
        return challenges, None
    if not w.listen:
        raise LacmeError("[webserver] listen: empty, and no challenge-directory is set")
    challenges = ChallengeDirectory.create_private()
    stack.callback(challenges.close)
    if w.iptables:
        from lacme.master.firewall import TemporaryRules, ports_for

        rules = TemporaryRules()
        stack.callback(rules.restore)
        rules.open_ports(ports_for(w.listen))
    creds = resolve(w.user, w.group, where="[webserver]")
    argv = [*resolve_command(w.command), f"--challenge-directory={challenges.path}",
            *verbosity(debug)]
    # The webservers say when they serve with the sd_notify protocol
    # (READY=1), as under systemd: a datagram socket of the master's.
    ready = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    children.close_after.append(ready)
    ready.bind(f"\0lacme-ready-{os.getpid()}-{os.urandom(6).hex()}")
    notify_env = {"NOTIFY_SOCKET": "@" + ready.getsockname()[1:].decode()}
    started: dict[int, ListenAddress] = {}
    for address in w.listen:
        sock = bind_listen(address, stack)
        pid = children.spawn(argv, creds, f"the webserver on {address}", grace=2.0,
                             terminate=True, fds=[(sock.fileno(), "http")], env=notify_env,
                             setting="[webserver] command")
        sock.close()
        log.debug("spawned the webserver on %s, pid %d", address, pid)
        started[pid] = address
    return challenges, Webservers(ready, started)  # awaited before the first publish


def bind_listen(address: ListenAddress, stack: ExitStack) -> socket.socket:
    """The listening socket of one ``[webserver] listen`` address (a UNIX
    socket is removed at the end of the run)."""
    where = f"[webserver] listen {address}"
    try:
        if address.family == "unix":
            assert address.path is not None
            _remove_stale_socket(address.path, where)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.bind(address.path)
            os.chmod(address.path, 0o666)
            stack.callback(_unlink_quietly, address.path)
        else:
            family = socket.AF_INET if address.family == "inet" else socket.AF_INET6
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((address.host or "", address.port or 80))
        sock.listen(128)
    except OSError as exc:
        raise LacmeError(f"{where}: {exc.strerror or exc}") from None
    return sock


class Webservers:
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


def shutdown_quietly(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


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
