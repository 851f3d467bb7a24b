"""HTLC v2's batches and packed words attacked (review-h2), on the embedded EVM and geth --dev.

Each test is an attack that the contract stops; what stops it is named in the test."""

from __future__ import annotations

import hashlib
import os

import pytest

from tests.ethereum.test_contract import (
    ETHER,
    LONG,
    ZERO_ADDRESS,
    Swap,
    _arm,
    _batch_terms,
    _lock_rows,
    _spend_rows,
    env,  # noqa: F401 (the fixture)
    logs_of,
    word,
)


def _lock_batch(env, swaps):  # noqa: F811
    receipt = env.chain.send(
        env.htlc.functions.lock_many(_lock_rows(swaps)),
        env.alice,
        value=sum(s.amount for s in swaps if s.token == ZERO_ADDRESS),
    )
    assert receipt["status"] == 1


def test_a_duplicated_row_in_a_batch_pays_once(env):  # noqa: F811
    # Stopped by: the slot is settled before the payout; the copy finds FREE and is skipped.
    swaps = _batch_terms(env, 2)
    _lock_batch(env, swaps)
    extra = env.lock_eth(amount=5000, recipient=swaps[0].recipient)  # funds a copy would take
    before = env.eth(swaps[0].recipient)
    rows = _spend_rows([swaps[0], swaps[0], swaps[0]])
    receipt = env.chain.send(env.htlc.functions.redeem_many(rows), env.carol)
    assert len(logs_of(env, receipt)) == 1
    assert env.eth(swaps[0].recipient) == before + swaps[0].amount
    assert env.live(extra) and env.eth(env.htlc.address) == swaps[1].amount + extra.amount


def test_a_refund_batch_cannot_carry_a_swap_not_yet_due(env):  # noqa: F811
    # Stopped by: each row is refunded under the single refund's rule (`not expired`).
    due = _batch_terms(env, 1, lifetime=10)
    later = _batch_terms(env, 1)
    _lock_batch(env, due + later)
    env.chain.advance_time(10)
    call = env.htlc.functions.refund_many(_spend_rows(due + later, refund=True))
    with env.chain.reverts("not expired"):
        env.chain.send(call, env.carol)
    assert env.live(later[0]) and env.live(due[0])


def test_a_fee_on_transfer_token_in_a_lock_batch_reverts_the_whole_batch(env):  # noqa: F811
    # Stopped by: every token row pulls under `amount mismatch`; nothing of the batch stays.
    fee_token = env.deploy("FeeToken")
    env.fund_token(fee_token, env.alice, 1000)
    swaps = _batch_terms(env, 1) + _batch_terms(env, 1, fee_token.address)
    with env.chain.reverts("amount mismatch"):
        _lock_batch(env, swaps)
    assert not any(env.live(s) for s in swaps)
    assert env.eth(env.htlc.address) == 0


def test_a_token_calling_back_during_a_batch_settles_nothing(env):  # noqa: F811
    # Stopped by: one reentrancy lock over every entry point, batches included.
    attacker = env.deploy("Reentrant")
    victim = env.lock_eth(recipient=env.carol.address)
    env.chain.send(attacker.functions.mint(env.alice.address, 100), env.alice)
    env.chain.send(attacker.functions.approve(env.htlc.address, 100), env.alice)
    swaps = _batch_terms(env, 1, attacker.address)
    swaps = [Swap(**{**swaps[0].__dict__, "amount": 100})]
    _arm(env, attacker, env.htlc.functions.redeem(victim.preimage, *victim.terms))
    _lock_batch(env, swaps)
    _arm(env, attacker, env.htlc.functions.redeem_many(_spend_rows([victim])))
    env.chain.send(env.htlc.functions.redeem_many(_spend_rows(swaps)), env.carol)
    assert attacker.functions.reentry_attempts().call() == 2
    assert not attacker.functions.reentry_succeeded().call()
    assert env.live(victim) and env.eth(env.htlc.address) == victim.amount


def test_a_recipient_refusing_ether_holds_back_only_a_batch_not_the_swaps(env):  # noqa: F811
    # Not stopped, by design (docs/ethereum-htlc.md, Batches): one live swap whose payout
    # fails reverts its batch. The submitter loses that transaction's gas and settles the
    # others without it; no swap changes state meanwhile.
    attacker = env.deploy("Reentrant")
    env.chain.send(attacker.functions.set_reject_eth(True), env.carol)
    honest = _batch_terms(env, 2)
    hostile = env.lock_eth(recipient=attacker.address)
    _lock_batch(env, honest)
    with env.chain.reverts(None):
        env.chain.send(
            env.htlc.functions.redeem_many(_spend_rows([honest[0], hostile, honest[1]])),
            env.carol,
        )
    assert all(env.live(s) for s in [*honest, hostile])
    receipt = env.chain.send(env.htlc.functions.redeem_many(_spend_rows(honest)), env.carol)
    assert len(logs_of(env, receipt)) == 2 and env.live(hostile)


def test_a_slot_number_over_32_bits_cannot_alias_another_lock(env):  # noqa: F811
    # A word whose slot has bits above 32 moves them into the expiry, which the swap id
    # commits to: the lock lands in the low slot with another expiry, and the terms as
    # agreed (with their expiry) find no swap there.
    preimage = os.urandom(32)
    payment_hash = hashlib.sha256(preimage).digest()
    expiry = env.chain.now() + LONG
    slot = env.next_slot(env.alice.address)
    packed = word(env.bob.address, expiry, slot) + (1 << 32)  # slot 2^32 + slot
    env.chain.send(env.htlc.functions.lock(payment_hash, packed), env.alice, value=ETHER // 100)
    agreed = Swap(
        preimage,
        payment_hash,
        ZERO_ADDRESS,
        env.alice.address,
        env.bob.address,
        ETHER // 100,
        expiry,
        slot,
    )
    moved = Swap(**{**agreed.__dict__, "expiry": expiry + 1})
    assert not env.live(agreed) and env.live(moved)
    with env.chain.reverts("no swap"):
        env.redeem(agreed)


@pytest.mark.parametrize("refund", [False, True])
def test_a_batch_row_naming_another_senders_slot_pays_nobody(env, refund):  # noqa: F811
    # Stopped by: the key is the sender in the word, and the id commits to that sender.
    victim = env.lock_eth(amount=5000, lifetime=10 if refund else LONG)
    if refund:
        env.chain.advance_time(10)
    forged = Swap(**{**victim.__dict__, "sender": env.carol.address})
    call = (env.htlc.functions.refund_many if refund else env.htlc.functions.redeem_many)(
        _spend_rows([forged], refund=refund)
    )
    assert logs_of(env, env.chain.send(call, env.carol)) == []
    assert env.live(victim) and env.eth(env.htlc.address) == 5000
