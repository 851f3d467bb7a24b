"""Fee bumps (BIP125 replacements) of HTLC claims and refunds, on the embedded chain with a fee
market: blocks take only transactions paying the block minimum rate, as Core's
``-blockmintxfee`` does, and ``estimatesmartfee`` answers that rate."""

from __future__ import annotations

import pytest
from bitcointx.core import CBitcoinTransaction as CTransaction

from kofo.errors import FeeTooLow, InvalidInput, TxRejected
from kofo.settlement.chain import FeeEstimate, HtlcState, SignedTx, TxKind
from kofo.settlement.chains.bitcoin.adapter import (
    MAX_BUMP_FEE_PCT,
    FeeBumpRefused,
)
from tests.bitcoin.conftest import REGTEST, locked_htlc, rpc_adapter


@pytest.fixture(autouse=True)
def no_fee_market(chain):
    chain.set_block_min_fee_rate(0)
    chain.set_mempool_min_fee_rate(0)
    yield
    chain.set_block_min_fee_rate(0)
    chain.set_mempool_min_fee_rate(0)


def _fee_and_vsize(tx: SignedTx, amount: int) -> tuple[int, int]:
    parsed = CTransaction.deserialize(tx.raw)
    return amount - sum(o.nValue for o in parsed.vout), parsed.get_virtual_size()


def test_a_stuck_key_path_claim_is_replaced_by_the_leaf_claim_at_the_new_estimate(
    server, chain, alice
):
    """A cooperative (key-path) claim needs no second signing session to be bumped: its
    replacement is the claim leaf at the new rate, which the mempool takes under BIP125."""
    a, b = rpc_adapter(server, b"\x3a" * 32, "p2tr"), rpc_adapter(server, b"\x3b" * 32, "p2tr")
    a.backend.mine(1, a.wallet.address())
    alice.backend.mine(100, alice.wallet.address())
    ref, preimage = locked_htlc(a, b)
    session = b.begin_cooperative_claim(ref, FeeEstimate(2))
    key_path = b.finish_cooperative_claim(
        session, *a.cosign_cooperative_claim(ref, session.raw, session.nonce)
    )
    b.broadcast(key_path)
    chain.set_block_min_fee_rate(25)  # fees rise: the 2 sat/vB key-path claim is stuck
    b.backend.mine(2, b.wallet.address())
    assert b.status(ref).spend_confirmations == 0

    bumped = b.prepare_replacement(ref, key_path, preimage)
    new_fee, new_vsize = _fee_and_vsize(bumped, ref.terms.amount)
    assert new_fee >= 25 * new_vsize and new_vsize > 99  # the leaf: bigger, at the new rate
    b.broadcast(bumped)  # replaces the key-path claim in the mempool
    b.backend.mine(1, b.wallet.address())
    done = a.status(ref)
    assert done.state is HtlcState.REDEEMED and done.spend_txid == bumped.txid
    assert done.preimage == preimage and b.tx_confirmations(key_path.txid) == 0


@pytest.mark.parametrize("kind", ["p2wsh", "p2tr"])
def test_a_stuck_claim_is_replaced_at_the_new_estimate_and_confirms(server, chain, alice, kind):
    a, b = rpc_adapter(server, b"\x2a" * 32, kind), rpc_adapter(server, b"\x2b" * 32, kind)
    a.backend.mine(1, a.wallet.address())
    alice.backend.mine(100, alice.wallet.address())
    ref, preimage = locked_htlc(a, b)
    terms = ref.terms
    amount = terms.amount
    first = b.prepare_redeem(ref, preimage)  # no estimate yet: the 2 sat/vB fallback
    b.broadcast(first)
    chain.set_block_min_fee_rate(25)  # fees rise: the next blocks need 25 sat/vB
    b.backend.mine(2, b.wallet.address())
    stuck = b.status(ref)
    assert stuck.state is HtlcState.REDEEMED and stuck.spend_confirmations == 0
    assert b.estimate_fee().rate == 25

    bumped = b.prepare_replacement(ref, first, preimage)
    old_fee, _old_vsize = _fee_and_vsize(first, amount)
    new_fee, new_vsize = _fee_and_vsize(bumped, amount)
    assert bumped.txid != first.txid
    assert new_fee >= 25 * new_vsize  # at the node's new estimate
    assert new_fee >= old_fee + REGTEST.min_relay_fee_rate * new_vsize  # BIP125 rule 4
    b.broadcast(bumped)  # the mempool's BIP125 check accepts it and evicts the first
    b.backend.mine(1, b.wallet.address())
    done = a.status(ref)
    assert done.state is HtlcState.REDEEMED and done.spend_txid == bumped.txid
    assert done.spend_confirmations == 1 and done.preimage == preimage
    assert b.tx_confirmations(first.txid) == 0


