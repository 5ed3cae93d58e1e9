"""Tests of the lacme-webserver program: the real program as a subprocess,
over real TCP (127.0.0.1, ::1) and UNIX sockets, bound by itself (--listen)
or handed over with the sd_listen_fds protocol (lacme.core.descriptors.spawn)."""

from __future__ import annotations

import os
import re
import resource
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Union

import pytest

from lacme.core import descriptors
from lacme.protocol.http01 import CHALLENGE_PREFIX

ROOT = Path(__file__).resolve().parents[1]
ARGV = [sys.executable, "-m", "lacme.webserver"]
TOKEN = "LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0"
KEYAUTH = TOKEN + ".9jg46WB3rR_AHD-EBXdN7cBkH1WOu0tA3M9fm21mqTI"
SECRET = b"not for the outside world"

Address = Union[str, tuple[str, int]]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "NOTIFY_SOCKET", "JOURNAL_STREAM")}
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


# --- a tiny raw HTTP client --------------------------------------------------------------------

def connect(address: Address, timeout: float = 5.0) -> socket.socket:
    if isinstance(address, str):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    else:
        sock = socket.socket(socket.AF_INET6 if ":" in address[0] else socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.connect(address)
    return sock


def read_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


def parse_response(raw: bytes) -> Response:
    head, sep, body = raw.partition(b"\r\n\r\n")
    assert sep, f"incomplete response {raw!r}"
    lines = head.decode("ascii").split("\r\n")
    assert re.fullmatch(r"HTTP/1\.1 \d{3} [A-Za-z ]+", lines[0]), lines[0]
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(": ")
        headers[name.lower()] = value
    return Response(int(lines[0].split()[1]), headers, body)


def exchange(address: Address, data: bytes, timeout: float = 5.0) -> Response:
    with connect(address, timeout) as sock:
        sock.sendall(data)
        return parse_response(read_all(sock))


def request(address: Address, target: str, method: str = "GET") -> Response:
    return exchange(address, f"{method} {target} HTTP/1.1\r\nHost: example.org\r\n\r\n".encode())


def challenge(token: str) -> str:
    return CHALLENGE_PREFIX + token


# --- running the program -----------------------------------------------------------------------

@dataclass
class Server:
    """A webserver started with --listen; its stderr is collected line by line."""

    proc: subprocess.Popen[bytes]
    lines: list[str] = field(default_factory=list)

    def collect(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))

    def wait_line(self, pattern: str, timeout: float = 5.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if match := re.search(pattern, line):
                    return match
            time.sleep(0.02)
        raise AssertionError(f"no log line matching {pattern!r} in {self.lines!r}")

    def addresses(self, count: int) -> list[Address]:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            found = [m.group(1) for line in list(self.lines) if (m := re.match(r"listening on (\S+)$", line))]
            if len(found) >= count:
                return [parse_address(text) for text in found]
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        raise AssertionError(f"server not listening: {self.lines!r}")

    def stop(self, signum: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signum)
        return self.proc.wait(timeout=5)


def parse_address(text: str) -> Address:
    if text.startswith("unix:"):
        return text[5:]
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def start(directory: Path, *listen: str, extra: tuple[str, ...] = ()) -> Server:
    argv = [*ARGV, f"--challenge-directory={directory}", *(f"--listen={a}" for a in listen), *extra]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, env=clean_env())
    server = Server(proc)
    threading.Thread(target=server.collect, daemon=True).start()
    return server


EXIT_CODES: dict[int, int] = {}  # children already reaped


def wait_pid(pid: int, timeout: float) -> int | None:
    """Exit code of child ``pid``, or None if it is still running after ``timeout``."""
    deadline = time.monotonic() + timeout
    while pid not in EXIT_CODES:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            EXIT_CODES[pid] = os.waitstatus_to_exitcode(status)
            break
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.02)
    return EXIT_CODES[pid]


def spawn_with_fds(directory: Path, socks: list[socket.socket], *extra: str, env: dict[str, str] | None = None) -> int:
    argv = [*ARGV, f"--challenge-directory={directory}", *extra]
    return descriptors.spawn(argv, fds=[(s.fileno(), "http") for s in socks], env=env or clean_env())


