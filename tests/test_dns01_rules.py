"""The dns-01 / dns-persist-01 record rule (lacme.protocol.dns01) and the DNS
settings (lacme.config.dns, the challenge setting of lacme-certs.conf).

Pure functions: the master and lacme-dns both decide with ``check_record``,
so what it refuses here is what a compromised client cannot get written.
"""

from __future__ import annotations

import hashlib
import string
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lacme.config.certs import CertSection, load_cert_sections
from lacme.config.dns import DnsConfig, validate_dns_config
from lacme.config.ini import parse_ini
from lacme.core.errors import ConfigError
from lacme.protocol import dns01

ALLOWED = frozenset({"example.org", "www.example.org"})


def test_txt_value_is_the_rfc8555_digest() -> None:
    # SHA-256("abc") (FIPS 180-2 appendix B.1), base64url without padding (RFC 4648 5)
    assert hashlib.sha256(b"abc").hexdigest().startswith("ba7816bf")
    assert dns01.txt_value("abc") == "ungWv48Bz-pBQUDeXa4iI7ADYaOWF3qctBD_YfIAFa0"


@given(st.text(alphabet=string.ascii_letters + string.digits + "-_.", min_size=1, max_size=200))
def test_every_digest_has_the_digest_shape(key_authorization: str) -> None:
    value = dns01.txt_value(key_authorization)
    assert dns01.is_digest_value(value)
    assert dns01.check_record("_acme-challenge.www.example.org", value, ALLOWED) is None


@pytest.mark.parametrize("value", ["", "A" * 42, "A" * 44, "A" * 42 + "B", "A" * 42 + "=",
                                   "A" * 41 + "+E", "A" * 41 + " E", "not a digest"])
def test_values_of_another_shape_are_refused(value: str) -> None:
    assert not dns01.is_digest_value(value)
    why = dns01.check_record("_acme-challenge.www.example.org", value, ALLOWED)
    assert why is not None and "digest" in why


@pytest.mark.parametrize("name", [
    "www.example.org",                        # not a challenge owner
    "_acme-challenge.evil.example.org",       # a name of no section
    "_acme-challenge.example.org.evil.test",  # a suffix trick
    "_acme-challenge.WWW.example.org",        # the master writes lower case only
    "_acme-challenge.www.example.org.",       # no trailing dot on the wire
    "_acme-challenge._acme-challenge.www.example.org",
    "_acme-challenge.*.example.org",
    "x._acme-challenge.www.example.org",
    "_acme-challenge.www.example.org\n.evil",
])
def test_names_outside_the_rule_are_refused(name: str) -> None:
    assert dns01.check_record(name, "A" * 42 + "E", ALLOWED) is not None


def test_a_wildcard_is_proven_at_its_base_name() -> None:
    assert dns01.challenge_name("*.Example.ORG.") == "_acme-challenge.example.org"
    assert dns01.persist_name("*.example.org") == "_validation-persist.example.org"


def test_persist_record_in_pebbles_format() -> None:
    value = dns01.persist_value("Pebble.LocalHost.", "https://ca.test/acct/1", wildcard=True)
    assert value == "pebble.localhost; accounturi=https://ca.test/acct/1; policy=wildcard"
    assert dns01.parse_persist_value(value) == ("pebble.localhost", "https://ca.test/acct/1", True)
    assert dns01.check_record("_validation-persist.example.org", value, ALLOWED,
                              persistent=True) is None
    plain = dns01.persist_value("ca.test", "https://ca.test/acct/1")
    assert plain == "ca.test; accounturi=https://ca.test/acct/1"


@pytest.mark.parametrize("value", [
    "ca.test", "ca.test; accounturi=http://ca.test/acct/1", "ca.test; accounturi=",
    "ca.test; accounturi=https://ca.test/1; policy=other", "; accounturi=https://ca.test/1",
    "A" * 42 + "E", "ca.test; accounturi=https://ca.test/1; policy=wildcard; x=y"])
def test_persist_values_of_another_shape_are_refused(value: str) -> None:
    assert dns01.check_record("_validation-persist.example.org", value, ALLOWED,
                              persistent=True) is not None


def test_a_record_kept_is_never_a_challenge_and_a_challenge_never_kept() -> None:
    persist = dns01.persist_value("ca.test", "https://ca.test/acct/1")
    assert dns01.check_record("_validation-persist.example.org", persist, ALLOWED) is not None
    assert dns01.check_record("_acme-challenge.example.org", "A" * 42 + "E", ALLOWED,
                              persistent=True) is not None


# -- lacme-dns.conf -----------------------------------------------------------

SECRET = "ZjTlr50bq8DFuII3nLwvMmCqwMINjSxGIGAMtbBZO74="


