"""Link liveness: a peer gone without closing (host down, NAT state lost, process frozen) is
dropped by ``idle_timeout_s`` and a fixed node dials it again; a quiet live link is kept by
its pings (``keepalive_s``). Real nodes on loopback, short timings, no timed assertions: each
test waits (bounded) for the observable event."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from kofo.errors import InvalidInput
from kofo.exchange.node import ExchangeConfig, ExchangeNode

from .helpers import stop_all, wait_until

FAST = {"keepalive_s": 0.2, "idle_timeout_s": 1.0, "maintain_s": 0.05, "feeler_s": 0.0}


class _Pair:
    def __init__(self, a: asyncio.StreamWriter, b: asyncio.StreamWriter) -> None:
        self.writers = (a, b)
        self.dead = False  # its flow lost (NAT state dropped): nothing crosses, nothing closes


class BlackholeProxy:
    """A TCP relay in front of a node that can lose every flow at once without a FIN or RST
    either way (a NAT or firewall dropping its state, a host gone): ``freeze()`` silences the
    open connections for good and refuses new ones until ``thaw()``."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.frozen = False
        self.pairs: list[_Pair] = []
        self.tasks: set[asyncio.Task[None]] = set()
        self.port = 0
        self._server: asyncio.base_events.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _accept(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        if self.frozen:
            w.close()
            return
        tr, tw = await asyncio.open_connection("127.0.0.1", self.target_port)
        pair = _Pair(w, tw)
        self.pairs.append(pair)
        for src, dst in ((r, tw), (tr, w)):
            task = asyncio.ensure_future(self._pump(pair, src, dst))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _pump(self, pair: _Pair, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while True:
                data = await r.read(65536)
                if pair.dead:
                    if not data:
                        return  # the FIN is lost too: the other end is not told
                    continue  # swallowed: the endpoints' writes never back up
                if not data:
                    w.close()
                    return
                w.write(data)
                await w.drain()

    def freeze(self) -> None:
        self.frozen = True
        for pair in self.pairs:
            pair.dead = True

    def thaw(self) -> None:
        self.frozen = False

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self.tasks):
            task.cancel()
        for pair in self.pairs:
            for w in pair.writers:
                w.close()


@pytest.mark.timeout(90)
def test_silent_peer_dropped_and_fixed_node_relinks() -> None:
    """The peer vanishes without closing: both ends drop the half-open link (before, each kept
    it until TCP gave up, hours, and the fixed node never dialled its bootstrap peer again),
    and once the peer is reachable again the fixed node links to it anew."""
    asyncio.run(_silent_peer_dropped_and_fixed_node_relinks())


async def _silent_peer_dropped_and_fixed_node_relinks() -> None:
    b = ExchangeNode(Ed25519PrivateKey.generate(), ExchangeConfig(target_degree=0, **FAST))  # type: ignore[arg-type]
    await b.start()
    proxy = BlackholeProxy(b.port)
    await proxy.start()
    a = ExchangeNode(
        Ed25519PrivateKey.generate(),
        ExchangeConfig(
            target_degree=1,
            discover=False,
            bootstrap=[("127.0.0.1", proxy.port)],
            **FAST,  # type: ignore[arg-type]
        ),
    )
    await a.start()
    nodes = [a, b]

    def state() -> str:
        return f"a.links={list(a.links)} b.links={list(b.links)}"

    try:
        await wait_until(lambda: b.node_id in a.links and a.node_id in b.links, 20, state)
        la, lb = a.links[b.node_id], b.links[a.node_id]
        proxy.freeze()
        await wait_until(lambda: b.node_id not in a.links and a.node_id not in b.links, 20, state)
        assert la.closed and lb.closed
        proxy.thaw()
        await wait_until(lambda: b.node_id in a.links and a.node_id in b.links, 30, state)
        assert a.links[b.node_id] is not la and b.links[a.node_id] is not lb
        assert a.links[b.node_id].outbound  # the fixed node dialled again
        # A timeout is no misbehaviour: nobody was scored for it.
        assert a.node_id not in b._scores and b.node_id not in a._scores
    finally:
        await stop_all(nodes)
        await proxy.stop()


@pytest.mark.timeout(90)
def test_quiet_live_link_kept_by_pings() -> None:
    """Nothing to say for many idle timeouts (a fixed topology asks no peers and gossips
    nothing once the book is sent): each side's pings keep the link, unscored."""
    asyncio.run(_quiet_live_link_kept_by_pings())


async def _quiet_live_link_kept_by_pings() -> None:
    b = ExchangeNode(
        Ed25519PrivateKey.generate(),
        ExchangeConfig(target_degree=0, discover=False, **FAST),  # type: ignore[arg-type]
    )
    await b.start()
    a = ExchangeNode(
        Ed25519PrivateKey.generate(),
        ExchangeConfig(
            target_degree=1,
            discover=False,
            bootstrap=[("127.0.0.1", b.port)],
            **FAST,  # type: ignore[arg-type]
        ),
    )
    await a.start()
    nodes = [a, b]
    try:
        await wait_until(lambda: b.node_id in a.links and a.node_id in b.links, 20)
        la, lb = a.links[b.node_id], b.links[a.node_id]
        a0, b0 = la.frames_in, lb.frames_in
        # 15 pings each way span 15 keepalives, three idle timeouts.
        await wait_until(
            lambda: la.closed or lb.closed or (la.frames_in >= a0 + 15 and lb.frames_in >= b0 + 15),
            60,
            lambda: f"a in={la.frames_in - a0} b in={lb.frames_in - b0}",
        )
        assert not la.closed and not lb.closed
        assert a.links[b.node_id] is la and b.links[a.node_id] is lb
        assert a.stats.rejected == {} and b.stats.rejected == {}
        assert a.node_id not in b._scores and b.node_id not in a._scores
    finally:
        await stop_all(nodes)


@pytest.mark.parametrize(
    ("keepalive_s", "idle_timeout_s"), [(0.0, 10.0), (-1.0, 10.0), (15.0, 15.0), (15.0, 30.0)]
)
def test_liveness_config_checked(keepalive_s: float, idle_timeout_s: float) -> None:
    cfg = ExchangeConfig(keepalive_s=keepalive_s, idle_timeout_s=idle_timeout_s)
    with pytest.raises(InvalidInput, match="idle_timeout_s"):
        ExchangeNode(Ed25519PrivateKey.generate(), cfg)


@pytest.mark.timeout(90)
def test_swap_link_kept_by_pings_and_dropped_when_its_peer_goes_silent() -> None:
    """A swap link (``direct()``) has the same liveness as a mesh link: quiet, its pings keep
    it; its peer silent, both ends drop it (it held a ``direct_slots`` slot until TCP gave up)."""
    asyncio.run(_swap_link_liveness())


async def _swap_link_liveness() -> None:
    a, b = (
        ExchangeNode(Ed25519PrivateKey.generate(), ExchangeConfig(target_degree=0, **FAST))  # type: ignore[arg-type]
        for _ in range(2)
    )
    await a.start()
    await b.start()
    proxy = BlackholeProxy(b.port)
    await proxy.start()
    try:
        assert await a.direct(b.node_id, b"x", contact=f"127.0.0.1:{proxy.port}") is None
        await wait_until(lambda: a.node_id in b.swap_links, 20)
        la, lb = a.swap_links[b.node_id], b.swap_links[a.node_id]
        a0, b0 = la.frames_in, lb.frames_in
        await wait_until(
            lambda: la.closed or lb.closed or (la.frames_in >= a0 + 15 and lb.frames_in >= b0 + 15),
            60,
            lambda: f"a in={la.frames_in - a0} b in={lb.frames_in - b0}",
        )
        assert not la.closed and not lb.closed
        assert a.swap_links.get(b.node_id) is la and b.swap_links.get(a.node_id) is lb
        proxy.freeze()
        await wait_until(
            lambda: not a.swap_links and not b.swap_links,
            20,
            lambda: f"a swap={list(a.swap_links)} b swap={list(b.swap_links)}",
        )
        assert la.closed and lb.closed
    finally:
        await stop_all([a, b])
        await proxy.stop()
