"""nginx in front of lacme in systemd mode: the booted box, its
socket-activated webserver on /run/lacme-www.socket, the installed
/etc/lacme/nginx.conf included as is by the box's own nginx.service, and
the renewal reloading nginx through the documented
``Wants=lacme-reload@nginx.service`` drop-in.

Pebble is this module's own, on the host's loopback (shared with the box):
its VA fetches from the port nginx listens on in the box.  The box's files
that this module changes are put back afterwards, and nginx.service masked
again, so the other modules of the session find the box as they left it.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest
from cryptography import x509

from tests.frontserver import (SNIPPET_DIR, challenge_fetches, documented_site, served_serial,
                               wait_for_serial, write_self_signed)
from tests.lacmeenv import write_key
from tests.pebble import Pebble, free_port, start_pebble
from tests.systemd.box import VENV, Box

pytestmark = [pytest.mark.systemd, pytest.mark.pebble]

SECTION = "front"
CERT_DIR = "/srv/lacme-front"
KEY = "/etc/lacme/keys/front.key"
ACCESS_LOG = "/var/log/nginx/lacme-front-access.log"
DROPIN = "/etc/systemd/system/lacme-notify@front.service.d/50-nginx.conf"
CHANGED = ("/etc/lacme/lacme.conf", "/etc/lacme/lacme-certs.conf", "/etc/lacme/account.key",
           "/etc/nginx/nginx.conf")
SNIPPETS = ("nginx.conf", "nginx-static.conf", "apache2.conf", "apache2-static.conf")
UNIT_STARTED = "39f53479d3a045ac8e11786248231fbf"  # systemd's catalog: "Started"/"Finished"
UNIT_RELOADED = "7b05ebc668384222baa8881179cfda54"  # systemd's catalog: "Reloaded"


@dataclass
class Front:
    box: Box
    pebble: Pebble
    name: str
    http_port: int
    tls_port: int
    throwaway: x509.Certificate


def nginx_conf(http_port: int, tls_port: int) -> str:
    """The box's /etc/nginx/nginx.conf: the example site of the installed
    snippet's comments on Pebble's http-01 port, TLS with lacme's files."""
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
    log_format front '$request $status "$upstream_addr"';
    access_log {ACCESS_LOG} front;
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
def front_pebble(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pebble]:
    """A Pebble of our own: its http-01 port is nginx's in the box."""
    instance = start_pebble(tmp_path_factory.mktemp("sd-front-pebble"),
                            env={"PEBBLE_VA_NOSLEEP": "1", "PEBBLE_AUTHZREUSE": "0"},
                            http_port=free_port())
    yield instance
    instance.stop()


@pytest.fixture(scope="module")
def front(box: Box, front_pebble: Pebble) -> Iterator[Front]:
    saved = {path: box.host_path(path).read_bytes() for path in CHANGED
             if box.host_path(path).exists()}
    try:
        yield configure(box, front_pebble)
    finally:
        box.systemctl("stop", "nginx.service", check=False)
        box.systemctl("mask", "nginx.service", check=False)
        for path in CHANGED:
            if path in saved:
                box.host_path(path).write_bytes(saved[path])
            else:
                box.host_path(path).unlink(missing_ok=True)
        box.run("rm", "-rf", CERT_DIR, KEY, Path(DROPIN).parent.as_posix(),
                "/etc/lacme/front-tls-ca.pem", "/etc/lacme/front-root.pem", check=False)
        box.systemctl("daemon-reload", check=False)


