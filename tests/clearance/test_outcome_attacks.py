"""Issue 17 section 2: outcomes and evidence rest on facts the ledger holds, not on declarations.

Each test is one attack from the issue, run against the real ledger app (solo mode: the single
validator's own observation of the chains is the attestation); every one succeeded on the code
before the fix.
"""

import dataclasses

import pytest

from kofo.wire.orders import (
    CommitOrder,
    EvidenceKind,
    FeeQuote,
    FileEvidence,
    LegOutcome,
    OrderKind,
    OrderSignature,
    Quote,
    QuoteRole,
    ReportOutcome,
    Take,
    derive_quote_id,
    sign_tx,
    with_derived_id,
)

from .helpers import (
    T0,
    Ledger,
    Party,
    commit_tx,
    make_order,
    prove_legs,
    take_evidence,
    take_order,
)


@pytest.fixture
def net():
    ledger = Ledger()
    alice, m1, m2, relay, mon, sybil, sybil2 = (Party.make(i) for i in range(7))
    mon.monitor = True  # the self-declared flag the attacks used
    ledger.ok(*(p.register_tx() for p in (alice, m1, m2, relay, mon, sybil, sybil2)))
    ledger.bonded(alice, m1, m2, relay, mon, sybil, sybil2)
    return ledger, alice, m1, m2, relay, mon, sybil, sybil2


def _codes(result):
    return [r.error for r in result.results]


def _report(party, order, leg, outcome, txid="ff" * 32):
    return sign_tx(party.key, ReportOutcome(order.order_id, leg, outcome, txid))


def test_a_self_declared_monitor_cannot_fail_an_honest_order(net):
    ledger, alice, m1, m2, _, mon, *_ = net
    order = make_order([alice, m1, m2], amount=10**8)
    ledger.ok(commit_tx(order, [alice, m1, m2], alice))
    ledger.chains.see(order, 0, LegOutcome.LOCKED)
    ledger.attested()
    assert _codes(ledger.block(_report(mon, order, 0, LegOutcome.REFUNDED))) == ["not_authorised"]
    rec = ledger.app.order(order.order_id)
    assert rec["status"] == "committed"
    assert rec["legs"][0]["outcome"] == "locked"
    assert ledger.app.node(m1.id)["failed"] == 0


def test_route_nodes_cannot_settle_a_self_dealing_order_by_declaring_it_redeemed(net):
    ledger, _, _, _, _, _, sybil, sybil2 = net
    huge = make_order([sybil, sybil2], kind=OrderKind.DIRECT, amount=10**18)
    ledger.ok(commit_tx(huge, [sybil, sybil2], sybil))
    for leg in (0, 1):
        for who in (sybil, sybil2):
            assert _codes(ledger.block(_report(who, huge, leg, LegOutcome.REDEEMED))) == [
                "not_authorised"
            ]
    assert ledger.app.order(huge.order_id)["status"] == "committed"
    assert ledger.app.node(sybil.id)["volume"] == 0
    assert ledger.app.node(sybil.id)["settled"] == 0


def test_an_initiator_that_never_locked_cannot_blame_the_next_leg(net):
    ledger, alice, m1, m2, *_ = net
    order = make_order([alice, m1, m2])
    ledger.ok(commit_tx(order, [alice, m1, m2], alice))
    ev = sign_tx(alice.key, FileEvidence(EvidenceKind.LEG_NOT_LOCKED, order.order_id, 1))
    result = ledger.block(ev, time=order.legs[1].lock_by + ledger.app.params.attest_grace + 1)
    assert _codes(result) == ["evidence_invalid"]
    assert "legs[0] was not attested locked" in result.results[0].log
    assert ledger.app.bond(m1.id) == m1.bond
    # the one who did not lock in time is the one blamed, whoever files it
    ev0 = sign_tx(m1.key, FileEvidence(EvidenceKind.LEG_NOT_LOCKED, order.order_id, 0))
    assert _codes(ledger.block(ev0)) == [""]
    assert ledger.app.bond(alice.id) < alice.bond


