"""Attacker-briefed review of link protocol v3 (per-chain expiries, composer hooks, signed
contact, direct messages): each test is an attack that worked before its fix. Real nodes on
loopback, as in test_network.py."""

from __future__ import annotations

import asyncio
import logging
import os
import time

import pytest

from kofo.exchange.node import DirectBusy, DirectTimeout, RouteFailed
from kofo.wire.expiry import BlockHeight, Expiry, UnixTime

from .helpers import line, link, start_nodes, stop_all, wait_until

ADDR = {"btc": "btc-addr", "eth": "eth-addr"}


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


def height_one(chain: str, expiry_time: int, now_s: int) -> Expiry:
    """A taker's 'fit' that sets the btc leg (its own, which the maker redeems) to height 1:
    refundable at once, so the taker could take the maker's leg and refund its own."""
    return BlockHeight(1) if chain == "btc" else UnixTime(expiry_time)


@pytest.mark.parametrize("clocks", [{}, {"btc": "height"}], ids=["no-clocks", "btc-height"])
def test_a_provider_that_cannot_judge_a_height_does_not_sign_it(caplog, clocks):
    # Before the fix a provider without ``expiry_check`` (the default) co-signed any height
    # the taker wrote: the check was skipped, so the taker's leg could expire at once.
    caplog.set_level(logging.INFO, logger="kofo.exchange.node")

    async def go():
        nodes = await line(3, addresses=ADDR, settle_timeout_s=1.5)
        taker, relay, maker = nodes
        taker.config.expiry_fit = height_one
        maker.config.chain_clocks = clocks
        try:
            maker.publish_offer("btc", "eth", (30, 1), max_in=10**8)
            await wait_until(lambda: len(taker.book) == 1)
            cid, quotes = await taker.request_quotes("btc", "eth", 10**6, window_s=5, enough=1)
            with pytest.raises(RouteFailed, match="signatures"):
                await taker.settle(cid, quotes[0], os.urandom(32))
            assert "no expiry_check to judge it" in caplog.text
            assert maker._scores.get(relay.node_id, 0) == 0
        finally:
            await stop_all(nodes)

    run(go())


def test_a_sender_that_gave_up_waiting_is_not_scored_for_the_handlers_slowness():
    # The sender's timeout (10 s default) is shorter than the receiver's handler budget (30 s):
    # before the fix the sender forgot a timed-out request at once, sent more, and the
    # receiver, still handling 16, refused the next with a score of 2 (an honest trader
    # retrying a slow maker was banned after 50); the late replies then cost the receiver 1
    # each at the sender. Now a request the sender gave up on still counts as outstanding
    # (its reply, when it comes, is dropped quietly) until the receiver's handler budget
    # has passed.
    async def go():
        a, b = await line(2)
        release = asyncio.Event()
        handled = 0

        async def slow(sender: bytes, payload: bytes) -> bytes | None:
            nonlocal handled
            handled += 1
            await release.wait()
            return b"late"

        b.config.on_direct = slow
        try:
            n = a.config.dm_outstanding
            for i in range(n):
                with pytest.raises(DirectTimeout):
                    await a.direct(b.node_id, b"m%d" % i, timeout=0.05)
            await wait_until(lambda: handled == n)
            # More would be refused by the receiver: the sender knows and does not send.
            for _ in range(3):
                with pytest.raises(DirectBusy):
                    await a.direct(b.node_id, b"more", timeout=0.05)
            assert handled == n and not b._scores
            release.set()
            await wait_until(lambda: not b._dm_in.get(a.node_id, 0))
            # The late replies free the slots and cost nobody anything.
            b.config.on_direct = echo
            assert await a.direct(b.node_id, b"x") == b"re:x"
            assert not a._scores and not b._scores
        finally:
            await stop_all([a, b])

    run(go())


def _link(node, peer):
    return node.links[peer.node_id]


async def echo(sender: bytes, payload: bytes) -> bytes | None:
    return b"re:" + payload


