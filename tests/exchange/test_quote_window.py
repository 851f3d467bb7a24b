"""The taker's quote window (docs/exchange.md, "The taker's quote window"): ``request_quotes``
returns the quotes received within its window, best first in a total order, and collects
nothing after it returns: a later fulfil is dropped unscored and cannot be settled."""

from __future__ import annotations

import asyncio
import dataclasses
import os

import pytest

from kofo.errors import KofoError
from kofo.exchange.node import ExchangeNode

from .helpers import link, start_nodes, stop_all, wait_until

ADDR = {"btc": "btc-addr", "eth": "eth-addr"}


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


async def star(prices: list[int]) -> tuple[ExchangeNode, list[ExchangeNode]]:
    """A taker linked to one maker per price (ETH base units per BTC unit)."""
    taker, *makers = await start_nodes(1 + len(prices), target_degree=0, addresses=ADDR)
    taker.config.dummy_hops = 0
    for m, price in zip(makers, prices, strict=True):
        await link(taker, m)
        m.publish_offer("btc", "eth", (price, 1), max_in=10**8)
    await wait_until(lambda: len(taker.book) == len(prices))
    return taker, makers


@pytest.mark.timeout(60)
def test_a_quote_arriving_after_the_window_closed_is_not_collected_nor_settleable():
    """Before: the claim stayed open after ``request_quotes`` returned, so a fulfil arriving
    later joined the claim's quotes and ``settle`` took it: a taker that closed its window
    (here at ``enough``; under load, a loop resuming late) could settle a quote it never saw
    in its window, and the collection it reported was not what it acted on."""

    async def go():
        taker, makers = await star([29, 33])
        slow, fast = makers[1], makers[0]  # the better maker's fulfil is the late one
        try:
            # The taker reads nothing from the better maker until its collection closed.
            taker.links[slow.node_id].writer.transport.pause_reading()
            cid, quotes = await taker.request_quotes("btc", "eth", 10**6, window_s=5, enough=1)
            assert [q.delivered for q in quotes] == [29 * 10**6]
            pending = taker._pending[cid]
            await wait_until(lambda: cid in slow._relay and slow._relay[cid].filled is not None)
            taker.links[slow.node_id].writer.transport.resume_reading()
            await wait_until(
                lambda: len(pending.quotes) + getattr(taker.stats, "quotes_late", 0) >= 2,
                state=lambda: f"quotes {len(pending.quotes)}",
            )
            # Not collected (before: it joined the claim's quotes, and settle took it)...
            assert [q.fulfil_id for q in pending.quotes] == [quotes[0].fulfil_id]
            assert taker.stats.quotes_late == 1
            # ... and not held against the maker or its link (an honest latency).
            assert not taker._scores.get(slow.node_id)
            assert not taker._scores.get(fast.node_id)
            # What it settles is what it was given: the one quote of its window.
            commit = await taker.settle(cid, quotes[0], os.urandom(32))
            assert commit.order.legs[0].recipient == fast.node_id
            assert commit.order.legs[1].amount == quotes[0].delivered
        finally:
            await stop_all([taker, *makers])

    run(go())


@pytest.mark.timeout(60)
def test_best_is_a_total_order_whatever_the_arrival_order():
    """Two quotes equal in fill, rate, hops, neighbour importance and receive time rank by
    ``fulfil_id``; before, a stable sort kept the arrival order (two takers, or one taker
    twice, could call a different quote the best)."""

    async def go():
        taker, makers = await star([30, 30])
        try:
            cid, quotes = await taker.request_quotes("btc", "eth", 10**6, window_s=5, enough=2)
            assert len(quotes) == 2
            a, b = (dataclasses.replace(q, received_ms=1) for q in quotes)
            claim = taker._pending[cid].sc.claim
            first = taker.rank(claim, [a, b])
            assert first == taker.rank(claim, [b, a])
            assert first[0].fulfil_id == min(a.fulfil_id, b.fulfil_id)
        finally:
            await stop_all([taker, *makers])

    run(go())


def test_a_window_beyond_the_claim_horizon_is_refused_with_its_reason():
    """Why the 20-process test's rounds timed out with window=40: a window past the claim
    horizon (30 s) is refused at once; the test's node process died of it, silently."""

    async def go():
        (taker,) = await start_nodes(1, target_degree=0)
        try:
            with pytest.raises(KofoError, match="window_s 40 is out of range") as exc:
                await taker.request_quotes("btc", "eth", 10, window_s=40)
            assert exc.value.code == "invalid_input"
        finally:
            await stop_all([taker])

    run(go())
