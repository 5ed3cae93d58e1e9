"""Test harness: a real Pebble ACME CA (Debian's pebble 2.4) on loopback ports.

Run by the test process (any user, no privilege).  ``start_pebble`` starts
``pebble-challtestsrv`` as a DNS server that answers every name with
127.0.0.1, then ``pebble -strict`` with a throwaway TLS certificate for its
own HTTPS listeners, and waits until the RFC 8555 (section 7.1.1) directory
answers.  Pebble's VA fetches http-01 answers from ``http://NAME:http_port/``,
i.e. from 127.0.0.1:http_port.

Request counting reads Pebble's log lines ``<METHOD> <PATH> -> calling
handler()``.  Paths are reduced to endpoint names: the query is dropped and
only the first path segment is kept, so ``POST /authZ/abc`` counts as
``"POST /authZ"``; ``"HEAD /nonce-plz"``, ``"POST /sign-me-up"`` (newAccount),
``"POST /order-plz"`` (newOrder), ``"POST /my-order"``, ``"POST /chalZ"``,
``"POST /finalize-order"``, ``"POST /certZ"``, ``"POST /my-account"``,
``"POST /revoke-cert"``, ``"POST /rollover-account-key"``, ``"GET /dir"``.

Environment: ``PEBBLE_*`` variables of the calling environment are NOT
inherited; the defaults are ``PEBBLE_VA_NOSLEEP=1`` (no artificial
validation delay) and ``PEBBLE_WFE_NONCEREJECT=0`` (Pebble's own default
rejects 5% of good nonces, which makes tests random; fault tests opt in).
"""

from __future__ import annotations

import collections
import ctypes
import datetime
import ipaddress
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

PEBBLE = "/usr/bin/pebble"
# Debian unstable's pebble 2.10 (ARI, profiles, retryAfter), unpacked by
# scripts/setup-debian.sh; LACME_PEBBLE_SID overrides the path.
PEBBLE_SID = os.environ.get("LACME_PEBBLE_SID", "/opt/lacme-pebble-sid/usr/bin/pebble")
CHALLTESTSRV = "/usr/bin/pebble-challtestsrv"
DEFAULT_ENV = {"PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0"}
START_TIMEOUT = 15.0
START_ATTEMPTS = 3
REQUEST_LINE = re.compile(r"\b([A-Z]+) (/\S*) -> calling handler\(\)")


class PebbleError(RuntimeError):
    """Pebble (or its DNS server) did not start or answered unexpectedly."""


# -- ports ---------------------------------------------------------------

def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def is_port_free_v6(port: int) -> bool:
    """Whether ``port`` can be bound on [::] (True when IPv6 is absent)."""
    try:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    except OSError:
        return True
    with sock:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        try:
            sock.bind(("::", port))
        except OSError as exc:
            return exc.errno == 99  # EADDRNOTAVAIL: IPv6 disabled here
        return True


def free_dual_port() -> int:
    """A TCP port that was free on both 127.0.0.1 and [::] (for http-01)."""
    for _ in range(50):
        port = free_port()
        if is_port_free_v6(port):
            return port
    raise PebbleError("no TCP port free on both 127.0.0.1 and [::]")


# -- throwaway TLS PKI for Pebble's own HTTPS listeners --------------------

