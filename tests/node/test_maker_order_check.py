"""The maker's order check before co-signing (``kofo.node.trades.check_order_as_maker``, the
exchange's ``order_guard``): heights that pass a per-leg tolerance yet break the gap between
the two legs, which is what keeps the maker whole. Real exchange nodes on loopback for the
route; the engine's own participant check for the verdict."""

from __future__ import annotations

import asyncio
import logging
import os

import pytest

from kofo.exchange.node import RouteFailed
from kofo.exchange.route import LOCK_WINDOW_S, OrderPolicy, RouteParty, build_settlement_order
from kofo.node.trades import TradeRefused, check_order_as_maker, plan_order_times
from kofo.settlement.terms import DEFAULT_POLICIES, ChainPolicy, TermsRefused
from kofo.wire.exchange import Claim
from kofo.wire.expiry import BlockHeight, Expiry, UnixTime
from tests.exchange.helpers import line, stop_all, wait_until

ADDR = {"btc": "btc-addr", "eth": "eth-addr"}
TIP = 800_000
# Small policies; the taker plans the order's deadlines from them (plan_order_times): T_A is
# T_B at its slowest plus the maker's margin, notice(eth) 60 + settle(btc) (2 + 2) * 600 =
# 2460 s, at least the ledger's 3600 s (so a few blocks shaved off T_A break the margin).
POLICIES = {
    "btc": ChainPolicy("btc", True, 600, 2, 60, 2),
    "eth": ChainPolicy("eth", False, 12, 2, 60, 2),
}


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


def fit(policies: dict[str, ChainPolicy], shave: int = 0):
    """An initiator's fit of each leg to its chain (as ``trades.fit_expiries``), the btc height
    lowered by ``shave`` blocks (a taker moving its own leg's refund earlier)."""

    def f(chain: str, expiry_time: int, now_s: int) -> Expiry:
        p = policies[chain]
        if not p.height_clock:
            return UnixTime(expiry_time)
        return BlockHeight(TIP + p.to_units(expiry_time - now_s) - shave)

    return f


def within(blocks: int, policies: dict[str, ChainPolicy]):
    """The provider's per-leg check: within ``blocks`` of its own fit."""

    def check(chain: str, expiry: Expiry, expiry_time: int, now_s: int) -> None:
        mine = fit(policies)(chain, expiry_time, now_s)
        if abs(expiry.value - mine.value) > blocks:
            raise OrderPolicy(f"{chain} expiry {expiry} not within {blocks} blocks of {mine}")

    return check


def guard(maker_id: bytes, policies: dict[str, ChainPolicy]):
    def g(order, role: str) -> None:
        if role == "provider":
            now_s = order.legs[0].lock_by - LOCK_WINDOW_S
            now = {"btc": BlockHeight(TIP), "eth": UnixTime(now_s)}
            check_order_as_maker(order, policies, now, maker_node=maker_id)

    return g


def _order(policies, shave: int, now_s: int = 1_800_000_000, pair=("btc", "eth"), derived=False):
    claim = Claim(pair[0], pair[1], 10**6, 1, 1, (now_s + 60) * 1000, 3, b"\x03" * 32)
    return build_settlement_order(
        claim=claim,
        claim_id=b"\x04" * 32,
        fulfil_id=b"\x05" * 32,
        amount_in=10**6,
        delivered=30 * 10**6,
        initiator=RouteParty(b"\x06" * 32, {"btc": "t-btc", "eth": "t-eth"}),
        relays=[],
        provider=RouteParty(b"\x07" * 32, {"btc": "m-btc", "eth": "m-eth"}),
        provider_position=1,
        payment_hash=b"\x08" * 32,
        now_s=now_s,
        expiry_fit=fit(policies, shave),
        times=None if derived else plan_order_times(policies, pair[0], pair[1], now_s),
    ), {"btc": BlockHeight(TIP), "eth": UnixTime(now_s)}


def test_an_honest_fit_passes_and_a_shaved_height_within_tolerance_is_refused():
    order, now = _order(POLICIES, 0)
    check_order_as_maker(order, POLICIES, now, maker_node=b"\x07" * 32)
    shaved, now = _order(POLICIES, 3)
    # Three blocks are within a per-leg tolerance of a few blocks, yet leave 1800 s of gap.
    out = shaved.legs[0]
    within(3, POLICIES)("btc", out.expiry, out.expiry_time, out.lock_by - LOCK_WINDOW_S)
    with pytest.raises(TermsRefused) as exc:
        check_order_as_maker(shaved, POLICIES, now, maker_node=b"\x07" * 32)
    assert exc.value.code == "terms_margin_too_small"
    with pytest.raises(TradeRefused):  # not the maker of it
        check_order_as_maker(order, POLICIES, now, maker_node=b"\x06" * 32)


