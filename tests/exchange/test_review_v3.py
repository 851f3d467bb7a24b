"""Attacker-briefed review of link protocol v3 (per-chain expiries, composer hooks, signed
contact, direct messages): each test is an attack that worked before its fix. Real nodes on
loopback, as in test_network.py."""

from __future__ import annotations

import asyncio
import logging
import os

import pytest

from kofo.exchange.node import RouteFailed
from kofo.wire.expiry import BlockHeight, Expiry, UnixTime

from .helpers import line, stop_all, wait_until

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