def test_a_sender_cannot_escape_with_a_fake_locked_txid(net):
    ledger, alice, m1, m2, *_ = net
    order = make_order([alice, m1, m2])
    ledger.ok(commit_tx(order, [alice, m1, m2], alice))
    ledger.chains.see(order, 0, LegOutcome.LOCKED)
    ledger.attested()
    # m1 never locks leg 1 and declares a txid nobody can find on the chain
    assert _codes(ledger.block(_report(m1, order, 1, LegOutcome.LOCKED))) == ["not_authorised"]
    ev = sign_tx(alice.key, FileEvidence(EvidenceKind.LEG_NOT_LOCKED, order.order_id, 1))
    late = order.legs[1].lock_by + ledger.app.params.attest_grace + 1
    assert _codes(ledger.block(ev, time=late)) == [""]
    assert ledger.app.bond(m1.id) == m1.bond - m1.bond * 500 // 10_000


def test_a_lock_attested_after_the_deadline_does_not_clear_the_sender(net):
    ledger, alice, m1, m2, *_ = net
    order = make_order([alice, m1, m2])
    ledger.ok(commit_tx(order, [alice, m1, m2], alice))
    ledger.chains.see(order, 0, LegOutcome.LOCKED)
    ledger.attested()
    # the validators look after the deadline and see no lock (at one block a second they
    # look every block; a lock first seen at the first look after it would be in time)
    ledger.attested(time=order.legs[1].lock_by + ledger.app.params.attest_grace)
    ledger.chains.see(order, 1, LegOutcome.LOCKED)
    ledger.attested(time=order.legs[1].lock_by + ledger.app.params.attest_grace + 5)
    ev = sign_tx(alice.key, FileEvidence(EvidenceKind.LEG_NOT_LOCKED, order.order_id, 1))
    assert _codes(ledger.block(ev)) == [""]


def _signed_quote(provider, valid_until, give=1_000):
    quote = Quote(bytes(16), provider.id, "btc", give, "eth", 50_000, valid_until)
    return dataclasses.replace(quote, quote_id=derive_quote_id(quote))


def _take_evidence(quote, provider, taker, filer=None, ts=None):
    return take_evidence(quote, provider, taker, filer=filer, ts=ts)


def test_back_dated_takes_from_a_sybil_cannot_drain_a_providers_bond(net):
    ledger, _, m1, _, _, mon, sybil, _ = net
    # The provider's quotes are public; the sybil signs takes dated inside each validity
    # window but shows them only after the windows closed, over many quotes.
    for i in range(5):
        quote = _signed_quote(m1, T0 + 100, give=1_000 + i)
        ev = _take_evidence(quote, m1, sybil)
        assert _codes(ledger.block(ev, time=T0 + 1_000 + i)) == ["evidence_invalid"]
        by_monitor = _take_evidence(quote, m1, sybil, filer=mon)
        assert _codes(ledger.block(by_monitor)) == ["not_authorised"]
    assert ledger.app.bond(m1.id) == m1.bond
    assert ledger.app.node(m1.id)["penalty_points"] == 0


def test_a_take_recorded_in_time_and_not_honoured_is_slashed_once(net):
    ledger, alice, m1, *_ = net
    quote = _signed_quote(m1, ledger.time + 100)
    ev = _take_evidence(quote, m1, alice)
    assert _codes(ledger.block(ev)) == [""]  # recorded at block time, inside the window
    assert _codes(ledger.block(ev)) == ["already_exists"]
    assert _codes(ledger.block(ev, time=quote.valid_until + 300)) == ["evidence_invalid"]
    assert _codes(ledger.block(ev, time=quote.valid_until + 301)) == [""]
    assert _codes(ledger.block(ev)) == ["already_exists"]
    assert ledger.app.bond(m1.id) == m1.bond - m1.bond * 200 // 10_000


