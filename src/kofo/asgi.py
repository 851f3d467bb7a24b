"""KOFO's one HTTP stack: a loopback server on uvicorn (h11) for every HTTP face KOFO serves.

The daemon's API (:mod:`kofo.node.api`, FastAPI) runs on uvicorn; so do the small servers a
stranger can reach -- the embedded chain's Bitcoin Core RPC, the embedded EVM's JSON-RPC, the
swap peer channel -- and the solo ledger's CometBFT RPC, through :class:`AsgiServer`. It sits at
the package root (like :mod:`kofo.errors`) so that settlement and clearance both use it without
importing each other.

HTTP/1.1 parsing is h11's (request line, headers, ``Content-Length`` and chunked framing);
connections are uvicorn's (asyncio). What this module adds, each against a named attack:

- **slowloris** (a client that sends its request, or reads its answer, a byte at a time): one
  deadline for idle wait + request line + headers + body (``request_timeout``), another for a
  write the client stops reading (``write_timeout``); when one passes the connection is closed
  (aborted if answer bytes are still queued). uvicorn's own ``timeout_keep_alive`` only covers
  the idle wait between requests, not a request trickled in.
- **connection floods**: the listening socket is opened here with a backlog of
  :data:`LISTEN_BACKLOG`; uvicorn's ``limit_concurrency`` answers ``503`` past
  ``max_connections``; handlers (blocking calls into a lock-protected chain or engine) run on a
  bounded thread pool, never on the event loop.
- **malformed framing**: a ``Content-Length`` that is not one decimal number of at most 12
  digits, or conflicts, is ``400`` (h11 refuses most; this module the rest); a
  ``Transfer-Encoding`` is ``400`` with a ``Content-Length`` and ``501`` without: bodies are
  framed by ``Content-Length`` alone.
- **memory**: a body above ``max_body`` is ``413`` without being read; a request head above
  ``h11_max_incomplete_event_size`` (:data:`MAX_HEAD`) is ``400``.

A server implements :class:`Handler`: :meth:`Handler.respond` gets a whole :class:`Request` and
returns a :class:`Reply`; refusals before it use :meth:`Handler.error_reply`, an exception
escaping it is logged and answered by :meth:`Handler.internal_error` (without its details).
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

_log = logging.getLogger(__name__)

LISTEN_BACKLOG = 1024
"""The kernel queue of connections not yet accepted (capped by ``net.core.somaxconn``). Core's
RPC uses libevent's default (128), geth Go's (the system maximum)."""

MAX_HEAD = 64 << 10
"""Request line plus headers (h11's ``max_incomplete_event_size``; h11's default is 16 kB)."""

HANDLER_THREADS = 16
"""Threads running handlers at once per server. Each answer is a call into a lock-protected
in-process chain or the engine, so more threads would only queue on that lock."""

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


@dataclass(frozen=True)
class Limits:
    """Per-server bounds. Times in seconds, sizes in bytes."""

    max_body: int
    request_timeout: float = 30.0
    """Idle wait plus request line, headers and body of one request (Core's
    ``-rpcservertimeout`` default is 30 s; a local client sends a request in milliseconds)."""
    write_timeout: float = 30.0
    """A stalled write of one answer (a client that stops reading it is dropped)."""
    max_connections: int = 256
    """Open connections served; a request on one more is answered ``503`` (uvicorn's
    ``limit_concurrency``)."""


@dataclass
class Reply:
    status: int
    body: bytes = b""
    content_type: str | None = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    """The request target as sent (percent-escapes and query string kept), as ``http.server``'s."""
    headers: dict[str, str]
    """Lower-case names; a repeated header's values joined with ``", "``."""
    body: bytes


class Handler:
    """What a server does with a whole request (see module)."""

    methods: frozenset[str] = frozenset({"POST"})

    def respond(self, request: Request) -> Reply:
        raise NotImplementedError

    def error_reply(self, status: int, message: str) -> Reply:
        """The answer to a request refused before :meth:`respond` (bad framing, too large)."""
        return Reply(status, message.encode(), "text/plain; charset=utf-8")

    def internal_error(self) -> Reply:
        return Reply(500, b"internal error", "text/plain; charset=utf-8")


