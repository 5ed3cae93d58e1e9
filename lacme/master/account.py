"""The account command: register, update or deactivate the ACME account.

Run by the master (root).  The client asks the CA (RFC 8555 7.3, 7.3.2,
7.3.6) for the account of accountd's key, and the master prints the
account object as JSON on stdout.  No challenges, no state.
"""

from __future__ import annotations

import json
import sys

from lacme.config.master import MasterConfig
from lacme.core.errors import EXIT_OK
from lacme.master.run import ClientSession

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from typing import Any


def account(cfg: MasterConfig, args: argparse.Namespace) -> int:
    with ClientSession(cfg, debug=args.debug, challenges=False) as session:
        reply = session.account(register=args.register, tos_agreed=args.tos_agreed,
                                deactivate=args.deactivate, contact=list(args.contact) or None)
    obj: Any = reply.get("account", {})
    text = json.dumps(obj, indent=4 if sys.stdout.isatty() else None, sort_keys=True)
    sys.stdout.write(text + "\n")
    sys.stdout.flush()
    return EXIT_OK
