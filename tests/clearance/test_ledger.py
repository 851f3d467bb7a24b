import dataclasses

import pytest

from kofo.clearance import privacy
from kofo.clearance.fees import split_fee
from kofo.wire.envelope import sign
from kofo.wire.orders import (
    CommitOrder,
    EvidenceKind,
    FileEvidence,
    LegOutcome,
    OrderKind,
    Quote,
    ReportOutcome,
    Take,
    derive_quote_id,
    sign_tx,
    with_derived_id,
)

from .helpers import T0, Ledger, Party, commit_tx, make_order, take_evidence, take_order


@pytest.fixture
def net():
    ledger = Ledger()
    alice, m1, m2, relay, mon = (Party.make(i) for i in range(5))
    mon.monitor = True
    ledger.ok(*(p.register_tx() for p in (alice, m1, m2, relay, mon)))
    ledger.bonded(alice, m1, m2, relay, mon)
    return ledger, alice, m1, m2, relay, mon


def _codes(result):
    return [r.error for r in result.results]


def _report(party, order, leg, outcome):
    return sign_tx(party.key, ReportOutcome(order.order_id, leg, outcome, f"tx{leg}{outcome}"))


def _settle(ledger, order):
    """The chains show every leg locked, then redeemed; the validator attests each step."""
    for i in range(len(order.legs)):
        ledger.chains.see(order, i, LegOutcome.LOCKED)
    ledger.attested()
    for i in reversed(range(len(order.legs))):
        ledger.chains.see(order, i, LegOutcome.REDEEMED)
    ledger.attested()


# -- registration ------------------------------------------------------------------------------


def test_registering_twice_is_rejected(net):
    ledger, alice, *_ = net
    assert _codes(ledger.block(alice.register_tx())) == ["already_exists"]


def test_paillier_key_below_the_minimum_is_rejected():
    strict = Ledger(params=dataclasses.replace(Ledger().app.params, paillier_bits=(2048,)))
    assert _codes(strict.block(Party.make(0).register_tx())) == ["bad_message"]


# -- committing orders -------------------------------------------------------------------------


def test_routed_order_signed_by_every_party_is_committed(net):
    ledger, alice, m1, m2, relay, _ = net
    order = make_order([alice, m1, m2], relays=[relay])
    ledger.ok(commit_tx(order, [alice, m1, m2, relay], alice))
    rec = ledger.app.order(order.order_id)
    assert rec["status"] == "committed"
    assert rec["order"] == order.as_map()


def test_duplicate_order_id_is_rejected_and_the_first_stays_unchanged(net):
    ledger, alice, m1, m2, _, _ = net
    order = make_order([alice, m1, m2])
    ledger.ok(commit_tx(order, [alice, m1, m2], alice))
    other = make_order([alice, m1, m2], amount=99_000_000, order_id=order.order_id)
    assert _codes(ledger.block(commit_tx(other, [alice, m1, m2], m1))) == ["order_invalid"]
    assert _codes(ledger.block(commit_tx(order, [alice, m1, m2], m1))) == ["already_exists"]
    assert ledger.app.order(order.order_id)["order"] == order.as_map()


def test_order_missing_a_party_signature_is_refused_before_the_mempool(net):
    ledger, alice, m1, m2, _, _ = net
    order = make_order([alice, m1, m2])
    tx = commit_tx(order, [alice, m1], alice)
    assert ledger.app.check_tx(tx).error == "bad_signature"
    assert _codes(ledger.block(tx)) == ["bad_signature"]


def test_order_changed_after_signing_fails_signature_check(net):
    ledger, alice, m1, m2, _, _ = net
    order = make_order([alice, m1, m2])
    sigs = tuple(order.sign(p.key) for p in (alice, m1, m2))
    legs = list(order.legs)
    legs[1] = dataclasses.replace(legs[1], amount=legs[1].amount - 1)
    tampered = dataclasses.replace(order, legs=tuple(legs))
    tx = sign_tx(alice.key, CommitOrder(tampered, sigs))
    assert ledger.app.check_tx(tx).error == "bad_signature"


