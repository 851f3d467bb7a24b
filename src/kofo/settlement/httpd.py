"""One hardened HTTP/1.x server base for KOFO's small JSON/CBOR endpoints.

Used by the three servers a stranger can reach: the embedded chain's Bitcoin Core RPC
(:mod:`~kofo.settlement.chains.bitcoin.rpcserver`), the embedded EVM's JSON-RPC
(:mod:`~kofo.settlement.chains.ethereum.devnet`) and the swap peer channel
(:mod:`~kofo.settlement.peer_http`). Request-line and header parsing stay the standard
library's (``http.server``/``http.client``, maintained with CPython); what this module adds is
the part the standard library leaves to its users, each against a named attack:

- **connection floods**: a listen backlog of :data:`LISTEN_BACKLOG` (200 clients arriving at once
  are queued, not refused) and at most ``max_connections`` handler threads; a connection waiting
  for a slot waits in the kernel's queue, and is answered ``503`` if none frees in time;
- **slowloris** (a client that sends its request, or reads its answer, a byte at a time): one
  deadline for the whole request -- idle time, request line, headers and body -- and another for
  writing the answer, enforced by a watchdog that shuts the socket down when it passes; a
  per-read socket timeout alone would let a client trickling a byte per period hold a thread for
  ever;
- **malformed framing**: a ``Content-Length`` that is not one decimal number, appears twice with
  different values, or comes with a ``Transfer-Encoding`` is answered ``400`` (``501`` for a
  transfer encoding alone), never a dropped connection or a ``500``;
- **memory**: a body above ``max_body`` is answered ``413`` without being read.

A subclass of :class:`HardenedHandler` implements :meth:`HardenedHandler.respond`, which gets
the method and the whole body and returns a :class:`Reply`; an exception escaping it is logged and
answered by :meth:`HardenedHandler.internal_error` (without its details).
"""

from __future__ import annotations

import heapq
import http.client
import itertools
import logging
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_log = logging.getLogger(__name__)

LISTEN_BACKLOG = 1024
"""The kernel queue of connections not yet accepted (capped by ``net.core.somaxconn``, 4096 on
current Linux). Python's default of 5 drops connections when a few dozen clients arrive at once;
Core's RPC uses libevent's default (128) and geth Go's (the system maximum)."""


@dataclass(frozen=True)
class Limits:
    """Per-server bounds. Times in seconds, sizes in bytes."""

    max_body: int
    request_timeout: float = 30.0
    """Idle wait plus request line, headers and body of one request (Core's
    ``-rpcservertimeout`` default is 30 s; a local client sends a request in milliseconds)."""
    write_timeout: float = 30.0
    """Writing one answer (a client that stops reading it is dropped)."""
    max_connections: int = 256
    """Handler threads at once; more connections wait in the listen backlog."""


@dataclass
class Reply:
    status: int
    body: bytes = b""
    content_type: str | None = None
    headers: dict[str, str] = field(default_factory=dict)


