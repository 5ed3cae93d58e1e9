"""The webserver stays lean: no asyncio or ssl, loaded at import or while
serving; the command-line fast path agrees with argparse; dates are RFC 9110
IMF-fixdates; the plain log format matches lacme.core.log's."""

from __future__ import annotations

import email.utils
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lacme.core.errors import UsageError
from lacme.protocol import http01
from lacme.webserver import listeners
from lacme.webserver import log as weblog
from lacme.webserver import main as webserver
from tests.test_webserver import (
    KEYAUTH,
    TOKEN,
    Server,
    challenge,
    clean_env,
    listening_tcp,
    request,
    spawn_with_fds,
    stop_pid,
)

HEAVY = ("asyncio", "ssl", "concurrent.futures", "argparse", "email.utils", "dataclasses")

# Serve, and on exit report which of HEAVY were ever loaded (modules are never
# unloaded): on stderr, or into the file named by $REPORT.
REPORTING_MAIN = (
    "import os, sys; from lacme.webserver.main import main; code = main(); "
    f"line = 'LOADED ' + str(sorted(m for m in {HEAVY!r} if m in sys.modules)); "
    "report = os.environ.get('REPORT'); "
    "open(report, 'w').write(line) if report else print(line, file=sys.stderr); "
    "sys.exit(code)"
)


def test_import_loads_no_asyncio_or_ssl() -> None:
    done = subprocess.run(
        [sys.executable, "-c", f"import sys, lacme.webserver.main; print(sorted(m for m in {HEAVY!r} if m in sys.modules))"],
        env=clean_env(), capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.fixture()
def challenges(tmp_path: Path) -> Path:
    directory = tmp_path / "challenges"
    directory.mkdir()
    (directory / TOKEN).write_text(KEYAUTH)
    return directory


def loaded_line(stderr: str) -> str:
    return next(line for line in stderr.splitlines() if line.startswith("LOADED "))


def test_serving_with_listen_loads_no_asyncio_or_ssl(challenges: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", REPORTING_MAIN, f"--challenge-directory={challenges}",
                             "--listen=127.0.0.1:0", "--debug"],
                            stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, env=clean_env())
    server = Server(proc)
    threading.Thread(target=server.collect, daemon=True).start()
    address = server.addresses(1)[0]
    assert request(address, challenge(TOKEN)).body == KEYAUTH.encode()
    assert request(address, challenge("absent")).status == 404
    assert server.stop() == 0
    server.wait_line(r"^LOADED ")
    assert loaded_line("\n".join(server.lines)) == "LOADED []"


def test_serving_inherited_socket_with_notify_loads_no_asyncio_or_ssl(challenges: Path, tmp_path: Path) -> None:
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.settimeout(20)
    sock = listening_tcp()
    report = tmp_path / "report"
    argv = [sys.executable, "-c", REPORTING_MAIN, f"--challenge-directory={challenges}"]
    env = clean_env(NOTIFY_SOCKET=str(tmp_path / "notify"), REPORT=str(report))
    from lacme.core import descriptors

    pid = descriptors.spawn(argv, fds=[(sock.fileno(), "http")], env=env)
    try:
        assert notify.recv(4096) == b"READY=1"
        assert request(sock.getsockname(), challenge(TOKEN)).status == 200
        os.kill(pid, signal.SIGTERM)
        assert notify.recv(4096) == b"STOPPING=1"
        assert stop_pid(pid) == 0
        assert report.read_text() == "LOADED []"
    finally:
        stop_pid(pid)
        sock.close()
        notify.close()


def test_abstract_notify_socket_gets_ready(challenges: Path) -> None:
    """NOTIFY_SOCKET=@name is a socket in the abstract namespace (sd_notify(3)); the master uses one."""
    name = f"lacme-test-notify-{os.getpid()}"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind("\0" + name)
    notify.settimeout(20)
    sock = listening_tcp()
    pid = spawn_with_fds(challenges, [sock], env=clean_env(NOTIFY_SOCKET="@" + name))
    try:
        assert notify.recv(4096) == b"READY=1"
    finally:
        assert stop_pid(pid) == 0
        sock.close()
        notify.close()


# --- the command line -----------------------------------------------------------------------------

