"""Reading a small file whole, with the one-line error every program prints.

Used by every program that reads a key, a certificate bundle or a secret:
``PATH: no such file`` or ``PATH: <strerror>``, as the given LacmeError
class (CertificateError for a bundle, LacmeError otherwise).
"""

from __future__ import annotations

from lacme.core.errors import LacmeError


def read_bytes(path: str, error: type[LacmeError] = LacmeError) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise error(f"{path}: no such file") from None
    except OSError as e:
        raise error(f"{path}: {e.strerror or e}") from None
