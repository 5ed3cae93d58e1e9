"""Defaults that more than one program needs, in one place.

Constants only: the client, the master and accountd import this without
loading the configuration reader.
"""

# The CA of the original lacme's default configuration (Let's Encrypt, ACME v2).
DEFAULT_SERVER = "https://acme-v02.api.letsencrypt.org/directory"
DEFAULT_TIMEOUT = 30.0  # seconds, [client] timeout
# Configuration files; %E is /etc for root, $XDG_CONFIG_HOME otherwise.
DEFAULT_MASTER_CONFIG = "%E/lacme/lacme.conf"
DEFAULT_ACCOUNTD_CONFIG = "%E/lacme/lacme-accountd.conf"
DEFAULT_CONFIG_CERTS = "lacme-certs.conf lacme-certs.conf.d/"
# The newOrder command and its aliases (the original's new-cert included).
NEW_ORDER_COMMANDS = ("newOrder", "new-order", "new-cert")


def run_deadline(timeout: float) -> float:
    """How long a whole run may wait on the client: two request timeouts plus
    a minute for validation and polling (the master's lock wait and its
    control-channel timeout are both this)."""
    return timeout * 2 + 60