def test_expiries_not_decreasing_by_the_gap_are_rejected(net):
    ledger, alice, m1, m2, _, _ = net
    order = make_order([alice, m1, m2], expiry_gap=600)
    assert _codes(ledger.block(commit_tx(order, [alice, m1, m2], alice))) == ["order_invalid"]


def test_wrong_protocol_fee_is_rejected(net):
    ledger, alice, m1, m2, _, _ = net
    order = make_order([alice, m1, m2])
    order = with_derived_id(dataclasses.replace(order, protocol_fee=order.protocol_fee - 1))
    assert _codes(ledger.block(commit_tx(order, [alice, m1, m2], alice))) == ["fee_rule_violated"]
    other_rate = make_order([alice, m1, m2], fee_bps=5)
    codes = _codes(ledger.block(commit_tx(other_rate, [alice, m1, m2], alice)))
    assert codes == ["fee_rule_violated"]


def test_direct_swap_with_a_protocol_fee_is_rejected(net):
    ledger, alice, m1, *_ = net
    order = make_order([alice, m1], kind=OrderKind.DIRECT)
    order = with_derived_id(dataclasses.replace(order, protocol_fee_bps=10, protocol_fee=10_000))
    assert _codes(ledger.block(commit_tx(order, [alice, m1], alice))) == ["fee_rule_violated"]


def test_order_with_an_unregistered_party_is_rejected(net):
    ledger, alice, m1, *_ = net
    stranger = Party.make(42)
    order = make_order([alice, m1, stranger])
    codes = _codes(ledger.block(commit_tx(order, [alice, m1, stranger], alice)))
    assert codes == ["unknown_node"]


def test_order_submitted_by_an_outsider_is_rejected(net):
    ledger, alice, m1, m2, relay, _ = net
    order = make_order([alice, m1, m2])
    assert _codes(ledger.block(commit_tx(order, [alice, m1, m2], relay))) == ["not_authorised"]


def test_order_committed_after_its_first_lock_deadline_is_rejected(net):
    ledger, alice, m1, m2, _, _ = net
    order = make_order([alice, m1, m2], t0=T0 - 601)
    assert _codes(ledger.block(commit_tx(order, [alice, m1, m2], alice))) == ["order_invalid"]


def test_malformed_tx_is_refused_by_check_tx(net):
    ledger, alice, *_ = net
    assert ledger.app.check_tx(b"\xa1").error == "bad_encoding"
    junk = sign(alice.key, "clearance.commit_order", {"order": 1}).to_bytes()
    assert ledger.app.check_tx(junk).error == "bad_message"
    unknown = sign(alice.key, "clearance.mint", {}).to_bytes()
    assert ledger.app.check_tx(unknown).error == "bad_message"


# -- outcomes, fees, privacy -------------------------------------------------------------------


def test_settled_routed_order_pays_foundation_and_encrypted_shares_by_the_rule(net):
    ledger, alice, m1, m2, relay, _ = net
    order = make_order([alice, m1, m2], relays=[relay], amount=123_456_789, private_fee=777)
    ledger.ok(commit_tx(order, [alice, m1, m2, relay], alice))
    _settle(ledger, order)
    assert ledger.app.order(order.order_id)["status"] == "settled"
    split = split_fee(
        order.protocol_fee,
        [relay.id],
        [m1.id, m2.id],
        foundation_bps=1_000,
        relay_pool_bps=3_000,
    )
    asset = order.fee_asset
    assert ledger.app.foundation_balance(asset) == split.foundation
    for party in (relay, m1, m2):
        ct = ledger.app.balance_ciphertext(party.id, asset)
        assert privacy.decrypt(party.paillier_priv, ct) == dict(split.shares)[party.id]
        # the stored ciphertext is blinded by the node's seed: not the trivial encryption
        assert ct != privacy.add_plain(party.paillier_pub.n, b"\x01", dict(split.shares)[party.id])
    # each provider's private quote fee is recorded in the asset it received
    earned = ledger.app.earned_ciphertext(m1.id, order.legs[0].asset)
    assert privacy.decrypt(m1.paillier_priv, earned) == 777


