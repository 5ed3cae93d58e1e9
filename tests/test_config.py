"""Tests of lacme.config: the INI reader (ini), the schemas (accountd, master, certs) and their errors."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lacme.config.accountd import AccountdConfig, load_accountd_config
from lacme.config.certs import CertSection, load_cert_sections
from lacme.config.ini import parse_ini
from lacme.config.master import ListenAddress, load_master_config, parse_listen
from lacme.config.specifiers import Identity
from lacme.core.errors import ConfigError, SpecifierError

ETC = Path(__file__).resolve().parent.parent / "etc"
ROOT = Identity(0, 0, "root", "root", "/root", {"HOME": "/root"})


def user_identity(tmp_path: Path, **env: str) -> Identity:
    return Identity(1000, 1000, "alice", "alice", str(tmp_path),
                    {"HOME": str(tmp_path), "XDG_RUNTIME_DIR": "/run/user/1000", **env})


def write(path: Path, text: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


def raises_at(prefix: str, *parts: str):
    """pytest.raises(ConfigError) whose message starts with prefix and has parts."""
    pattern = "^" + re.escape(prefix) + "".join(".*" + re.escape(p) for p in parts)
    return pytest.raises(ConfigError, match=pattern)


# ---------------------------------------------------------------------------
# INI reader

def test_parse_ini_original_semantics() -> None:
    ini = parse_ini(
        "  top = level  \n# comment\n ; other comment\n\n[ client ]\nCAfile = %t/x ; not a comment\n"
        "SSL_verify=no\n[client]\nSSL_verify = yes\nempty =\n", "f.conf")
    assert ini.defaults == {"top": "level"}
    assert dict(ini.sections["client"]) == {"CAfile": "%t/x ; not a comment",
                                            "SSL_verify": "yes", "empty": ""}


def test_parse_ini_keys_case_sensitive() -> None:
    ini = parse_ini("[s]\nCAfile = a\ncafile = b\n", "f")
    assert ini.sections["s"]["CAfile"] == "a" and ini.sections["s"]["cafile"] == "b"


def test_parse_ini_value_may_contain_equals() -> None:
    assert parse_ini("subject = /CN=a.example/O=b\n", "f").defaults["subject"] == "/CN=a.example/O=b"


@pytest.mark.parametrize("text,line", [("a = b\njunk\n", 2), ("[s]\n= v\n", 2),
                                       ("[]\n", 1), ("\r\n[s\n", 2)])
def test_parse_ini_syntax_error_names_file_and_line(text: str, line: int) -> None:
    with pytest.raises(ConfigError, match=rf"^f\.conf:{line}: syntax error"):
        parse_ini(text, "f.conf")


def test_parse_ini_crlf_and_cr_line_breaks() -> None:
    ini = parse_ini("a = 1\r\n[s]\rb = 2\r\n", "f")
    assert ini.defaults == {"a": "1"} and ini.sections["s"] == {"b": "2"}


@given(st.text())
def test_parse_ini_arbitrary_text_raises_only_config_error(text: str) -> None:
    try:
        parse_ini(text, "f")
    except ConfigError as e:
        assert str(e).startswith("f:") and "\n" not in str(e)


PRINTABLE = "".join(chr(c) for c in range(0x21, 0x7F))
KEYS = st.text(alphabet=PRINTABLE.replace("=", "").replace("[", "").replace("#", "")
               .replace(";", ""), min_size=1, max_size=12)
VALUES = st.builds(lambda a, b: (a + b).strip(), st.text(alphabet=PRINTABLE, max_size=1),
                   st.text(alphabet=PRINTABLE + " ", max_size=20))
SECTIONS = st.text(alphabet=PRINTABLE.replace("]", ""), min_size=1, max_size=12)


@given(st.dictionaries(KEYS, VALUES),
       st.dictionaries(SECTIONS, st.dictionaries(KEYS, VALUES), max_size=4))
def test_parse_ini_round_trip(defaults: dict[str, str], sections: dict[str, dict[str, str]]) -> None:
    lines = [f"  {k} =  {v}" for k, v in defaults.items()]
    for name, settings in sections.items():
        lines.append(f"[ {name} ]")
        lines.extend(f"{k}={v}   " for k, v in settings.items())
    ini = parse_ini("\n".join(lines), "f")
    assert dict(ini.defaults) == defaults
    assert {n: dict(s) for n, s in ini.sections.items()} == sections


def test_read_missing_master_config_names_it(tmp_path: Path) -> None:
    path = str(tmp_path / "nope.conf")
    with raises_at(path + ": ", "No such file"):
        load_master_config(path, ROOT)


# ---------------------------------------------------------------------------
# lacme.conf

def test_master_defaults(tmp_path: Path) -> None:
    conf = load_master_config(write(tmp_path / "lacme.conf", ""), ROOT)
    assert conf.config_certs == (str(tmp_path / "lacme-certs.conf"),
                                 str(tmp_path / "lacme-certs.conf.d") + "/")
    assert conf.client.socket == "/run/S.lacme"
    assert (conf.client.user, conf.client.group) == ("_lacme-client", "nogroup")
    assert conf.client.command == ("lacme-client",)
    assert conf.client.server == "https://acme-v02.api.letsencrypt.org/directory"
    assert conf.client.timeout == 30 and conf.client.ssl_verify is True
    assert conf.client.connect is None and conf.client.ssl_ca_file is None
    assert conf.webserver.listen == (ListenAddress("unix", path="/run/lacme-www.socket"),)
    assert (conf.webserver.user, conf.webserver.group) == ("_lacme-www", "nogroup")
    assert conf.webserver.command == ("lacme-webserver",) and conf.webserver.iptables is False
    assert conf.accountd is None
    assert conf.run_interval == 3600


@pytest.mark.parametrize("value, seconds", [("600", 600), ("2.5", 2.5), ("30s", 30),
                                            ("90min", 5400), ("5m", 300), ("1h", 3600),
                                            ("2 d", 172800)])
def test_master_run_interval(tmp_path: Path, value: str, seconds: float) -> None:
    conf = load_master_config(write(tmp_path / "lacme.conf", f"run-interval = {value}\n"), ROOT)
    assert conf.run_interval == seconds


def test_master_settings_expanded(tmp_path: Path) -> None:
    ident = user_identity(tmp_path)
    path = write(tmp_path / "lacme.conf", """
