"""Attacker review of the chain clocks (issue 17): a leg whose expiry is not in its chain's unit.

The clock rules compare a height expiry with a chain's attested clock and take a unix expiry
as exact against the ledger's block time. Neither held for a leg written in the *other* unit:
a ``btc`` leg with a unix expiry is a CLTV time lock, judged by Bitcoin's median time past
(about an hour behind the wall clock), which the ledger read as exact; an ``eth`` leg with a
height expiry is one no Ethereum HTLC enforces. The engine refuses both
(``terms_expiry_unit``), yet a taker could write the provider's leg that way: two unix legs
need no clock, so the take was recorded and the honest provider, whose engine cannot fill
the order, was slashed for not honouring it; any order could be committed with such legs.
Real ledger app in process.
"""

import dataclasses

import pytest

from kofo.clearance.params import LedgerParams
from kofo.errors import InvalidInput
from kofo.wire.expiry import BlockHeight, UnixTime
from kofo.wire.orders import CommitOrder, sign_tx, with_derived_id

from .helpers import commit_tx, make_order, prove_legs, take_evidence
from .test_chain_clock import BTC_SAFE, BTC_TIP, LTC_TIP, _codes, _take, net  # noqa: F401 (fixture)

pytestmark = pytest.mark.timeout(300)


@pytest.mark.parametrize(
    "give,take,pay,own",
    [
        # eth pays the provider; its btc leg is written as a unix (CLTV time) lock at its
        # expiry_time: two unix legs, no clock consulted (old code: take recorded)
        ("btc", "eth", None, "unix"),
        # btc pays the provider with a unix expiry, its ltc leg by height
        ("ltc", "btc", "unix", None),
    ],
)
def test_a_take_with_a_leg_in_the_wrong_unit_is_not_recorded(net, give, take, pay, own):  # noqa: F811
    ledger, m1, alice = net
    quote, honest = _take(ledger, m1, alice, give, take, None, None)
    legs = honest.order.legs
    pay_e = UnixTime(legs[0].expiry_time) if pay == "unix" else None
    own_e = UnixTime(legs[1].expiry_time) if own == "unix" else None
    quote, taken = _take(ledger, m1, alice, give, take, pay_e, own_e)
    result = ledger.block(take_evidence(quote, m1, alice, order=taken))
    assert _codes(result) == ["order_invalid"]
    assert "unit" in result.results[0].log
    full = CommitOrder(taken.order, (*taken.signatures, taken.order.sign(m1.key)))
    result = ledger.block(sign_tx(m1.key, prove_legs(full)))
    assert _codes(result) == ["order_invalid"] and "unit" in result.results[0].log
    assert ledger.app.order(taken.order.order_id) is None


def test_an_eth_leg_with_a_height_expiry_is_refused_at_commit(net):  # noqa: F811
    ledger, m1, alice = net
    order = make_order([alice, m1], t0=ledger.time)
    assert [leg.chain for leg in order.legs] == ["btc", "eth"]
    legs = list(order.legs)
    legs[1] = dataclasses.replace(legs[1], expiry=BlockHeight(20_000_000))
    order = dataclasses.replace(order, legs=tuple(legs))
    order = with_derived_id(order)
    result = ledger.block(commit_tx(order, [alice, m1], alice, ts=ledger.time))
    assert _codes(result) == ["order_invalid"]
    assert "legs[1]" in result.results[0].log and "unit" in result.results[0].log
    # the honest order (btc by height, eth by unix time) is still accepted
    honest = make_order([alice, m1], t0=ledger.time)
    honest = with_derived_id(
        dataclasses.replace(
            honest,
            legs=(
                dataclasses.replace(honest.legs[0], expiry=BlockHeight(BTC_TIP + 100)),
                *honest.legs[1:],
            ),
        )
    )
    ledger.ok(commit_tx(honest, [alice, m1], alice, ts=ledger.time))


def test_expiry_units_params_are_checked():
    assert LedgerParams().expiry_unit == {"btc": "height", "ltc": "height", "eth": "unix"}
    with pytest.raises(InvalidInput, match="expiry_unit"):
        LedgerParams(expiry_unit={"btc": "blocks"})


# -- a clock that stopped moving ---------------------------------------------------------------


def _aged_take(ledger, m1, alice, age):
    """Validators keep attesting the btc tip they saw ``age`` seconds ago (more than a third of
    the power behind: the kept height stays, its ``time`` refreshed, so it counts as fresh);
    the taker writes a take whose provider ltc leg sits at the ledger's strict boundary on that
    clock: btc pays in 100 blocks, ltc expires in 135 (``99 x 360 - 135 x 210 = 7,290 >=
    7,260`` s)."""
    for _ in range(3):
        ledger.attested(time=ledger.time + age // 3)
    clock = ledger.app.chain_clock("btc")
    assert clock["height"] == BTC_SAFE and ledger.time - clock["time"] <= 1
    return _take(ledger, m1, alice, "ltc", "btc", None, BlockHeight(LTC_TIP + 135))


def test_a_take_on_a_clock_stuck_for_long_is_not_recorded_at_its_boundary(net):  # noqa: F811
    # 900 s after btc's kept height was reached, btc may be 2 blocks past it (900 s / 360 s
    # at the fast rate), not one: the leg paying the provider may then expire 360 s sooner
    # than read (7,290 - 360 = 6,930 < 7,260 s), under the margin; the provider's engine,
    # reading the real tip, refuses it. Old code: the take was recorded (the kept height
    # read as "the tip but a block"), and the honest provider slashed 2 % for not
    # committing it.
    ledger, m1, alice = net
    quote, taken = _aged_take(ledger, m1, alice, 900)
    result = ledger.block(take_evidence(quote, m1, alice, order=taken))
    assert _codes(result) == ["evidence_invalid"]
    assert "notice + settle" in result.results[0].log


def test_a_take_on_a_clock_just_reached_is_recorded_at_its_boundary(net):  # noqa: F811
    ledger, m1, alice = net
    quote, taken = _aged_take(ledger, m1, alice, 0)
    assert _codes(ledger.block(take_evidence(quote, m1, alice, order=taken))) == [""]


# -- a provider leg held longer than any engine locks funds ------------------------------------


def test_a_take_whose_provider_leg_outlasts_max_lock_seconds_is_not_recorded(net):  # noqa: F811
    # btc pays in 800 blocks, the provider's ltc leg expires in 1,300 (up to 273,000 s, past
    # the engine's 3 days): ordered safely on the clocks (gap 14,640 s). The engine refuses a
    # leg that may hold its funds longer than max_lock_seconds (terms_expiry_too_long); the
    # ledger bounded no expiry, so a taker pinned a provider's funds for weeks or, the
    # provider refusing, had it slashed 2 % for an honest refusal. Old code: take recorded.
    ledger, m1, alice = net
    quote, taken = _take(
        ledger, m1, alice, "ltc", "btc", BlockHeight(BTC_TIP + 800), BlockHeight(LTC_TIP + 1_300)
    )
    result = ledger.block(take_evidence(quote, m1, alice, order=taken))
    assert _codes(result) == ["evidence_invalid"]
    assert "max_lock_seconds" in result.results[0].log
    # within the bound (ltc in 1,100 blocks: up to 231,000 s) the same take is recorded
    quote, taken = _take(
        ledger, m1, alice, "ltc", "btc", BlockHeight(BTC_TIP + 800), BlockHeight(LTC_TIP + 1_100)
    )
    assert _codes(ledger.block(take_evidence(quote, m1, alice, order=taken))) == [""]
