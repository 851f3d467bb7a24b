"""A maker's offer reaches every node of a fixed line, whatever order its links come up in.

Found by the node's crash matrix (``tests/node/test_network_crash.py``, docs/node.md): in the
fixed line ``t_relay -- relay2 -- maker`` (``[p2p] discover = false``), ``t_relay`` never got the
maker's offer. Real nodes on loopback; the first two tests failed before their fixes."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from kofo.exchange import node as node_module
from kofo.exchange.frames import encode_frame
from kofo.exchange.node import ExchangeConfig, ExchangeNode
from kofo.exchange.transport import handshake, node_id_of, tls_identity
from kofo.wire.exchange import Frame

from .helpers import degrees, link, start_nodes, stop_all, wait_until

pytestmark = pytest.mark.timeout(120)


def run(coro: object) -> None:
    asyncio.run(coro)  # type: ignore[arg-type]


def _has(node: ExchangeNode, maker: ExchangeNode) -> bool:
    return node.book.maker_count(maker.node_id) > 0


async def _node(key: Ed25519PrivateKey, **cfg: object) -> ExchangeNode:
    node = ExchangeNode(key, ExchangeConfig(maintain_s=0.05, **cfg))  # type: ignore[arg-type]
    await node.start()
    return node


def test_a_fixed_topology_node_keeps_dialling_its_bootstrap_peer_not_a_learned_address():
    """The crash matrix's miss: the maker (``discover = false``: target degree = its two
    bootstrap peers, no feelers) came up before ``relay2``; its dial there failed, and it dialled
    an address ``relay`` had announced instead (a taker). At its target degree it never dialled
    ``relay2`` again: ``relay2`` and ``t_relay`` behind it never got the offer (and the taker,
    now the maker's neighbour, routed to it directly, no relay paid). A node with
    ``discover = False`` now dials only its bootstrap addresses, each until it is linked,
    whatever its degree."""

    async def go() -> None:
        (relay,) = await start_nodes(1, target_degree=0, maintain_s=0.05)
        taker = await _node(
            Ed25519PrivateKey.generate(),
            target_degree=1,
            feeler_s=0,
            bootstrap=[("127.0.0.1", relay.port)],
        )
        # relay2 is not up yet when the maker starts (a free port, nothing listening)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            relay2_port = s.getsockname()[1]
        maker = await _node(
            Ed25519PrivateKey.generate(),
            target_degree=2,
            feeler_s=0,
            discover=False,
            backoff_base_s=1.0,
            backoff_max_s=2.0,
            bootstrap=[("127.0.0.1", relay.port), ("127.0.0.1", relay2_port)],
        )
        maker.publish_offer("btc", "eth", (30, 1), max_in=10**6)
        nodes = [relay, taker, maker]
        try:
            await wait_until(lambda: taker.node_id in relay.links)
            # the maker linked relay, learnt the taker's address from it, and relay2 refused
            # it twice (the old code dialled the taker at its next tick after the first, and
            # at its target degree never dialled relay2 again)
            await wait_until(
                lambda: (
                    relay.node_id in maker.links
                    and taker.node_id in maker._known.values()
                    and (
                        maker._backoff.get(("127.0.0.1", relay2_port), (0, 0.0))[0] >= 2
                        or len(maker.links) >= 2
                    )
                ),
                15,
                state=lambda: f"{degrees(nodes)} backoff {maker._backoff}",
            )
            relay2 = await _node(Ed25519PrivateKey.generate(), target_degree=0, port=relay2_port)
            t_relay = await _node(
                Ed25519PrivateKey.generate(),
                target_degree=1,
                feeler_s=0,
                bootstrap=[("127.0.0.1", relay2_port)],
            )
            nodes += [relay2, t_relay]
            await wait_until(
                lambda: _has(t_relay, maker) and _has(relay2, maker),
                30,
                state=lambda: degrees(nodes),
            )
            # the maker is a neighbour of its bootstrap peers only: no direct link to a taker
            assert set(maker.links) == {relay.node_id, relay2.node_id}, degrees(nodes)
        finally:
            await stop_all(nodes)

    run(go())


async def _half_open_link(key: Ed25519PrivateKey, port: int) -> asyncio.StreamWriter:
    """A mesh link from ``key``'s node to ``port`` that its end no longer reads or closes:
    what a peer that crashed (or lost its network) leaves at the other end, the socket still
    open there."""
    ident = tls_identity(key)
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ident.client)
    await handshake(reader, writer, key, 1, outbound=True)
    writer.write(encode_frame(Frame("peers_req", {}).to_bytes()))
    await writer.drain()
    return writer


def test_a_restarted_node_relinks_though_its_old_link_is_still_open_at_the_relay():
    """A restarted node dials its relay again while the relay still holds its old link
    (not yet read to its end, or left half open by a crash): the relay kept the old link and
    closed every new one (same dialer: 'keep the old'), so the restarted node never got the
    book, nor any offer gossiped later. A peer that dials in again replaces its old inbound
    link (its end of that one is gone), as it already did for swap links."""

    async def go() -> None:
        (relay2,) = await start_nodes(1, target_degree=0, maintain_s=0.05)
        maker = await _node(Ed25519PrivateKey.generate(), target_degree=0)
        await link(maker, relay2)
        maker.publish_offer("btc", "eth", (30, 1), max_in=10**6)
        await wait_until(lambda: _has(relay2, maker))
        t_key = Ed25519PrivateKey.generate()
        old = await _half_open_link(t_key, relay2.port)
        t_id = node_id_of(t_key)
        await wait_until(lambda: t_id in relay2.links)
        t_relay = await _node(
            t_key, target_degree=1, feeler_s=0, bootstrap=[("127.0.0.1", relay2.port)]
        )
        nodes = [relay2, maker, t_relay]
        try:
            await wait_until(lambda: _has(t_relay, maker), 15, state=lambda: degrees(nodes))
            # and what the maker announces later reaches it too
            maker.publish_offer("btc", "eth", (31, 1), max_in=10**6)
            await wait_until(
                lambda: t_relay.book.maker_count(maker.node_id) == 2,
                15,
                state=lambda: degrees(nodes),
            )
        finally:
            old.close()
            await stop_all(nodes)

    run(go())


@pytest.mark.parametrize("seed", range(6))
def test_every_node_of_a_line_gets_every_live_offer_through_restarts_and_flaps(seed: int):
    """``t_relay -- relay2 -- maker``, fixed (``discover = False``): offers published before
    any link, while relay2 is down, while its links come back, and relay2 and t_relay each
    restarted (same key and port) or their links cut, in an order the seed shuffles. Each time
    every node ends with every live offer of the maker, from book dumps on link-up and gossip,
    with no re-announcement."""
    import random

    rng = random.Random(seed)

    async def go() -> None:
        fast = {"feeler_s": 0, "discover": False, "backoff_base_s": 0.05, "backoff_max_s": 0.3}
        r_key, t_key = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
        relay2 = await _node(r_key, target_degree=0)
        port = relay2.port
        addr = [("127.0.0.1", port)]
        maker = await _node(Ed25519PrivateKey.generate(), target_degree=1, bootstrap=addr, **fast)
        t_relay = await _node(t_key, target_degree=1, bootstrap=addr, **fast)
        live: dict[str, ExchangeNode] = {"relay2": relay2, "t_relay": t_relay}
        offers = 0

        def publish() -> None:
            nonlocal offers
            maker.publish_offer("btc", "eth", (30 + offers, 1), max_in=10**6)
            offers += 1

        def nodes() -> list[ExchangeNode]:
            return [maker, *live.values()]

        async def restart(name: str) -> None:
            await live[name].stop()
            if rng.random() < 0.5:
                publish()  # announced while it is down
            key, cfg = (
                (r_key, {"target_degree": 0, "port": port})
                if name == "relay2"
                else (t_key, {"target_degree": 1, "bootstrap": addr, **fast})
            )
            live[name] = await _node(key, **cfg)

        async def flap() -> None:
            link = relay2_now().links.get(rng.choice([maker.node_id, t_key_id]))
            if link is not None:
                link.close()
            if rng.random() < 0.5:
                publish()

        def relay2_now() -> ExchangeNode:
            return live["relay2"]

        t_key_id = node_id_of(t_key)
        try:
            publish()
            for _ in range(6):
                await [lambda: restart("relay2"), lambda: restart("t_relay"), flap][
                    rng.randrange(3)
                ]()
                if rng.random() < 0.5:
                    publish()
                if rng.random() < 0.5:
                    await asyncio.sleep(rng.random() * 0.3)
            await wait_until(
                lambda: all(n.book.maker_count(maker.node_id) == offers for n in live.values()),
                30,
                state=lambda: (
                    f"{degrees(nodes())} books "
                    f"{[n.book.maker_count(maker.node_id) for n in nodes()]} of {offers}"
                ),
            )
        finally:
            await stop_all(nodes())

    run(go())


def test_offers_gossiped_while_a_neighbours_write_buffer_is_full_reach_it_later(monkeypatch):
    """Gossip to a neighbour whose write buffer is full (it reads slowly: a large book dump,
    a loaded machine) was dropped: the neighbour learnt those offers only when their maker
    re-announced them, at half their ttl. Such a link now gets the book again once its
    buffer has drained. Real backpressure: the neighbour stops reading, small socket buffers."""
    import socket as sk

    import kofo.exchange.transport as transport_mod

    monkeypatch.setattr(transport_mod, "WRITE_BUFFER_LIMIT", 20_000)
    monkeypatch.setattr(node_module, "WRITE_BUFFER_LIMIT", 20_000)
    n = 3_000

    async def go() -> None:
        maker, peer = await start_nodes(2, target_degree=0, offers_per_maker=n)
        try:
            await link(peer, maker)
            theirs, ours = peer.links[maker.node_id], maker.links[peer.node_id]
            theirs.writer.get_extra_info("socket").setsockopt(sk.SOL_SOCKET, sk.SO_RCVBUF, 4096)
            ours.writer.get_extra_info("socket").setsockopt(sk.SOL_SOCKET, sk.SO_SNDBUF, 4096)
            theirs.writer.transport.pause_reading()
            for i in range(n):
                maker.publish_offer("btc", "eth", (30 + i, 1), max_in=10**6)
                await asyncio.sleep(0)
            assert ours.dropped_out > 0  # the buffer did fill: some gossip was dropped
            theirs.writer.transport.resume_reading()
            await wait_until(
                lambda: peer.book.maker_count(maker.node_id) == n,
                60,
                state=lambda: f"{peer.book.maker_count(maker.node_id)} of {n}, {maker.stats}",
            )
            assert maker.stats.book_redumps >= 1
        finally:
            await stop_all([maker, peer])

    run(go())


def test_a_fixed_node_dials_its_restarted_bootstrap_peer_again_within_seconds():
    """A bootstrap peer down a while (a restart under load: 30-120 s) had pushed the backoff
    to its 300 s cap, jitter taking it to 450 s: the fixed line stayed cut that long after
    the peer was back. A fixed topology's bootstrap peers are its only neighbours: the wait
    between their dials is capped at ``FIXED_BACKOFF_MAX_S`` (jitter included)."""

    async def go() -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        addr = ("127.0.0.1", port)
        fixed = await _node(
            Ed25519PrivateKey.generate(), target_degree=1, feeler_s=0, discover=False,
            bootstrap=[addr],
        )  # fmt: skip
        try:
            for _ in range(5):
                # as after many failed dials (the peer down for minutes): due now, once more
                fixed._backoff[addr] = (30, 0.0)
                await wait_until(lambda: fixed._backoff[addr][0] == 31, 15)
                wait = fixed._backoff[addr][1] - time.monotonic()
                assert wait <= node_module.FIXED_BACKOFF_MAX_S, wait
        finally:
            await stop_all([fixed])

    run(go())


def test_a_peer_known_under_two_addresses_ends_with_one_steady_link():
    """A peer dialling in again replaces its old inbound link, while a dialer keeps the
    older of two links it dialled itself: two dials to one node at once (two addresses for
    it, ids unknown yet) end with each side keeping a different link, both closed. That can
    happen once (the ids are learnt by it); after, a node never dials an address of a node it
    is dialling or linked to, and the two end with one link, kept, and the book."""

    async def go() -> None:
        (peer,) = await start_nodes(1, target_degree=0, maintain_s=0.05)
        peer.publish_offer("btc", "eth", (30, 1), max_in=10**6)
        fixed = await _node(
            Ed25519PrivateKey.generate(), target_degree=2, feeler_s=0, discover=False,
            backoff_base_s=0.05, backoff_max_s=0.2,
            bootstrap=[("127.0.0.1", peer.port), ("localhost", peer.port)],
        )  # fmt: skip
        try:

            def same_link() -> bool:
                a, b = fixed.links.get(peer.node_id), peer.links.get(fixed.node_id)
                return (
                    a is not None
                    and b is not None
                    and not a.closed
                    and not b.closed
                    and a.writer.get_extra_info("sockname") == b.writer.get_extra_info("peername")
                )

            await wait_until(
                lambda: (
                    fixed._known.get(("localhost", peer.port)) == peer.node_id
                    and fixed._known.get(("127.0.0.1", peer.port)) == peer.node_id
                    and same_link()
                ),
                15,
                state=lambda: degrees([peer, fixed]),
            )
            kept = fixed.links[peer.node_id]
            await wait_until(lambda: _has(fixed, peer), 15)
            # it stays: no more dials to a node linked under either address
            await asyncio.sleep(0.5)
            assert fixed.links.get(peer.node_id) is kept and same_link()
        finally:
            await stop_all([peer, fixed])

    run(go())