def test_strangers_filling_the_makers_inbound_slots_do_not_keep_the_taker_from_it():
    # Fresh keys cost nothing: before the fix strangers linked in until the maker had no
    # inbound slot, and the taker, dialling the contact of the maker it had just settled a
    # route with, was refused (PeerNotReached): the swap messages of a committed order could
    # not be delivered. The maker now admits the initiator of an order it co-signed beyond
    # its inbound slots (at most ``direct_slots`` such links).
    async def go():
        nodes = await line(3, addresses=ADDR, dummy_hops=0)
        taker, _relay, maker = nodes
        strangers = await start_nodes(2, target_degree=0)
        maker.config.contact = f"127.0.0.1:{maker.port}"
        maker.config.on_direct = echo
        maker.config.max_degree = 3  # the relay's link and two strangers' fill it
        try:
            maker.publish_offer("btc", "eth", (30, 1), max_in=10**8)
            await wait_until(lambda: len(taker.book) == 1)
            cid, quotes = await taker.request_quotes("btc", "eth", 10**6, window_s=5, enough=1)
            await taker.settle(cid, quotes[0], os.urandom(32))
            for s in strangers:
                await link(s, maker)
            assert len(maker.links) == 3
            assert await taker.direct(maker.node_id, b"propose") == b"re:propose"
            # Any other newcomer is still refused: the extra slot is the order's initiator's.
            late = (await start_nodes(1, target_degree=0))[0]
            strangers.append(late)
            await late.connect("127.0.0.1", maker.port)
            await wait_until(lambda: maker.node_id not in late.links)
            assert late.node_id not in maker.links
        finally:
            await stop_all(nodes + strangers)

    run(go())


def test_a_swap_link_whose_order_ended_gives_its_slot_to_a_new_orders_initiator():
    # Attacker's pass (session 5): swap links are never closed when their swaps end, and a
    # full set of them refused every newcomer: takers that settled routes once (fresh keys)
    # and kept their swap links open (pings) after their orders' last expiry held every
    # ``direct_slots`` slot for good, and the initiator of a new order the maker co-signed
    # could not reach it (its swap messages never arrived). A full set now gives the slot of
    # an inbound swap link whose peer is no longer an order's initiator to the newcomer.
    async def go():
        nodes = await line(3, addresses=ADDR, dummy_hops=0)
        first, relay, maker = nodes
        (second,) = await start_nodes(1, target_degree=0, addresses=ADDR, dummy_hops=0)
        await link(second, relay)
        maker.config.contact = f"127.0.0.1:{maker.port}"
        maker.config.on_direct = echo
        maker.config.direct_slots = 1
        try:
            maker.publish_offer("btc", "eth", (30, 1), max_in=10**8)
            await wait_until(lambda: len(first.book) == 1 and len(second.book) == 1)
            cid, quotes = await first.request_quotes("btc", "eth", 10**6, window_s=5, enough=1)
            await first.settle(cid, quotes[0], os.urandom(32))
            assert await first.direct(maker.node_id, b"propose") == b"re:propose"
            assert first.node_id in maker.swap_links
            # the first order's last expiry passes (its link stays open)
            maker._direct_peers[first.node_id] = time.monotonic() - 1
            cid, quotes = await second.request_quotes("btc", "eth", 10**6, window_s=5, enough=1)
            await second.settle(cid, quotes[0], os.urandom(32))
            assert await second.direct(maker.node_id, b"propose") == b"re:propose"
            assert second.node_id in maker.swap_links
            await wait_until(lambda: first.node_id not in maker.swap_links)
        finally:
            await stop_all([*nodes, second])

    run(go())


def test_an_order_planned_with_devnet_timing_is_not_signed_by_a_production_maker(caplog):
    # Attacker's pass (session 5), an attack that fails: a taker plans its order with the
    # devnet's lock window (20 s, ``kofo devnet --fast-timing``) to hurry a production maker
    # (600 s). Every co-signer plans the order's time from ``legs[0].lock_by`` and its own
    # lock window, and refuses a time that far off its clock: the maker's guard never sees it.
    caplog.set_level(logging.INFO, logger="kofo.exchange.node")

    async def go():
        nodes = await line(3, addresses=ADDR, settle_timeout_s=1.5, dummy_hops=0)
        taker, _relay, maker = nodes
        taker.config.lock_window_s = 20
        guarded = []
        maker.config.order_guard = lambda order, role: guarded.append(order)
        try:
            maker.publish_offer("btc", "eth", (30, 1), max_in=10**8)
            await wait_until(lambda: len(taker.book) == 1)
            cid, quotes = await taker.request_quotes("btc", "eth", 10**6, window_s=5, enough=1)
            with pytest.raises(RouteFailed):
                await taker.settle(cid, quotes[0], os.urandom(32))
            # its lock_by, 600 s after the time each co-signer plans from, puts that time
            # 580 s in the past: refused (and the taker scored by the relay)
            assert "deadlines are planned from time" in caplog.text
            assert guarded == []
        finally:
            await stop_all(nodes)

    run(go())


