"""Fork mode behind a web server: the snippets of etc/ in Debian's nginx and
Apache httpd, on loopback ports, with Pebble validating through them.

Pebble is this module's own: its VA fetches http-01 answers from the port
where the test's nginx or apache2 listens (each test starts one and stops
it).  The servers include the SHIPPED snippets, with only their paths
changed (tests/frontserver.py).  Runs as root: the servers' workers drop to
www-data, as packaged, so the socket and the challenge directory must be
reachable by another user, as on a real host.  The components of lacme keep
root's id here (tests/test_privdrop.py covers their drop).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from tests.frontserver import (DEFAULT_CHALLENGES, DEFAULT_SOCKET, PROXY_SNIPPETS, SNIPPET_DIR,
                               STATIC_SNIPPETS, FrontServer, challenge_fetches, copy_snippet,
                               request, served_serial, wait_for_serial, write_self_signed)
from tests.lacmeenv import TREE_ROOT, LacmeSetup, load_chain, public_dir, san_names, unique_name, write_key
from tests.pebble import Pebble, free_port, start_pebble

pytestmark = [pytest.mark.pebble, pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root (workers run as www-data)")]

KINDS = ("nginx", "apache2")
ABSENT_SOCKET_STATUS = {"nginx": 502, "apache2": 503}


# -- fixtures ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def front_pebble(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pebble]:
    """A Pebble whose VA fetches from the port our web servers listen on
    (not shared: nothing else may listen there)."""
    instance = start_pebble(tmp_path_factory.mktemp("front-pebble"),
                            env={"PEBBLE_VA_NOSLEEP": "1", "PEBBLE_AUTHZREUSE": "0"},
                            http_port=free_port())
    yield instance
    instance.stop()


@pytest.fixture(scope="module")
def account_key(front_pebble: Pebble, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("front-account")
    key = write_key(root / "account.key", "p256")
    setup = LacmeSetup(root=root / "etc", pebble=front_pebble, account_key=key)
    setup.write()
    done = setup.run("account", "--register", "--tos-agreed")
    assert done.returncode == 0, done.stderr
    return key


@pytest.fixture
def public() -> Iterator[Path]:
    """A directory www-data can traverse (pytest's are 0700), removed after."""
    path = public_dir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(params=KINDS)
def front(request: pytest.FixtureRequest, front_pebble: Pebble) -> Iterator[FrontServer]:
    """An nginx or apache2 (not started) on Pebble's http-01 port."""
    server = FrontServer(kind=request.param, http_port=front_pebble.http_port, tls_port=free_port())
    yield server
    server.remove()


def lacme_setup(tmp_path: Path, pebble: Pebble, account_key: Path, listen: str,
                extra_webserver: str = "") -> tuple[LacmeSetup, str, dict[str, str]]:
    """lacme.conf for ``listen`` ("" for none), one section for a new name."""
    setup = LacmeSetup(root=tmp_path / "etc", pebble=pebble, account_key=account_key,
                       listen=listen or "127.0.0.1:1", extra_webserver=extra_webserver)
    name = unique_name("front")
    section = setup.add_section("www", [name], key_kind="p256")
    setup.write()
    if not listen:  # LacmeSetup has no "no webserver": empty the line it wrote
        conf = setup.conf.read_text()
        assert "listen = 127.0.0.1:1\n" in conf
        setup.conf.write_text(conf.replace("listen = 127.0.0.1:1\n", "listen =\n"))
    return setup, name, section


# -- the proxy snippets: lacme's webserver on a UNIX socket behind the server ---------

def test_proxy_snippets_name_the_sockets_of_lacme_and_of_the_socket_unit() -> None:
    assert f"#listen = {DEFAULT_SOCKET}\n" in (TREE_ROOT / "etc/lacme.conf").read_text()
    assert f"ListenStream={DEFAULT_SOCKET}\n" in (TREE_ROOT / "units/lacme-webserver.socket").read_text()
    assert f"activate = {DEFAULT_SOCKET}\n" in (TREE_ROOT / "etc/systemd/lacme.conf").read_text()
    assert f"proxy_pass http://unix:{DEFAULT_SOCKET};" in (SNIPPET_DIR / "nginx.conf").read_text()
    assert f'"unix:{DEFAULT_SOCKET}|http://localhost/.well-known/acme-challenge/"' in \
        (SNIPPET_DIR / "apache2.conf").read_text()


def test_proxy_snippet_carries_validation_to_the_socket_and_reload_serves_new_certificate(
        front: FrontServer, front_pebble: Pebble, account_key: Path, tmp_path: Path,
        public: Path) -> None:
    socket_path = public / "lacme-www.socket"
    snippet = copy_snippet(PROXY_SNIPPETS[front.kind], public / "snippet.conf",
                           {DEFAULT_SOCKET: str(socket_path)})
    setup, name, section = lacme_setup(tmp_path, front_pebble, account_key, str(socket_path))
    chain, key = Path(section["certificate-chain"]), Path(section["certificate-key"])
    throwaway = write_self_signed(chain, key, name)
    section["notify"] = front.reload_command()
    setup.write_certs()
    front.write(front.documented_site(PROXY_SNIPPETS[front.kind], snippet), chain, key)
    front.start()
    assert served_serial(front.tls_port, name) == throwaway.serial_number

    # Between runs nothing listens on the socket: the server says so, and
    # that fetch does not spoil the next run.
    status, _, _ = request(front.http_port, "/.well-known/acme-challenge/early", host=name)
    assert status == ABSENT_SOCKET_STATUS[front.kind]
    offset = front_pebble.log_offset()

    done = setup.run("newOrder", "--force")
    assert done.returncode == 0, done.stderr
    leaf = load_chain(Path(section["certificate"]))[0]
    assert san_names(leaf) == {name}
    assert load_chain(chain)[0] == leaf

    # The CA's fetches went through the server, which got them answered.
    tokens = challenge_fetches(front.access_lines())
    assert tokens, front.access_lines()
    assert all(token in front_pebble.log_text(offset) for token in tokens)
    if front.kind == "nginx":  # its log names the upstream: lacme's socket
        fetched = [line for line in front.access_lines() if " 200 " in line and "acme-challenge" in line]
        assert all(line.endswith(f'"unix:{socket_path}"') for line in fetched), fetched
    assert not socket_path.exists()  # lacme removed its socket after the run

    # notify reloaded the server: its TLS side presents the new certificate.
    assert wait_for_serial(front.tls_port, name, leaf.serial_number) == leaf.serial_number
    assert leaf.serial_number != throwaway.serial_number


def test_proxy_snippet_without_socket_answers_5xx_and_logs_one_line_naming_it(
        front: FrontServer, public: Path) -> None:
    socket_path = public / "absent" / "lacme-www.socket"
    snippet = copy_snippet(PROXY_SNIPPETS[front.kind], public / "snippet.conf",
                           {DEFAULT_SOCKET: str(socket_path)})
    key = write_key(public / "tls.key", "p256")
    write_self_signed(public / "tls.pem", key, "localhost")
    front.write(front.plain_site(snippet), public / "tls.pem", key)
    front.start()
    status, _, _ = request(front.http_port, "/.well-known/acme-challenge/abc_DEF-123")
    assert status == ABSENT_SOCKET_STATUS[front.kind]
    naming = [line for line in front.error_lines() if str(socket_path) in line]
    assert len(naming) == 1, front.error_lines()


def test_apache_proxy_snippet_included_globally_covers_virtual_hosts(
        front_pebble: Pebble, account_key: Path, tmp_path: Path, public: Path) -> None:
    """The other documented placement: once, outside any <VirtualHost>."""
    server = FrontServer(kind="apache2", http_port=front_pebble.http_port, tls_port=free_port())
    try:
        socket_path = public / "lacme-www.socket"
        snippet = copy_snippet("apache2.conf", public / "snippet.conf",
                               {DEFAULT_SOCKET: str(socket_path)})
        setup, name, section = lacme_setup(tmp_path, front_pebble, account_key, str(socket_path))
        chain, key = Path(section["certificate-chain"]), Path(section["certificate-key"])
        write_self_signed(chain, key, name)
        server.write(server.documented_site("apache2.conf", None), chain, key,
                     top=f"Include {snippet}")
        server.start()
        done = setup.run("newOrder", "--force")
        assert done.returncode == 0, done.stderr
        assert san_names(load_chain(Path(section["certificate"]))[0]) == {name}
        assert challenge_fetches(server.access_lines())
    finally:
        server.remove()


# -- the static snippets: the server reads challenge-directory -------------------------

def static_front(front: FrontServer, public: Path) -> tuple[Path, Path]:
    """The challenge directory ``public``/acme-challenge and a copy of the
    shipped static snippet of ``front`` that serves it."""
    directory = public / "acme-challenge"
    directory.mkdir(mode=0o755)
    snippet = copy_snippet(STATIC_SNIPPETS[front.kind], public / "snippet.conf",
                           {DEFAULT_CHALLENGES: str(directory)})
    return directory, snippet


def test_static_snippet_serves_challenge_directory_to_the_ca(
        front: FrontServer, front_pebble: Pebble, account_key: Path, tmp_path: Path,
        public: Path) -> None:
    directory, snippet = static_front(front, public)
    setup, name, section = lacme_setup(tmp_path, front_pebble, account_key, "",
                                       extra_webserver=f"challenge-directory = {directory}")
    chain, key = Path(section["certificate-chain"]), Path(section["certificate-key"])
    throwaway = write_self_signed(chain, key, name)
    section["notify"] = front.reload_command()
    setup.write_certs()
    front.write(front.documented_site(STATIC_SNIPPETS[front.kind], snippet), chain, key)
    front.start()
    offset = front_pebble.log_offset()

    done = setup.run("newOrder", "--force")
    assert done.returncode == 0, done.stderr
    leaf = load_chain(Path(section["certificate"]))[0]
    assert san_names(leaf) == {name}
    tokens = challenge_fetches(front.access_lines())
    assert tokens, front.access_lines()
    assert all(token in front_pebble.log_text(offset) for token in tokens)
    assert not any((directory / token).exists() for token in tokens)  # lacme cleaned up
    assert wait_for_serial(front.tls_port, name, leaf.serial_number) == leaf.serial_number
    assert leaf.serial_number != throwaway.serial_number


def assert_no_leak(path: str, body: bytes, token: str) -> None:
    for leak in (token.encode(), b"outside", b"lock", b"stale", b"site file"):
        assert leak not in body, (path, body)


def test_static_snippet_serves_only_tokens_as_text_read_only(
        front: FrontServer, public: Path) -> None:
    directory, snippet = static_front(front, public)
    token, answer = "abc_DEF-123", b"abc_DEF-123.thumbprint"
    (directory / token).write_bytes(answer)
    (directory / ".lacme.lock").write_text("lock\n")
    (directory / "page.html").write_text("<p>not a token</p>\n")
    secret = public / "secret"
    secret.write_text("outside\n")
    secret.chmod(0o644)
    (directory / "linked").symlink_to(secret)
    for path in directory.iterdir():
        if not path.is_symlink():
            path.chmod(0o644)
    key = write_key(public / "tls.key", "p256")
    write_self_signed(public / "tls.pem", key, "localhost")
    docroot = public / "site"  # the site's own files, listed
    (docroot / ".well-known/acme-challenge").mkdir(parents=True)
    (docroot / ".well-known/acme-challenge/stale.txt").write_text("site file\n")
    (docroot / "page").write_text("site page\n")
    for path in (docroot, *docroot.rglob("*")):
        path.chmod(0o755 if path.is_dir() else 0o644)
    front.write(front.plain_site(snippet, docroot), public / "tls.pem", key)
    front.start()
    prefix = "/.well-known/acme-challenge/"
    assert request(front.http_port, "/page")[0] == 200  # the site serves its files

    status, headers, body = request(front.http_port, prefix + token)
    assert (status, body) == (200, answer)
    assert headers["content-type"].split(";")[0] == "text/plain"
    status, headers, body = request(front.http_port, prefix + token, method="HEAD")
    assert (status, body) == (200, b"")
    # Under the path: no listing, no file but a token, nothing of the site's.
    for path in (prefix, prefix + ".lacme.lock", prefix + "page.html", prefix + "stale.txt",
                 prefix + token + "/"):
        status, _, body = request(front.http_port, path)
        assert status == 404, (path, status)
        assert_no_leak(path, body, token)
    status, _, body = request(front.http_port, prefix + "linked")  # a link out of the directory
    assert status in (403, 404)
    assert_no_leak("linked", body, token)
    # The directory is reachable under that path only.
    for path in ("/" + token, "/acme-challenge/" + token, prefix + "../secret",
                 prefix + "..%2fsecret", prefix + "%2e%2e/secret"):
        status, _, body = request(front.http_port, path)
        assert status != 200, (path, status)
        assert_no_leak(path, body, token)
    # Read-only: no method but GET and HEAD does anything.
    for method in ("POST", "PUT", "DELETE"):
        status, _, _ = request(front.http_port, prefix + token, method=method, body=b"x")
        assert status in (403, 405), (method, status)
        status, _, _ = request(front.http_port, prefix + "new_token", method=method, body=b"x")
        assert status in (403, 404, 405), (method, status)
    assert (directory / token).read_bytes() == answer
    assert not (directory / "new_token").exists()


# -- mistakes a user can make --------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_include_of_absent_snippet_fails_with_one_line_naming_it(kind: str, public: Path) -> None:
    server = FrontServer(kind=kind, http_port=free_port(), tls_port=free_port(), home=public)
    key = write_key(public / "tls.key", "p256")
    write_self_signed(public / "tls.pem", key, "localhost")
    absent = public / "etc-lacme" / PROXY_SNIPPETS[kind]
    server.write(server.plain_site(absent), public / "tls.pem", key)
    done = server.check()
    assert done.returncode != 0
    naming = [line for line in (done.stdout + done.stderr).splitlines() if str(absent) in line]
    assert len(naming) == 1, done.stderr


@pytest.mark.parametrize("snippet, module, hint", [
    ("apache2.conf", "proxy_http", "a2enmod proxy_http"),
    ("apache2-static.conf", "alias", "a2enmod alias"),
    ("apache2-static.conf", "mime", "a2enmod mime"),
])
def test_apache_snippet_without_its_module_says_which_to_enable(
        snippet: str, module: str, hint: str, public: Path) -> None:
    server = FrontServer(kind="apache2", http_port=free_port(), tls_port=free_port(), home=public)
    key = write_key(public / "tls.key", "p256")
    write_self_signed(public / "tls.pem", key, "localhost")
    copied = copy_snippet(snippet, public / "snippet.conf", {})
    conf = server.write(server.plain_site(copied), public / "tls.pem", key)
    assert server.check().returncode == 0, server.check().stderr
    text = conf.read_text()
    line = f"LoadModule {module}_module "
    assert line in text
    conf.write_text("".join(kept for kept in text.splitlines(keepends=True) if not kept.startswith(line)))
    done = server.check()
    assert done.returncode != 0
    assert hint in done.stderr and str(copied) in done.stderr, done.stderr


# -- make install ------------------------------------------------------------------------

SNIPPET_NAMES = ("nginx.conf", "nginx-static.conf", "apache2.conf", "apache2-static.conf")


def test_make_install_puts_snippets_in_etc_lacme_and_keeps_edited_ones(tmp_path: Path) -> None:
    def install() -> None:
        done = subprocess.run(["make", "-s", "-C", str(TREE_ROOT), "install-etc", f"DESTDIR={tmp_path}"],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr

    install()
    conf = tmp_path / "etc/lacme"
    for name in SNIPPET_NAMES:
        assert (conf / name).read_bytes() == (SNIPPET_DIR / name).read_bytes()
        assert (conf / name).stat().st_mode & 0o777 == 0o644
    (conf / "nginx.conf").write_text("# edited by the administrator\n")
    install()
    assert (conf / "nginx.conf").read_text() == "# edited by the administrator\n"


@pytest.mark.parametrize("name", SNIPPET_NAMES)
def test_snippet_documents_its_lacme_settings_and_include_line(name: str) -> None:
    text = (SNIPPET_DIR / name).read_text()
    comments = "\n".join(line for line in text.splitlines() if line.startswith("#"))
    if "static" in name:
        assert "listen =\n" in comments and f"challenge-directory = {DEFAULT_CHALLENGES}" in comments
    else:
        assert f"listen = {DEFAULT_SOCKET}" in comments
    include = "include" if name.startswith("nginx") else "Include"
    assert re.search(rf"^#\s+{include} /etc/lacme/{re.escape(name)}", comments, re.M), name


@pytest.mark.parametrize("kind", KINDS)
def test_readme_example_site_passes_the_servers_configuration_test(kind: str, public: Path) -> None:
    readme = (TREE_ROOT / "README.md").read_text().split("## A web server in front", 1)[1]
    fence = "```nginx\n" if kind == "nginx" else "```apache\n"
    site = readme.split(fence, 1)[1].split("```", 1)[0]
    server = FrontServer(kind=kind, http_port=free_port(), tls_port=free_port(), home=public)
    snippet = copy_snippet(PROXY_SNIPPETS[kind], public / "snippet.conf", {})
    listen = ("listen 80;", f"listen 127.0.0.1:{server.http_port};") if kind == "nginx" \
        else ("<VirtualHost *:80>", f"<VirtualHost 127.0.0.1:{server.http_port}>")
    assert listen[0] in site and f"/etc/lacme/{PROXY_SNIPPETS[kind]}" in site
    site = site.replace(*listen).replace(f"/etc/lacme/{PROXY_SNIPPETS[kind]}", str(snippet))
    key = write_key(public / "tls.key", "p256")
    write_self_signed(public / "tls.pem", key, "localhost")
    server.write(site, public / "tls.pem", key)
    done = server.check()
    assert done.returncode == 0, done.stdout + done.stderr
