"""Attacker review of the gossip change (fixed topology, relinking, re-dumps): the attacks
that worked, each failing before its fix. Real nodes on loopback, real backpressure."""

from __future__ import annotations

import asyncio
import socket as sk

import pytest

import kofo.exchange.transport as transport_mod
from kofo.exchange import node as node_module

from .helpers import link, start_nodes, stop_all, wait_until

pytestmark = pytest.mark.timeout(120)


def test_gossip_missed_at_a_full_buffer_is_sent_again_not_the_whole_book(monkeypatch):
    """A neighbour whose write buffer was full (it reads slowly; a book dump fills it too)
    got the whole book again for any offer it missed: on a busy network a large book went
    out again and again to every slow or new neighbour (a slow reader made its victim
    re-send the book for each burst of gossip), and a withdrawal it missed never reached it
    (the book holds no withdrawals: the neighbour kept a dead offer until its expiry). Now
    the frames missed are sent again (at most ``MISSED_MAX`` per link), and the book not."""
    monkeypatch.setattr(transport_mod, "WRITE_BUFFER_LIMIT", 5_000)
    monkeypatch.setattr(node_module, "WRITE_BUFFER_LIMIT", 5_000)
    # the kernel's loopback buffers take some hundred kB before ours fills
    monkeypatch.setattr(node_module, "MISSED_MAX", 5_000, raising=False)
    n = 3_000

    async def go() -> None:
        maker, peer = await start_nodes(2, target_degree=0, offers_per_maker=n + 1, maintain_s=0.05)
        try:
            first = maker.publish_offer("btc", "eth", (29, 1), max_in=10**6)
            await link(peer, maker)
            await wait_until(lambda: peer.book.maker_count(maker.node_id) == 1)
            assert maker.stats.book_dumps == 1
            theirs, ours = peer.links[maker.node_id], maker.links[peer.node_id]
            theirs.writer.get_extra_info("socket").setsockopt(sk.SOL_SOCKET, sk.SO_RCVBUF, 4096)
            ours.writer.get_extra_info("socket").setsockopt(sk.SOL_SOCKET, sk.SO_SNDBUF, 4096)
            theirs.writer.transport.pause_reading()
            for i in range(n):
                maker.publish_offer("btc", "eth", (30 + i, 1), max_in=10**6)
                await asyncio.sleep(0)
            dropped = ours.dropped_out
            assert dropped > 0  # the buffer did fill: some gossip was dropped
            maker.withdraw_offer(first.offer.offer_id)
            assert ours.dropped_out == dropped + 1  # the withdrawal was dropped too
            theirs.writer.transport.resume_reading()
            await wait_until(
                lambda: (
                    peer.book.maker_count(maker.node_id) == n
                    and (maker.node_id, first.offer.offer_id) not in peer.book
                ),
                30,
                state=lambda: f"{peer.book.maker_count(maker.node_id)} of {n}, {maker.stats}",
            )
            assert maker.stats.gossip_resent >= dropped
            assert maker.stats.book_redumps == 0
            assert maker.stats.book_dumps == 1
        finally:
            await stop_all([maker, peer])

    asyncio.run(go())