def stop_pid(pid: int) -> int | None:
    if pid in EXIT_CODES:
        return EXIT_CODES[pid]
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    code = wait_pid(pid, 5)
    if code is None:
        os.kill(pid, signal.SIGKILL)
        wait_pid(pid, 5)
    return code


def listening_tcp(host: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((host, 0))
    sock.listen(128)
    return sock


def listening_unix(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.listen(128)
    return sock


def has_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


# --- fixtures -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tree/challenges holds the challenge files; tree/secret lies outside it."""
    root = tmp_path_factory.mktemp("www")
    (root / "secret").write_bytes(SECRET)
    directory = root / "challenges"
    directory.mkdir()
    (directory / TOKEN).write_text(KEYAUTH)
    return root


@pytest.fixture(scope="module")
def server(tree: Path) -> Iterator[Server]:
    running = start(tree / "challenges", "127.0.0.1:0")
    running.address = running.addresses(1)[0]  # type: ignore[attr-defined]
    yield running
    assert running.stop() == 0


@pytest.fixture(scope="module")
def address(server: Server) -> Address:
    return server.address  # type: ignore[attr-defined,no-any-return]


@pytest.fixture()
def challenges(tree: Path) -> Path:
    return tree / "challenges"


# --- answers -------------------------------------------------------------------------------------

def test_get_serves_key_authorization(address: Address) -> None:
    response = request(address, challenge(TOKEN))
    assert response.status == 200
    assert response.body == KEYAUTH.encode()
    assert response.headers["content-type"] == "text/plain"
    assert response.headers["content-length"] == str(len(KEYAUTH))
    assert response.headers["connection"] == "close"
    assert response.headers["date"].endswith(" GMT")


def test_head_has_length_but_no_body(address: Address) -> None:
    response = request(address, challenge(TOKEN), "HEAD")
    assert response.status == 200
    assert response.headers["content-length"] == str(len(KEYAUTH))
    assert response.body == b""


def test_get_serves_file_written_after_start(address: Address, challenges: Path) -> None:
    (challenges / "late_token").write_text("late_token.thumb")
    assert request(address, challenge("late_token")).body == b"late_token.thumb"


def test_get_unknown_token_is_404(address: Address) -> None:
    response = request(address, challenge("no-such-token"))
    assert response.status == 404 and response.body == b""


@pytest.mark.parametrize("target", [
    "/", "/secret", CHALLENGE_PREFIX, CHALLENGE_PREFIX + "../secret", CHALLENGE_PREFIX + "..%2fsecret",
    CHALLENGE_PREFIX + "%2e%2e/secret", CHALLENGE_PREFIX + "%2E%2E%2Fsecret", CHALLENGE_PREFIX + TOKEN + "?a=b",
    CHALLENGE_PREFIX + TOKEN + "/", "/.well-known/acme-challenge/./" + TOKEN,
    "http://example.org" + CHALLENGE_PREFIX + TOKEN, "http://example.org/" + "../secret",
])
def test_other_targets_are_403(address: Address, target: str) -> None:
    response = request(address, target)
    assert response.status == 403
    assert SECRET not in response.body and KEYAUTH.encode() not in response.body


def test_symlink_is_not_served(address: Address, challenges: Path, tree: Path) -> None:
    (challenges / "linked").symlink_to(tree / "secret")
    response = request(address, challenge("linked"))
    assert response.status == 404 and SECRET not in response.body


def test_fifo_is_not_served_and_does_not_hang(address: Address, challenges: Path) -> None:
    os.mkfifo(challenges / "fifo")
    started = time.monotonic()
    assert exchange(address, f"GET {challenge('fifo')} HTTP/1.0\r\n\r\n".encode(), timeout=3).status == 404
    assert time.monotonic() - started < 2
    assert request(address, challenge(TOKEN)).status == 200


def test_oversized_file_is_not_served(address: Address, challenges: Path) -> None:
    (challenges / "big").write_bytes(b"x" * 5000)
    assert request(address, challenge("big")).status == 404


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS"])
def test_other_methods_are_405_with_allow(address: Address, method: str) -> None:
    response = request(address, challenge(TOKEN), method)
    assert response.status == 405
    assert response.headers["allow"] == "GET, HEAD"
    assert response.body == b""


def test_405_reaches_client_that_sent_a_body(address: Address) -> None:
    body = b"x" * 60000  # more than the server reads before it answers
    head = f"POST {challenge(TOKEN)} HTTP/1.1\r\nHost: a\r\nContent-Length: {len(body)}\r\n\r\n"
    assert exchange(address, head.encode() + body).status == 405


@pytest.mark.parametrize("data", [
    b"GET\r\n\r\n", b"GET / HTTP/1.1 extra\r\nHost: a\r\n\r\n", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
    b"GET / HTTP/1.1\r\n\r\n", b"GET / HTTP/1.1\r\nHost a\r\n\r\n", b"GET /\x7f HTTP/1.0\r\n\r\n",
])
def test_malformed_requests_are_400(address: Address, data: bytes) -> None:
    assert exchange(address, data).status == 400


def test_unsupported_version_is_505(address: Address) -> None:
    assert exchange(address, f"GET {challenge(TOKEN)} HTTP/2.0\r\n\r\n".encode()).status == 505


def test_partial_request_then_eof_is_400(address: Address) -> None:
    with connect(address) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost")
        sock.shutdown(socket.SHUT_WR)
        assert parse_response(read_all(sock)).status == 400


def test_oversized_head_is_431(address: Address) -> None:
    data = f"GET {challenge(TOKEN)} HTTP/1.1\r\nHost: a\r\n".encode() + b"X-Filler: aaaaaaaaaaaaaaaa\r\n" * 400 + b"\r\n"
    assert exchange(address, data).status == 431


def test_overlong_request_line_is_414(address: Address) -> None:
    assert exchange(address, b"GET /" + b"a" * 6000 + b" HTTP/1.1\r\nHost: a\r\n\r\n").status == 414


def test_log_line_names_peer_request_and_status(server: Server, address: Address) -> None:
    with connect(address) as sock:
        sock.sendall(f"GET {challenge(TOKEN)} HTTP/1.1\r\nHost: a\r\n\r\n".encode())
        port = sock.getsockname()[1]
        read_all(sock)
    server.wait_line(rf'^127\.0\.0\.1:{port} "GET {re.escape(challenge(TOKEN))} HTTP/1\.1" 200 {len(KEYAUTH)}$')


def test_log_line_escapes_control_characters(server: Server, address: Address) -> None:
    assert exchange(address, b"GET /\x1b[2Jcleared\r HTTP/1.1\r\nHost: a\r\n\r\n").status == 400
    line = server.wait_line(r"cleared").string
    assert "\x1b" not in line and "\r" not in line
    assert '"GET /\\x1b[2Jcleared\\x0d HTTP/1.1" 400' in line


# --- concurrency and timeouts -------------------------------------------------------------------

def test_many_concurrent_connections_all_answered(address: Address) -> None:
    socks = [connect(address) for _ in range(200)]
    try:
        for sock in socks:
            sock.sendall(f"GET {challenge(TOKEN)} HTTP/1.1\r\nHost: a\r\n\r\n".encode())
        assert all(parse_response(read_all(sock)).body == KEYAUTH.encode() for sock in socks)
    finally:
        for sock in socks:
            sock.close()


def test_idle_and_slow_clients_do_not_delay_valid_request(address: Address) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < 2048:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(4096, hard), hard))
    idle = [connect(address) for _ in range(1000)]
    slow = [connect(address) for _ in range(100)]
    try:
        for sock in slow:
            sock.sendall(b"GET /.well-known/acme-chal")
        started = time.monotonic()
        response = request(address, challenge(TOKEN))
        assert response.status == 200
        assert time.monotonic() - started < 1.0
    finally:
        for sock in idle + slow:
            sock.close()


