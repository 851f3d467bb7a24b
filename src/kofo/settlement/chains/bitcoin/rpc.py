"""A small JSON-RPC client for the Bitcoin Core dialect and btcd's variant of it.

Differences hidden here: btcd wants TLS with its self-signed certificate and JSON-RPC 1.0
requests; everything else about the dialect (``generate`` vs ``generatetoaddress``, verbose
flags) is handled by :class:`kofo.settlement.chains.bitcoin.backend.RpcBackend`. JSON numbers
are parsed as :class:`decimal.Decimal`, never float (fee rates arrive as BTC/kvB).
"""

from __future__ import annotations

import base64
import http.client
import itertools
import json
import ssl
import urllib.parse
from decimal import Decimal
from typing import Any, Literal

from kofo.errors import ChainError, ConfigError

Dialect = Literal["core", "btcd"]


class RpcError(ChainError):
    """The node answered with a JSON-RPC error."""

    code = "rpc_error"

    def __init__(self, method: str, rpc_code: int, message: str) -> None:
        super().__init__(f"{method} failed ({rpc_code}): {message}")
        self.rpc_code = rpc_code
        self.message = message


class RpcClient:
    def __init__(
        self,
        url: str,
        user: str,
        password: str,
        *,
        dialect: Dialect = "core",
        cert_path: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ConfigError(f"rpc url must be http(s)://host:port, got {url!r}")
        self.url = url
        self.dialect = dialect
        self._host = parsed.hostname
        self._port = parsed.port or (443 if parsed.scheme == "https" else 80)
        self._path = parsed.path or "/"
        self._tls: ssl.SSLContext | None = None
        if parsed.scheme == "https":
            self._tls = ssl.create_default_context(cafile=cert_path)
        self._timeout = timeout
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        self._auth = f"Basic {token}"
        self._ids = itertools.count(1)

    def __repr__(self) -> str:  # never the password
        return f"RpcClient({self.url!r}, dialect={self.dialect!r})"

    def call(self, method: str, *params: Any) -> Any:
        body = json.dumps(
            {"jsonrpc": "1.0", "id": next(self._ids), "method": method, "params": list(params)}
        )
        conn: http.client.HTTPConnection
        if self._tls is not None:
            conn = http.client.HTTPSConnection(
                self._host, self._port, timeout=self._timeout, context=self._tls
            )
        else:
            conn = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)
        try:
            conn.request(
                "POST",
                self._path,
                body=body,
                headers={"Authorization": self._auth, "Content-Type": "application/json"},
            )
            response = conn.getresponse()
            data = response.read()
        except OSError as exc:
            raise ChainError(f"{method}: cannot reach node at {self.url}: {exc}") from None
        finally:
            conn.close()
        if response.status == 401:
            raise ConfigError(f"node at {self.url} refused the rpc user/password")
        try:
            answer = json.loads(data, parse_float=Decimal)
        except json.JSONDecodeError:
            raise ChainError(
                f"{method}: node answered HTTP {response.status} with non-JSON"
            ) from None
        error = answer.get("error")
        if error:
            raise RpcError(method, int(error.get("code", 0)), str(error.get("message", "")))
        return answer.get("result")
