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
from kofo.wire.legkeys import KeyKind, LegRole, address_of, sign_leg_key
from kofo.wire.orders import (
    CommitOrder,
    EvidenceKind,
    FileEvidence,
    Leg,
    OrderKind,
    SettlementOrder,
    sign_tx,
    with_derived_id,
)
from tests.ethereum.conftest import EmbeddedChain

from .helpers import LEG_KEYS, Ledger, Party, commit_tx

pytestmark = pytest.mark.timeout(120)
ETHER = 10**18


def _leg(sender, recipient, s_adapter, r_adapter, amount, expiry, lock_by, *, keys=True):
    if keys:  # the parties hold their accounts' keys: commit_tx proves their control
        for adapter in (s_adapter, r_adapter):
            LEG_KEYS[adapter.address()] = bytes(adapter.account.key)
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
    # count, importance; fee shares for a routed copy). Since the proofs of control of the
    # leg keys, a copier cannot commit such an order at all (next test); the time rule stays
    # as defence in depth: a lock counts for a leg only if its block is not older than the
    # order's commit (nothing locks before its order is committed), less the chain's
    # timestamp tolerance. Here the order's keys are proven (as by the strangers themselves,
    # committing long after locking), and still the old locks do not settle it.
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


def test_a_copier_racing_a_strangers_swap_cannot_commit_its_terms():
    # Issue 17, the hole the time rule left open: a sybil sees a stranger's lock (in the
    # mempool, or just mined: within the chain's timestamp tolerance) of a swap that never
    # uses this ledger, and commits an order copying its terms at once. Validators match legs
    # by chain terms, so the stranger's locks and redeems settled the copy. Now every leg's
    # sender and recipient keys must sign the order id: the copier holds neither.
    chain = EmbeddedChain()
    w3 = chain.w3
    htlc = deploy(w3, "HTLC", chain.new_account(ETHER))
    a = EthereumAdapter(w3, chain.new_account(5 * ETHER), htlc)
    b = EthereumAdapter(w3, chain.new_account(5 * ETHER), htlc)
    s1, s2 = Party.make(2), Party.make(3)
    now = a.expiry_now().value
    preimage = os.urandom(32)
    payment_hash = hashlib.sha256(preimage).digest()
    leg0 = _leg(s1, s2, a, b, ETHER // 10, now + 7_200, now + 600, keys=False)
    leg1 = _leg(s2, s1, b, a, ETHER // 5, now + 3_600, now + 660, keys=False)
    copy = with_derived_id(SettlementOrder(bytes(16), OrderKind.DIRECT, payment_hash, (leg0, leg1)))
    ledger = Ledger(chains=AdapterObserver({"eth": a}))
    ledger.time = now
    ledger.ok(s1.register_tx(), s2.register_tx())
    ref0 = a.lock(_terms(leg0, payment_hash))  # the stranger's first lock
    sigs = (copy.sign(s1.key), copy.sign(s2.key))
    # the copier's best: proofs by keys it holds, or none
    own = hashlib.sha256(b"copier").digest()
    own_addr = address_of(own, KeyKind.ETHEREUM)
    forged = {
        (i, role): sign_leg_key(own, own_addr, copy.order_id, i, role)
        for i in range(2)
        for role in LegRole
    }
    attempts = [
        CommitOrder(copy, sigs).with_leg_proofs(forged),
        CommitOrder(copy, sigs).with_leg_proofs({}),
        # a proof by the right key for another order (or leg) does not carry over
        CommitOrder(copy, sigs).with_leg_proofs(
            {
                (i, role): sign_leg_key(bytes(a.account.key), a.address(), bytes(16), i, role)
                for i in range(2)
                for role in LegRole
            }
        ),
    ]
    for ts, commit in enumerate(attempts):
        res = ledger.block(sign_tx(s1.key, commit, ts=now + ts)).results[0]
        assert res.error == "leg_key_unproven", res.log
        assert "legs[0] sender" in res.log
        check = ledger.app.check_tx(sign_tx(s1.key, commit, ts=now + 10 + ts))
        assert check.error == "leg_key_unproven"
    assert ledger.app.order(copy.order_id) is None
    # the stranger's swap completes; nothing on the ledger moved
    ref1 = b.lock(_terms(leg1, payment_hash))
    for adapter, ref in ((a, ref1), (b, ref0)):
        tx = adapter.prepare_redeem(ref, preimage)
        adapter.broadcast(tx)
        adapter.wait(tx.txid)
    ledger.attested()
    assert ledger.app.node(s1.id)["settled"] == 0
    assert ledger.app.node(s2.id)["settled"] == 0


def test_a_node_that_cannot_be_read_is_not_a_look_that_saw_no_lock():
    """The solo validator's Ethereum node stops answering (its RPC now a closed loopback port)
    for the heights after the legs' ``lock_by + attest_grace``: alice had locked in time, bob
    never does. Before, the failed reads counted as looks that saw no lock: alice's leg got
    ``missed_at`` and her lock, attested once the node answered again, was "late" (evidence
    slashed her). Now the observer raises ChainUnreadable, the extension names eth as
    "blind", nothing is marked while it lasts; then alice's lock counts in time and bob's leg
    is marked missed. (Fails on the old code: alice's leg is marked missed.) A chain the
    validator does not watch is unreadable too, never "no lock"."""
    from web3 import Web3

    from kofo.wire.attest import ChainUnreadable, LegRef

    from .helpers import ledger_params

    chain = EmbeddedChain()
    w3 = chain.w3
    htlc = deploy(w3, "HTLC", chain.new_account(ETHER))
    a = EthereumAdapter(w3, chain.new_account(5 * ETHER), htlc)
    b = EthereumAdapter(w3, chain.new_account(5 * ETHER), htlc)
    alice, bob = Party.make(0), Party.make(1)
    now = a.expiry_now().value
    payment_hash = hashlib.sha256(os.urandom(32)).digest()
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
    observer = AdapterObserver({"eth": a})
    ledger = Ledger(params=ledger_params(attest_grace=60), chains=observer)
    ledger.time = now
    ledger.ok(alice.register_tx(), bob.register_tx())
    ledger.ok(commit_tx(order, [alice, bob], alice))
    a.lock(_terms(order.legs[0], payment_hash))  # in time
    up = w3.provider
    w3.provider = Web3.HTTPProvider("http://127.0.0.1:9", request_kwargs={"timeout": 2})
    ref = LegRef(order.order_id, 0, order.legs[0], order.payment_hash)
    with pytest.raises(ChainUnreadable):
        observer.observe(ref)
    for t in range(now + 800, now + 1_000, 60):  # every height after both deadlines
        ledger.attested(time=t)
    legs = ledger.app.order(order.order_id)["legs"]
    assert all("missed_at" not in leg for leg in legs), legs
    w3.provider = up  # the node answers again
    ledger.attested(time=now + 1_060)
    legs = ledger.app.order(order.order_id)["legs"]
    assert legs[0]["outcome"] == "locked" and "missed_at" not in legs[0]
    assert legs[1]["outcome"] is None and legs[1]["missed_at"] == now + 1_060
    ev = sign_tx(bob.key, FileEvidence(EvidenceKind.LEG_NOT_LOCKED, order.order_id, 0))
    assert "attested locked" in ledger.block(ev, time=now + 1_100).results[0].log
    with pytest.raises(ChainUnreadable):  # a chain this validator does not watch
        AdapterObserver({}).observe(ref)
