"""A small JSON-RPC client for the Bitcoin Core dialect and btcd's variant of it.

Differences hidden here: btcd wants TLS with its self-signed certificate and JSON-RPC 1.0
requests; everything else about the dialect (``generate`` vs ``generatetoaddress``, verbose
flags) is handled by :class:`kofo.settlement.chains.bitcoin.backend.RpcBackend`. JSON numbers
are parsed as :class:`decimal.Decimal`, never float (fee rates arrive as BTC/kvB); ``NaN`` and
``Infinity`` are refused, and an answer that is not a JSON-RPC object is a
:class:`BadRpcAnswer`, never a Python error.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import itertools
import json
import re
import socket
import ssl
import threading
import time
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
        """``method``'s result. The whole exchange (connect, send, answer) takes at most
        ``timeout`` seconds: at that deadline the connection is closed, however slowly the node
        keeps sending. Any failure is a :class:`ChainError` (:class:`RpcError` for the node's
        own error, :class:`BadRpcAnswer` for an answer that is not one)."""
        request_id = next(self._ids)
        body = json.dumps(
            {"jsonrpc": "1.0", "id": request_id, "method": method, "params": list(params)}
        )
        conn: http.client.HTTPConnection
        if self._tls is not None:
            conn = http.client.HTTPSConnection(
                self._host, self._port, timeout=self._timeout, context=self._tls
            )
        else:
            conn = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)
        # A per-read socket timeout does not bound a node that trickles its answer: at the
        # deadline a timer shuts the socket down, which ends the pending read.
        deadline = _Deadline(self._timeout)
        try:
            conn.connect()
            deadline.arm(conn.sock)
            conn.request(
                "POST",
                self._path,
                body=body,
                headers={"Authorization": self._auth, "Content-Type": "application/json"},
            )
            response = conn.getresponse()
            data = response.read(MAX_ANSWER_BYTES + 1)
        except (OSError, http.client.HTTPException, ValueError) as exc:
            late = " (deadline passed)" if deadline.passed else ""
            raise ChainError(
                f"{method}: no answer from node at {self.url}{late}: "
                f"{type(exc).__name__}: {str(exc)[:120]}"
            ) from None
        finally:
            deadline.disarm()
            conn.close()
        if deadline.passed:  # a close-delimited answer may end quietly when cut
            raise ChainError(f"{method}: no answer from node at {self.url} (deadline passed)")
        if response.status == 401:
            raise ConfigError(f"node at {self.url} refused the rpc user/password")
        if len(data) > MAX_ANSWER_BYTES:
            raise BadRpcAnswer(method, f"an answer over {MAX_ANSWER_BYTES} bytes")
        if _containers(data) > MAX_CONTAINERS:
            # json's C scanner recurses per nesting level: a deep enough answer overflows the
            # C stack (a segfault, not a RecursionError, where the recursion limit is raised).
            raise BadRpcAnswer(method, f"JSON with over {MAX_CONTAINERS} arrays and objects")
        try:
            answer = json.loads(data, parse_float=Decimal, parse_constant=_no_constant)
        except (ValueError, RecursionError):  # JSONDecodeError, bad UTF-8, NaN, deep nesting
            raise BadRpcAnswer(method, f"HTTP {response.status} with non-JSON") from None
        if not isinstance(answer, dict):
            raise BadRpcAnswer(method, f"a {type(answer).__name__}, not a JSON-RPC object")
        error = answer.get("error")
        if error:
            if not isinstance(error, dict):
                raise BadRpcAnswer(method, f"an error that is not an object: {_shown(error)}")
            code, message = error.get("code", 0), error.get("message", "")
            if isinstance(code, bool) or not isinstance(code, int):
                raise BadRpcAnswer(method, f"an error code that is not an integer: {_shown(code)}")
            raise RpcError(method, code, str(message)[:500])
        if answer.get("id") != request_id:
            raise BadRpcAnswer(method, f"to request {_shown(answer.get('id'))}, not {request_id}")
        return answer.get("result")


MAX_ANSWER_BYTES = 64 * 1024 * 1024
"""The largest answer read: a block at verbosity 0 is at most 8 MB of hex (4 MWU), the txids of
a full default mempool (300 MB) under 20 MB. A node sending more is not believed, nor buffered
without end."""


MAX_CONTAINERS = 1000
"""The most arrays and objects an answer may hold: every call the adapter makes answers with a
handful (``getblock`` is read raw, as one hex string)."""

_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')


def _containers(data: bytes) -> int:
    """How many arrays and objects the JSON text ``data`` opens (brackets inside strings do not
    count), found at C speed without parsing."""
    total = data.count(b"[") + data.count(b"{")
    if total <= MAX_CONTAINERS:  # the usual case (hex and numbers hold no brackets): no scan
        return total
    bare = _JSON_STRING.sub(b"", data)
    return bare.count(b"[") + bare.count(b"{")


class BadRpcAnswer(ChainError):
    """The node answered, but not with what the call returns (a lying or broken node): the
    value is not used, and nothing the adapter holds changes."""

    code = "rpc_bad_answer"

    def __init__(self, method: str, what: str) -> None:
        super().__init__(f"{method}: node answered {what}")


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


class _Deadline:
    """Shuts a socket down once ``seconds`` have passed since it was made (unless disarmed)."""

    def __init__(self, seconds: float) -> None:
        self._end = time.monotonic() + seconds
        self._timer: threading.Timer | None = None
        self.passed = False

    def arm(self, sock: socket.socket | None) -> None:
        if sock is None:
            return
        self._timer = threading.Timer(max(0.0, self._end - time.monotonic()), self._shut, (sock,))
        self._timer.daemon = True
        self._timer.start()

    def _shut(self, sock: socket.socket) -> None:
        self.passed = True
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)

    def disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()


def _no_constant(name: str) -> object:
    raise ValueError(f"JSON has no {name}")