COMMAND_LINES = [
    ["--challenge-directory=/srv"],
    ["--challenge-directory", "/srv", "--listen", "127.0.0.1:80", "--listen=[::1]:80", "-q"],
    ["--challenge-directory=/srv", "--idle-timeout=60", "--request-timeout=2.5", "--max-connections=7",
     "--debug", "--quiet"],
    ["--listen=/run/x.socket", "--challenge-directory=/a", "--challenge-directory=/b", "--idle-timeout", "0"],
    ["--challenge-directory=", "--listen="],
]


def as_tuple(options: webserver.Options) -> tuple[object, ...]:
    return tuple(getattr(options, name) for name in webserver.Options.__slots__)


@pytest.mark.parametrize("argv", COMMAND_LINES)
def test_fast_command_line_agrees_with_argparse(argv: list[str]) -> None:
    fast = webserver._parse_simple(argv)
    assert fast is not None  # these take the fast path
    slow = webserver._parse_with_argparse(argv)
    fast["listen"], slow["listen"] = tuple(fast["listen"]), tuple(slow["listen"])  # type: ignore[call-overload]
    assert as_tuple(webserver.Options(**fast)) == as_tuple(webserver.Options(**slow))  # type: ignore[arg-type]


@pytest.mark.parametrize("argv", [
    [], ["--listen=127.0.0.1:80"], ["--challenge-dir=/srv"], ["--challenge-directory=/srv", "--idle-timeout=-1"],
    ["--challenge-directory=/srv", "--idle-timeout", "-1"], ["--challenge-directory=/srv", "--max-connections=0"],
    ["--challenge-directory=/srv", "--debug=1"], ["--challenge-directory=/srv", "extra"],
    ["--challenge-directory=/srv", "--listen"], ["--challenge-directory=/srv", "--idle-timeout=nan"],
    ["--challenge-directory=/srv", "--idle-timeout=inf"], ["-h"],
])
def test_other_command_lines_go_to_argparse(argv: list[str]) -> None:
    assert webserver._parse_simple(argv) is None


def test_request_timeout_zero_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="--request-timeout"):
        webserver.parse_args(["--challenge-directory=/srv", "--request-timeout=0"])


@pytest.mark.parametrize("text, expected", [
    ("127.0.0.1:80", (socket.AF_INET, ("127.0.0.1", 80))),
    ("[::1]:8080", (socket.AF_INET6, ("::1", 8080))),
    ("[::ffff:192.0.2.1]:0", (socket.AF_INET6, ("::ffff:192.0.2.1", 0))),
    ("/run/lacme-www.socket", (socket.AF_UNIX, "/run/lacme-www.socket")),
])
def test_parse_listen_address_accepts(text: str, expected: object) -> None:
    assert listeners.parse_listen_address(text) == expected


@pytest.mark.parametrize("text", [
    "localhost:80", "127.0.0.1:65536", "127.0.0.1:", "127.0.0.1:123456", "127.0.0.1:8 ", "127.0.0.1:٨٠",
    "[::1]", "[::1]:", "::1:80", "[::g]:80", "[]:80", "1.2.3:80", "1.2.3.4:80\n", "[::1]:80:80", "relative/path",
])
def test_parse_listen_address_rejects(text: str) -> None:
    with pytest.raises(UsageError, match="--listen="):
        listeners.parse_listen_address(text)


# --- dates and log lines ----------------------------------------------------------------------------

@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=2**33))
def test_http_date_is_the_imf_fixdate(seconds: int) -> None:
    assert http01.http_date(seconds) == email.utils.formatdate(seconds, usegmt=True)


@pytest.mark.parametrize("level, text, line", [
    ("info", "plain %s", "plain words"),
    ("warning", "careful %s", "warning: careful words"),
    ("error", "broken %s", "error: broken words"),
    ("error", "error in %s", "error in words"),
])
def test_plain_log_format(level: str, text: str, line: str, capsys: pytest.CaptureFixture[str],
                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    log = weblog.Log()
    log.setup()
    getattr(log, level)(text, "words")
    log.debug("not shown")
    assert capsys.readouterr().err == line + "\n"


def test_quiet_and_debug_levels(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    log = weblog.Log()
    log.setup(quiet=True)
    log.info("hidden")
    log.warning("shown")
    log.setup(debug=True)
    log.debug("details %d", 1)
    assert capsys.readouterr().err == "warning: shown\ndetails 1\n"
