"""Issue 17, attacker-briefed review of the open-quote rules: a taken order must trade the
quote's own terms at the provider's own addresses.

The ledger checked that a take's order used the provider's quote id, but never that it traded
the quote's price: the taker writes the whole order, the provider's legs included. So a taker
had an honest provider slashed for refusing a price it never quoted (or an order paying an
address it does not hold, which it could not even commit), and a provider "filled" its open
quote with dust legs locked to its own sybil, excusing itself towards every real taker. Real
ledger app, in process (solo attestations).
"""

import dataclasses

import pytest

from kofo.wire.orders import (
    CommitOrder,
    LegOutcome,
    OrderKind,
    Quote,
    derive_quote_id,
    sign_tx,
    with_derived_id,
)

from .helpers import (
    Ledger,
    Party,
    commit_tx,
    leg_address,
    make_order,
    node_address,
    prove_legs,
    take_evidence,
    take_order,
)

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def net():
    ledger = Ledger()
    m1 = Party.make(1)  # the honest (or, below, cheating) provider
    alice, sybil = Party.make(2), Party.make(4)
    ledger.ok(*(p.register_tx() for p in (m1, alice, sybil)))
    ledger.bonded(m1, alice, sybil)
    return ledger, m1, alice, sybil


def _codes(result):
    return [r.error for r in result.results]


def _quote(ledger, provider, *, taker=bytes(32)):
    quote = Quote(bytes(16), provider.id, "btc", 1_000, "eth", 50_000, ledger.time + 100, taker)
    return dataclasses.replace(quote, quote_id=derive_quote_id(quote))


def _untouched(ledger, party):
    return ledger.app.node(party.id)["penalty_points"] == 0 and ledger.app.bond(party.id) == (
        party.bond
    )


def _resign(commit, provider, route, **leg_changes):
    """``commit``'s order with legs changed (``{index: {field: value}}``), re-derived and
    signed again by everyone on ``route`` but the provider."""
    legs = list(commit.order.legs)
    for i, changes in leg_changes.items():
        legs[int(i)] = dataclasses.replace(legs[int(i)], **changes)
    order = with_derived_id(dataclasses.replace(commit.order, legs=tuple(legs)))
    signed = CommitOrder(order, tuple(order.sign(p.key) for p in route if p is not provider))
    return prove_legs(signed, skip=provider.id)


@pytest.mark.parametrize(
    "terms",
    [
        {"give_amount": 10_000},  # the provider pays ten times what it quoted
        {"take_amount": 5_000},  # the taker pays a tenth of the quote
        {"give_amount": 1, "take_amount": 1},  # another size
    ],
)
@pytest.mark.parametrize("named", [True, False])
def test_a_take_at_a_price_the_provider_never_quoted_is_refused(net, terms, named):
    ledger, m1, alice, _ = net
    quote = _quote(ledger, m1, taker=alice.id if named else bytes(32))
    other_price = take_order(dataclasses.replace(quote, **terms), m1, alice)
    ev = take_evidence(quote, m1, alice, order=other_price)
    result = ledger.block(ev)
    # old code: "" (recorded), and after the honour window the honest provider, which never
    # committed an order at that price, was slashed
    assert _codes(result) == ["evidence_invalid"]
    assert "does not trade the quote's terms" in result.results[0].log
    late = quote.valid_until + ledger.app.params.honour_grace + 1
    assert _codes(ledger.block(ev, time=late)) == ["evidence_invalid"]
    assert _untouched(ledger, m1)


def test_a_take_paying_the_provider_at_an_address_it_never_registered_is_refused(net):
    # The provider's leg keys are the only ones a take's order carries no proof for: a taker
    # naming its own address as the provider's receiving one left the provider an order it
    # could not commit (leg_key_unproven), slashed for "not honouring" it.
    ledger, m1, alice, _ = net
    quote = _quote(ledger, m1, taker=alice.id)
    honest = take_order(quote, m1, alice)
    paid_in = next(i for i, leg in enumerate(honest.order.legs) if leg.recipient == m1.id)
    chain = honest.order.legs[paid_in].chain
    stolen = _resign(
        honest,
        m1,
        [alice, m1],
        **{str(paid_in): {"recipient_address": leg_address(chain, "alice-own")}},
    )
    result = ledger.block(take_evidence(quote, m1, alice, order=stolen))
    assert _codes(result) == ["evidence_invalid"]  # old code: "" (recorded)
    assert "registered" in result.results[0].log
    late = quote.valid_until + ledger.app.params.honour_grace + 1
    assert _codes(ledger.block(take_evidence(quote, m1, alice, order=stolen), time=late)) == [
        "evidence_invalid"
    ]
    assert _untouched(ledger, m1)
    # the same take at the provider's registered addresses is recorded
    again = _quote(ledger, m1, taker=alice.id)
    assert _codes(ledger.block(take_evidence(again, m1, alice))) == [""]


