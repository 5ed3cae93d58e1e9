"""Test helper: a real nginx or Apache httpd in front of lacme, on loopback.

``FrontServer`` writes a configuration of its own for Debian's ``nginx``
(nginx-light) or ``apache2`` under a directory of the test, with two
servers: plain HTTP on ``http_port`` (where Pebble's VA fetches http-01
answers), a site that includes a lacme snippet (the example site of the
snippet's own comments, ``documented_site``, or a bare one), and TLS on
``tls_port`` with the certificate and key lacme installs.  It runs the
server in the foreground as a child of the test (root; the workers drop to
www-data, as the packages do), reloads it the way a ``notify`` command would
and stops it.  ``copy_snippet`` copies a SHIPPED snippet of etc/ changing
only the paths, so that a broken snippet fails the tests that use it.

No RFC is involved beyond RFC 8555 8.3 (the http-01 path).
"""

from __future__ import annotations

import datetime
import http.client
import shlex
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from tests.lacmeenv import TREE_ROOT, public_dir
from tests.pebble import die_with_parent, read_tail, stop_process

SNIPPET_DIR = TREE_ROOT / "etc"
DEFAULT_SOCKET = "/run/lacme-www.socket"  # lacme.conf's default listen, lacme-webserver.socket's path
DEFAULT_CHALLENGES = "/var/www/acme-challenge"  # what the static snippets name
NGINX = "/usr/sbin/nginx"  # absolute: notify commands run with the master's PATH
APACHE = "/usr/sbin/apache2"
APACHE_MODULES = "/usr/lib/apache2/modules"
# Debian's default modules that matter here (listings included), and the snippets' own.
APACHE_LOADED = ("mpm_event", "authz_core", "alias", "autoindex", "dir", "mime", "proxy",
                 "proxy_http", "ssl", "socache_shmcb")
START_TIMEOUT = 15.0
# A rule many nginx sites have (no hidden files), which would take the
# challenge requests from a snippet that did not stop regex matching.
NGINX_SITE_RULE = r"location ~ /\. { deny all; }"
PROXY_SNIPPETS = {"nginx": "nginx.conf", "apache2": "apache2.conf"}
STATIC_SNIPPETS = {"nginx": "nginx-static.conf", "apache2": "apache2-static.conf"}


class FrontError(RuntimeError):
    """The web server did not start, reload or answer."""


def copy_snippet(name: str, dest: Path, substitutions: dict[str, str]) -> Path:
    """etc/NAME with each key replaced by its value (every key must occur)."""
    text = (SNIPPET_DIR / name).read_text()
    for old, new in substitutions.items():
        if old not in text:
            raise AssertionError(f"etc/{name} does not name {old}")
        text = text.replace(old, new)
    dest.write_text(text)
    dest.chmod(0o644)
    return dest


def write_self_signed(path: Path, key_path: Path, name: str) -> x509.Certificate:
    """A throwaway certificate for ``name`` with the key in ``key_path``, so
    that the TLS server can start before lacme issued anything."""
    key = serialization.load_pem_private_key(key_path.read_bytes(), None)
    now = datetime.datetime.now(datetime.timezone.utc)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=10))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert


def served_certificate(port: int, server_name: str, host: str = "127.0.0.1") -> x509.Certificate:
    """The certificate that the TLS server on ``port`` presents for
    ``server_name`` (SNI); no verification: only which certificate it is."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection((host, port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname=server_name) as tls:
            der = tls.getpeercert(binary_form=True)
    return x509.load_der_x509_certificate(der)


def served_serial(port: int, server_name: str, host: str = "127.0.0.1") -> int:
    """Serial of the certificate served on ``port`` for ``server_name``."""
    return served_certificate(port, server_name, host).serial_number


def wait_for_serial(port: int, server_name: str, serial: int, timeout: float = 15.0) -> int:
    """The served serial once it is ``serial`` (a reload takes effect when
    the new workers run), or the last one seen after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        seen = served_serial(port, server_name)
        if seen == serial or time.monotonic() > deadline:
            return seen
        time.sleep(0.1)