def test_relinking_does_not_reset_the_budget_of_direct_messages_being_handled():
    # Before the fix the count of a peer's requests in the handler was kept per link object
    # and dropped when the link closed, while the handlers ran on (up to dm_handler_s): a
    # peer that relinked got a fresh 16 each time, so handler tasks (each holding a payload of
    # up to 255 KiB) grew without bound. Now the count is per node id, and requests a sender
    # lost with its link still count on its side until the peer must have answered.
    async def go():
        a, b = await line(2)
        release = asyncio.Event()
        handled = 0

        async def slow(sender: bytes, payload: bytes) -> bytes | None:
            nonlocal handled
            handled += 1
            await release.wait()
            return b"late"

        b.config.on_direct = slow
        n = a.config.dm_outstanding
        try:
            for _round in range(3):
                for i in range(n):
                    with pytest.raises((DirectTimeout, DirectBusy)):
                        await a.direct(b.node_id, b"m%d" % i, timeout=0.05)
                await wait_until(lambda: handled >= n)
                # Relink: the attacker's way to a fresh budget.
                _link(a, b).close()
                await wait_until(lambda: b.node_id not in a.links and a.node_id not in b.links)
                await link(a, b)
            assert handled == n
            # The honest sender kept counting its lost requests: it sent none over budget.
            assert not b._scores
            release.set()
        finally:
            await stop_all([a, b])

    run(go())


def test_a_node_bounds_direct_messages_in_its_handler_over_all_peers():
    # Fresh keys are free: many peers each within their own budget must not hold an
    # unbounded number of handler tasks (and payloads) between them.
    async def go():
        nodes = await start_nodes(4, target_degree=0, dm_outstanding=4, dm_inflight_max=6)
        b, peers = nodes[0], nodes[1:]
        release = asyncio.Event()
        handled = 0

        async def slow(sender: bytes, payload: bytes) -> bytes | None:
            nonlocal handled
            handled += 1
            await release.wait()
            return b"late"

        b.config.on_direct = slow
        try:
            replies = []
            for p in peers:
                await link(p, b)
                for _ in range(4):
                    replies.append(asyncio.ensure_future(p.direct(b.node_id, b"x", timeout=30)))
            await wait_until(lambda: sum(f.done() for f in replies) == len(replies) - 6)
            assert handled == 6
            assert all(f.result() is None for f in replies if f.done())
            assert not b._scores  # each peer stayed within its own budget
            release.set()
            assert sorted(await asyncio.gather(*replies), key=bool).count(b"late") == 6
        finally:
            await stop_all(nodes)

    run(go())


def test_a_contact_that_stalls_the_handshake_does_not_hold_direct_past_its_timeout(monkeypatch):
    # Before the fix the dial was outside ``timeout``: a maker's contact that accepted and
    # never spoke held the caller for the handshake timeouts (2 x 5 s) on top of its own.
    # Here the handshake timeout is made huge: the call must still end at its own timeout.
    import kofo.exchange.node as node_mod

    monkeypatch.setattr(node_mod, "HANDSHAKE_TIMEOUT_S", 600.0)

    async def go():
        held: list[asyncio.StreamWriter] = []

        async def tarpit(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            held.append(writer)  # accept, never answer

        server = await asyncio.start_server(tarpit, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        (a,) = await start_nodes(1, target_degree=0)
        try:
            with pytest.raises(DirectTimeout):
                await asyncio.wait_for(
                    a.direct(os.urandom(32), b"x", contact=f"127.0.0.1:{port}", timeout=0.5), 30
                )
        finally:
            for w in held:
                w.close()
            server.close()
            await stop_all([a])

    run(go())


def test_an_honest_sender_keeps_within_the_receivers_direct_message_rate():
    # Before the fix nothing held a sender to the receiver's rate (50/s, burst 100): a trader
    # with many swaps to one maker sent its messages as fast as replies came, and each past the
    # burst got a null reply and a score of 2 (banned after 50 more). Now direct() waits for
    # its own token bucket, a little below the receiver's.
    async def go():
        a, b = await line(2, dm_rate=20.0, dm_burst=10.0)
        b.config.on_direct = echo
        try:
            for i in range(30):
                assert await a.direct(b.node_id, b"%d" % i) == b"re:%d" % i
            assert not b._scores and not a._scores
        finally:
            await stop_all([a, b])

    run(go())
