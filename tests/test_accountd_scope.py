"""lacme-accountd enforcing scopes and its own policy, over its real --stdio.

A scope (the first line, lacme.protocol.scope) narrows what one connection
signs; the key holder's policy (options or lacme-accountd.conf) limits every
connection and a scope never widens it.  Each refusal closes the connection
and is logged; with neither, accountd signs what it always did.
"""

from __future__ import annotations

import pytest

from lacme.protocol import jws, wire
from lacme.protocol import scope as sc
from tests.test_accountd import KID, ORIGIN, Stdio, header, keydir, line_for, ours, write_config  # noqa: F401 - keydir is a fixture

ACCOUNTD = ours.__globals__["ACCOUNTD"]
CSR = b"0\x82 the master's CSR"
GET = line_for(header(kid=KID), None)
KEY_CHANGE = line_for(header(kid=KID, url=ORIGIN + "/acme/key-change"),
                      {"protected": "e30", "payload": "e30", "signature": "AAAA"})
DEACTIVATE = line_for(header(kid=KID, url=KID), {"status": "deactivated"})


def order_line(*names: str) -> bytes:
    return line_for(header(kid=KID), {"identifiers": [{"type": "dns", "value": n} for n in names]})


def order_scope(*names: str, origin: str | None = ORIGIN) -> bytes:
    return sc.encode_scope(sc.Scope(origin=origin, operations=frozenset({sc.NEW_ORDER}),
                                    identifiers=frozenset(("dns", n) for n in names),
                                    csr_digests=frozenset({sc.digest(CSR)})))


def send(d: Stdio, line: bytes) -> None:
    d.proc.stdin.write(line)
    d.proc.stdin.flush()


@pytest.fixture
def conf(keydir, tmp_path):
    return write_config(tmp_path / "a.conf", privkey=f"file:{keydir / 'RS256.pem'}",
                        logfile=str(tmp_path / "accountd.log"))


def refused(d: Stdio, line: bytes, reason: str) -> None:
    assert d.request(line) == b""  # closed, nothing signed
    rc, err = d.finish()
    assert rc == 1 and err.count("NOSIGN") == 1 and reason in err, err


def test_greeting_announces_scopes(conf):
    d = ours(f"--config={conf}")
    assert d.greeting().scope == sc.SCOPE_VERSION
    d.finish()


def test_scope_allows_its_order_and_finalize(conf, tmp_path):
    d = ours(f"--config={conf}")
    send(d, order_scope("a.example", "b.example"))
    for line in (GET, order_line("b.example"), line_for(header(kid=KID), {}),
                 line_for(header(kid=KID), {"csr": jws.b64u_encode(CSR)}), order_line("a.example", "B.example")):
        assert wire.parse_signature(d.request(line))
    rc, err = d.finish()
    assert rc == 0 and err.count("SIGNED") == 5 and "SCOPE newOrder" in err
    assert "SCOPE newOrder; origin https://ca.example:14000; names a.example,b.example" in \
        (tmp_path / "accountd.log").read_text()


@pytest.mark.parametrize("line,reason", [
    (KEY_CHANGE, "keyChange is outside the scope"),
    (DEACTIVATE, "deactivateAccount is outside the scope"),
    (line_for(header(kid=KID, url=KID), {"contact": ["mailto:evil@example.org"]}), "updateAccount"),
    (order_line("a.example", "evil.example"), "newOrder for evil.example, not in the scope"),
    (line_for(header(kid=KID), {"csr": jws.b64u_encode(b"the attacker's CSR")}), "CSR that is not"),
    (line_for(header(kid=KID), {"certificate": jws.b64u_encode(b"cert")}), "revokeCert"),
    (order_scope("evil.example"), "a scope that is not the first line"),
    (line_for(header(kid=KID, url="https://evil.example/acme/new-order"), {}), "not on https://ca.example:14000"),
])
def test_scope_refuses_everything_else(conf, line, reason):
    d = ours(f"--config={conf}")
    send(d, order_scope("a.example"))
    assert wire.parse_signature(d.request(GET))
    refused(d, line, reason)


def test_new_account_refused_unless_registering(conf):
    d = ours(f"--config={conf}")
    jwk = d.greeting().jwk
    send(d, order_scope("a.example"))
    assert d.request(line_for(header(jwk=jwk), {"onlyReturnExisting": True}))  # the lookup
    refused(d, line_for(header(jwk=jwk), {"termsOfServiceAgreed": True}), "newAccount is outside")


def test_scope_from_the_client_after_a_request_is_refused(conf):
    # Without a master's scope (Debian's master), a client cannot set one later.
    d = ours(f"--config={conf}")
    assert d.request(KEY_CHANGE)  # as Debian's 0.8.2: no scope, no policy
    refused(d, order_scope("a.example"), "a scope that is not the first line")


def test_signature_budget(conf):
    d = ours(f"--config={conf}")
    send(d, sc.encode_scope(sc.Scope(origin=ORIGIN)))
    budget = sc.Scope().signature_budget()
    for _ in range(budget):
        assert d.request(GET)
    refused(d, GET, f"more signatures than the scope allows ({budget})")


@pytest.mark.parametrize("how", ["option", "setting"])
def test_require_scope(conf, how):
    if how == "setting":
        conf.write_text(conf.read_text() + "require-scope = yes\n")
    d = ours(f"--config={conf}", *(["--require-scope"] if how == "option" else []))
    refused(d, GET, "require-scope")
    d = ours(f"--config={conf}", *(["--require-scope"] if how == "option" else []))
    send(d, order_scope("a.example"))
    assert d.request(GET)
    d.finish()


