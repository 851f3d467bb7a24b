"""The taker's per-chain-pair plan of a routed order's deadlines (``kofo.node.trades.
plan_order_times``, the exchange's ``plan_times``; link protocol v4): planned from the engine's
margins and fitted to each chain, the order is one the maker's guard co-signs (its engine's own
participant check), the relays' bounds accept and the real ledger app commits; a plan short of
the maker's margin is refused by the guard; a relay refuses deadlines out of order or beyond
the horizon. Real exchange nodes on loopback for the routes."""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import replace
from itertools import permutations

import pytest

import kofo.exchange.node as exnode
from kofo.exchange.node import RouteFailed
from kofo.exchange.route import (
    LOCK_WINDOW_S,
    MAX_ORDER_HORIZON_S,
    RouteParty,
    build_settlement_order,
    order_times_problem,
)
from kofo.node.trades import check_order_as_maker, plan_order_times
from kofo.settlement.terms import DEFAULT_POLICIES, ChainPolicy, TermsRefused, devnet_policy
from kofo.wire.exchange import Claim
from kofo.wire.expiry import BlockHeight, Expiry, UnixTime
from kofo.wire.orders import with_derived_id
from tests.clearance.helpers import T0, Ledger, commit_tx, leg_address
from tests.clearance.helpers import Party as LedgerParty
from tests.exchange.helpers import line, stop_all, wait_until

TAKER, MAKER = b"\x06" * 32, b"\x07" * 32
NOW_S = 1_800_000_000
TIPS = {"btc": 800_000, "ltc": 2_700_000}
DEVNET = {
    "btc": devnet_policy("btc", height_clock=True),
    "ltc": devnet_policy("ltc", height_clock=True),
    "eth": devnet_policy("eth", height_clock=False),
}
PAIRS = list(permutations(("btc", "ltc", "eth"), 2))


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


def chain_now(policies: dict[str, ChainPolicy], now_s: int) -> dict[str, Expiry]:
    return {
        c: BlockHeight(TIPS[c]) if p.height_clock else UnixTime(now_s) for c, p in policies.items()
    }


def fit(policies: dict[str, ChainPolicy]):
    """The initiator's fit of each leg to its chain, as ``trades.fit_expiries`` does it."""

    def f(chain: str, expiry_time: int, now_s: int) -> Expiry:
        p = policies[chain]
        if not p.height_clock:
            return UnixTime(expiry_time)
        return BlockHeight(TIPS[chain] + p.to_units(expiry_time - now_s))

    return f


def planned_order(policies, have: str, want: str, times=None, now_s: int = NOW_S):
    claim = Claim(have, want, 10**6, 1, 1, (now_s + 60) * 1000, 3, b"\x03" * 32)
    return build_settlement_order(
        claim=claim,
        claim_id=b"\x04" * 32,
        fulfil_id=b"\x05" * 32,
        amount_in=10**6,
        delivered=30 * 10**6,
        initiator=RouteParty(TAKER, {c: leg_address(c, f"t-{c}") for c in ("btc", "ltc", "eth")}),
        relays=[],
        provider=RouteParty(MAKER, {c: leg_address(c, f"m-{c}") for c in ("btc", "ltc", "eth")}),
        provider_position=1,
        payment_hash=b"\x08" * 32,
        now_s=now_s,
        expiry_fit=fit(policies),
        times=plan_order_times(policies, have, want, now_s) if times is None else times,
    )


@pytest.mark.parametrize("policies", [DEFAULT_POLICIES, DEVNET], ids=["production", "devnet"])
@pytest.mark.parametrize(("have", "want"), PAIRS)
def test_a_planned_and_fitted_order_passes_the_makers_guard_and_the_protocol_bounds(
    policies, have, want
):
    times = plan_order_times(policies, have, want, NOW_S)
    assert order_times_problem(times, NOW_S) is None
    order = planned_order(policies, have, want)
    check_order_as_maker(order, policies, chain_now(policies, NOW_S), maker_node=MAKER)


@pytest.mark.parametrize("policies", [DEFAULT_POLICIES, DEVNET], ids=["production", "devnet"])
@pytest.mark.parametrize(("have", "want"), PAIRS)
def test_the_plan_still_holds_when_the_taker_proposes_at_its_lock_deadline(policies, have, want):
    # The maker's engine checks the taker's proposal after the ledger commit: until the taker's
    # lock deadline, each chain may have advanced by what the policy allows in that time
    # (blocks at their fastest). The margins must still be in the order then.
    order = planned_order(policies, have, want)
    later = {
        c: BlockHeight(TIPS[c] + p.to_units(LOCK_WINDOW_S))
        if p.height_clock
        else UnixTime(NOW_S + p.to_units(LOCK_WINDOW_S))
        for c, p in policies.items()
    }
    check_order_as_maker(order, policies, later, maker_node=MAKER)


