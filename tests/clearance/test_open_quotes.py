"""Issue 17 (the attacker-briefed review's last open case): an open quote (taker zero), e.g. a
published order-book price, is taken first come, first served, one take per taker.

Before, one take was recorded per quote: the provider's own sybil recorded it first and never
had to do anything, so no real taker could record a take and a false price was never
punishable. Now every taker's take is recorded with its arrival number; an order that spent the
quote with an earlier taker excuses the provider towards a later one only if the provider really
filled it (the order settled, or the provider locked its legs in time, or the earlier taker's
default cost it a slash at least as large). Real ledger app, in process (solo attestations).
"""

import dataclasses

import pytest

from kofo.wire.orders import (
    CommitOrder,
    EvidenceKind,
    FileEvidence,
    LegOutcome,
    Quote,
    derive_quote_id,
    sign_tx,
)

from .helpers import Ledger, Party, prove_legs, take_evidence, take_order

pytestmark = pytest.mark.timeout(300)

QUOTE_SLASH_BPS = 200


@pytest.fixture
def net():
    ledger = Ledger()
    m1 = Party.make(1)  # the provider, bond 1,000,000: a quote slash is 20,000
    alice, bob = Party.make(2), Party.make(3)
    sybil = Party.make(4)  # m1's own sybil
    ledger.ok(*(p.register_tx() for p in (m1, alice, bob, sybil)))
    ledger.bonded(m1, alice, bob, sybil)
    return ledger, m1, alice, bob, sybil


def _codes(result):
    return [r.error for r in result.results]


def _open_quote(ledger, provider, *, taker=bytes(32)):
    quote = Quote(bytes(16), provider.id, "btc", 1_000, "eth", 50_000, ledger.time + 100, taker)
    return dataclasses.replace(quote, quote_id=derive_quote_id(quote))


def _honour(provider, commit):
    """The provider commits a recorded take's order alone, adding its own signature."""
    full = CommitOrder(commit.order, (*commit.signatures, commit.order.sign(provider.key)))
    return sign_tx(provider.key, prove_legs(full))


def _slashed(ledger, party):
    return (
        ledger.app.node(party.id)["penalty_points"] == 50
        and ledger.app.bond(party.id) == party.bond - party.bond * QUOTE_SLASH_BPS // 10_000
    )


def _untouched(ledger, party):
    return (
        ledger.app.node(party.id)["penalty_points"] == 0 and ledger.app.bond(party.id) == party.bond
    )


def _deadline(ledger, commit, provider):
    """When a later taker's evidence is judged against the provider's fill of ``commit``."""
    p = ledger.app.params
    mine = [leg.lock_by for leg in commit.order.legs if leg.sender == provider.id]
    return max(mine) + p.attest_grace + p.honour_grace


def test_a_providers_sybil_taking_first_no_longer_shuts_real_takers_out(net):
    ledger, m1, alice, _, sybil = net
    quote = _open_quote(ledger, m1)
    ledger.ok(take_evidence(quote, m1, sybil))  # the sybil takes first, and does nothing more
    ev = take_evidence(quote, m1, alice)
    assert _codes(ledger.block(ev)) == [""]  # old code: already_exists (the quote was squatted)
    assert _codes(ledger.block(ev)) == ["already_exists"]  # one take per taker
    late = quote.valid_until + ledger.app.params.honour_grace + 1
    assert _codes(ledger.block(ev, time=late)) == [""]
    assert _slashed(ledger, m1)


def test_committing_the_sybils_take_without_filling_it_does_not_excuse_the_provider(net):
    ledger, m1, alice, bob, sybil = net
    quote = _open_quote(ledger, m1)
    sybil_take = take_order(quote, m1, sybil)
    ledger.ok(take_evidence(quote, m1, sybil, order=sybil_take))
    ev = take_evidence(quote, m1, alice)
    assert _codes(ledger.block(ev)) == [""]  # old code: already_exists
    ledger.ok(take_evidence(quote, m1, bob))
    # The provider "honours" the first take: its own sybil's order, which nobody then locks.
    ledger.ok(_honour(m1, sybil_take))
    late = quote.valid_until + ledger.app.params.honour_grace + 1
    result = ledger.block(ev, time=late)
    assert _codes(result) == ["evidence_invalid"]
    assert "judged after" in result.results[0].log  # it may still lock its leg in time
    deadline = _deadline(ledger, sybil_take, m1)
    assert _codes(ledger.block(ev, time=deadline)) == ["evidence_invalid"]
    assert _codes(ledger.block(ev, time=deadline + 1)) == [""]
    assert _slashed(ledger, m1)
    # one slash per quote, whoever else took it
    assert _codes(ledger.block(take_evidence(quote, m1, bob))) == ["already_exists"]
    assert _slashed(ledger, m1)