def test_scope_origin_pins_and_configured_origin_wins(conf):
    d = ours(f"--config={conf}")
    send(d, order_scope("a.example", origin="https://other.example"))
    refused(d, GET, "not on https://other.example")  # GET is for ca.example
    d = ours(f"--config={conf}", "--origin=https://other.example")
    send(d, order_scope("a.example"))
    refused(d, GET, "is not on https://other.example, the configured origin")
    # The environment of a spawning master is replaced by the scope's.
    d = Stdio([*ACCOUNTD, "--stdio", f"--config={conf}"], {wire.ORIGIN_VARIABLE: "https://other.example"})
    send(d, order_scope("a.example"))
    assert d.request(GET)
    d.finish()


@pytest.mark.parametrize("how", ["option", "setting"])
def test_policy_operations_limit_every_connection(conf, how):
    args = ["--operations=newOrder"] if how == "option" else []
    if how == "setting":
        conf.write_text(conf.read_text() + "operations = newOrder\n")
    d = ours(f"--config={conf}", *args)
    assert d.request(order_line("x.example"))
    refused(d, DEACTIVATE, "not allowed by this accountd's operations")
    # A master's scope cannot widen the policy.
    d = ours(f"--config={conf}", *args)
    send(d, sc.encode_scope(sc.Scope(origin=ORIGIN, operations=frozenset(
        {sc.DEACTIVATE_ACCOUNT, sc.NEW_ORDER}))))
    refused(d, DEACTIVATE, "not allowed by this accountd's operations")
    d = ours(f"--config={conf}", *args)
    refused(d, KEY_CHANGE, "keyChange is not allowed")  # not listed


def test_policy_names_exact_and_suffix(conf):
    d = ours(f"--config={conf}", "--names=www.example.net,.example.org")
    assert d.request(order_line("a.example.org", "b.c.example.org", "www.example.net"))
    refused(d, order_line("a.example.org", "example.org"), "newOrder for example.org is not allowed")
    d = ours(f"--config={conf}", "--names=.example.org")
    send(d, order_scope("evil.example", "a.example.org"))  # the scope cannot widen it either
    assert d.request(order_line("a.example.org"))
    refused(d, order_line("evil.example"), "not allowed by this accountd's names")


@pytest.mark.parametrize("setting,value,message", [
    ("operations", "rollover", 'unknown operation "rollover"'),
    ("names", "*.example.org", 'not a name or a ".suffix"'),
    ("require-scope", "maybe", "require-scope"),
])
def test_bad_policy_settings_are_one_line_errors(conf, setting, value, message):
    from tests.test_accountd import run_ours

    conf.write_text(conf.read_text() + f"{setting} = {value}\n")
    done = run_ours("--stdio", f"--config={conf}")
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_a_scope_for_many_orders_is_longer_than_a_request(conf):
    names = [f"www-{i:04d}.example.org" for i in range(3000)]
    line = order_scope(*names)
    assert len(line) > wire.MAX_LINE
    d = ours(f"--config={conf}")
    send(d, line)
    assert d.request(order_line(names[-1]))
    rc, err = d.finish()
    assert rc == 0 and "NOSIGN" not in err


def test_with_a_mac_key_only_its_own_binding_even_without_a_scope(conf, tmp_path):
    """An accountd holding an EAB MAC key signs no newAccount bound to another
    external account, scope or not (the binding says whose account it is)."""
    mac = tmp_path / "eab.mac"
    mac.write_text(jws.b64u_encode(b"k" * 32) + "\n")
    mac.chmod(0o600)
    conf.write_text(conf.read_text() + f"eab-kid = kid-1\neab-hmac-key = {mac}\n")

    def register(kid: str, jwk: dict) -> bytes:
        binding = jws.signing_input({"alg": "HS256", "kid": kid, "url": ORIGIN + "/acme/new-acct"}, jwk)
        protected, payload = binding.split(".")
        return line_for(header(jwk=jwk, url=ORIGIN + "/acme/new-acct"),
                        {"termsOfServiceAgreed": True, "externalAccountBinding":
                         {"protected": protected, "payload": payload, "signature": "AAAA"}})

    d = ours(f"--config={conf}")
    jwk = d.greeting().jwk
    assert d.request(register("kid-1", jwk))
    refused(d, register("kid-2", jwk), "not this accountd's (eab-kid kid-1)")
    d = ours(f"--config={conf}")
    assert d.request(KEY_CHANGE)  # no scope, no policy, no new key: as Debian's 0.8.2
    d.finish()


def test_one_order_finalized_per_csr(conf):
    """A finalize is a certificate: the same CSR on a second order is refused
    (duplicate certificates spend the CA's limits), its retries are signed."""
    finalize = {"csr": jws.b64u_encode(CSR)}
    first = header(kid=KID, url=ORIGIN + "/finalize/1")
    d = ours(f"--config={conf}")
    send(d, order_scope("a.example"))
    assert d.request(line_for(first, finalize))
    assert d.request(line_for({**first, "nonce": "bm9uY2UtMg"}, finalize))  # a badNonce retry
    refused(d, line_for(header(kid=KID, url=ORIGIN + "/finalize/2"), finalize),
            "finalize of a second order with the same CSR")


def test_a_refused_name_cannot_forge_a_line_of_the_log(conf, tmp_path):
    """The names in a refusal are the client's: escaped, one line in accountd's
    log and one error line, with no line that looks like a signature."""
    d = ours(f"--config={conf}")
    send(d, order_scope("a.example"))
    forged = "evil.example\n[1] SIGNED header={} payload={}\x1b[2K"
    refused(d, order_line(forged), "newOrder for evil.example\\x0a[1] signed header={} payload={}\\x1b[2k,")
    log = (tmp_path / "accountd.log").read_text()
    assert "NOSIGN" in log and not any(line.lower().startswith("[1] signed") for line in log.splitlines())
    assert "\x1b" not in log