config-certs = /abs/certs.conf rel.d/ %h/mine.conf
[client]
socket = %t/S.test
connect = %t/client.sock
command = /usr/bin/env  X=1   lacme-client
timeout = 2.5
SSL_verify = Off
SSL_ca_file = %h/ca.pem
[webserver]
listen = 127.0.0.1:8080, [::1] /run/www.sock
challenge-directory = %h/challenges
activate = %t/www.sock
iptables = YES
[accountd]
command = ssh -T %u@host lacme-accountd
config = %E/lacme/a.conf
quiet = no
""")
    conf = load_master_config(path, ident)
    assert conf.config_certs == ("/abs/certs.conf", f"{tmp_path}/rel.d/", f"{tmp_path}/mine.conf")
    assert conf.client.socket == "/run/user/1000/S.test"
    assert conf.client.connect == "/run/user/1000/client.sock"
    assert conf.client.command == ("/usr/bin/env", "X=1", "lacme-client")
    assert conf.client.timeout == 2.5 and conf.client.ssl_verify is False
    assert conf.client.ssl_ca_file == f"{tmp_path}/ca.pem"
    assert [str(a) for a in conf.webserver.listen] == ["127.0.0.1:8080", "[::1]:80", "/run/www.sock"]
    assert conf.webserver.challenge_directory == f"{tmp_path}/challenges"
    assert conf.webserver.activate == "/run/user/1000/www.sock"
    assert conf.webserver.iptables is True
    assert conf.accountd is not None
    assert conf.accountd.command == ("ssh", "-T", "%u@host", "lacme-accountd")  # raw
    assert conf.accountd.config == "%E/lacme/a.conf" and conf.accountd.quiet is False


def test_master_socket_override_drops_accountd(tmp_path: Path) -> None:
    path = write(tmp_path / "lacme.conf", "[client]\nsocket = /x\n[accountd]\n")
    assert load_master_config(path, ROOT).accountd is not None
    conf = load_master_config(path, ROOT, socket_override="%t/other")
    assert conf.accountd is None and conf.client.socket == "/run/other"


@pytest.mark.parametrize("text,prefix,parts", [
    ("[client]\ntimeout = abc\n", " [client] timeout: ", ['not a number: "abc"']),
    ("[client]\ntimeout = 0\n", " [client] timeout: ", ["positive"]),
    ("[client]\nSSL_verify = maybe\n", " [client] SSL_verify: ", ["maybe"]),
    ("[client]\nsocket = %q\n", " [client] socket: ", ["unknown specifier %q"]),
    ("[client]\ncommand =\n", " [client] command: ", ["empty command"]),
    ("[client]\nserver = ftp://x\n", " [client] server: ", ["ftp://x"]),
    ("[client]\nssl_verify = no\n", " [client]: ", ['unknown setting "ssl_verify"']),
    ("[www]\nfoo = 1\n", ": ", ["unknown section [www]"]),
    ("foo = 1\n", ": ", ['unknown setting "foo"']),
    ("config-certs = %x\n", " config-certs: ", ["%x"]),
    ("run-interval = 0\n", " run-interval: ", ['not a positive duration', '"0"']),
    ("run-interval = 1w\n", " run-interval: ", ['"1w"']),
    ("run-interval = -5min\n", " run-interval: ", ['"-5min"']),
    ("run-interval = hourly\n", " run-interval: ", ['"hourly"']),
    ("[webserver]\nlisten = 1.2.3.4:99999\n", " [webserver] listen: ", ["99999"]),
    ("[webserver]\nlisten = 1.2.3.400\n", " [webserver] listen: ", ["1.2.3.400"]),
    ("[webserver]\nlisten = [::g]\n", " [webserver] listen: ", ["[::g]"]),
    ("[webserver]\nlisten = example.org:80\n", " [webserver] listen: ", ["example.org"]),
    ("[webserver]\nlisten =\n", " [webserver] challenge-directory: ", ["required"]),
    ("[webserver]\niptables = 2\n", " [webserver] iptables: ", ["2"]),
    ("[webserver]\nactivate = www.sock\n", " [webserver] activate: ", ["'www.sock'", "absolute"]),
    ("[accountd]\ncommand = lacme-accountd --x=%y\n", " [accountd] command: ", ["%y"]),
    ("[accountd]\nconfig = %\n", " [accountd] config: ", ["lone %"]),
    ("[accountd]\nprivkey = key.pem\n", " [accountd] privkey: ", ["file:PATH"]),
    ("[accountd]\nUser = x\n", " [accountd]: ", ['"User"']),
])
def test_master_errors_name_file_section_setting(tmp_path: Path, text: str, prefix: str,
                                                  parts: list[str]) -> None:
    path = write(tmp_path / "lacme.conf", text)
    with raises_at(path + prefix, *parts):
        load_master_config(path, ROOT)


def test_master_t_undefined_for_user_without_runtime_dir(tmp_path: Path) -> None:
    ident = Identity(1000, 1000, "a", "a", str(tmp_path), {"HOME": str(tmp_path)})
    path = write(tmp_path / "lacme.conf", "")
    with pytest.raises(SpecifierError, match=r"\[client\] socket: undefined expansion %t"):
        load_master_config(path, ident)


def test_master_challenge_directory_allows_empty_listen(tmp_path: Path) -> None:
    path = write(tmp_path / "lacme.conf", "[webserver]\nlisten=\nchallenge-directory=/srv/acme\n")
    web = load_master_config(path, ROOT).webserver
    assert web.listen == () and web.challenge_directory == "/srv/acme"


@pytest.mark.parametrize("value,expected", [
    ("0.0.0.0 [::]", ["0.0.0.0:80", "[::]:80"]),
    ("[2001:DB8::1]:8443,,/a/b", ["[2001:db8::1]:8443", "/a/b"]),
    ("", []),
])
def test_parse_listen_forms(value: str, expected: list[str]) -> None:
    assert [str(a) for a in parse_listen(value)] == expected


@pytest.mark.parametrize("value", ["0.0.0.0:", "[::]:", "10.0.0.1:x", "10.0.0.1:0", "01.2.3.4"])
def test_parse_listen_refuses_a_colon_without_a_port_and_the_like(value: str) -> None:
    # the quick dotted-quad path and the full parse agree: "IPV4:" is no address
    with pytest.raises(ConfigError, match="listen"):
        parse_listen(value)


def test_parse_listen_families() -> None:
    four, six, unix = parse_listen("10.0.0.1:81 [::1]:82 /s")
    assert (four.family, four.host, four.port) == ("inet", "10.0.0.1", 81)
    assert (six.family, six.host, six.port) == ("inet6", "::1", 82)
    assert (unix.family, unix.path) == ("unix", "/s")


@given(st.text(max_size=40))
def test_parse_listen_arbitrary_raises_only_config_error(value: str) -> None:
    try:
        addresses = parse_listen(value)
    except ConfigError:
        return
    for a in addresses:
        assert parse_listen(str(a)) == (a,)


# ---------------------------------------------------------------------------
# lacme-accountd.conf

def test_accountd_missing_default_is_empty(tmp_path: Path) -> None:
    ident = user_identity(tmp_path, XDG_CONFIG_HOME=str(tmp_path / "cfg"))
    assert load_accountd_config(None, ident) == AccountdConfig()


def test_accountd_default_location_is_read(tmp_path: Path) -> None:
    ident = user_identity(tmp_path, XDG_CONFIG_HOME=str(tmp_path / "cfg"))
    write(tmp_path / "cfg/lacme/lacme-accountd.conf", "privkey = file:%h/key.pem\n")
    assert load_accountd_config(None, ident).privkey == "file:%h/key.pem"


def test_accountd_missing_explicit_path_fails(tmp_path: Path) -> None:
    path = str(tmp_path / "absent.conf")
    with raises_at(path + ": "):
        load_accountd_config(path, ROOT)


def test_accountd_values_raw(tmp_path: Path) -> None:
    path = write(tmp_path / "a.conf", """
