"""Authenticated, encrypted links between nodes: TLS 1.3 bound to the Ed25519 node key.

Each node presents a self-signed X.509 certificate whose key *is* its Ed25519 node key, so TLS
1.3's CertificateVerify proves the server holds the node key for this very handshake. The stdlib
``ssl`` module cannot accept a self-signed client certificate, so the client proves its key
inside the encrypted channel: both sides exchange ``hello`` (node id, listening port, fresh
32-byte nonce) and then sign ``(peer nonce, own nonce, server id from the certificate, client
id, TLS channel binding)``. Because the client signs the server identity it authenticated via
TLS, a relay that terminates TLS itself cannot reuse the client's signature towards the real
server. (Measured against Noise in docs/exchange.md.)

After the handshake a :class:`Link` carries length-prefixed :class:`~kofo.wire.exchange.Frame`
s with a per-link token bucket and a bounded write buffer.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import ssl
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)
from cryptography.x509.oid import NameOID

from kofo.errors import KofoError
from kofo.exchange.frames import FrameDecoder, FrameTooLarge, encode_frame
from kofo.wire.codec import encode
from kofo.wire.envelope import BadMessage, verify_ed25519
from kofo.wire.exchange import Frame

log = logging.getLogger("kofo.exchange.transport")

AUTH_DOMAIN = b"KOFO/link-auth/v1\x00"

HANDSHAKE_TIMEOUT_S = 5.0
"""TLS plus two frames each way over loopback or a LAN takes milliseconds; five seconds allows
slow links while stopping a peer that opens connections and never finishes (slowloris)."""

WRITE_BUFFER_LIMIT = 4 * 1024 * 1024
"""A peer that does not read fills our write buffer; past 4 MiB (some thousands of frames) we
drop frames to it rather than grow without bound, and the peer manager scores it down."""


class LinkError(KofoError):
    code = "link_error"


def node_id_of(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def _certificate(key: Ed25519PrivateKey) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node_id_of(key).hex())])
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .sign(key, None)
    )


@dataclass(frozen=True, slots=True)
class TlsIdentity:
    node_id: bytes
    server: ssl.SSLContext
    client: ssl.SSLContext


def tls_identity(key: Ed25519PrivateKey) -> TlsIdentity:
    cert = _certificate(key)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    for ctx in (server, client):
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    # Peers are identified by their key, not by a CA: the certificate is checked by hand
    # (its key must equal the node id the peer claims) and the client proves its key in-band.
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    # ssl only loads certificates from files; the directory is private and removed at once.
    with tempfile.TemporaryDirectory() as tmp:
        cert_path, key_path = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
        with open(cert_path, "wb") as f:
            f.write(cert.public_bytes(Encoding.PEM))
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
        server.load_cert_chain(cert_path, key_path)
    return TlsIdentity(node_id_of(key), server, client)


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved up."""

    __slots__ = ("_burst", "_last", "_rate", "_tokens")

    def __init__(self, rate: float, burst: float) -> None:
        self._rate, self._burst = rate, burst
        self._tokens = burst
        self._last = time.monotonic()

    def peek(self) -> float:
        """The tokens available now (refilled, none taken)."""
        now = time.monotonic()
        self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
        self._last = now
        return self._tokens

    def take(self, n: float = 1.0) -> bool:
        now = time.monotonic()
        self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
        self._last = now
        if self._tokens >= n:
            self._tokens -= n
            return True
        return False


@dataclass(frozen=True, slots=True)
class LinkLimits:
    frames_per_s: float = 20_000.0
    burst: float = 40_000.0


FrameHandler = Callable[["Link", Frame], None]
AbuseHandler = Callable[["Link", str, int], None]


