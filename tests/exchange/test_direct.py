"""Direct messages between two traders over exchange links (issue 14: swap messages over P2P):
the provider's signed contact in its join, ``ExchangeNode.direct`` and the ``dm`` frames."""

from __future__ import annotations

import asyncio
import logging
import os

import pytest

from kofo.errors import InvalidInput, NotDelivered
from kofo.exchange.node import MAX_DM_BYTES, DirectBusy, PeerNotReached
from kofo.wire.codec import decode
from kofo.wire.envelope import BadMessage
from kofo.wire.exchange import FRAME_VERSION, Frame, Join

from .helpers import line, link, start_nodes, stop_all, wait_until

ADDR = {"btc": "btc-addr", "eth": "eth-addr"}


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


async def echo(sender: bytes, payload: bytes) -> bytes | None:
    if payload == b"boom":
        raise RuntimeError("handler bug")
    if payload == b"none":
        return None
    return b"re:" + sender[:4] + payload


def test_taker_learns_the_makers_contact_from_the_route_and_messages_it_directly():
    async def go():
        nodes = await line(3, addresses=ADDR, dummy_hops=0)
        taker, relay, maker = nodes
        maker.config.contact = f"127.0.0.1:{maker.port}"
        maker.config.on_direct = echo
        relay.config.contact = f"127.0.0.1:{relay.port}"  # a relay never gives its contact
        try:
            maker.publish_offer("btc", "eth", (30, 1), max_in=10**8)
            await wait_until(lambda: len(taker.book) == 1)
            cid, quotes = await taker.request_quotes("btc", "eth", 10**6, window_s=5, enough=1)
            commit = await taker.settle(cid, quotes[0], os.urandom(32))
            assert commit.order.legs[0].recipient == maker.node_id
            assert taker.contacts == {maker.node_id: f"127.0.0.1:{maker.port}"}
            assert maker.node_id not in taker.links
            reply = await taker.direct(maker.node_id, b"propose")
            assert reply == b"re:" + taker.node_id[:4] + b"propose"
            # A swap link on both sides, outside the mesh (before: an ordinary neighbour)
            assert maker.node_id in taker.swap_links and taker.node_id in maker.swap_links
            assert maker.node_id not in taker.links and taker.node_id not in maker.links
            # The link is reused both ways: the maker answers the taker on it.
            taker.config.on_direct = echo
            assert await maker.direct(taker.node_id, b"notice") == (
                b"re:" + maker.node_id[:4] + b"notice"
            )
            assert await taker.direct(maker.node_id, b"none") is None
            assert len(taker.swap_links) == 1  # one link, reused

            # A later claim goes through the mesh: the relay is on every route (before, the
            # swap link carried it and the maker quoted over it directly: hops 1, no relay)
            _cid, again = await taker.request_quotes("btc", "eth", 10**6, window_s=2)
            assert again and [len(q.fees) + 1 for q in again] == [2] * len(again), again
            # Anything but direct messages over a swap link is dropped, unanswered
            taker.swap_links[maker.node_id].send(Frame("peers_req", {}))
            await wait_until(lambda: maker.stats.rejected.get("swap_link", 0) == 1)
            assert not maker._scores.get(taker.node_id)
        finally:
            await stop_all(nodes)

    run(go())


def test_a_handler_that_raises_gives_a_null_reply_and_the_link_stays(caplog):
    caplog.set_level(logging.INFO, logger="kofo.exchange.node")

    async def go():
        a, b = await start_nodes(2, target_degree=0)
        b.config.on_direct = echo
        try:
            await link(a, b)
            assert await a.direct(b.node_id, b"boom") is None
            assert "handler failed: RuntimeError: handler bug" in caplog.text
            assert await a.direct(b.node_id, b"x") == b"re:" + a.node_id[:4] + b"x"
            assert b.node_id in a.links and not b._scores and not a._scores
            # Without a handler every dm gets a null reply.
            assert await b.direct(a.node_id, b"hello") is None
        finally:
            await stop_all([a, b])

    run(go())


def test_oversize_payloads_are_refused_at_the_sender_and_scored_at_the_receiver(caplog):
    caplog.set_level(logging.INFO, logger="kofo.exchange.node")

    async def go():
        a, b = await start_nodes(2, target_degree=0)
        got: list[bytes] = []

        async def keep(sender: bytes, payload: bytes) -> bytes:
            got.append(payload)
            return b"ok"

        b.config.on_direct = keep
        try:
            await link(a, b)
            with pytest.raises(InvalidInput, match="at most"):
                await a.direct(b.node_id, bytes(MAX_DM_BYTES + 1))
            assert await a.direct(b.node_id, bytes(MAX_DM_BYTES)) == b"ok"
            # A peer that sends one anyway is refused and scored; its handler never sees it.
            a.links[b.node_id].send(Frame("dm", {"id": 7, "payload": bytes(MAX_DM_BYTES + 1)}))
            await wait_until(lambda: "more than" in caplog.text)
            assert len(got) == 1 and b._scores.get(a.node_id, 0) > 0
        finally:
            await stop_all([a, b])

    run(go())


