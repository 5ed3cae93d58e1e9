"""Client adapters: how each ACME client is configured and invoked per scenario.

Run by the benchmark runner (root).  Every adapter works in a fresh state
directory per run, prepares what a scenario assumes outside the timing
(keys, CSRs, a registered account), and returns the commands to time:

* ``lacme``      this project, fork mode (master spawns accountd, client, webserver);
* ``lacme-systemd`` this project in systemd mode, in a booted container
  (systemd_mode.py);
* ``lacme-perl`` Debian's lacme 0.8.2 with its own lacme-accountd, fork mode;
* ``acme-tiny``, ``uacme``, ``certbot``: Debian packages, webroot served by the runner.

Account keys are RSA-2048 and certificate keys P-256 for everyone (certbot
makes its own, of the same types).  Every client trusts the same file, one
variant at a time (the system bundle plus Pebble's TLS CA, or Pebble's CA
alone): the peers through the system bundle's path, which the runner
bind-mounts in its namespace; this project through its ``[client]
SSL_ca_file`` setting, pointed at that same file.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from measure import Command, Outside

CLEAN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PERL_LACME = "/usr/sbin/lacme"
PERL_ACCOUNTD = "/usr/bin/lacme-accountd"


@dataclass(frozen=True)
class Context:
    """What every adapter needs to know about the CA and the machine."""

    directory_url: str
    http_port: int
    tls_ca_file: str  # the trust file of the variant in use (bench.TRUST)
    root_file: str    # the root that issues end-entity chains (CAfile)
    work: Path


def clean_env(**extra: str) -> dict[str, str]:
    env = {"PATH": CLEAN_PATH, "LANG": "C.UTF-8", "HOME": "/root"}
    env.update(extra)
    return env


def unique_names(count: int, prefix: str = "b") -> list[str]:
    tag = uuid.uuid4().hex[:8]
    return [f"{prefix}{i}-{tag}.example.com" for i in range(count)]


def write_pem_key(path: Path, kind: str) -> Path:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048) if kind == "rsa" \
        else ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    return path


def write_csr(path: Path, key_path: Path, names: list[str]) -> Path:
    key = serialization.load_pem_private_key(key_path.read_bytes(), None)
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
           .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]),
                          critical=False)
           .sign(key, hashes.SHA256()))
    path.write_bytes(csr.public_bytes(serialization.Encoding.PEM))
    return path


def fresh_dir(ctx: Context, client: str, label: str) -> Path:
    path = ctx.work / "state" / f"{client}-{label}-{uuid.uuid4().hex[:6]}"
    path.mkdir(parents=True)
    path.chmod(0o755)
    return path


# this project's programs (measure.program_of's names), in either mode
LACME_PROGRAMS = frozenset({"lacme", "lacme-accountd", "lacme-client", "lacme-webserver", "lacme-dns"})


class Adapter:
    """Base: one client.  ``certs`` is a list of name lists, one per certificate."""

    name = ""
    webroot = False  # needs the runner's static server on the http-01 port
    one_invocation = True  # several certificates in one invocation (S3, S5)
    renews = True  # has a renew/check command (S4)
    programs: frozenset[str] | None = None  # its own programs, for their summed PSS (None: every process)

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    # -- lifecycle hooks, all outside the timing ----------------------------

    def setup(self) -> None:
        """Once, before the first run."""

    def teardown(self) -> None:
        """Once, at the end (also after an error or an interruption)."""

    def trust(self, bundle: Path) -> None:
        """From now on, trust ``bundle`` (the peers: through the system bundle's path,
        which the runner bind-mounts; this project: its SSL_ca_file)."""
        self.ctx = dataclasses.replace(self.ctx, tls_ca_file=str(bundle))

    def services(self) -> set[int]:
        """Long-running processes of the runner that no run may be charged with."""
        return set()

    def state_dir(self, label: str) -> Path:
        """A fresh state directory for one run (as the runner sees it)."""
        return fresh_dir(self.ctx, self.name, label)

    @contextmanager
    def around(self, state: Path) -> Iterator[None]:
        """Around each run, timed or not (e.g. open and close the http-01 port)."""
        yield

    def outside(self) -> Outside | None:
        """Processes a run causes outside the runner's tree, if any."""
        return None

    # -- the commands ---------------------------------------------------------

    def issue(self, state: Path, certs: list[list[str]], *, register: bool) -> list[Command]:
        raise NotImplementedError

    def register(self, state: Path) -> list[Command]:
        """Untimed preparation for S3/S5: an account that exists."""
        return []

    def renew(self, state: Path) -> list[Command]:
        raise NotImplementedError

    def webroot_dir(self, state: Path) -> Path:
        return state / "webroot"


