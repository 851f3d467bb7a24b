"""Attacker review of the bond reserved per take (issue 17): the attacks that worked.

Real ledger app, in process (solo attestations); setup as in ``test_take_bond.py``.
"""

import pytest

from kofo.settlement.chain import BlockHeight
from kofo.wire.orders import LegOutcome

from .helpers import BTC_TIP_SEEN, Ledger, Party, ledger_params, take_evidence, take_order
from .test_take_bond import (
    PROVIDER_BOND,
    QUOTE_SLASH,
    _codes,
    _deadline,
    _honour,
    _not_locked,
    _open_quote,
    _setup,
    _untouched,
)

pytestmark = pytest.mark.timeout(300)


@pytest.mark.parametrize("sybil_bond", [0, 100_000, 1_000_000])
def test_another_party_of_the_take_order_defaulting_for_the_taker_still_forfeits(sybil_bond):
    # The taker writes the whole order: it routes it through its sybil s, who pays the provider
    # in (legs[0] s -> m1) and never locks. The default was s's alone (5 % of little or
    # nothing), the taker's reservation untouched, and nothing excused the provider: a second
    # node of the griefer then slashed the honest provider, the griefing the reservation was
    # to close. Now the taker forfeits what s's slash does not cover (a well-bonded defaulter
    # costs an honest taker nothing: 5 % of 1,000,000 covers the 20,000 reserved).
    ledger, m1, _, (g1, g2, s) = _setup(QUOTE_SLASH, QUOTE_SLASH, sybil_bond)
    quote = _open_quote(ledger, m1)
    first = take_order(quote, m1, g1, route=[s, m1, g1])
    assert first.order.legs[0].sender == s.id and first.order.legs[0].recipient == m1.id
    ledger.ok(take_evidence(quote, m1, g1, order=first))
    second = take_evidence(quote, m1, g2)
    assert _codes(ledger.block(second)) == [""]
    ledger.ok(_honour(m1, first))
    result = _not_locked(ledger, m1, first, 0)  # s never paid the provider in
    assert _codes(result) == [""]
    paid = sybil_bond * 500 // 10_000
    assert ledger.app.node(s.id)["slashed"] == paid
    # the taker answers for its order (old code: g1 whole, its reservation kept)
    assert ledger.app.node(g1.id)["slashed"] == max(0, QUOTE_SLASH - paid)
    assert ledger.app.node(g1.id)["reserved"] == []
    result = ledger.block(second, time=_deadline(ledger, first, m1) + 1)
    assert _codes(result) == ["evidence_invalid"]  # old code: "" (m1 slashed 20,000)
    assert _untouched(ledger, m1)


def test_a_take_while_the_providers_bond_is_not_yet_attested_still_excuses_its_default():
    # The provider quotes as it bonds (its deposit not yet attested): a bondless griefer takes
    # first (the quote slash, hence the reservation, is 0 at that moment) and defaults; the
    # bond is attested; the griefer's second node files after the deadline. The first take's
    # default forfeited its (zero) reservation: that is all the quote promised when it was
    # taken (old code: no reservation recorded, so the default excused nothing and the
    # provider lost 2 % of the bond attested since).
    ledger = Ledger(params=ledger_params())
    m1 = Party.make(1, bond=PROVIDER_BOND)
    g1, g2 = Party.make(10), Party.make(11, bond=QUOTE_SLASH)
    ledger.ok(*(p.register_tx() for p in (m1, g1, g2)))
    ledger.bonded(g2)
    assert ledger.app.bond(m1.id) == 0
    quote = _open_quote(ledger, m1)
    first = take_order(quote, m1, g1)
    assert _codes(ledger.block(take_evidence(quote, m1, g1, order=first))) == [""]
    second = take_evidence(quote, m1, g2)
    assert _codes(ledger.block(second)) == [""]
    ledger.bonded(m1)
    assert ledger.app.bond(m1.id) == PROVIDER_BOND
    ledger.ok(_honour(m1, first))
    assert _codes(_not_locked(ledger, m1, first, 0)) == [""]
    result = ledger.block(second, time=_deadline(ledger, first, m1) + 1)
    assert _codes(result) == ["evidence_invalid"]  # old code: "" (m1 slashed 20,000)
    assert _untouched(ledger, m1)


