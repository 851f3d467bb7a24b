"""Issue 17, review 6's open case (1): a leg's block-height expiry the ledger cannot relate to
time. A taker writing a take's order names, for the leg paying the provider, a height already
near or past; the honest provider must not lock its own leg against it (the taker could refund
before the provider can redeem), and was slashed by ``leg_not_locked`` whatever it did. Now the
sender of a leg is excused when the leg paying it was attested locked at a height leaving fewer
than ``height_expiry_margin`` blocks of its chain before its expiry. Real ledger app, in
process (solo attestations).
"""

import dataclasses

import pytest

from kofo.settlement.chain import BlockHeight
from kofo.wire.orders import (
    CommitOrder,
    EvidenceKind,
    FileEvidence,
    LegOutcome,
    Quote,
    derive_quote_id,
    sign_tx,
    with_derived_id,
)

from .helpers import (
    Ledger,
    Party,
    commit_tx,
    make_order,
    prove_legs,
    take_evidence,
    take_order,
)

pytestmark = pytest.mark.timeout(300)

EXPIRY = 800_000
"""The btc expiry height of the leg paying the provider (legs[0], the taker's)."""


@pytest.fixture
def net():
    ledger = Ledger()
    m1, alice = Party.make(1), Party.make(2)  # the honest provider, the taker
    ledger.ok(*(p.register_tx() for p in (m1, alice)))
    ledger.bonded(m1, alice)
    return ledger, m1, alice


def _codes(result):
    return [r.error for r in result.results]


def _taken_and_committed(ledger, m1, alice):
    """alice's take of m1's named quote (btc paid in, eth paid out), legs[0] expiring at
    btc height ``EXPIRY``; the take recorded and the order committed by the provider."""
    quote = Quote(bytes(16), m1.id, "eth", 50_000, "btc", 1_000, ledger.time + 100, alice.id)
    quote = dataclasses.replace(quote, quote_id=derive_quote_id(quote))
    honest = take_order(quote, m1, alice)
    legs = list(honest.order.legs)
    assert legs[0].recipient == m1.id and legs[0].chain == "btc"
    legs[0] = dataclasses.replace(legs[0], expiry=BlockHeight(EXPIRY))
    order = with_derived_id(dataclasses.replace(honest.order, legs=tuple(legs)))
    taken = prove_legs(CommitOrder(order, (order.sign(alice.key),)), skip=m1.id)
    assert _codes(ledger.block(take_evidence(quote, m1, alice, order=taken))) == [""]
    full = CommitOrder(order, (*taken.signatures, order.sign(m1.key)))
    ledger.ok(sign_tx(m1.key, prove_legs(full)))  # honoured: committing excuses quote evidence
    assert ledger.app.order(order.order_id)["status"] == "committed"
    return order


def _routed(ledger, parties):
    """A plain routed order alice -> m1 -> alice, legs[0] on btc expiring at ``EXPIRY``."""
    order = make_order(parties, t0=ledger.time)
    legs = list(order.legs)
    legs[0] = dataclasses.replace(legs[0], expiry=BlockHeight(EXPIRY))
    order = with_derived_id(dataclasses.replace(order, legs=tuple(legs)))
    ledger.ok(commit_tx(order, parties, parties[0], ts=ledger.time))
    return order


def _not_locked(ledger, order, filer):
    """legs[1]'s sender never locked: ``leg_not_locked`` filed once it is judged."""
    ev = sign_tx(filer.key, FileEvidence(EvidenceKind.LEG_NOT_LOCKED, order.order_id, 1))
    late = order.legs[1].lock_by + ledger.app.params.attest_grace + 1
    return ledger.block(ev, time=max(late, ledger.time + 1))


