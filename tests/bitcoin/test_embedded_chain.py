"""The embedded regtest chain refuses what Bitcoin Core refuses (its checks are Core's code)."""

from __future__ import annotations

import hashlib
import os

import pytest
from bitcointx.core import (
    CBitcoinMutableTransaction as CMutableTransaction,
)
from bitcointx.core import (
    CBitcoinTransaction as CTransaction,
)
from bitcointx.core import (
    CBitcoinTxInWitness as CTxInWitness,
)
from bitcointx.core import (
    CBitcoinTxWitness as CTxWitness,
)
from bitcointx.core import (
    b2lx,
)
from bitcointx.core.script import CScriptWitness

from kofo.errors import ChainError, TxRejected
from kofo.settlement.chain import BlockHeight, UnixTime
from kofo.settlement.chains.bitcoin.embedded import MissingInputs
from kofo.settlement.chains.bitcoin.script import build_htlc_script, p2wsh_script_pubkey
from kofo.settlement.chains.bitcoin.tx import (
    Utxo,
    _p2wpkh_witness,
    build_funding_tx,
    build_htlc_spend,
    extract_preimage,
    p2wpkh_script_pubkey,
)

from .helpers import coinbase_utxo, fund_htlc, new_key, pub


@pytest.fixture(scope="module")
def miner(chain):
    key = new_key()
    chain.mine(110, p2wpkh_script_pubkey(pub(key)))
    return key


_next_coin = iter(range(1, 40))


@pytest.fixture
def coin(chain, miner):
    """A fresh mature coinbase output of ``miner`` for each test."""
    return coinbase_utxo(chain, next(_next_coin))


def _claim(chain, txid, script, key, preimage, amount=1_000_000):
    return build_htlc_spend(
        txid=txid,
        vout=0,
        amount=amount,
        witness_script=script,
        key=key,
        destination_script_pubkey=p2wpkh_script_pubkey(pub(key)),
        fee_rate=2,
        params=chain.params,
        preimage=preimage,
    )


def _refund(chain, txid, script, key, expiry, amount=1_000_000):
    return build_htlc_spend(
        txid=txid,
        vout=0,
        amount=amount,
        witness_script=script,
        key=key,
        destination_script_pubkey=p2wpkh_script_pubkey(pub(key)),
        fee_rate=2,
        params=chain.params,
        refund_expiry=expiry,
    )


def test_claim_with_the_preimage_confirms_and_reveals_it(chain, miner, coin):
    recipient = new_key()
    txid, script, preimage = fund_htlc(
        chain, miner, coin, recipient, BlockHeight(chain.height() + 50)
    )
    claim = _claim(chain, txid, script, recipient, preimage)
    chain.send_raw(claim.serialize())
    chain.mine(1, p2wpkh_script_pubkey(pub(miner)))
    seen = chain.find_tx(b2lx(claim.GetTxid()))
    assert seen is not None and seen.height == chain.height()
    assert extract_preimage(seen.tx, txid, 0, script) == preimage


def test_claim_with_a_wrong_preimage_is_rejected(chain, miner, coin):
    recipient = new_key()
    txid, script, _ = fund_htlc(chain, miner, coin, recipient, BlockHeight(chain.height() + 50))
    with pytest.raises(TxRejected, match="script verification failed"):
        chain.send_raw(_claim(chain, txid, script, recipient, os.urandom(32)).serialize())


def test_claim_signed_by_the_wrong_key_is_rejected(chain, miner, coin):
    recipient = new_key()
    txid, script, preimage = fund_htlc(
        chain, miner, coin, recipient, BlockHeight(chain.height() + 50)
    )
    with pytest.raises(TxRejected, match="script verification failed"):
        chain.send_raw(_claim(chain, txid, script, new_key(), preimage).serialize())


def test_claim_with_a_33_byte_preimage_is_rejected(chain, miner, coin):
    # The secret holder picks a 33-byte secret whose sha256 is the payment hash: valid for the
    # hash lock, but the Ethereum leg could never be opened with it. The size check refuses it.
    recipient = new_key()
    long_secret = os.urandom(33)
    payment_hash = hashlib.sha256(long_secret).digest()
    script = build_htlc_script(payment_hash, pub(recipient), pub(miner), BlockHeight(10_000))
    fund = build_funding_tx(
        [coin],
        lambda _spk: miner,
        [(p2wsh_script_pubkey(script), 1_000_000)],
        p2wpkh_script_pubkey(pub(miner)),
        2,
        chain.params,
    )
    txid = chain.send_raw(fund.serialize())
    chain.mine(1, p2wpkh_script_pubkey(pub(miner)))
    # A correctly signed claim (the signature does not cover the witness), then the 32-byte
    # placeholder swapped for the 33-byte secret.
    claim = _claim(chain, txid, script, recipient, b"\x00" * 32)
    sig = claim.wit.vtxinwit[0].scriptWitness.stack[0]
    tampered = CMutableTransaction.from_tx(claim)
    tampered.wit = CTxWitness([CTxInWitness(CScriptWitness([sig, long_secret, script]))])
    with pytest.raises(TxRejected, match="script verification failed"):
        chain.send_raw(CTransaction.from_tx(tampered).serialize())


