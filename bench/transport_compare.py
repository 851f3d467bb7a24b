"""TLS 1.3 (our transport) against Noise_XX (``noiseprotocol``) on this machine; prints JSON.

``python -m bench.transport_compare [--repeat N]`` (needs ``pip install noiseprotocol==0.3.1``,
a bench-only dependency). A server process listens with both; the client (this process) runs,
over each channel on 127.0.0.1:

* ``handshake_ms``: TCP connect + handshake until the client has authenticated the server's
  Ed25519 node key and sent its own proof (p50/p99 of 200 fresh connections);
* ``rtt_us``: a framed ping answered by a framed pong (p50/p99 of 2,000 round trips);
* ``flood_frames_per_s``: 50,000 one-way frames with a 200-byte body, first write until the
  server's count comes back (the server decodes every frame).

Both channels carry the same thing: 4-byte length + canonical CBOR frame
(:class:`kofo.wire.exchange.Frame`), each frame one write. For TLS that write becomes one TLS
record; for Noise one transport message (2-byte length + ciphertext, as the Noise spec frames
them). Both prove the same identity: TLS through the node-key certificate plus the in-band
``auth`` frames of :mod:`kofo.exchange.transport`; Noise_XX_25519_ChaChaPoly_SHA256 (libp2p's
suite) with X25519 static keys, each side's static key signed by its Ed25519 node key in the
handshake payload (libp2p's binding), because Noise has no Ed25519 static keys.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import statistics
import time
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from noise.connection import Keypair, NoiseConnection

from kofo.exchange.frames import FrameDecoder, encode_frame
from kofo.exchange.transport import (
    Link,
    LinkLimits,
    TokenBucket,
    handshake,
    node_id_of,
    tls_identity,
)
from kofo.wire.envelope import verify_ed25519
from kofo.wire.exchange import Frame

NOISE_NAME = b"Noise_XX_25519_ChaChaPoly_SHA256"
PROLOGUE = b"KOFO/noise-bench/v1"
STATIC_DOMAIN = b"KOFO/noise-static/v1\x00"
PING = encode_frame(Frame("ping", {}).to_bytes())
PONG = encode_frame(Frame("pong", {}).to_bytes())
FLOOD = encode_frame(Frame("flood", {"pad": b"x" * 200}).to_bytes())
END = encode_frame(Frame("end", {}).to_bytes())
HANDSHAKES, ROUND_TRIPS, FLOOD_FRAMES = 200, 2_000, 50_000


# ------------------------------------------------------------------------------- Noise channel


class NoiseChannel:
    """A Noise transport over asyncio streams: ``u16 length || ciphertext`` per message."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: NoiseConnection
    ) -> None:
        self.reader, self.writer, self.conn = reader, writer, conn
        self._buf = bytearray()
        self._frames = FrameDecoder()

    def write(self, framed: bytes) -> None:
        ct = self.conn.encrypt(framed)
        self.writer.write(len(ct).to_bytes(2, "big") + ct)

    async def read(self) -> list[bytes]:
        """The frame payloads from whatever arrived next (empty list: peer closed)."""
        while True:
            data = await self.reader.read(65536)
            if not data:
                return []
            self._buf += data
            out: list[bytes] = []
            pos = 0
            while len(self._buf) - pos >= 2:
                size = int.from_bytes(self._buf[pos : pos + 2], "big")
                if len(self._buf) - pos - 2 < size:
                    break
                plain = self.conn.decrypt(bytes(self._buf[pos + 2 : pos + 2 + size]))
                out += self._frames.feed(plain)
                pos += 2 + size
            del self._buf[:pos]
            if out:
                return out


async def _read_msg(reader: asyncio.StreamReader) -> bytes:
    size = int.from_bytes(await reader.readexactly(2), "big")
    return await reader.readexactly(size)


def _write_msg(writer: asyncio.StreamWriter, msg: bytes) -> None:
    writer.write(len(msg).to_bytes(2, "big") + msg)


def _static_proof(node_key: Ed25519PrivateKey, static_pub: bytes) -> bytes:
    return node_id_of(node_key) + node_key.sign(STATIC_DOMAIN + static_pub)


def _check_proof(payload: bytes, remote_static: bytes) -> bytes:
    node, sig = payload[:32], payload[32:]
    if len(payload) != 96 or not verify_ed25519(node, sig, STATIC_DOMAIN + remote_static):
        raise ValueError("noise: the peer's static key is not signed by its node key")
    return node


