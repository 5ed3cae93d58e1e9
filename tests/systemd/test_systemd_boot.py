"""First start in any order: a fresh host whose nginx serves lacme's
certificate files over TLS, with nginx, lacme-placeholder.service and
lacme-renew-boot.timer enabled, boots into nginx serving a certificate
issued by the CA, with no step by hand.

nginx does not start without its certificate, and lacme needs nginx (the
installed /etc/lacme/nginx.conf snippet) to pass the http-01 challenge on to
the socket-activated webserver.  The box here is this module's own, so that
it can really be rebooted: systemd orders the units as it boots.  Pebble is
this module's own too, on the host's loopback, its VA fetching from nginx's
port in the box.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509

from tests.frontserver import documented_site, served_certificate
from tests.lacmeenv import write_key
from tests.pebble import Pebble, free_port, start_pebble
from tests.systemd.box import VENV, Box, boot_box

pytestmark = [pytest.mark.systemd, pytest.mark.pebble]

SECTION = "boot"
CERT_DIR = "/srv/lacme-boot"
KEY = "/etc/lacme/keys/boot.key"
DROPIN = "/etc/systemd/system/lacme-notify@boot.service.d/50-nginx.conf"
TEST_TARGET = "/etc/systemd/system/lacme-test-boot.target"
ENABLED = ("lacme-accountd.socket", "lacme-client.socket", "lacme-webserver.socket",
           "lacme-placeholder.service", "lacme-renew-boot.timer", "nginx.service")
SERVED_TIMEOUT = 90.0  # the boot timer fires 15 s after start-up; then an order


@dataclass
class Host:
    box: Box
    pebble: Pebble
    name: str
    tls_port: int


def nginx_conf(http_port: int, tls_port: int) -> str:
    """The documented port-80 site, and a TLS site on lacme's files."""
    site = documented_site("nginx", "nginx.conf", http_port, "/etc/lacme/nginx.conf")
    return f"""\
user www-data;
worker_processes 1;
pid /run/nginx.pid;
error_log /var/log/nginx/error.log;
events {{ worker_connections 128; }}
http {{
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    access_log off;
{site}
    server {{
        listen 127.0.0.1:{tls_port} ssl;
        ssl_certificate {CERT_DIR}/chain.pem;
        ssl_certificate_key {KEY};
        location / {{ return 204; }}
    }}
}}
"""


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Host]:
    pebble = start_pebble(tmp_path_factory.mktemp("sd-boot-pebble"),
                          env={"PEBBLE_VA_NOSLEEP": "1", "PEBBLE_AUTHZREUSE": "0"},
                          http_port=free_port())
    box = boot_box(tmp_path_factory.mktemp("sd-boot-box"))
    try:
        yield configure(box, pebble)
    finally:
        box.stop()
        pebble.stop()