def test_a_provider_filling_its_open_quote_with_dust_locked_to_its_sybil_is_still_slashed(net):
    ledger, m1, alice, sybil = net
    quote = _quote(ledger, m1)
    dust = take_order(dataclasses.replace(quote, give_amount=1, take_amount=1), m1, sybil)
    # The sybil's take of a dust order is no take of this quote (old code: recorded first).
    assert _codes(ledger.block(take_evidence(quote, m1, sybil, order=dust))) == ["evidence_invalid"]
    # The provider commits the dust order itself, spending the quote ahead of alice's take.
    full = CommitOrder(dust.order, (*dust.signatures, dust.order.sign(m1.key)))
    ledger.ok(sign_tx(m1.key, prove_legs(full)))
    ev = take_evidence(quote, m1, alice)
    assert _codes(ledger.block(ev)) == [""]  # recorded: the quote was spent by the dust order
    # sybil and provider lock their dust legs, in time and in order
    ledger.chains.see(dust.order, 0, LegOutcome.LOCKED)
    ledger.chains.see(dust.order, 1, LegOutcome.LOCKED)
    ledger.attested(time=dust.order.legs[1].lock_by)
    p = ledger.app.params
    judged = max(leg.lock_by for leg in dust.order.legs) + p.attest_grace + p.honour_grace + 1
    result = ledger.block(ev, time=max(judged, ledger.time))
    # old code: evidence_invalid, "filled an earlier take" (two dust locks excused the provider
    # towards every real taker)
    assert _codes(result) == [""]
    assert ledger.app.node(m1.id)["penalty_points"] == 50
    assert ledger.app.bond(m1.id) == m1.bond - m1.bond * 200 // 10_000


def test_a_named_quote_filled_with_the_providers_sybil_does_not_excuse_the_provider(net):
    # A quote named to alice is alice's alone: no first come, first served. The provider spent
    # it in an order with its own sybil (at the quote's terms, its own money both ways) ahead
    # of alice's take, locked both legs in time, and was excused as if it had filled an
    # earlier take.
    ledger, m1, alice, sybil = net
    quote = _quote(ledger, m1, taker=alice.id)
    sham = take_order(quote, m1, sybil)
    full = CommitOrder(sham.order, (*sham.signatures, sham.order.sign(m1.key)))
    ledger.ok(sign_tx(m1.key, prove_legs(full)))
    ev = take_evidence(quote, m1, alice)
    assert _codes(ledger.block(ev)) == [""]
    ledger.chains.see(sham.order, 0, LegOutcome.LOCKED)
    ledger.chains.see(sham.order, 1, LegOutcome.LOCKED)
    ledger.attested(time=sham.order.legs[1].lock_by)
    late = quote.valid_until + ledger.app.params.honour_grace + 1
    result = ledger.block(ev, time=max(late, ledger.time))
    assert _codes(result) == [""]  # old code: evidence_invalid, "filled an earlier take"
    assert ledger.app.node(m1.id)["penalty_points"] == 50