privkey = gpg:%E/lacme/key.gpg
gpg = gpg --quiet --no-tty
socket = %t/S.lacme
logfile = %C/lacme.log
keyid = https://ca.example/acct/1
quiet = No
origin = HTTPS://CA.Example:443/
""")
    assert load_accountd_config(path, ROOT) == AccountdConfig(
        privkey="gpg:%E/lacme/key.gpg", gpg="gpg --quiet --no-tty", socket="%t/S.lacme",
        logfile="%C/lacme.log", keyid="https://ca.example/acct/1", quiet=False,
        origin="https://ca.example")


def test_accountd_origin_keeps_port(tmp_path: Path) -> None:
    path = write(tmp_path / "a.conf", "origin = https://127.0.0.1:14000\n")
    assert load_accountd_config(path, ROOT).origin == "https://127.0.0.1:14000"


@pytest.mark.parametrize("text,prefix,parts", [
    ("[x]\n", ": ", ["unknown section [x]"]),
    ("Privkey = file:/k\n", ": ", ['unknown setting "Privkey"']),
    ("privkey = /k\n", " privkey: ", ["file:PATH or gpg:PATH"]),
    ("privkey = file:%k\n", " privkey: ", ["unknown specifier %k"]),
    ("socket = /x%\n", " socket: ", ["lone %"]),
    ("logfile = %Y\n", " logfile: ", ["%Y"]),
    ("quiet = perhaps\n", " quiet: ", ["perhaps"]),
    ("origin = http://ca.example\n", " origin: ", ["https"]),
    ("origin = https://ca.example/dir\n", " origin: ", ["host[:port]"]),
])
def test_accountd_errors_name_file_and_setting(tmp_path: Path, text: str, prefix: str,
                                               parts: list[str]) -> None:
    path = write(tmp_path / "a.conf", text)
    with raises_at(path + prefix, *parts):
        load_accountd_config(path, ROOT)


# ---------------------------------------------------------------------------
# lacme-certs.conf

MINIMAL = "certificate-key = /k\ncertificate = /c\nsubject = /CN=www.example.org\n"


def test_cert_section_all_settings(tmp_path: Path) -> None:
    path = write(tmp_path / "certs.conf", """