@pytest.mark.parametrize("how", ["locked", "settled"])
def test_a_provider_that_filled_the_earlier_take_is_not_slashed_by_a_later_taker(net, how):
    ledger, m1, alice, bob, _ = net
    quote = _open_quote(ledger, m1)
    first = take_order(quote, m1, alice)
    ledger.ok(take_evidence(quote, m1, alice, order=first))
    ev = take_evidence(quote, m1, bob)
    assert _codes(ledger.block(ev)) == [""]  # old code: already_exists
    ledger.ok(_honour(m1, first))
    order = first.order
    ledger.chains.see(order, 0, LegOutcome.LOCKED)  # alice locks leg 0, then m1 leg 1
    ledger.chains.see(order, 1, LegOutcome.LOCKED)
    ledger.attested(time=order.legs[0].lock_by)
    ledger.attested(time=order.legs[1].lock_by)
    if how == "settled":
        ledger.chains.see(order, 0, LegOutcome.REDEEMED)
        ledger.chains.see(order, 1, LegOutcome.REDEEMED)
        ledger.attested()
        assert ledger.app.order(order.order_id)["status"] == "settled"
    for t in (quote.valid_until + ledger.app.params.honour_grace + 1, _deadline(ledger, first, m1)):
        result = ledger.block(ev, time=max(t, ledger.time))
        assert _codes(result) == ["evidence_invalid"]
        assert "filled an earlier take" in result.results[0].log
    # the first taker was honoured too
    assert _codes(ledger.block(take_evidence(quote, m1, alice, order=first))) == [
        "evidence_invalid"
    ]
    assert _untouched(ledger, m1)


def test_a_provider_that_fills_a_later_take_first_is_slashed_by_the_earlier_taker(net):
    ledger, m1, alice, bob, _ = net
    quote = _open_quote(ledger, m1)
    ev = take_evidence(quote, m1, alice)
    ledger.ok(ev)
    second = take_order(quote, m1, bob)
    assert _codes(ledger.block(take_evidence(quote, m1, bob, order=second))) == [""]
    ledger.ok(_honour(m1, second))  # the provider skips alice, who came first
    late = quote.valid_until + ledger.app.params.honour_grace + 1
    bob_ev = take_evidence(quote, m1, bob, order=second)
    assert _codes(ledger.block(bob_ev, time=late)) == ["evidence_invalid"]  # bob was honoured
    assert _codes(ledger.block(ev)) == [""]
    assert _slashed(ledger, m1)


@pytest.mark.parametrize(("sybil_bond", "lost"), [(1_000_000, 50_000), (100_000, 20_000)])
def test_an_earlier_takers_default_excuses_the_provider_only_if_it_cost_as_much(sybil_bond, lost):
    # An honest provider cannot lock before the legs paying it are locked. If the earlier
    # taker defaults, its leg_not_locked slash stands in for the fill: its take reserved the
    # provider's quote slash (2 % of 1,000,000) of its bond, and the default costs at least
    # that (5 % of 1,000,000; the reservation, above 5 % of 100,000), so it excuses the
    # provider. A bondless sybil cannot take at all (test_take_bond.py).
    ledger = Ledger()
    m1, alice, sybil = Party.make(1), Party.make(2), Party.make(4, bond=sybil_bond)
    ledger.ok(*(p.register_tx() for p in (m1, alice, sybil)))
    ledger.bonded(m1, alice, sybil)
    quote = _open_quote(ledger, m1)
    first = take_order(quote, m1, sybil)
    ledger.ok(take_evidence(quote, m1, sybil, order=first))
    ev = take_evidence(quote, m1, alice)
    assert _codes(ledger.block(ev)) == [""]  # old code: already_exists
    ledger.ok(_honour(m1, first))
    lnl = sign_tx(m1.key, FileEvidence(EvidenceKind.LEG_NOT_LOCKED, first.order.order_id, 0))
    ledger.ok(lnl, time=first.order.legs[0].lock_by + ledger.app.params.attest_grace + 1)
    assert ledger.app.bond(sybil.id) == sybil_bond - lost
    result = ledger.block(ev, time=_deadline(ledger, first, m1) + 1)
    assert _codes(result) == ["evidence_invalid"]
    assert _untouched(ledger, m1)


