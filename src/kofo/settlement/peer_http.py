"""A simple authenticated HTTP channel carrying swap messages between two nodes.

``POST /kofo/v1/swap`` with a signed swap message (canonical CBOR, ``application/cbor``). The
server verifies the Ed25519 signature, refuses replays (:class:`~kofo.wire.envelope.ReplayGuard`)
and, if configured, senders not on its allow list; then hands the message to the engine and
answers ``200`` with the signed reply or ``204`` with none. Refusals are ``4xx`` with a JSON body
``{"code", "message"}`` using the stable error codes. Authentication is the message signature
itself: the transport is plain HTTP on 127.0.0.1 for now (the P2P issue brings encrypted links).
"""

from __future__ import annotations

import http.client
import json
import logging
import socket
import threading
import urllib.parse
from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from kofo.asgi import AsgiServer, Limits, Reply, Request
from kofo.asgi import Handler as HttpHandler
from kofo.errors import KofoError, NotDelivered
from kofo.wire.codec import MAX_MESSAGE_BYTES
from kofo.wire.envelope import ReplayGuard, public_key_bytes
from kofo.wire.swap import SwapBody, open_swap, sign_swap

log = logging.getLogger(__name__)

PATH = "/kofo/v1/swap"
CONTENT_TYPE = "application/cbor"

SEND_TIMEOUT = 10.0
"""A peer on the same host or LAN answers in milliseconds; ten seconds covers a busy node
without letting one dead peer stall the monitor for long (notices are best-effort anyway)."""

_STATUS = {"bad_signature": 401, "replayed_message": 409, "unknown_peer": 403}


class PeerError(KofoError):
    code = "peer_error"


class PeerNotReached(PeerError, NotDelivered):
    """The peer never got the message (see :class:`~kofo.errors.NotDelivered`)."""

    code = "peer_not_reached"


Handler = Callable[[SwapBody, bytes], SwapBody | None]

LIMITS = Limits(max_body=MAX_MESSAGE_BYTES, request_timeout=10.0, write_timeout=10.0)
"""A swap message is small and a peer sends it at once: ten seconds (the client's own
``SEND_TIMEOUT``) bounds how long a stalled connection is held (issue 16 case 7)."""


def _json(status: int, code: str, message: str) -> Reply:
    data = json.dumps({"code": code, "message": message}).encode()
    return Reply(status, data, "application/json")


class PeerServer:
    """Serves the swap endpoint for one node on 127.0.0.1."""

    def __init__(
        self,
        key: Ed25519PrivateKey,
        handler: Handler,
        *,
        port: int = 0,
        allowed: set[bytes] | None = None,
        limits: Limits | None = None,
    ) -> None:
        self._key = key
        self._handler = handler
        self._guard = ReplayGuard()
        self.allowed = allowed
        server = self

        class _Req(HttpHandler):
            def error_reply(self, status: int, message: str) -> Reply:
                return _json(status, "bad_request" if status < 500 else "server_error", message)

            def internal_error(self) -> Reply:
                return _json(500, "internal_error", "internal error")

            def respond(self, request: Request) -> Reply:
                body = request.body
                if request.path != PATH:
                    return _json(404, "not_found", f"no endpoint {request.path[:100]}")
                if not body:
                    return _json(400, "bad_message", "empty body")
                try:
                    swap, sender = open_swap(body, server._guard)
                    if server.allowed is not None and sender not in server.allowed:
                        raise PeerError(
                            f"node {sender.hex()} is not a known peer", code="unknown_peer"
                        )
                    reply = server._handler(swap, sender)
                except KofoError as exc:
                    return _json(_STATUS.get(exc.code, 400), exc.code, str(exc))
                if reply is None:
                    return Reply(204)
                return Reply(200, sign_swap(server._key, reply).to_bytes(), CONTENT_TYPE)

        self._http = AsgiServer(_Req(), limits or LIMITS, name="peer-http", port=port)

    @property
    def url(self) -> str:
        host, port = self._http.server_address[:2]
        return f"http://{host!s}:{port}{PATH}"

    def start(self) -> PeerServer:
        self._http.start()
        return self

    def stop(self) -> None:
        self._http.stop()


class PeerClient:
    """Sends signed swap messages to peers and verifies their signed replies."""

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key
        self.node_id = public_key_bytes(key)
        self._guard = ReplayGuard()

    def send_bytes(self, url: str, data: bytes, *, timeout: float | None = None) -> bytes | None:
        """POST ``data`` to ``url``; the reply's bytes (``None``: 204, no reply).

        ``timeout`` (default :data:`SEND_TIMEOUT`) bounds the whole exchange -- connecting,
        sending, and reading the answer -- not each socket read: a peer that answers one byte
        at a time is cut off when it runs out, because a timer shuts the socket down. The
        answer is read up to :data:`~kofo.wire.codec.MAX_MESSAGE_BYTES` and no further."""
        total = SEND_TIMEOUT if timeout is None else timeout
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise PeerNotReached(f"peer URL {url!r} is not an http:// URL")
        conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=total)
        expired = threading.Event()

        def cut_off() -> None:
            expired.set()
            sock = conn.sock
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

        timer = threading.Timer(total, cut_off)
        timer.daemon = True
        timer.start()
        try:
            try:
                conn.request(
                    "POST", parts.path or "/", body=data, headers={"Content-Type": CONTENT_TYPE}
                )
            except (OSError, http.client.HTTPException) as exc:
                # Connecting or sending failed: the peer did not get the whole message (it
                # acts only on a body of the announced length), so it did not act on it.
                raise PeerNotReached(f"peer {url} not reached: {exc!r}") from None
            try:
                resp = conn.getresponse()
                body = resp.read(MAX_MESSAGE_BYTES + 1)
            except (OSError, http.client.HTTPException, ValueError) as exc:
                # The request went out; its answer did not come (in time, or whole): it may
                # have been acted on.
                why = f"no whole answer within {total} s" if expired.is_set() else repr(exc)
                raise PeerError(
                    f"peer {url} did not answer: {why}", code="peer_unreachable"
                ) from None
            if expired.is_set():
                raise PeerError(
                    f"peer {url} did not answer within {total} s", code="peer_unreachable"
                )
            if len(body) > MAX_MESSAGE_BYTES:
                raise PeerError(
                    f"peer {url} answered more than {MAX_MESSAGE_BYTES} bytes", code="bad_message"
                )
        finally:
            timer.cancel()
            conn.close()
        if resp.status == 200:
            return body
        if 200 <= resp.status < 300:
            return None
        try:
            err = json.loads(body)
            code, message = str(err["code"]), str(err["message"])
        except (ValueError, KeyError, TypeError):
            code, message = "peer_error", f"HTTP {resp.status}"
        raise PeerError(f"peer refused the message: {message}", code=code)

    def send(
        self, url: str, body: SwapBody, *, expect_sender: bytes | None = None
    ) -> SwapBody | None:
        """Sign and send ``body``; return the peer's verified reply (if any)."""
        raw = self.send_bytes(url, sign_swap(self._key, body).to_bytes())
        if raw is None:
            return None
        reply, sender = open_swap(raw, self._guard)
        if expect_sender is not None and sender != expect_sender:
            raise PeerError("reply signed by another node than the peer", code="wrong_sender")
        return reply
