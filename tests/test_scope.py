"""lacme.protocol.scope: the scope message and the classifier of signing inputs.

Pure functions, so hypothesis drives them with arbitrary input: a scope
survives its encoding, no input makes the parser or the classifier raise
anything but Refused, and a newOrder is covered exactly when its names
are a subset of the scope's.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lacme.protocol import jws, wire
from lacme.protocol import scope as sc

JWK = {"kty": "EC", "crv": "P-256", "x": "eA", "y": "eQ"}
KID = {"kid": "https://ca.example/acct/1"}
CSR = b"0\x82 a CSR in DER"
CERT = b"0\x82 a certificate in DER"

names = st.from_regex(r"[a-z0-9]{1,8}(\.[a-z0-9]{1,8}){0,2}\.example", fullmatch=True)
identifiers = st.frozensets(st.tuples(st.just("dns"), names), max_size=5)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8)

scopes = st.builds(
    sc.Scope,
    origin=st.none() | st.just("https://ca.example:14000"),
    operations=st.frozensets(st.sampled_from(sc.OPERATIONS)),
    identifiers=identifiers,
    csr_digests=st.frozensets(st.binary(min_size=1, max_size=8).map(sc.digest), max_size=3),
    profiles=st.frozensets(st.text(min_size=1, max_size=12), max_size=3),
    contact=st.lists(st.from_regex(r"mailto:[a-z]{1,6}@example\.org", fullmatch=True), max_size=2).map(tuple),
    tos=st.booleans(),
    certificates=st.frozensets(st.tuples(st.binary(min_size=1, max_size=8).map(sc.digest),
                                         st.none() | st.integers(0, 10)), max_size=3),
)


@given(scopes)
def test_scope_survives_its_encoding(scope):
    line = sc.encode_scope(scope)
    assert sc.is_scope_line(line) and line.endswith(b"\r\n") and line.count(b"\n") == 1
    assert sc.parse_scope(line) == scope


@given(st.binary(max_size=200))
def test_parse_scope_refuses_or_parses_any_octets(data):
    try:
        sc.parse_scope(data)
    except wire.Refused:
        pass


@given(st.dictionaries(st.sampled_from(["lacme-scope", "operations", "identifiers", "csr-digests",
                                        "profiles", "contact", "tos", "certificates", "origin", "x"]),
                       json_values, max_size=6))
def test_parse_scope_refuses_malformed_members(obj):
    obj.setdefault("lacme-scope", 1)
    try:
        scope = sc.parse_scope(json.dumps(obj).encode() + b"\r\n")
    except wire.Refused:
        return
    assert scope.operations <= set(sc.OPERATIONS)


@given(st.dictionaries(st.text(max_size=12), json_values, max_size=4), st.booleans())
def test_classify_never_raises(body, with_jwk):
    op = sc.classify({"jwk": JWK} if with_jwk else KID, body)
    assert op.kind in {*sc.OPERATIONS, sc.POST_AS_GET, sc.CHALLENGE, sc.LOOKUP, sc.FINALIZE,
                       sc.KEY_CHANGE, sc.OTHER}


@pytest.mark.parametrize("header,body,kind", [
    (KID, None, sc.POST_AS_GET),
    (KID, {}, sc.CHALLENGE),
    ({"jwk": JWK}, {"onlyReturnExisting": True}, sc.LOOKUP),
    ({"jwk": JWK}, {"onlyReturnExisting": True, "contact": ["mailto:x@example.org"]}, sc.OTHER),
    ({"jwk": JWK}, {"termsOfServiceAgreed": True}, sc.NEW_ACCOUNT),
    ({"jwk": JWK}, {}, sc.NEW_ACCOUNT),  # newAccount without onlyReturnExisting
    ({"jwk": JWK}, None, sc.OTHER),
    (KID, {"contact": ["mailto:x@example.org"]}, sc.UPDATE_ACCOUNT),
    (KID, {"status": "deactivated"}, sc.DEACTIVATE_ACCOUNT),
    (KID, {"protected": "e30", "payload": "e30", "signature": "AA"}, sc.KEY_CHANGE),
    (KID, {"identifiers": [{"type": "dns", "value": "a.example"}]}, sc.NEW_ORDER),
    (KID, {"identifiers": [{"type": "dns", "value": "a.example"}], "status": "deactivated"}, sc.OTHER),
    (KID, {"identifiers": [{"type": "dns", "value": "a.example"}], "profile": "p", "replaces": "r"},
     sc.NEW_ORDER),
    (KID, {"identifiers": [{"type": "dns", "value": "a.example"}], "profile": ""}, sc.OTHER),
    (KID, {"identifiers": [{"type": "dns", "value": "a.example"}], "profile": ["p"]}, sc.OTHER),
    # a validity the master did not ask for (a certificate expiring in minutes)
    (KID, {"identifiers": [{"type": "dns", "value": "a.example"}], "notAfter": "2026-01-01T00:05:00Z"},
     sc.OTHER),
    (KID, {"identifiers": [{"type": "dns", "value": "a.example"}], "notBefore": "2036-01-01T00:00:00Z"},
     sc.OTHER),
    # Go's encoding/json matches members without case (and folds "ſ" to "s", "K" to "k"):
    # only the exact RFC 8555 spellings are classified
    (KID, {"Status": "deactivated"}, sc.OTHER),
    (KID, {"\u017ftatus": "deactivated"}, sc.OTHER),
    (KID, {"CONTACT": ["mailto:x@example.org"]}, sc.OTHER),
    (KID, {"csr": jws.b64u_encode(CSR), "Csr": jws.b64u_encode(CERT)}, sc.OTHER),
    (KID, {"identifiers": [{"type": "dns", "value": "a.example", "Value": "evil.example"}]}, sc.OTHER),
    ({"jwk": JWK}, {"onlyReturnExisting": False}, sc.OTHER),  # newAccount that creates
    ({"jwk": JWK}, {"onlyReturnExisting": 1}, sc.OTHER),
    (KID, {"payload": "e30", "signatures": [{"protected": "e30", "signature": "AA"}]}, sc.OTHER),
    (KID, {"protected": "e30", "payload": "e30", "signature": "AA", "header": {}}, sc.OTHER),
    (KID, {"csr": jws.b64u_encode(CSR)}, sc.FINALIZE),
    (KID, {"certificate": jws.b64u_encode(CERT), "reason": 1}, sc.REVOKE_CERT),
    ({"jwk": JWK}, {"certificate": jws.b64u_encode(CERT)}, sc.REVOKE_CERT),
    (KID, {"certificate": jws.b64u_encode(CERT), "reason": True}, sc.OTHER),
    (KID, {"whatever": 1}, sc.OTHER),
])
def test_classify_each_rfc8555_request(header, body, kind):
    assert sc.classify({"alg": "ES256", "nonce": "n", "url": "https://ca.example/x", **header},
                       body).kind == kind


@given(identifiers, identifiers)
def test_new_order_covered_exactly_for_a_subset_of_the_scope(allowed, asked):
    scope = sc.Scope(operations=frozenset({sc.NEW_ORDER}), identifiers=allowed)
    op = sc.classify(KID, {"identifiers": [{"type": t, "value": v} for t, v in sorted(asked)]})
    assert (sc.refusal(scope, op) is None) == (bool(asked) and asked <= allowed)


@given(st.frozensets(st.sampled_from(["classic", "shortlived", "tlsserver"]), max_size=2),
       st.none() | st.sampled_from(["classic", "shortlived", "tlsserver"]))
def test_new_order_only_with_a_profile_of_the_scope_or_none(allowed, asked):
    """The profile decides what the CA issues: a client may not pick another
    one than the configuration's (none, the CA's default, is always allowed)."""
    scope = sc.Scope(operations=frozenset({sc.NEW_ORDER}), identifiers=frozenset({("dns", "a.example")}),
                     profiles=allowed)
    body = {"identifiers": [{"type": "dns", "value": "a.example"}],
            **({"profile": asked} if asked else {})}
    why = sc.refusal(scope, sc.classify(KID, body))
    if asked is None or asked in allowed:
        assert why is None
    else:
        assert why == f"newOrder with profile {asked}, not in the scope"


def test_the_orders_scope_lists_the_configured_profiles():
    from lacme.master.scoping import orders_scope

    scope = orders_scope("https://ca.example/dir", [(["a.example"], CSR), (["b.example"], CSR)],
                         ["shortlived", ""])
    assert scope.profiles == {"shortlived"}
    assert sc.parse_scope(sc.encode_scope(scope)).profiles == {"shortlived"}
    assert orders_scope("https://ca.example/dir", [(["a.example"], CSR)]).profiles == frozenset()


def test_names_compare_without_case():
    scope = sc.Scope(operations=frozenset({sc.NEW_ORDER}), identifiers=frozenset({("dns", "a.example")}))
    assert sc.refusal(scope, sc.classify(KID, {"identifiers": [{"type": "dns", "value": "A.Example"}]})) is None


def test_finalize_only_with_a_listed_csr():
    scope = sc.Scope(operations=frozenset({sc.NEW_ORDER}), csr_digests=frozenset({sc.digest(CSR)}))
    assert sc.refusal(scope, sc.classify(KID, {"csr": jws.b64u_encode(CSR)})) is None
    assert "CSR" in sc.refusal(scope, sc.classify(KID, {"csr": jws.b64u_encode(CSR + b"x")}))
    assert sc.refusal(sc.Scope(), sc.classify(KID, {"csr": jws.b64u_encode(CSR)}))


def test_revocation_only_of_the_listed_certificate_with_its_reason():
    scope = sc.Scope(operations=frozenset({sc.REVOKE_CERT}), certificates=frozenset({(sc.digest(CERT), 4)}))
    ok = {"certificate": jws.b64u_encode(CERT), "reason": 4}
    assert sc.refusal(scope, sc.classify(KID, ok)) is None
    assert sc.refusal(scope, sc.classify(KID, {**ok, "reason": 1}))
    assert sc.refusal(scope, sc.classify(KID, {**ok, "certificate": jws.b64u_encode(CSR)}))


def test_account_operations_need_their_exact_contacts():
    scope = sc.Scope(operations=frozenset({sc.UPDATE_ACCOUNT}), contact=("mailto:a@example.org",))
    assert sc.refusal(scope, sc.classify(KID, {"contact": ["mailto:a@example.org"]})) is None
    assert sc.refusal(scope, sc.classify(KID, {"contact": ["mailto:evil@example.org"]}))
    assert sc.refusal(scope, sc.classify(KID, {"status": "deactivated"}))
    assert sc.refusal(scope, sc.classify({"jwk": JWK}, {"contact": ["mailto:a@example.org"]}))


@pytest.mark.parametrize("body", [
    {"protected": "e30", "payload": "e30", "signature": "AA"},
    {"status": "deactivated"},
    {"contact": []},
    {"certificate": jws.b64u_encode(CERT)},
    {"identifiers": [{"type": "dns", "value": "a.example"}]},
    {"csr": jws.b64u_encode(CSR)},
])
def test_a_lookup_scope_covers_only_reads_and_the_lookup(body):
    scope = sc.Scope()
    assert sc.refusal(scope, sc.classify(KID, body))
    assert sc.refusal(scope, sc.classify(KID, None)) is None
    assert sc.refusal(scope, sc.classify({"jwk": JWK}, {"onlyReturnExisting": True})) is None


def test_budget_grows_with_the_identifiers():
    small = sc.Scope(identifiers=frozenset({("dns", "a.example")}))
    large = sc.Scope(identifiers=frozenset({("dns", f"{i}.example") for i in range(10)}))
    assert 64 < small.signature_budget() < large.signature_budget() < 1000


def test_an_external_account_binding_goes_with_registration_only():
    header = {"alg": "HS256", "kid": "kid-0", "url": "https://ca.example/new-acct"}
    op = sc.classify(header, JWK)
    assert op.kind == sc.BINDING
    assert sc.refusal(sc.Scope(operations=frozenset({sc.NEW_ACCOUNT})), op) is None
    assert sc.refusal(sc.Scope(operations=frozenset({sc.NEW_ORDER})), op)
    register = sc.classify({"jwk": JWK}, {"termsOfServiceAgreed": True,
                                          "externalAccountBinding": {"protected": "e30"}})
    assert register.kind == sc.NEW_ACCOUNT and register.tos


def test_rollover_requests_of_the_new_key_are_keychange_and_lookup():
    new = {"kty": "EC", "crv": "P-256", "x": "bmV3", "y": "a2V5"}
    inner = sc.classify({"alg": "ES256", "jwk": new, "url": "https://ca.example/key-change"},
                        {"account": "https://ca.example/acct/1", "oldKey": JWK}, new_jwk=new)
    lookup = sc.classify({"jwk": new}, {"onlyReturnExisting": True}, new_jwk=new)
    assert inner.kind == sc.KEY_CHANGE and lookup.kind == sc.LOOKUP
    rollover = sc.Scope(operations=frozenset({sc.KEY_CHANGE}))
    assert sc.refusal(rollover, inner) is None
    assert sc.refusal(sc.Scope(operations=frozenset({sc.NEW_ORDER})), inner)


def inner_jws(jwk: dict) -> dict:
    protected = jws.b64u_encode(json.dumps({"alg": "ES256", "jwk": jwk, "url": "https://ca.example/kc"}).encode())
    return {"protected": protected, "payload": "e30", "signature": "AAAA"}


def test_key_change_only_to_the_new_key_the_signer_holds():
    """The inner JWS names the key the account gets (RFC 8555 7.3.5): a
    keyChange the scope allows is still refused unless that is accountd's
    new key, or a client could move the account to a key of its own."""
    new = {"kty": "EC", "crv": "P-256", "x": "bmV3", "y": "a2V5"}
    attacker = {"kty": "EC", "crv": "P-256", "x": "ZXZp", "y": "bA"}
    rollover = sc.Scope(operations=frozenset({sc.KEY_CHANGE}))
    ours = sc.classify(KID, inner_jws(new), new_jwk=new)
    theirs = sc.classify(KID, inner_jws(attacker), new_jwk=new)
    assert ours.kind == theirs.kind == sc.KEY_CHANGE
    assert sc.refusal(rollover, theirs) is None  # the scope alone would sign it
    assert sc.key_change_refusal(ours, new) is None
    assert sc.key_change_refusal(theirs, new) == "keyChange to a key that is not this accountd's new key"
    assert "holds no new key" in sc.key_change_refusal(ours, None)
    for body in ({"protected": "!", "signature": "AA"}, {"protected": 1, "signature": "AA"},
                 {"signature": "AA"}, {"protected": jws.b64u_encode(b"[]"), "signature": "AA"}):
        op = sc.classify(KID, body, new_jwk=new)
        assert op.kind == sc.KEY_CHANGE and sc.key_change_refusal(op, new)
    # the inner JWS itself, signed by the new key, is that key's keyChange
    inner = sc.classify({"alg": "ES256", "jwk": new, "url": "https://ca.example/kc"},
                        {"account": "https://ca.example/acct/1", "oldKey": JWK}, new_jwk=new)
    assert sc.key_change_refusal(inner, new) is None


def test_an_order_without_a_csr_allows_no_finalize():
    """dns-persist orders to read the CA's issuer name and finalizes nothing:
    its scope lists no CSR, and an empty csr matches no digest anyway."""
    from lacme.master.scoping import orders_scope

    scope = orders_scope("https://ca.example/dir", [(["a.example"], b"")])
    assert scope.csr_digests == frozenset()
    empty = sc.classify(KID, {"csr": ""})
    assert empty.kind == sc.FINALIZE and empty.digest == ""
    listed = sc.Scope(operations=frozenset({sc.NEW_ORDER}), csr_digests=frozenset({sc.digest(b"")}))
    assert sc.refusal(listed, empty) == "finalize with a CSR that is not in the scope"
    with_csr = orders_scope("https://ca.example/dir", [(["a.example"], CSR)])
    assert with_csr.csr_digests == {sc.digest(CSR)} and with_csr.origin == "https://ca.example"


def binding_jws(alg: str, kid: str) -> dict:
    protected = jws.b64u_encode(json.dumps({"alg": alg, "kid": kid, "url": "https://ca.example/na"}).encode())
    return {"protected": protected, "payload": jws.b64u_encode(json.dumps(JWK).encode()), "signature": "AA"}


def test_registration_only_with_the_signers_own_binding():
    """The binding says whose external account at the CA the new account
    joins (RFC 8555 7.3.4): only the one accountd's MAC key made is signed."""
    ours = ("HS256", "kid-1")
    register = sc.Scope(operations=frozenset({sc.NEW_ACCOUNT}), tos=True)

    def op(binding: object) -> sc.Operation:
        return sc.classify({"jwk": JWK}, {"termsOfServiceAgreed": True, "externalAccountBinding": binding})

    assert op(binding_jws("HS256", "kid-1")).binding == ours
    assert sc.refusal(register, op(binding_jws("HS256", "kid-2"))) is None  # the scope alone would sign it
    assert sc.binding_refusal(op(binding_jws("HS256", "kid-1")), ours) is None
    assert "not this accountd's (eab-kid kid-1)" in sc.binding_refusal(op(binding_jws("HS256", "kid-2")), ours)
    assert sc.binding_refusal(op(binding_jws("HS512", "kid-1")), ours)
    assert "holds no MAC key" in sc.binding_refusal(op(binding_jws("HS256", "kid-1")), None)
    for odd in ({"protected": "!", "payload": "", "signature": ""}, "x", [], {"signature": "AA"},
                {**binding_jws("HS256", "kid-1"), "signatures": []}):
        assert sc.binding_refusal(op(odd), ours)
    plain = sc.classify({"jwk": JWK}, {"termsOfServiceAgreed": True})
    assert plain.binding is None and sc.binding_refusal(plain, None) is None