def request(port: int, path: str, method: str = "GET", body: bytes | None = None,
            host: str = "www.example.com") -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 request to 127.0.0.1:``port``: status, headers, body."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", host)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        response = conn.getresponse()
        data = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, data
    finally:
        conn.close()


@dataclass
class FrontServer:
    """nginx or apache2 with its configuration, logs and pid file in ``home``."""

    kind: str  # "nginx" or "apache2"
    http_port: int
    tls_port: int
    home: Path = field(default_factory=public_dir)  # the workers (www-data) traverse it
    process: subprocess.Popen | None = None

    @property
    def conf(self) -> Path:
        return self.home / f"{self.kind}.conf"

    @property
    def access_log(self) -> Path:
        return self.home / "access.log"

    @property
    def error_log(self) -> Path:
        return self.home / "error.log"

    @property
    def output_log(self) -> Path:
        return self.home / "output.log"

    # -- configuration --------------------------------------------------------

    def write(self, site: str, certificate: Path, key: Path, top: str = "") -> Path:
        """The configuration: the port-80 server block (or <VirtualHost>)
        ``site``, ``top`` in the server configuration outside it (Apache),
        and TLS on ``tls_port`` with ``certificate`` and ``key``."""
        text = (self._nginx(site, certificate, key) if self.kind == "nginx"
                else self._apache(site, certificate, key, top))
        (self.home / "temp").mkdir(exist_ok=True)
        self.conf.write_text(text)
        return self.conf

    def _nginx(self, site: str, certificate: Path, key: Path) -> str:
        d = self.home
        temp = "\n".join(f"    {kind}_temp_path {d}/temp/{kind};"
                         for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        return f"""\
user www-data;
worker_processes 1;
pid {d}/nginx.pid;
error_log {self.error_log} error;
events {{ worker_connections 128; }}
http {{
{temp}
    include /etc/nginx/mime.types;  # as Debian's nginx.conf has them
    default_type application/octet-stream;
    log_format front '$request $status "$upstream_addr"';
    access_log {self.access_log} front;
{site}
    server {{
        listen 127.0.0.1:{self.tls_port} ssl;
        ssl_certificate {certificate};
        ssl_certificate_key {key};
        location / {{ return 204; }}
    }}
}}
"""

    def _apache(self, site: str, certificate: Path, key: Path, top: str) -> str:
        d = self.home
        modules = "\n".join(f"LoadModule {m}_module {APACHE_MODULES}/mod_{m}.so" for m in APACHE_LOADED)
        return f"""\
ServerRoot {d}
DefaultRuntimeDir {d}
PidFile {d}/httpd.pid
ServerName localhost
User www-data
Group www-data
ErrorLog {self.error_log}
LogLevel warn
{modules}
<IfModule mime_module>
    TypesConfig /etc/mime.types
</IfModule>
LogFormat "%r %>s" front
CustomLog {self.access_log} front
Listen 127.0.0.1:{self.http_port}
Listen 127.0.0.1:{self.tls_port}
# As in Debian's apache2.conf: nothing by default, and <Directory /var/www/>
# (here the test's directories) open with listings and links, which the
# snippets must take back for the challenge directory.
<Directory />
    Options FollowSymLinks
    AllowOverride None
    Require all denied
</Directory>
<Directory {tempfile.gettempdir()}>
    Options Indexes FollowSymLinks
    Require all granted
</Directory>
{top}
{site}
<VirtualHost 127.0.0.1:{self.tls_port}>
    SSLEngine on
    SSLCertificateFile {certificate}
    SSLCertificateKeyFile {key}
</VirtualHost>
"""

    def plain_site(self, include: Path | str, docroot: Path | None = None) -> str:
        """A port-80 site whose only configuration is ``include``, and with
        ``docroot`` files of its own, listed (autoindex, Indexes)."""
        if self.kind == "nginx":
            content = (f"root {docroot}; autoindex on; location / {{ }}" if docroot
                       else "location / { return 404; }")
            return (f"server {{ listen 127.0.0.1:{self.http_port}; include {include}; "
                    f"{NGINX_SITE_RULE} {content} }}")
        root = f"DocumentRoot {docroot}" if docroot else ""
        return f"<VirtualHost 127.0.0.1:{self.http_port}>\n{root}\nInclude {include}\n</VirtualHost>"

    def documented_site(self, snippet: str, copy: Path | None) -> str:
        """The example site of etc/SNIPPET's comments on ``http_port``
        (see ``documented_site``)."""
        return documented_site(self.kind, snippet, self.http_port, copy)

    # -- processes ----------------------------------------------------------------

    def argv(self, *extra: str) -> list[str]:
        if self.kind == "nginx":
            return [NGINX, "-c", str(self.conf), *extra]
        return [APACHE, "-f", str(self.conf), *extra]

    def check(self) -> subprocess.CompletedProcess[str]:
        """The server's own configuration test (nginx -t, apache2 -t)."""
        return subprocess.run(self.argv("-t"), capture_output=True, text=True, timeout=30)

    def start(self) -> None:
        """Run in the foreground; return once both ports answer."""
        foreground = ["-g", "daemon off;"] if self.kind == "nginx" else ["-DFOREGROUND"]
        with open(self.output_log, "ab") as out:
            self.process = subprocess.Popen(self.argv(*foreground), stdin=subprocess.DEVNULL,
                                            stdout=out, stderr=subprocess.STDOUT,
                                            preexec_fn=die_with_parent)
        deadline = time.monotonic() + START_TIMEOUT
        for port in (self.http_port, self.tls_port):
            while True:
                if self.process.poll() is not None:
                    raise FrontError(f"{self.kind} exited with {self.process.returncode}: "
                                     f"{read_tail(self.output_log)} {read_tail(self.error_log)}")
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise FrontError(f"{self.kind}: port {port} not listening") from None
                    time.sleep(0.05)
        if self.kind == "apache2":
            request(self.http_port, "/")  # the children accept once they run

    def reload_command(self) -> str:
        """What a lacme-certs.conf ``notify`` runs to make it re-read its
        configuration and certificates (nginx -s reload, apache2 -k graceful)."""
        argv = self.argv("-s", "reload") if self.kind == "nginx" else self.argv("-k", "graceful")
        return shlex.join(argv)

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
            self.process = None

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.home, ignore_errors=True)

    # -- what it logged -------------------------------------------------------------

    def access_lines(self) -> list[str]:
        try:
            return self.access_log.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return []

    def error_lines(self) -> list[str]:
        try:
            return self.error_log.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return []


