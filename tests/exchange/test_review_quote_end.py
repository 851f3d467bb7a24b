"""Attacker review of exchange v6's early end of the taker's quote window (offer proofs,
docs/exchange.md "The taker's quote window"): real nodes on loopback, each case an attack
that worked on the v6 merge, now refused."""

from __future__ import annotations

import asyncio
import os

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from kofo.exchange.book import MAX_OFFER_LIFETIME_MS, MAX_SEQ_AHEAD_MS, OrderBook
from kofo.exchange.node import MAX_AWAITED_MAKERS, ExchangeConfig, ExchangeNode, now_ms
from kofo.exchange.sealed import open_sealed
from kofo.wire.exchange import Claim, Offer, SignedOffer, make_offer

from .helpers import link, start_nodes, stop_all, wait_until

ADDR = {"btc": "btc-addr", "eth": "eth-addr", "ltc": "ltc-addr"}
LONG_WINDOW_S = 20.0


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 90))


@pytest.mark.timeout(90)
def test_a_full_book_does_not_end_the_window_before_a_maker_it_refused():
    """A rival maker fills the taker's book (here with its own second offer; any flood of
    fresh keys' offers does it at 50 000), so a newcomer's better offer is refused ("order
    book is full") and the rival is the only maker the taker waits for. Before: the window
    ended ("all_quoted") on the rival's answer, and the newcomer's quote, which a v5 taker
    collected in its window, was lost (it arrives a moment later: held back here). Now a
    book that refused an offer for room is not a complete view of the market: no early end,
    the window runs as before v6 and the better quote is taken."""

    async def go():
        (taker,) = await start_nodes(1, target_degree=0, addresses=ADDR, max_offers=2)
        rival, victim = await start_nodes(2, target_degree=0, addresses=ADDR)
        taker.config.dummy_hops = 0
        refused: list[str] = []
        precheck = taker.book.precheck

        def spy(so, now):
            v = precheck(so, now)
            if v is not None:
                refused.append(v.reason)
            return v

        taker.book.precheck = spy  # type: ignore[method-assign]
        try:
            await link(taker, rival)
            await link(taker, victim)
            rival.publish_offer("btc", "eth", (29, 1), max_in=10**8)
            rival.publish_offer("ltc", "eth", (1, 1), max_in=10**8)
            await wait_until(lambda: len(taker.book) == 2)
            victim.publish_offer("btc", "eth", (33, 1), max_in=10**8)
            await wait_until(lambda: "order book is full" in refused)
            taker.links[victim.node_id].writer.transport.pause_reading()
            task = asyncio.ensure_future(
                taker.request_quotes("btc", "eth", 10**6, window_s=LONG_WINDOW_S, enough=2)
            )
            await wait_until(
                lambda: task.done() or any(p.quotes for p in taker._pending.values()), 30
            )
            taker.links[victim.node_id].writer.transport.resume_reading()
            cid, quotes = await task
            assert [q.delivered for q in quotes][:1] == [33 * 10**6], taker.quote_window(cid)
            assert taker.quote_window(cid).ended == "enough"
        finally:
            taker.links[victim.node_id].writer.transport.resume_reading()
            await stop_all([taker, rival, victim])

    run(go())


def _offer(key: Ed25519PrivateKey, now: int) -> SignedOffer:
    o = Offer(os.urandom(16), "btc", "eth", 2, 1, 1, 10**6, True, 0, now + 60_000, now)
    return make_offer(key, o)


def test_a_book_that_evicted_or_refused_an_offer_for_room_is_not_complete():
    """The early end trusts the book to hold every live offer that reached it. An offer
    evicted for a better-standing maker's (a rival that has answered trades) leaves as
    surely as one refused: before, eviction left the book "complete" and the evicted
    maker unawaited."""
    honest, rival = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    rival_id = rival.public_key().public_bytes_raw()
    now = 10**12
    book = OrderBook(1, max_makers=4, standing=lambda m: 1.0 if m == rival_id else 0.0)
    assert book.add(_offer(honest, now), now).accepted and book.complete(now)
    # Evicted: the rival (standing 1) takes the only slot from the honest maker (0).
    assert book.add(_offer(rival, now + 1), now + 1).accepted
    assert len(book) == 1 and not book.complete(now + 1)
    # Refused: a maker with no standing finds the book full.
    book2 = OrderBook(1)
    assert book2.add(_offer(rival, now), now).accepted and book2.complete(now)
    assert not book2.add(_offer(honest, now), now).accepted
    assert not book2.complete(now)
    # Complete again once any refused offer must have expired.
    assert book2.complete(now + MAX_OFFER_LIFETIME_MS + MAX_SEQ_AHEAD_MS + 1)


