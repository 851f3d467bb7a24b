"""Issue 17, the open-quote default griefing: bond reserved per recorded take.

Before, an open quote (taker zero) was griefed with two nodes: the first, bondless, took it and
defaulted (its ``leg_not_locked`` slash, 5 % of nothing, was below the quote slash, so it
excused nothing), the second took it too and filed after the provider's deadline: the honest
provider lost 2 % of its bond per open quote. A bonded taker did not close it either: one bond
backed any number of simultaneous takes, and each later 5 % slash took less. Now recording a
take of an open quote reserves, out of the taker's attested bond not yet reserved, the
provider's quote slash; a default on the take forfeits that reservation (whatever else the
taker owes) and so excuses the provider; the reservation cannot be unbonded and is released
when the order settles, fails with the provider's legs locked, or the fill window passes.
Real ledger app, in process (solo attestations).
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
    Unbond,
    derive_quote_id,
    sign_tx,
    with_derived_id,
)

from .helpers import Ledger, Party, ledger_params, prove_legs, take_evidence, take_order

pytestmark = pytest.mark.timeout(300)

PROVIDER_BOND = 1_000_000
QUOTE_SLASH = PROVIDER_BOND * 200 // 10_000  # 20,000: what each take of m1's quote reserves
PAYOUT = b"\x11" * 20


def _codes(result):
    return [r.error for r in result.results]


def _setup(*bonds, **params):
    """A ledger with provider m1 (and m2), both bonded ``PROVIDER_BOND``, and one party per
    entry of ``bonds`` (0: registered, never bonded)."""
    ledger = Ledger(params=ledger_params(**params))
    m1, m2 = Party.make(1), Party.make(5)
    others = [Party.make(10 + i, bond=b) for i, b in enumerate(bonds)]
    ledger.ok(*(p.register_tx() for p in (m1, m2, *others)))
    ledger.bonded(m1, m2, *(p for p in others if p.bond))
    return ledger, m1, m2, others


def _open_quote(ledger, provider):
    quote = Quote(bytes(16), provider.id, "btc", 1_000, "eth", 50_000, ledger.time + 100, bytes(32))
    return dataclasses.replace(quote, quote_id=derive_quote_id(quote))


def _honour(provider, commit):
    full = CommitOrder(commit.order, (*commit.signatures, commit.order.sign(provider.key)))
    return sign_tx(provider.key, prove_legs(full))


def _untouched(ledger, party, bond=PROVIDER_BOND):
    return ledger.app.node(party.id)["penalty_points"] == 0 and ledger.app.bond(party.id) == bond


def _deadline(ledger, commit, provider):
    p = ledger.app.params
    mine = [leg.lock_by for leg in commit.order.legs if leg.sender == provider.id]
    return max(mine) + p.attest_grace + p.honour_grace


def _not_locked(ledger, filer, commit, leg):
    tx = sign_tx(filer.key, FileEvidence(EvidenceKind.LEG_NOT_LOCKED, commit.order.order_id, leg))
    late = commit.order.legs[leg].lock_by + ledger.app.params.attest_grace + 1
    return ledger.block(tx, time=max(late, ledger.time + 1))


def test_the_two_node_griefing_costs_the_griefer_and_not_the_provider():
    # g1 holds exactly the quote slash; g2 is the second node of the griefer.
    ledger, m1, _, (g1, g2, broke) = _setup(QUOTE_SLASH, QUOTE_SLASH, 0)
    quote = _open_quote(ledger, m1)
    # a bondless first taker can no longer take an open quote at all (old code: recorded)
    result = ledger.block(take_evidence(quote, m1, broke))
    assert _codes(result) == ["evidence_invalid"]
    assert "unreserved bond is 0" in result.results[0].log
    first = take_order(quote, m1, g1)
    ledger.ok(take_evidence(quote, m1, g1, order=first))
    second = take_evidence(quote, m1, g2)
    assert _codes(ledger.block(second)) == [""]
    ledger.ok(_honour(m1, first))  # the honest provider commits the first take's order
    # g1 never locks legs[0]; the provider files it once it is judged
    assert _codes(_not_locked(ledger, m1, first, 0)) == [""]
    # g1 lost the whole reservation, not 5 % of its bond (old code: 1,000)
    assert ledger.app.bond(g1.id) == 0
    assert ledger.app.node(g1.id)["slashed"] == QUOTE_SLASH
    # g2 files after the provider's deadline: the earlier take's default excuses the provider
    result = ledger.block(second, time=_deadline(ledger, first, m1) + 1)
    assert _codes(result) == ["evidence_invalid"]  # old code: "" (m1 slashed 20,000)
    assert "filled an earlier take" in result.results[0].log
    assert _untouched(ledger, m1)
    # the slash goes to the foundation, never to the provider (its sybil's default is not free)
    assert ledger.app.node(g1.id)["slash_pending"] == QUOTE_SLASH


def test_one_bond_cannot_back_two_takes_beyond_its_size():
    ledger, m1, m2, (t,) = _setup(QUOTE_SLASH + QUOTE_SLASH // 2)
    q1, q2 = _open_quote(ledger, m1), _open_quote(ledger, m2)
    ledger.ok(take_evidence(q1, m1, t))
    result = ledger.block(take_evidence(q2, m2, t))
    assert _codes(result) == ["evidence_invalid"]  # old code: "" (recorded)
    assert f"unreserved bond is {QUOTE_SLASH // 2}" in result.results[0].log
    assert [e[2] for e in ledger.app.node(t.id)["reserved"]] == [QUOTE_SLASH]
    assert ledger.app.bond(t.id) == t.bond  # reserved bond still counts (importance, power)


def test_each_default_of_simultaneous_takes_costs_a_whole_reservation():
    # A bond of exactly two quote slashes backs two takes at once; each default costs its
    # reservation, not 5 % of what is left (old code: 2,000 then 1,900, and neither default
    # excused its provider, each slashed 20,000 by the later taker).
    ledger, m1, m2, (rich, late) = _setup(2 * QUOTE_SLASH, 2 * QUOTE_SLASH)
    q1, q2 = _open_quote(ledger, m1), _open_quote(ledger, m2)
    c1, c2 = take_order(q1, m1, rich), take_order(q2, m2, rich)
    ledger.ok(take_evidence(q1, m1, rich, order=c1), take_evidence(q2, m2, rich, order=c2))
    later = [take_evidence(q1, m1, late), take_evidence(q2, m2, late)]
    assert _codes(ledger.block(*later)) == ["", ""]
    ledger.ok(_honour(m1, c1), _honour(m2, c2))
    assert _codes(_not_locked(ledger, m1, c1, 0)) == [""]
    assert _codes(_not_locked(ledger, m2, c2, 0)) == [""]
    assert ledger.app.node(rich.id)["slashed"] == 2 * QUOTE_SLASH
    assert ledger.app.bond(rich.id) == 0
    deadline = max(_deadline(ledger, c, m) for c, m in ((c1, m1), (c2, m2)))
    assert _codes(ledger.block(*later, time=deadline + 1)) == ["evidence_invalid"] * 2
    assert _untouched(ledger, m1) and _untouched(ledger, m2)


def _settle(ledger, order):
    for leg in (0, 1):
        ledger.chains.see(order, leg, LegOutcome.LOCKED)
    ledger.attested(time=order.legs[0].lock_by)
    for leg in (0, 1):
        ledger.chains.see(order, leg, LegOutcome.REDEEMED)
    ledger.attested()
    assert ledger.app.order(order.order_id)["status"] == "settled"


def test_reserved_bond_cannot_be_unbonded_until_the_take_resolves():
    ledger, m1, m2, (t,) = _setup(QUOTE_SLASH + 5_000)
    q1 = _open_quote(ledger, m1)
    c1 = take_order(q1, m1, t)
    ledger.ok(take_evidence(q1, m1, t, order=c1))
    result = ledger.block(sign_tx(t.key, Unbond(5_001, 0, PAYOUT)))
    assert _codes(result) == ["order_invalid"]  # old code: "" (unbonding started)
    assert "reserved 20000" in result.results[0].log
    # the rest may go: it starts unbonding and can no longer back a take
    assert _codes(ledger.block(sign_tx(t.key, Unbond(5_000, 0, PAYOUT)))) == [""]
    assert ledger.app.bond(t.id) == QUOTE_SLASH
    ledger.ok(_honour(m1, c1))
    _settle(ledger, c1.order)
    assert ledger.app.node(t.id)["reserved"] == []  # released with the settled order
    # released: the bond backs a take again (it could be unbonded as well)
    assert _codes(ledger.block(take_evidence(_open_quote(ledger, m2), m2, t))) == [""]


def test_an_unbond_release_never_takes_reserved_bond():
    # An unbond requested before a take is not reserved (it no longer counts); a take then
    # reserves the rest, and the release at the end of the delay pays only the unreserved part
    # even after a slash shrank the bond.
    ledger, m1, m2, (t, other) = _setup(2 * QUOTE_SLASH, PROVIDER_BOND, unbond_delay=5_000)
    start = ledger.time
    unbond = sign_tx(t.key, Unbond(QUOTE_SLASH, 0, PAYOUT))
    ledger.ok(unbond)
    quote = _open_quote(ledger, m1)
    c1 = take_order(quote, m1, t)
    ledger.ok(take_evidence(quote, m1, t, order=c1))
    # a second take finds nothing unreserved (the rest is unbonding)
    assert _codes(ledger.block(take_evidence(_open_quote(ledger, m2), m2, t))) == [
        "evidence_invalid"
    ]
    # t is slashed 5 % elsewhere (a routed order it never locks, with `other`)
    route = take_order(_open_quote(ledger, other), other, t)
    ledger.ok(_honour(other, route))
    assert _codes(_not_locked(ledger, other, route, 0)) == [""]
    slashed = 2 * QUOTE_SLASH * 500 // 10_000
    assert ledger.app.node(t.id)["slashed"] == slashed
    res = ledger.block(unbond, time=start + ledger.app.params.unbond_delay)
    assert _codes(res) == [""]
    event = dict(next(e for e in res.results[0].events if e[0] == "bond_decision")[1])
    # old code: the whole 20,000 released, leaving 18,000 against a 20,000 reservation
    assert int(event["amount"]) == QUOTE_SLASH - slashed


def test_the_reservation_is_released_when_the_fill_window_passes():
    ledger, m1, m2, (t,) = _setup(QUOTE_SLASH)
    q1 = _open_quote(ledger, m1)
    ledger.ok(take_evidence(q1, m1, t))  # the provider never commits it
    q2 = _open_quote(ledger, m2)
    assert _codes(ledger.block(take_evidence(q2, m2, t))) == ["evidence_invalid"]
    (entry,) = ledger.app.node(t.id)["reserved"]
    p = ledger.app.params
    until = q1.valid_until + p.honour_grace + p.take_fill_window + p.attest_grace + p.honour_grace
    assert entry[3] == until
    assert _codes(ledger.block(sign_tx(t.key, Unbond(1, 0, PAYOUT)), time=until)) == [
        "order_invalid"
    ]
    q3 = dataclasses.replace(q2, valid_until=until + 1_000, quote_id=bytes(16))
    q3 = dataclasses.replace(q3, quote_id=derive_quote_id(q3))
    assert _codes(ledger.block(take_evidence(q3, m2, t), time=until + 1)) == [""]
    (entry,) = ledger.app.node(t.id)["reserved"]  # the expired one was dropped
    assert entry[1] == m2.id


@pytest.mark.parametrize("provider_locked", [True, False])
def test_a_failed_order_releases_the_reservation_only_if_the_provider_locked(provider_locked):
    ledger, m1, m2, (t,) = _setup(QUOTE_SLASH)
    q1 = _open_quote(ledger, m1)
    c1 = take_order(q1, m1, t)
    ledger.ok(take_evidence(q1, m1, t, order=c1))
    ledger.ok(_honour(m1, c1))
    order = c1.order
    ledger.chains.see(order, 0, LegOutcome.LOCKED)
    if provider_locked:
        ledger.chains.see(order, 1, LegOutcome.LOCKED)
    ledger.attested(time=order.legs[1].lock_by)
    ledger.chains.see(order, 0, LegOutcome.REFUNDED)  # the taker never redeems: refunds
    ledger.attested()
    assert ledger.app.order(order.order_id)["status"] == "failed"
    held = ledger.app.node(t.id)["reserved"]
    assert (held == []) is provider_locked
    code = "" if provider_locked else "evidence_invalid"
    assert _codes(ledger.block(take_evidence(_open_quote(ledger, m2), m2, t))) == [code]


EXPIRY = 800_000


def test_a_first_take_paid_in_too_near_its_expiry_height_forfeits_its_reservation():
    # (b): the first taker locks legs[0] (btc, paying the provider) in time but 10 blocks
    # before its expiry height, then refunds at once; the provider is right not to lock. The
    # provider's leg_not_locked on its own leg now forfeits the taker's reservation, which
    # excuses the provider towards the later taker (old code: evidence_invalid, and the later
    # taker's evidence slashed the provider).
    ledger, m1, _, (g1, g2) = _setup(QUOTE_SLASH, QUOTE_SLASH)
    quote = Quote(bytes(16), m1.id, "eth", 50_000, "btc", 1_000, ledger.time + 100, bytes(32))
    quote = dataclasses.replace(quote, quote_id=derive_quote_id(quote))
    honest = take_order(quote, m1, g1)
    legs = list(honest.order.legs)
    assert legs[0].recipient == m1.id and legs[0].chain == "btc"
    legs[0] = dataclasses.replace(legs[0], expiry=BlockHeight(EXPIRY))
    order = with_derived_id(dataclasses.replace(honest.order, legs=tuple(legs)))
    first = prove_legs(CommitOrder(order, (order.sign(g1.key),)), skip=m1.id)
    ledger.ok(take_evidence(quote, m1, g1, order=first))
    second = take_evidence(quote, m1, g2)
    assert _codes(ledger.block(second)) == [""]
    ledger.ok(_honour(m1, first))
    ledger.chains.see(order, 0, LegOutcome.LOCKED, height=EXPIRY - 10)
    ledger.attested(time=order.legs[0].lock_by)
    ledger.chains.see(order, 0, LegOutcome.REFUNDED, height=EXPIRY + 1)
    ledger.attested()
    assert ledger.app.order(order.order_id)["status"] == "failed"
    result = _not_locked(ledger, m1, first, 1)
    assert _codes(result) == [""]  # old code: evidence_invalid (height_expiry_margin)
    penalty = dict(next(e for e in result.results[0].events if e[0] == "penalty")[1])
    assert penalty["node"] == g1.id.hex() and int(penalty["slash"]) == QUOTE_SLASH
    assert ledger.app.bond(g1.id) == 0
    result = ledger.block(second, time=_deadline(ledger, first, m1) + 1)
    assert _codes(result) == ["evidence_invalid"]  # old code: "" (m1 slashed)
    assert _untouched(ledger, m1)
    # without a reservation (a named quote's take) the provider is only excused, as before
