"""Which wiring a lacme.conf asks for: fork mode, systemd mode, or a mix.

Read by the master (root), which refuses a configuration that would fork
components inside ``lacme-renew.service`` (``lacme.master.main``), and by
``make install``, which says whether a lacme.conf it kept is the one the
installed units need (``python -m lacme.config.wiring``).  The rule is the
master's (``lacme.master.components``): it spawns accountd when there is
an ``[accountd]`` section, the client when ``[client] connect`` is unset,
and webservers when ``[webserver] challenge-directory`` is unset.  No RFC
applies.
"""

from __future__ import annotations

import sys

from lacme.config.master import MasterConfig

#: Where the administrator reads how to go from one wiring to the other.
MOVING_HINT = "see lacme(8), \"Moving over from Debian's lacme\""


def forked_by(cfg: MasterConfig) -> tuple[str, ...]:
    """What in ``cfg`` makes the master fork components: empty in systemd mode."""
    found = []
    if cfg.accountd is not None:
        found.append("an [accountd] section")
    if not cfg.client.connect:
        found.append("no [client] connect")
    if not cfg.webserver.challenge_directory:
        found.append("no [webserver] challenge-directory")
    if cfg.dns is not None and not cfg.dns.connect:
        found.append("no [dns] connect")
    return tuple(found)


def kept_advice(path: str, wanted: str, docdir: str) -> str | None:
    """For ``make install``, which kept the lacme.conf at ``path``: one line when
    its wiring is not ``wanted`` ("systemd" or "fork"), else None."""
    from lacme.config.master import load_master_config
    from lacme.config.specifiers import Identity
    from lacme.core.errors import LacmeError

    try:
        forked = forked_by(load_master_config(path, Identity.current()))
    except (LacmeError, OSError) as exc:
        return f"warning: kept {path}, which lacme cannot read: {exc}"
    examples = f"{docdir}/examples"
    if wanted == "systemd" and forked:
        return (f"warning: kept {path}, a fork-mode configuration ({', '.join(forked)}); "
                f"the systemd units need the systemd-mode one ({examples}/lacme.conf.systemd, "
                f"{docdir}/systemd.md); {MOVING_HINT}")
    if wanted == "fork" and not forked:
        return (f"warning: kept {path}, a systemd-mode configuration; fork mode's is "
                f"{examples}/lacme.conf.fork")
    return None


def main(argv: list[str]) -> int:
    """``python -m lacme.config.wiring WIRING DOCDIR FILE``: ``kept_advice`` on stderr."""
    if len(argv) != 3 or argv[0] not in ("systemd", "fork"):
        sys.stderr.write("usage: python -m lacme.config.wiring systemd|fork DOCDIR FILE\n")
        return 2
    advice = kept_advice(argv[2], argv[0], argv[1])
    if advice:
        sys.stderr.write(advice + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
