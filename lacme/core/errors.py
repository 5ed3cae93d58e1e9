"""Exception hierarchy and exit codes shared by every lacme program.

Every error carries a one-line message that starts with the location at
fault (a file, a section and setting, a URL).  Programs catch them only at
their entry point (print the line, exit with ``exit_code``) and, in the
master, in the per-certificate loop.

Exit codes (documented in README.md):
    0  success
    1  a run-time failure: a section, a file or a request failed
    2  usage or configuration error: nothing was done
"""

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


class LacmeError(Exception):
    """Base class: a failure that is reported as one line."""

    exit_code = EXIT_FAILURE


class ReportedError(LacmeError):
    """A failure whose one line another process has printed already (a
    component that failed said why on the stderr it shares with the master):
    the program exits with ``exit_code`` and logs it only when debugging."""


class OutcomeUnknown(LacmeError):
    """A change was sent but its answer never came back: the peer may have
    applied it.  Whoever sent it keeps it on the list of what to undo."""


class UsageError(LacmeError):
    """Bad command line."""

    exit_code = EXIT_USAGE


class ConfigError(LacmeError):
    """Bad configuration: file, section and setting are in the message."""

    exit_code = EXIT_USAGE


class SpecifierError(ConfigError):
    """Unknown %-specifier or undefined expansion."""


class ProtocolError(LacmeError):
    """A peer (accountd, client, master) broke the wire protocol."""


class AcmeError(LacmeError):
    """The ACME server answered with an error or something unusable."""


class CertificateError(LacmeError):
    """An issued certificate failed verification; nothing was installed."""


class PrivilegeError(LacmeError):
    """Dropping privileges failed or could not be verified."""
