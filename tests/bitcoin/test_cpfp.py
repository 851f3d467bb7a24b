"""Child-pays-for-parent fee bumps of HTLC claims and refunds on a Litecoin-parameter chain (its
nodes relay no replacement by default), on the embedded chain with a fee market: blocks take
transactions by *ancestor* fee rate, as Core's block assembler does, and only packages paying
the block minimum rate."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator

import pytest
from bitcointx.core import CBitcoinTransaction as CTransaction
from bitcointx.core import b2lx

from kofo.errors import FeeTooLow, InsufficientFunds, InvalidInput
from kofo.settlement.chain import (
    BlockHeight,
    FeeEstimate,
    HtlcRef,
    HtlcState,
    HtlcTerms,
    SignedTx,
    TxKind,
)
from kofo.settlement.chains.bitcoin.adapter import (
    MAX_BUMP_FEE_PCT,
    MAX_PACKAGE,
    BitcoinAdapter,
    FeeBumpRefused,
)
from kofo.settlement.chains.bitcoin.backend import EmbeddedBackend
from kofo.settlement.chains.bitcoin.embedded import EmbeddedChain
from kofo.settlement.chains.bitcoin.params import chain_params
from kofo.settlement.chains.bitcoin.tx import dust_limit
from kofo.settlement.chains.bitcoin.wallet import HdWallet
from tests.bitcoin.conftest import locked_htlc
from tests.bitcoin.helpers import pay

LTC = chain_params("ltc", "regtest")


@pytest.fixture(scope="module")
def ltc() -> Iterator[EmbeddedChain]:
    c = EmbeddedChain(params=LTC)
    yield c
    c.close()


@pytest.fixture(autouse=True)
def no_fee_market(ltc: EmbeddedChain) -> Iterator[None]:
    ltc.set_block_min_fee_rate(0)
    ltc.set_mempool_min_fee_rate(0)
    yield
    ltc.set_block_min_fee_rate(0)
    ltc.set_mempool_min_fee_rate(0)


def _adapter(chain: EmbeddedChain, seed: bytes) -> BitcoinAdapter:
    return BitcoinAdapter(EmbeddedBackend(chain), HdWallet(seed, LTC))


@pytest.fixture(scope="module")
def alice(ltc: EmbeddedChain) -> BitcoinAdapter:
    a = _adapter(ltc, b"\x1a" * 32)
    a.backend.mine(110, a.wallet.address())  # ten mature coinbases
    return a


@pytest.fixture
def bob(ltc: EmbeddedChain) -> BitcoinAdapter:
    """A fresh, empty wallet: its balance is exactly what its claims bring in."""
    return _adapter(ltc, os.urandom(32))


def _fee(tx: SignedTx, spent: int) -> tuple[int, int]:
    """(fee, vsize) of ``tx``, whose one input is worth ``spent``."""
    parsed = CTransaction.deserialize(tx.raw)
    return spent - sum(o.nValue for o in parsed.vout), parsed.get_virtual_size()


def _inputs(tx: SignedTx) -> set[tuple[str, int]]:
    return {(b2lx(i.prevout.hash), i.prevout.n) for i in CTransaction.deserialize(tx.raw).vin}


def _value(tx: SignedTx) -> int:
    return int(CTransaction.deserialize(tx.raw).vout[0].nValue)


def test_a_stuck_claim_gets_a_child_and_the_package_confirms(ltc, alice, bob):
    ref, preimage = locked_htlc(alice, bob)
    claim = bob.prepare_redeem(ref, preimage)  # no estimate yet: the 20 lit/vB fallback
    bob.broadcast(claim)
    ltc.set_block_min_fee_rate(60)  # fees rise: the next blocks need 60 lit/vB
    alice.backend.mine(2, alice.wallet.address())
    assert bob.status(ref).spend_confirmations == 0  # the claim waits in the mempool

    child = bob.prepare_bump(ref, [claim], preimage)
    assert child.kind is TxKind.CHILD  # Litecoin's nodes would refuse a replacement
    parsed = CTransaction.deserialize(child.raw)
    assert [(b2lx(i.prevout.hash), i.prevout.n) for i in parsed.vin] == [(claim.txid, 0)]
    assert parsed.vout[0].scriptPubKey == CTransaction.deserialize(claim.raw).vout[0].scriptPubKey
    claim_fee, claim_size = _fee(claim, ref.terms.amount)
    child_fee, child_size = _fee(child, _value(claim))
    assert claim_fee + child_fee >= 60 * (claim_size + child_size)  # the package's rate
    assert child_fee >= LTC.min_relay_fee_rate * child_size  # and the child relays alone
    bob.broadcast(child)
    alice.backend.mine(1, alice.wallet.address())
    done = alice.status(ref)
    assert done.state is HtlcState.REDEEMED and done.spend_txid == claim.txid
    assert done.spend_confirmations == 1 and done.preimage == preimage
    assert bob.tx_confirmations(child.txid) == 1
    assert bob.balance() == ref.terms.amount - claim_fee - child_fee


def test_a_child_too_cheap_for_the_package_leaves_both_waiting_and_a_grandchild_lifts_all(
    ltc, alice, bob
):
    ref, preimage = locked_htlc(alice, bob)
    claim = bob.prepare_redeem(ref, preimage)
    bob.broadcast(claim)
    ltc.set_block_min_fee_rate(80)
    # Asked for 30 lit/vB: the floor (the claim's 20 + the 10 relay minimum), far under 80.
    child = bob.prepare_child(ref, [claim], FeeEstimate(30))
    bob.broadcast(child)
    alice.backend.mine(1, alice.wallet.address())
    assert bob.tx_confirmations(claim.txid) == 0 and bob.tx_confirmations(child.txid) == 0

    grandchild = bob.prepare_bump(ref, [claim, child], preimage)  # at the estimate: 80
    parsed = CTransaction.deserialize(grandchild.raw)
    assert b2lx(parsed.vin[0].prevout.hash) == child.txid
    fees = [
        _fee(claim, ref.terms.amount),
        _fee(child, _value(claim)),
        _fee(grandchild, _value(child)),
    ]
    assert sum(f for f, _ in fees) >= 80 * sum(v for _, v in fees)
    bob.broadcast(grandchild)
    alice.backend.mine(1, alice.wallet.address())
    assert [bob.tx_confirmations(t.txid) for t in (claim, child, grandchild)] == [1, 1, 1]
    assert bob.balance() == ref.terms.amount - sum(f for f, _ in fees)


def test_a_stuck_refund_gets_a_child(ltc, alice, bob):
    ref, _ = locked_htlc(alice, bob, expiry_in=3)
    alice.backend.mine(3, alice.wallet.address())
    refund = alice.prepare_refund(ref)
    alice.broadcast(refund)
    ltc.set_block_min_fee_rate(50)
    alice.backend.mine(1, bob.wallet.address())
    assert alice.status(ref).spend_confirmations == 0
    child = alice.prepare_bump(ref, [refund])
    assert child.kind is TxKind.CHILD
    alice.broadcast(child)
    alice.backend.mine(1, bob.wallet.address())
    done = alice.status(ref)
    assert done.state is HtlcState.REFUNDED and done.spend_txid == refund.txid
    assert done.spend_confirmations == 1 and alice.tx_confirmations(child.txid) == 1


def test_a_child_is_held_to_the_fee_cap_and_refused_when_none_fits_under_it(alice, bob):
    ref, preimage = locked_htlc(alice, bob, amount=40_000)
    cap = ref.terms.amount * MAX_BUMP_FEE_PCT // 100
    claim = bob.prepare_redeem(ref, preimage)  # 20 lit/vB
    child = bob.prepare_child(ref, [claim], FeeEstimate(500))
    fees = [_fee(claim, ref.terms.amount), _fee(child, _value(claim))]
    total_fee, total_size = sum(f for f, _ in fees), sum(v for _, v in fees)
    assert total_fee <= cap < 500 * total_size  # asked for 500 lit/vB, got what the cap allows
    assert total_fee >= 30 * total_size  # still at least the floor: 20 + the relay minimum
    pricey = bob.prepare_redeem(ref, preimage, FeeEstimate(100))  # the package needs 125+
    with pytest.raises(FeeBumpRefused, match=f"over {MAX_BUMP_FEE_PCT} % of the HTLC amount 40000"):
        bob.prepare_child(ref, [pricey])


def _lock_of(adapter: BitcoinAdapter, ref: HtlcRef) -> SignedTx:
    """The lock of ``ref``, read from the mempool it waits in."""
    raw = next(
        r
        for r in adapter.backend.mempool_raw()
        if b2lx(CTransaction.deserialize(r).GetTxid()) == ref.lock_txid
    )
    return SignedTx(adapter.chain, TxKind.LOCK, ref.lock_txid, raw)


@pytest.mark.parametrize("params", ["ltc", "btc"])
def test_a_stuck_lock_gets_a_child_spending_its_change_and_the_htlc_stays_put(
    ltc, alice, bob, params
):
    """A lock is bumped by a child on every Bitcoin-like chain (a replacement would move the
    HTLC to another outpoint): the child spends the lock's change output."""
    chain = ltc if params == "ltc" else EmbeddedChain()
    try:
        if params == "btc":
            regtest = chain_params("btc", "regtest")
            alice, bob = (
                BitcoinAdapter(EmbeddedBackend(chain), HdWallet(os.urandom(32), regtest))
                for _ in "ab"
            )
            alice.backend.mine(101, alice.wallet.address())
        ref, _ = locked_htlc(alice, bob, amount=300_000, mine=False)  # at the fallback rate
        chain.set_block_min_fee_rate(10 * alice.params.fallback_fee_rate)
        alice.backend.mine(1, bob.wallet.address())
        assert alice.status(ref).confirmations == 0
        lock = _lock_of(alice, ref)

        child = alice.prepare_bump(ref, [lock])
        assert child.kind is TxKind.CHILD
        parsed = CTransaction.deserialize(child.raw)
        (spent,) = [(b2lx(i.prevout.hash), i.prevout.n) for i in parsed.vin]
        assert spent[0] == ref.lock_txid and f"{spent[0]}:{spent[1]}" != ref.locator
        with pytest.raises(FeeBumpRefused, match="has no change output"):
            bob.prepare_bump(ref, [lock])  # the change is not bob's
        alice.broadcast(child)
        alice.backend.mine(1, bob.wallet.address())
        assert alice.status(ref).confirmations == 1  # the same outpoint, now mined
        assert alice.tx_confirmations(child.txid) == 1
    finally:
        if params == "btc":
            chain.close()


