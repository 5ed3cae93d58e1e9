"""Where a program's descriptors come from, and how they are handed on.

Every lacme component takes its sockets the same way, whoever started it:
systemd socket activation sets LISTEN_FDS/LISTEN_PID/LISTEN_FDNAMES
(sd_listen_fds(3)), and so does the forking master when it spawns a
component (see ``spawn``).  A component therefore never cares which way it
was started.  Descriptors start at 3 (SD_LISTEN_FDS_START).

Also here: passing a descriptor over a UNIX socket with SCM_RIGHTS
(unix(7)), used by the master to hand the accountd connection to the client.
"""

from __future__ import annotations

import array
import os
import signal
import socket
from collections.abc import Callable, Mapping, Sequence

from lacme.core.record import Record

LISTEN_FDS_START = 3


class InheritedFd(Record):
    fd: int
    name: str


def inherited_fds() -> list[InheritedFd]:
    """Descriptors passed with the sd_listen_fds(3) protocol, in order.

    The LISTEN_* variables are removed from the environment so that they do
    not leak into children.  Descriptors are marked close-on-exec.
    """
    if "LISTEN_FDS" not in os.environ:
        return []
    from systemd.daemon import listen_fds_with_names

    fds = listen_fds_with_names(True)
    result = []
    for fd in sorted(fds):
        os.set_inheritable(fd, False)
        result.append(InheritedFd(fd, fds[fd] or "unknown"))
    return result


def is_listening(fd: int) -> bool:
    """True for a listening socket (Accept=no), False for a connection."""
    s = socket.socket(fileno=os.dup(fd))
    try:
        return bool(s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))
    except OSError:
        return False
    finally:
        s.close()


def send_fd(sock: socket.socket, fd: int, message: bytes) -> None:
    """Send ``message`` with ``fd`` attached as SCM_RIGHTS (unix(7))."""
    sock.sendmsg([message], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))])


def recv_fd(sock: socket.socket, bufsize: int = 4096) -> tuple[bytes, int | None]:
    """Receive one message and at most one descriptor sent with ``send_fd``."""
    fds = array.array("i")
    msg, ancdata, _flags, _addr = sock.recvmsg(bufsize, socket.CMSG_SPACE(fds.itemsize * 4))
    received: list[int] = []
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(data) - (len(data) % fds.itemsize)
            fds.frombytes(data[:usable])
            received.extend(fds)
    for extra in received[1:]:  # never keep descriptors nobody asked for
        os.close(extra)
    fd = received[0] if received else None
    if fd is not None:
        os.set_inheritable(fd, False)
    return msg, fd


