"""The HTTP part of the solo ledger's RPC server, kept apart so the stack can be swapped.

A ``ThreadingHTTPServer`` bound to 127.0.0.1 only, with a read timeout per connection (a client
that stops sending cannot hold a thread forever), a cap on connections served at once and on
the request body. It knows nothing
of JSON-RPC: each request is handed to ``handle(method, path, body) -> (status, body)``.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_log = logging.getLogger(__name__)

READ_TIMEOUT = 10.0
"""Seconds a connection may stay silent mid-request; a local client sends a request at once."""

MAX_BODY = 8 << 20
"""A broadcast carries one transaction (a routed order is a few KB); 8 MB is far above any."""

MAX_CONNECTIONS = 64
"""Connections served at once (a thread each). Local nodes keep one or two each; past the
bound a new connection is closed at once, so a flood costs the flooder, not the ledger."""

Handler = Callable[[str, str, bytes], tuple[int, bytes]]


class _BoundedServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        max_connections: int,
    ) -> None:
        super().__init__(address, handler)
        self._slots = threading.BoundedSemaphore(max_connections)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that goes away mid-request (reset, broken pipe, read timeout) is routine;
        # anything else is a bug worth its traceback in the log (never on stderr raw).
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):
            _log.debug("ledger rpc: client %s went away: %s", client_address, exc)
        else:
            _log.error("ledger rpc: request from %s failed", client_address, exc_info=exc)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class LoopbackHttpServer:
    """``LoopbackHttpServer(handle, port=0).start().url``; ``stop()`` joins its thread."""

    def __init__(
        self,
        handle: Handler,
        *,
        port: int = 0,
        max_connections: int = MAX_CONNECTIONS,
        read_timeout: float = READ_TIMEOUT,
    ) -> None:
        class _Request(BaseHTTPRequestHandler):
            timeout = read_timeout
            protocol_version = "HTTP/1.1"

            def _serve(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length < 0 or length > MAX_BODY:
                    self._send(413, b'{"error":"request body too large"}')
                    self.close_connection = True
                    return
                body = self.rfile.read(length) if length else b""
                try:
                    status, data = handle(method, self.path, body)
                except Exception:
                    _log.exception("ledger rpc request failed")
                    status, data = 500, b'{"error":"internal error"}'
                self._send(status, data)

            def _send(self, status: int, data: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                self._serve("POST")

            def do_GET(self) -> None:
                self._serve("GET")

            def log_message(self, format: str, *args: Any) -> None:
                _log.debug("ledger rpc %s", format % args)

        self._httpd = _BoundedServer(("127.0.0.1", port), _Request, max_connections)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def start(self) -> LoopbackHttpServer:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="kofo-ledger-rpc", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join()
            self._thread = None
        self._httpd.server_close()