def test_refund_with_nlocktime_below_the_expiry_is_rejected(chain, miner, coin):
    recipient = new_key()
    expiry = BlockHeight(chain.height() + 2)
    txid, script, _ = fund_htlc(chain, miner, coin, recipient, expiry)
    chain.mine(5, p2wpkh_script_pubkey(pub(miner)))  # the chain is past the expiry
    early = _refund(chain, txid, script, miner, BlockHeight(expiry.value - 1))
    with pytest.raises(TxRejected, match="script verification failed"):
        chain.send_raw(early.serialize())


def test_refund_before_expiry_is_rejected(chain, miner, coin):
    recipient = new_key()
    expiry = BlockHeight(chain.height() + 10)
    txid, script, _ = fund_htlc(chain, miner, coin, recipient, expiry)
    refund = _refund(chain, txid, script, miner, expiry)
    with pytest.raises(TxRejected, match="non-final"):
        chain.send_raw(refund.serialize())
    chain.mine(expiry.value - chain.height(), p2wpkh_script_pubkey(pub(miner)))
    # At tip == expiry the refund is final for the next block, so it is accepted now.
    assert chain.send_raw(refund.serialize()) == b2lx(refund.GetTxid())
    chain.mine(1, p2wpkh_script_pubkey(pub(miner)))
    assert chain.find_tx(b2lx(refund.GetTxid())).height == chain.height()


def test_refund_signed_by_the_recipient_is_rejected(chain, miner, coin):
    recipient = new_key()
    expiry = BlockHeight(chain.height() + 1)
    txid, script, _ = fund_htlc(chain, miner, coin, recipient, expiry)
    chain.mine(2, p2wpkh_script_pubkey(pub(miner)))
    with pytest.raises(TxRejected, match="script verification failed"):
        chain.send_raw(_refund(chain, txid, script, recipient, expiry).serialize())


def test_time_expiry_refund_waits_for_median_time_past(chain, miner, coin):
    recipient = new_key()
    expiry = UnixTime(chain.now() + 3600)
    txid, script, _ = fund_htlc(chain, miner, coin, recipient, expiry)
    refund = _refund(chain, txid, script, miner, expiry)
    with pytest.raises(TxRejected, match="non-final"):
        chain.send_raw(refund.serialize())
    chain.advance_time(3700)
    chain.mine(11, p2wpkh_script_pubkey(pub(miner)))  # median of the last 11 passes expiry
    assert chain.median_time_past() > expiry.value
    chain.send_raw(refund.serialize())


def test_height_refund_cannot_use_a_time_locktime(chain, miner, coin):
    # CLTV compares like with like: a time nLockTime never satisfies a height expiry.
    recipient = new_key()
    expiry = BlockHeight(chain.height() + 1)
    txid, script, _ = fund_htlc(chain, miner, coin, recipient, expiry)
    chain.mine(2, p2wpkh_script_pubkey(pub(miner)))
    mixed = _refund(chain, txid, script, miner, UnixTime(600_000_000))
    with pytest.raises(TxRejected, match="script verification failed"):
        chain.send_raw(mixed.serialize())


def test_double_spend_is_rejected(chain, miner, coin):
    recipient = new_key()
    txid, script, preimage = fund_htlc(
        chain, miner, coin, recipient, BlockHeight(chain.height() + 50)
    )
    chain.send_raw(_claim(chain, txid, script, recipient, preimage).serialize())
    other = build_htlc_spend(
        txid=txid,
        vout=0,
        amount=1_000_000,
        witness_script=script,
        key=recipient,
        destination_script_pubkey=p2wpkh_script_pubkey(pub(new_key())),
        fee_rate=2,
        params=chain.params,
        preimage=preimage,
    )
    with pytest.raises(TxRejected, match="mempool-conflict"):
        chain.send_raw(other.serialize())
    chain.mine(1, p2wpkh_script_pubkey(pub(miner)))
    with pytest.raises(MissingInputs, match="missingorspent"):
        chain.send_raw(other.serialize())


