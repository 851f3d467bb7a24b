"""The taker ranks quotes by full fill, net rate, then the MAKER's ledger importance (issue 14
item 6), the maker being the one the fulfil's verified offer proof names (exchange v6). Before,
ties at the same net rate went to the importance of the neighbour the quote came through,
which says nothing about the maker (a well-connected relay in front of a nobody won).

Every network here is two routes of two hops: taker - relay - maker, twice, both makers
publishing the same price, the relay in front of the less important maker being by far the
more important neighbour."""

from __future__ import annotations

import asyncio
import dataclasses
import os

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import kofo.exchange.node as exnode
from kofo.exchange.node import ExchangeConfig, ExchangeNode, RouteFailed
from kofo.wire.exchange import OfferProof

from .helpers import link, start_nodes, stop_all, wait_until

ADDR = {"btc": "btc-addr", "eth": "eth-addr"}
PRICE = 30
AMOUNT = 10**6
LONG_WINDOW_S = 20.0  # both quotes come well before it (enough=2 ends the collection)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 90))


class Net:
    """taker - r1 - m1 and taker - r2 - m2; ``scores`` is the taker's importance lookup."""

    def __init__(self, taker: ExchangeNode, nodes: list[ExchangeNode], scores: dict[bytes, int]):
        self.taker = taker
        self.r1, self.m1, self.r2, self.m2 = nodes
        self.scores = scores

    @property
    def all(self) -> list[ExchangeNode]:
        return [self.taker, self.r1, self.m1, self.r2, self.m2]


async def two_routes() -> Net:
    scores: dict[bytes, int] = {}
    taker = ExchangeNode(
        Ed25519PrivateKey.generate(),
        ExchangeConfig(target_degree=0, addresses=ADDR, dummy_hops=0),
        importance=lambda n: scores.get(n, 0),
    )
    await taker.start()
    nodes = await start_nodes(4, target_degree=0, addresses=ADDR)
    r1, m1, r2, m2 = nodes
    for a, b in ((taker, r1), (r1, m1), (taker, r2), (r2, m2)):
        await link(a, b)
    for m in (m1, m2):
        m.publish_offer("btc", "eth", (PRICE, 1), max_in=10**8)
    await wait_until(lambda: len(taker.book) == 2)
    return Net(taker, nodes, scores)


async def quotes_with_first(net: Net, first: ExchangeNode):
    """Request quotes; hold back the other route's (its relay's link not read) until the
    quote of ``first``'s route is in: the arrival order is the test's choice, not the load's."""
    taker = net.taker
    other = net.r2 if first is net.m1 else net.r1
    transport = taker.links[other.node_id].writer.transport
    transport.pause_reading()
    before = set(taker._pending)
    task = asyncio.ensure_future(
        taker.request_quotes("btc", "eth", AMOUNT, window_s=LONG_WINDOW_S, enough=2)
    )
    try:
        await wait_until(lambda: set(taker._pending) - before != set(), timeout=30)
        (cid,) = set(taker._pending) - before
        await wait_until(lambda: len(taker._pending[cid].quotes) == 1, timeout=30)
    finally:
        transport.resume_reading()
    got_cid, quotes = await task
    assert got_cid == cid and len(quotes) == 2
    return cid, quotes


@pytest.mark.timeout(90)
def test_the_more_important_maker_wins_at_the_same_net_rate_whatever_arrives_first():
    """m1 (importance 100) behind r1 (0); m2 (importance 5) behind r2 (1000), same price, same
    hops. m1's quote is first, whichever arrived first and although r2 is the far more
    important neighbour. Old code: m2's (its neighbour r2 more important)."""

    async def go():
        net = await two_routes()
        net.scores.update({net.m1.node_id: 100, net.m2.node_id: 5, net.r2.node_id: 1000})
        try:
            for first in (net.m1, net.m2):
                cid, quotes = await quotes_with_first(net, first)
                assert [q.rate for q in quotes] == [PRICE, PRICE]
                assert [q.maker for q in quotes] == [net.m1.node_id, net.m2.node_id], first
                assert [q.via for q in quotes] == [net.r1.node_id, net.r2.node_id]
                # a total order: any arrival order, any receive times, the same ranking
                claim = net.taker._pending[cid].sc.claim
                a, b = (dataclasses.replace(q, received_ms=1) for q in quotes)
                assert net.taker.rank(claim, [b, a]) == net.taker.rank(claim, [a, b]) == [a, b]
            # the importance follows the lookup (the ledger's, in the node): m2 now leads
            net.scores[net.m2.node_id] = 101
            _, quotes = await quotes_with_first(net, net.m1)
            assert [q.maker for q in quotes] == [net.m2.node_id, net.m1.node_id]
        finally:
            await stop_all(net.all)

    run(go())