class LacmeFamily(Adapter):
    """Shared by this project and the original: one section per certificate."""

    program = ""
    register_args: tuple[str, ...] = ()

    def write_config(self, state: Path) -> None:
        raise NotImplementedError

    @property
    def root_file(self) -> str:
        """CAfile, as the program sees it."""
        return self.ctx.root_file

    def where(self, path: Path) -> str:
        """``path`` (the runner's view) as the program sees it."""
        return str(path)

    def write_sections(self, state: Path, certs: list[list[str]]) -> None:
        out = []
        home = self.where(state)
        for i, names in enumerate(certs):
            key = write_pem_key(state / f"s{i}.key", "ec")
            out += [f"[s{i}]", f"certificate-key = {self.where(key)}",
                    f"certificate = {home}/s{i}.crt",
                    f"certificate-chain = {home}/s{i}.chain.pem", f"subject = /CN={names[0]}",
                    "subjectAltName = " + ",".join(f"DNS:{n}" for n in names),
                    f"CAfile = {self.root_file}", ""]
        (state / "lacme-certs.conf").write_text("\n".join(out))

    def invocation(self, state: Path) -> tuple[str, ...]:
        return (self.program, f"--config={state}/lacme.conf")

    def command(self, state: Path, *args: str, ok: frozenset[int] = frozenset({0})) -> Command:
        return Command((*self.invocation(state), *args), clean_env(), str(state), ok)

    def prepare(self, state: Path) -> None:
        if (state / "account.key").exists():
            return
        write_pem_key(state / "account.key", "rsa")
        (state / "lacme-accountd.conf").write_text(f"privkey = file:{state}/account.key\n")
        self.write_config(state)

    def issue(self, state: Path, certs: list[list[str]], *, register: bool) -> list[Command]:
        self.prepare(state)
        self.write_sections(state, certs)
        first = [self.command(state, "account", *self.register_args)] if register else []
        return first + [self.command(state, "newOrder")]

    def register(self, state: Path) -> list[Command]:
        self.prepare(state)
        (state / "lacme-certs.conf").write_text("")
        return [self.command(state, "account", *self.register_args)]

    def renew(self, state: Path) -> list[Command]:
        return [self.command(state, "newOrder")]


class Lacme(LacmeFamily):
    """This project, fork mode, with the production privilege drop (_lacme-client, _lacme-www)."""

    name = "lacme"
    program = str(Path(sys.executable).with_name("lacme"))
    programs = LACME_PROGRAMS
    register_args = ("--register", "--tos-agreed")

    def write_config(self, state: Path) -> None:
        (state / "lacme.conf").write_text(
            f"config-certs = {state}/lacme-certs.conf\nstate-directory = {state}/renewal-state\n"
            f"[client]\nserver = {self.ctx.directory_url}\nSSL_ca_file = {self.ctx.tls_ca_file}\n"
            f"[webserver]\nlisten = 127.0.0.1:{self.ctx.http_port}\n"
            f"[accountd]\nconfig = {state}/lacme-accountd.conf\nquiet = Yes\n")


class LacmeBase(Lacme):
    """Another tree of this project, fork mode, the same configuration: the tree
    before a change, installed in its own venv (``LACME_BENCH_BASELINE``, a venv
    that setup.sh made with ``LACME_BENCH_VENV``), for side-by-side ratios."""

    name = "lacme-base"
    program = os.path.join(os.environ.get("LACME_BENCH_BASELINE", "/nonexistent"), "bin", "lacme")


class LacmePerl(LacmeFamily):
    """Debian's lacme 0.8.2 (Perl): same layout, its own accountd spawned by its master."""

    name = "lacme-perl"
    program = PERL_LACME
    # without a contact it registers and then exits 1 (an empty update Pebble rejects)
    register_args = ("--register", "--tos-agreed", "mailto:bench@example.com")

    def write_config(self, state: Path) -> None:
        (state / "lacme.conf").write_text(
            f"config-certs = {state}/lacme-certs.conf\n"
            f"[client]\nserver = {self.ctx.directory_url}\n"
            f"[webserver]\nlisten = 127.0.0.1:{self.ctx.http_port}\n"
            f"[accountd]\ncommand = {PERL_ACCOUNTD}\nconfig = {state}/lacme-accountd.conf\n"
            "quiet = Yes\n")


