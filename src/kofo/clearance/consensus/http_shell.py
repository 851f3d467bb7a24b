"""The HTTP part of the solo ledger's RPC server, kept apart so the stack can be swapped.

Served by :mod:`kofo.asgi` (uvicorn, KOFO's one HTTP stack) on 127.0.0.1 only, with a deadline
for each request (a client that stops sending cannot hold a connection for ever), a cap on open
connections and on the request body. It knows nothing of JSON-RPC: each request is handed to
``handle(method, path, body) -> (status, body)``.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from kofo.asgi import AsgiServer, Handler, Limits, Reply, Request

READ_TIMEOUT = 10.0
"""Seconds a connection may take to send a request (or stay idle between two); a local client
sends a request at once."""

MAX_BODY = 8 << 20
"""A broadcast carries one transaction (a routed order is a few KB); 8 MB is far above any."""

MAX_CONNECTIONS = 64
"""Connections open at once. Local nodes keep one or two each; past the bound a request is
answered ``503`` at once, so a flood costs the flooder, not the ledger."""

Handle = Callable[[str, str, bytes], tuple[int, bytes]]

_JSON = "application/json"


class _Shell(Handler):
    methods = frozenset({"GET", "POST"})

    def __init__(self, handle: Handle) -> None:
        self._handle = handle

    def respond(self, request: Request) -> Reply:
        status, data = self._handle(request.method, request.path, request.body)
        return Reply(status, data, _JSON)

    def error_reply(self, status: int, message: str) -> Reply:
        text = "request body too large" if status == 413 else message
        return Reply(status, json.dumps({"error": text}).encode(), _JSON)

    def internal_error(self) -> Reply:
        return Reply(500, b'{"error":"internal error"}', _JSON)


class LoopbackHttpServer:
    """``LoopbackHttpServer(handle, port=0).start().url``; ``stop()`` joins its thread."""

    def __init__(
        self,
        handle: Handle,
        *,
        port: int = 0,
        max_connections: int = MAX_CONNECTIONS,
        read_timeout: float = READ_TIMEOUT,
    ) -> None:
        limits = Limits(
            max_body=MAX_BODY,
            request_timeout=read_timeout,
            write_timeout=read_timeout,
            max_connections=max_connections,
        )
        self._httpd = AsgiServer(_Shell(handle), limits, name="kofo-ledger-rpc", port=port)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address
        return f"http://{host}:{port}"

    @property
    def port(self) -> int:
        return self._httpd.port

    def start(self) -> LoopbackHttpServer:
        self._httpd.start()
        return self

    def stop(self) -> None:
        self._httpd.stop()
