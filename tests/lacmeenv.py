"""Test helpers: a lacme installation in a directory, driven as a user would.

``LacmeSetup`` writes lacme.conf, lacme-accountd.conf and lacme-certs.conf
for a real Pebble (fork mode: the master spawns accountd, the client and the
webserver), makes keys, and runs the real ``lacme`` program in a subprocess.
Used by the end-to-end tests; nothing here imitates a component.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

TREE_ROOT = Path(__file__).resolve().parent.parent


def write_key(path: Path, kind: str = "rsa") -> Path:
    """A PEM private key (PKCS#8), mode 0600."""
    if kind == "rsa":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    elif kind == "p256":
        key = ec.generate_private_key(ec.SECP256R1())
    elif kind == "p384":
        key = ec.generate_private_key(ec.SECP384R1())
    else:
        raise ValueError(kind)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    return path


def unique_name(prefix: str = "www") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}.example.com"


def public_dir() -> Path:
    """A fresh directory every user can traverse (pytest's tmp dirs are 0700)."""
    path = Path(tempfile.mkdtemp(prefix="lacme-test-"))
    path.chmod(0o755)
    return path


@dataclass
class DebianLacme:
    """A configuration of Debian's Perl ``lacme`` master (0.8.2) for one
    Pebble and one section ``[www]``, in a directory every user can traverse."""

    root: Path
    conf: Path
    certs: Path
    name: str

    @property
    def certificate(self) -> Path:
        return self.root / "www.crt"

    def run(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["/usr/sbin/lacme", f"--config={self.conf}", *args, "newOrder",
                               f"--config-certs={self.certs}"],
                              capture_output=True, text=True, timeout=timeout)


def debian_lacme(pebble: object, accountd_command: str | None = None) -> DebianLacme:
    """``[accountd] command`` when given; else the master needs ``--socket``."""
    pub = public_dir()
    tls_ca = pub / "tls-ca.pem"
    tls_ca.write_bytes(Path(pebble.tls_ca_file).read_bytes())  # type: ignore[attr-defined] # a tests.pebble.Pebble
    tls_ca.chmod(0o644)
    root = pub / "root.pem"
    root.write_bytes(pebble.root_pem())  # type: ignore[attr-defined] # the same
    name = unique_name()
    key = write_key(pub / "svc.key")
    lines = ["[client]", f"server = {pebble.directory_url}",  # type: ignore[attr-defined] # the same
             f"command = /usr/bin/env PERL_LWP_SSL_CA_FILE={tls_ca} /usr/libexec/lacme/client",
             "[webserver]", f"listen = 127.0.0.1:{pebble.http_port}"]  # type: ignore[attr-defined] # the same
    if accountd_command:
        lines += ["[accountd]", f"command = {accountd_command}"]
    conf = pub / "lacme.conf"
    conf.write_text("\n".join(lines) + "\n")
    certs = pub / "certs.conf"
    certs.write_text(
        f"[www]\ncertificate-key = {key}\ncertificate = {pub / 'www.crt'}\n"
        f"subject = /CN={name}\nsubjectAltName = DNS:{name}\nCAfile = {root}\n"
    )
    return DebianLacme(root=pub, conf=conf, certs=certs, name=name)


def load_chain(path: Path) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(path.read_bytes())


def san_names(cert: x509.Certificate) -> set[str]:
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    return set(ext.value.get_values_for_type(x509.DNSName))


@dataclass
class LacmeSetup:
    """A lacme configuration directory wired to one Pebble."""

    root: Path
    pebble: object
    account_key: Path
    client_user: str = ""
    client_group: str = ""
    www_user: str = ""
    www_group: str = ""
    accountd: bool = True
    client_command: str = "lacme-client"
    webserver_command: str = "lacme-webserver"
    accountd_command: str = "lacme-accountd"
    extra_default: str = ""  # lines of lacme.conf's default section (e.g. run-interval)
    extra_client: str = ""
    extra_webserver: str = ""
    listen: str | None = None  # default: where Pebble's VA connects
    sections: dict[str, dict[str, str]] = field(default_factory=dict)

    @property
    def conf(self) -> Path:
        return self.root / "lacme.conf"

    @property
    def certs_conf(self) -> Path:
        return self.root / "lacme-certs.conf"

    @property
    def cafile(self) -> Path:
        return self.root / "pebble-root.pem"

    def write(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tls_ca = self.root / "pebble-tls-ca.pem"
        tls_ca.write_bytes(Path(self.pebble.tls_ca_file).read_bytes())
        tls_ca.chmod(0o644)
        self.cafile.write_bytes(self.pebble.root_pem())
        (self.root / "lacme-accountd.conf").write_text(f"privkey = file:{self.account_key}\n")
        lines = [
            self.extra_default,
            "[client]",
            f"server = {self.pebble.directory_url}",
            f"SSL_ca_file = {tls_ca}",
            f"user = {self.client_user}",
            f"group = {self.client_group}",
            f"command = {self.client_command}",
            "timeout = 30",
            self.extra_client,
            "[webserver]",
            f"listen = {self.listen or f'127.0.0.1:{self.pebble.http_port}'}",
            f"user = {self.www_user}",
            f"group = {self.www_group}",
            f"command = {self.webserver_command}",
            self.extra_webserver,
        ]
        if self.accountd:
            lines += ["[accountd]", f"command = {self.accountd_command}",
                      f"config = {self.root / 'lacme-accountd.conf'}"]
        self.conf.write_text("\n".join(lines) + "\n")
        self.write_certs()

    def write_certs(self) -> None:
        out = []
        for name, settings in self.sections.items():
            out.append(f"[{name}]")
            out += [f"{k} = {v}" for k, v in settings.items()]
        self.certs_conf.write_text("\n".join(out) + "\n")

    def add_section(self, name: str, names: list[str], *, key_kind: str = "rsa",
                    **settings: str) -> dict[str, str]:
        self.root.mkdir(parents=True, exist_ok=True)
        key = write_key(self.root / f"{name}.key", key_kind)
        section = {
            "certificate-key": str(key),
            "certificate": str(self.root / f"{name}.crt"),
            "certificate-chain": str(self.root / f"{name}.chain.pem"),
            "subject": f"/CN={names[0]}",
            "subjectAltName": ",".join(f"DNS:{n}" for n in names),
            "CAfile": str(self.cafile),
        }
        section.update({k.replace("_", "-"): v for k, v in settings.items()})
        self.sections[name] = section
        return section

    def master_argv(self, socket: str | None = None) -> list[str]:
        """The master of this tree with this configuration (command arguments follow)."""
        argv = [sys.executable, "-m", "lacme.master", f"--config={self.conf}"]
        if socket:
            argv.append(f"--socket={socket}")
        return argv

    def master_env(self, env: dict[str, str] | None = None) -> dict[str, str]:
        environ = dict(os.environ)
        environ["PYTHONPATH"] = str(TREE_ROOT)
        environ.update(env or {})
        return environ

    def run(self, *args: str, timeout: float = 120, env: dict[str, str] | None = None,
            socket: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.master_argv(socket) + list(args), capture_output=True, text=True,
                              timeout=timeout, env=self.master_env(env), cwd=str(self.root))