@pytest.mark.parametrize("how", ["take", "route"])
@pytest.mark.parametrize("left", [-10, 0, 1, 46])  # btc margin: 47 blocks
def test_a_provider_paid_in_too_close_to_a_height_expiry_is_not_slashed_for_not_locking(
    net, how, left
):
    ledger, m1, alice = net
    assert ledger.app.params.height_expiry_margin["btc"] == 47
    order = (
        _taken_and_committed(ledger, m1, alice) if how == "take" else _routed(ledger, [alice, m1])
    )
    # the taker locks legs[0] in time, but in a btc block `left` blocks before its expiry
    # height (past it when negative): it could refund before the provider redeems
    ledger.chains.see(order, 0, LegOutcome.LOCKED, height=EXPIRY - left)
    ledger.attested(time=order.legs[0].lock_by)
    assert ledger.app.order(order.order_id)["legs"][0]["outcome"] == "locked"
    result = _not_locked(ledger, order, alice)
    # old code: "" (the provider, right not to lock, was slashed 5 % and 100 points)
    assert _codes(result) == ["evidence_invalid"]
    assert "height_expiry_margin" in result.results[0].log
    assert ledger.app.node(m1.id)["penalty_points"] == 0
    assert ledger.app.bond(m1.id) == m1.bond


@pytest.mark.parametrize("how", ["take", "route"])
# (47 blocks, the height margin, no longer suffice here: the provider's own eth leg expires
# ~13,000 s after the lock, and 47 btc blocks may pass in 47 x 360 = 16,920 s, leaving less
# than notice(eth) + settle(btc) = 7,260 s between the two expiries: the chain-clock rule,
# test_chain_clock.py, excuses it)
@pytest.mark.parametrize("left", [70, 5_000])
def test_a_provider_paid_in_with_the_margin_left_that_does_not_lock_is_still_slashed(
    net, how, left
):
    ledger, m1, alice = net
    order = (
        _taken_and_committed(ledger, m1, alice) if how == "take" else _routed(ledger, [alice, m1])
    )
    ledger.chains.see(order, 0, LegOutcome.LOCKED, height=EXPIRY - left)
    ledger.attested(time=order.legs[0].lock_by)
    assert _codes(_not_locked(ledger, order, alice)) == [""]
    assert ledger.app.node(m1.id)["penalty_points"] == 100
    assert ledger.app.bond(m1.id) == m1.bond - m1.bond * 500 // 10_000


def test_the_lock_height_counts_not_a_later_spend_height(net):
    # The excuse is judged at the block of the lock: a later fact (here the taker refunding
    # its leg once the provider did not lock) does not move it.
    ledger, m1, alice = net
    order = _routed(ledger, [alice, m1])
    ledger.chains.see(order, 0, LegOutcome.LOCKED, height=EXPIRY - 1_000)
    ledger.attested(time=order.legs[0].lock_by)
    ledger.chains.see(order, 0, LegOutcome.REFUNDED, height=EXPIRY + 1)
    ledger.attested()
    assert ledger.app.order(order.order_id)["legs"][0]["outcome"] == "refunded"
    assert _codes(_not_locked(ledger, order, alice)) == [""]
    assert ledger.app.node(m1.id)["penalty_points"] == 100


@pytest.mark.parametrize("clock", [True, False])
def test_a_height_chain_without_a_margin_is_judged_by_its_clock(clock):
    # The margin is a genesis parameter per chain, in that chain's blocks. A chain left out of
    # it was judged as if safe (slashed); now the chain clock judges it (test_chain_clock.py):
    # with btc's clock params the lock one block before its expiry excuses the provider; with
    # none (the ledger cannot convert a btc height at all) the provider is excused too: an
    # unknown clock never slashes the sender it could not protect.
    params = dataclasses.replace(Ledger().app.params, height_expiry_margin={})
    if not clock:
        params = dataclasses.replace(params, chain_clock={})
    ledger = Ledger(params=params)
    m1, alice = Party.make(1), Party.make(2)
    ledger.ok(*(p.register_tx() for p in (m1, alice)))
    ledger.bonded(m1, alice)
    order = _routed(ledger, [alice, m1])
    ledger.chains.see(order, 0, LegOutcome.LOCKED, height=EXPIRY - 1)
    ledger.attested(time=order.legs[0].lock_by)
    result = _not_locked(ledger, order, alice)
    assert _codes(result) == ["evidence_invalid"]
    assert ("before" if clock else "no clock of btc") in result.results[0].log
    assert ledger.app.node(m1.id)["penalty_points"] == 0