def test_direct_messages_beyond_a_links_rate_get_a_null_reply_and_cost_score():
    async def go():
        # A burst of 3 and (practically) no refill at b: the 4th and later are over the rate
        # (a, with the default rate, does not hold itself to b's: a sender that ignores it).
        (a,) = await start_nodes(1, target_degree=0)
        (b,) = await start_nodes(1, target_degree=0, dm_rate=0.0001, dm_burst=3.0)
        b.config.on_direct = echo
        try:
            await link(a, b)
            replies = await asyncio.gather(*(a.direct(b.node_id, b"m%d" % i) for i in range(6)))
            assert sum(r is not None for r in replies) == 3
            assert replies[:3] == [b"re:" + a.node_id[:4] + b"m%d" % i for i in range(3)]
            assert b._scores.get(a.node_id, 0) > 0
        finally:
            await stop_all([a, b])

    run(go())


def test_outstanding_direct_messages_are_bounded_per_link():
    async def go():
        a, b = await start_nodes(2, target_degree=0, dm_outstanding=2)
        release = asyncio.Event()

        async def slow(sender: bytes, payload: bytes) -> bytes:
            await release.wait()
            return payload

        b.config.on_direct = slow
        try:
            await link(a, b)
            first = [asyncio.ensure_future(a.direct(b.node_id, b"%d" % i)) for i in range(2)]
            await wait_until(lambda: b._dm_in.get(a.node_id, 0) == 2)
            with pytest.raises(DirectBusy, match="outstanding"):
                await a.direct(b.node_id, b"3")
            release.set()
            assert await asyncio.gather(*first) == [b"0", b"1"]
        finally:
            await stop_all([a, b])

    run(go())


def test_direct_fails_clearly_when_no_link_can_be_made():
    async def go():
        a, b, c = await start_nodes(3, target_degree=0)
        try:
            # No link and no contact.
            with pytest.raises(PeerNotReached, match="no contact"):
                await a.direct(b.node_id, b"x")
            # A contact where another node answers: the dial expects b's id.
            with pytest.raises(PeerNotReached, match="not reached"):
                await a.direct(b.node_id, b"x", contact=f"127.0.0.1:{c.port}")
            # Nobody listening there.
            await c.stop()
            with pytest.raises(PeerNotReached, match="not reached"):
                await a.direct(b.node_id, b"x", contact=f"127.0.0.1:{c.port}")
            with pytest.raises(PeerNotReached, match="not host:port"):
                await a.direct(b.node_id, b"x", contact="127.0.0.1")
            assert issubclass(PeerNotReached, NotDelivered)
            # The link closes while a reply is awaited.
            block = asyncio.Event()

            async def never(sender: bytes, payload: bytes) -> bytes:
                await block.wait()
                return b""

            b.config.on_direct = never
            await link(a, b)
            pending = asyncio.ensure_future(a.direct(b.node_id, b"x"))
            await wait_until(lambda: bool(b._dm_in.get(a.node_id, 0)))
            a.links[b.node_id].close()
            with pytest.raises(PeerNotReached, match="closed before a reply"):
                await pending
        finally:
            await stop_all([a, b, c])

    run(go())


def test_a_reply_to_no_outstanding_message_is_scored_and_dropped():
    async def go():
        a, b = await start_nodes(2, target_degree=0)
        try:
            await link(a, b)
            b.links[a.node_id].send(Frame("dm_reply", {"id": 99, "payload": b"forged"}))
            await wait_until(lambda: a._scores.get(b.node_id, 0) > 0)
            assert a.links  # scored, not cut off
        finally:
            await stop_all([a, b])

    run(go())


def test_link_protocol_v3_refuses_older_frames_and_joins_without_a_contact():
    old = Frame("ping", {}).to_bytes().replace(bytes([0x61, 0x76, FRAME_VERSION]), b"\x61v\x02")
    assert decode(old)["v"] == 2
    with pytest.raises(BadMessage, match="unsupported link protocol version 2"):
        Frame.from_bytes(old)
    body = {
        "position": 1,
        "node_id": bytes(32),
        "addresses": {},
        "eph_sig": bytes(64),
        "node_sig": bytes(64),
    }
    with pytest.raises(BadMessage, match="contact"):
        Join.from_body(body)
    for bad in ("no-port", "h:0", "h:70000", "h:x", "a b:1", ":5", "x" * 300):
        with pytest.raises(BadMessage, match="contact"):
            Join.from_body({**body, "contact": bad})
    assert Join.from_body({**body, "contact": "[::1]:9735"}).contact == "[::1]:9735"