def dns_config(text: str) -> DnsConfig:
    return validate_dns_config(parse_ini(text, "lacme-dns.conf"))


def test_zone_for_takes_the_longest_suffix() -> None:
    cfg = dns_config(f"[example.org]\nserver = 192.0.2.1\nkey-name = k\nkey-secret = {SECRET}\n"
                     f"[sub.example.org]\nserver = [2001:db8::1]:5353\nkey-name = k\n"
                     f"key-secret = {SECRET}\nkey-algorithm = HMAC-SHA512\n")
    zone = cfg.zone_for("_acme-challenge.www.sub.example.org")
    assert zone is not None and zone.name == "sub.example.org"
    assert str(zone.server) == "[2001:db8::1]:5353" and zone.key_algorithm == "hmac-sha512"
    assert cfg.zone_for("_acme-challenge.example.org").name == "example.org"
    assert cfg.zone_for("example.net") is None


@pytest.mark.parametrize("text, where", [
    ("[example.org]\nserver = 192.0.2.1\nkey-name = k\nkey-secret = c2hvcnQ=\n",
     "lacme-dns.conf [example.org] key-secret:"),
    ("[example.org]\nserver = 192.0.2.1\nkey-name = k\nkey-secret = not base64!\n",
     "lacme-dns.conf [example.org] key-secret: not base64"),
    (f"[example.org]\nserver = ns.example.org\nkey-name = k\nkey-secret = {SECRET}\n",
     "lacme-dns.conf [example.org] server: not an IP address"),
    (f"[example.org]\nserver = 192.0.2.1:0\nkey-name = k\nkey-secret = {SECRET}\n",
     "lacme-dns.conf [example.org] server: port out of range"),
    (f"[example.org]\nserver = 192.0.2.1\nkey-name = k\nkey-secret = {SECRET}\n"
     "key-algorithm = hmac-md5\n", "lacme-dns.conf [example.org] key-algorithm:"),
    ("[example.org]\ncommand = hook.sh\n", "lacme-dns.conf [example.org] command: not an absolute"),
    ("[example.org]\ncommand = /bin/hook\nserver = 192.0.2.1\n",
     "lacme-dns.conf [example.org] server: not with command"),
    ("[example.org]\nkey-name = k\n", "lacme-dns.conf [example.org] server: required"),
    ("[example.org]\nserver = 192.0.2.1\nttl = 5\n", 'lacme-dns.conf [example.org]: unknown setting "ttl"'),
    ("timeout = -1\n[example.org]\ncommand = /bin/hook\n", "lacme-dns.conf timeout:"),
    ("", "lacme-dns.conf: no zone section"),
])
def test_bad_dns_settings_are_one_line_naming_the_setting(text: str, where: str) -> None:
    with pytest.raises(ConfigError) as info:
        dns_config(text)
    message = str(info.value)
    assert message.startswith(where) and "\n" not in message, message


# -- challenge in lacme-certs.conf ---------------------------------------------

def cert_section(tmp_path: Path, extra: str) -> CertSection:
    path = tmp_path / "certs.conf"
    path.write_text("[s]\ncertificate-key = /k\ncertificate = /c\nsubject = /CN=example.org\n"
                    + extra)
    return load_cert_sections([str(path)])["s"]


def test_wildcards_default_to_dns01(tmp_path: Path) -> None:
    section = cert_section(tmp_path, "subjectAltName = DNS:*.example.org,DNS:example.org\n")
    assert section.challenge is None and section.dns_names == ("*.example.org",)
    section = cert_section(tmp_path, "subjectAltName = DNS:www.example.org\nchallenge = dns-01\n")
    assert section.dns_names == ("example.org", "www.example.org")


@pytest.mark.parametrize("extra, message", [
    ("subjectAltName = DNS:*.example.org\nchallenge = http-01\n", "http-01 cannot prove"),
    ("challenge = tls-alpn-01\n", 'not one of http-01, dns-01, dns-persist-01: "tls-alpn-01"'),
])
def test_bad_challenge_is_one_line(tmp_path: Path, extra: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        cert_section(tmp_path, extra)
    assert f"[s] challenge: {message}" in str(info.value)


def test_records_beyond_dns_bounds_are_refused() -> None:
    base = ".".join(["a" * 60, "b" * 60, "c" * 60, "d" * 45, "example.org"])
    assert dns01.is_dns_name(base)
    why = dns01.check_record(dns01.challenge_name(base), "A" * 42 + "E", {base})
    assert why is not None and "longer than 253" in why
    value = dns01.persist_value("ca.test", "https://ca.test/acct/" + "1" * 250)
    assert dns01.parse_persist_value(value) is not None
    why = dns01.check_record("_validation-persist.example.org", value, ALLOWED, persistent=True)
    assert why is not None and "longer than 255 octets" in why