[www]
certificate = /etc/ssl/www.crt
certificate-chain = /etc/ssl/www.chain.crt
certificate-key = /etc/ssl/www.key
min-days = -1
subject = /C=FR/O=Example\\/Org/CN=WWW.example.org
subjectAltName = DNS:www.example.org , DNS:*.example.org,DNS:Example.org
CAfile =
hash = SHA384
keyUsage = digitalSignature, keyEncipherment
tlsfeature = status_request
owner = root:ssl-cert
mode = 640
notify = systemctl reload nginx
""")
    www = load_cert_sections([path])["www"]
    assert www == CertSection(
        name="www", source=path, certificate="/etc/ssl/www.crt",
        certificate_chain="/etc/ssl/www.chain.crt", certificate_key="/etc/ssl/www.key",
        min_days=-1, subject=(("C", "FR"), ("O", "Example/Org"), ("CN", "WWW.example.org")),
        subject_alt_names=("www.example.org", "*.example.org", "Example.org"), cafile="",
        hash="sha384", key_usage=("digitalSignature", "keyEncipherment"),
        tlsfeature=("status_request",), chown="root:ssl-cert", chmod=0o640,
        notify="systemctl reload nginx")
    assert www.names == ("www.example.org", "*.example.org", "example.org")


def test_cert_section_not_expanded_and_defaults(tmp_path: Path) -> None:
    path = write(tmp_path / "certs.conf", "[a]\ncertificate-chain = /x/%u.pem\n"
                 "certificate-key = /k\nsubject = /O=Example\nsubjectAltName = DNS:a.example\n")
    a = load_cert_sections([path])["a"]
    assert a.certificate_chain == "/x/%u.pem" and a.certificate is None
    assert a.cafile is None and a.min_days is None and a.chmod is None
    assert a.names == ("a.example",)


@pytest.mark.parametrize("text,prefix,parts", [
    ("certificate = /c\nsubject = /CN=a.example\n", " certificate-key: ", ["required"]),
    ("certificate-key = /k\nsubject = /CN=a.example\n", ": ", ["certificate-chain required"]),
    ("certificate-key = /k\ncertificate = /c\n", " subject: ", ["required"]),
    ("certificate-key = /k\ncertificate = /c\nsubject = CN=a.example\n", " subject: ", ["/type"]),
    ("certificate-key = /k\ncertificate = /c\nsubject = /XX=a\n", " subject: ", ['"XX"']),
    ("certificate-key = /k\ncertificate = /c\nsubject = /CN=a.example/C=FRA\n", " subject: ",
     ["two-letter"]),
    ("certificate-key = /k\ncertificate = /c\nsubject = /CN=\n", " subject: ", ["type=value"]),
    ("certificate-key = /k\ncertificate = /c\nsubject = /CN=Some Person\n", " subject: ",
     ["no domain name"]),
    (MINIMAL + "subjectAltName = IP:1.2.3.400\n", " subjectAltName: ", ["1.2.3.400"]),
    (MINIMAL + "subjectAltName = email:a@b.example\n", " subjectAltName: ", ["email:a@b.example"]),
    (MINIMAL + "profile = short lived\n", " profile: ", ["short lived"]),
    (MINIMAL + "subjectAltName = DNS:bad_name.example\n", " subjectAltName: ", ["bad_name"]),
    (MINIMAL + "subjectAltName = DNS:localhost\n", " subjectAltName: ", ["localhost"]),
    (MINIMAL + "subjectAltName = DNS:" + "a" * 64 + ".example\n", " subjectAltName: ", ["aaa"]),
    (MINIMAL + "subjectAltName = DNS:-a.example\n", " subjectAltName: ", ["-a.example"]),
    (MINIMAL + "min-days = 1.5\n", " min-days: ", ["1.5"]),
    (MINIMAL + "keyUsage = digitalSignature, critical\n", " keyUsage: ", ['"critical"']),
    (MINIMAL + "tlsfeature = must_staple\n", " tlsfeature: ", ["must_staple"]),
    (MINIMAL + "hash = md5\n", " hash: ", ["md5"]),
    (MINIMAL + "chmod = 0688\n", " chmod: ", ["0688"]),
    (MINIMAL + "chmod = 17777\n", " chmod: ", ["17777"]),
    (MINIMAL + "mode = 8\n", " mode: ", ['"8"']),
    (MINIMAL + "chown = root:ssl:x\n", " chown: ", ["user[:group]"]),
    (MINIMAL + "owner = a b\n", " owner: ", ["user[:group]"]),
    (MINIMAL + "owner = a\nchown = b\n", " chown: ", ["both owner and chown"]),
    (MINIMAL + "certificate_key = /k\n", ": ", ['unknown setting "certificate_key"']),
    (MINIMAL + "cafile = /ca\n", ": ", ['unknown setting "cafile"']),
])
def test_cert_errors_name_file_section_setting(tmp_path: Path, text: str, prefix: str,
                                               parts: list[str]) -> None:
    path = write(tmp_path / "certs.conf", "[www]\n" + text)
    with raises_at(f"{path} [www]" + prefix, *parts):
        load_cert_sections([path])


def test_cert_unknown_default_setting_names_file(tmp_path: Path) -> None:
    path = write(tmp_path / "certs.conf", "bogus = 1\n[www]\n" + MINIMAL)
    with raises_at(path + ": ", 'unknown setting "bogus"'):
        load_cert_sections([path])


def test_cert_error_names_file_that_set_the_value(tmp_path: Path) -> None:
    first = write(tmp_path / "1.conf", "hash = whirlpool\n")
    second = write(tmp_path / "2.conf", "[www]\n" + MINIMAL)
    with raises_at(f"{first} [www] hash: ", "whirlpool"):
        load_cert_sections([first, second])


def test_cert_names_last_cn_only(tmp_path: Path) -> None:
    path = write(tmp_path / "c.conf", "[s]\ncertificate-key=/k\ncertificate=/c\n"
                 "subject=/CN=a.example/CN=b.example\nsubjectAltName=DNS:c.example\n")
    assert load_cert_sections([path])["s"].names == ("b.example", "c.example")


def test_cert_names_dedup_and_cn_first(tmp_path: Path) -> None:
    path = write(tmp_path / "c.conf", "[s]\ncertificate-key=/k\ncertificate=/c\n"
                 "subject=/O=x/CN=B.example\nsubjectAltName=DNS:a.example,DNS:b.EXAMPLE,DNS:a.example\n")
    assert load_cert_sections([path])["s"].names == ("b.example", "a.example")


def test_cert_directory_order_and_precedence(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    main = write(tmp_path / "lacme-certs.conf",
                 "min-days = 10\nhash = sha256\n[www]\n" + MINIMAL + "notify = first\n")
    d = tmp_path / "lacme-certs.conf.d"
    write(d / "20-b.conf", "[www]\nnotify = from-20\n[mail]\n" + MINIMAL)
    write(d / "10-a.conf", "min-days = 5\n[www]\nnotify = from-10\ncertificate = /c10\n")
    write(d / "README", "not read\n")
    write(d / "30-c.conf.dpkg-old", "this is not INI\n")
    with caplog.at_level(logging.DEBUG, logger="lacme.config.certs"):
        sections = load_cert_sections([main, str(d) + "/", str(tmp_path / "missing.conf")])
    www, mail = sections["www"], sections["mail"]
    assert www.notify == "from-20" and www.certificate == "/c10"
    assert www.source == str(d / "20-b.conf")
    assert www.min_days == 5 and mail.min_days == 5 and mail.hash == "sha256"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [f"{d}/30-c.conf.dpkg-old: not *.conf, ignored"]


def test_cert_directory_without_trailing_slash(tmp_path: Path) -> None:
    write(tmp_path / "d" / "x.conf", "[x]\n" + MINIMAL)
    assert list(load_cert_sections([str(tmp_path / "d")])) == ["x"]


def test_cert_section_setting_beats_later_default(tmp_path: Path) -> None:
    first = write(tmp_path / "1.conf", "[www]\n" + MINIMAL + "hash = sha512\n")
    second = write(tmp_path / "2.conf", "hash = sha256\n")
    assert load_cert_sections([first, second])["www"].hash == "sha512"


def test_cert_alias_in_later_file_overrides(tmp_path: Path) -> None:
    first = write(tmp_path / "1.conf", "[www]\n" + MINIMAL + "chmod = 600\nchown = a\n")
    second = write(tmp_path / "2.conf", "[www]\nmode = 0644\nowner = b:c\n")
    www = load_cert_sections([first, second])["www"]
    assert www.chmod == 0o644 and www.chown == "b:c"


def test_cert_unreadable_file_fails(tmp_path: Path) -> None:
    path = write(tmp_path / "c.conf", "[www]\n" + MINIMAL)
    os.chmod(path, 0)
    if os.access(path, os.R_OK):  # root reads anything: use a non-UTF-8 file instead
        Path(path).write_bytes(b"[www]\n\xff\n")
    with raises_at(path + ": "):
        load_cert_sections([path])


def test_cert_malformed_file_fails(tmp_path: Path) -> None:
    path = write(tmp_path / "c.conf", "[www]\n" + MINIMAL + "garbage line\n")
    with raises_at(path + ":5: syntax error"):
        load_cert_sections([path])


# ---------------------------------------------------------------------------
# The shipped files

def test_shipped_files_load_cleanly(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG):
        conf = load_master_config(str(ETC / "lacme.conf"), ROOT)
        assert conf.config_certs == (str(ETC / "lacme-certs.conf"), str(ETC / "lacme-certs.conf.d") + "/")
        assert conf.accountd is not None and conf.accountd.command == ("lacme-accountd",)
        assert load_cert_sections(conf.config_certs) == {}
        assert load_accountd_config(str(ETC / "lacme-accountd.conf"), ROOT) == AccountdConfig()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_shipped_files_examples_valid_when_uncommented(tmp_path: Path) -> None:
    def uncomment(name: str) -> str:
        lines = (ETC / name).read_text().splitlines()
        # keep the first of repeated settings' alternatives: later ones would win
        out, seen = [], set()
        for line in lines:
            m = re.fullmatch(r"#?(\[\w+\]|[A-Za-z_-]+ = .*|[A-Za-z_-]+ =)", line)
            if m and m.group(1).split("=")[0] not in seen:
                seen.add(m.group(1).split("=")[0])
                out.append(m.group(1))
        return "\n".join(out) + "\n"

    master = write(tmp_path / "lacme.conf", uncomment("lacme.conf"))
    conf = load_master_config(master, ROOT)
    assert conf.accountd is not None and conf.client.command == ("lacme-client",)
    certs = write(tmp_path / "lacme-certs.conf", uncomment("lacme-certs.conf"))
    www = load_cert_sections([certs])["www"]
    assert www.names == ("www.example.org", "example.org") and www.chmod == 0o644
    accountd = write(tmp_path / "a.conf", uncomment("lacme-accountd.conf"))
    assert load_accountd_config(accountd, ROOT).privkey == "file:/path/to/account.key"


# -- the import-free fast paths agree with the modules they avoid -------------------

import ipaddress  # noqa: E402
from urllib.parse import urlsplit  # noqa: E402

from lacme.config import certs, ini, master  # noqa: E402 - these tests sit with the fast paths

OCTETS = st.one_of(st.integers(0, 300).map(str), st.sampled_from(["00", "01", "007", "", "a", "٣", " 1"]))


@given(st.lists(OCTETS, min_size=3, max_size=5).map(".".join))
def test_quick_ipv4_check_agrees_with_ipaddress(text):
    try:
        canonical = str(ipaddress.IPv4Address(text)) == text
    except ValueError:
        canonical = False
    assert master.is_canonical_ipv4(text) == canonical


@given(st.lists(OCTETS, min_size=3, max_size=5).map(".".join),
       st.one_of(st.none(), st.sampled_from(["80", "0", "65535", "65536", "08", "x", ""])))
def test_listen_address_quick_path_agrees_with_the_full_parse(host, port):
    item = host if port is None else f"{host}:{port}"

    def full(item: str) -> object:
        m = re.fullmatch(master._INET, item)
        try:
            if m is None:
                raise ValueError
            return ListenAddress("inet", host=str(ipaddress.IPv4Address(m.group("host"))),
                                 port=master.parse_port(m.group("port"), "l"))
        except (ValueError, ConfigError):
            return None

    try:
        quick: object = master.parse_listen_address(item, "l")
    except ConfigError:
        quick = None
    assert quick == full(item)


URL_PARTS = st.sampled_from(["https://", "http://", "HTTPS://", "ftp://", "https:", "", "https:///"])
URL_TAILS = st.text(alphabet="ab.:/?#[]@ \t%é-0", max_size=12)


@given(URL_PARTS, URL_TAILS)
def test_quick_url_check_accepts_only_what_urlsplit_accepts(head, tail):
    value = head + tail
    if master._plain_http_url(value):
        url = urlsplit(value)
        assert url.scheme in ("https", "http") and url.netloc


@given(st.text(alphabet="aZ09-_.é*", max_size=70))
def test_label_check_is_the_ldh_pattern(label):
    pattern = r"[0-9A-Za-z](?:[0-9A-Za-z-]{0,61}[0-9A-Za-z])?"
    assert certs.is_label(label) == bool(re.fullmatch(pattern, label))


@given(st.text(alphabet="ab\r\n\x0b\x0c\x1c\u2028 =[]", max_size=30))
def test_line_split_is_crlf_cr_lf_only(text):
    assert ini.split_lines(text) == re.split(r"\r\n|\r|\n", text)


@given(st.text(alphabet="a1, \t\n\u00a0\u3000,", max_size=20))
def test_listen_items_split_like_the_pattern(value):
    expected = [i for i in re.split(r"[\s,]+", value) if i]
    assert value.replace(",", " ").split() == expected