def test_a_provider_cannot_escape_quote_evidence_by_using_the_quote_in_a_sybil_order(net):
    ledger, alice, m1, _, _, _, sybil, _ = net
    quote = _signed_quote(m1, ledger.time + 500)
    ledger.ok(_take_evidence(quote, m1, alice))
    # m1 "honours" the quote in an order with its own sybil instead of the taker
    sham = make_order([sybil, m1], amount=1_000)
    quotes = (FeeQuote(m1.id, QuoteRole.PROVIDER, quote.quote_id),)
    sham = with_derived_id(dataclasses.replace(sham, quotes=quotes))
    ledger.ok(commit_tx(sham, [sybil, m1], m1))
    ev = _take_evidence(quote, m1, alice)
    assert _codes(ledger.block(ev, time=quote.valid_until + 301)) == [""]
    assert ledger.app.node(m1.id)["penalty_points"] == 50


def test_a_quote_honoured_by_an_order_with_the_taker_is_not_evidence(net):
    ledger, alice, m1, *_ = net
    quote = _signed_quote(m1, ledger.time + 500)
    ledger.ok(_take_evidence(quote, m1, alice))
    order = make_order([alice, m1], amount=1_000)
    quotes = (FeeQuote(m1.id, QuoteRole.PROVIDER, quote.quote_id),)
    order = with_derived_id(dataclasses.replace(order, quotes=quotes))
    ledger.ok(commit_tx(order, [alice, m1], alice))
    ev = _take_evidence(quote, m1, alice)
    assert _codes(ledger.block(ev, time=quote.valid_until + 301)) == ["evidence_invalid"]


def test_an_order_id_copied_from_the_mempool_cannot_block_the_honest_order(net):
    ledger, alice, m1, m2, _, _, sybil, sybil2 = net
    honest = make_order([alice, m1, m2])
    squat = make_order([sybil, sybil2], kind=OrderKind.DIRECT, order_id=honest.order_id)
    result = ledger.block(commit_tx(squat, [sybil, sybil2], sybil))
    assert _codes(result) == ["order_invalid"]
    assert "not derived from the order's content" in result.results[0].log
    ledger.ok(commit_tx(honest, [alice, m1, m2], alice))
    assert ledger.app.order(honest.order_id)["order"] == honest.as_map()


def test_a_quote_id_copied_from_the_mempool_cannot_block_the_honest_order(net):
    ledger, alice, m1, m2, _, _, sybil, sybil2 = net
    honest = make_order([alice, m1, m2])
    stolen = honest.quotes[0].quote_id
    squat = make_order([sybil, sybil2])
    quotes = (FeeQuote(sybil2.id, QuoteRole.PROVIDER, stolen),)
    squat = with_derived_id(dataclasses.replace(squat, quotes=quotes))
    ledger.ok(commit_tx(squat, [sybil, sybil2], sybil))
    ledger.ok(commit_tx(honest, [alice, m1, m2], alice))


def test_the_initiator_cannot_list_itself_as_a_relay(net):
    ledger, alice, m1, m2, *_ = net
    order = make_order([alice, m1, m2], relays=[alice])
    result = ledger.block(commit_tx(order, [alice, m1, m2], alice))
    assert _codes(result) == ["fee_rule_violated"]
    assert "initiator" in result.results[0].log
    assert ledger.app.order(order.order_id) is None


def test_an_attestation_tx_cannot_come_from_the_mempool_or_mid_block(net):
    ledger, alice, m1, m2, *_ = net
    order = make_order([alice, m1, m2])
    ledger.ok(commit_tx(order, [alice, m1, m2], alice))
    ledger.chains.see(order, 0, LegOutcome.REFUNDED)
    forged = ledger.app.solo_attestation(ledger.app.height + 1)
    ledger.chains.facts.clear()
    assert ledger.app.check_tx(forged).error == "not_authorised"
    # Ledger.block puts the producer's own (empty) attestation first: the forged one is second
    assert _codes(ledger.block(forged)) == ["not_authorised"]
    assert ledger.app.order(order.order_id)["status"] == "committed"