def test_slow_client_is_cut_while_other_is_served(tree: Path) -> None:
    running = start(tree / "challenges", "127.0.0.1:0", extra=("--request-timeout=1",))
    try:
        address = running.addresses(1)[0]
        trickle = connect(address)
        trickle.sendall(b"G")
        started = time.monotonic()
        assert request(address, challenge(TOKEN)).status == 200
        assert time.monotonic() - started < 1.0
        # one byte every 0.2 s: each read is prompt, the whole head is late
        trickle.setblocking(False)
        raw = b""
        for char in b"ET /.well-known/acme-challenge/" + TOKEN.encode():
            try:
                trickle.send(bytes([char]))
                raw += trickle.recv(4096)
            except (BlockingIOError, BrokenPipeError, ConnectionResetError):
                pass
            if raw or time.monotonic() - started > 4:
                break
            time.sleep(0.2)
        trickle.settimeout(2)
        try:
            raw += read_all(trickle)
        except ConnectionResetError:
            pass
        trickle.close()
        assert time.monotonic() - started < 2.5
        assert parse_response(raw).status == 408
    finally:
        assert running.stop() == 0


def test_oldest_connection_dropped_past_max_connections(tree: Path) -> None:
    running = start(tree / "challenges", "127.0.0.1:0", extra=("--max-connections=5",))
    try:
        address = running.addresses(1)[0]
        oldest = connect(address)
        time.sleep(0.2)
        others = [connect(address) for _ in range(4)]
        time.sleep(0.2)
        assert request(address, challenge(TOKEN)).status == 200
        oldest.settimeout(2)
        try:
            assert oldest.recv(100) == b""
        except ConnectionResetError:
            pass
        for sock in others:
            sock.sendall(f"GET {challenge(TOKEN)} HTTP/1.0\r\n\r\n".encode())
        assert parse_response(read_all(others[-1])).status == 200
        for sock in [oldest, *others]:
            sock.close()
    finally:
        assert running.stop() == 0


