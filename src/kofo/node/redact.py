"""Credentials in the node's endpoint URLs, kept out of every text the node shows.

A hosted RPC endpoint carries its credential in the URL: ``https://user:pass@host`` or an API
key in the path (``https://mainnet.infura.io/v3/<key>``). HTTP libraries quote the URL in
their errors, and the node shows errors to API clients (a chain's or the ledger's error in
``/v1/info``, a trade's error, the event stream; all readable with the read-only token) and
writes them to its log. :class:`Redactor` replaces each configured credential in such a text.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Iterable
from typing import Any

MASK = "***"
_USERINFO = re.compile(r"(?<=://)[^/@\s'\"]+@")


def url_secrets(url: str) -> list[str]:
    """The parts of ``url`` that may be a credential: its user info (user, password) and its
    path and query when there is more than ``/``."""
    parts = urllib.parse.urlsplit(url)
    found = [p for p in (parts.username, parts.password) if p]
    if parts.path.strip("/"):
        found.append(parts.path)
        found.append(urllib.parse.unquote(parts.path))
    if parts.query:
        found.append(parts.query)
    return found


def public_url(url: str) -> str:
    """``url`` without its credentials: scheme, host and port (what a log or reply may show)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    rest = "/" + MASK if (parts.path.strip("/") or parts.query) else ""
    return f"{parts.scheme}://{host}{port}{rest}"


class Redactor:
    """Replaces the given secrets (longest first) and any URL's user info in a text."""

    def __init__(self, secrets: Iterable[str]) -> None:
        # a 1-2 character "secret" would mask every such letter; such a credential is no
        # secret anyway
        self._secrets = sorted({s for s in secrets if len(s) >= 3}, key=len, reverse=True)

    @classmethod
    def for_urls(cls, urls: Iterable[str], extra: Iterable[str] = ()) -> Redactor:
        found: list[str] = list(extra)
        for url in urls:
            found += url_secrets(url)
        return cls(found)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, MASK)
        return _USERINFO.sub(MASK + "@", text)

    def deep(self, value: Any) -> Any:
        """``value`` with every string in it (through dicts, lists, tuples) redacted."""
        if isinstance(value, str):
            return self(value)
        if isinstance(value, dict):
            return {k: self.deep(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(self.deep(v) for v in value)
        return value