def test_many_open_orders_are_observed_in_a_bounded_rotating_window(net, monkeypatch):
    import kofo.clearance.app as app_module

    monkeypatch.setattr(app_module, "MAX_OBSERVED_ORDERS", 2)
    ledger, alice, m1, m2, *_ = net
    orders = [make_order([alice, m1, m2], amount=10_000 + i) for i in range(5)]
    ledger.ok(*(commit_tx(o, [alice, m1, m2], alice) for o in orders))
    for o in orders:
        ledger.chains.see(o, 0, LegOutcome.LOCKED)
    for _ in range(3):  # 5 orders, 2 per height: every one seen within 3 heights
        ledger.chains.asked.clear()
        ledger.attested()
        assert len({ref.order_id for ref in ledger.chains.asked}) <= 2
    assert all(ledger.app.order(o.order_id)["legs"][0]["outcome"] == "locked" for o in orders)


def test_a_quote_given_to_one_taker_cannot_be_taken_by_a_stranger(net):
    ledger, alice, m1, _, _, _, sybil, _ = net
    quote = Quote(bytes(16), m1.id, "btc", 1_000, "eth", 50_000, ledger.time + 100, alice.id)
    quote = dataclasses.replace(quote, quote_id=derive_quote_id(quote))
    result = ledger.block(_take_evidence(quote, m1, sybil))
    assert _codes(result) == ["evidence_invalid"]
    assert "not the taker" in result.results[0].log
    ledger.ok(_take_evidence(quote, m1, alice))


def test_a_named_taker_that_never_co_signs_cannot_record_a_take(net):
    # Issue 17 (quote griefing): a taker recorded a take of a quote named to it, never co-signed
    # the order, and the provider was slashed 2 % each time. A take now carries the order the
    # taker signed (every party but the provider): without it, or with a signature missing or
    # forged, nothing is recorded and nothing can be slashed.
    ledger, alice, m1, m2, *_ = net
    quote = Quote(bytes(16), m1.id, "btc", 1_000, "eth", 50_000, ledger.time + 100, alice.id)
    quote = dataclasses.replace(quote, quote_id=derive_quote_id(quote))
    good = take_order(quote, m1, alice)
    unsigned = CommitOrder(good.order, (), leg_proofs=good.leg_proofs)
    wrong_signer = CommitOrder(good.order, (good.order.sign(m2.key),), leg_proofs=good.leg_proofs)
    forged = CommitOrder(
        good.order,
        (OrderSignature(alice.id, m2.key.sign(good.order.signing_bytes())),),
        leg_proofs=good.leg_proofs,
    )
    other = take_order(quote, m1, alice, t0=T0 + 1)  # signed, but not the order the take names
    for order, code in (
        (unsigned, "evidence_invalid"),
        (wrong_signer, "evidence_invalid"),
        (forged, "bad_signature"),
    ):
        ev = take_evidence(quote, m1, alice, order=order)
        assert _codes(ledger.block(ev)) == [code]
    take = Take(quote.quote_id, alice.id, quote.valid_until - 10, good.order.order_id)
    mismatched = sign_tx(
        alice.key,
        FileEvidence(
            EvidenceKind.QUOTE_NOT_HONOURED,
            quote=quote,
            quote_sig=m1.key.sign(quote.signing_bytes()),
            take=take,
            take_sig=alice.key.sign(take.signing_bytes()),
            order=other,
        ),
    )
    assert _codes(ledger.block(mismatched)) == ["evidence_invalid"]
    # an order that does not use the quote cannot carry a take of it
    plain = make_order([alice, m1], amount=1_000)
    ev = take_evidence(
        quote, m1, alice, order=prove_legs(CommitOrder(plain, (plain.sign(alice.key),)))
    )
    assert _codes(ledger.block(ev)) == ["evidence_invalid"]
    # after the window none of them is evidence: no take was recorded
    late = quote.valid_until + ledger.app.params.honour_grace + 1
    assert _codes(ledger.block(take_evidence(quote, m1, alice), time=late)) == ["evidence_invalid"]
    assert ledger.app.node(m1.id)["penalty_points"] == 0
    assert ledger.app.bond(m1.id) == m1.bond