class Link:
    """One authenticated connection to a peer."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        peer_id: bytes,
        peer_port: int,
        outbound: bool,
        limits: LinkLimits,
    ) -> None:
        self.reader, self.writer = reader, writer
        self.peer_id, self.peer_port, self.outbound = peer_id, peer_port, outbound
        self._bucket = TokenBucket(limits.frames_per_s, limits.burst)
        self._decoder = FrameDecoder()
        self.closed = False
        # A swap link (set by the node): opened for direct messages between the two traders
        # of an order, never a mesh link (no book, gossip, claims or routes cross it).
        self.swap_only = False
        self.frames_in = 0
        self.frames_out = 0
        self.dropped_out = 0
        # Liveness (monotonic): when a byte was last read from the peer and when a frame was
        # last written to it (the node pings a link it has sent nothing on for a while and
        # drops one it has read nothing from for longer: ``ExchangeConfig.keepalive_s``).
        self.last_read = self.last_sent = time.monotonic()

    def __repr__(self) -> str:
        return f"Link({self.peer_id.hex()[:12]}, {'out' if self.outbound else 'in'})"

    def send(self, frame: Frame) -> bool:
        return self.send_raw(encode_frame(frame.to_bytes()))

    def send_raw(self, framed: bytes) -> bool:
        if self.closed:
            return False
        transport = self.writer.transport
        if transport.is_closing() or transport.get_write_buffer_size() > WRITE_BUFFER_LIMIT:
            self.dropped_out += 1
            return False
        self.writer.write(framed)
        self.frames_out += 1
        self.last_sent = time.monotonic()
        return True

    async def run(self, on_frame: FrameHandler, on_abuse: AbuseHandler) -> None:
        """Read until the peer goes away or is cut off; every bad frame is reported with its
        reason and a penalty, and never raises out of here."""
        try:
            while not self.closed:
                data = await self.reader.read(65536)
                if not data:
                    return
                self.last_read = time.monotonic()
                try:
                    payloads = self._decoder.feed(data)
                except FrameTooLarge as exc:
                    on_abuse(self, str(exc), 1000)
                    return
                for payload in payloads:
                    if self.closed:
                        return
                    self.frames_in += 1
                    if not self._bucket.take():
                        on_abuse(self, "rate limit exceeded", 1)
                        continue
                    try:
                        frame = Frame.from_bytes(payload)
                    except BadMessage as exc:
                        on_abuse(self, str(exc), 20)
                        continue
                    on_frame(self, frame)
        except (ConnectionError, OSError, asyncio.IncompleteReadError, ssl.SSLError):
            return
        finally:
            self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.writer.close()

    def abort(self) -> None:
        """Close at once, unsent data dropped: for a peer that reads nothing, where a clean
        close would wait on a TLS shutdown (and the read loop on its end) it never answers."""
        self.closed = True
        self.writer.transport.abort()


async def _read_frame(reader: asyncio.StreamReader) -> Frame:
    header = await reader.readexactly(4)
    size = int.from_bytes(header, "big")
    if size > 4096:
        raise LinkError(f"handshake frame announces {size} bytes")
    return Frame.from_bytes(await reader.readexactly(size))


def _auth_message(
    peer_nonce: bytes, own_nonce: bytes, server_id: bytes, client_id: bytes, binding: bytes
) -> bytes:
    return AUTH_DOMAIN + encode([peer_nonce, own_nonce, server_id, client_id, binding])


def _channel_binding(writer: asyncio.StreamWriter) -> bytes:
    obj: Any = writer.get_extra_info("ssl_object")
    value = obj.get_channel_binding("tls-unique") if obj is not None else None
    return value or b""


def _peer_cert_key(writer: asyncio.StreamWriter) -> bytes:
    obj: Any = writer.get_extra_info("ssl_object")
    der = obj.getpeercert(binary_form=True) if obj is not None else None
    if not der:
        raise LinkError("server presented no certificate")
    pub = x509.load_der_x509_certificate(der).public_key()
    if not isinstance(pub, Ed25519PublicKey):
        raise LinkError("server certificate key is not Ed25519")
    return pub.public_bytes(Encoding.Raw, PublicFormat.Raw)


async def handshake(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    key: Ed25519PrivateKey,
    own_port: int,
    *,
    outbound: bool,
    expect: bytes | None = None,
) -> tuple[bytes, int]:
    """Run the in-band authentication; return the peer's (node id, listening port)."""
    me = node_id_of(key)
    nonce = os.urandom(32)
    writer.write(
        encode_frame(Frame("hello", {"node": me, "port": own_port, "nonce": nonce}).to_bytes())
    )
    hello = await _read_frame(reader)
    b = hello.body
    if hello.type != "hello" or set(b) != {"node", "port", "nonce"}:
        raise LinkError("first frame must be hello")
    peer, port, peer_nonce = b["node"], b["port"], b["nonce"]
    if not (isinstance(peer, bytes) and len(peer) == 32 and isinstance(peer_nonce, bytes)):
        raise LinkError("hello: bad node id or nonce")
    if type(port) is not int or not 0 <= port < 65536 or len(peer_nonce) != 32:
        raise LinkError("hello: bad port or nonce")
    if peer == me:
        raise LinkError("connected to ourselves")
    if outbound:
        if _peer_cert_key(writer) != peer:
            raise LinkError("server certificate key differs from its hello node id")
        if expect is not None and peer != expect:
            raise LinkError(f"expected peer {expect.hex()[:16]}, got {peer.hex()[:16]}")
    server_id, client_id = (peer, me) if outbound else (me, peer)
    binding = _channel_binding(writer)
    sig = key.sign(_auth_message(peer_nonce, nonce, server_id, client_id, binding))
    writer.write(encode_frame(Frame("auth", {"sig": sig}).to_bytes()))
    auth = await _read_frame(reader)
    peer_sig = auth.body.get("sig")
    if auth.type != "auth" or not isinstance(peer_sig, bytes) or len(peer_sig) != 64:
        raise LinkError("second frame must be auth")
    if not verify_ed25519(
        peer, peer_sig, _auth_message(nonce, peer_nonce, server_id, client_id, binding)
    ):
        raise LinkError("peer's link signature does not verify")
    return peer, port