def test_a_take_order_leaving_the_provider_no_time_to_lock_after_the_taker_is_refused(net):
    # The taker writes the lock_by of every leg: with the provider's leg due when its own is
    # (the route rule allows equal lock_by), it locks at the last in-time moment and the
    # provider, who may lock only after being paid in, cannot be attested in time. It was
    # slashed for not locking (5 %) if it honoured the take, for not honouring it (2 %) if not.
    ledger, m1, alice, _ = net
    quote = _quote(ledger, m1, taker=alice.id)
    honest = take_order(quote, m1, alice)
    squeezed = _resign(honest, m1, [alice, m1], **{"1": {"lock_by": honest.order.legs[0].lock_by}})
    result = ledger.block(take_evidence(quote, m1, alice, order=squeezed))
    # old code: "" (recorded); the provider honoured it, alice locked at lock_by + attest_grace
    # and the provider's lock, attested a block later, was "late": leg_not_locked slashed it
    assert _codes(result) == ["evidence_invalid"]
    assert "attest_grace" in result.results[0].log
    # the helper's take order gives the provider attest_grace after the taker's leg: recorded
    assert _codes(ledger.block(take_evidence(quote, m1, alice, order=honest))) == [""]
    legs = honest.order.legs
    assert legs[1].lock_by - legs[0].lock_by >= ledger.app.params.attest_grace


def test_a_providers_sybil_using_a_recorded_takes_payment_hash_does_not_excuse_it(net):
    # The payment hash of a recorded take's order is public (in the block). Anyone could
    # commit another order with it; the ledger then excused the provider ("the provider could
    # not commit the taken order"), a rule meant for a taker sabotaging its own take. The
    # provider's sybils did it with a junk direct order of their own and escaped.
    ledger, m1, alice, sybil = net
    sybil2 = Party.make(5)
    ledger.ok(sybil2.register_tx())
    quote = _quote(ledger, m1, taker=alice.id)
    taken = take_order(quote, m1, alice)
    ev = take_evidence(quote, m1, alice, order=taken)
    ledger.ok(ev)
    junk = make_order([sybil, sybil2], kind=OrderKind.DIRECT, t0=ledger.time)
    junk = with_derived_id(dataclasses.replace(junk, payment_hash=taken.order.payment_hash))
    result = ledger.block(commit_tx(junk, [sybil, sybil2], sybil, ts=ledger.time))
    # committed, and blocks nothing: its legs are other HTLCs than the taken order's (the
    # payment hash alone is not unique, test_hash_squat.py); the first fix refused it
    assert _codes(result) == [""]
    # the provider can still commit the taken order itself, until its window ends
    late = quote.valid_until + ledger.app.params.honour_grace + 1
    assert _codes(ledger.block(ev, time=late)) == [""]  # old code: evidence_invalid
    assert ledger.app.node(m1.id)["penalty_points"] == 50


def test_the_provider_can_commit_a_recorded_take_whose_payment_hash_is_reserved(net):
    ledger, m1, alice, _ = net
    quote = _quote(ledger, m1, taker=alice.id)
    taken = take_order(quote, m1, alice)
    ev = take_evidence(quote, m1, alice, order=taken)
    ledger.ok(ev)
    full = CommitOrder(taken.order, (*taken.signatures, taken.order.sign(m1.key)))
    commit = sign_tx(m1.key, prove_legs(full))
    ledger.ok(commit)
    assert ledger.app.order(taken.order.order_id)["status"] == "committed"
    assert _codes(ledger.block(commit)) == ["already_exists"]  # and only once
    late = quote.valid_until + ledger.app.params.honour_grace + 1
    assert _codes(ledger.block(ev, time=late)) == ["evidence_invalid"]  # honoured
    assert _untouched(ledger, m1)


@pytest.mark.parametrize("chains", [(), ("btc",)])
def test_a_provider_that_registered_no_address_for_a_quoted_chain_is_still_accountable(chains):
    # The provider's leg addresses must be its registered ones: a provider registering none for
    # a chain it quotes on must not thereby make every take of its quotes unrecordable (and its
    # false prices unpunishable). Without one, the taker's order names the provider's address.
    ledger = Ledger()
    m1, alice = Party.make(1), Party.make(2)
    registered = {c: node_address(m1.id, c) for c in chains}
    ledger.ok(m1.register_tx(addresses=registered), alice.register_tx())
    ledger.bonded(m1, alice)
    quote = _quote(ledger, m1, taker=alice.id)
    ev = take_evidence(quote, m1, alice)
    assert _codes(ledger.block(ev)) == [""]  # old code: evidence_invalid (no take possible)
    late = quote.valid_until + ledger.app.params.honour_grace + 1
    assert _codes(ledger.block(ev, time=late)) == [""]
    assert ledger.app.node(m1.id)["penalty_points"] == 50
