"""An honest node against a counterparty that cheats: it loses nothing beyond fees.

The dishonest side is scripted with its chain adapter directly (it has the same keys and
chain access a real cheater has); the honest side is the real engine, ticked as its monitor would.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import replace
from typing import Any

import pytest
from eth_account import Account
from eth_utils import keccak, to_checksum_address
from hexbytes import HexBytes
from web3.middleware import Web3Middleware

from kofo.errors import InvalidInput
from kofo.settlement.chain import HtlcTerms, UnixTime
from kofo.settlement.chains.ethereum import event_index
from kofo.settlement.swap import State
from kofo.settlement.terms import Leg, propose_terms
from kofo.wire.swap import Error, Locked, Propose
from tests.swap.helpers import ETHER, Evm, drive, link, make_node, start_swap

TOKENS = 100 * 10**6


@pytest.fixture
def world(tmp_path):
    evm = Evm()
    alice = make_node("alice", tmp_path, {"eth": evm})
    bob = make_node("bob", tmp_path, {"eth": evm})
    return evm, alice, bob


def _legs(evm, alice, bob):
    return (
        Leg("eth", ETHER, alice.address("eth"), bob.address("eth"), UnixTime(0)),
        Leg("eth", TOKENS, bob.address("eth"), alice.address("eth"), UnixTime(0), evm.token),
    )


def _htlcs(node, sid):
    t = node.engine.terms_of(sid)
    return t.initiator_leg.htlc(t.payment_hash), t.participant_leg.htlc(t.payment_hash)


def _lock(node, htlc):
    ad = node.engine.adapters[htlc.chain]
    txs = ad.prepare_lock(htlc)
    for tx in txs:
        ad.broadcast(tx)
    return ad.htlc_ref(htlc, txs[-1])


def _fees(evm, node):
    """ETH this node's account paid in gas, from every receipt it signed."""
    me = node.address("eth")
    total = 0
    for n in range(evm.w3.eth.block_number + 1):
        for tx in evm.w3.eth.get_block(n, full_transactions=True)["transactions"]:
            if tx["from"] == me:
                r = evm.w3.eth.get_transaction_receipt(tx["hash"])
                total += r["gasUsed"] * r["effectiveGasPrice"]
    return total


def _time_moves(evm, step=30):
    return lambda _r: evm.advance(step)


def test_initiator_that_never_locks_costs_the_participant_nothing(world):
    evm, alice, bob = world
    sid = start_swap(alice, bob, *_legs(evm, alice, bob))
    before = bob.engine.adapters["eth"].balance(evm.token), bob.engine.adapters["eth"].balance()
    states = drive([bob], sid, rounds=30, between=_time_moves(evm))
    assert states["bob"] is State.ABORTED
    after = bob.engine.adapters["eth"].balance(evm.token), bob.engine.adapters["eth"].balance()
    assert after == before
    (ev,) = bob.engine.journal.evidence(sid)
    assert ev.kind == "no_lock"


@pytest.mark.parametrize(
    ("field", "code"),
    [
        ("amount", "audit_amount"),
        ("payment_hash", "audit_payment_hash"),
        ("recipient", "audit_recipient"),
        ("expiry", "audit_expiry"),
    ],
)
def test_initiator_lock_with_a_wrong_field_is_never_matched_and_is_reported(world, field, code):
    evm, alice, bob = world
    sid = start_swap(alice, bob, *_legs(evm, alice, bob))
    good, _ = _htlcs(alice, sid)
    wrong = {
        "amount": good.amount - 1,
        "payment_hash": hashlib.sha256(os.urandom(32)).digest(),
        "recipient": to_checksum_address("0x" + "77" * 20),
        "expiry": UnixTime(good.expiry.value - 4),  # shorter than agreed: eats bob's margin
    }[field]
    bad = replace(good, **{field: wrong})
    ref = _lock(alice, bad)
    bob.engine.handle(Locked(sid, ref.locator, ref.lock_txid, bad), alice.node_id)
    token_before = bob.engine.adapters["eth"].balance(evm.token)
    states = drive([bob], sid, rounds=30, between=_time_moves(evm))
    assert states["bob"] is State.ABORTED  # bob never locked
    assert bob.engine.adapters["eth"].balance(evm.token) == token_before
    codes = {(e.kind, e.code) for e in bob.engine.journal.evidence(sid)}
    assert ("bad_lock", code) in codes
    (ev,) = [e for e in bob.engine.journal.evidence(sid) if e.code == code]
    assert ev.detail["lock_txid"] == ref.lock_txid