def test_immature_coinbase_spend_is_rejected(chain, miner):
    young = coinbase_utxo(chain, chain.height())
    spend = build_funding_tx(
        [young],
        lambda _spk: miner,
        [(p2wpkh_script_pubkey(pub(new_key())), 100_000)],
        p2wpkh_script_pubkey(pub(miner)),
        2,
        chain.params,
    )
    with pytest.raises(TxRejected, match="premature-spend-of-coinbase"):
        chain.send_raw(spend.serialize())


def test_reorg_to_a_longer_branch_unconfirms_a_lock(chain, miner, coin):
    recipient = new_key()
    fork_point = chain.block_hash(chain.height())
    txid, _script, _ = fund_htlc(chain, miner, coin, recipient, BlockHeight(chain.height() + 50))
    lock_block = chain.find_tx(txid).block_hash
    assert chain.on_best_chain(lock_block)
    chain.mine(2, p2wpkh_script_pubkey(pub(miner)), parent=fork_point)
    assert not chain.on_best_chain(lock_block)
    found = chain.find_tx(txid)
    assert found is not None and found.block_hash is None  # back in the mempool, as in Core
    chain.mine(1, p2wpkh_script_pubkey(pub(miner)))
    assert chain.find_tx(txid).block_hash is not None


def test_block_with_an_invalid_transaction_is_refused_by_the_kernel(chain, miner):
    from kofo.settlement.chains.bitcoin.blocks import build_block

    bogus = _claim(chain, "11" * 32, b"\x51", miner, b"\x00" * 32)  # spends a missing output
    raw = build_block(
        prev_hash=chain.block_hash(chain.height()),
        height=chain.height() + 1,
        time=chain.now(),
        coinbase_script_pubkey=b"\x51",
        txs=[bogus],
        fees=0,
    )
    height = chain.height()
    with pytest.raises(ChainError):
        chain._kernel.process_block(raw)
    assert chain.height() == height


# ---- replace-by-fee (BIP125) ---------------------------------------------------------------------


