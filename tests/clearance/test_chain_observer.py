"""The ledger attesting real HTLCs: settlement's AdapterObserver over the Ethereum adapter on the
embedded EVM (py-evm via eth-tester) is the solo validator's view of the chain. A lock that
differs from the leg's terms is not the leg; the real lock and redeems settle the order."""

import dataclasses
import hashlib
import os

import pytest

from kofo.settlement.chain import HtlcTerms
from kofo.settlement.chains.ethereum.adapter import EthereumAdapter
from kofo.settlement.chains.ethereum.contract import deploy
from kofo.settlement.observer import AdapterObserver
from kofo.wire.expiry import UnixTime
from kofo.wire.orders import (
    EvidenceKind,
    FileEvidence,
    Leg,
    OrderKind,
    SettlementOrder,
    sign_tx,
    with_derived_id,
)
from tests.ethereum.conftest import EmbeddedChain

from .helpers import Ledger, Party, commit_tx

pytestmark = pytest.mark.timeout(120)
ETHER = 10**18


def _leg(sender, recipient, s_adapter, r_adapter, amount, expiry, lock_by):
    return Leg(
        chain="eth",
        token=None,
        sender=sender.id,
        recipient=recipient.id,
        sender_address=s_adapter.address(),
        recipient_address=r_adapter.address(),
        amount=amount,
        expiry=UnixTime(expiry),
        expiry_time=expiry,
        lock_by=lock_by,
    )


def _terms(leg, payment_hash, amount=None):
    return HtlcTerms(
        "eth",
        payment_hash,
        amount or leg.amount,
        leg.sender_address,
        leg.recipient_address,
        leg.expiry,
    )


def test_real_locks_and_redeems_are_attested_and_a_mismatched_lock_is_not():
    chain = EmbeddedChain()
    w3 = chain.w3
    htlc = deploy(w3, "HTLC", chain.new_account(ETHER))
    a = EthereumAdapter(w3, chain.new_account(5 * ETHER), htlc)
    b = EthereumAdapter(w3, chain.new_account(5 * ETHER), htlc)
    alice, bob = Party.make(0), Party.make(1)
    now = a.expiry_now().value
    preimage = os.urandom(32)
    payment_hash = hashlib.sha256(preimage).digest()
    order = with_derived_id(
        SettlementOrder(
            order_id=bytes(16),
            kind=OrderKind.DIRECT,
            payment_hash=payment_hash,
            legs=(
                _leg(alice, bob, a, b, ETHER // 10, now + 7_200, now + 600),
                _leg(bob, alice, b, a, ETHER // 5, now + 3_600, now + 660),
            ),
        )
    )
    ledger = Ledger(chains=AdapterObserver({"eth": a}))
    ledger.time = now
    ledger.ok(alice.register_tx(), bob.register_tx())
    ledger.ok(commit_tx(order, [alice, bob], alice))

    ref0 = a.lock(_terms(order.legs[0], payment_hash))
    b.lock(_terms(order.legs[1], payment_hash, amount=ETHER // 5 - 1))  # short by one wei
    ledger.attested()
    legs = ledger.app.order(order.order_id)["legs"]
    assert (legs[0]["outcome"], legs[0]["txid"]) == ("locked", ref0.lock_txid)
    assert legs[1]["outcome"] is None
    # the short lock does not clear bob of not locking
    ev = sign_tx(alice.key, FileEvidence(EvidenceKind.LEG_NOT_LOCKED, order.order_id, 1))
    assert [
        r.error for r in ledger.block(ev, time=now + 661 + ledger.app.params.attest_grace).results
    ] == [""]

    ref1 = b.lock(_terms(order.legs[1], payment_hash))
    ledger.attested()
    assert ledger.app.order(order.order_id)["legs"][1]["outcome"] == "locked"
    for adapter, ref in ((a, ref1), (b, ref0)):
        tx = adapter.prepare_redeem(ref, preimage)
        adapter.broadcast(tx)
        adapter.wait(tx.txid)
    ledger.attested()
    rec = ledger.app.order(order.order_id)
    assert rec["status"] == "settled"
    assert all(x["outcome"] == "redeemed" for x in rec["legs"])


def test_htlcs_of_a_swap_never_committed_here_do_not_settle_a_sybil_copy():
    # Issue 17: a swap between two parties that never used this ledger locks its HTLCs; two
    # sybils then commit an order copying the HTLCs' chain terms (payment hash, amounts,
    # addresses, expiries) under their own node ids. The observer matched the legs by chain
    # terms alone, so the strangers' locks and redeems settled the copy (volume, settled
    # count, importance; fee shares for a routed copy). A lock now counts for a leg only if
    # its block is not older than the order's commit (nothing locks before its order is
    # committed), less the chain's timestamp tolerance.
    chain = EmbeddedChain()
    w3 = chain.w3
    htlc = deploy(w3, "HTLC", chain.new_account(ETHER))
    a = EthereumAdapter(w3, chain.new_account(5 * ETHER), htlc)
    b = EthereumAdapter(w3, chain.new_account(5 * ETHER), htlc)
    s1, s2 = Party.make(2), Party.make(3)
    now = a.expiry_now().value
    preimage = os.urandom(32)
    payment_hash = hashlib.sha256(preimage).digest()
    expiries = (now + 7_200, now + 3_600)
    leg0 = _leg(s1, s2, a, b, ETHER // 10, expiries[0], now + 6_000)
    leg1 = _leg(s2, s1, b, a, ETHER // 5, expiries[1], now + 3_000)
    # the strangers' swap, on chain, with no ledger order
    ref0 = a.lock(_terms(leg0, payment_hash))
    ref1 = b.lock(_terms(leg1, payment_hash))
    chain.advance_time(600)  # the copy is committed later (10 minutes: past Ethereum's 120 s)
    later = a.expiry_now().value
    copy = with_derived_id(
        SettlementOrder(
            order_id=bytes(16),
            kind=OrderKind.DIRECT,
            payment_hash=payment_hash,
            legs=(
                dataclasses.replace(leg0, lock_by=later + 600),
                dataclasses.replace(leg1, lock_by=later + 660),
            ),
        )
    )
    ledger = Ledger(chains=AdapterObserver({"eth": a}))
    ledger.time = later
    ledger.ok(s1.register_tx(), s2.register_tx())
    ledger.ok(commit_tx(copy, [s1, s2], s1))
    ledger.attested()
    assert [x["outcome"] for x in ledger.app.order(copy.order_id)["legs"]] == [None, None]
    for adapter, ref in ((a, ref1), (b, ref0)):
        tx = adapter.prepare_redeem(ref, preimage)
        adapter.broadcast(tx)
        adapter.wait(tx.txid)
    ledger.attested()
    rec = ledger.app.order(copy.order_id)
    assert rec["status"] == "committed"
    assert [x["outcome"] for x in rec["legs"]] == [None, None]
    assert ledger.app.node(s1.id)["settled"] == 0
