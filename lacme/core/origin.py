"""https origins (RFC 6454): the one rule that says which CA a URL belongs to.

The client fetches and signs only on the directory's origin; accountd signs
only for its pinned origin; the configuration's ``origin`` settings are
origins.  All of them compare ``https://host[:port]`` strings made here: the
scheme must be https, there is no user information, the host is in lower
case (IPv6 in brackets) and the default port 443 is dropped.  Pure.
"""

from __future__ import annotations

from urllib.parse import urlsplit

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def origin_of(url: Any) -> str:
    """``https://host[:port]`` of an absolute https URL.

    ValueError (with a short reason) for anything else: not a string, not
    printable ASCII or containing a space, another scheme (plain http
    included), no host, user information, a bad port."""
    if not isinstance(url, str) or not url or not (url.isascii() and url.isprintable()) or " " in url:
        raise ValueError("not a printable ASCII URL")
    parts = urlsplit(url)
    if parts.scheme.lower() != "https" or not parts.hostname:
        raise ValueError("not an https URL")
    if "@" in parts.netloc:
        raise ValueError("user information in the URL")
    port = parts.port  # ValueError when not a number in range
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"https://{host}" if port in (None, 443) else f"https://{host}:{port}"


def is_bare_origin(url: str) -> bool:
    """Whether ``url`` is nothing but an origin: no path (``/`` allowed), query or fragment."""
    parts = urlsplit(url)
    return parts.path in ("", "/") and not parts.query and not parts.fragment
