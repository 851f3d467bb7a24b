"""Open orders are bounded (issue 17, session 7): an order whose initiator never paid in (its
legs[0] seen missed by the validators after ``lock_by + attest_grace``) can never settle, since
nobody locks after an unpaid-in leg; it stayed open for good, in the state's open set and in
the window ExtendVote observes every height. It now fails at that look, so a never-locked order
leaves the window within ``lock_by + attest_grace`` plus one window round."""

from __future__ import annotations

import pytest

from kofo.wire.orders import EvidenceKind, FileEvidence, LegOutcome, sign_tx

from .helpers import T0, Ledger, Party, commit_tx, ledger_params, make_order

pytestmark = pytest.mark.timeout(120)


def _ledger():  # type: ignore[no-untyped-def]
    ledger = Ledger(params=ledger_params(attest_grace=60))
    parties = [Party.make(i) for i in range(3)]
    ledger.ok(*(p.register_tx() for p in parties))
    ledger.bonded(*parties)
    return ledger, parties


def test_an_order_whose_initiator_never_pays_in_fails_and_leaves_the_open_set():
    """Alice commits an order and never locks legs[0]; carol locks her leg out of turn. At the
    first look after legs[0]'s ``lock_by + attest_grace`` the order fails: out of the open set
    (ExtendVote no longer reads it), the failure counted against alice alone; alice's
    ``leg_not_locked`` still slashes her, and bob (who was right not to lock) is not
    slashed. (Fails on the old code: the order stays committed and open for good.)"""
    ledger, (alice, bob, carol) = _ledger()
    order = make_order([alice, bob, carol], t0=ledger.time)
    ledger.ok(commit_tx(order, [alice, bob, carol], alice))
    ledger.chains.see(order, 2, LegOutcome.LOCKED)  # carol locks out of turn
    ledger.attested()
    assert order.order_id in ledger.app._open_orders()
    before = {p.id: ledger.app.node(p.id)["failed"] for p in (alice, bob, carol)}
    ledger.attested(time=order.legs[0].lock_by + 60)  # legs[0] is due: seen missed
    rec = ledger.app.order(order.order_id)
    assert rec["status"] == "failed", rec
    assert "missed_at" in rec["legs"][0] and rec["failed_at"] == order.legs[0].lock_by + 60
    assert order.order_id not in ledger.app._open_orders()
    ledger.chains.asked.clear()
    ledger.attested(time=ledger.time + 30)
    assert not [r for r in ledger.chains.asked if r.order_id == order.order_id]
    after = {p.id: ledger.app.node(p.id)["failed"] for p in (alice, bob, carol)}
    assert after == {**before, alice.id: before[alice.id] + 1}
    # bob was right not to lock (legs[0] never paid in), even once his leg is due
    ev = sign_tx(carol.key, FileEvidence(EvidenceKind.LEG_NOT_LOCKED, order.order_id, 1))
    result = ledger.block(ev, time=order.legs[1].lock_by + 61).results[0]
    assert not result.ok and "right not to lock" in result.log, result.log
    assert ledger.app.node(bob.id)["penalty_points"] == 0
    # the evidence against the initiator is still fileable after the failure
    ev = sign_tx(carol.key, FileEvidence(EvidenceKind.LEG_NOT_LOCKED, order.order_id, 0), ts=T0 + 2)
    result = ledger.block(ev, time=ledger.time + 30).results[0]
    assert result.ok, result.log
    assert ledger.app.node(alice.id)["penalty_points"] == 100
    assert ledger.app.bond(alice.id) < alice.bond


def test_an_initiator_that_paid_in_keeps_its_order_open_until_it_resolves():
    """legs[0] locked in time: the order is not failed by the rule (a later leg's default
    resolves by refunds on the chains, attested as before)."""
    ledger, (alice, bob, carol) = _ledger()
    order = make_order([alice, bob, carol], t0=ledger.time)
    ledger.ok(commit_tx(order, [alice, bob, carol], alice))
    ledger.chains.see(order, 0, LegOutcome.LOCKED)
    ledger.attested()
    ledger.attested(time=max(leg.lock_by for leg in order.legs) + 60)  # bob never locks
    rec = ledger.app.order(order.order_id)
    assert rec["status"] == "committed" and "missed_at" in rec["legs"][1]
    assert order.order_id in ledger.app._open_orders()
    ledger.chains.see(order, 0, LegOutcome.REFUNDED)
    ledger.attested(time=ledger.time + 30)
    assert ledger.app.order(order.order_id)["status"] == "failed"


def test_an_unread_initiator_leg_does_not_fail_the_order():
    """The validators cannot read legs[0]'s chain after its deadline: nothing is marked, the
    order is not failed, and alice's lock seen once reads succeed counts in time."""
    ledger, (alice, bob, carol) = _ledger()
    order = make_order([alice, bob, carol], t0=ledger.time)
    ledger.ok(commit_tx(order, [alice, bob, carol], alice))
    ledger.chains.see(order, 0, LegOutcome.LOCKED)
    ledger.chains.blind.add(order.legs[0].chain)
    ledger.attested(time=order.legs[0].lock_by + 60)
    ledger.attested(time=ledger.time + 30)
    rec = ledger.app.order(order.order_id)
    assert rec["status"] == "committed" and "missed_at" not in rec["legs"][0]
    ledger.chains.blind.clear()
    ledger.attested(time=ledger.time + 30)
    rec = ledger.app.order(order.order_id)
    assert rec["status"] == "committed" and rec["legs"][0]["outcome"] == "locked"
    assert "missed_at" not in rec["legs"][0]
