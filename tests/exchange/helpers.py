"""Helpers to run small in-process networks of real exchange nodes on loopback."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from kofo.exchange.node import ExchangeConfig, ExchangeNode


async def wait_until(
    cond: Callable[[], bool], timeout: float = 5.0, state: Callable[[], str] | None = None
) -> None:
    """Poll ``cond`` until it holds; on timeout fail with ``state()``, what the nodes looked
    like, so a failure in CI can be read without a rerun."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met in {timeout}s: {state() if state else ''}")
        await asyncio.sleep(0.01)


async def start_nodes(n: int, **cfg: object) -> list[ExchangeNode]:
    nodes = []
    for _ in range(n):
        node = ExchangeNode(Ed25519PrivateKey.generate(), ExchangeConfig(**cfg))  # type: ignore[arg-type]
        await node.start()
        nodes.append(node)
    return nodes


async def link(a: ExchangeNode, b: ExchangeNode) -> None:
    await a.connect("127.0.0.1", b.port)
    await wait_until(lambda: a.node_id in b.links and b.node_id in a.links)


async def line(n: int, **cfg: object) -> list[ExchangeNode]:
    nodes = await start_nodes(n, target_degree=0, **cfg)
    for a, b in itertools.pairwise(nodes):
        await link(a, b)
    return nodes


def degrees(nodes: list[ExchangeNode]) -> str:
    """Each node's id prefix and the id prefixes of its links."""
    return "; ".join(
        f"{n.node_id.hex()[:6]}->[{','.join(p.hex()[:6] for p in n.links)}]" for n in nodes
    )


async def stop_all(nodes: list[ExchangeNode]) -> None:
    await asyncio.gather(*(n.stop() for n in nodes), return_exceptions=True)