def test_participant_lock_with_a_wrong_amount_is_not_redeemed_and_the_initiator_refunds(world):
    evm, alice, bob = world
    sid = start_swap(alice, bob, *_legs(evm, alice, bob))
    _, good = _htlcs(bob, sid)
    eth_before = alice.engine.adapters["eth"].balance()
    alice.engine.tick()  # alice locks
    bad = replace(good, amount=good.amount // 2)
    ref = _lock(bob, bad)
    alice.engine.handle(Locked(sid, ref.locator, ref.lock_txid, bad), bob.node_id)
    states = drive([alice], sid, rounds=60, between=_time_moves(evm))
    assert states["alice"] is State.REFUNDED
    assert alice.engine.adapters["eth"].balance() == eth_before - _fees(evm, alice)
    assert ("bad_lock", "audit_amount") in {
        (e.kind, e.code) for e in alice.engine.journal.evidence(sid)
    }
    assert alice.engine.journal.preimage(sid) not in _revealed_preimages(evm, alice)


def _revealed_preimages(evm, node):
    from kofo.settlement.chains.ethereum.event_index import decode_log

    ad = node.engine.adapters["eth"]
    logs = ad.w3.eth.get_logs({"address": ad.htlc.address, "fromBlock": 0})
    decoded = [decode_log([bytes(t) for t in e["topics"]], bytes(e["data"])) for e in logs]
    return [preimage for _, name, _, preimage in decoded if name == "Redeemed"]


def test_participant_refuses_terms_with_too_small_a_margin(world):
    evm, alice, bob = world
    a_leg, b_leg = _legs(evm, alice, bob)
    terms = alice.engine.propose(a_leg, b_leg, participant_node=bob.node_id)
    squeezed = replace(
        terms,
        initiator_leg=replace(
            terms.initiator_leg, expiry=UnixTime(terms.participant_leg.expiry.value + 1)
        ),
    )
    reply = bob.engine.handle(Propose(squeezed), alice.node_id)
    assert isinstance(reply, Error) and reply.code == "terms_margin_too_small"
    assert bob.engine.journal.swaps() == []


def test_participant_refuses_terms_that_hold_its_funds_hostage(world):
    evm, alice, bob = world
    a_leg, b_leg = _legs(evm, alice, bob)
    terms = propose_terms(
        swap_id=os.urandom(16),
        payment_hash=os.urandom(32),
        initiator_leg=a_leg,
        participant_leg=b_leg,
        policies=alice.engine.policies,
        now=alice.engine.now(),
        accept_window=30 * 24 * 3600,  # a month to lock: bob's tokens could sit for a month
        initiator_node=alice.node_id,
        participant_node=bob.node_id,
    )
    reply = bob.engine.handle(Propose(terms), alice.node_id)
    assert isinstance(reply, Error) and reply.code == "terms_expiry_too_long"


def test_participant_refuses_terms_from_a_sender_other_than_the_initiator(world):
    evm, alice, bob = world
    terms = alice.engine.propose(*_legs(evm, alice, bob), participant_node=bob.node_id)
    reply = bob.engine.handle(Propose(terms), bob.node_id)
    assert isinstance(reply, Error) and reply.code == "wrong_sender"


def test_a_secret_revealed_just_before_the_participant_expiry_still_pays_the_participant(world):
    evm, alice, bob = world
    sid = start_swap(alice, bob, *_legs(evm, alice, bob))
    a_htlc, b_htlc = _htlcs(alice, sid)
    _lock(alice, a_htlc)
    for _ in range(5):
        bob.engine.tick()
    assert bob.engine.journal.get(sid).state is State.LOCKED
    bob_eth = bob.engine.adapters["eth"].balance()
    # Alice waits until one second before T_B, then reveals by redeeming bob's leg.
    evm.advance_to(b_htlc.expiry.value - 2)
    ad = alice.engine.adapters["eth"]
    ref = ad.find_htlc(b_htlc)
    ad.broadcast(ad.prepare_redeem(ref, alice.engine.journal.preimage(sid)))
    assert evm.now() < b_htlc.expiry.value
    states = drive([bob], sid, rounds=10)
    assert states["bob"] is State.REDEEMED
    assert evm.now() < a_htlc.expiry.value  # bob's redeem landed before alice could refund
    fees_after_lock = bob.engine.adapters["eth"].balance() - bob_eth - ETHER
    assert -(10**16) < fees_after_lock <= 0


def test_a_33_byte_secret_cannot_redeem_and_the_participant_refunds(world):
    evm, alice, bob = world
    long_secret = os.urandom(33)
    a_leg, b_leg = _legs(evm, alice, bob)
    terms = propose_terms(
        swap_id=os.urandom(16),
        payment_hash=hashlib.sha256(long_secret).digest(),
        initiator_leg=a_leg,
        participant_leg=b_leg,
        policies=alice.engine.policies,
        now=alice.engine.now(),
        initiator_node=alice.node_id,
        participant_node=bob.node_id,
    )
    assert not isinstance(bob.engine.handle(Propose(terms), alice.node_id), Error)
    sid = terms.swap_id
    a_htlc = terms.initiator_leg.htlc(terms.payment_hash)
    b_htlc = terms.participant_leg.htlc(terms.payment_hash)
    _lock(alice, a_htlc)
    for _ in range(5):
        bob.engine.tick()
    assert bob.engine.journal.get(sid).state is State.LOCKED
    token_before = bob.engine.adapters["eth"].balance(evm.token)
    ad = alice.engine.adapters["eth"]
    ref = ad.find_htlc(b_htlc)
    with pytest.raises(InvalidInput):
        ad.prepare_redeem(ref, long_secret)
    # Forced through by hand: the contract reads a bytes32, so the 33rd byte is lost and the
    # hash cannot match; the call reverts and the HTLC stays locked.
    call = ad.htlc.functions.redeem(long_secret[:32], *ad._args(ref))
    with pytest.raises(Exception, match="no swap"):
        call.estimate_gas({"from": alice.address("eth")})
    states = drive([bob], sid, rounds=40, between=_time_moves(evm))
    assert states["bob"] is State.REFUNDED
    assert bob.engine.adapters["eth"].balance(evm.token) == token_before + TOKENS


def test_initiator_that_disappears_after_both_locked_leaves_the_participant_refunded(world):
    evm, alice, bob = world
    link(alice, bob)
    sid = start_swap(alice, bob, *_legs(evm, alice, bob))
    alice.engine.tick()
    for _ in range(3):
        bob.engine.tick()
    assert bob.engine.journal.get(sid).state is State.LOCKED
    token_before = bob.engine.adapters["eth"].balance(evm.token)
    states = drive([bob], sid, rounds=40, between=_time_moves(evm))  # alice is gone
    assert states["bob"] is State.REFUNDED
    assert bob.engine.adapters["eth"].balance(evm.token) == token_before + TOKENS


def test_participant_that_disappears_after_locking_still_pays_the_initiator(world):
    evm, alice, bob = world
    link(alice, bob)
    sid = start_swap(alice, bob, *_legs(evm, alice, bob))
    alice.engine.tick()
    for _ in range(3):
        bob.engine.tick()
    tok = alice.engine.adapters["eth"].balance(evm.token)
    states = drive([alice], sid, rounds=10)  # bob is gone
    assert states["alice"] is State.REDEEMED
    assert alice.engine.adapters["eth"].balance(evm.token) == tok + TOKENS


def test_messages_from_someone_other_than_the_counterparty_change_nothing(world):
    evm, alice, bob = world
    sid = start_swap(alice, bob, *_legs(evm, alice, bob))
    from kofo.wire.swap import Cancel

    reply = alice.engine.handle(Cancel(sid, "not really bob"), b"\x09" * 32)
    assert isinstance(reply, Error) and reply.code == "wrong_sender"
    assert alice.engine.journal.get(sid).state is State.ACCEPTED
    _ = HexBytes, HtlcTerms


def _swallow_sends_of(w3, address: str) -> list[bytes]:
    """Make ``w3``'s node answer every raw transaction signed by ``address`` as accepted and
    drop it (a flaky or lying node, a pool that evicts it, a censoring miner); returns the list
    of what it dropped. Remove with ``w3.middleware_onion.remove("swallow")``."""
    dropped: list[bytes] = []

    class _Swallow(Web3Middleware):
        def wrap_make_request(self, make_request: Any) -> Any:
            def middleware(method: Any, params: Any) -> Any:
                if method == "eth_sendRawTransaction":
                    raw = HexBytes(params[0])
                    if Account.recover_transaction(raw) == address:
                        dropped.append(bytes(raw))
                        return {"jsonrpc": "2.0", "id": 0, "result": "0x" + keccak(raw).hex()}
                return make_request(method, params)

            return middleware

    w3.middleware_onion.add(_Swallow, "swallow")
    return dropped


def test_a_refund_dropped_then_made_obsolete_by_a_late_redeem_never_stalls_the_wallet(world):
    """Review attack (a flaky or lying node, or censorship until expiry): bob's refund at T_B
    was dropped unmined; alice then redeemed bob's leg, revealing the secret. Bob's engine gave
    the refund up (it would revert) and signed the redeem of alice's leg with the next nonce,
    which could never be mined behind the refund's: alice refunded her leg at T_A and bob lost
    both. The adapter now keeps each reserved nonce's signed transaction and sends it again
    before a later one (the obsolete refund is mined and reverts), so the redeem goes through."""
    evm, alice, bob = world
    sid = start_swap(alice, bob, *_legs(evm, alice, bob))
    a_htlc, b_htlc = _htlcs(alice, sid)
    _lock(alice, a_htlc)
    for _ in range(5):
        bob.engine.tick()
    assert bob.engine.journal.get(sid).state is State.LOCKED
    evm.advance_to(b_htlc.expiry.value + 1)
    dropped = _swallow_sends_of(evm.w3, bob.address("eth"))
    for _ in range(4):
        bob.engine.tick()
    assert bob.engine.journal.get(sid).state is State.REFUND_SENT and dropped
    ad = alice.engine.adapters["eth"]
    redeem = ad.prepare_redeem(ad.find_htlc(b_htlc), alice.engine.journal.preimage(sid))
    ad.broadcast(redeem)
    ad.wait(redeem.txid)
    evm.w3.middleware_onion.remove("swallow")
    bob_eth = bob.engine.adapters["eth"].balance()
    states = drive([bob], sid, rounds=30, between=_time_moves(evm, 5))
    assert states["bob"] is State.REDEEMED  # before: redeem_signed for good (nonce gap)
    assert bob.engine.adapters["eth"].balance() > bob_eth + ETHER - 10**16


def _receipts_withheld(w3, txids: set[str]) -> None:
    """Make ``w3``'s node answer ``eth_getTransactionReceipt`` of ``txids`` with null, as a
    node does for a transaction beyond its transaction index (geth's history.transactions, or
    while it is still indexing) or a backend that has not seen it."""
    wanted = {t.lower() for t in txids}

    class _Withheld(Web3Middleware):
        def wrap_make_request(self, make_request: Any) -> Any:
            def middleware(method: Any, params: Any) -> Any:
                response = make_request(method, params)
                if method == "eth_getTransactionReceipt" and str(params[0]).lower() in wanted:
                    return {**response, "result": None}
                return response

            return middleware

    w3.middleware_onion.add(_Withheld, "withheld")


def test_a_redeemed_leg_whose_lock_receipt_is_not_answered_is_not_read_as_absent(world, tmp_path):
    """Review attack (a node without the lock's receipt, after a restart): bob's lock was older
    than his new event index, the node answered its receipt with null, and the contract said
    the swap was settled (alice had redeemed it): status answered ABSENT, bob's engine went to
    refund_wait and ended aborted at T_B without reading the secret, while alice kept bob's
    leg and could refund her own at T_A. A settled swap whose lock receipt is missing is now
    read from its payout log."""
    evm, alice, bob = world
    sid = start_swap(alice, bob, *_legs(evm, alice, bob))
    a_htlc, b_htlc = _htlcs(alice, sid)
    _lock(alice, a_htlc)
    for _ in range(5):
        bob.engine.tick()
    assert bob.engine.journal.get(sid).state is State.LOCKED
    bob_lock = bob.engine.adapters["eth"].find_htlc(b_htlc)
    assert bob_lock is not None
    evm.tester.mine_blocks(event_index.START_BACK_BLOCKS + 10)
    bob.engine.journal.close()
    bob = make_node("bob", tmp_path, {"eth": evm}, accounts=bob.accounts, key=bob.key)
    _receipts_withheld(evm.w3, {bob_lock.lock_txid})
    ad = alice.engine.adapters["eth"]
    ad.broadcast(ad.prepare_redeem(ad.find_htlc(b_htlc), alice.engine.journal.preimage(sid)))
    bob_eth = bob.engine.adapters["eth"].balance()
    states = drive([bob], sid, rounds=40, between=_time_moves(evm))
    assert states["bob"] is State.REDEEMED  # before: aborted, the secret never read
    assert bob.engine.adapters["eth"].balance() > bob_eth + ETHER - 10**16