@pytest.mark.parametrize(("other_bond", "excused"), [(1_000_000, True), (100_000, False)])
def test_a_default_in_a_trade_without_a_take_excuses_only_if_it_cost_as_much(other_bond, excused):
    # A trade the provider itself signed spent the quote before the take (no take, so no
    # reservation): its counterparty's default excuses the provider only if its leg_not_locked
    # slash took at least the quote slash (5 % of 1,000,000 does; 5 % of 100,000 does not).
    ledger = Ledger()
    m1, alice, other = Party.make(1), Party.make(2), Party.make(4, bond=other_bond)
    ledger.ok(*(p.register_tx() for p in (m1, alice, other)))
    ledger.bonded(m1, alice, other)
    quote = _open_quote(ledger, m1)
    trade = _spend(ledger, m1, other, quote)
    ev = take_evidence(quote, m1, alice)
    assert _codes(ledger.block(ev)) == [""]
    lnl = sign_tx(m1.key, FileEvidence(EvidenceKind.LEG_NOT_LOCKED, trade.order.order_id, 0))
    ledger.ok(lnl, time=trade.order.legs[0].lock_by + ledger.app.params.attest_grace + 1)
    assert ledger.app.bond(other.id) == other_bond - other_bond * 500 // 10_000
    result = ledger.block(ev, time=_deadline(ledger, trade, m1) + 1)
    if excused:
        assert _codes(result) == ["evidence_invalid"]
        assert _untouched(ledger, m1)
    else:
        assert _codes(result) == [""]
        assert _slashed(ledger, m1)


def test_an_open_quotes_take_order_must_be_due_within_the_fill_window(net):
    # A later taker waits to learn whether the provider filled an earlier take: a take order
    # due years later would put that off for good.
    ledger, m1, alice, _, sybil = net
    p = ledger.app.params
    quote = _open_quote(ledger, m1)
    t0 = quote.valid_until + p.honour_grace + p.take_fill_window  # legs[0].lock_by = t0 + 600
    result = ledger.block(
        take_evidence(quote, m1, sybil, order=take_order(quote, m1, sybil, t0=t0))
    )
    assert _codes(result) == ["evidence_invalid"]
    assert "take_fill_window" in result.results[0].log
    # within the window it is recorded; a named quote has one taker and no such bound
    assert _codes(ledger.block(take_evidence(quote, m1, alice))) == [""]
    named = _open_quote(ledger, m1, taker=alice.id)
    commit = take_order(named, m1, alice, t0=t0)
    assert _codes(ledger.block(take_evidence(named, m1, alice, order=commit))) == [""]


def test_a_provider_locking_its_leg_to_its_sybil_that_never_paid_in_fills_nothing(net):
    ledger, m1, alice, _, sybil = net
    quote = _open_quote(ledger, m1)
    first = take_order(quote, m1, sybil)
    ledger.ok(take_evidence(quote, m1, sybil, order=first))
    ev = take_evidence(quote, m1, alice)
    assert _codes(ledger.block(ev)) == [""]  # old code: already_exists
    ledger.ok(_honour(m1, first))
    ledger.chains.see(first.order, 1, LegOutcome.LOCKED)  # m1 locks to its sybil; leg 0 never
    ledger.attested(time=first.order.legs[1].lock_by)
    assert _codes(ledger.block(ev, time=_deadline(ledger, first, m1) + 1)) == [""]
    assert _slashed(ledger, m1)


def _spend(ledger, provider, other, quote):
    """``provider`` spends ``quote`` in a direct-priced order with ``other`` (no take): the
    order an exchange would commit, signed by both."""
    commit = take_order(quote, provider, other)
    full = CommitOrder(commit.order, (*commit.signatures, commit.order.sign(provider.key)))
    ledger.ok(sign_tx(provider.key, prove_legs(full)))
    return commit


def test_a_provider_spending_its_quote_in_a_sham_order_ahead_of_a_take_is_still_judged(net):
    # The provider sees a take in the mempool and gets a sham order with its sybil (no take)
    # committed first: the quote was spent, the take's order uncommittable, and the take was
    # refused (already_exists), a squat as the first take was.
    ledger, m1, alice, _, sybil = net
    quote = _open_quote(ledger, m1)
    sham = _spend(ledger, m1, sybil, quote)
    ev = take_evidence(quote, m1, alice)
    assert _codes(ledger.block(ev)) == [""]  # old code: already_exists (quote already used)
    late = quote.valid_until + ledger.app.params.honour_grace + 1
    assert _codes(ledger.block(ev, time=late)) == ["evidence_invalid"]  # not yet
    assert _codes(ledger.block(ev, time=_deadline(ledger, sham, m1) + 1)) == [""]
    assert _slashed(ledger, m1)


def test_a_quote_filled_in_a_real_trade_before_the_take_excuses_the_provider(net):
    ledger, m1, alice, bob, _ = net
    quote = _open_quote(ledger, m1)
    trade = _spend(ledger, m1, bob, quote)  # bob traded first, without a take
    ev = take_evidence(quote, m1, alice)
    assert _codes(ledger.block(ev)) == [""]  # old code: already_exists
    ledger.chains.see(trade.order, 0, LegOutcome.LOCKED)
    ledger.chains.see(trade.order, 1, LegOutcome.LOCKED)
    ledger.attested(time=trade.order.legs[1].lock_by)
    result = ledger.block(ev, time=_deadline(ledger, trade, m1) + 1)
    assert _codes(result) == ["evidence_invalid"]
    assert "filled an earlier take" in result.results[0].log
    assert _untouched(ledger, m1)