class AcmeTiny(Adapter):
    """acme-tiny: one certificate per invocation, registers (or finds) the account every time.

    Its CSRs are made outside the timing; ``--disable-check`` skips its own
    pre-fetch of the challenge (the benchmark names resolve only in Pebble's DNS).
    """

    name = "acme-tiny"
    webroot = True
    one_invocation = False
    renews = False

    def issue(self, state: Path, certs: list[list[str]], *, register: bool) -> list[Command]:
        account = state / "account.key"
        if not account.exists():
            write_pem_key(account, "rsa")
        challenges = self.webroot_dir(state) / ".well-known" / "acme-challenge"
        challenges.mkdir(parents=True, exist_ok=True)
        commands = []
        for i, names in enumerate(certs):
            key = write_pem_key(state / f"c{i}.key", "ec")
            csr = write_csr(state / f"c{i}.csr", key, names)
            commands.append(Command(
                ("/usr/bin/acme-tiny", "--account-key", str(account), "--csr", str(csr),
                 "--acme-dir", str(challenges), "--directory-url", self.ctx.directory_url,
                 "--disable-check", "--quiet"),
                clean_env(), str(state), stdout=str(state / f"c{i}.crt")))
        return commands


class Uacme(Adapter):
    """uacme: ``new`` registers, ``issue`` makes one certificate per invocation (shipped hook)."""

    name = "uacme"
    webroot = True
    one_invocation = False

    def base(self, state: Path) -> tuple[str, ...]:
        return ("/usr/bin/uacme", "-c", str(state / "conf"), "-a", self.ctx.directory_url, "-y")

    def env(self, state: Path) -> dict[str, str]:
        return clean_env(UACME_CHALLENGE_PATH=str(self.webroot_dir(state) / ".well-known"
                                                  / "acme-challenge"))

    def issue(self, state: Path, certs: list[list[str]], *, register: bool) -> list[Command]:
        conf = state / "conf"
        if not (conf / "private" / "key.pem").exists():
            write_pem_key(conf / "private" / "key.pem", "rsa")
        (self.webroot_dir(state) / ".well-known" / "acme-challenge").mkdir(parents=True,
                                                                            exist_ok=True)
        commands = self.register(state) if register else []
        for names in certs:
            write_pem_key(conf / "private" / names[0] / "key.pem", "ec")
            commands.append(Command(
                (*self.base(state), "-h", "/usr/share/uacme/uacme.sh", "issue", *names),
                self.env(state), str(state)))
        return commands

    def register(self, state: Path) -> list[Command]:
        conf = state / "conf"
        if not (conf / "private" / "key.pem").exists():
            write_pem_key(conf / "private" / "key.pem", "rsa")
        return [Command((*self.base(state), "new"), self.env(state), str(state))]

    def renew(self, state: Path) -> list[Command]:
        # exit 1: the certificate is not due for renewal
        return [Command((*self.base(state), "-h", "/usr/share/uacme/uacme.sh", "issue", name),
                        self.env(state), str(state), frozenset({0, 1}))
                for name in self.names_in(state)]

    def names_in(self, state: Path) -> list[str]:
        conf = state / "conf"
        return sorted(p.name for p in conf.iterdir() if p.is_dir() and p.name != "private")


class Certbot(Adapter):
    """certbot: ``certonly --webroot`` per certificate, ``renew`` checks every lineage."""

    name = "certbot"
    webroot = True
    one_invocation = False

    def base(self, state: Path, verb: str) -> tuple[str, ...]:
        return ("/usr/bin/certbot", verb, "-n", "--server", self.ctx.directory_url,
                "--config-dir", str(state / "etc"), "--work-dir", str(state / "lib"),
                "--logs-dir", str(state / "log"))

    def issue(self, state: Path, certs: list[list[str]], *, register: bool) -> list[Command]:
        self.webroot_dir(state).mkdir(exist_ok=True)
        commands = []
        for names in certs:
            domains = [arg for n in names for arg in ("-d", n)]
            commands.append(Command(
                (*self.base(state, "certonly"), "--agree-tos", "--register-unsafely-without-email",
                 "--key-type", "ecdsa", "--webroot", "-w", str(self.webroot_dir(state)),
                 *domains), clean_env(), str(state)))
        return commands

    def register(self, state: Path) -> list[Command]:
        return [Command((*self.base(state, "register"), "--agree-tos",
                         "--register-unsafely-without-email"), clean_env(), str(state))]

    def renew(self, state: Path) -> list[Command]:
        return [Command((*self.base(state, "renew"), "--no-random-sleep-on-renew"),
                        clean_env(), str(state))]