def make_name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_tls_ca() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A self-signed CA, valid for two days, that signs Pebble's TLS certificate."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    name = make_name("lacme test TLS CA")
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def make_server_cert(
    ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A TLS server certificate for 127.0.0.1, ::1 and localhost."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    san = x509.SubjectAlternativeName([
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ])
    cert = (
        x509.CertificateBuilder()
        .subject_name(make_name("localhost"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(san, critical=False)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def write_tls_files(workdir: Path) -> tuple[Path, Path, Path]:
    """Write ca.pem, pebble-cert.pem, pebble-key.pem; return their paths."""
    ca_key, ca_cert = make_tls_ca()
    key, cert = make_server_cert(ca_key, ca_cert)
    ca_path = workdir / "ca.pem"
    cert_path = workdir / "pebble-cert.pem"
    key_path = workdir / "pebble-key.pem"
    ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ))
    key_path.chmod(0o600)
    return ca_path, cert_path, key_path


# -- processes ---------------------------------------------------------------

def die_with_parent() -> None:
    """preexec_fn: SIGTERM the child when the test process dies (PR_SET_PDEATHSIG)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM, 0, 0, 0)


def spawn_logged(argv: list[str], env: Mapping[str, str], log_path: Path) -> subprocess.Popen:
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            argv, env=dict(env), stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, preexec_fn=die_with_parent,
        )


def stop_process(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGCONT)  # a paused process ignores SIGTERM until resumed
    process.terminate()
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def read_tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return " | ".join(text.splitlines()[-lines:])


def build_env(overrides: Mapping[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PEBBLE_")}
    env.update(DEFAULT_ENV)
    env.update(overrides)
    return env


def wait_for_port(port: int, process: subprocess.Popen, log_path: Path, deadline: float) -> None:
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise PebbleError(f"{log_path}: exited with {process.returncode}: {read_tail(log_path)}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.02)
    raise PebbleError(f"{log_path}: port {port} not listening: {read_tail(log_path)}")


def start_challtestsrv(workdir: Path, log_path: Path) -> tuple[subprocess.Popen, int]:
    """A DNS server answering every A query with 127.0.0.1 (and no AAAA);
    the port of its management API is kept in ``challtestsrv.port`` (see
    ``Pebble.add_a``)."""
    dns_port, mgmt_port = free_port(), free_port()
    argv = [
        CHALLTESTSRV, "-http01", "", "-https01", "", "-tlsalpn01", "",
        "-dns01", f"127.0.0.1:{dns_port}", "-management", f"127.0.0.1:{mgmt_port}",
        "-defaultIPv4", "127.0.0.1", "-defaultIPv6", "",
    ]
    process = spawn_logged(argv, build_env({}), log_path)
    try:
        # the management listener starts after the DNS servers
        wait_for_port(mgmt_port, process, log_path, time.monotonic() + START_TIMEOUT)
    except PebbleError:
        stop_process(process)
        raise
    (workdir / "challtestsrv.port").write_text(str(mgmt_port))
    return process, dns_port


# -- the Pebble handle -------------------------------------------------------

def endpoint_name(method: str, path: str) -> str:
    """``"POST /authZ/abc?x"`` -> ``"POST /authZ"``: the handler, without ids."""
    first = path.split("?", 1)[0].lstrip("/").split("/", 1)[0]
    return f"{method} /{first}"


@dataclass(frozen=True)
class Pebble:
    """A running Pebble; URLs, trust anchors and observation helpers."""

    directory_url: str
    tls_ca_file: str
    http_port: int
    management_url: str
    log_path: str
    _process: subprocess.Popen = field(repr=False, compare=False)
    _dns_process: subprocess.Popen = field(repr=False, compare=False)

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.tls_ca_file)

    def get_management(self, path: str) -> bytes:
        url = self.management_url + path
        try:
            with urllib.request.urlopen(url, context=self.ssl_context(), timeout=10) as response:
                return response.read()
        except (urllib.error.URLError, OSError) as exc:
            raise PebbleError(f"{url}: {exc}") from exc

    def add_a(self, name: str, address: str) -> None:
        """Have the VA's DNS (challtestsrv) answer ``name`` with ``address``
        (a loopback address: several "hosts" on one machine, each with a web
        server on the same http-01 port of an address of its own)."""
        port = (Path(self.log_path).parent / "challtestsrv.port").read_text().strip()
        url = f"http://127.0.0.1:{port}/add-a"
        body = json.dumps({"host": name, "addresses": [address]}).encode()
        try:
            with urllib.request.urlopen(urllib.request.Request(url, data=body), timeout=10) as r:
                r.read()
        except (urllib.error.URLError, OSError) as exc:
            raise PebbleError(f"{url}: {exc}") from exc

    def root_pem(self) -> bytes:
        """The root that issues end-entity chains (management /roots/0)."""
        return self.get_management("/roots/0")

    def intermediate_pem(self) -> bytes:
        """The intermediate that signs end-entity certificates (/intermediates/0)."""
        return self.get_management("/intermediates/0")

    def write_root(self, path: str | os.PathLike) -> str:
        Path(path).write_bytes(self.root_pem())
        return os.fspath(path)

    def log_offset(self) -> int:
        """Current size of the log: pass it to ``requests_since`` later."""
        return os.path.getsize(self.log_path)

    def requests_since(self, offset: int) -> collections.Counter:
        """ACME requests logged after ``offset``, counted by endpoint name."""
        with open(self.log_path, "rb") as log:
            log.seek(offset)
            text = log.read().decode(errors="replace")
        return collections.Counter(
            endpoint_name(m.group(1), m.group(2)) for m in REQUEST_LINE.finditer(text)
        )

    def cert_status(self, serial: int) -> str:
        """``"Valid"`` or ``"Revoked"`` for the certificate with ``serial``."""
        body = self.get_management(f"/cert-status-by-serial/{serial:x}")
        return json.loads(body)["Status"]

    def set_renewal_info(self, cert_pem: bytes, answer: str) -> None:
        """Pebble 2.10: answer ``answer`` (any text) to renewalInfo for that certificate."""
        body = json.dumps({"Certificate": cert_pem.decode("ascii"), "ARIResponse": answer}).encode()
        url = self.management_url + "/set-renewal-info/"
        request = urllib.request.Request(url, data=body, method="POST")
        try:
            with urllib.request.urlopen(request, context=self.ssl_context(), timeout=10):
                pass
        except (urllib.error.URLError, OSError) as exc:
            raise PebbleError(f"{url}: {exc}") from exc

    def log_text(self, offset: int = 0) -> str:
        with open(self.log_path, "rb") as log:
            log.seek(offset)
            return log.read().decode(errors="replace")

    def pause(self) -> None:
        """SIGSTOP Pebble: connections are accepted by the kernel but never answered."""
        self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        stop_process(self._process)
        stop_process(self._dns_process)


def write_config(workdir: Path, cert: Path, key: Path, port: int, mgmt_port: int,
                 http_port: int, extra: Mapping[str, object] | None = None) -> Path:
    config: dict = {"pebble": {
        "listenAddress": f"127.0.0.1:{port}",
        "managementListenAddress": f"127.0.0.1:{mgmt_port}",
        "certificate": os.fspath(cert),
        "privateKey": os.fspath(key),
        "httpPort": http_port,
        "tlsPort": free_port(),
        "ocspResponderURL": "",
        "externalAccountBindingRequired": False,
    }}
    config["pebble"].update(extra or {})
    path = workdir / "pebble-config.json"
    path.write_text(json.dumps(config, indent=2))
    return path


def wait_for_directory(url: str, ca_file: Path, process: subprocess.Popen, log_path: Path) -> None:
    context = ssl.create_default_context(cafile=os.fspath(ca_file))
    deadline = time.monotonic() + START_TIMEOUT
    last = "no answer"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise PebbleError(f"{log_path}: pebble exited with {process.returncode}: {read_tail(log_path)}")
        try:
            with urllib.request.urlopen(url, context=context, timeout=2) as response:
                if "newNonce" in json.loads(response.read()):
                    return
        except (urllib.error.URLError, OSError, ValueError) as exc:
            last = str(exc)
        time.sleep(0.05)
    raise PebbleError(f"{url}: not answering after {START_TIMEOUT:.0f}s ({last}): {read_tail(log_path)}")


def launch_pebble(workdir: Path, env: Mapping[str, str], http_port: int,
                  dns_port: int, cert: Path, key: Path, ca: Path, binary: str | None = None,
                  extra: Mapping[str, object] | None = None) -> tuple[subprocess.Popen, int, int]:
    port, mgmt_port = free_port(), free_port()
    config = write_config(workdir, cert, key, port, mgmt_port, http_port, extra)
    log_path = workdir / "pebble.log"
    argv = [binary or PEBBLE, "-config", os.fspath(config), "-dnsserver", f"127.0.0.1:{dns_port}", "-strict"]
    process = spawn_logged(argv, build_env(env), log_path)
    try:
        wait_for_directory(f"https://127.0.0.1:{port}/dir", ca, process, log_path)
    except PebbleError:
        stop_process(process)
        raise
    return process, port, mgmt_port


def start_pebble(workdir: Path, *, env: Mapping[str, str] = {},
                 http_port: int | None = None, binary: str | None = None,
                 config: Mapping[str, object] | None = None) -> Pebble:
    """Start challtestsrv and Pebble under ``workdir``; return once /dir answers.

    ``env`` adds or overrides PEBBLE_* knobs (see the module docstring).
    ``http_port`` is where the VA fetches http-01 answers (a free port
    by default).  ``binary`` is the pebble to run (default ``PEBBLE``;
    ``PEBBLE_SID`` for 2.10)
    and ``config`` is merged into its ``pebble`` configuration object (e.g.
    ``{"profiles": {"default": {"validityPeriod": 120}}, "retryAfter":
    {...}}`` for 2.10).  A start that loses a port race is retried.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    ca, cert, key = write_tls_files(workdir)
    if http_port is None:
        http_port = free_dual_port()
    error: PebbleError | None = None
    for _ in range(START_ATTEMPTS):
        try:
            dns_process, dns_port = start_challtestsrv(workdir, workdir / "challtestsrv.log")
        except PebbleError as exc:
            error = exc
            continue
        try:
            process, port, mgmt_port = launch_pebble(workdir, env, http_port, dns_port, cert, key, ca,
                                                     binary, config)
        except PebbleError as exc:
            stop_process(dns_process)
            error = exc
            continue
        return Pebble(
            directory_url=f"https://127.0.0.1:{port}/dir",
            tls_ca_file=os.fspath(ca),
            http_port=http_port,
            management_url=f"https://127.0.0.1:{mgmt_port}",
            log_path=os.fspath(workdir / "pebble.log"),
            _process=process,
            _dns_process=dns_process,
        )
    assert error is not None
    raise error
