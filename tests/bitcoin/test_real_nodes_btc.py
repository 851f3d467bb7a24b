"""The Bitcoin adapter against real nodes: litecoind -regtest and btcd --regtest.

Each node: fund the wallet by mining, then lock -> claim (preimage extracted by the other side)
and lock -> refund, plus rejections checked by the node's own consensus code.
"""

from __future__ import annotations

import hashlib
import os

import pytest

from kofo.errors import InvalidInput, TxRejected
from kofo.settlement.chain import BlockHeight, HtlcState, HtlcTerms
from kofo.settlement.chains.bitcoin.adapter import BitcoinAdapter
from kofo.settlement.chains.bitcoin.backend import RpcBackend
from kofo.settlement.chains.bitcoin.params import chain_params
from kofo.settlement.chains.bitcoin.rpc import RpcClient
from kofo.settlement.chains.bitcoin.tx import build_htlc_spend
from kofo.settlement.chains.bitcoin.wallet import HdWallet

pytestmark = [pytest.mark.realnode, pytest.mark.slow]

CLTV_HEIGHT = 1351
"""Both litecoin's and btcd's regtest only enforce BIP65 (CLTV) from this height (the old
Bitcoin Core regtest value they inherited); below it a premature refund is not a consensus
error, so the tests mine past it first."""


def _terms(chain, sender, recipient, expiry, amount=5_000_000):
    preimage = os.urandom(32)
    terms = HtlcTerms(
        chain=chain,
        payment_hash=hashlib.sha256(preimage).digest(),
        amount=amount,
        sender=sender.address(),
        recipient=recipient.address(),
        expiry=expiry,
    )
    return terms, preimage


def _swap_round_trip(alice: BitcoinAdapter, bob: BitcoinAdapter, mine) -> None:
    # lock -> claim, with the preimage read back from the chain by the sender
    terms, preimage = _terms(alice.chain, alice, bob, BlockHeight(alice.expiry_now().value + 30))
    ref = alice.lock(terms)
    mine(1)
    assert bob.audit(ref, terms, min_confirmations=1).state is HtlcState.LOCKED
    signed = bob.prepare_redeem(ref, preimage)
    with pytest.raises(TxRejected):  # same signed claim, another 32-byte "preimage"
        bob.backend.test_accept(_swap_witness_preimage(signed.raw, preimage, os.urandom(32)))
    redeem = bob.prepare_redeem(ref, preimage)
    bob.broadcast(redeem)
    mine(1)
    status = alice.status(ref)
    assert status.state is HtlcState.REDEEMED
    assert status.preimage == preimage and status.spend_confirmations == 1

    # lock -> refund, refused by the node before the expiry
    expiry = BlockHeight(alice.expiry_now().value + 3)
    terms, _ = _terms(alice.chain, alice, bob, expiry)
    ref = alice.lock(terms)
    mine(1)
    txid, vout = ref.locator.split(":")
    sender_key = alice.wallet.key_for_pubkey(bytes.fromhex(terms.sender))
    early = build_htlc_spend(
        txid=txid,
        vout=int(vout),
        amount=terms.amount,
        witness_script=alice.witness_script(terms),
        key=sender_key,
        destination_script_pubkey=alice.wallet.identity.script_pubkey,
        fee_rate=alice.estimate_fee().rate,
        params=alice.params,
        refund_expiry=BlockHeight(expiry.value - 1),  # nLockTime below the script's expiry
    )
    with pytest.raises(TxRejected):
        alice.backend.test_accept(early.serialize())
    refund = alice.prepare_refund(ref)
    try:
        alice.broadcast(refund)  # litecoind refuses it (non-final)...
    except TxRejected:
        pass
    mine(1)  # ...btcd's regtest mempool keeps it, but no block may include it yet
    assert alice.tx_confirmations(refund.txid) == 0
    assert alice.status(ref).state in (HtlcState.LOCKED, HtlcState.REFUNDED)
    mine(expiry.value - alice.expiry_now().value)
    alice.broadcast(refund)
    mine(1)
    assert alice.status(ref).state is HtlcState.REFUNDED
    assert alice.tx_confirmations(refund.txid) == 1
    with pytest.raises(InvalidInput):
        bob.prepare_redeem(ref, os.urandom(32))


def _swap_witness_preimage(raw: bytes, old: bytes, new: bytes) -> bytes:
    assert raw.count(old) == 1
    return raw.replace(old, new)


def test_litecoind_lock_claim_and_lock_refund(litecoind):
    params = chain_params("ltc", "regtest")
    client = RpcClient(litecoind.rpc_url, litecoind.rpc_user, litecoind.rpc_password)
    alice = BitcoinAdapter(RpcBackend(client), HdWallet(os.urandom(32), params))
    bob = BitcoinAdapter(RpcBackend(client), HdWallet(os.urandom(32), params))
    litecoind.generate_to_address(110, alice.wallet.address())
    litecoind.activate_soft_forks()
    assert litecoind.block_count() >= CLTV_HEIGHT - 1  # enforced from the next block on
    assert alice.balance() > 0

    def mine(n: int) -> None:
        litecoind.generate_to_address(n, bob.wallet.address())

    _swap_round_trip(alice, bob, mine)


def test_btcd_lock_claim_and_lock_refund(btcd_factory):
    params = chain_params("btc", "regtest")
    alice_wallet = HdWallet(os.urandom(32), params)
    node = btcd_factory(alice_wallet.address())
    client = RpcClient(
        node.rpc_url,
        node.rpc_user,
        node.rpc_password,
        dialect="btcd",
        cert_path=str(node.cert_path),
    )
    alice = BitcoinAdapter(RpcBackend(client), alice_wallet)
    bob = BitcoinAdapter(RpcBackend(client), HdWallet(os.urandom(32), params))
    while node.block_count() < CLTV_HEIGHT + 10:  # also past segwit's BIP9 activation
        node.generate(200)
    assert alice.balance() > 0

    def mine(n: int) -> None:
        node.generate(n)

    _swap_round_trip(alice, bob, mine)