def test_a_recorded_take_lets_the_provider_commit_the_order_alone_and_escape_the_slash(net):
    ledger, alice, m1, *_ = net
    quote = Quote(bytes(16), m1.id, "btc", 1_000, "eth", 50_000, ledger.time + 100, alice.id)
    quote = dataclasses.replace(quote, quote_id=derive_quote_id(quote))
    commit = take_order(quote, m1, alice)
    ev = take_evidence(quote, m1, alice, order=commit)
    ledger.ok(ev)
    # the taker goes silent; the provider adds its own signature to what the take carried
    full = prove_legs(CommitOrder(commit.order, (*commit.signatures, commit.order.sign(m1.key))))
    ledger.ok(sign_tx(m1.key, full))
    late = quote.valid_until + ledger.app.params.honour_grace + 1
    assert _codes(ledger.block(ev, time=late)) == ["evidence_invalid"]
    assert ledger.app.node(m1.id)["penalty_points"] == 0


def test_a_taker_that_blocks_its_own_takes_order_cannot_have_the_provider_slashed(net):
    # After recording its take, the taker commits another order with the taken order's payment
    # hash (with a sybil): the provider could no longer commit the taken order. A payment hash
    # is no longer unique, but an HTLC is: the blocker needs a leg of the taken order, both of
    # whose keys the taker holds only with a sybil on its route. A recorded take reserves its
    # order's HTLCs, so the blocker is refused and the provider honours the take.
    ledger, alice, m1, _, _, _, sybil, _ = net
    quote = Quote(bytes(16), m1.id, "btc", 1_000, "eth", 50_000, ledger.time + 100, alice.id)
    quote = dataclasses.replace(quote, quote_id=derive_quote_id(quote))
    commit = take_order(quote, m1, alice, route=[alice, sybil, m1])
    ev = take_evidence(quote, m1, alice, order=commit)
    ledger.ok(ev)
    blocker = make_order([alice, sybil], amount=777)
    blocker = with_derived_id(dataclasses.replace(blocker, payment_hash=commit.order.payment_hash))
    assert _codes(ledger.block(commit_tx(blocker, [alice, sybil], alice))) == ["already_exists"]
    full = prove_legs(CommitOrder(commit.order, (*commit.signatures, commit.order.sign(m1.key))))
    assert _codes(ledger.block(sign_tx(m1.key, full))) == [""]
    late = quote.valid_until + ledger.app.params.honour_grace + 1
    result = ledger.block(ev, time=late)
    assert _codes(result) == ["evidence_invalid"]
    assert "honoured" in result.results[0].log
    assert ledger.app.node(m1.id)["penalty_points"] == 0


def test_a_taker_cannot_record_a_take_whose_order_expires_before_the_honour_window(net):
    # The taker signs an order whose first leg must be locked by the very block that records
    # the take: committable then (so the take was recorded), never again after it. The provider
    # could not honour it, and the taker filed the evidence after the grace to have it slashed.
    ledger, alice, m1, *_ = net
    quote = Quote(bytes(16), m1.id, "btc", 1_000, "eth", 50_000, ledger.time + 100, alice.id)
    quote = dataclasses.replace(quote, quote_id=derive_quote_id(quote))
    commit = take_order(quote, m1, alice, t0=ledger.time - 600)  # legs[0].lock_by = now
    assert commit.order.legs[0].lock_by == ledger.time
    ev = take_evidence(quote, m1, alice, order=commit)
    result = ledger.block(ev)
    assert _codes(result) == ["evidence_invalid"]
    assert "lock_by" in result.results[0].log
    late = quote.valid_until + ledger.app.params.honour_grace + 1
    assert _codes(ledger.block(ev, time=late)) == ["evidence_invalid"]
    assert ledger.app.node(m1.id)["penalty_points"] == 0
    assert ledger.app.bond(m1.id) == m1.bond