def test_a_stuck_refund_is_replaced_and_keeps_its_lock_time(chain, alice, bob):
    ref, _ = locked_htlc(alice, bob, expiry_in=3)
    terms = ref.terms
    alice.backend.mine(3, alice.wallet.address())
    first = alice.prepare_refund(ref)
    alice.broadcast(first)
    chain.set_block_min_fee_rate(10)
    alice.backend.mine(1, alice.wallet.address())
    assert alice.status(ref).spend_confirmations == 0
    bumped = alice.prepare_replacement(ref, first)
    assert CTransaction.deserialize(bumped.raw).nLockTime == terms.expiry.value
    alice.broadcast(bumped)
    alice.backend.mine(1, alice.wallet.address())
    done = alice.status(ref)
    assert done.state is HtlcState.REFUNDED and done.spend_txid == bumped.txid


def test_each_bump_raises_the_rate_by_at_least_a_quarter_even_without_a_new_estimate(alice, bob):
    ref, preimage = locked_htlc(alice, bob)
    terms = ref.terms
    first = bob.prepare_redeem(ref, preimage, FeeEstimate(40))
    second = bob.prepare_replacement(ref, first, preimage)  # estimate: fallback 2 < 40
    third = bob.prepare_replacement(ref, second, preimage)
    rates = [
        -(-f // v) for f, v in (_fee_and_vsize(t, terms.amount) for t in (first, second, third))
    ]
    assert rates[0] >= 40 and rates[1] >= rates[0] * 5 // 4 and rates[2] >= rates[1] * 5 // 4
    bob.broadcast(first)
    bob.broadcast(third)  # replaces first directly: BIP125 holds across skipped generations


def test_a_bump_is_held_to_the_fee_cap_and_refused_when_none_fits_under_it(alice, bob):
    ref, preimage = locked_htlc(alice, bob, amount=20_000)
    terms = ref.terms
    cap = terms.amount * MAX_BUMP_FEE_PCT // 100
    first = bob.prepare_redeem(ref, preimage)  # 2 sat/vB
    clamped = bob.prepare_replacement(ref, first, preimage, FeeEstimate(100))
    fee, size = _fee_and_vsize(clamped, terms.amount)
    assert fee <= cap < 100 * size  # asked for 100 sat/vB, got what the cap allows
    assert fee >= _fee_and_vsize(first, terms.amount)[0] + size  # still a valid BIP125 bump
    pricey = bob.prepare_redeem(ref, preimage, FeeEstimate(60))  # the next bump needs 75+
    with pytest.raises(FeeBumpRefused, match=f"over {MAX_BUMP_FEE_PCT} % of the HTLC amount 20000"):
        bob.prepare_replacement(ref, pricey, preimage)


def test_a_bump_past_the_fee_ceiling_is_refused_as_a_bump(alice, bob):
    """A claim at 9,000 sat/vB: its next step (+25 %) is over the 10,000 sat/vB ceiling, so the
    bump is refused (``FeeBumpRefused``: the engine then sends the claim again as it is)."""
    ref, preimage = locked_htlc(alice, bob, amount=5_000_000)
    first = bob.prepare_redeem(ref, preimage, FeeEstimate(9_000))
    with pytest.raises(FeeBumpRefused, match="above this chain's ceiling of 10000 sat/vB"):
        bob.prepare_replacement(ref, first, preimage)


def test_replacing_a_transaction_that_does_not_spend_the_htlc_is_refused(alice, bob):
    ref, preimage = locked_htlc(alice, bob)
    other, _ = locked_htlc(alice, bob)
    spend_of_other = alice.prepare_refund(other)
    with pytest.raises(InvalidInput, match="does not spend the HTLC"):
        bob.prepare_replacement(ref, spend_of_other, preimage)


def test_a_claim_refused_for_its_fee_is_re_signed_at_the_floor_and_taken(chain, alice, bob):
    """A full mempool's floor rises between signing and sending: the node refuses the claim
    for its fee alone (``FeeTooLow``, told apart over JSON-RPC from any other refusal), the
    estimate follows the floor, and the bump of a claim the node does not hold is a new
    version at that rate, which it takes and mines."""
    ref, preimage = locked_htlc(alice, bob)
    first = bob.prepare_redeem(ref, preimage)  # at the 2 sat/vB fallback
    chain.set_mempool_min_fee_rate(20)
    with pytest.raises(FeeTooLow, match="mempool min fee not met"):
        bob.broadcast(first)
    assert bob.estimate_fee().rate == 20
    bumped = bob.prepare_bump(ref, [first], preimage)
    assert bumped.kind is TxKind.REDEEM and bumped.txid != first.txid
    fee, size = _fee_and_vsize(bumped, ref.terms.amount)
    assert fee >= 20 * size
    bob.broadcast(bumped)
    bob.backend.mine(1, bob.wallet.address())
    status = alice.status(ref)
    assert status.state is HtlcState.REDEEMED and status.spend_txid == bumped.txid
    # A refusal for another reason is no FeeTooLow (a fee bump would not help it): the first
    # claim now spends an output spent on chain.
    with pytest.raises(TxRejected) as refused:
        bob.broadcast(first)
    assert not isinstance(refused.value, FeeTooLow)
