"""Which vitviz servers a page may call, and where the page's own token may go.

A page visitor's server URL is untrusted: on a shared page it would let anyone make the page's
machine send requests wherever they like (a blind probe of the page's network), and the
page's ``VITVIZ_TOKEN`` must never travel with them. The operator decides with environment
variables, read once when the page starts:

``VITVIZ_SERVER``
    the page's own server (default choice). ``VITVIZ_TOKEN`` is sent to this origin only.
``VITVIZ_ALLOWED_SERVERS``
    comma-separated URLs a visitor may choose besides ``VITVIZ_SERVER``; ``*`` lets a
    visitor type any URL.
Neither set (a page on one's own machine): any typed URL; the page's token goes nowhere.
``VITVIZ_SERVER`` set without an allow-list: that server only.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from vitviz.errors import ServerError


def _shown(text: str) -> str:
    """A URL as error messages may quote it: never a user name or password."""
    try:
        parts = urlsplit(text)
        if "@" in parts.netloc:
            return repr(parts._replace(netloc="…@" + parts.netloc.rsplit("@", 1)[1]).geturl())
    except ValueError:
        return "the server URL"
    return repr(text)


def normalize(url: str) -> str:
    """``scheme://host:port/path`` with the default port spelled out; refuses odd URLs.

    Raises:
        ServerError: not http(s), no host, credentials in the URL, a query or fragment.
            Messages never repeat a user name or password found in the URL.
    """
    text = url.strip()
    try:
        parts = urlsplit(text)
    except ValueError:
        raise ServerError("the server URL is malformed; give http://HOST:PORT") from None
    shown = _shown(text)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise ServerError(f"server URL {shown} must start with http:// or https://")
    try:
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError:
        raise ServerError(f"server URL {shown} has an invalid port") from None
    host = (parts.hostname or "").lower()
    if not host or parts.username is not None or parts.password is not None:
        raise ServerError(f"server URL {shown} must name a host (and no user or password)")
    if parts.query or parts.fragment:
        raise ServerError(f"server URL {shown} must not have a query or fragment")
    name = f"[{host}]" if ":" in host else host
    return f"{scheme}://{name}:{port}{parts.path.rstrip('/')}"


def origin(url: str) -> str:
    """``scheme://host:port`` of a URL (see :func:`normalize`)."""
    parts = urlsplit(normalize(url))
    return f"{parts.scheme}://{parts.netloc}"


@dataclass(frozen=True)
class ServerPolicy:
    """The servers a page offers and where its token may go.

    Attributes:
        default: the page's own server (``VITVIZ_SERVER``), or None.
        token: the page's token (``VITVIZ_TOKEN``): only ever sent to ``default``'s origin.
        allowed: the servers a visitor may pick (``default`` first), normalized.
        any_url: a visitor may type any URL.
        server_only: the page runs no model itself (``VITVIZ_SERVER_ONLY=1``).
    """

    default: str | None
    token: str | None
    allowed: tuple[str, ...]
    any_url: bool
    server_only: bool

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ServerPolicy:
        """The policy the operator's environment describes (see the module docstring)."""
        env = os.environ if environ is None else environ
        default = env.get("VITVIZ_SERVER", "").strip() or None
        listed = [u.strip() for u in env.get("VITVIZ_ALLOWED_SERVERS", "").split(",")]
        listed = [u for u in listed if u]
        any_url = "*" in listed or (default is None and not listed)
        allowed = [normalize(u) for u in ([default] if default else []) + listed if u != "*"]
        return cls(
            default=normalize(default) if default else None,
            token=env.get("VITVIZ_TOKEN") or None,
            allowed=tuple(dict.fromkeys(allowed)),
            any_url=any_url,
            server_only=default is not None and env.get("VITVIZ_SERVER_ONLY") == "1",
        )

    def check(self, url: str) -> str:
        """The normalized URL if a visitor may use it, else a :class:`ServerError`."""
        norm = normalize(url)
        if self.any_url or norm in self.allowed:
            return norm
        raise ServerError(
            f"this page only talks to the vitviz servers its operator chose "
            f"({', '.join(self.allowed) or 'none'}); to use another, run the page yourself "
            "or ask its operator to add it to VITVIZ_ALLOWED_SERVERS"
        )

    def token_for(self, url: str, typed: str | None) -> str:
        """The token to send to ``url``: the visitor's, or the page's for its own server."""
        if typed:
            return typed
        if self.default and self.token and origin(url) == origin(self.default):
            return self.token
        return ""