def test_a_late_pay_in_keeps_the_reservation_when_the_provider_still_locked():
    # The griefer pays the provider in late (legs[0] attested after lock_by + attest_grace),
    # the honest provider still locks its own leg in time (it was paid), the griefer never
    # redeems and both legs refund. The order failed with the provider's leg locked in time,
    # which released the reservation; but a late pay-in is a default (the provider's lock
    # after it fills nothing, as for a sybil's take), so its leg_not_locked forfeited nothing
    # and a later taker slashed the provider. The reservation is now released on a failed
    # order only if the provider really filled it (every leg before its own in time too).
    ledger, m1, _, (g1, g2) = _setup(QUOTE_SLASH, QUOTE_SLASH)
    quote = _open_quote(ledger, m1)
    first = take_order(quote, m1, g1)
    order = first.order
    ledger.ok(take_evidence(quote, m1, g1, order=first))
    second = take_evidence(quote, m1, g2)
    assert _codes(ledger.block(second)) == [""]
    ledger.ok(_honour(m1, first))
    grace = ledger.app.params.attest_grace
    late = order.legs[0].lock_by + grace + 1
    assert late <= order.legs[1].lock_by + grace  # the provider can still lock in time
    ledger.attested(time=late - 1)  # the validators look at the deadline: no pay-in yet
    ledger.chains.see(order, 0, LegOutcome.LOCKED)
    ledger.chains.see(order, 1, LegOutcome.LOCKED)
    ledger.attested(time=late)
    ledger.chains.see(order, 1, LegOutcome.REFUNDED)
    ledger.chains.see(order, 0, LegOutcome.REFUNDED)
    ledger.attested()
    assert ledger.app.order(order.order_id)["status"] == "failed"
    assert len(ledger.app.node(g1.id)["reserved"]) == 1  # old code: [] (released)
    assert _codes(_not_locked(ledger, m1, first, 0)) == [""]
    assert ledger.app.node(g1.id)["slashed"] == QUOTE_SLASH  # old code: 1,000 (5 %)
    result = ledger.block(second, time=_deadline(ledger, first, m1) + 1)
    assert _codes(result) == ["evidence_invalid"]  # old code: "" (m1 slashed 20,000)
    assert _untouched(ledger, m1)


def test_a_pay_in_too_near_its_height_expiry_before_an_intermediary_forfeits_the_reservation():
    # Route [g1, s, m1]: the taker g1 pays its intermediary s (legs[0], btc) in time but 10
    # blocks before the leg's expiry height, and refunds at once; s is right not to lock
    # legs[1] (paying the provider in), so no leg_not_locked could be filed on any leg (s was
    # excused by the margin rule and holds no reservation): the default excused nothing and
    # g1's second node slashed the provider. The taker wrote the heights: that evidence now
    # forfeits its reservation for the provider's quote (s is not slashed) and excuses m1.
    ledger, m1, _, (g1, g2, s) = _setup(QUOTE_SLASH, QUOTE_SLASH, 0)
    quote = _open_quote(ledger, m1)
    first = take_order(quote, m1, g1, route=[g1, s, m1])
    order = first.order
    assert order.legs[1].sender == s.id and order.legs[1].recipient == m1.id
    expiry = order.legs[0].expiry
    assert isinstance(expiry, BlockHeight)
    ledger.ok(take_evidence(quote, m1, g1, order=first))
    second = take_evidence(quote, m1, g2)
    assert _codes(ledger.block(second)) == [""]
    ledger.ok(_honour(m1, first))
    ledger.chains.see(order, 0, LegOutcome.LOCKED, height=expiry.value - 10)
    ledger.attested(time=order.legs[0].lock_by)
    ledger.chains.see(order, 0, LegOutcome.REFUNDED, height=expiry.value + 1)
    ledger.attested()
    result = _not_locked(ledger, m1, first, 1)
    assert _codes(result) == [""]  # old code: evidence_invalid (height_expiry_margin)
    assert ledger.app.node(s.id)["slashed"] == 0 and ledger.app.node(s.id)["penalty_points"] == 0
    assert ledger.app.node(g1.id)["slashed"] == QUOTE_SLASH
    result = ledger.block(second, time=_deadline(ledger, first, m1) + 1)
    assert _codes(result) == ["evidence_invalid"]  # old code: "" (m1 slashed 20,000)
    assert _untouched(ledger, m1)


def _fail_early(ledger, order, leg):
    """``order.legs[leg]`` (a btc leg, height expiry) is seen refunded at once (locked at a
    height just before its expiry, written short): the order fails while legs[0] is in time."""
    expiry = order.legs[leg].expiry
    assert isinstance(expiry, BlockHeight)
    # short: a few blocks above the validators' btc tip (the order still passed the commit's
    # chain-clock check), so a refund at once is what the chain allows
    assert expiry.value - BTC_TIP_SEEN <= 10
    ledger.chains.see(order, 0, LegOutcome.LOCKED)
    ledger.chains.see(order, leg, LegOutcome.REFUNDED, height=expiry.value + 1)
    ledger.attested(time=order.legs[0].lock_by)
    assert ledger.app.order(order.order_id)["status"] == "failed"