def spawn(
    argv: Sequence[str] | Callable[[], Sequence[str]],
    *,
    fds: Sequence[tuple[int, str]] = (),
    stdin: int | None = None,
    stdout: int | None = None,
    env: Mapping[str, str] | None = None,
    before_exec: Callable[[], None] | None = None,
    explain: Callable[[str], str] | None = None,
) -> int:
    """fork+exec ``argv`` handing ``fds`` over with the sd_listen_fds protocol.

    ``fds`` are (descriptor, name) pairs; in the child they become 3, 4, ...
    and LISTEN_FDS, LISTEN_PID (the child's own pid, known only after fork,
    which is why this is not subprocess) and LISTEN_FDNAMES are set.
    ``before_exec`` runs in the child after the descriptors are in place
    (privilege drop); ``argv`` may be a callable, evaluated after it (for
    %-specifiers that expand with the dropped identity).  Returns the child's
    pid once it has exec'd.  A failure in the child before or at exec is sent
    back over a close-on-exec pipe (the child then exits 127, reaped here) and
    raised as ``SpawnError``; ``explain(path)``, called in the child when exec
    fails, says why in a clause (``lacme.core.privs.why_not_executable``).
    """
    environ = dict(os.environ if env is None else env)
    for key in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):
        environ.pop(key, None)
    report_r, report_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid:
        os.close(report_w)
        return _await_exec(pid, report_r)
    report = report_w  # wherever the child moves it
    args: list[str] = []
    try:  # child: never return from here
        wanted = [fd for fd, _ in fds]
        # Move every source above the target range first so that dup2 onto
        # 3, 4, ... never clobbers a source that is still needed; the report
        # pipe ends up just above the passed descriptors, close-on-exec.
        top = max([LISTEN_FDS_START + len(wanted), *wanted, report_w, 2]) + 1
        moved = [os.dup2(fd, top + i, inheritable=False) for i, fd in enumerate(wanted)]
        report = os.dup2(report_w, top + len(wanted), inheritable=False)
        if stdin is not None:
            os.dup2(stdin, 0)
        else:
            devnull = os.open(os.devnull, os.O_RDONLY)
            os.dup2(devnull, 0)
        if stdout is not None:
            os.dup2(stdout, 1)
        for i, fd in enumerate(moved):
            os.dup2(fd, LISTEN_FDS_START + i, inheritable=True)
        report = os.dup2(report, LISTEN_FDS_START + len(moved), inheritable=False)
        os.closerange(report + 1, os.sysconf("SC_OPEN_MAX"))
        if fds:
            environ["LISTEN_FDS"] = str(len(fds))
            environ["LISTEN_PID"] = str(os.getpid())
            environ["LISTEN_FDNAMES"] = ":".join(name for _, name in fds)
        if before_exec is not None:
            before_exec()
        args = list(argv() if callable(argv) else argv)
        try:
            os.execvpe(args[0], args, environ)
        except OSError as exc:
            why = explain(args[0]) if explain is not None else ""
            _report(report, {"exec": args[0], "errno": exc.errno or 0, "why": why})
    except BaseException as exc:  # noqa: BLE001 - report and die in the child
        _report(report, {"errno": getattr(exc, "errno", None) or 0, "message": str(exc)})
    finally:
        os._exit(127)
    raise AssertionError("unreachable")


class SpawnError(Exception):
    """A child could not be started: at exec (``path`` and ``errno`` set, and
    ``why`` the explanation of the check in the child) or before (``message``)."""

    def __init__(self, path: str | None, errno: int, why: str, message: str) -> None:
        super().__init__(message or os.strerror(errno))
        self.path, self.errno, self.why = path, errno, why


def _report(fd: int, fields: dict[str, object]) -> None:
    """In the child: one JSON object down the report pipe (never raises)."""
    import json

    try:
        os.write(fd, json.dumps(fields).encode())
    except BaseException:  # noqa: BLE001 - the child exits 127 anyway; the master sees no report
        pass


def _await_exec(pid: int, report: int) -> int:
    """In the parent: ``pid`` once it has exec'd (the pipe closes empty), or
    SpawnError with the child's report (the child is reaped)."""
    chunks = []
    try:
        while chunk := os.read(report, 65536):
            chunks.append(chunk)
    except BaseException:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise
    finally:
        os.close(report)
    if not chunks:
        return pid
    os.waitpid(pid, 0)
    import json

    try:
        fields = json.loads(b"".join(chunks))
    except ValueError:
        fields = {"message": "the child failed before exec"}
    raise SpawnError(fields.get("exec"), int(fields.get("errno") or 0), str(fields.get("why") or ""),
                     str(fields.get("message") or ""))


class Channel:
    """A control channel: JSON lines over a connected UNIX stream socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buf = b""

    def send(self, data: bytes, fd: int | None = None) -> None:
        if fd is None:
            self.sock.sendall(data)
        else:
            send_fd(self.sock, fd, data)  # small first message: sent whole

    def has_line(self) -> bool:
        """A whole line is already buffered: ``recv_line`` will not block."""
        return b"\n" in self._buf

    def recv_line(self, limit: int, *, want_fd: bool = False) -> tuple[bytes | None, int | None]:
        """Next line (without newline), or None at end of stream."""
        fd = None
        while b"\n" not in self._buf:
            if len(self._buf) > limit:
                raise OSError("control channel: line too long")
            if want_fd and fd is None:
                chunk, fd = recv_fd(self.sock, 65536)
            else:
                chunk = self.sock.recv(65536)
            if not chunk:
                return None, fd
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line, fd

    def close(self) -> None:
        self.sock.close()
