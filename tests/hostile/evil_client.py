"""A compromised lacme-client: it takes the real client's place (``[client]
command``) and, instead of its command, tries one forbidden request.

Usage: evil_client.py ATTACK REPORT [CERTIFICATE]   (REPORT "-": a line on stderr)

It speaks the control protocol and the accountd protocol exactly as the
real client does (hello, the accountd connection, the command), then asks
accountd to sign ``ATTACK``'s request and sends it to the CA; what came of
it goes to the JSON file REPORT.  It ends the run with an error, as a
client that fails would.  Used by tests/hostile/test_scope_attacks.py.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from lacme.client.acme.session import AcmeSession
from lacme.client.flow import OrderOptions, finish_order, prepare_order, request_budget
from lacme.client.link import AccountdSigner, Context, ControlLink
from lacme.client.main import control_socket, parse_settings, receive_command, receive_hello
from lacme.core import descriptors
from lacme.protocol import jwk_keys, jws
from lacme.protocol import scope as sc

EVIL_CONTACT = ["mailto:evil@example.org"]
EVIL_NAME = "evil-name.example.com"


def attacker_key() -> Any:
    return ec.generate_private_key(ec.SECP256R1())


def key_change(session: AcmeSession, **_: Any) -> None:
    """RFC 8555 7.3.5 to the attacker's key: the inner JWS is signed by the new key."""
    kid = session.lookup_account()
    url = session.resource("keyChange")
    key = attacker_key()
    protected = {"alg": "ES256", "jwk": jwk_keys.public_jwk(key), "url": url}
    text = jws.signing_input(protected, {"account": kid, "oldKey": session.signer.jwk})
    session.post(url, jws.flattened(text, jwk_keys.sign(key, "ES256", text.encode("ascii"))))


def key_change_rollover(session: AcmeSession, **kwargs: Any) -> None:
    """The same, in a rollover run: accountd may sign a keyChange, to its new key."""
    key_change(session, **kwargs)


def deactivate(session: AcmeSession, **_: Any) -> None:
    session.lookup_account()
    session.deactivate_account()


def contact(session: AcmeSession, **_: Any) -> None:
    session.lookup_account()
    session.update_account({"contact": EVIL_CONTACT})


def status_case(session: AcmeSession, **_: Any) -> None:
    """Deactivation spelt "Status": Go's encoding/json (Pebble, Boulder) matches
    members without case, so the CA reads it as the status."""
    session.lookup_account()
    session.update_account({"Status": "deactivated"})


def status_folded(session: AcmeSession, **_: Any) -> None:
    """Deactivation spelt with U+017F LONG S, which Go's member matching folds to "s"."""
    session.lookup_account()
    session.update_account({"\u017ftatus": "deactivated"})


def contact_case(session: AcmeSession, **_: Any) -> None:
    session.lookup_account()
    session.update_account({"Contact": EVIL_CONTACT})


def new_account_create(session: AcmeSession, **_: Any) -> None:
    """newAccount with onlyReturnExisting false: a registration, not the lookup."""
    session.post(session.resource("newAccount"), {"onlyReturnExisting": False, "contact": EVIL_CONTACT,
                                                  "termsOfServiceAgreed": True}, use_jwk=True)


def new_account(session: AcmeSession, **_: Any) -> None:
    session.new_account(contact=EVIL_CONTACT, tos_agreed=True)


def eab_own(session: AcmeSession, command: dict, certificate: str, **_: Any) -> None:
    """The registration the command asks for, bound (RFC 8555 7.3.4) to the
    attacker's own external account at the CA: CERTIFICATE is then a file
    "KID MAC-KEY" of the attacker's credentials."""
    from lacme.protocol import eab

    with open(certificate) as fh:
        kid, text = fh.read().split()
    key = eab.parse_mac_key(text)

    def binding(url: str) -> dict:
        signing_input = eab.binding_input("HS256", kid, url, session.signer.jwk)
        return jws.flattened(signing_input, eab.mac("HS256", key, signing_input.encode("ascii")))

    session.new_account(contact=command.get("contact") or (), tos_agreed=bool(command.get("tos_agreed")),
                        binding=binding)


def revoke(session: AcmeSession, certificate: str, **_: Any) -> None:
    from lacme.x509 import chain as x509

    with open(certificate, "rb") as fh:
        der = x509.chain_der(x509.parse_chain(fh.read()))[0]
    session.lookup_account()
    session.revoke(der, 1)


def new_order(session: AcmeSession, **_: Any) -> None:
    session.lookup_account()
    session.new_order([{"type": "dns", "value": EVIL_NAME}])


def profile(session: AcmeSession, command: dict, **_: Any) -> None:
    """The configured names, with an ACME profile the configuration does not
    name (the CA's short-lived certificates, say)."""
    session.lookup_account()
    session.new_order(command["orders"][0]["identifiers"], profile="shortlived")


def finalize(session: AcmeSession, ctx: Context, command: dict, report: dict, **_: Any) -> None:
    """The configured order, authorized as usual, finalized with the attacker's own CSR."""
    from lacme.x509 import csr

    order = command["orders"][0]
    names = [i["value"] for i in order["identifiers"]]
    own_csr = csr.build_csr(attacker_key(), [("CN", names[0])], names)
    real_finalize = session.finalize

    def finalize_recorded(order: Any, csr_der: bytes) -> Any:
        report["order"] = order.url
        return real_finalize(order, csr_der)

    session.finalize = finalize_recorded  # type: ignore[method-assign]  # a test program records the order
    session.lookup_account()
    prepared = prepare_order(ctx, order["id"], order["identifiers"], own_csr, OrderOptions(),
                             request_budget(order["identifiers"], session.remaining()))
    finish_order(ctx, prepared)