class _Watchdog:
    """One thread that shuts sockets down when their deadline passes (a blocked read or write
    on them then returns at once)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, socket.socket]] = []
        self._live: set[int] = set()
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None
        self._closed = False

    def arm(self, sock: socket.socket, seconds: float) -> int:
        token = next(self._seq)
        with self._cond:
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(target=self._run, name="http-watchdog", daemon=True)
                self._thread.start()
            heapq.heappush(self._heap, (time.monotonic() + seconds, token, sock))
            self._live.add(token)
            self._cond.notify()
        return token

    def disarm(self, token: int) -> None:
        with self._cond:
            self._live.discard(token)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(5)

    def _run(self) -> None:
        with self._cond:
            while not self._closed:
                while self._heap and self._heap[0][1] not in self._live:
                    heapq.heappop(self._heap)  # disarmed: forget it
                if not self._heap:
                    self._cond.wait()
                    continue
                deadline, token, sock = self._heap[0]
                now = time.monotonic()
                if deadline > now:
                    self._cond.wait(deadline - now)
                    continue
                heapq.heappop(self._heap)
                self._live.discard(token)
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass  # already closed by its handler


class HardenedHTTPServer(ThreadingHTTPServer):
    """A threading HTTP server with a deep backlog, a thread cap and deadlines (see module)."""

    daemon_threads = True
    request_queue_size = LISTEN_BACKLOG
    block_on_close = False

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[HardenedHandler],
        limits: Limits,
    ) -> None:
        self.limits = limits
        self.watchdog = _Watchdog()
        self._slots = threading.BoundedSemaphore(limits.max_connections)
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        # Waits (bounded: every held slot is released within a request's deadlines) while all
        # handler threads are busy; the kernel queues newer connections meanwhile.
        if not self._slots.acquire(timeout=self.limits.request_timeout):
            try:
                request.sendall(
                    b"HTTP/1.0 503 Service Unavailable\r\nContent-Length: 0\r\n"
                    b"Connection: close\r\n\r\n"
                )
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)  # type: ignore[misc]
        finally:
            self._slots.release()

    def server_close(self) -> None:
        super().server_close()
        self.watchdog.close()


_DIGITS = re.compile(r"[0-9]{1,12}")


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class HardenedHandler(BaseHTTPRequestHandler):
    """Reads a whole request within its deadline, then hands it to :meth:`respond`."""

    server: HardenedHTTPServer
    methods: frozenset[str] = frozenset({"POST"})

    def setup(self) -> None:
        # A per-read backstop under the watchdog's whole-request deadline.
        self.request.settimeout(self.server.limits.request_timeout)
        super().setup()

    # -- to implement ----------------------------------------------------------------------------

    def respond(self, method: str, body: bytes) -> Reply:
        raise NotImplementedError

    def error_reply(self, status: int, message: str) -> Reply:
        """The answer to a request refused before :meth:`respond` (bad framing, too large)."""
        return Reply(status, message.encode(), "text/plain; charset=utf-8")

    def internal_error(self) -> Reply:
        return Reply(500, b"internal error", "text/plain; charset=utf-8")

    def log_message(self, format: str, *args: Any) -> None:
        _log.debug("%s: " + format, type(self).__name__, *args)

    # -- the request cycle ---------------------------------------------------------------------

    def handle_one_request(self) -> None:
        limits = self.server.limits
        watchdog = self.server.watchdog
        token = watchdog.arm(self.connection, limits.request_timeout)
        try:
            request = self._read_request()
        finally:
            watchdog.disarm(token)
        if request is None:
            self.close_connection = True
            return
        if isinstance(request, Reply):
            reply = request
            self.close_connection = True  # the body may be unread: the stream is not framed
        else:
            method, body = request
            try:
                reply = self.respond(method, body)
            except Exception:
                _log.exception("%s: request failed", type(self).__name__)
                reply = self.internal_error()
        token = watchdog.arm(self.connection, limits.write_timeout)
        try:
            self._write(reply)
        except OSError:
            self.close_connection = True
        finally:
            watchdog.disarm(token)

    def _read_request(self) -> tuple[str, bytes] | Reply | None:
        """(method, body), a refusal to send, or ``None`` when the connection is gone."""
        try:
            self.raw_requestline = self.rfile.readline(65537)
        except OSError:
            return None
        if not self.raw_requestline:
            return None
        if len(self.raw_requestline) > 65536:
            return self.error_reply(414, "request line too long")
        try:
            parsed = self.parse_request()  # on failure it has already answered (400/414/431)
        except (OSError, http.client.HTTPException):
            return None
        if not parsed:
            return None
        if self.command not in self.methods:
            reply = self.error_reply(405, f"method {self.command} not allowed")
            reply.headers["Allow"] = ", ".join(sorted(self.methods))
            return reply
        try:
            length = self._content_length()
        except _Refused as exc:
            return self.error_reply(exc.status, exc.message)
        if length > self.server.limits.max_body:
            return self.error_reply(
                413, f"body of {length} bytes is over the {self.server.limits.max_body} limit"
            )
        try:
            body = self.rfile.read(length) if length else b""
        except OSError:
            return None
        if len(body) != length:
            return None  # the client went away (or its deadline passed) mid-body
        return self.command, body

    def _content_length(self) -> int:
        if self.headers.get_all("Transfer-Encoding"):
            if self.headers.get_all("Content-Length"):
                raise _Refused(400, "both Transfer-Encoding and Content-Length")
            raise _Refused(501, "Transfer-Encoding is not supported; send a Content-Length")
        values = self.headers.get_all("Content-Length") or []
        if not values:
            return 0
        numbers = set()
        for value in values:
            for part in str(value).split(","):
                part = part.strip(" \t")
                if not _DIGITS.fullmatch(part):
                    raise _Refused(400, f"malformed Content-Length {str(value)[:40]!r}")
                numbers.add(int(part))
        if len(numbers) != 1:
            raise _Refused(400, "conflicting Content-Length values")
        return numbers.pop()

    def _write(self, reply: Reply) -> None:
        self.send_response(reply.status)
        if reply.content_type is not None:
            self.send_header("Content-Type", reply.content_type)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(reply.body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if reply.body and self.command != "HEAD":
            self.wfile.write(reply.body)
        self.wfile.flush()

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # parse_request's own refusals (bad request line, too many or too long headers), in the
        # server's error shape.
        self.close_connection = True
        try:
            self._write(self.error_reply(code, message or explain or "bad request"))
        except OSError:
            pass


MAX_JSON_DEPTH = 512
"""Bitcoin Core's UniValue limit. The JSON decoder recurses once per level in C; py-evm raises
Python's recursion limit to 100,000 on import, so a few hundred kB of ``[`` would overflow a
handler thread's C stack and kill the process (found by the attacker's pass over these
servers) instead of raising RecursionError. The depth is checked before parsing."""

_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_JSON_BRACKET = re.compile(rb"[\[\]{}]")


def json_too_deep(body: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether ``body`` (JSON text) nests arrays and objects deeper than ``limit``."""
    if body.count(b"[") + body.count(b"{") <= limit:
        return False  # the common case, at C speed
    depth = 0
    for match in _JSON_BRACKET.finditer(_JSON_STRING.sub(b'""', body)):
        if match[0] in (b"[", b"{"):
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


def serve(server: HardenedHTTPServer, name: str) -> threading.Thread:
    """Run ``server`` in a daemon thread."""
    thread = threading.Thread(target=server.serve_forever, name=name, daemon=True)
    thread.start()
    return thread
