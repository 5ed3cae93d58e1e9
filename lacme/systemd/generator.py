"""lacme-generator: narrows lacme-renew.service (and lacme-placeholder.service) to the certificate paths.

A systemd generator (systemd.generator(7)): systemd (PID 1, root, early at
boot and at every ``systemctl daemon-reload``) runs it with its three output
directories.  It reads /etc/lacme/lacme.conf and the certificate files that
it names, and writes the drop-in
``NORMAL/lacme-renew.service.d/50-certificate-paths.conf`` with one
``ReadWritePaths=`` per directory that holds a ``certificate`` or
``certificate-chain`` (and the challenge directory), so that the master, run
under ``ProtectSystem=strict``, can write there and nowhere else; the same
drop-in goes to ``lacme-placeholder.service.d``, whose master writes the
placeholder certificates there.

On a configuration error it writes no drop-in (the service keeps only its
shipped write access, the challenge directory) and logs one line to
/dev/kmsg, or stderr.  No RFC is involved.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Sequence

DEFAULT_CONFIG = "/etc/lacme/lacme.conf"
UNIT = "lacme-renew.service"
UNITS = (UNIT, "lacme-placeholder.service")  # the masters that write certificates
DROPIN = "50-certificate-paths.conf"
NAME = "lacme-generator"


def writable_dirs(config_path: str) -> list[str]:
    """Directories the master must write to, from the configuration.

    Raises ConfigError (or OSError) when the configuration cannot be read.
    """
    from lacme.config.certs import load_cert_sections
    from lacme.config.master import load_master_config
    from lacme.config.specifiers import Identity

    cfg = load_master_config(config_path, Identity.current())
    paths: list[str] = []
    if cfg.webserver.challenge_directory:
        paths.append(cfg.webserver.challenge_directory)
    for section in load_cert_sections(cfg.config_certs).values():
        for path in (section.certificate, section.certificate_chain):
            if path:
                paths.append(os.path.dirname(os.path.normpath(path)) or "/")
    return sorted({p for p in (os.path.normpath(p) for p in paths) if os.path.isabs(p)})


def quote_path(path: str) -> str:
    """``path`` as one word of a unit file setting (systemd.syntax(7)).

    ``%`` is doubled (specifiers), and the word is double-quoted with C-style
    escapes when it holds white space, quotes or backslashes: a backslash or
    a double quote gets a backslash before it, and a character that is not
    printable becomes lacme.core.text's ``\\xNN``, ``\\uNNNN`` or ``\\UNNNNNNNN``.
    """
    word = path.replace("%", "%%")
    if any(c.isspace() or c in "\"'\\" for c in word):
        from lacme.core.text import escape_text

        escaped = "\\\\".join(escape_text(part, None).replace('"', '\\"') for part in word.split("\\"))
        return f'"{escaped}"'
    return word


def render_dropin(dirs: Iterable[str]) -> str:
    """The drop-in text: ``-`` ignores a directory that does not exist."""
    lines = [
        f"# Written by {NAME} from {DEFAULT_CONFIG} and its certificate files;",
        "# run \"systemctl daemon-reload\" after changing them.",
        "[Service]",
    ]
    lines += [f"ReadWritePaths={quote_path('-' + d)}" for d in dirs]
    return "\n".join(lines) + "\n"


def write_dropin(normal_dir: str, text: str, unit: str = UNIT) -> str:
    """Write the drop-in of ``unit`` under ``normal_dir`` (atomically); return its path."""
    from lacme.core.atomic import replace_file

    directory = os.path.join(normal_dir, unit + ".d")
    os.makedirs(directory, mode=0o755, exist_ok=True)
    path = os.path.join(directory, DROPIN)
    replace_file(path, text.encode("utf-8"), 0o644)
    return path


def report(message: str) -> None:
    """One line to the kernel log (seen at boot), else to stderr."""
    line = f"{NAME}: {message}"
    try:
        fd = os.open("/dev/kmsg", os.O_WRONLY | os.O_NOCTTY | os.O_CLOEXEC)  # never create it
    except OSError:
        sys.stderr.write(line + "\n")
        return
    try:
        os.write(fd, f"<3>{line}\n".encode("utf-8", "replace"))
    except OSError:
        sys.stderr.write(line + "\n")
    finally:
        os.close(fd)


def generate(config_path: str, normal_dir: str,
             log: Callable[[str], None] = report) -> bool:
    """Write the drop-in for ``config_path``; False (and nothing written) on
    error, which is passed to ``log``."""
    from lacme.core.errors import LacmeError

    if not os.path.exists(config_path):
        return False  # not configured yet: nothing to open up
    try:
        dirs = writable_dirs(config_path)
    except (LacmeError, OSError, ValueError) as exc:
        log(f"{exc}; {' and '.join(UNITS)} get no certificate paths")
        return False
    text = render_dropin(dirs)
    for unit in UNITS:
        write_dropin(normal_dir, text, unit)
    return True


def main(argv: Sequence[str] | None = None) -> int:
    """systemd calls ``lacme-generator NORMAL EARLY LATE``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) not in (1, 3):
        sys.stderr.write(f"usage: {NAME} NORMAL-DIR [EARLY-DIR LATE-DIR]\n")
        return 2
    generate(DEFAULT_CONFIG, args[0])
    return 0  # a generator failure would only add noise to the boot


if __name__ == "__main__":
    sys.exit(main())