@pytest.mark.parametrize(("have", "want"), PAIRS)
def test_a_plan_short_of_the_makers_margin_is_refused_by_its_guard(have, want):
    policies = DEFAULT_POLICIES
    out_lock, back_lock, t_b, t_a = plan_order_times(policies, have, want, NOW_S)
    # T_A moved closer to T_B: still in order (relays pass it), short of the maker's margin.
    t_short = t_b + (t_a - t_b) // 4
    short = planned_order(policies, have, want, times=(out_lock, back_lock, t_b, t_short))
    with pytest.raises(TermsRefused) as exc:
        check_order_as_maker(short, policies, chain_now(policies, NOW_S), maker_node=MAKER)
    assert exc.value.code == "terms_margin_too_small"
    # The maker's lock deadline on the ledger before the taker's lock can be buried and seen.
    hasty = planned_order(
        policies, have, want, times=(out_lock, out_lock + LOCK_WINDOW_S, t_b, t_a)
    )
    with pytest.raises(TermsRefused) as exc:
        check_order_as_maker(hasty, policies, chain_now(policies, NOW_S), maker_node=MAKER)
    assert exc.value.code == "terms_deadline_order"


def test_the_old_fixed_derivation_leaves_a_btc_maker_short():
    # What every order carried before v4, whatever its chains: refused by the maker's guard.
    old = (NOW_S + 600, NOW_S + 1200, NOW_S + 4800, NOW_S + 8400)
    order = planned_order(DEFAULT_POLICIES, "btc", "eth", times=old)
    with pytest.raises(TermsRefused):
        check_order_as_maker(
            order, DEFAULT_POLICIES, chain_now(DEFAULT_POLICIES, NOW_S), maker_node=MAKER
        )


def test_protocol_bounds_on_planned_times():
    t = NOW_S
    ok = plan_order_times(DEFAULT_POLICIES, "btc", "eth", t)
    assert order_times_problem(ok, t) is None
    a, b, c, d = ok
    assert "out of order" in (order_times_problem((a, b, d, c), t) or "")
    assert "out of order" in (order_times_problem((a, a, c, d), t) or "")
    assert "horizon" in (order_times_problem((a, b, c, t + MAX_ORDER_HORIZON_S + 1), t) or "")
    assert "lock_by" in (order_times_problem((a + 1, b, c, d), t) or "")


# -- through real exchange nodes ---------------------------------------------------------------

ADDR = {"btc": "btc-addr", "eth": "eth-addr"}


def maker_guard(maker_id: bytes, policies):
    def guard(order, role: str) -> None:
        if role == "provider":
            # The order's time, as the check derived it (within a minute of our clock).
            now_s = order.legs[0].lock_by - LOCK_WINDOW_S
            check_order_as_maker(order, policies, chain_now(policies, now_s), maker_node=maker_id)

    return guard


def test_a_btc_to_eth_order_planned_with_production_policies_is_cosigned_by_relay_and_maker():
    # Before (v3): every co-signer re-derived the fixed times and refused any other, so the
    # relay refused this plan ("legs[1].lock_by differs"), and the fixed times were refused by
    # the maker's guard: no safe Bitcoin route could be agreed.
    policies = DEFAULT_POLICIES

    async def go():
        nodes = await line(3, addresses=ADDR, settle_timeout_s=3.0, dummy_hops=0)
        taker, relay, maker = nodes
        taker.config.expiry_fit = fit(policies)
        taker.config.plan_times = lambda have, want, now_s: plan_order_times(
            policies, have, want, now_s
        )
        maker.config.expiry_fit = fit(policies)
        maker.config.expiry_check = lambda *a: None  # the guard judges the heights
        maker.config.order_guard = maker_guard(maker.node_id, policies)
        try:
            maker.publish_offer("btc", "eth", (30, 1), max_in=10**8)
            await wait_until(lambda: len(taker.book) == 1)
            cid, quotes = await taker.request_quotes("btc", "eth", 10**6, window_s=5, enough=1)
            commit = await taker.settle(cid, quotes[0], os.urandom(32))
            out, back = commit.order.legs
            assert isinstance(out.expiry, BlockHeight)
            assert commit.order.relays == (relay.node_id,)
            assert (out.lock_by, back.lock_by, back.expiry_time, out.expiry_time) == (
                plan_order_times(policies, "btc", "eth", out.lock_by - LOCK_WINDOW_S)
            )
        finally:
            await stop_all(nodes)

    run(go())