@pytest.mark.timeout(90)
def test_a_fill_from_unpublished_liquidity_stays_anonymous_to_the_taker():
    """A rival maker sends claims to learn who quotes what. A maker that fills only from its
    extra liquidity (no public offer for the pair: its prices were never signed publicly,
    and no taker awaits it) was anonymous to every taker that did not choose its route
    before v6; the v6 proof named it (and signed it) to every claim's sender. Now such a
    fill's ``op`` is the anonymous proof, sealed, of the same length: the taker learns no
    maker (and counts no bad proof), relays still see one box length for every fill; a
    maker with a public offer filling the claim is still named (the early end needs it)."""

    async def go():
        (taker, published) = await start_nodes(2, target_degree=0, addresses=ADDR)
        taker.config.dummy_hops = 0
        await link(taker, published)
        published.publish_offer("btc", "eth", (29, 1), max_in=10**8)
        await wait_until(lambda: len(taker.book) == 1)

        def liquidity(claim: Claim) -> tuple[int, int] | None:
            return (claim.amount, claim.amount * 32)

        hidden = ExchangeNode(
            Ed25519PrivateKey.generate(),
            ExchangeConfig(target_degree=0, addresses=ADDR),
            liquidity=liquidity,
        )
        await hidden.start()
        await link(taker, hidden)
        try:
            cid, quotes = await taker.request_quotes(
                "btc", "eth", 10**6, window_s=LONG_WINDOW_S, enough=2
            )
            assert sorted(q.delivered for q in quotes) == [29 * 10**6, 32 * 10**6]
            by = {q.delivered: q for q in quotes}
            assert by[29 * 10**6].maker == published.node_id
            anon = by[32 * 10**6]
            assert anon.maker is None
            plain = open_sealed(taker._pending[cid].reply, anon.fulfil.fulfil.op)
            assert hidden.node_id not in plain
            assert len(anon.fulfil.fulfil.op) == len(by[29 * 10**6].fulfil.fulfil.op)
            assert taker.stats.offer_proofs_bad == 0
        finally:
            await stop_all([taker, published, hidden])

    run(go())


@pytest.mark.timeout(90)
def test_a_flooded_pair_costs_the_taker_one_short_pass_per_claim_and_is_not_awaited():
    """An attacker floods the taker's book (below ``max_offers``: the book stays complete)
    with offers of fresh keys for the pair it trades, none of which ever answers. Before:
    each claim the taker sent sorted every live offer of the book by exact price
    (``OrderBook.pair``, Fractions: measured 2-3 s on this machine for 49 000 offers, the
    event loop blocked, every link stalled) and then awaited all the sybils. Now one pass,
    no sort, stops past ``MAX_AWAITED_MAKERS``: more than that fill the claim, nobody is
    awaited (the window runs as before v6) and ``pair`` is never called on a claim."""

    async def go():
        taker, honest = await start_nodes(2, target_degree=0, addresses=ADDR)
        taker.config.dummy_hops = 0
        await link(taker, honest)
        honest.publish_offer("btc", "eth", (29, 1), max_in=10**8)
        await wait_until(lambda: len(taker.book) == 1)
        now = now_ms()
        for _ in range(MAX_AWAITED_MAKERS + 1):
            # Signed by fresh keys as a flooder would (the book takes verified offers).
            assert taker.book.add(_offer(Ed25519PrivateKey.generate(), now), now).accepted
        sorted_scans = []
        pair = taker.book.pair

        def spy(*a, **kw):
            sorted_scans.append(a)
            return pair(*a, **kw)

        taker.book.pair = spy  # type: ignore[method-assign]
        try:
            cid, quotes = await taker.request_quotes(
                "btc", "eth", 10**5, window_s=LONG_WINDOW_S, enough=1
            )
            assert [q.delivered for q in quotes] == [29 * 10**5]
            w = taker.quote_window(cid)
            assert (w.ended, w.expected) == ("enough", 0)
            assert sorted_scans == []
        finally:
            await stop_all([taker, honest])

    run(go())