def _terms(sender: BitcoinAdapter, recipient: BitcoinAdapter, amount: int) -> HtlcTerms:
    return HtlcTerms(
        chain=sender.chain,
        payment_hash=os.urandom(32),
        amount=amount,
        sender=sender.address(),
        recipient=recipient.address(),
        expiry=BlockHeight(sender.expiry_now().value + 30),
    )


def test_a_lock_whose_change_cannot_pay_gets_a_child_that_adds_a_wallet_coin(ltc, alice, bob):
    """A lock that left only a small change: a child of that change alone would be dust, so it
    is refused while the wallet has nothing else, and adds a confirmed wallet coin once it has
    one. Lock and child then confirm together and the wallet is down by exactly the HTLC amount
    and both fees."""
    carol = _adapter(ltc, os.urandom(32))
    pay(alice, carol.wallet.identity.script_pubkey, [300_000], LTC.fallback_fee_rate)
    alice.backend.mine(1, alice.wallet.address())
    change_left = dust_limit(carol.wallet.identity.script_pubkey, LTC) + 1_000
    # Size the lock so that its change is ``change_left``: a trial lock shows the fee.
    trial_lock = carol.prepare_lock(_terms(carol, bob, 250_000))
    carol.release(trial_lock)  # never sent: its coin goes back to the wallet
    trial = CTransaction.deserialize(trial_lock[0].raw)
    (trial_change,) = [o.nValue for o in trial.vout if o.nValue != 250_000]
    amount = 250_000 + trial_change - change_left
    ref = carol.lock(_terms(carol, bob, amount))
    lock = _lock_of(carol, ref)
    assert sorted(o.nValue for o in CTransaction.deserialize(lock.raw).vout) == [
        change_left,
        amount,
    ]
    lock_fee = 300_000 - amount - change_left
    ltc.set_block_min_fee_rate(5 * carol.params.fallback_fee_rate)
    alice.backend.mine(1, alice.wallet.address())
    assert carol.status(ref).confirmations == 0
    with pytest.raises(InsufficientFunds, match=f"of {change_left} minus a child fee"):
        carol.prepare_bump(ref, [lock])

    # A coin arrives (paid at a rate the blocks take); the child now spends it too.
    pay(alice, carol.wallet.identity.script_pubkey, [500_000], 20 * carol.params.fallback_fee_rate)
    alice.backend.mine(1, alice.wallet.address())
    assert carol.status(ref).confirmations == 0 and carol.balance() == 500_000
    refused = carol.prepare_bump(ref, [lock])
    # That child was never sent (say a node refused it): the next one may add the same coin
    # (both spend the lock's change, so at most one of them can ever confirm).
    child = carol.prepare_bump(ref, [lock])
    assert _inputs(child) == _inputs(refused)
    parsed = CTransaction.deserialize(child.raw)
    spent = [(b2lx(i.prevout.hash), i.prevout.n) for i in parsed.vin]
    assert spent[0][0] == ref.lock_txid and len(spent) == 2
    child_fee = change_left + 500_000 - _value(child)
    package = CTransaction.deserialize(lock.raw).get_virtual_size() + parsed.get_virtual_size()
    assert (lock_fee + child_fee) >= 5 * carol.params.fallback_fee_rate * package
    carol.broadcast(child)
    # Fees rise again before a block: the grandchild reads the two-input child's fee from
    # the values of both its inputs, and lifts all three.
    ltc.set_block_min_fee_rate(10 * carol.params.fallback_fee_rate)
    alice.backend.mine(1, alice.wallet.address())
    assert carol.status(ref).confirmations == 0
    grandchild = carol.prepare_bump(ref, [lock, child])
    (spent,) = [
        (b2lx(i.prevout.hash), i.prevout.n) for i in CTransaction.deserialize(grandchild.raw).vin
    ]
    assert spent == (child.txid, 0)
    grandchild_fee = _value(child) - _value(grandchild)
    carol.broadcast(grandchild)
    alice.backend.mine(1, alice.wallet.address())
    assert carol.status(ref).confirmations == 1
    assert carol.tx_confirmations(child.txid) == carol.tx_confirmations(grandchild.txid) == 1
    assert carol.balance() == 300_000 + 500_000 - amount - lock_fee - child_fee - grandchild_fee


