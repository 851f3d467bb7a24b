"""The daemon's importance lookup (issue 14 item 6, docs/node.md "Importance"): the exchange
ranks quotes by the maker's ledger importance, read from a cache of the ledger's
``/importance`` ranking that the daemon refreshes in the background, never from the ledger on
the quote path. In-process: ``kofo devnet``'s servers (the real solo ledger over its RPC) and
three daemons (taker, relay, maker), as in test_daemon.py."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from kofo.errors import InvalidInput
from kofo.node import daemon as daemon_module
from kofo.node.daemon import Node
from kofo.node.importance import ImportanceCache
from kofo.node.service import TradeRequest
from kofo.wire.codec import decode, encode
from tests.node.test_daemon import PRICE, SATS, _ended, network, until

pytestmark = [pytest.mark.timeout(400)]


async def _ledger_ranking(node: Node) -> dict[bytes, int]:
    raw = await asyncio.to_thread(node.ledger.abci_query, "/importance", encode(1000))
    return {bytes(n): int(s) for n, s in decode(raw) if int(s) > 0}


async def _trade(taker: Node) -> str:
    view = await taker.create_trade(
        TradeRequest(sell="btc", amount=SATS, buy="eth", min_receive=SATS * PRICE // 2)
    )
    return view.trade_id


def test_the_lookup_reads_the_ledgers_importance_and_an_outage_fails_no_trade(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a settled trade the maker has ledger importance: the taker's exchange reads the
    same value through the daemon's cache (before: the daemon gave the exchange no lookup,
    every maker counted 0). The ledger down: the cache keeps the last known values, quotes are
    ranked with them and a trade started during the outage is submitted, then redeemed once
    the ledger is back."""
    # raising=False: on the old daemon the test fails on what it asserts, not here
    monkeypatch.setattr(daemon_module, "IMPORTANCE_INTERVAL", 0.5, raising=False)
    asyncio.run(_lookup(tmp_path))


async def _lookup(tmp_path: Path) -> None:
    async with network(tmp_path) as net:
        taker, maker = net.nodes["taker"], net.nodes["maker"]
        assert taker.exchange is not None
        await until(lambda: len(taker.exchange.book.pair("btc", "eth", 0)), "the offer")  # type: ignore[union-attr]
        first = await _trade(taker)
        done = await until(lambda: _ended(taker, first), "the first trade to end", 180)
        assert done.state == "redeemed", (done.error, [p.phase for p in done.phases])
        # the settled order gave the maker volume, so importance on the ledger
        ranking = await until(
            lambda: _has(_ledger_ranking(taker), maker.node_id), "the maker's importance"
        )
        assert ranking[maker.node_id] > 0
        # what the exchange ranks with (rank, book standing, fan-out): the daemon's lookup
        lookup = taker.exchange._importance
        assert lookup is not None, "the daemon gives the exchange no importance lookup"

        async def same() -> bool:
            # the ledger's score decays by the block: equal at some refresh, not every one
            ledger = await _ledger_ranking(taker)
            return all(lookup(n) == s for n, s in ledger.items())

        await until(same, "the exchange's lookup to give the ledger's importance")
        score = lookup(maker.node_id)
        assert score > 0
        assert lookup(bytes(32)) == 0  # unknown: 0
        cache = taker.importance_cache
        assert cache.score(maker.node_id) == score and len(cache) <= cache.size

        # the ledger down: reads fail, the last known values stay
        await asyncio.to_thread(net.devnet.ledger.pause)
        try:
            failures = cache.failures
            await until(lambda: cache.failures > failures, "a failed importance read")
            assert cache.score(maker.node_id) == score
            assert lookup(maker.node_id) == score
            # the quote path needs no ledger: quotes come, ranked, the route co-signs
            quotes = await taker.quotes(
                TradeRequest(sell="btc", amount=SATS, buy="eth", min_receive=SATS * PRICE // 2)
            )
            assert quotes
            second = await _trade(taker)
            await until(
                lambda: (v := taker.store.find(second)) is not None and v.state == "submitted",
                "the second trade submitted during the outage",
            )
            assert cache.score(maker.node_id) == score
        finally:
            await asyncio.to_thread(net.devnet.ledger.resume)
        done = await until(lambda: _ended(taker, second), "the second trade to end", 180)
        assert done.state == "redeemed", (done.error, [p.phase for p in done.phases])
        # back: the cache reads the ledger again
        await until(lambda: cache.failures == 0, "an importance read after the outage")


async def _has(ranking_coro, node: bytes):
    ranking = await ranking_coro
    return ranking if node in ranking else None


def test_the_cache_is_bounded_and_keeps_its_values_when_a_read_fails() -> None:
    """At most ``size`` nodes held (the ledger's ranking is best first: the best kept), a
    score of 0 not held, and a failed read changes nothing."""
    cache = ImportanceCache(size=3)
    cache.update([(bytes([i]) * 32, 10 - i) for i in range(5)] + [(b"z" * 32, 0)])
    assert len(cache) == 3
    assert [cache(bytes([i]) * 32) for i in range(5)] == [10, 9, 8, 0, 0]
    cache.failed()
    cache.failed()
    assert cache.failures == 2 and cache(bytes(32)) == 10
    cache.update([(b"a" * 32, 4)])
    assert cache.failures == 0 and cache(bytes(32)) == 0 and cache(b"a" * 32) == 4
    with pytest.raises(InvalidInput, match=r"ImportanceCache size must be 1\.\.1000, got 0"):
        ImportanceCache(size=0)
