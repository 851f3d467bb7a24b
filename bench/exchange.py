"""Exchange-layer measurements; prints one JSON object.

``python -m bench.exchange`` measures, on this machine:
* claim -> best-fulfil latency over a 5-hop line (p50/p99), nodes in one process over real TLS;
* messages per claim in a 100-node random graph against its number of edges (one process);
* offer propagation time to 95 % of 100 nodes (one process);
* frames/s one node sustains (ping frames, and signed offer frames that cost a verify each).
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import time

from tests.exchange.helpers import line, link, start_nodes, stop_all, wait_until

from kofo.exchange.node import ExchangeNode
from kofo.exchange.transport import LinkLimits
from kofo.wire.exchange import Frame

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
            await wait_until(
                lambda so=so: sum(1 for n in nodes if so.key in n.book._offers) >= 95, 10
            )
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
        frames: list[Frame] = []
        if kind == "offer":
            maker = nodes[1]
            for _ in range(count):
                so = maker.publish_offer("btc", "eth", (3, 1), max_in=10)
                frames.append(Frame("offer", {"m": so.raw}))
            await asyncio.sleep(0.5)
            sink.stats.frames_in = 0
        else:
            frames = [Frame("ping", {})] * count
        start_in = sink.stats.frames_in
        t0 = time.perf_counter()
        for i, f in enumerate(frames):
            lk.send(f)
            if i % 500 == 0:
                await lk.writer.drain()
        await wait_until(lambda: sink.stats.frames_in - start_in >= count, 60)
        return round(count / (time.perf_counter() - t0))
    finally:
        await stop_all(nodes)


async def main() -> None:
    rng = random.Random(7)
    out = {
        "machine_note": "2 shared cores; all nodes of a metric in one process, real TLS links",
        "five_hop_claim_to_best_fulfil": await five_hop_latency(),
        "random_graph_100": await graph_metrics(rng),
        "frames_per_s_ping": await frames_per_second("ping"),
        "frames_per_s_signed_offers": await frames_per_second("offer", 5_000),
        "goals": {"five_hop_p50_ms": 20, "messages_per_claim_max_ratio": 2, "frames_per_s": 5000},
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
