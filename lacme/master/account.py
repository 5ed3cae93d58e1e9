"""The account command: register, update or deactivate the ACME account.

Run by the master (root).  The client asks the CA (RFC 8555 7.3, 7.3.2,
7.3.6) for the account of accountd's key, and the master prints the
account object as JSON on stdout.  No challenges, no state.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from lacme.config.master import MasterConfig
from lacme.core.errors import EXIT_OK, UsageError
from lacme.core.text import escape_text
from lacme.master.run import ClientSession

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse


def account(cfg: MasterConfig, args: argparse.Namespace) -> int:
    if args.eab_kid and not args.register:
        raise UsageError("account: --eab-kid binds a new registration: it needs --register")
    with ClientSession(cfg, debug=args.debug, challenges=False) as session:
        reply = session.account(register=args.register, tos_agreed=args.tos_agreed,
                                deactivate=args.deactivate, contact=list(args.contact) or None,
                                eab_kid=args.eab_kid or None)
    obj: Any = reply.get("account", {})
    text = json.dumps(obj, indent=4 if sys.stdout.isatty() else None, sort_keys=True)
    sys.stdout.write(text + "\n")
    sys.stdout.flush()
    # stdout stays one JSON document; which key and kid is for the administrator
    # checking a fleet (every host shows the same thumbprint), whatever the log level
    print(key_line(reply), file=sys.stderr, flush=True)  # noqa: T201 - for the user, always
    return EXIT_OK


def key_line(reply: dict[str, Any]) -> str:
    """``account URL: key THUMBPRINT (RFC 7638), kid KID`` from the client's answer."""
    kid = escape_text(str(reply.get("kid") or "")) or "none (the key is sent as a JWK)"
    return (f"account {escape_text(str(reply.get('location') or '?'))}: "
            f"key {escape_text(str(reply.get('jwk_thumbprint') or '?'))} (JWK thumbprint), kid {kid}")