def test_a_take_whose_order_stays_committable_through_the_honour_window_is_recorded(net):
    ledger, alice, m1, *_ = net
    quote = Quote(bytes(16), m1.id, "btc", 1_000, "eth", 50_000, ledger.time + 100, alice.id)
    quote = dataclasses.replace(quote, quote_id=derive_quote_id(quote))
    t0 = quote.valid_until + ledger.app.params.honour_grace - 600
    commit = take_order(quote, m1, alice, t0=t0)  # legs[0].lock_by = end of the honour window
    assert _codes(ledger.block(take_evidence(quote, m1, alice, order=commit))) == [""]
    # the provider can still commit it at the last second of its window
    full = prove_legs(CommitOrder(commit.order, (*commit.signatures, commit.order.sign(m1.key))))
    end = quote.valid_until + ledger.app.params.honour_grace
    assert _codes(ledger.block(sign_tx(m1.key, full), time=end)) == [""]


def test_a_taker_that_spends_another_partys_quote_of_its_take_cannot_have_the_provider_slashed(
    net,
):
    # The taken order routes through the taker's sybil, whose own quote it carries. After the
    # take, the taker and the sybil commit another order with that quote: the taken order can
    # no longer be committed (the sybil's quote is used), and the provider was slashed for it.
    ledger, alice, m1, _, _, _, sybil, _ = net
    quote = Quote(bytes(16), m1.id, "btc", 1_000, "eth", 50_000, ledger.time + 100, alice.id)
    quote = dataclasses.replace(quote, quote_id=derive_quote_id(quote))
    commit = take_order(quote, m1, alice, route=[alice, sybil, m1])
    ev = take_evidence(quote, m1, alice, order=commit)
    ledger.ok(ev)
    sybil_quote = next(q for q in commit.order.quotes if q.node == sybil.id)
    blocker = make_order([alice, sybil], amount=777)
    blocker = with_derived_id(dataclasses.replace(blocker, quotes=(sybil_quote,)))
    ledger.ok(commit_tx(blocker, [alice, sybil], alice))
    full = prove_legs(CommitOrder(commit.order, (*commit.signatures, commit.order.sign(m1.key))))
    assert _codes(ledger.block(sign_tx(m1.key, full))) == ["already_exists"]
    late = quote.valid_until + ledger.app.params.honour_grace + 1
    result = ledger.block(ev, time=late)
    assert _codes(result) == ["evidence_invalid"]
    assert "quote" in result.results[0].log
    assert ledger.app.node(m1.id)["penalty_points"] == 0
    assert ledger.app.bond(m1.id) == m1.bond


def test_evidence_with_a_bad_signature_is_refused_at_check_tx_and_left_out_of_blocks(net):
    # A take's evidence carries up to 26 signatures (the quote's, the take's, the order's).
    # They were verified only in FinalizeBlock: CheckTx admitted evidence whose last signature
    # was bad, an honest proposer put it in its block, and every validator paid for it there.
    ledger, alice, m1, _, _, _, sybil, _ = net
    quote = Quote(bytes(16), m1.id, "btc", 1_000, "eth", 50_000, ledger.time + 100, alice.id)
    quote = dataclasses.replace(quote, quote_id=derive_quote_id(quote))
    commit = take_order(quote, m1, alice, route=[alice, sybil, m1])
    forged = commit.signatures[-1]
    bad_sig = bytes([forged.signature[0] ^ 1]) + forged.signature[1:]
    bad = CommitOrder(
        commit.order,
        (*commit.signatures[:-1], OrderSignature(forged.signer, bad_sig)),
        leg_proofs=commit.leg_proofs,
    )
    bad_ev = take_evidence(quote, m1, alice, order=bad)
    res = ledger.app.check_tx(bad_ev)
    assert res.error == "bad_signature", res.log
    assert ledger.app.propose([bad_ev], 1 << 20) == []
    # in a hostile proposer's block it is refused as before; the good evidence still records
    assert _codes(ledger.block(bad_ev)) == ["bad_signature"]
    good_ev = take_evidence(quote, m1, alice, order=commit)
    assert ledger.app.check_tx(good_ev).ok
    assert _codes(ledger.block(good_ev)) == [""]