def test_direct_swap_pays_no_fee_and_credits_nobody(net):
    ledger, alice, m1, *_ = net
    order = make_order([alice, m1], kind=OrderKind.DIRECT)
    ledger.ok(commit_tx(order, [alice, m1], alice))
    _settle(ledger, order)
    assert ledger.app.foundation_balance(order.fee_asset) == 0
    assert ledger.app.balance_ciphertext(m1.id, order.fee_asset) is None


def test_refunded_leg_fails_the_order_and_later_redeem_is_rejected(net):
    ledger, alice, m1, m2, _, _ = net
    order = make_order([alice, m1, m2])
    ledger.ok(commit_tx(order, [alice, m1, m2], alice))
    ledger.chains.see(order, 0, LegOutcome.LOCKED)
    ledger.attested()
    ledger.chains.see(order, 0, LegOutcome.REFUNDED)
    ledger.attested()
    assert ledger.app.order(order.order_id)["status"] == "failed"
    ledger.chains.see(order, 0, LegOutcome.REDEEMED)  # a watcher gone wrong: changes nothing
    ledger.attested()
    assert ledger.app.order(order.order_id)["legs"][0]["outcome"] == "refunded"
    assert ledger.app.node(m1.id)["failed"] == 1


def test_declared_outcomes_are_refused_from_everyone(net):
    ledger, alice, m1, m2, relay, mon = net
    order = make_order([alice, m1, m2])
    ledger.ok(commit_tx(order, [alice, m1, m2], alice))
    for who in (relay, mon, alice, m1):
        assert _codes(ledger.block(_report(who, order, 0, LegOutcome.LOCKED))) == ["not_authorised"]
    assert ledger.app.order(order.order_id)["legs"][0]["outcome"] is None


def test_withdrawal_reveals_the_balance_and_cannot_be_replayed(net):
    ledger, alice, m1, m2, relay, _ = net
    order = make_order([alice, m1, m2], relays=[relay])
    ledger.ok(commit_tx(order, [alice, m1, m2, relay], alice))
    _settle(ledger, order)
    asset = order.fee_asset
    ct = ledger.app.balance_ciphertext(m2.id, asset)
    honest = m2.withdraw(ct, asset, 0)
    amount = honest.amount
    lie = dataclasses.replace(honest, amount=amount - 1)
    assert _codes(ledger.block(sign_tx(m2.key, lie))) == ["withdrawal_invalid"]
    tx = sign_tx(m2.key, honest)
    result = ledger.block(tx)
    assert result.results[0].ok
    assert ("amount", str(amount)) in result.results[0].events[0][1]
    assert privacy.decrypt(m2.paillier_priv, ledger.app.balance_ciphertext(m2.id, asset)) == 0
    assert _codes(ledger.block(tx)) == ["withdrawal_invalid"]


# -- evidence, penalties, points, importance -------------------------------------------------


def test_leg_not_locked_by_deadline_slashes_the_sender_once(net):
    ledger, alice, m1, m2, _, mon = net
    order = make_order([alice, m1, m2])
    ledger.ok(commit_tx(order, [alice, m1, m2], alice))
    ledger.chains.see(order, 0, LegOutcome.LOCKED)
    ledger.attested()
    ev = sign_tx(mon.key, FileEvidence(EvidenceKind.LEG_NOT_LOCKED, order.order_id, 1))
    assert _codes(ledger.block(ev)) == ["evidence_invalid"]  # deadline not passed yet
    late = order.legs[1].lock_by + ledger.app.params.attest_grace
    assert _codes(ledger.block(ev, time=late)) == ["evidence_invalid"]  # the attest grace
    assert _codes(ledger.block(ev, time=late + 1)) == [""]
    node = ledger.app.node(m1.id)
    assert ledger.app.bond(m1.id) == m1.bond - m1.bond * 500 // 10_000
    assert node["penalty_points"] == 100
    assert _codes(ledger.block(ev)) == ["already_exists"]
    ev0 = sign_tx(mon.key, FileEvidence(EvidenceKind.LEG_NOT_LOCKED, order.order_id, 0))
    assert _codes(ledger.block(ev0)) == ["evidence_invalid"]  # leg 0 was locked in time


