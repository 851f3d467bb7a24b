"""HTLC v2 attacked: the same terms locked twice, batches, packed words (embedded EVM, geth)."""

from __future__ import annotations

import pytest

from kofo.errors import InvalidInput
from kofo.settlement.chain import HtlcRef, HtlcState
from kofo.settlement.chains.ethereum.adapter import _word
from tests.ethereum.test_adapter import _mint, _terms, env  # noqa: F401 (the fixture)


def test_the_same_terms_are_never_locked_twice_while_live(env):  # noqa: F811
    # v1's contract refused a second lock of the same terms ("exists"); v2 keeps no record per
    # id, so two slots can hold one id, and one Redeemed log (which names no slot) settles both
    # in every monitor's eyes: the sender would never refund the second deposit, and anyone
    # holding the now public preimage pays it to the recipient a second time.
    terms, _ = _terms(env)
    ref = env.alice.lock(terms)
    with pytest.raises(InvalidInput, match="already locked"):
        env.alice.prepare_lock(terms)
    assert env.alice.status(ref).state is HtlcState.LOCKED


def test_a_lock_signed_before_a_crash_is_not_signed_again(env):  # noqa: F811
    # The engine journals a lock after prepare_lock returns: a crash in between leaves the
    # signed lock in the nonce store only, and the next broadcast fills the nonce gap with it.
    # A second prepare_lock of the same terms signed a second lock, and both went on chain.
    for token in (None, env.token):
        if token is not None:
            _mint(env, env.alice.address(), 10**6)
        terms, _ = _terms(env, amount=1000, token=token)
        first = env.alice.prepare_lock(terms)[-1]  # signed, never journaled (the crash)
        again = env.alice.prepare_lock(terms)
        assert [tx.txid for tx in again] == [first.txid]
        env.alice.broadcast(again[-1])
        env.alice.wait(again[-1].txid)
        ref = env.alice.htlc_ref(terms, again[-1])
        assert env.alice.status(ref).state is HtlcState.LOCKED
        with pytest.raises(InvalidInput, match="already locked"):
            env.alice.prepare_lock(terms)


def test_a_payout_of_one_lock_does_not_read_as_the_payout_of_the_same_terms_in_another_slot(
    env,  # noqa: F811
):
    # A sender (another wallet with the same key, or a hostile one) locks the same terms in two
    # slots. Redeem and refund logs name the swap id, not the slot: the redeem of the first
    # read as the redeem of the second, whose deposit the sender then never refunded.
    terms, preimage = _terms(env, lifetime=20)
    first = env.alice.lock(terms)
    sender = env.alice.account
    call = env.alice.htlc.functions.lock(
        terms.payment_hash, _word(terms.recipient, terms.expiry.value, 7)
    )
    second_txid = env.chain.send(call, sender, value=terms.amount)["transactionHash"]
    second = HtlcRef(terms=terms, locator=first.locator, lock_txid="0x" + bytes(second_txid).hex())
    redeem = env.bob.prepare_redeem(first, preimage)
    env.bob.broadcast(redeem)
    env.bob.wait(redeem.txid)
    assert env.alice.status(first).state is HtlcState.REDEEMED
    assert env.alice.status(second).state is HtlcState.LOCKED
    env.chain.advance_time(21)
    before = env.w3.eth.get_balance(env.alice.htlc.address)
    refund = env.alice.prepare_refund(second)
    env.alice.broadcast(refund)
    env.alice.wait(refund.txid)
    assert env.w3.eth.get_balance(env.alice.htlc.address) == before - terms.amount
    assert env.alice.status(second).state is HtlcState.REFUNDED
