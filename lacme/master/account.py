"""The account command: register, update or deactivate the ACME account.

Run by the master (root).  The client asks the CA (RFC 8555 7.3, 7.3.2,
7.3.6) for the account of accountd's key, and the master prints the
account object as JSON on stdout.  No challenges, no state.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from lacme.config.ini import check_privkey
from lacme.config.master import MasterConfig
from lacme.core.errors import EXIT_OK, UsageError
from lacme.core.record import replace
from lacme.core.text import escape_text
from lacme.master.run import ClientSession

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse


def account(cfg: MasterConfig, args: argparse.Namespace) -> int:
    if args.eab_kid and not args.register:
        raise UsageError("account: --eab-kid binds a new registration: it needs --register")
    if args.rollover:
        cfg = rollover_config(cfg, args)
    elif args.new_privkey:
        raise UsageError("account: --new-privkey is the new key of --rollover")
    with ClientSession(cfg, debug=args.debug, challenges=False) as session:
        reply = session.account(register=args.register, tos_agreed=args.tos_agreed,
                                deactivate=args.deactivate, contact=list(args.contact) or None,
                                eab_kid=args.eab_kid or None, rollover=args.rollover)
    obj: Any = reply.get("account", {})
    text = json.dumps(obj, indent=4 if sys.stdout.isatty() else None, sort_keys=True)
    sys.stdout.write(text + "\n")
    sys.stdout.flush()
    # stdout stays one JSON document; which key and kid is for the administrator
    # checking a fleet (every host shows the same thumbprint), whatever the log level
    print(key_line(reply), file=sys.stderr, flush=True)  # noqa: T201 - for the user, always
    if reply.get("rolled_over"):
        print(switch_line(reply, args.new_privkey), file=sys.stderr, flush=True)  # noqa: T201 - as above
    return EXIT_OK


def rollover_config(cfg: MasterConfig, args: argparse.Namespace) -> MasterConfig:
    """``cfg`` with the new key for the accountd this run spawns (it alone reads keys)."""
    if args.register or args.deactivate or args.contact or args.eab_kid:
        raise UsageError("account: --rollover goes alone (no --register, --deactivate, "
                         "--eab-kid or contacts)")
    if cfg.accountd is None:  # a running accountd: started with its new key, or the client says not
        if args.new_privkey:
            raise UsageError("account --rollover: --new-privkey is for an accountd that lacme "
                             "spawns; a socket's accountd is started with it (systemd mode: "
                             "docs/systemd.md, \"Rolling the account key over\")")
        return cfg
    if not args.new_privkey:
        raise UsageError("account: --rollover needs --new-privkey=file:PATH or gpg:PATH")
    check_privkey(args.new_privkey, "--new-privkey")
    return replace(cfg, accountd=replace(cfg.accountd, new_privkey=args.new_privkey))


def switch_line(reply: dict[str, Any], new_privkey: str) -> str:
    """What the administrator does next: the CA now knows only the new key."""
    done = ("was already rolled over (an earlier run was interrupted after the CA's answer)"
            if reply.get("already") else "is rolled over")
    where = (f"set privkey = {escape_text(new_privkey)} in lacme-accountd.conf" if new_privkey
             else "make the new key lacme-accountd's privkey (systemd mode: the account.key "
             "credential)")
    return (f"account {escape_text(str(reply.get('location') or '?'))} {done}: the CA accepts "
            f"only the new key now; {where}, and keep the old key until that is done")


def key_line(reply: dict[str, Any]) -> str:
    """``account URL: key THUMBPRINT (RFC 7638), kid KID`` from the client's answer."""
    kid = escape_text(str(reply.get("kid") or "")) or "none (the key is sent as a JWK)"
    return (f"account {escape_text(str(reply.get('location') or '?'))}: "
            f"key {escape_text(str(reply.get('jwk_thumbprint') or '?'))} (JWK thumbprint), kid {kid}")
