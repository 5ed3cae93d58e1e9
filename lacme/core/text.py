"""Text from elsewhere, made safe for one log line.

Every program prints what others sent it: the CA's problem details and
names (client, master), a signing request (accountd), an HTTP request line
(webserver).  One rule for all of them: a character that is not printable
(``str.isprintable``: C0, DEL, C1, the line and paragraph separators, format
characters...) or is a backslash becomes ``\\xNN``, ``\\uNNNN`` or
``\\UNNNNNNNN``, so that a line can never be split, recoloured or forged.
Pure; imports nothing.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing itself (and re, which it loads) stays off the start-up paths
if TYPE_CHECKING:
    from typing import Any

DETAIL_LIMIT = 300  # characters of foreign text kept in one error line


def _escape_char(char: str) -> str:
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def escape_text(text: Any, limit: int | None = DETAIL_LIMIT, *, ascii_only: bool = False,
                quote: bool = False) -> str:
    """``text`` (any object: its ``str``) escaped for a log line, cut at ``limit``
    characters (``...`` marks the cut; ``None``: no limit).

    ``ascii_only`` escapes every non-ASCII character too (an HTTP request
    line, a name in a certificate); ``quote`` escapes ``"`` as well, for a
    value printed between quotes."""
    text = str(text)
    cut = limit is not None and len(text) > limit
    if cut:
        text = text[:limit]
    if text.isprintable() and "\\" not in text and (not ascii_only or text.isascii()) \
            and (not quote or '"' not in text):  # the usual case: nothing to escape
        return text + "..." if cut else text
    out = []
    for char in text:
        if (char.isprintable() and char != "\\" and (not ascii_only or char.isascii())
                and (not quote or char != '"')):
            out.append(char)
        else:
            out.append(_escape_char(char))
    return "".join(out) + ("..." if cut else "")
