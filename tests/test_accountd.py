"""Tests for the lacme-accountd program, run as a real subprocess.

Modes: --stdio, a socket it binds, descriptors handed over the
sd_listen_fds(3) way (a listening socket and a connected one).  Signatures
are verified with cryptography; the original Perl lacme-accountd, when
installed, is the reference for byte compatibility.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from lacme.core import descriptors
from lacme.core.record import replace
from lacme.protocol import jwk_keys, jws, wire

ROOT = Path(__file__).resolve().parents[1]
ACCOUNTD = [sys.executable, "-m", "lacme.accountd"]
DEBIAN_ACCOUNTD = "/usr/bin/lacme-accountd"
KID = "https://ca.example:14000/my-account/7"
ORIGIN = "https://ca.example:14000"
TIMEOUT = 20


# --- fixtures and helpers -----------------------------------------------------

def write_key(path: Path, key, fmt=serialization.PrivateFormat.PKCS8) -> Path:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption()))
    path.chmod(0o600)
    return path


@pytest.fixture(scope="module")
def keydir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("keys")
    rsa_key = rsa.generate_private_key(65537, 2048)
    write_key(d / "RS256.pem", rsa_key, serialization.PrivateFormat.TraditionalOpenSSL)
    write_key(d / "ES256.pem", ec.generate_private_key(ec.SECP256R1()))
    write_key(d / "ES384.pem", ec.generate_private_key(ec.SECP384R1()))
    write_key(d / "RS256-pkcs8.pem", rsa_key)
    write_key(d / "small.pem", rsa.generate_private_key(65537, 1024))
    write_key(d / "damaged.pem", damaged_rsa_key(rsa_key), serialization.PrivateFormat.TraditionalOpenSSL)
    (d / "garbage.pem").write_text("not a key\n")
    return d


def damaged_rsa_key(key):
    """``key`` with one CRT exponent off by two: signatures made with it would leak p."""
    n = key.private_numbers()
    bad = rsa.RSAPrivateNumbers(n.p, n.q, n.d, n.dmp1 ^ 2, n.dmq1, n.iqmp, n.public_numbers)
    return bad.private_key(unsafe_skip_rsa_key_validation=True)


def public_key_of(path: Path):
    return serialization.load_pem_private_key(path.read_bytes(), None).public_key()


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT)
    for k in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "NOTIFY_SOCKET", "JOURNAL_STREAM", "LACME_ACCOUNTD_ORIGIN"):
        e.pop(k, None)
    return e


def write_config(path: Path, **settings: str) -> Path:
    path.write_text("".join(f"{k} = {v}\n" for k, v in settings.items()))
    return path


def header(alg="RS256", url=ORIGIN + "/acme/new-order", **extra) -> dict:
    h = {"alg": alg, "nonce": "bm9uY2UtMQ", "url": url}
    h.update(extra)
    return {k: v for k, v in h.items() if v is not None}


def line_for(h: dict, payload: dict | None = None) -> bytes:
    return wire.encode_sign_request(jws.signing_input(h, payload))


def raw_line(h: bytes, payload: bytes = b"") -> bytes:
    return jws.b64u_encode(h).encode() + b"." + jws.b64u_encode(payload).encode() + b"\r\n"


class Stdio:
    """An accountd (ours or Debian's) serving one connection on its stdin/stdout."""

    def __init__(self, argv: list[str], extra_env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     env={**env(), **(extra_env or {})}, cwd=ROOT)
        self.first = self.proc.stdout.readline()
        self.jwk_line = self.proc.stdout.readline()

    def greeting(self) -> wire.Greeting:
        return wire.parse_greeting(self.first, self.jwk_line)

    def request(self, line: bytes) -> bytes:
        """The answer line, b"" when the connection was closed."""
        try:
            self.proc.stdin.write(line)
            self.proc.stdin.flush()
        except BrokenPipeError:
            return b""
        return self.proc.stdout.readline()

    def finish(self) -> tuple[int, str]:
        try:
            self.proc.stdin.close()
        except BrokenPipeError:
            pass
        err = self.proc.stderr.read().decode()
        return self.proc.wait(TIMEOUT), err


def ours(*args: str) -> Stdio:
    return Stdio([*ACCOUNTD, "--stdio", *args])


def run_ours(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*ACCOUNTD, *args], capture_output=True, text=True, env=env(), cwd=ROOT,
                          timeout=TIMEOUT, stdin=subprocess.DEVNULL)