def short_validity(session: AcmeSession, ctx: Context, command: dict, report: dict,
                   **_: Any) -> None:
    """The configured order with the master's own CSR, but asking for a
    certificate that expires in minutes (RFC 8555 7.4 notAfter, which Pebble
    honours), handed to the master to install over the good one."""
    import datetime

    order = command["orders"][0]
    not_after = datetime.datetime.now(datetime.UTC) + datetime.timedelta(minutes=5)
    url, real_post_json = session.resource("newOrder"), session.post_json

    def post_json(target: str, payload: dict | None, **kwargs: Any) -> Any:
        if target == url and payload is not None:
            payload = {**payload, "notAfter": not_after.strftime("%Y-%m-%dT%H:%M:%SZ")}
        return real_post_json(target, payload, **kwargs)

    session.post_json = post_json  # type: ignore[method-assign]  # a test program alters the order
    session.lookup_account()
    prepared = prepare_order(ctx, order["id"], order["identifiers"], jws.b64u_decode(order["csr"]),
                             OrderOptions(), request_budget(order["identifiers"], session.remaining()))
    pem = finish_order(ctx, prepared)
    ctx.link.send("certificate", id=order["id"], pem=pem)
    report["installed"] = pem


def finalize_twice(session: AcmeSession, ctx: Context, command: dict, report: dict,
                   **_: Any) -> None:
    """The configured order with the master's CSR, then more orders finalized
    with the same CSR: each one a certificate, which spends the CA's limit on
    duplicate certificates (Let's Encrypt: 5 a week) and keeps renewals out."""
    order = command["orders"][0]
    csr_der = jws.b64u_decode(order["csr"])
    session.lookup_account()
    report["issued"] = 0
    for _ in range(3):
        prepared = prepare_order(ctx, order["id"], order["identifiers"], csr_der, OrderOptions(),
                                 request_budget(order["identifiers"], session.remaining()))
        finish_order(ctx, prepared)
        report["issued"] += 1


def second_scope(session: AcmeSession, signer: AccountdSigner, **_: Any) -> None:
    """A scope of its own for everything, then an order it would allow."""
    wide = sc.Scope(operations=frozenset(sc.OPERATIONS), identifiers=frozenset({("dns", EVIL_NAME)}))
    signer._sock.sendall(sc.encode_scope(wide))
    session.lookup_account()
    session.new_order([{"type": "dns", "value": EVIL_NAME}])


def publish(link: ControlLink, **_: Any) -> None:
    """A challenge answer that is not a key authorization of this account."""
    token = "evil-token-" + "A" * 32
    link.publish(token, f"{token}.{'B' * 43}", timeout=10)


def publish_idle(link: ControlLink, signer: AccountdSigner, **_: Any) -> None:
    """A key authorization of this account, while no order of the run is pending."""
    token = "idle-token-" + "A" * 32
    link.publish(token, f"{token}.{signer.thumbprint}", timeout=10)


def publish_many(link: ControlLink, signer: AccountdSigner, command: dict, **_: Any) -> None:
    """More key authorizations than the run's orders have authorizations."""
    count = sum(len(o["identifiers"]) for o in command["orders"])
    for i in range(count + 1):
        token = f"token-{i}-" + "A" * 32
        link.publish(token, f"{token}.{signer.thumbprint}", timeout=10)


ATTACKS = {f.__name__: f for f in (key_change, deactivate, contact, new_account, revoke,
                                    new_order, finalize, second_scope, publish, publish_idle,
                                    publish_many, key_change_rollover, short_validity, status_case,
                                    status_folded, contact_case, new_account_create, eab_own,
                                    finalize_twice, profile)}


def main() -> int:
    attack, report_path = sys.argv[1], sys.argv[2]
    if attack.startswith("@"):  # the attack's name in a file (one drop-in for every attack)
        with open(attack[1:]) as fh:
            attack = fh.read().strip()
    certificate = sys.argv[3] if len(sys.argv) > 3 and not sys.argv[3].startswith("--") else ""
    channel = descriptors.Channel(control_socket())
    hello, accountd = receive_hello(channel)
    settings = parse_settings(hello.get("settings"))
    signer = AccountdSigner(accountd, settings.timeout)
    command = receive_command(channel)
    link = ControlLink(channel)
    link.start_reader()
    session = AcmeSession(settings.server, signer, deadline=time.monotonic() + settings.timeout,
                          verify=settings.verify)
    report: dict[str, Any] = {"attack": attack, "command": command["type"]}
    try:
        ATTACKS[attack](session=session, signer=signer, link=link, command=command, report=report,
                        ctx=Context(session, link, signer), certificate=certificate)
        report["outcome"] = "succeeded"
    except Exception as exc:  # noqa: BLE001 - whatever stopped it goes to the report
        report["outcome"] = f"{type(exc).__name__}: {exc}"
    report["signer_broken"] = signer.broken is not None
    if report_path == "-":  # systemd mode: the client's sandbox writes nowhere, the journal has it
        print("LACME-EVIL-REPORT " + json.dumps(report), file=sys.stderr, flush=True)
    else:
        with open(report_path, "w") as fh:
            json.dump(report, fh)
    try:
        link.send("error", message=f"hostile client: {attack}: {report['outcome']}")
        link.send("done")
    except Exception:  # noqa: BLE001 - the master may have ended the run already
        pass
    return 1


if __name__ == "__main__":
    sys.exit(main())