@pytest.mark.parametrize("bad", ["out_of_order", "beyond_horizon"])
def test_a_relay_refuses_times_out_of_order_or_beyond_the_horizon(bad, caplog, monkeypatch):
    caplog.set_level(logging.INFO)

    def plan(have: str, want: str, now_s: int):
        a, b, c, d = plan_order_times(DEFAULT_POLICIES, have, want, now_s)
        if bad == "out_of_order":
            return a, b, d, c  # the maker's leg expiring after the taker's
        return a, b, c, now_s + MAX_ORDER_HORIZON_S + 3600

    async def go():
        nodes = await line(3, addresses=ADDR, settle_timeout_s=1.5, dummy_hops=0)
        taker, relay, maker = nodes
        signed: list[str] = []
        maker.config.order_guard = lambda order, role: signed.append(role)
        try:
            maker.publish_offer("btc", "eth", (30, 1), max_in=10**8)
            await wait_until(lambda: len(taker.book) == 1)
            cid, quotes = await taker.request_quotes("btc", "eth", 10**6, window_s=5, enough=1)
            # The taker's own build refuses such a plan; a taker that skips it (this one
            # patches the check away) meets the relay's.
            real = exnode.build_settlement_order

            def unchecked(**kw):
                times = kw.pop("times")
                order = real(**kw)
                out, back = order.legs
                legs = (
                    replace(out, lock_by=times[0], expiry_time=times[3], expiry=UnixTime(times[3])),
                    replace(
                        back, lock_by=times[1], expiry_time=times[2], expiry=UnixTime(times[2])
                    ),
                )
                return with_derived_id(replace(order, legs=legs))

            taker.config.plan_times = plan
            monkeypatch.setattr(exnode, "build_settlement_order", unchecked)
            with pytest.raises(RouteFailed):
                await taker.settle(cid, quotes[0], os.urandom(32))
            monkeypatch.undo()
            assert signed == []  # never reached the maker's guard
            assert relay._scores.get(taker.node_id, 0) > 0  # the relay refused its initiator
            want = "out of order" if bad == "out_of_order" else "horizon"
            assert want in caplog.text
        finally:
            await stop_all(nodes)

    run(go())


# -- the ledger's own leg rules -----------------------------------------------------------------


@pytest.mark.parametrize(("have", "want"), PAIRS)
def test_the_real_ledger_app_commits_a_planned_order_for_every_production_pair(have, want):
    taker, maker = LedgerParty.make(0), LedgerParty.make(1)
    policies = DEFAULT_POLICIES
    claim = Claim(have, want, 10**6, 1, 1, (T0 + 60) * 1000, 3, b"\x03" * 32)
    order = build_settlement_order(
        claim=claim,
        claim_id=os.urandom(32),
        fulfil_id=os.urandom(32),
        amount_in=10**6,
        delivered=30 * 10**6,
        initiator=RouteParty(
            taker.id, {c: leg_address(c, f"t-{c}") for c in ("btc", "ltc", "eth")}
        ),
        relays=[],
        provider=RouteParty(maker.id, {c: leg_address(c, f"m-{c}") for c in ("btc", "ltc", "eth")}),
        provider_position=1,
        payment_hash=os.urandom(32),
        now_s=T0,
        protocol_fee_bps=10,
        expiry_fit=fit(policies),
        times=plan_order_times(policies, have, want, T0),
    )
    ledger = Ledger()
    # its validators see the chains where the plan does (tips at 6 and 12 confirmations): the
    # ledger's chain-clock check reads the planned expiries on the same clocks
    ledger.chains.tips.update(btc=TIPS["btc"] - 5, ltc=TIPS["ltc"] - 11)
    ledger.ok(taker.register_tx(), maker.register_tx())
    ledger.bonded(taker, maker)
    ledger.ok(commit_tx(order, [taker, maker], taker), time=T0 + 30)
    assert ledger.app.order(order.order_id)["status"] == "committed"
    # and the provider's leg leaves its margin in the strict reading too (the one a take and a
    # leg_not_locked judgement use): a default on a planned order is slashed, not excused
    from kofo.clearance import clocks

    tips = {c: ledger.app.chain_clock(c)["height"] for c in ("btc", "ltc")}
    pay, own = order.legs
    gap = clocks.expiry_gap(pay, own, T0 + 30, tips, ledger.app.params, strict=True)
    assert gap is not None and gap >= clocks.margin(pay, own, ledger.app.params)