def wait_for(predicate, what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


class Client:
    """A connected socket speaking the wire protocol."""

    def __init__(self, sock: socket.socket) -> None:
        sock.settimeout(TIMEOUT)
        self.sock = sock
        self.rfile = sock.makefile("rb")
        self.greeting = wire.parse_greeting(self.rfile.readline(), self.rfile.readline())

    def sign(self, line: bytes) -> bytes:
        self.sock.sendall(line)
        return wire.parse_signature(self.rfile.readline())

    def close(self) -> None:
        self.rfile.close()
        self.sock.close()


def connect(path: Path) -> Client:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(str(path))
    return Client(s)


def wait_listening(path: Path, proc: subprocess.Popen) -> None:
    """Until ``path`` accepts connections (it exists between bind and listen)."""
    def listening() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"accountd exited with {proc.returncode}: {proc.stderr.read().decode()}")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            try:
                s.connect(str(path))
            except (FileNotFoundError, ConnectionRefusedError):
                return False
            return True

    wait_for(listening, f"{path} to accept connections")


@pytest.fixture
def private_dir():
    d = Path(tempfile.mkdtemp(prefix="accountd-", dir="/tmp"))  # short: AF_UNIX path limit
    d.chmod(0o700)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def verify(path: Path, alg: str, line: bytes, sig: bytes) -> bool:
    return jwk_keys.verify(public_key_of(path), alg, line.rstrip(b"\r\n"), sig)


# --- stdio mode: greeting and signatures ------------------------------------

@pytest.mark.parametrize("alg", ["RS256", "ES256", "ES384"])
def test_stdio_signatures_verify_for_each_key_type(keydir, tmp_path, alg):
    key = keydir / f"{alg}.pem"
    conf = write_config(tmp_path / "a.conf")
    d = ours(f"--config={conf}", f"--privkey=file:{key}")
    g = d.greeting()
    jwk = jwk_keys.public_jwk(public_key_of(key))
    assert g == wire.Greeting(alg, jws.jwk_thumbprint(jwk), None, jwk, scope=1)  # this accountd enforces scopes
    assert d.jwk_line == jws.canonical_json(jwk) + b"\r\n"
    lines = [line_for(header(alg, jwk=jwk), {"termsOfServiceAgreed": True}),
             line_for(header(alg, kid=KID), None),
             line_for(header(alg, kid=KID), {"identifiers": [{"type": "dns", "value": "é.example"}]})]
    for line in lines:
        sig = wire.parse_signature(d.request(line))
        assert verify(key, alg, line, sig)
    rc, err = d.finish()
    assert rc == 0
    assert err.count("SIGNED") == 3 and "termsOfServiceAgreed" in err and "new-order" in err


def test_stdio_accepts_pkcs8_and_traditional_rsa_pem(keydir, tmp_path):
    conf = write_config(tmp_path / "a.conf")
    a = ours(f"--config={conf}", f"--privkey=file:{keydir / 'RS256.pem'}")
    b = ours(f"--config={conf}", f"--privkey=file:{keydir / 'RS256-pkcs8.pem'}")
    assert a.jwk_line == b.jwk_line and a.first == b.first
    assert a.finish()[0] == b.finish()[0] == 0


def test_config_file_privkey_and_keyid_mode(keydir, tmp_path):
    key = keydir / "ES256.pem"
    conf = write_config(tmp_path / "a.conf", privkey=f"file:{key}", keyid=KID)
    d = ours(f"--config={conf}")
    g = d.greeting()
    assert g.kid == KID and g.jwk == {} and d.jwk_line == b"{}\r\n"
    assert g.jwk_thumbprint == jws.jwk_thumbprint(jwk_keys.public_jwk(public_key_of(key)))
    line = line_for(header("ES256", kid=KID), None)
    assert verify(key, "ES256", line, wire.parse_signature(d.request(line)))
    jwk_line = line_for(header("ES256", jwk=jwk_keys.public_jwk(public_key_of(key))), {})
    assert d.request(jwk_line) == b""
    rc, err = d.finish()
    assert rc == 1 and "NOSIGN" in err and "key id is configured" in err