def _noise(static: X25519PrivateKey, initiator: bool) -> NoiseConnection:
    conn = NoiseConnection.from_name(NOISE_NAME)
    conn.set_prologue(PROLOGUE)
    conn.set_keypair_from_private_bytes(Keypair.STATIC, static.private_bytes_raw())
    if initiator:
        conn.set_as_initiator()
    else:
        conn.set_as_responder()
    conn.start_handshake()
    return conn


async def noise_client(
    host: str, port: int, node_key: Ed25519PrivateKey
) -> tuple[NoiseChannel, bytes]:
    reader, writer = await asyncio.open_connection(host, port)
    static = X25519PrivateKey.generate()
    conn = _noise(static, initiator=True)
    _write_msg(writer, bytes(conn.write_message()))  # -> e
    hs = conn.noise_protocol.handshake_state  # kept: the library drops it when done
    payload = bytes(conn.read_message(await _read_msg(reader)))  # <- e, ee, s, es + proof
    peer = _check_proof(payload, hs.rs.public_bytes)
    proof = _static_proof(node_key, static.public_key().public_bytes_raw())
    _write_msg(writer, bytes(conn.write_message(proof)))  # -> s, se + proof
    return NoiseChannel(reader, writer, conn), peer


async def noise_server_handshake(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, node_key: Ed25519PrivateKey
) -> NoiseChannel:
    static = X25519PrivateKey.generate()
    conn = _noise(static, initiator=False)
    conn.read_message(await _read_msg(reader))
    proof = _static_proof(node_key, static.public_key().public_bytes_raw())
    _write_msg(writer, bytes(conn.write_message(proof)))
    hs = conn.noise_protocol.handshake_state
    payload = bytes(conn.read_message(await _read_msg(reader)))
    _check_proof(payload, hs.rs.public_bytes)
    return NoiseChannel(reader, writer, conn)


# ------------------------------------------------------------------------------- server process


