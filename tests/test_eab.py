"""External Account Binding (RFC 8555 7.3.4) against a real Pebble that
requires it (``externalAccountBindingRequired``, ``externalAccountMACKeys``),
through the real master, client and accountd (fork mode).

The MAC key is in accountd's configuration only: the binding is one more
signing input on the accountd wire, and accountd MACs it.  A wrong MAC key,
an unknown kid and a missing binding each give one error line; the missing
binding is caught before anything is signed.  Debian's Perl lacme-accountd
cannot bind: asking it to is one line naming that.
"""

from __future__ import annotations

import base64
import json
import secrets
from pathlib import Path

import pytest

from lacme.protocol import eab, jws, wire
from tests.lacmeenv import LacmeSetup, write_key
from tests.pebble import start_pebble

pytestmark = pytest.mark.pebble

KEYS = {f"kid-{n}": base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
        for n in range(4)}
PERL_ACCOUNTD = "/usr/bin/lacme-accountd"


@pytest.fixture(scope="module")
def eab_pebble(tmp_path_factory):
    instance = start_pebble(tmp_path_factory.mktemp("pebble-eab"), config={
        "externalAccountBindingRequired": True, "externalAccountMACKeys": KEYS})
    yield instance
    instance.stop()


def make_setup(tmp_path: Path, pebble, accountd_conf: str = "", key_kind: str = "p256",
               **kw) -> LacmeSetup:
    key = write_key(tmp_path / "account.key", key_kind)
    s = LacmeSetup(root=tmp_path / "etc", pebble=pebble, account_key=key, **kw)
    s.write()
    conf = s.root / "lacme-accountd.conf"
    conf.write_text(conf.read_text() + accountd_conf)
    return s


def mac_file(tmp_path: Path, kid: str, text: str | None = None) -> Path:
    path = tmp_path / f"{kid}.mac"
    path.write_text((KEYS[kid] if text is None else text) + "\n")
    path.chmod(0o600)
    return path


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512"])
def test_binding_registers_a_valid_account(tmp_path, eab_pebble, alg):
    kid = "kid-1"
    s = make_setup(tmp_path, eab_pebble, f"eab-kid = {kid}\neab-hmac-key = {mac_file(tmp_path, kid)}\n"
                   f"eab-alg = {alg}\n")
    done = s.run("account", "--register", "--tos-agreed", "mailto:eab@example.com")
    assert done.returncode == 0, done.stderr
    account = json.loads(done.stdout)
    assert account["status"] == "valid" and account["contact"] == ["mailto:eab@example.com"]
    # the key is then an account of that CA: lookup without --register works
    again = s.run("account")
    assert again.returncode == 0, again.stderr
    # and a certificate can be had with it
    s.add_section("www", ["eab.example.com"])
    s.write_certs()
    order = s.run("newOrder")
    assert order.returncode == 0, order.stderr


def test_eab_kid_on_the_command_line_must_be_accountds(tmp_path, eab_pebble):
    kid = "kid-2"
    s = make_setup(tmp_path, eab_pebble, f"eab-kid = {kid}\neab-hmac-key = {mac_file(tmp_path, kid)}\n")
    offset = eab_pebble.log_offset()
    done = s.run("account", "--register", "--tos-agreed", "--eab-kid=kid-3")
    assert done.returncode == 1
    assert error_lines(done.stderr) == [
        "error: --eab-kid kid-3: lacme-accountd's MAC key is for eab-kid kid-2"], done.stderr
    assert eab_pebble.requests_since(offset)["POST /sign-me-up"] == 0
    done = s.run("account", "--register", "--tos-agreed", "--eab-kid=kid-2")
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("case", ["wrong MAC key", "unknown kid"])
def test_refused_binding_is_one_line(tmp_path, eab_pebble, case):
    if case == "wrong MAC key":
        wrong = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
        settings = f"eab-kid = kid-0\neab-hmac-key = {mac_file(tmp_path, 'kid-0', wrong)}\n"
    else:
        settings = f"eab-kid = nobody\neab-hmac-key = {mac_file(tmp_path, 'kid-0')}\n"
    s = make_setup(tmp_path, eab_pebble, settings)
    done = s.run("account", "--register", "--tos-agreed")
    assert done.returncode == 1
    lines = error_lines(done.stderr)
    assert len(lines) == 1, done.stderr
    assert "sign-me-up" in lines[0] and "Traceback" not in done.stderr