def test_command_line_privkey_wins_over_config(keydir, tmp_path):
    conf = write_config(tmp_path / "a.conf", privkey=f"file:{keydir / 'ES384.pem'}")
    d = ours(f"--config={conf}", f"--privkey=file:{keydir / 'ES256.pem'}")
    assert d.greeting().alg == "ES256"
    d.finish()


@pytest.mark.parametrize(
    "make_line,reason",
    [
        (lambda jwk: b"hello world\r\n", "not a JWS"),
        (lambda jwk: b"e30.e30.e30\r\n", "not a JWS"),
        (lambda jwk: line_for(header("ES256", kid=KID)), "alg"),
        (lambda jwk: line_for({"alg": "RS256", "url": ORIGIN + "/x", "kid": KID}), "nonce"),
        (lambda jwk: line_for({"alg": "RS256", "nonce": "n", "kid": KID}), "url"),
        (lambda jwk: line_for(header(kid=KID, jwk=jwk)), "exactly one"),
        (lambda jwk: raw_line(json.dumps(header(kid=KID)).encode(), b"[1,2]"), "payload"),
        (lambda jwk: raw_line(json.dumps(header(kid=KID)).encode(), b'"x"'), "payload"),
        (lambda jwk: line_for(header(url="https://evil.example/acme/new-order", kid=KID)), "not on"),
    ],
)
def test_refusal_closes_connection_and_is_logged(keydir, tmp_path, make_line, reason):
    key = keydir / "RS256.pem"
    log = tmp_path / "accountd.log"
    conf = write_config(tmp_path / "a.conf", privkey=f"file:{key}", logfile=str(log))
    d = ours(f"--config={conf}", f"--origin={ORIGIN}")
    jwk = d.greeting().jwk
    good = line_for(header(kid=KID), None)
    assert wire.parse_signature(d.request(good))
    assert d.request(make_line(jwk)) == b""  # connection closed, nothing signed
    assert d.request(good) == b""
    rc, err = d.finish()
    # with --stdio a refusal is this program's error: one line, exit status 1
    assert rc == 1
    assert err.count("SIGNED") == 1 and err.count("NOSIGN") == 1 and reason in err
    refusal = [x for x in err.splitlines() if "NOSIGN" in x]
    assert refusal[0].startswith("error: lacme-accountd: refused to sign (NOSIGN): "), err
    logged = log.read_text()
    assert logged.count("SIGNED") == 1 and "error: " in logged and reason in logged


def test_origin_from_environment_pins_unless_option_given(keydir, tmp_path):
    conf = write_config(tmp_path / "a.conf", privkey=f"file:{keydir / 'RS256.pem'}")
    foreign = line_for(header(url="https://evil.example/x", kid=KID))
    pinned = Stdio([*ACCOUNTD, "--stdio", f"--config={conf}"], {"LACME_ACCOUNTD_ORIGIN": ORIGIN})
    assert pinned.request(line_for(header(kid=KID))) and pinned.request(foreign) == b""
    pinned.finish()
    overridden = Stdio([*ACCOUNTD, "--stdio", f"--config={conf}", "--origin=https://evil.example"],
                       {"LACME_ACCOUNTD_ORIGIN": ORIGIN})
    assert overridden.request(foreign)
    overridden.finish()


def test_quiet_hides_signatures_from_stderr_not_from_logfile(keydir, tmp_path):
    log = tmp_path / "accountd.log"
    conf = write_config(tmp_path / "a.conf", privkey=f"file:{keydir / 'RS256.pem'}", logfile=str(log), quiet="Yes")
    d = ours(f"--config={conf}")
    assert d.request(line_for(header(kid=KID), {"a": 1}))
    rc, err = d.finish()
    assert rc == 0 and "SIGNED" not in err
    entries = log.read_text().splitlines()
    signed = [e for e in entries if "SIGNED" in e]
    assert len(signed) == 1 and signed[0].startswith("[") and '"a":1' in signed[0]