def _server_process(ports: Any, stop: Any) -> None:
    async def run() -> None:
        key = Ed25519PrivateKey.generate()
        tls = tls_identity(key)
        flood_seen = {"n": 0}

        def on_frame(link: Link, frame: Frame) -> None:
            if frame.type == "ping":
                link.send_raw(PONG)
            elif frame.type == "flood":
                flood_seen["n"] += 1
            elif frame.type == "end":
                link.send(Frame("count", {"n": flood_seen["n"]}))
                flood_seen["n"] = 0

        async def tls_conn(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            try:
                peer, port = await handshake(r, w, key, 0, outbound=False)
            except Exception:
                w.close()
                return
            link = Link(r, w, peer, port, False, LinkLimits(10**9, 10**9))
            await link.run(on_frame, lambda _lk, _why, _pen: None)

        async def noise_conn(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            try:
                ch = await noise_server_handshake(r, w, key)
            except Exception:
                w.close()
                return
            seen = 0
            bucket = TokenBucket(10**9, 10**9)  # the same per-frame work as Link.run
            try:
                while payloads := await ch.read():
                    for p in payloads:
                        bucket.take()
                        frame = Frame.from_bytes(p)
                        if frame.type == "ping":
                            ch.write(PONG)
                        elif frame.type == "flood":
                            seen += 1
                        elif frame.type == "end":
                            ch.write(encode_frame(Frame("count", {"n": seen}).to_bytes()))
                            seen = 0
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                w.close()

        s1 = await asyncio.start_server(tls_conn, "127.0.0.1", 0, ssl=tls.server, limit=1 << 20)
        s2 = await asyncio.start_server(noise_conn, "127.0.0.1", 0, limit=1 << 20)
        ports.put((s1.sockets[0].getsockname()[1], s2.sockets[0].getsockname()[1]))
        while not stop.is_set():
            await asyncio.sleep(0.05)
        s1.close()
        s2.close()

    asyncio.run(run())


# ------------------------------------------------------------------------------- client side


class _TlsClient:
    def __init__(self, key: Ed25519PrivateKey, port: int) -> None:
        self.key, self.port = key, port
        self.tls = tls_identity(key)

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        r, w = await asyncio.open_connection(
            "127.0.0.1", self.port, ssl=self.tls.client, limit=1 << 20
        )
        await handshake(r, w, self.key, 0, outbound=True)
        return r, w


async def _tls_frames(r: asyncio.StreamReader, dec: FrameDecoder) -> list[bytes]:
    while True:
        data = await r.read(65536)
        if not data:
            raise ConnectionError("server closed")
        out = dec.feed(data)
        if out:
            return out


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


async def measure_tls(port: int) -> dict[str, float]:
    client = _TlsClient(Ed25519PrivateKey.generate(), port)
    hs = []
    for _ in range(HANDSHAKES):
        t = time.perf_counter()
        _, w = await client.connect()
        hs.append((time.perf_counter() - t) * 1000)
        w.close()
    r, w = await client.connect()
    dec = FrameDecoder()
    rtt = []
    for _ in range(ROUND_TRIPS):
        t = time.perf_counter()
        w.write(PING)
        await _tls_frames(r, dec)
        rtt.append((time.perf_counter() - t) * 1e6)
    t = time.perf_counter()
    for i in range(FLOOD_FRAMES):
        w.write(FLOOD)
        if i % 200 == 0:
            await w.drain()
    w.write(END)
    got = Frame.from_bytes((await _tls_frames(r, dec))[0])
    elapsed = time.perf_counter() - t
    w.close()
    return _summary(hs, rtt, got.body["n"], elapsed)


async def measure_noise(port: int) -> dict[str, float]:
    key = Ed25519PrivateKey.generate()
    hs = []
    for _ in range(HANDSHAKES):
        t = time.perf_counter()
        ch, _ = await noise_client("127.0.0.1", port, key)
        hs.append((time.perf_counter() - t) * 1000)
        ch.writer.close()
    ch, _ = await noise_client("127.0.0.1", port, key)
    rtt = []
    for _ in range(ROUND_TRIPS):
        t = time.perf_counter()
        ch.write(PING)
        await ch.read()
        rtt.append((time.perf_counter() - t) * 1e6)
    t = time.perf_counter()
    for i in range(FLOOD_FRAMES):
        ch.write(FLOOD)
        if i % 200 == 0:
            await ch.writer.drain()
    ch.write(END)
    got = Frame.from_bytes((await ch.read())[0])
    elapsed = time.perf_counter() - t
    ch.writer.close()
    return _summary(hs, rtt, got.body["n"], elapsed)


def _summary(hs: list[float], rtt: list[float], n: int, elapsed: float) -> dict[str, float]:
    if n != FLOOD_FRAMES:
        raise AssertionError(f"server counted {n} of {FLOOD_FRAMES} flood frames")
    return {
        "handshake_ms_p50": round(_pct(hs, 0.5), 3),
        "handshake_ms_p99": round(_pct(hs, 0.99), 3),
        "rtt_us_p50": round(_pct(rtt, 0.5), 1),
        "rtt_us_p99": round(_pct(rtt, 0.99), 1),
        "flood_frames_per_s": round(n / elapsed),
    }


def _spread(runs: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    return {
        k: {
            "min": min(r[k] for r in runs),
            "median": statistics.median(r[k] for r in runs),
            "max": max(r[k] for r in runs),
        }
        for k in runs[0]
    }


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    ctx = mp.get_context("spawn")
    ports, stop = ctx.Queue(), ctx.Event()
    proc = ctx.Process(target=_server_process, args=(ports, stop))
    proc.start()
    try:
        tls_port, noise_port = await asyncio.to_thread(ports.get, True, 60)
        tls_runs, noise_runs = [], []
        load_before = os.getloadavg()
        for _ in range(args.repeat):
            # Interleaved, so a burst of load from other users hits both alike.
            tls_runs.append(await measure_tls(tls_port))
            noise_runs.append(await measure_noise(noise_port))
        out = {
            "machine_note": "2 shared cores; server and client in separate processes, loopback",
            "load_avg_before": load_before,
            "load_avg_after": os.getloadavg(),
            "runs": args.repeat,
            "tls13_ed25519_cert_plus_inband_auth": _spread(tls_runs),
            "noise_xx_25519_chachapoly_sha256_noiseprotocol_0_3_1": _spread(noise_runs),
        }
        print(json.dumps(out, indent=2))
    finally:
        await asyncio.sleep(0.3)  # let the server see the last connections close
        stop.set()
        await asyncio.to_thread(proc.join, 10)
        if proc.is_alive():
            proc.terminate()


if __name__ == "__main__":
    asyncio.run(main())