def documented_site(kind: str, snippet: str, port: int, copy: Path | str | None) -> str:
    """The example port-80 site of etc/SNIPPET's comments, on 127.0.0.1:``port``,
    including ``copy`` (a copy of the snippet, or the installed path itself;
    None: without its include line, for a snippet included outside the site).
    nginx sites get a common rule of their own (``NGINX_SITE_RULE``) too."""
    lines = (SNIPPET_DIR / snippet).read_text().splitlines()
    opening = "#   server {" if kind == "nginx" else "#   <VirtualHost *:80>"
    closing = "#   }" if kind == "nginx" else "#   </VirtualHost>"
    first = lines.index(opening)
    block = lines[first:lines.index(closing, first) + 1]
    include = f"/etc/lacme/{snippet}"
    if not any(line.endswith(include) or line.endswith(include + ";") for line in block):
        raise AssertionError(f"etc/{snippet}: its example does not include {include}")
    if copy is None:
        block = [line for line in block if include not in line]
    if kind == "nginx":
        block.insert(-1, "#       " + NGINX_SITE_RULE)
    text = "\n".join(line[len("#   "):] for line in block)
    listen = ("listen 80;", f"listen 127.0.0.1:{port};") if kind == "nginx" \
        else ("<VirtualHost *:80>", f"<VirtualHost 127.0.0.1:{port}>")
    return text.replace(*listen).replace(include, str(copy))


def challenge_fetches(lines: list[str], status: int = 200) -> list[str]:
    """Tokens of the access-log lines ``GET /.well-known/acme-challenge/TOKEN
    HTTP/1.x STATUS`` (both servers' formats begin so)."""
    tokens = []
    for line in lines:
        words = line.split()
        if (len(words) >= 4 and words[0] == "GET" and words[3] == str(status)
                and words[1].startswith("/.well-known/acme-challenge/")):
            tokens.append(words[1].rsplit("/", 1)[1])
    return tokens