def test_missing_binding_is_one_line_before_anything_is_signed(tmp_path, eab_pebble):
    s = make_setup(tmp_path, eab_pebble)
    offset = eab_pebble.log_offset()
    done = s.run("account", "--register", "--tos-agreed")
    assert done.returncode == 1
    assert error_lines(done.stderr) == [
        f"error: {eab_pebble.directory_url}: the CA requires External Account Binding "
        "(meta.externalAccountRequired): set eab-kid and eab-hmac-key in lacme-accountd.conf"
    ], done.stderr
    assert eab_pebble.requests_since(offset)["POST /sign-me-up"] == 0


def test_perl_accountd_cannot_bind_and_says_so(tmp_path, eab_pebble):
    # RSA: the Perl accountd 0.8.2 has no ECDSA
    s = make_setup(tmp_path, eab_pebble, accountd_command=PERL_ACCOUNTD, key_kind="rsa")
    offset = eab_pebble.log_offset()
    done = s.run("account", "--register", "--tos-agreed", "--eab-kid=kid-1")
    assert done.returncode == 1, done.stderr
    (line,) = error_lines(done.stderr) or [done.stderr]
    assert "this lacme-accountd holds no External Account Binding MAC key" in line
    assert "Debian's lacme-accountd 0.8.2 cannot bind" in line
    assert eab_pebble.requests_since(offset)["POST /sign-me-up"] == 0


def test_unusable_mac_key_file_is_a_configuration_error(tmp_path, eab_pebble):
    s = make_setup(tmp_path, eab_pebble,
                   f"eab-kid = kid-0\neab-hmac-key = {mac_file(tmp_path, 'kid-0', 'c2hvcnQ')}\n")
    done = s.run("account", "--register", "--tos-agreed")
    assert done.returncode == 1
    (line,) = error_lines(done.stderr)
    assert "eab-hmac-key" in line and "too short" in line


def test_mac_key_without_kid_is_refused_at_load(tmp_path, eab_pebble):
    s = make_setup(tmp_path, eab_pebble, f"eab-hmac-key = {mac_file(tmp_path, 'kid-0')}\n")
    done = s.run("account", "--register", "--tos-agreed")
    assert done.returncode == 1
    (line,) = error_lines(done.stderr)
    assert "eab-hmac-key: needs eab-kid" in line


# -- the wire rule, without a CA ------------------------------------------------

JWK = {"kty": "EC", "crv": "P-256", "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
       "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}


def binding_line(**header) -> bytes:
    protected = {"alg": "HS256", "kid": "kid-1", "url": "https://ca.test/new-acct", **header}
    return wire.encode_sign_request(jws.signing_input(protected, JWK))


@pytest.mark.parametrize(("line", "binding", "reason"), [
    (binding_line(), None, "no MAC key is configured"),
    (binding_line(kid="other"), ("HS256", "kid-1"), "kid is not the configured"),
    (binding_line(alg="HS512"), ("HS256", "kid-1"), "alg 'HS512' is not HS256"),
    (binding_line(nonce="n"), ("HS256", "kid-1"), "unexpected member 'nonce'"),
    (binding_line(url="https://elsewhere.test/x"), ("HS256", "kid-1"), "is not on https://ca.test"),
    (wire.encode_sign_request(jws.signing_input(
        {"alg": "HS256", "kid": "kid-1", "url": "https://ca.test/a"}, {"kty": "oct"})),
     ("HS256", "kid-1"), "not this account's public JWK"),
])
def test_binding_requests_accountd_refuses(line, binding, reason):
    with pytest.raises(wire.Refused, match=reason):
        wire.parse_sign_request(line, alg="ES256", jwk=JWK, kid=None, origin="https://ca.test",
                                binding=binding)


def test_binding_request_accepted_and_maced():
    req = wire.parse_sign_request(binding_line(), alg="ES256", jwk=JWK, kid=None,
                                  origin="https://ca.test", binding=("HS256", "kid-1"))
    key = secrets.token_bytes(32)
    import hashlib
    import hmac

    assert eab.mac("HS256", key, req.signing_input) == hmac.new(
        key, req.signing_input, hashlib.sha256).digest()


def test_greeting_carries_the_eab_kid_and_old_greetings_parse():
    g = wire.Greeting("ES256", jws.jwk_thumbprint(JWK), None, JWK, eab_kid="kid-1", eab_alg="HS384")
    first, second = wire.encode_greeting(g).split(b"\r\n")[:2]
    parsed = wire.parse_greeting(first + b"\r\n", second + b"\r\n")
    assert (parsed.eab_kid, parsed.eab_alg) == ("kid-1", "HS384")
    plain = wire.encode_greeting(wire.Greeting("ES256", jws.jwk_thumbprint(JWK), None, JWK))
    assert b"eab" not in plain
    first, second = plain.split(b"\r\n")[:2]
    assert wire.parse_greeting(first + b"\r\n", second + b"\r\n").eab_kid is None