def test_an_order_failed_early_by_a_later_leg_does_not_slash_the_provider():
    # Route [g1, m1, s]: g1 pays the provider in, in time; its sybil s (legs[2], a btc leg
    # whose expiry height the taker wrote short) refunds at once, and the order fails before
    # the provider's leg is due. No lock is attested after that: the provider was judged "not
    # locked" and slashed 5 %, then 2 % by g1's second node (old code: 69,000 in all). The
    # provider was right not to lock; its evidence now forfeits the taker's reservation.
    ledger, m1, _, (g1, g2, s) = _setup(QUOTE_SLASH, QUOTE_SLASH, 0)
    quote = _open_quote(ledger, m1)
    first = take_order(quote, m1, g1, route=[g1, m1, s])
    order = first.order
    ledger.ok(take_evidence(quote, m1, g1, order=first))
    second = take_evidence(quote, m1, g2)
    assert _codes(ledger.block(second)) == [""]
    ledger.ok(_honour(m1, first))
    _fail_early(ledger, order, 2)
    ledger.chains.see(order, 1, LegOutcome.LOCKED)  # (too late to be attested)
    ledger.attested(time=order.legs[1].lock_by)
    assert ledger.app.order(order.order_id)["legs"][1]["outcome"] is None
    result = _not_locked(ledger, m1, first, 1)
    assert _codes(result) == [""]
    penalty = dict(next(e for e in result.results[0].events if e[0] == "penalty")[1])
    assert penalty["node"] == g1.id.hex()  # old code: m1, slashed 50,000
    assert ledger.app.node(g1.id)["slashed"] == QUOTE_SLASH
    result = ledger.block(second, time=_deadline(ledger, first, m1) + 1)
    assert _codes(result) == ["evidence_invalid"]  # old code: "" (m1 slashed 19,000 more)
    assert _untouched(ledger, m1)


def test_an_order_failed_early_slashes_nobody_for_the_legs_not_yet_due():
    # The same early failure in an order without a take: its sender is not slashed (old code:
    # 5 %): nobody reserved anything, so nobody is blamed.
    ledger, m1, _, (a, c) = _setup(QUOTE_SLASH, 0)
    commit = take_order(_open_quote(ledger, m1), m1, a, route=[a, m1, c])
    ledger.ok(_honour(m1, commit))  # committed as a trade: no take recorded
    _fail_early(ledger, commit.order, 2)
    result = _not_locked(ledger, a, commit, 1)
    assert _codes(result) == ["evidence_invalid"]  # old code: "" (m1 slashed 50,000)
    assert "the order failed at" in result.results[0].log
    assert _untouched(ledger, m1)


def test_a_provider_failing_its_own_take_order_early_is_not_excused_by_it():
    # The other way round: the provider locks its own leg (btc, legs[1]) out of turn and
    # refunds it at once, failing the order before the taker's leg is due; the taker, right
    # not to lock, is not slashed, and the provider is not excused towards a later taker.
    ledger, m1, _, (g1, g2) = _setup(QUOTE_SLASH, QUOTE_SLASH)
    quote = _open_quote(ledger, m1)
    first = take_order(quote, m1, g1)
    order = first.order
    expiry = order.legs[1].expiry
    assert order.legs[1].sender == m1.id and isinstance(expiry, BlockHeight)
    ledger.ok(take_evidence(quote, m1, g1, order=first))
    second = take_evidence(quote, m1, g2)
    assert _codes(ledger.block(second)) == [""]
    ledger.ok(_honour(m1, first))
    ledger.chains.see(order, 1, LegOutcome.REFUNDED, height=expiry.value + 1)
    ledger.attested(time=order.legs[0].lock_by - 1)
    assert ledger.app.order(order.order_id)["status"] == "failed"
    result = _not_locked(ledger, m1, first, 0)
    assert _codes(result) == ["evidence_invalid"]  # old code: "" (g1 forfeited 20,000)
    assert "the order failed at" in result.results[0].log
    assert ledger.app.node(g1.id)["slashed"] == 0
    assert _codes(ledger.block(second, time=_deadline(ledger, first, m1) + 1)) == [""]
    assert ledger.app.node(m1.id)["slashed"] == QUOTE_SLASH  # (old code: excused)