def test_a_claim_no_mempool_took_is_re_signed_not_given_a_child(ltc, alice, bob):
    """Litecoin relays no replacement, but a claim its node refused for its fee is in no
    mempool: a child of it could not be relayed, and a new version replaces nothing. So the
    bump is the claim re-signed at the higher rate, which the node takes."""
    ref, preimage = locked_htlc(alice, bob)
    first = bob.prepare_redeem(ref, preimage)
    ltc.set_mempool_min_fee_rate(3 * LTC.fallback_fee_rate)
    with pytest.raises(FeeTooLow, match="mempool min fee not met"):
        bob.broadcast(first)
    bumped = bob.prepare_bump(ref, [first], preimage)
    assert bumped.kind is TxKind.REDEEM
    fee, size = _fee(bumped, ref.terms.amount)
    assert fee >= 3 * LTC.fallback_fee_rate * size
    bob.broadcast(bumped)
    alice.backend.mine(1, alice.wallet.address())
    assert bob.tx_confirmations(bumped.txid) == 1
    # Once the node holds a claim, a bump is a child again.
    ref2, preimage2 = locked_htlc(alice, bob)
    held = bob.prepare_redeem(ref2, preimage2)
    bob.broadcast(held)
    assert bob.prepare_bump(ref2, [held], preimage2).kind is TxKind.CHILD