@pytest.mark.parametrize("pair", [("btc", "eth"), ("eth", "btc")])
def test_with_production_policies_the_derived_deadlines_are_refused_on_btc(pair):
    # The exchange derives T_B = now + 4800 s and T_A = T_B + 3600 s whatever the chains; the
    # production margins on Bitcoin (12 blocks to bury, blocks 40 % faster or slower) need far
    # more: the maker's own engine would refuse the swap after the order is committed. The
    # maker's guard refuses to co-sign it instead (docs/exchange.md, per-chain expiries).
    policies = dict(DEFAULT_POLICIES)
    order, now = _order(policies, 0, pair=pair, derived=True)
    with pytest.raises(TermsRefused):
        check_order_as_maker(order, policies, now, maker_node=b"\x07" * 32)


def test_a_maker_guarded_by_its_engines_check_does_not_cosign_a_shaved_height(caplog):
    # Before: a provider whose expiry_check allows 3 blocks co-signed a btc height shaved by
    # 3 blocks (the taker's leg refundable 1800 s after the maker's, its margin 2460 s).
    caplog.set_level(logging.INFO, logger="kofo.exchange.node")

    async def go():
        nodes = await line(3, addresses=ADDR, settle_timeout_s=1.5, dummy_hops=0)
        taker, _relay, maker = nodes
        taker.config.expiry_fit = fit(POLICIES, shave=3)
        taker.config.plan_times = lambda have, want, now_s: plan_order_times(
            POLICIES, have, want, now_s
        )
        maker.config.expiry_check = within(3, POLICIES)
        maker.config.order_guard = guard(maker.node_id, POLICIES)
        try:
            maker.publish_offer("btc", "eth", (30, 1), max_in=10**8)
            await wait_until(lambda: len(taker.book) == 1)
            cid, quotes = await taker.request_quotes("btc", "eth", 10**6, window_s=5, enough=1)
            with pytest.raises(RouteFailed, match="signatures"):
                await taker.settle(cid, quotes[0], os.urandom(32))
            assert "terms_margin_too_small" in caplog.text
            # The honest fit is co-signed.
            taker.config.expiry_fit = fit(POLICIES)
            cid, quotes = await taker.request_quotes("btc", "eth", 10**6, window_s=5, enough=1)
            commit = await taker.settle(cid, quotes[0], os.urandom(32))
            assert isinstance(commit.order.legs[0].expiry, BlockHeight)
        finally:
            await stop_all(nodes)

    run(go())


def test_the_makers_terms_from_the_order_hold_until_its_lock_deadline():
    """``maker_terms`` (the maker acting from a committed order with no proposal): at any
    time from the commit until ``legs[1].lock_by`` the terms pass the engine's participant
    check and never let the maker lock later than ``legs[1].lock_by``; after it, refused.
    Before the reveal deadline was capped by T_B, a maker that saw the taker's lock late
    refused terms it had to honour (and the ledger would have slashed it)."""
    from kofo.node.trades import maker_terms
    from kofo.settlement.terms import check_terms_as_participant

    order, start = _order(POLICIES, 0)
    t0 = order.legs[0].lock_by - LOCK_WINDOW_S
    maker = b"\x07" * 32
    last = order.legs[1].lock_by - t0 - POLICIES["btc"].settle_seconds() // 2
    for dt in (0, LOCK_WINDOW_S // 2, LOCK_WINDOW_S, LOCK_WINDOW_S + 600, last):
        now = {
            "btc": BlockHeight(start["btc"].value + dt // 600),
            "eth": UnixTime(start["eth"].value + dt),
        }
        terms = maker_terms(order, POLICIES, now, maker_node=maker, wall_now=t0 + dt)
        check_terms_as_participant(
            terms, POLICIES, now, my_address={"btc": "m-btc", "eth": "m-eth"}
        )
        assert terms.participant_lock_by.value <= order.legs[1].lock_by, dt
        assert terms.participant_leg.expiry == order.legs[1].expiry
        assert terms.initiator_leg.expiry == order.legs[0].expiry
    late = {"btc": BlockHeight(TIP + 100), "eth": UnixTime(order.legs[1].lock_by + 1)}
    with pytest.raises(TermsRefused) as exc:
        maker_terms(order, POLICIES, late, maker_node=maker, wall_now=order.legs[1].lock_by + 1)
    assert exc.value.code == "terms_deadline_passed"
