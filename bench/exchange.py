"""Exchange-layer measurements; prints one JSON object.

``python -m bench.exchange`` measures, on this machine:
* claim -> best-fulfil latency over a 5-hop line (p50/p99), nodes in one process over real TLS;
* messages per claim in a 100-node random graph against its number of edges (one process);
* offer propagation time to 95 % of 100 nodes (one process);
* frames/s one node sustains (ping frames, and signed offer frames that cost a verify each),
  with the sender in the same process and, to measure only the receiving node's cost, in a
  separate process.

``python -m bench.exchange --only frames`` runs only the frames/s part, ``--repeat N`` repeats
each frames/s measurement (the machine is shared, so the spread matters).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import random
import statistics
import time
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from tests.exchange.helpers import line, link, start_nodes, stop_all, wait_until

from kofo.exchange.frames import encode_frame
from kofo.exchange.node import ExchangeConfig, ExchangeNode
from kofo.exchange.transport import LinkLimits
from kofo.wire.exchange import Frame, Offer, make_offer

ADDR = {"btc": "b", "eth": "e"}


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, int(q * len(xs)))], 2)


async def five_hop_latency(rounds: int = 200) -> dict[str, float]:
    nodes = await line(6, addresses=ADDR)
    try:
        nodes[-1].publish_offer("btc", "eth", (30, 1), max_in=10**9)
        await wait_until(lambda: len(nodes[0].book) == 1)
        lat = []
        for _ in range(rounds):
            t = time.perf_counter()
            _, q = await nodes[0].request_quotes("btc", "eth", 10**6, window_s=2, enough=1)
            assert q
            lat.append((time.perf_counter() - t) * 1000)
        return {"p50_ms": pct(lat, 0.5), "p99_ms": pct(lat, 0.99), "rounds": rounds}
    finally:
        await stop_all(nodes)


async def random_graph(n: int, extra: int, rng: random.Random) -> tuple[list[ExchangeNode], int]:
    nodes = await start_nodes(n, target_degree=0, max_degree=64, addresses=ADDR)
    edges: set[tuple[int, int]] = set()
    for i in range(1, n):
        edges.add((rng.randrange(i), i))
    while len(edges) < n - 1 + extra:
        a, b = sorted(rng.sample(range(n), 2))
        edges.add((a, b))
    await asyncio.gather(*(link(nodes[b], nodes[a]) for a, b in edges))
    return nodes, len(edges)


def frames_out(nodes: list[ExchangeNode]) -> int:
    return sum(lk.frames_out for n in nodes for lk in n.links.values())


async def graph_metrics(rng: random.Random) -> dict[str, object]:
    nodes, n_edges = await random_graph(100, 150, rng)
    try:
        # offer propagation to 95 % of nodes
        prop = []
        for _ in range(5):
            maker = rng.choice(nodes)
            seen: list[float] = []
            t0 = time.perf_counter()
            before = {id(n): len(n.book) for n in nodes}
            so = maker.publish_offer("btc", "eth", (rng.randint(2, 40), 1), max_in=10**9)
            await wait_until(lambda so=so: sum(1 for n in nodes if so.key in n.book) >= 95, 10)
            seen.append(time.perf_counter() - t0)
            prop.append(seen[0] * 1000)
            del before
        # messages per claim (claim + fulfil frames, all hops), nobody settles
        counts = []
        for _ in range(10):
            init = rng.choice(nodes)
            before = frames_out(nodes)
            await init.request_quotes("btc", "eth", 10**6, window_s=0.4, max_hops=6)
            await asyncio.sleep(0.05)
            counts.append(frames_out(nodes) - before)
        return {
            "nodes": 100,
            "edges": n_edges,
            "messages_per_claim_mean": statistics.mean(counts),
            "messages_per_claim_max": max(counts),
            "ratio_to_edges": round(max(counts) / n_edges, 3),
            "offer_propagation_95pct_ms_p50": pct(prop, 0.5),
            "offer_propagation_95pct_ms_max": round(max(prop), 2),
        }
    finally:
        await stop_all(nodes)


async def frames_per_second(kind: str, count: int = 20_000) -> float:
    nodes = await start_nodes(2, target_degree=0, limits=LinkLimits(10**6, 10**6))
    try:
        sink, src = nodes
        await link(src, sink)
        lk = src.links[sink.node_id]
        frames = _flood_frames(kind, count)
        start_in = sink.stats.frames_in
        t0 = time.perf_counter()
        for i, framed in enumerate(frames):
            lk.send_raw(framed)
            if i % 200 == 0:
                await lk.writer.drain()
        await wait_until(lambda: sink.stats.frames_in - start_in >= count, 60)
        return round(count / (time.perf_counter() - t0))
    finally:
        await stop_all(nodes)


def _flood_frames(kind: str, count: int) -> list[bytes]:
    if kind == "ping":
        return [encode_frame(Frame("ping", {}).to_bytes())] * count
    # Distinct offers from many makers, so nothing is a duplicate and every one costs a verify
    # (at most 60 per maker: a node keeps 64 per maker). Protocol v2: seq is the signing time.
    makers = [Ed25519PrivateKey.generate() for _ in range(max(50, count // 60 + 1))]
    seq = int(time.time() * 1000)
    expiry = seq + 3_600_000
    return [
        encode_frame(
            Frame(
                "offer",
                {
                    "m": make_offer(
                        makers[i % len(makers)],
                        Offer(os.urandom(16), "btc", "eth", 3, 1, 1, 10, True, 0, expiry, seq),
                    ).raw
                },
            ).to_bytes()
        )
        for i in range(count)
    ]


def _sender_process(port: int, kind: str, count: int, go: Any, done: Any) -> None:
    """Child process: prepare every frame first, then connect and write them as fast as the
    link drains, so the receiver's own cost is what limits the rate."""

    async def run() -> None:
        frames = _flood_frames(kind, count)
        node = ExchangeNode(Ed25519PrivateKey.generate(), ExchangeConfig(target_degree=0))
        await node.start()
        try:
            await node.connect("127.0.0.1", port)
            go.wait()
            lk = next(iter(node.links.values()))
            for i, framed in enumerate(frames):
                lk.send_raw(framed)
                if i % 200 == 0:
                    await lk.writer.drain()
            await lk.writer.drain()
            while not done.is_set():
                await asyncio.sleep(0.05)
        finally:
            await node.stop()

    asyncio.run(run())