def test_a_lock_no_mempool_took_gets_no_child_but_a_clear_refusal(ltc, alice, bob):
    """A child of a lock the node refused could not be relayed (its parent is unknown): the
    bump says so instead of signing one."""
    preimage = os.urandom(32)
    terms = HtlcTerms(
        alice.chain,
        hashlib.sha256(preimage).digest(),
        500_000,
        alice.address(),
        bob.address(),
        BlockHeight(alice.expiry_now().value + 20),
    )
    (lock,) = alice.prepare_lock(terms)
    ltc.set_mempool_min_fee_rate(3 * LTC.fallback_fee_rate)
    with pytest.raises(FeeTooLow):
        alice.broadcast(lock)
    ref = alice.htlc_ref(terms, lock)
    with pytest.raises(InvalidInput, match=f"lock {lock.txid} is neither on chain") as err:
        alice.prepare_bump(ref, [lock])
    assert err.value.code == "lock_not_held"


def test_a_package_that_is_not_a_spend_of_the_htlc_and_its_children_is_refused(alice, bob):
    ref, preimage = locked_htlc(alice, bob)
    other, _ = locked_htlc(alice, bob)
    claim = bob.prepare_redeem(ref, preimage)
    child = bob.prepare_child(ref, [claim])
    with pytest.raises(InvalidInput, match="is neither the lock nor a spend of the HTLC"):
        bob.prepare_child(ref, [alice.prepare_refund(other)])
    with pytest.raises(InvalidInput, match="is not a child of the one before it"):
        bob.prepare_child(ref, [claim, child, child])
    with pytest.raises(InvalidInput, match="nothing sent for the HTLC"):
        bob.prepare_bump(ref, [])
    with pytest.raises(FeeBumpRefused, match=f"at most {MAX_PACKAGE} unconfirmed"):
        bob.prepare_child(ref, [claim] + [child] * (MAX_PACKAGE - 1))


def test_a_chain_that_relays_replacements_bumps_by_replacement():
    """The same adapter code on Bitcoin parameters answers a replacement, and refuses a package
    (there, a stuck spend never has children)."""
    btc = EmbeddedChain()
    try:
        regtest = chain_params("btc", "regtest")
        a, b = (
            BitcoinAdapter(EmbeddedBackend(btc), HdWallet(os.urandom(32), regtest)) for _ in "ab"
        )
        a.backend.mine(101, a.wallet.address())
        ref, preimage = locked_htlc(a, b)
        claim = b.prepare_redeem(ref, preimage)
        b.broadcast(claim)  # the node holds it
        bump = b.prepare_bump(ref, [claim], preimage)
        assert bump.kind is TxKind.REDEEM and bump.txid != claim.txid
        with pytest.raises(InvalidInput, match="bumps a spend by replacement"):
            b.prepare_bump(ref, [claim, bump], preimage)
    finally:
        btc.close()
