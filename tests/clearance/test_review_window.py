"""Attacker review of "a leg is late only if the validators looked" (issue 17, session 7).

A leg gets ``missed_at`` when validators with > 2/3 of the power looked at its order after
its ``lock_by + attest_grace``; each such look used to count as "saw no lock" for every leg on
a chain it read, whether or not it reported a lock there. A byzantine validator (< 1/3 of the
power) sending a complete extension that reports nothing then tipped the balance against an
honest sender whenever some honest validators saw the lock and others could not read its chain:
a "no lock" decided by the liar and the honest validators that saw the lock. A leg is now
marked only when validators with > 2/3 of the power read its chain and reported no lock for
it (an observation of the leg, any outcome, is "saw something")."""

from __future__ import annotations

import pytest

from kofo.wire.attest import encode_extension
from kofo.wire.orders import EvidenceKind, FileEvidence, LegOutcome, sign_tx

from .helpers import T0, Party, ledger_params
from .test_blind_reads import _order
from .test_vote_extensions import Validators

pytestmark = pytest.mark.timeout(120)


def test_a_liar_below_a_third_and_a_blind_honest_validator_do_not_make_a_lock_missed():
    """Bob locks his eth leg in time; validators 0 and 1 see it, validator 2 cannot read eth
    for now, validator 3 (a quarter of the power, byzantine) claims a complete read that saw
    nothing. No fact reaches 2/3 (the lock has half the power). Before: eth counted as read by
    3/4 of the power, bob's leg got ``missed_at``, the lock attested once validator 2 read
    again was "late" and ``leg_not_locked`` slashed bob. Now only the liar said "no lock": the
    leg is not marked, and the lock counts in time. (Fails on the old code.)"""
    parties = [Party.make(i) for i in range(3)]
    alice, bob, _carol = parties
    vals = Validators(params=ledger_params(attest_grace=60))
    order = _order(vals, parties)
    for c in vals.chains[:3]:
        c.see(order, 0, LegOutcome.LOCKED, txid="00" * 32)
    for c in vals.chains[:2]:
        c.see(order, 1, LegOutcome.LOCKED, txid="11" * 32)
    vals.chains[2].blind.add("eth")
    vals.lies[3] = encode_extension([])  # "I read everything and saw no lock"
    deadline = max(leg.lock_by for leg in order.legs) + 60
    while vals.time <= deadline + 120:
        vals.step(time=vals.time + 30)
    for i in range(4):
        legs = vals.order(order.order_id, i)["legs"]
        assert legs[0]["outcome"] == "locked"
        assert legs[1]["outcome"] is None
        assert "missed_at" not in legs[1], "the liar's empty look marked an attested-by-half lock"
    vals.chains[2].blind.clear()
    vals.chains[2].see(order, 1, LegOutcome.LOCKED, txid="11" * 32)
    vals.step(time=vals.time + 30)
    vals.step(time=vals.time + 30)
    legs = vals.order(order.order_id)["legs"]
    assert legs[1]["outcome"] == "locked" and "missed_at" not in legs[1]
    tx = sign_tx(alice.key, FileEvidence(EvidenceKind.LEG_NOT_LOCKED, order.order_id, 1), ts=T0)
    result = vals.step(tx).tx_results[1]
    assert result.code != 0 and "attested locked" in result.log, result.log
    assert vals.apps[0].app.node(bob.id)["penalty_points"] == 0


def test_a_real_default_is_still_marked_with_the_liar_reporting_a_lock():
    """The other direction: the defaulter's sybil validator (< 1/3) reports a fake lock of
    the never-locked leg; the three honest validators read eth and saw none: marked."""
    parties = [Party.make(i) for i in range(3)]
    vals = Validators(params=ledger_params(attest_grace=60))
    order = _order(vals, parties)
    for c in vals.chains[:3]:
        c.see(order, 0, LegOutcome.LOCKED, txid="00" * 32)
    fake = vals.chains[0].facts[(order.order_id, 0)]
    from kofo.wire.attest import Observation

    lie = Observation(order.order_id, 1, LegOutcome.LOCKED, "ff" * 32, fake.chain_height)
    vals.lies[3] = encode_extension([lie])
    deadline = max(leg.lock_by for leg in order.legs) + 60
    while vals.time <= deadline + 120:
        vals.step(time=vals.time + 30)
    legs = vals.order(order.order_id)["legs"]
    assert legs[1]["outcome"] is None and "missed_at" in legs[1]


def test_with_more_open_orders_than_the_window_marks_follow_the_window_looked_at(monkeypatch):
    """Eleven honest orders, a window of 2 (scaled down from 1,024), every leg locked just
    before the deadlines and seen by every validator, heights well past every deadline (the
    window needs 6 heights, 180 s, to come round; the grace is 60 s): each order's locks are
    attested when the rotating window reaches it, and no look the validators did not make
    marks anything (the app marks the window of ``meta/window``, recorded by the block
    before; ExtendVote(H) runs before FinalizeBlock(H), on the state committed at H - 1)."""
    import kofo.clearance.app as app_module

    monkeypatch.setattr(app_module, "MAX_OBSERVED_ORDERS", 2)
    vals = Validators(params=ledger_params(attest_grace=60))
    orders = []
    for k in range(11):
        parties = [Party.make(10 + 3 * k + i) for i in range(3)]
        orders.append(_order(vals, parties))
    first = min(leg.lock_by for o in orders for leg in o.legs)
    while vals.time + 30 < first:
        vals.step(time=vals.time + 30)
    for c in vals.chains:  # every leg locked just before the first deadline
        for order in orders:
            for leg in range(3):
                c.see(order, leg, LegOutcome.LOCKED, txid=f"{leg:02d}" * 32)
    deadline = max(leg.lock_by for o in orders for leg in o.legs) + 60
    while vals.time <= deadline + 600:
        vals.step(time=vals.time + 30)
    for order in orders:
        legs = vals.order(order.order_id)["legs"]
        assert [leg["outcome"] for leg in legs] == ["locked"] * 3
        assert not any("missed_at" in leg for leg in legs), legs


def test_an_order_on_a_chain_no_validator_reads_is_refused():
    """A never-paid-in order fails once a look sees legs[0] missed, and a defaulter is
    slashed once a look sees its leg missed; but a look counts only for chains read. Two
    sybils committed a direct order on a chain the ledger does not route ("zzz": every
    validator's observer raises ChainUnreadable, "not watched"): it was accepted, never
    marked, never failed, and stayed in the open set and the observation window for good
    (the flood of never-paid-in orders back, and a defaulter on such a leg never judged).
    Now a leg must be on a chain the ledger routes (listed in ``expiry_unit``), refused at
    commit with a clear error. (Fails on the old code: the order was committed and open.)"""
    import dataclasses

    from kofo.wire.orders import OrderKind, with_derived_id

    from .helpers import commit_tx, make_order

    vals = Validators(params=ledger_params(attest_grace=60))
    x, y = Party.make(7), Party.make(8)
    vals.step(*(p.register_tx() for p in (x, y)))
    base = make_order([x, y], kind=OrderKind.DIRECT, t0=vals.time)
    legs = tuple(dataclasses.replace(leg, chain="zzz") for leg in base.legs)
    order = with_derived_id(dataclasses.replace(base, legs=legs))
    for c in vals.chains:
        c.blind.add("zzz")
    result = vals.step(commit_tx(order, [x, y], x)).tx_results[1]
    assert result.code != 0 and "zzz" in result.log and "routes" in result.log, result.log
    assert vals.order(order.order_id) is None
    assert not vals.apps[0].app.pending_legs()