_DIGITS = re.compile(r"[0-9]{1,12}")


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _content_length(headers: list[tuple[bytes, bytes]]) -> int:
    lengths = [v for k, v in headers if k == b"content-length"]
    if any(k == b"transfer-encoding" for k, _ in headers):
        if lengths:
            raise _Refused(400, "both Transfer-Encoding and Content-Length")
        raise _Refused(501, "Transfer-Encoding is not supported; send a Content-Length")
    numbers = set()
    for value in lengths:
        for part in value.decode("latin-1").split(","):
            part = part.strip(" \t")
            if not _DIGITS.fullmatch(part):
                raise _Refused(400, f"malformed Content-Length {part[:40]!r}")
            numbers.add(int(part))
    if len(numbers) > 1:
        raise _Refused(400, "conflicting Content-Length values")
    return numbers.pop() if numbers else 0


class _App:
    """The ASGI application around one :class:`Handler`."""

    def __init__(self, handler: Handler, limits: Limits, pool: ThreadPoolExecutor) -> None:
        self.handler = handler
        self.limits = limits
        self.pool = pool

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        method: str = scope["method"]
        raw: list[tuple[bytes, bytes]] = scope["headers"]
        handler = self.handler
        if method not in handler.methods:
            reply = handler.error_reply(405, f"method {method} not allowed")
            reply.headers["Allow"] = ", ".join(sorted(handler.methods))
            await _send(send, reply, close=True)
            return
        try:
            length = _content_length(raw)
        except _Refused as exc:
            await _send(send, handler.error_reply(exc.status, exc.message), close=True)
            return
        if length > self.limits.max_body:
            refusal = f"body of {length} bytes is over the {self.limits.max_body} limit"
            await _send(send, handler.error_reply(413, refusal), close=True)
            return
        chunks: list[bytes] = []
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away (or its deadline passed) mid-body
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        headers: dict[str, str] = {}
        for name, value in raw:
            key = name.decode("latin-1")
            text = value.decode("latin-1")
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
        target: bytes = scope.get("raw_path") or scope["path"].encode()
        if scope.get("query_string"):
            target += b"?" + scope["query_string"]
        request = Request(
            method=method,
            path=target.decode("latin-1"),
            headers=headers,
            body=b"".join(chunks),
        )
        loop = asyncio.get_running_loop()
        try:
            reply = await loop.run_in_executor(self.pool, handler.respond, request)
        except Exception:
            _log.exception("%s: request failed", type(handler).__name__)
            reply = handler.internal_error()
        await _send(send, reply, head=method == "HEAD")


async def _send(send: Send, reply: Reply, *, close: bool = False, head: bool = False) -> None:
    headers = [
        (name.lower().encode("latin-1"), v.encode("latin-1")) for name, v in reply.headers.items()
    ]
    if reply.content_type is not None:
        headers.append((b"content-type", reply.content_type.encode("latin-1")))
    headers.append((b"content-length", str(len(reply.body)).encode()))
    if close:
        # The body may be unread: the stream is no longer framed.
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": reply.status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else reply.body})


