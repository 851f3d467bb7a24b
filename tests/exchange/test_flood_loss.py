"""Where a claim's answer can be lost without any error (docs/exchange.md, "Where a quote can
be lost"): a maker's fill or a relay's fulfil whose upstream link closed before it went out
never reaches the taker. Found by the 20-process test under load: a maker that the claim
reached, and that filled it, never showed in the taker's quotes (no late quote either). The
node now counts each such loss (``stats.fulfils_lost``), so a run can tell it from a claim
that never reached the maker."""

from __future__ import annotations

import asyncio
import os

import pytest

from .helpers import line, link, start_nodes, stop_all, wait_until

ADDR = {"btc": "btc-addr", "eth": "eth-addr"}


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


@pytest.mark.timeout(60)
def test_a_fill_whose_link_closed_first_is_counted_lost_and_no_quote_arrives():
    """Taker - relay - maker; the maker's composer hook closes the maker's link to the relay
    when it reserves the fill (before the fulfil goes out), as a feeler closing or a peer
    restarting would. The quote is lost: the taker gets nothing and the maker counts it."""

    async def go():
        taker, relay, maker = await line(3, addresses=ADDR)
        taker.config.dummy_hops = 0
        maker.publish_offer("btc", "eth", (30, 1), max_in=10**8)
        try:
            await wait_until(lambda: len(taker.book) == 1)

            def close_up(asset: str, amount: int, until: int) -> None:
                maker.links[relay.node_id].close()

            maker.config.on_fill = close_up
            _, quotes = await taker.request_quotes("btc", "eth", 10**6, window_s=1.0, enough=1)
            assert quotes == []
            assert maker.stats.fulfils_lost == 1
            assert relay.stats.fulfils_lost == 0
        finally:
            await stop_all([taker, relay, maker])

    run(go())


@pytest.mark.timeout(60)
def test_a_relayed_fulfil_whose_upstream_link_closed_is_counted_lost():
    """Taker - relay - maker; the relay's link to the taker closes after the claim passed it
    and before the maker's fill comes back: the relay cannot send the fulfil on, and counts it
    (it was dropped silently before)."""

    async def go():
        taker, relay, maker = await line(3, addresses=ADDR)
        taker.config.dummy_hops = 0
        maker.publish_offer("btc", "eth", (30, 1), max_in=10**8)
        try:
            await wait_until(lambda: len(taker.book) == 1)

            def close_relay_up(asset: str, amount: int, until: int) -> None:
                relay.links[taker.node_id].close()

            maker.config.on_fill = close_relay_up
            _, quotes = await taker.request_quotes("btc", "eth", 10**6, window_s=1.0, enough=1)
            assert quotes == []
            await wait_until(lambda: relay.stats.fulfils_lost == 1)
            assert maker.stats.fulfils_lost == 0
        finally:
            await stop_all([taker, relay, maker])

    run(go())


@pytest.mark.timeout(60)
def test_a_quote_arriving_after_settle_is_counted_late_and_costs_its_sender_nothing():
    """The 20-process test read ``quotes_late`` after ``settle``, and a quote arriving after
    ``settle`` dropped the claim's state was "a fulfil for a claim this node does not hold":
    counted nowhere (so a maker that answered late looked like one that never answered) and
    scored 1 against the honest neighbour that carried it. Now it is a late quote."""

    async def go():
        taker, fast, slow = await start_nodes(3, target_degree=0, addresses=ADDR)
        taker.config.dummy_hops = 0
        for m, price in ((fast, 29), (slow, 33)):
            await link(taker, m)
            m.publish_offer("btc", "eth", (price, 1), max_in=10**8)
        try:
            await wait_until(lambda: len(taker.book) == 2)
            # The taker reads nothing from the better maker until it has settled.
            taker.links[slow.node_id].writer.transport.pause_reading()
            cid, quotes = await taker.request_quotes("btc", "eth", 10**6, window_s=5, enough=1)
            assert [q.delivered for q in quotes] == [29 * 10**6]
            await wait_until(lambda: cid in slow._relay and slow._relay[cid].filled is not None)
            await taker.settle(cid, quotes[0], os.urandom(32))
            assert cid not in taker._pending
            taker.links[slow.node_id].writer.transport.resume_reading()
            await wait_until(
                lambda: taker.stats.quotes_late == 1 or bool(taker._scores.get(slow.node_id)),
                state=lambda: f"late {taker.stats.quotes_late} rejected {taker.stats.rejected}",
            )
            assert taker.stats.quotes_late == 1
            assert not taker._scores.get(slow.node_id)
            assert not any("unknown_claim" in kind for kind in taker.stats.rejected)
        finally:
            await stop_all([taker, fast, slow])

    run(go())


@pytest.mark.timeout(60)
def test_a_copy_that_arrived_with_no_hops_left_does_not_shadow_a_later_one_with_hops():
    """Taker T linked to A and to R; A - B - R; R - maker M; max_hops 3. R reads T's link
    only after the long copy (T-A-B-R, no hops left) arrived: before, R took that copy, could
    not forward it, and dropped T's direct copy as a duplicate, so M (two hops from T) never
    saw the claim and never quoted. Now R takes the later copy (it is a dead end on the first:
    nothing forwarded, no fill) and forwards it: M quotes, through R."""

    async def go():
        t, a, b, r, m = await start_nodes(5, target_degree=0, addresses=ADDR)
        t.config.dummy_hops = 0
        for x, y in ((t, a), (a, b), (b, r), (t, r), (r, m)):
            await link(x, y)
        m.publish_offer("btc", "eth", (30, 1), max_in=10**8)
        try:
            await wait_until(lambda: len(t.book) == 1)
            r.links[t.node_id].writer.transport.pause_reading()
            task = asyncio.ensure_future(
                t.request_quotes("btc", "eth", 10**6, window_s=5, max_hops=3, enough=1)
            )
            # The long copy reaches R first, with no hops left.
            await wait_until(lambda: len(r._relay) == 1)
            (st,) = r._relay.values()
            assert st.position == st.sc.claim.max_hops == 3
            r.links[t.node_id].writer.transport.resume_reading()
            cid, quotes = await task
            assert [q.delivered for q in quotes] == [30 * 10**6]
            assert quotes[0].fulfil.fulfil.position == 2  # T -> R -> M
            assert r.stats.claims_readopted == 1
            assert r._relay[cid].upstream == t.node_id
            assert not any(r._scores.values()) and not any(m._scores.values())
        finally:
            await stop_all([t, a, b, r, m])

    run(go())