# --- listeners -----------------------------------------------------------------------------------

@pytest.mark.skipif(not has_ipv6(), reason="no IPv6 loopback")
def test_listen_ipv6_and_ipv4_together(tree: Path) -> None:
    running = start(tree / "challenges", "[::1]:0", "127.0.0.1:0")
    try:
        v6, v4 = running.addresses(2)
        assert v6[0] == "::1" and v4[0] == "127.0.0.1"
        assert request(v6, challenge(TOKEN)).body == KEYAUTH.encode()
        assert request(v4, challenge(TOKEN)).body == KEYAUTH.encode()
        running.wait_line(r"^\[::1\]:\d+ \"GET .* 200 ")
    finally:
        assert running.stop() == 0


def test_listen_unix_socket_is_0666_and_removed_at_exit(tree: Path, tmp_path: Path) -> None:
    path = tmp_path / "www.socket"
    running = start(tree / "challenges", str(path))
    try:
        assert running.addresses(1) == [str(path)]
        assert stat.S_IMODE(path.stat().st_mode) == 0o666
        assert request(str(path), challenge(TOKEN)).body == KEYAUTH.encode()
        running.wait_line(rf'^unix:{re.escape(str(path))} "GET ')
    finally:
        assert running.stop() == 0
    assert not path.exists()


def test_inherited_tcp_and_unix_sockets_are_served(tree: Path, tmp_path: Path) -> None:
    tcp, unix = listening_tcp(), listening_unix(tmp_path / "inherited.socket")
    pid = spawn_with_fds(tree / "challenges", [tcp, unix])
    try:
        assert request(tcp.getsockname(), challenge(TOKEN)).body == KEYAUTH.encode()
        assert request(str(tmp_path / "inherited.socket"), challenge(TOKEN), "HEAD").status == 200
    finally:
        assert stop_pid(pid) == 0
        tcp.close()
        unix.close()
    assert (tmp_path / "inherited.socket").exists()  # systemd's socket file is not ours to remove


@pytest.mark.skipif(not has_ipv6(), reason="no IPv6 loopback")
def test_inherited_ipv6_socket_is_served(tree: Path) -> None:
    sock = listening_tcp("::1")
    pid = spawn_with_fds(tree / "challenges", [sock])
    try:
        assert request(sock.getsockname()[:2], challenge(TOKEN)).status == 200
    finally:
        assert stop_pid(pid) == 0
        sock.close()