def configure(box: Box, pebble: Pebble) -> Host:
    """As an administrator of a fresh host would, before its first boot with
    lacme: no certificate file exists yet."""
    box.write("/etc/lacme/boot-tls-ca.pem", Path(pebble.tls_ca_file).read_text())
    box.write("/etc/lacme/boot-root.pem", pebble.root_pem().decode())
    conf = box.host_path("/etc/lacme/lacme.conf").read_text()
    conf = re.sub(r"(?m)^server = .*$", f"server = {pebble.directory_url}", conf)
    conf = re.sub(r"(?m)^#?SSL_ca_file =.*$", "SSL_ca_file = /etc/lacme/boot-tls-ca.pem", conf)
    box.write("/etc/lacme/lacme.conf", conf)
    write_key(box.host_path("/etc/lacme/account.key"), "p256")
    key = box.host_path(KEY)
    key.parent.mkdir(mode=0o700, exist_ok=True)
    write_key(key, "p256")
    box.host_path(CERT_DIR).mkdir(mode=0o755)
    name = f"boot-{uuid.uuid4().hex[:8]}.example.com"
    box.write("/etc/lacme/lacme-certs.conf", "\n".join([
        f"[{SECTION}]", f"certificate-key = {KEY}", f"certificate = {CERT_DIR}/cert.pem",
        f"certificate-chain = {CERT_DIR}/chain.pem", f"subject = /CN={name}",
        f"subjectAltName = DNS:{name}", "CAfile = /etc/lacme/boot-root.pem", ""]))
    tls_port = free_port()
    box.write("/etc/nginx/nginx.conf", nginx_conf(pebble.http_port, tls_port))
    box.run("mkdir", "-p", "/var/log/nginx")
    box.write(DROPIN, "[Unit]\nWants=lacme-reload@nginx.service\n")  # docs/systemd.md
    box.systemctl("unmask", "nginx.service")
    box.systemctl("daemon-reload")
    box.systemctl("enable", *ENABLED)
    box.systemctl("start", "lacme-accountd.socket", "lacme-client.socket")
    proc = box.run(f"{VENV}/bin/lacme", "account", "--register", "--tos-agreed", check=False,
                   timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return Host(box=box, pebble=pebble, name=name, tls_port=tls_port)


def wait_for_ca_certificate(host: Host) -> x509.Certificate:
    """What nginx serves once it is a certificate of Pebble's intermediate."""
    intermediate = x509.load_pem_x509_certificate(host.pebble.intermediate_pem())
    deadline = time.monotonic() + SERVED_TIMEOUT
    seen: object = "nothing"
    while time.monotonic() < deadline:
        try:
            cert = served_certificate(host.tls_port, host.name)
        except OSError as exc:  # nginx not up yet
            seen = exc
        else:
            if cert.issuer == intermediate.subject:
                cert.verify_directly_issued_by(intermediate)
                return cert
            seen = cert.issuer.rfc4514_string()
        time.sleep(0.5)
    raise AssertionError(f"nginx served {seen} after {SERVED_TIMEOUT}s:\n"
                         + host.box.run("journalctl", "-b", "--no-pager", "-u", "lacme-*",
                                        "-u", "nginx.service", check=False).stdout[-4000:])


def test_boot_of_a_fresh_host_ends_with_nginx_serving_a_ca_certificate(host: Host) -> None:
    box = host.box
    assert not box.host_path(f"{CERT_DIR}/chain.pem").exists()
    box.reboot()
    cert = wait_for_ca_certificate(host)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [host.name]
    # The order systemd chose: the placeholder before nginx, the renewal after it.
    starts = {}
    for unit in ("lacme-placeholder.service", "nginx.service", "lacme-renew.service"):
        props = box.show(unit, "ExecMainStartTimestampMonotonic", "Result")
        assert props["Result"] == "success", (unit, props)
        starts[unit] = int(props["ExecMainStartTimestampMonotonic"])
    assert starts["lacme-placeholder.service"] < starts["nginx.service"] \
        < starts["lacme-renew.service"], starts
    assert box.journal(MESSAGE="*wrote a self-signed placeholder*")


@pytest.mark.parametrize("order", [
    ("lacme-renew.service", "nginx.service", "lacme-placeholder.service"),
    ("nginx.service", "lacme-placeholder.service", "lacme-renew.service"),
])
def test_start_in_one_transaction_in_any_order_serves_a_ca_certificate(
        host: Host, order: tuple[str, ...]) -> None:
    """As at boot: the three start jobs in one transaction (a target that
    wants them; ``systemctl start A B C`` would queue them one by one, and
    a job that finds no other queued starts at once)."""
    box = host.box
    box.systemctl("stop", "nginx.service")
    box.run("rm", "-f", f"{CERT_DIR}/chain.pem", f"{CERT_DIR}/cert.pem")
    box.write(TEST_TARGET, f"[Unit]\nDescription=boot of lacme and nginx\nWants={' '.join(order)}\n")
    box.systemctl("daemon-reload")
    cursor = box.cursor()
    try:
        started = box.systemctl("start", Path(TEST_TARGET).name, check=False)
    finally:
        box.host_path(TEST_TARGET).unlink()
        box.systemctl("daemon-reload")
    assert started.returncode == 0, started.stderr
    cert = wait_for_ca_certificate(host)
    assert cert.serial_number == x509.load_pem_x509_certificate(
        box.host_path(f"{CERT_DIR}/chain.pem").read_bytes()).serial_number
    events = [e.get("MESSAGE", "") for e in box.journal(after=cursor)]
    wrote = next(i for i, m in enumerate(events) if "wrote a self-signed placeholder" in m)
    nginx = next(i for i, m in enumerate(events) if m.startswith("Started nginx.service"))
    renewing = next(i for i, m in enumerate(events) if "renewing: placeholder" in m)
    assert wrote < nginx < renewing, events