class _DeadlineProtocol(H11Protocol):
    """uvicorn's h11 protocol with the request and write deadlines (see module)."""

    limits: Limits

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._read_deadline: asyncio.TimerHandle | None = None
        self._write_deadline: asyncio.TimerHandle | None = None

    def _expire(self) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if transport.get_write_buffer_size():
            transport.abort()  # close() would wait for a reader that never reads
        else:
            transport.close()

    def _arm_read(self) -> None:
        if self._read_deadline is not None:
            self._read_deadline.cancel()
        self._read_deadline = self.loop.call_later(self.limits.request_timeout, self._expire)

    def _disarm_read(self) -> None:
        if self._read_deadline is not None:
            self._read_deadline.cancel()
            self._read_deadline = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_read()

    def handle_events(self) -> None:
        super().handle_events()
        cycle = self.cycle
        if cycle is not None and not cycle.more_body and not cycle.response_complete:
            self._disarm_read()  # the whole request is in: the handler's turn

    def handle_websocket_upgrade(self, event: Any) -> None:
        self._disarm_read()  # the connection is a WebSocket's from here (its own pings)
        super().handle_websocket_upgrade(event)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm_read()  # idle wait for the next request (and the answer's last bytes)

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._write_deadline is None:
            self._write_deadline = self.loop.call_later(self.limits.write_timeout, self._expire)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._write_deadline is not None:
            self._write_deadline.cancel()
            self._write_deadline = None

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_read()
        if self._write_deadline is not None:
            self._write_deadline.cancel()
            self._write_deadline = None
        super().connection_lost(exc)


def deadline_protocol(limits: Limits) -> type[asyncio.Protocol]:
    """uvicorn's h11 protocol with ``limits``' request and write deadlines, for a
    ``uvicorn.Config(http=...)`` KOFO does not run through :class:`AsgiServer` (the daemon's
    API, served on the daemon's own event loop)."""
    return type("_Protocol", (_DeadlineProtocol,), {"limits": limits})


class AsgiServer:
    """Serves an ASGI app on ``host:port`` (loopback; 0 = a free port) in a background thread.

    The socket listens from construction (connections queue in the kernel until :meth:`start`);
    :meth:`start` returns once uvicorn accepts; :meth:`stop` closes every connection and joins
    the thread. Pass a :class:`Handler` (wrapped with the limits above) or any ASGI app (served
    with the same deadlines, e.g. the node's FastAPI app).
    """

    def __init__(
        self,
        app: Handler | Callable[[Scope, Receive, Send], Awaitable[None]],
        limits: Limits,
        *,
        name: str,
        host: str = "127.0.0.1",
        port: int = 0,
        threads: int = HANDLER_THREADS,
    ) -> None:
        self.name = name
        self.limits = limits
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix=name)
        asgi = _App(app, limits, self._pool) if isinstance(app, Handler) else app
        protocol = deadline_protocol(limits)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # proto=IPPROTO_TCP: asyncio sets TCP_NODELAY only on sockets that say so; without it
        # the answer's head and body (two writes) wait on the client's delayed ACK (~40 ms).
        self._sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._sock.bind((host, port))
            self._sock.listen(LISTEN_BACKLOG)
            self._sock.setblocking(False)
        except BaseException:
            self._sock.close()
            raise
        config = uvicorn.Config(
            asgi,
            http=protocol,
            ws="none",
            lifespan="off",
            loop="asyncio",
            log_config=None,
            access_log=False,
            proxy_headers=False,
            server_header=False,
            date_header=False,
            backlog=LISTEN_BACKLOG,
            # uvicorn counts the asking connection too: +1 serves exactly max_connections.
            limit_concurrency=limits.max_connections + 1,
            timeout_keep_alive=max(1, int(limits.request_timeout)),
            timeout_graceful_shutdown=1,
            h11_max_incomplete_event_size=MAX_HEAD,
        )
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def server_address(self) -> tuple[str, int]:
        host, port = self._sock.getsockname()[:2]
        return str(host), int(port)

    @property
    def port(self) -> int:
        return self.server_address[1]

    def url(self, path: str = "") -> str:
        host, port = self.server_address
        return f"http://{host}:{port}{path}"

    def start(self) -> AsgiServer:
        if self._thread is not None:
            return self
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, name=self.name, daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 60
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError(f"{self.name}: the HTTP server did not start")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: the HTTP server did not start within 60 s")
            time.sleep(0.002)
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._server.should_exit = True
            self._thread.join(15)
            self._thread = None
        self.server_close()

    def server_close(self) -> None:
        self._sock.close()
        self._pool.shutdown(wait=False, cancel_futures=True)


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