def test_ready_and_stopping_sent_to_notify_socket(tree: Path, tmp_path: Path) -> None:
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.settimeout(20)  # generous: a loaded CI machine is slow to start Python
    sock = listening_tcp()
    pid = spawn_with_fds(tree / "challenges", [sock], env=clean_env(NOTIFY_SOCKET=str(tmp_path / "notify")))
    try:
        assert notify.recv(4096) == b"READY=1"
        os.kill(pid, signal.SIGTERM)
        assert notify.recv(4096) == b"STOPPING=1"
    finally:
        assert stop_pid(pid) == 0
        sock.close()
        notify.close()


# --- lifetime --------------------------------------------------------------------------------------

@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_exits_zero(tree: Path, signum: int) -> None:
    sock = listening_tcp()
    pid = spawn_with_fds(tree / "challenges", [sock])
    try:
        assert request(sock.getsockname(), challenge(TOKEN)).status == 200
        os.kill(pid, signum)
        assert wait_pid(pid, 5) == 0
    finally:
        stop_pid(pid)
        sock.close()


def test_signal_exits_zero_with_open_connection(tree: Path) -> None:
    sock = listening_tcp()
    pid = spawn_with_fds(tree / "challenges", [sock])
    try:
        assert request(sock.getsockname(), challenge(TOKEN)).status == 200
        with connect(sock.getsockname()) as pending:
            pending.sendall(b"GET /")
            time.sleep(0.2)
            os.kill(pid, signal.SIGTERM)
            assert wait_pid(pid, 5) == 0
    finally:
        stop_pid(pid)
        sock.close()


def test_idle_timeout_exits_zero_and_is_reset_by_requests(tree: Path) -> None:
    sock = listening_tcp()
    started = time.monotonic()
    pid = spawn_with_fds(tree / "challenges", [sock], "--idle-timeout=1.5")
    try:
        time.sleep(0.8)
        assert request(sock.getsockname(), challenge(TOKEN)).status == 200
        served = time.monotonic()
        assert wait_pid(pid, max(0.0, served + 1.1 - time.monotonic())) is None  # a request resets the clock
        assert wait_pid(pid, 4) == 0
        assert time.monotonic() - started < 5
    finally:
        stop_pid(pid)
        sock.close()


def test_without_idle_timeout_keeps_running(tree: Path) -> None:
    sock = listening_tcp()
    pid = spawn_with_fds(tree / "challenges", [sock])
    try:
        assert wait_pid(pid, 1.5) is None
        assert request(sock.getsockname(), challenge(TOKEN)).status == 200
    finally:
        assert stop_pid(pid) == 0
        sock.close()


# --- usage ----------------------------------------------------------------------------------------

def run_program(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*ARGV, *args], env=clean_env(), capture_output=True, text=True, timeout=10)


@pytest.mark.parametrize("args, message", [
    (["--challenge-directory=/"], "no listening socket"),
    (["--listen=127.0.0.1:0"], "--challenge-directory"),
    (["--challenge-directory=/nonexistent/dir", "--listen=127.0.0.1:0"], "--challenge-directory=/nonexistent/dir: "),
    (["--challenge-directory=/", "--listen=localhost:80"], "--listen=localhost:80: "),
    (["--challenge-directory=/", "--listen=127.0.0.1:65536"], "--listen=127.0.0.1:65536: "),
    (["--challenge-directory=/", "--listen=[::1]"], "--listen=[::1]: "),
    (["--challenge-directory=/", "--listen=127.0.0.1:0", "--idle-timeout=-1"], "--idle-timeout"),
    (["--challenge-directory=/", "--listen=127.0.0.1:0", "--bogus"], "--bogus"),
])
def test_usage_errors_exit_2_with_one_line(args: list[str], message: str) -> None:
    result = run_program(*args)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and message in result.stderr


def test_address_in_use_exits_1(tree: Path) -> None:
    with listening_tcp() as taken:
        host, port = taken.getsockname()
        result = run_program(f"--challenge-directory={tree / 'challenges'}", f"--listen={host}:{port}")
    assert result.returncode == 1
    assert f"--listen={host}:{port}: Address already in use" in result.stderr


def test_help_exits_0() -> None:
    result = run_program("--help")
    assert result.returncode == 0 and "--challenge-directory" in result.stdout