def test_control_characters_escaped_in_log(keydir, tmp_path):
    conf = write_config(tmp_path / "a.conf", privkey=f"file:{keydir / 'RS256.pem'}")
    d = ours(f"--config={conf}")
    assert d.request(raw_line(json.dumps(header(kid=KID)).encode(), b'{\n"a":\t1\r}'))
    rc, err = d.finish()
    signed = [e for e in err.splitlines() if "SIGNED" in e]
    assert rc == 0 and len(signed) == 1
    assert '{\\x0a"a":\\x091\\x0d}' in signed[0]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_stdio_stop_signal_exits_cleanly(keydir, tmp_path, signum):
    conf = write_config(tmp_path / "a.conf", privkey=f"file:{keydir / 'ES256.pem'}")
    d = ours(f"--config={conf}")
    assert d.greeting().alg == "ES256"
    d.proc.send_signal(signum)  # while it waits for a request
    assert d.proc.wait(TIMEOUT) == 0
    rc, err = d.finish()
    assert rc == 0 and "Traceback" not in err and "Fatal" not in err


# --- start-up errors --------------------------------------------------------

@pytest.mark.parametrize(
    "args,code,text",
    [
        (["--privkey=file:/nonexistent/key.pem"], 1, "/nonexistent/key.pem: No such file"),
        (["--privkey=file:{keys}/garbage.pem"], 1, "garbage.pem: not a PEM private key"),
        (["--privkey=file:{keys}/small.pem"], 1, "small.pem: RSA key of 1024 bits is too small"),
        (["--privkey=file:{keys}/damaged.pem"], 1, "damaged.pem: inconsistent RSA private key"),
        (["--privkey=ftp:/x"], 2, "--privkey"),
        ([], 2, "privkey is not set"),
        (["--privkey=file:{keys}/RS256.pem", "--origin=http://ca.example"], 2, "--origin"),
        (["--bogus"], 2, "--bogus"),
    ],
)
def test_startup_error_is_one_line_with_exit_code(keydir, tmp_path, args, code, text):
    conf = write_config(tmp_path / "a.conf")
    done = run_ours("--stdio", f"--config={conf}", *[a.format(keys=keydir) for a in args])
    assert done.returncode == code
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and text in lines[0]


def test_missing_explicit_config_is_an_error(keydir, tmp_path):
    done = run_ours("--stdio", f"--config={tmp_path}/nope.conf", f"--privkey=file:{keydir}/RS256.pem")
    assert done.returncode == 2 and "nope.conf" in done.stderr


# --- socket mode -----------------------------------------------------------