def _pay(chain, key, coin, fee_rate, *, to=None, sequence=None):
    """Spend ``coin`` (owned by ``key``) to a fresh P2WPKH output, at ``fee_rate``."""
    tx = build_funding_tx(
        [coin],
        lambda _spk: key,
        [(p2wpkh_script_pubkey(pub(to or new_key())), coin.amount // 2)],
        p2wpkh_script_pubkey(pub(key)),
        fee_rate,
        chain.params,
    )
    if sequence is None:
        return tx
    mutable = CMutableTransaction.from_tx(tx)
    mutable.vin[0].nSequence = sequence
    mutable.wit = CTxWitness([_p2wpkh_witness(mutable, 0, key, coin.amount)])
    return CTransaction.from_tx(mutable)


def test_replacement_paying_a_higher_fee_evicts_the_original(chain, miner, coin):
    recipient = new_key()
    txid, script, preimage = fund_htlc(
        chain, miner, coin, recipient, BlockHeight(chain.height() + 50)
    )
    slow = _claim(chain, txid, script, recipient, preimage)
    chain.send_raw(slow.serialize())
    fast = build_htlc_spend(
        txid=txid,
        vout=0,
        amount=1_000_000,
        witness_script=script,
        key=recipient,
        destination_script_pubkey=p2wpkh_script_pubkey(pub(recipient)),
        fee_rate=10,
        params=chain.params,
        preimage=preimage,
    )
    fast_id = chain.send_raw(fast.serialize())
    assert chain.mempool_txids().count(fast_id) == 1
    assert b2lx(slow.GetTxid()) not in chain.mempool_txids()
    chain.mine(1, p2wpkh_script_pubkey(pub(miner)))
    assert chain.find_tx(fast_id).block_hash is not None
    assert chain.find_tx(b2lx(slow.GetTxid())) is None


def test_replacement_with_a_lower_fee_rate_is_rejected(chain, miner, coin):
    chain.send_raw(_pay(chain, miner, coin, 10).serialize())
    with pytest.raises(TxRejected, match="insufficient fee"):
        chain.send_raw(_pay(chain, miner, coin, 5).serialize())


def test_replacement_of_a_transaction_that_does_not_signal_is_rejected(chain, miner, coin):
    final = _pay(chain, miner, coin, 2, sequence=0xFFFFFFFF)
    chain.send_raw(final.serialize())
    with pytest.raises(TxRejected, match="does not signal BIP125"):
        chain.send_raw(_pay(chain, miner, coin, 20).serialize())
    assert b2lx(final.GetTxid()) in chain.mempool_txids()


def test_replacement_evicts_the_descendants_it_outbids(chain, miner, coin):
    middle = new_key()
    parent = _pay(chain, miner, coin, 2, to=middle)
    parent_id = chain.send_raw(parent.serialize())
    child_coin = Utxo(parent_id, 0, parent.vout[0].nValue, bytes(parent.vout[0].scriptPubKey))
    child_id = chain.send_raw(_pay(chain, middle, child_coin, 2).serialize())
    # A higher fee rate than the parent alone, but less than parent + child pay in total.
    with pytest.raises(TxRejected, match="insufficient fee"):
        chain.send_raw(_pay(chain, miner, coin, 3).serialize())
    replacement_id = chain.send_raw(_pay(chain, miner, coin, 10).serialize())
    pool = chain.mempool_txids()
    assert replacement_id in pool and parent_id not in pool and child_id not in pool


# ---- the kernel's own block rules (the mempool's checks bypassed) -------------------------------


def _refused_in_a_block(chain, txs) -> None:
    """A block on the tip carrying ``txs`` (no mempool involved) is refused by Bitcoin Core's
    block validation, and the chain does not move."""
    from kofo.settlement.chains.bitcoin.blocks import build_block

    tip = chain.block_hash(chain.height())
    raw = build_block(
        prev_hash=tip,
        height=chain.height() + 1,
        time=max(chain.now(), chain.median_time_past() + 1),
        coinbase_script_pubkey=b"\x51",
        txs=txs,
        fees=0,
    )
    height = chain.height()
    with pytest.raises(ChainError):
        chain._kernel.process_block(raw)
    assert chain.height() == height and chain.block_hash(height) == tip


def test_a_block_spending_an_immature_coinbase_is_refused_by_the_kernel(chain, miner):
    young = coinbase_utxo(chain, chain.height())
    to = p2wpkh_script_pubkey(pub(new_key()))
    spend = build_funding_tx([young], lambda _spk: miner, [(to, 100_000)], to, 2, chain.params)
    _refused_in_a_block(chain, [spend])


def test_a_block_spending_one_coin_twice_is_refused_by_the_kernel(chain, miner, coin):
    first, second = (
        build_funding_tx(
            [coin],
            lambda _spk: miner,
            [(p2wpkh_script_pubkey(pub(new_key())), 100_000)],
            p2wpkh_script_pubkey(pub(miner)),
            2,
            chain.params,
        )
        for _ in range(2)
    )
    assert first.GetTxid() != second.GetTxid()
    _refused_in_a_block(chain, [first, second])
    chain.send_raw(first.serialize())  # either alone is valid
    chain.mine(1, p2wpkh_script_pubkey(pub(miner)))
    assert chain.find_tx(b2lx(first.GetTxid())).height == chain.height()


def test_a_block_with_a_refund_before_its_expiry_is_refused_by_the_kernel(chain, miner, coin):
    expiry = BlockHeight(chain.height() + 10)
    txid, script, _ = fund_htlc(chain, miner, coin, new_key(), expiry)
    _refused_in_a_block(chain, [_refund(chain, txid, script, miner, expiry)])


def test_a_block_with_a_wrong_preimage_claim_is_refused_by_the_kernel(chain, miner, coin):
    recipient = new_key()
    txid, script, preimage = fund_htlc(
        chain, miner, coin, recipient, BlockHeight(chain.height() + 50)
    )
    _refused_in_a_block(chain, [_claim(chain, txid, script, recipient, os.urandom(32))])
    good = _claim(chain, txid, script, recipient, preimage)
    chain.send_raw(good.serialize())
    chain.mine(1, p2wpkh_script_pubkey(pub(miner)))
    assert chain.find_tx(b2lx(good.GetTxid())).height == chain.height()


def test_mining_with_the_clock_more_than_two_hours_ahead_fails_with_a_clear_error():
    from kofo.settlement.chains.bitcoin.embedded import EmbeddedChain

    ahead = EmbeddedChain()
    try:
        ahead.mine(1, b"\x51")
        ahead.advance_time(3 * 60 * 60)
        with pytest.raises(ChainError, match="time-too-new"):
            ahead.mine(1, b"\x51")
        assert ahead.height() == 1
    finally:
        ahead.close()
