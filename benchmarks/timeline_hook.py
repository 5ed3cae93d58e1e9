"""Per-process event log for benchmarks/timeline.py (measurement only, never installed).

timeline.py copies this module into the benchmark venv's site-packages with a
``.pth`` line that imports it, for the duration of one timed S1, and removes
both afterwards.  In every Python process of that venv (the master and the
components it spawns, whatever user they run as) it appends one line per
event to ``DIRECTORY/<pid>.tsv`` when DIRECTORY exists: CLOCK_MONOTONIC
seconds, the event, a detail.  Events: ``ready`` (the interpreter is up:
``site`` imports this), ``import`` of a top-level or ``lacme.*`` module,
``fork`` and ``exec`` (audit events), ``connect`` (a socket), ``request``
(the request line of each HTTP request, from the ``http.client.send``
audit event), ``unix`` (the first bytes of each message sent on a UNIX
socket: the control channel and the accountd wire), ``write`` (a file
opened for writing outside /proc and /dev), ``exit`` (sys.exit, a normal
end, or os._exit).
"""

from __future__ import annotations

import atexit
import os
import socket
import sys
import time

DIRECTORY = "/tmp/lacme-bench-timeline"
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT


def _log(event: str, detail: str = "") -> None:
    detail = detail.replace("\n", " ").replace("\t", " ")
    line = f"{time.monotonic():.6f}\t{event}\t{detail}\n".encode(errors="replace")
    try:
        fd = os.open(f"{DIRECTORY}/{os.getpid()}.tsv", os.O_WRONLY | os.O_APPEND | os.O_CREAT,
                     0o666)
    except OSError:
        return
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def _audit(event: str, args: tuple) -> None:
    if event == "import":
        name = args[0]
        if "." not in name or name.startswith("lacme."):
            _log("import", name)
    elif event == "os.fork":
        _log("fork")
    elif event == "os.exec":
        _log("exec", os.path.basename(os.fsdecode(args[0])))
    elif event == "socket.connect":
        _log("connect", str(args[1])[:60])
    elif event == "http.client.send":
        data = args[1]
        if isinstance(data, (bytes, bytearray)) and data[:8].split(b" ")[0] in (
                b"GET", b"HEAD", b"POST"):
            _log("request", bytes(data).split(b"\r\n", 1)[0].decode(errors="replace"))
    elif event == "open":
        path, mode, flags = args
        writing = (mode and any(c in str(mode) for c in "wax+")) or (
            isinstance(flags, int) and flags & _WRITE_FLAGS)
        if writing and isinstance(path, str) and not path.startswith(("/proc", "/dev", DIRECTORY)):
            _log("write", path)


def _wrap_unix(method_name: str) -> None:
    original = getattr(socket.socket, method_name)

    def wrapped(self: socket.socket, data: bytes, *args: object) -> object:
        if self.family == socket.AF_UNIX:
            _log("unix", bytes(data[:48]).decode(errors="replace"))
        return original(self, data, *args)

    setattr(socket.socket, method_name, wrapped)


def _install() -> None:
    with open("/proc/self/cmdline", "rb") as fh:
        argv = [a.decode(errors="replace") for a in fh.read().split(b"\0") if a]
    _log("ready", " ".join(os.path.basename(a) for a in argv[:2]))
    sys.addaudithook(_audit)
    _wrap_unix("sendall")
    _wrap_unix("send")
    real_exit = os._exit

    def _exit(code: int) -> None:
        _log("exit", str(code))
        real_exit(code)

    os._exit = _exit
    atexit.register(_log, "exit", "")


if os.path.isdir(DIRECTORY):
    _install()