@pytest.mark.timeout(90)
def test_a_quote_whose_offer_proof_is_missing_or_forged_gets_no_importance(monkeypatch):
    """m2 (importance 0, behind the important relay r2) fills with an offer proof that names
    m1 (importance 100): (a) made up, (b) m1's genuine proof for this very claim but for
    another filler key, or (missing) with no proof at all. None names a maker, so m2's quote
    counts importance 0 and m1's wins. Had it counted m1's importance, the tie would go on to
    the neighbour and m2's quote would win, as it did on the old code."""

    async def go():
        net = await two_routes()
        net.scores.update({net.m1.node_id: 100, net.r2.node_id: 1000})
        real_proof, real_seal = exnode.make_offer_proof, exnode.seal
        case = ""

        def make_offer_proof(key, claim_id, filler_eph, offer_id):
            if key is not net.m2._key:
                return real_proof(key, claim_id, filler_eph, offer_id)
            if case == "a":
                return OfferProof(net.m1.node_id, offer_id, bytes(64)).to_bytes()
            if case == "b":
                return real_proof(net.m1._key, claim_id, os.urandom(32), offer_id)
            return b"MISSING"

        def seal(key, plain):
            return b"" if plain == b"MISSING" else real_seal(key, plain)

        monkeypatch.setattr(exnode, "make_offer_proof", make_offer_proof)
        monkeypatch.setattr(exnode, "seal", seal)
        try:
            for case in ("a", "b", "missing"):
                bad = net.taker.stats.offer_proofs_bad
                _, quotes = await quotes_with_first(net, net.m2)
                assert [q.via for q in quotes] == [net.r1.node_id, net.r2.node_id], case
                assert [q.maker for q in quotes] == [net.m1.node_id, None], case
                assert [q.rate for q in quotes] == [PRICE, PRICE], case
                assert net.taker.stats.offer_proofs_bad == bad + (case != "missing"), case
        finally:
            await stop_all(net.all)

    run(go())


@pytest.mark.timeout(90)
def test_a_maker_that_lends_its_name_to_another_filler_fails_the_route(monkeypatch):
    """m1 (importance 100) signs a genuine offer proof for m2's fill (collusion: only m1's key
    can): m2's quote ranks with m1's importance, first (its neighbour r2 the more important).
    ``settle`` then finds the provider that joins is m2, not the maker the proof names, and
    refuses the route before any order is built. Old code: the order was co-signed."""

    async def go():
        net = await two_routes()
        net.scores.update({net.m1.node_id: 100, net.r2.node_id: 1000})
        real_proof = exnode.make_offer_proof

        def make_offer_proof(key, claim_id, filler_eph, offer_id):
            if key is net.m2._key:
                key = net.m1._key
            return real_proof(key, claim_id, filler_eph, offer_id)

        monkeypatch.setattr(exnode, "make_offer_proof", make_offer_proof)
        try:
            cid, quotes = await quotes_with_first(net, net.m1)
            assert [q.maker for q in quotes] == [net.m1.node_id, net.m1.node_id]
            assert [q.via for q in quotes] == [net.r2.node_id, net.r1.node_id]
            with pytest.raises(RouteFailed, match="not the maker its offer proof names"):
                await net.taker.settle(cid, quotes[0], os.urandom(32))
            # nobody scored: the relay in front may be honest
            assert net.taker._scores.get(net.r2.node_id, 0) == 0
        finally:
            await stop_all(net.all)

    run(go())
