"""Issue 18, the attacker-briefed review: attacks on the hardened exchange that each got an
honest node scored or its table filled. Real nodes on loopback; every test failed before its fix."""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

import pytest

from kofo.exchange.node import ExchangeNode

from .helpers import line, stop_all, wait_until

ADDR = {"btc": "btc-addr", "eth": "eth-addr"}


def _record_blame(node: ExchangeNode) -> dict[bytes, list[str]]:
    """Every penalty ``node`` gives, by peer (scores decay, so the score itself is no record)."""
    blamed: dict[bytes, list[str]] = {}
    real = node._abuse

    def abuse(link: Any, reason: str, penalty: int) -> None:
        blamed.setdefault(link.peer_id, []).append(reason)
        real(link, reason, penalty)

    node._abuse = abuse  # type: ignore[method-assign]
    return blamed


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 60))


@pytest.mark.timeout(60)
def test_a_taker_cannot_get_an_honest_relay_scored_by_an_order_only_the_maker_refuses(caplog):
    """A taker puts a protocol fee rate in the order that the relay allows (its limit,
    ``max_protocol_fee_bps``) but the maker does not (the rate it quoted with). The maker
    refused it and scored its upstream, the honest relay: ten such orders a few seconds apart
    got the relay banned from the maker. A refusal on the refusing party's own policy (fee rate,
    clock) now scores the upstream only if it is the order's initiator."""

    caplog.set_level(logging.INFO, logger="kofo.exchange.node")

    async def go() -> None:
        nodes = await line(3, protocol_fee_bps=10, settle_timeout_s=30, addresses=ADDR)
        taker, relay, maker = nodes
        blamed = _record_blame(maker)
        try:
            maker.publish_offer("btc", "eth", (30, 1), max_in=10**8)
            await wait_until(lambda: len(taker.book) == 1)
            cid, quotes = await taker.request_quotes("btc", "eth", 10**6, window_s=5, enough=1)
            taker.config.protocol_fee_bps = 20  # the attack: a rate only the maker refuses
            settling = asyncio.ensure_future(taker.settle(cid, quotes[0], os.urandom(32)))
            await wait_until(lambda: "protocol_fee_bps 20 is above the limit" in caplog.text, 20)
            # The relay signed (its limit is 100 bps): its osig is on its way to the taker.
            await wait_until(lambda: relay._relay[cid].order_data is not None, 20)
            assert not settling.done()
            settling.cancel()
            assert blamed.get(relay.node_id) is None, "the honest relay was scored"
            assert relay.node_id in maker.links
        finally:
            await stop_all(nodes)

    run(go())