def start_bound(conf: Path, sock: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([*ACCOUNTD, f"--config={conf}", f"--socket={sock}", *extra], env=env(), cwd=ROOT,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_socket_mode_serves_concurrently_mode_0600_removed_on_sigterm(keydir, tmp_path, private_dir):
    key = keydir / "ES384.pem"
    conf = write_config(tmp_path / "a.conf", privkey=f"file:{key}")
    path = private_dir / "S.lacme"
    proc = start_bound(conf, path)
    try:
        wait_listening(path, proc)
        assert stat.S_ISSOCK(path.lstat().st_mode) and stat.S_IMODE(path.lstat().st_mode) == 0o600
        first, second = connect(path), connect(path)  # both greeted while both are open
        line = line_for(header("ES384", kid=KID), None)
        assert verify(key, "ES384", line, second.sign(line))
        assert verify(key, "ES384", line, first.sign(line))
        proc.send_signal(signal.SIGTERM)  # with both connections still open
        assert proc.wait(TIMEOUT) == 0
        assert not path.exists()
        first.close(), second.close()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_socket_mode_sigint_exits_cleanly(keydir, tmp_path, private_dir):
    conf = write_config(tmp_path / "a.conf", privkey=f"file:{keydir / 'ES256.pem'}")
    path = private_dir / "S"
    proc = start_bound(conf, path)
    wait_listening(path, proc)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(TIMEOUT) == 0 and not path.exists()


def test_socket_mode_refuses_existing_path(keydir, tmp_path, private_dir):
    conf = write_config(tmp_path / "a.conf", privkey=f"file:{keydir / 'ES256.pem'}")
    path = private_dir / "S"
    path.write_text("keep me")
    done = run_ours(f"--config={conf}", f"--socket={path}")
    assert done.returncode == 1 and f"{path}: already exists" in done.stderr
    assert path.read_text() == "keep me"


@pytest.mark.parametrize("mode", [0o770, 0o707, 0o1777])
def test_socket_mode_refuses_parent_writable_by_others(keydir, tmp_path, private_dir, mode):
    conf = write_config(tmp_path / "a.conf", privkey=f"file:{keydir / 'ES256.pem'}")
    private_dir.chmod(mode)
    done = run_ours(f"--config={conf}", f"--socket={private_dir / 'S'}")
    assert done.returncode == 1 and "insecure permissions" in done.stderr and str(private_dir) in done.stderr
    assert not (private_dir / "S").exists()


def test_socket_setting_from_config(keydir, tmp_path, private_dir):
    path = private_dir / "S.conf"
    conf = write_config(tmp_path / "a.conf", privkey=f"file:{keydir / 'ES256.pem'}", socket=str(path))
    proc = subprocess.Popen([*ACCOUNTD, f"--config={conf}"], env=env(), cwd=ROOT, stdin=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        wait_listening(path, proc)
        client = connect(path)  # stays open across SIGTERM
        assert client.greeting.alg == "ES256"
    finally:
        proc.terminate()
        assert proc.wait(TIMEOUT) == 0
    assert not path.exists()


# --- gpg ---------------------------------------------------------------------

@pytest.mark.skipif(shutil.which("gpg") is None, reason="gpg absent")
def test_gpg_encrypted_key(keydir, tmp_path, private_dir):
    home = private_dir / "g"
    home.mkdir(mode=0o700)
    secret = tmp_path / "passphrase"
    secret.write_text("correct horse\n")
    encrypted = tmp_path / "key.pem.gpg"
    subprocess.run(["gpg", "--homedir", str(home), "--batch", "--quiet", "--pinentry-mode", "loopback",
                    "--passphrase-file", str(secret), "--symmetric", "-o", str(encrypted),
                    str(keydir / "ES256.pem")], check=True, capture_output=True, timeout=TIMEOUT)
    gpg = f"gpg --homedir {home} --batch --quiet --no-symkey-cache --pinentry-mode loopback --passphrase-file"
    try:
        conf = write_config(tmp_path / "a.conf", privkey=f"gpg:{encrypted}", gpg=f"{gpg} {secret}")
        d = ours(f"--config={conf}")
        assert d.greeting().jwk == jwk_keys.public_jwk(public_key_of(keydir / "ES256.pem"))
        line = line_for(header("ES256", kid=KID), None)
        assert verify(keydir / "ES256.pem", "ES256", line, wire.parse_signature(d.request(line)))
        assert d.finish()[0] == 0

        wrong = tmp_path / "wrong"
        wrong.write_text("wrong\n")
        conf = write_config(tmp_path / "b.conf", privkey=f"gpg:{encrypted}", gpg=f"{gpg} {wrong}")
        done = run_ours("--stdio", f"--config={conf}")
        assert done.returncode == 1 and f"{encrypted}: gpg exited with status" in done.stderr
        assert done.stdout == ""
    finally:
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"], capture_output=True)


# --- descriptors over sd_listen_fds -----------------------------------------

def spawn_ours(args: list[str], fds: list[tuple[int, str]], extra_env: dict[str, str] | None = None) -> int:
    e = env()
    e.update(extra_env or {})
    return descriptors.spawn([*ACCOUNTD, *args], fds=fds, env=e)


def wait_pid(pid: int) -> int:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise AssertionError("child did not exit")


def test_inherited_listening_socket_notifies_ready_and_serves(keydir, tmp_path, private_dir):
    key = keydir / "RS256.pem"
    log = tmp_path / "accountd.log"
    conf = write_config(tmp_path / "a.conf", privkey=f"file:{key}", logfile=str(log))
    path = private_dir / "listen"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen()
    notify_path = private_dir / "notify"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    notify.settimeout(TIMEOUT)
    pid = spawn_ours([f"--config={conf}"], [(listener.fileno(), "accountd")], {"NOTIFY_SOCKET": str(notify_path)})
    try:
        listener.close()  # the child holds it now
        assert b"READY=1" in notify.recv(4096)
        for _ in range(2):  # an accept loop: more than one connection
            c = connect(path)
            line = line_for(header(kid=KID), {"n": 1})
            assert verify(key, "RS256", line, c.sign(line))
            c.close()
        os.kill(pid, signal.SIGTERM)
        assert wait_pid(pid) == 0
    finally:
        notify.close()
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
    assert log.read_text().count("SIGNED") == 2
    assert path.exists()  # not ours to remove: it belongs to whoever bound it


def test_inherited_connected_socket_served_then_exit(keydir, tmp_path):
    key = keydir / "ES256.pem"
    conf = write_config(tmp_path / "a.conf", privkey=f"file:{key}")
    ours_end, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    pid = spawn_ours([f"--config={conf}"], [(theirs.fileno(), "connection")])
    theirs.close()
    try:
        c = Client(ours_end)
        assert c.greeting.alg == "ES256"
        line = line_for(header("ES256", kid=KID), None)
        assert verify(key, "ES256", line, c.sign(line))
        c.close()
        assert wait_pid(pid) == 0
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


# --- byte compatibility with Debian's lacme-accountd 0.8.2 -----------------

def debian_usable() -> bool:
    if not os.access(DEBIAN_ACCOUNTD, os.X_OK):
        return False
    return subprocess.run(["perl", "-MCrypt::OpenSSL::RSA", "-e", "1"], capture_output=True).returncode == 0


needs_debian = pytest.mark.skipif(not debian_usable(), reason="Debian's lacme-accountd (with Crypt::OpenSSL::RSA) absent")


def debian(key: Path) -> Stdio:
    # --config=/dev/null: do not read /etc/lacme/lacme-accountd.conf
    return Stdio([DEBIAN_ACCOUNTD, "--config=/dev/null", "--stdio", f"--privkey=file:{key}"])


@needs_debian
def test_byte_compatible_with_debian_accountd(keydir):
    key = keydir / "RS256.pem"
    theirs, mine = debian(key), ours("--config=/dev/null", f"--privkey=file:{key}")
    assert mine.jwk_line == theirs.jwk_line
    assert mine.first.startswith(b"1 OK ") and theirs.first.startswith(b"1 OK ")
    # The same members, plus the scope capability (lacme.protocol.wire's
    # extension), which Debian's 0.8.2 does not announce.
    assert json.loads(mine.first[5:]) == {**json.loads(theirs.first[5:]), "scope": 1}
    assert mine.greeting() == replace(theirs.greeting(), scope=1)
    jwk = mine.greeting().jwk
    requests = [
        line_for(header(jwk=jwk), {"termsOfServiceAgreed": True, "contact": ["mailto:a@example.org"]}),
        line_for(header(kid=KID), None),
        line_for(header(kid=KID), {}),
        line_for(header(kid=KID), {"identifiers": [{"type": "dns", "value": "bücher.example"}]}),
    ]
    for line in requests:
        answer = mine.request(line)
        assert answer == theirs.request(line)
        assert verify(key, "RS256", line, wire.parse_signature(answer))
    assert mine.finish()[0] == 0 and theirs.finish()[0] == 0


REFUSED_BY_OURS = {
    "not-jws": b"hello\r\n",
    "header-not-object": raw_line(b"[1]"),
    "no-nonce": line_for({"alg": "RS256", "url": ORIGIN + "/x", "kid": KID}),
    "no-url": line_for({"alg": "RS256", "nonce": "n", "kid": KID}),
    "wrong-alg": line_for(header("ES256", kid=KID)),
    "jwk-and-kid": line_for(header(kid=KID, jwk={"kty": "RSA", "n": "AQAB", "e": "AQAB"})),
    "payload-array": raw_line(json.dumps(header(kid=KID)).encode(), b"[1]"),
    "crit-b64": line_for(header(kid=KID, crit=["b64"], b64=False)),
}


@needs_debian
@pytest.mark.parametrize("line", REFUSED_BY_OURS.values(), ids=REFUSED_BY_OURS.keys())
def test_ours_refuses_whatever_debian_refuses_and_more(keydir, line):
    key = keydir / "RS256.pem"
    theirs, mine = debian(key), ours("--config=/dev/null", f"--privkey=file:{key}")
    mine_answer, their_answer = mine.request(line), theirs.request(line)
    assert mine_answer == b""  # we refuse every one of these
    if their_answer:  # Debian is laxer here; had it signed, the bytes would have been ours
        assert verify(key, "RS256", line, wire.parse_signature(their_answer))
    assert mine.finish()[0] == 1  # a refusal: its error, exit status 1
    theirs.finish()