def configure(box: Box, pebble: Pebble) -> Front:
    """As an administrator would: lacme.conf pointed at the CA, a section,
    nginx with the snippet and a TLS server, the reload drop-in."""
    box.write("/etc/lacme/front-tls-ca.pem", Path(pebble.tls_ca_file).read_text())
    box.write("/etc/lacme/front-root.pem", pebble.root_pem().decode())
    conf = box.host_path("/etc/lacme/lacme.conf").read_text()
    conf = re.sub(r"(?m)^server = .*$", f"server = {pebble.directory_url}", conf)
    conf = re.sub(r"(?m)^#?SSL_ca_file =.*$", "SSL_ca_file = /etc/lacme/front-tls-ca.pem", conf)
    box.write("/etc/lacme/lacme.conf", conf)
    write_key(box.host_path("/etc/lacme/account.key"), "p256")
    name = f"front-{uuid.uuid4().hex[:8]}.example.com"
    key = box.host_path(KEY)
    key.parent.mkdir(mode=0o700, exist_ok=True)
    write_key(key, "p256")
    # nginx needs a certificate to start: a throwaway one, near its end, so
    # that the timer's renewal is due.
    throwaway = write_self_signed(box.host_path(f"{CERT_DIR}/chain.pem"), key, name)
    box.write("/etc/lacme/lacme-certs.conf", "\n".join([
        f"[{SECTION}]", f"certificate-key = {KEY}", f"certificate = {CERT_DIR}/cert.pem",
        f"certificate-chain = {CERT_DIR}/chain.pem", f"subject = /CN={name}",
        f"subjectAltName = DNS:{name}", "CAfile = /etc/lacme/front-root.pem", ""]))
    http_port, tls_port = pebble.http_port, free_port()
    box.write("/etc/nginx/nginx.conf", nginx_conf(http_port, tls_port))
    box.run("mkdir", "-p", "/var/log/nginx")
    # docs/systemd.md, "Reloading services after a renewal".
    box.write(DROPIN, "[Unit]\nWants=lacme-reload@nginx.service\n")
    box.systemctl("unmask", "nginx.service")
    box.systemctl("daemon-reload")  # the generator sees the new certificate directory
    box.systemctl("start", "nginx.service")
    box.systemctl("enable", "--now", "lacme-accountd.socket", "lacme-client.socket",
                  "lacme-webserver.socket")
    proc = box.run(f"{VENV}/bin/lacme", "account", "--register", "--tos-agreed", check=False,
                   timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return Front(box=box, pebble=pebble, name=name, http_port=http_port, tls_port=tls_port,
                 throwaway=throwaway)


def test_make_install_put_the_four_snippets_in_etc_lacme(box: Box) -> None:
    for name in SNIPPETS:
        installed = box.host_path(f"/etc/lacme/{name}")
        assert installed.read_bytes() == (SNIPPET_DIR / name).read_bytes(), name


def test_timer_renewal_validates_through_nginx_and_reload_serves_new_certificate(
        front: Front) -> None:
    box = front.box
    assert served_serial(front.tls_port, front.name) == front.throwaway.serial_number
    assert box.show("lacme-webserver.socket", "ActiveState")["ActiveState"] == "active"
    cursor, offset = box.cursor(), front.pebble.log_offset()

    box.systemctl("start", "lacme-renew.service", check=False)  # what the timer starts
    result = box.show("lacme-renew.service", "Result")["Result"]
    assert result == "success", box.journal(after=cursor, _SYSTEMD_UNIT="lacme-renew.service")
    chain = x509.load_pem_x509_certificates(box.host_path(f"{CERT_DIR}/chain.pem").read_bytes())
    leaf = chain[0]
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [front.name]

    # The CA's fetches went through nginx to the socket-activated webserver.
    lines = box.host_path(ACCESS_LOG).read_text().splitlines()
    tokens = challenge_fetches(lines)
    assert tokens, lines
    assert all(token in front.pebble.log_text(offset) for token in tokens)
    fetched = [line for line in lines if any(token in line for token in tokens)]
    assert all(line.endswith('"unix:/run/lacme-www.socket"') for line in fetched), fetched
    assert box.journal(after=cursor, _SYSTEMD_UNIT="lacme-webserver.service")

    # The drop-in pulled in lacme-reload@nginx.service, which reloaded nginx,
    # whose TLS side now presents the new certificate.
    assert box.wait_journal(after=cursor, UNIT="lacme-reload@nginx.service", MESSAGE_ID=UNIT_STARTED)
    assert box.wait_journal(after=cursor, UNIT="nginx.service", MESSAGE_ID=UNIT_RELOADED)
    assert wait_for_serial(front.tls_port, front.name, leaf.serial_number) == leaf.serial_number
    assert leaf.serial_number != front.throwaway.serial_number


def test_renewal_by_hand_reloads_nginx_as_the_timer_run_does(front: Front) -> None:
    # An administrator's `lacme newOrder --force` in a root shell (no
    # INVOCATION_ID: box.run enters the box with nsenter) after a key
    # compromise: the notify units run all the same, so nginx serves the
    # certificate just installed.
    box = front.box
    before = served_serial(front.tls_port, front.name)
    cursor = box.cursor()
    proc = box.run(f"{VENV}/bin/lacme", "newOrder", "--force", SECTION, check=False, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    leaf = x509.load_pem_x509_certificates(box.host_path(f"{CERT_DIR}/chain.pem").read_bytes())[0]
    assert leaf.serial_number != before
    assert box.wait_journal(after=cursor, UNIT="lacme-reload@nginx.service", MESSAGE_ID=UNIT_STARTED)
    assert wait_for_serial(front.tls_port, front.name, leaf.serial_number) == leaf.serial_number