async def frames_per_second_remote(kind: str, count: int) -> float:
    """Frames/s one node handles from a peer in another process (first to last frame as
    seen by the receiver)."""
    ctx = mp.get_context("spawn")
    go, done = ctx.Event(), ctx.Event()
    sink = ExchangeNode(
        Ed25519PrivateKey.generate(),
        ExchangeConfig(target_degree=0, limits=LinkLimits(10**6, 10**6)),
    )
    await sink.start()
    proc = ctx.Process(target=_sender_process, args=(sink.port, kind, count, go, done))
    proc.start()
    try:
        await wait_until(lambda: len(sink.links) == 1, 120)
        start = sink.stats.frames_in
        go.set()
        await wait_until(lambda: sink.stats.frames_in > start, 60)
        t0 = time.perf_counter()
        first = sink.stats.frames_in
        await wait_until(lambda: sink.stats.frames_in - start >= count, 120)
        elapsed = time.perf_counter() - t0
        rejected = sum(sink.stats.rejected.values())
        if rejected or (kind == "offer" and len(sink.book) != count):
            raise AssertionError(f"sink rejected {rejected}, book {len(sink.book)}")
        return round((sink.stats.frames_in - first) / elapsed)
    finally:
        done.set()
        await sink.stop()
        await asyncio.to_thread(proc.join, 30)


def spread(xs: list[float]) -> dict[str, float]:
    return {"min": min(xs), "median": statistics.median(xs), "max": max(xs), "runs": len(xs)}


async def frames_metrics(repeat: int) -> dict[str, object]:
    out: dict[str, object] = {}
    for name, coro_fn in (
        ("ping_same_process", lambda: frames_per_second("ping")),
        ("signed_offers_same_process", lambda: frames_per_second("offer", 5_000)),
        ("ping_sender_in_other_process", lambda: frames_per_second_remote("ping", 50_000)),
        (
            "signed_offers_sender_in_other_process",
            lambda: frames_per_second_remote("offer", 20_000),
        ),
    ):
        out[name] = spread([await coro_fn() for _ in range(repeat)])
    return out


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", choices=["frames"], default=None)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    rng = random.Random(7)
    out: dict[str, object] = {
        "machine_note": "2 shared cores; real TLS links on loopback",
        "load_avg_before": os.getloadavg(),
    }
    if args.only is None:
        out["five_hop_claim_to_best_fulfil"] = await five_hop_latency()
        out["random_graph_100"] = await graph_metrics(rng)
    out["frames_per_s"] = await frames_metrics(args.repeat)
    out["load_avg_after"] = os.getloadavg()
    out["goals"] = {"five_hop_p50_ms": 20, "messages_per_claim_max_ratio": 2, "frames_per_s": 5000}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