def _quote_evidence(provider, taker, valid_until=T0 + 100):
    quote = Quote(bytes(16), provider.id, "btc", 1_000, "eth", 50_000, valid_until)
    quote = dataclasses.replace(quote, quote_id=derive_quote_id(quote))
    return quote, take_evidence(quote, provider, taker)


def test_quote_not_honoured_after_grace_slashes_the_provider(net):
    ledger, alice, m1, _, _, _mon = net
    quote, ev = _quote_evidence(m1, alice)
    assert _codes(ledger.block(ev, time=quote.valid_until - 5)) == [""]  # the take, recorded
    assert _codes(ledger.block(ev, time=quote.valid_until + 10)) == ["evidence_invalid"]
    assert _codes(ledger.block(ev, time=quote.valid_until + 301)) == [""]
    assert ledger.app.bond(m1.id) == m1.bond - m1.bond * 200 // 10_000


def test_quote_evidence_with_forged_provider_signature_is_rejected(net):
    ledger, alice, m1, m2, _, _mon = net
    quote, _ = _quote_evidence(m1, alice)
    order = take_order(quote, m1, alice)
    take = Take(quote.quote_id, alice.id, T0, order.order.order_id)
    forged = FileEvidence(
        EvidenceKind.QUOTE_NOT_HONOURED,
        quote=quote,
        quote_sig=m2.key.sign(quote.signing_bytes()),
        take=take,
        take_sig=alice.key.sign(take.signing_bytes()),
        order=order,
    )
    assert _codes(ledger.block(sign_tx(alice.key, forged), time=T0 + 50)) == ["bad_signature"]


def test_points_reward_early_activity_and_liquidity_and_penalties_remove_them(net):
    ledger, alice, m1, m2, _, _ = net
    assert ledger.app.node(alice.id)["points"] == 1  # its own registration
    order = make_order([alice, m1, m2])
    ledger.ok(commit_tx(order, [alice, m1, m2], alice))
    _settle(ledger, order)
    assert ledger.app.node(alice.id)["points"] == 2
    assert ledger.app.node(m1.id)["points"] == 1 + 10
    assert ledger.app.node(m2.id)["points"] == 1 + 10  # outcomes are attested, not reported


def test_early_points_stop_after_the_limit():
    ledger = Ledger(params=dataclasses.replace(Ledger().app.params, early_tx_limit=1))
    a, b = Party.make(0), Party.make(1)
    ledger.ok(a.register_tx(), b.register_tx())
    assert ledger.app.node(a.id)["points"] == 1
    assert ledger.app.node(b.id)["points"] == 0


def test_importance_rises_with_settled_volume_and_falls_with_penalties(net):
    ledger, alice, m1, m2, relay, _mon = net
    base = ledger.app.importance(m1.id)
    order = make_order([alice, m1, m2], amount=10**8)
    ledger.ok(commit_tx(order, [alice, m1, m2], alice))
    _settle(ledger, order)
    after = ledger.app.importance(m1.id)
    assert after > base
    ranked = [n for n, _ in ledger.app.ranked_nodes()]
    assert set(ranked[:3]) == {alice.id, m1.id, m2.id}
    quote, ev = _quote_evidence(m2, alice, valid_until=ledger.time + 100)
    ledger.ok(ev)
    ledger.ok(ev, time=quote.valid_until + 1_000)
    assert ledger.app.importance(m2.id) < ledger.app.importance(m1.id)
    ranking = ledger.app.rank_routes([[relay.id], [m2.id], [m1.id]])
    assert [i for i, _ in ranking] == [2, 1, 0]
