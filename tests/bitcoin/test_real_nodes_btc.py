"""The Bitcoin adapter against real nodes: litecoind -regtest and btcd --regtest.

Each node: fund the wallet by mining, then lock -> claim (preimage extracted by the other side)
and lock -> refund, the same for the Taproot HTLC (claim leaf, cooperative key path, refund
leaf), plus every rejection the embedded chain is tested for, checked by the node's
own consensus and mempool code: wrong preimage, wrong key, a non-32-byte preimage, premature
refund (nLockTime below the expiry, and the chain not there yet), double spend, immature
coinbase spend.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import replace

import pytest
from bitcointx.core import CBitcoinMutableTransaction as CMutableTransaction
from bitcointx.core import CBitcoinTransaction as CTx
from bitcointx.core import CBitcoinTxInWitness as CTxInWitness
from bitcointx.core import CBitcoinTxWitness as CTxWitness
from bitcointx.core import b2lx
from bitcointx.core.script import CScriptWitness

from kofo.errors import AuditFailed, InvalidInput, TxRejected
from kofo.settlement.chain import (
    BlockHeight,
    HtlcRef,
    HtlcState,
    HtlcTerms,
    SignedTx,
    TxKind,
    UnixTime,
)
from kofo.settlement.chains.bitcoin.adapter import BitcoinAdapter
from kofo.settlement.chains.bitcoin.backend import RpcBackend
from kofo.settlement.chains.bitcoin.blocks import parse_block
from kofo.settlement.chains.bitcoin.params import chain_params
from kofo.settlement.chains.bitcoin.rpc import RpcClient
from kofo.settlement.chains.bitcoin.tx import Utxo, build_funding_tx, build_htlc_spend, dust_limit
from kofo.settlement.chains.bitcoin.wallet import HdWallet
from tests.bitcoin.helpers import pay

pytestmark = [pytest.mark.realnode, pytest.mark.slow]

CLTV_HEIGHT = 1351
"""Both litecoin's and btcd's regtest only enforce BIP65 (CLTV) from this height (the old
Bitcoin Core regtest value they inherited); below it a premature refund is not a consensus
error, so the tests mine past it first."""


# Reject reasons, as litecoind (Core's wording) | btcd word them: each check must fail for its
# own reason, not for a fee or a malformed transaction.
WRONG_PREIMAGE = r"(?i)EQUALVERIFY"
WRONG_KEY = r"(?i)signature must be zero|signature not empty"
LOCKTIME = r"(?i)locktime requirement not satisfied"  # also a 33-byte secret: the size check
# sends it down the refund branch, whose CLTV a claim (nLockTime 0) cannot satisfy
SPENT = r"missing-inputs"
IMMATURE = r"premature-spend-of-coinbase|before required maturity"


def _terms(chain, sender, recipient, expiry, amount=5_000_000, keys=None):
    """HTLC terms with fresh keys of both adapters (each ``address()`` hands out a new key), or
    the ``keys`` (sender, recipient) given, to sign with keys derived once."""
    preimage = os.urandom(32)
    sender_key, recipient_key = keys or (sender.address(), recipient.address())
    terms = HtlcTerms(
        chain=chain,
        payment_hash=hashlib.sha256(preimage).digest(),
        amount=amount,
        sender=sender_key,
        recipient=recipient_key,
        expiry=expiry,
    )
    return terms, preimage


def _refused_or_unmined(alice: BitcoinAdapter, refund, mine, node_refuses: bool) -> None:
    """A refund before its expiry: a Core node refuses it as non-final; btcd's regtest mempool
    may keep it, but no block may include it yet."""
    if node_refuses:
        with pytest.raises(TxRejected, match="non-final"):
            alice.broadcast(refund)
    else:
        try:
            alice.broadcast(refund)
        except TxRejected as exc:
            assert "lock" in str(exc).lower() or "final" in str(exc).lower(), exc
    mine(1)
    assert alice.tx_confirmations(refund.txid) == 0


def _swap_round_trip(
    alice: BitcoinAdapter, bob: BitcoinAdapter, mine, *, node_refuses: bool
) -> None:
    # lock -> claim, with the preimage read back from the chain by the sender
    terms, preimage = _terms(alice.chain, alice, bob, BlockHeight(alice.expiry_now().value + 30))
    ref = alice.lock(terms)
    mine(1)
    assert bob.audit(ref, terms, min_confirmations=1).state is HtlcState.LOCKED
    signed = bob.prepare_redeem(ref, preimage)
    # The same signed claim with another 32-byte "preimage":
    with pytest.raises(TxRejected, match=WRONG_PREIMAGE):
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
    refund = alice.prepare_refund(ref)
    _refused_or_unmined(alice, refund, mine, node_refuses)
    assert alice.status(ref).state in (HtlcState.LOCKED, HtlcState.REFUNDED)
    mine(expiry.value - alice.expiry_now().value)
    alice.broadcast(refund)
    mine(1)
    assert alice.status(ref).state is HtlcState.REFUNDED
    assert alice.tx_confirmations(refund.txid) == 1
    with pytest.raises(InvalidInput):
        bob.prepare_redeem(ref, os.urandom(32))

    _rejections(alice, bob, mine)
    _taproot(alice, bob, mine, node_refuses=node_refuses)
    _fee_bump(alice, bob, mine)
    _child_pays_for_parent(alice, bob, mine)


def _taproot(alice: BitcoinAdapter, bob: BitcoinAdapter, mine, *, node_refuses: bool) -> None:
    """The Taproot HTLC on the node: claim leaf (a wrong secret refused), cooperative key-path
    claim (99 vB, no secret on chain), refund leaf (refused before the expiry)."""

    def p2tr_terms(expiry_in: int) -> tuple[HtlcTerms, bytes]:
        terms, preimage = _terms(
            alice.chain, alice, bob, BlockHeight(alice.expiry_now().value + expiry_in)
        )
        return replace(terms, output="p2tr"), preimage

    terms, preimage = p2tr_terms(30)
    ref = alice.lock(terms)
    mine(1)
    assert bob.audit(ref, terms, min_confirmations=1).state is HtlcState.LOCKED
    with pytest.raises(AuditFailed, match="script"):  # the same fields as P2WSH: not this output
        bob.audit(ref, replace(terms, output=None), min_confirmations=1)
    claim = bob.prepare_redeem(ref, preimage)
    with pytest.raises(TxRejected, match=r"(?i)EQUALVERIFY|script"):
        bob.backend.test_accept(_swap_witness_preimage(claim.raw, preimage, os.urandom(32)))
    bob.broadcast(claim)
    mine(1)
    status = alice.status(ref)
    assert status.state is HtlcState.REDEEMED and status.preimage == preimage
    assert status.spend_confirmations == 1

    terms, preimage = p2tr_terms(30)
    ref = alice.lock(terms)
    mine(1)
    session = bob.begin_cooperative_claim(ref)
    nonce, partial = alice.cosign_cooperative_claim(ref, session.raw, session.nonce)
    key_path = bob.finish_cooperative_claim(session, nonce, partial)
    assert CTx.deserialize(key_path.raw).get_virtual_size() == 99
    assert preimage not in key_path.raw
    bob.broadcast(key_path)
    mine(1)
    status = alice.status(ref)
    assert status.state is HtlcState.REDEEMED and status.spend_txid == key_path.txid
    assert status.spend_confirmations == 1 and status.preimage is None

    expiry_in = 3
    terms, _ = p2tr_terms(expiry_in)
    ref = alice.lock(terms)
    mine(1)
    refund = alice.prepare_refund(ref)
    _refused_or_unmined(alice, refund, mine, node_refuses)
    mine(terms.expiry.value - alice.expiry_now().value)
    alice.broadcast(refund)
    mine(1)
    assert alice.status(ref).state is HtlcState.REFUNDED
    assert alice.tx_confirmations(refund.txid) == 1


def _fee_bump(alice: BitcoinAdapter, bob: BitcoinAdapter, mine) -> None:
    """A claim waiting in the node's mempool is replaced by the adapter's fee bump under the
    node's own BIP125 rules (incremental relay fee included); the bump confirms."""
    terms, preimage = _terms(alice.chain, alice, bob, BlockHeight(alice.expiry_now().value + 30))
    ref = alice.lock(terms)
    mine(1)
    first = bob.prepare_redeem(ref, preimage)
    bob.broadcast(first)
    bumped = bob.prepare_replacement(ref, first, preimage)
    bob.broadcast(bumped)
    pool = {b2lx(CTx.deserialize(raw).GetTxid()) for raw in bob.backend.mempool_raw()}
    assert bumped.txid in pool and first.txid not in pool
    again = bob.prepare_replacement(ref, bumped, preimage)  # and a second generation
    bob.broadcast(again)
    mine(1)
    status = alice.status(ref)
    assert status.state is HtlcState.REDEEMED and status.spend_txid == again.txid
    assert status.preimage == preimage and alice.tx_confirmations(first.txid) == 0


def _child_pays_for_parent(alice: BitcoinAdapter, bob: BitcoinAdapter, mine) -> None:
    """A lock, then a claim, stuck in the node's mempool each get a child paying for both (the
    adapter's CPFP bump; a lock's child spends its change), which the node relays, and its
    block assembler mines each pair as one package.

    On litecoind each parent is first made unminable alone: ``prioritisetransaction`` takes its
    whole fee away in the node's eyes (as a fee rise would), a block is mined without it, and
    only the child's fee brings the package over the block minimum rate. btcd has no
    ``prioritisetransaction``; there the test shows it relays and mines the children."""
    rpc = bob.backend.client  # type: ignore[attr-defined]
    demote = rpc.dialect != "btcd"

    def stuck(adapter: BitcoinAdapter, parent: SignedTx, fee: int) -> None:
        if demote:
            assert rpc.call("prioritisetransaction", parent.txid, 0, -fee) is True
            mine(1)
            assert adapter.tx_confirmations(parent.txid) == 0  # waits: worth nothing alone

    def paid_for(adapter: BitcoinAdapter, ref: HtlcRef, parent: SignedTx) -> SignedTx:
        child = adapter.prepare_child(ref, [parent])
        assert child.kind is TxKind.CHILD
        adapter.broadcast(child)
        if demote:  # the node sees parent + child as one package
            assert rpc.call("getmempoolentry", child.txid)["ancestorcount"] == 2
        mine(1)
        assert adapter.tx_confirmations(parent.txid) == 1
        assert adapter.tx_confirmations(child.txid) == 1
        return child

    terms, preimage = _terms(alice.chain, alice, bob, BlockHeight(alice.expiry_now().value + 30))
    (lock,) = alice.prepare_lock(terms)
    alice.broadcast(lock)
    spent = sum(
        alice.index.txs[b2lx(i.prevout.hash)].tx.vout[i.prevout.n].nValue
        for i in CTx.deserialize(lock.raw).vin
    )
    stuck(alice, lock, spent - sum(o.nValue for o in CTx.deserialize(lock.raw).vout))
    ref = alice.htlc_ref(terms, lock)
    paid_for(alice, ref, lock)

    claim = bob.prepare_redeem(ref, preimage)
    bob.broadcast(claim)
    stuck(bob, claim, terms.amount - sum(o.nValue for o in CTx.deserialize(claim.raw).vout))
    paid_for(bob, ref, claim)
    status = alice.status(ref)
    assert status.state is HtlcState.REDEEMED and status.spend_txid == claim.txid
    assert status.preimage == preimage

    # A lock whose change is too small to pay its child: the child adds a wallet coin, and
    # the node takes the two-input child as paying for the lock.
    carol = BitcoinAdapter(alice.backend, HdWallet(os.urandom(32), alice.params))
    pay(alice, carol.wallet.identity.script_pubkey, [3_000_000, 1_000_000])
    mine(1)
    assert carol.balance() == 4_000_000
    change_left = dust_limit(carol.wallet.identity.script_pubkey, carol.params) + 100
    expiry = BlockHeight(carol.expiry_now().value + 30)
    trial, _ = _terms(carol.chain, carol, bob, expiry, amount=2_000_000)
    (trial_lock,) = carol.prepare_lock(trial)
    trial_fee = 3_000_000 - sum(o.nValue for o in CTx.deserialize(trial_lock.raw).vout)
    carol.release([trial_lock])  # a trial, never sent: its coin may be chosen again
    terms, _ = _terms(carol.chain, carol, bob, expiry, 3_000_000 - trial_fee - change_left)
    (lock,) = carol.prepare_lock(terms)
    assert sorted(o.nValue for o in CTx.deserialize(lock.raw).vout) == [change_left, terms.amount]
    carol.broadcast(lock)
    stuck(carol, lock, trial_fee)
    ref = carol.htlc_ref(terms, lock)
    child = paid_for(carol, ref, lock)
    assert len(CTx.deserialize(child.raw).vin) == 2  # the change and the 1_000_000 coin
    assert carol.status(ref).state is HtlcState.LOCKED


def _spend(
    adapter: BitcoinAdapter,
    ref: HtlcRef,
    key,
    *,
    preimage: bytes | None = None,
    refund_expiry: BlockHeight | None = None,
    pay_to: bytes | None = None,
):
    """A claim (``preimage``) or refund (``refund_expiry``) of ``ref`` signed by ``key``, built
    directly so the test can sign what the adapter never would."""
    txid, vout = ref.locator.split(":")
    return build_htlc_spend(
        txid=txid,
        vout=int(vout),
        amount=ref.terms.amount,
        witness_script=adapter.witness_script(ref.terms),
        key=key,
        destination_script_pubkey=pay_to or adapter.wallet.identity.script_pubkey,
        fee_rate=adapter.estimate_fee().rate,
        params=adapter.params,
        preimage=preimage,
        refund_expiry=refund_expiry,
    )


def _rejections(alice: BitcoinAdapter, bob: BitcoinAdapter, mine) -> None:
    """The rejections of the embedded chain's tests, asked of the real node."""
    far = BlockHeight(alice.expiry_now().value + 100)
    keys = (alice.address(), bob.address())  # one key each, for every HTLC below
    alice_key = alice.wallet.key_for_pubkey(bytes.fromhex(keys[0]))
    bob_key = bob.wallet.key_for_pubkey(bytes.fromhex(keys[1]))

    # A claim signed by the refunder's key, with the right preimage.
    terms, preimage = _terms(alice.chain, alice, bob, far, keys=keys)
    ref = alice.lock(terms)
    mine(1)
    with pytest.raises(TxRejected, match=WRONG_KEY):
        alice.backend.test_accept(_spend(bob, ref, alice_key, preimage=preimage).serialize())

    # A 33-byte secret whose sha256 is the payment hash opens the hash lock but could never
    # open the Ethereum leg: the size check refuses it. The claim is signed with a 32-byte
    # placeholder (a signature does not cover the witness) and the secret swapped in.
    long_secret = os.urandom(33)
    long_terms = HtlcTerms(
        chain=alice.chain,
        payment_hash=hashlib.sha256(long_secret).digest(),
        amount=terms.amount,
        sender=keys[0],
        recipient=keys[1],
        expiry=far,
    )
    long_ref = alice.lock(long_terms)
    mine(1)
    signed = _spend(bob, long_ref, bob_key, preimage=b"\x00" * 32)
    tampered = CMutableTransaction.from_tx(signed)
    sig = signed.wit.vtxinwit[0].scriptWitness.stack[0]
    script = bob.witness_script(long_terms)
    tampered.wit = CTxWitness([CTxInWitness(CScriptWitness([sig, long_secret, script]))])
    with pytest.raises(TxRejected, match=LOCKTIME):
        bob.backend.test_accept(CTx.from_tx(tampered).serialize())

    # Double spend: the claim is mined, then another claim of the same output is refused.
    first = _spend(bob, ref, bob_key, preimage=preimage)
    bob.broadcast(SignedTx(bob.chain, TxKind.REDEEM, b2lx(first.GetTxid()), first.serialize()))
    mine(1)
    assert bob.tx_confirmations(b2lx(first.GetTxid())) == 1
    another_payee = alice.wallet.identity.script_pubkey
    second = _spend(bob, ref, bob_key, preimage=preimage, pay_to=another_payee)
    with pytest.raises(TxRejected, match=SPENT):
        bob.backend.test_accept(second.serialize())

    # A refund whose nLockTime is below the script's expiry, once the chain is past both (so
    # the transaction is final and CLTV itself must refuse it).
    expiry = BlockHeight(alice.expiry_now().value + 2)
    terms, _ = _terms(alice.chain, alice, bob, expiry, keys=keys)
    ref = alice.lock(terms)
    mine(expiry.value - alice.expiry_now().value + 2)
    early = _spend(alice, ref, alice_key, refund_expiry=BlockHeight(expiry.value - 1))
    with pytest.raises(TxRejected, match=LOCKTIME):
        alice.backend.test_accept(early.serialize())

    # Immature coinbase: the output of the block just mined cannot be spent for 100 blocks.
    mine(1)
    tip_hash = alice.backend.block_hash(alice.backend.block_count())
    coinbase = parse_block(alice.backend.block_raw(tip_hash)).txs[0]
    out = coinbase.vout[0]
    owner = next(a.wallet for a in (alice, bob) if bytes(out.scriptPubKey) in a.wallet.scripts())
    young = Utxo(b2lx(coinbase.GetTxid()), 0, int(out.nValue), bytes(out.scriptPubKey))
    spend = build_funding_tx(
        [young],
        owner.key_for_script,
        [(bob.wallet.identity.script_pubkey, 100_000)],
        owner.identity.script_pubkey,
        alice.estimate_fee().rate,
        alice.params,
    )
    with pytest.raises(TxRejected, match=IMMATURE):
        alice.backend.test_accept(spend.serialize())


def _swap_witness_preimage(raw: bytes, old: bytes, new: bytes) -> bytes:
    assert raw.count(old) == 1
    return raw.replace(old, new)


def test_litecoind_lock_claim_and_lock_refund(litecoind):
    params = chain_params("ltc", "regtest")
    client = RpcClient(litecoind.rpc_url, litecoind.rpc_user, litecoind.rpc_password)
    alice = BitcoinAdapter(RpcBackend(client), HdWallet(os.urandom(32), params))
    bob = BitcoinAdapter(RpcBackend(client), HdWallet(os.urandom(32), params))
    litecoind.activate_soft_forks()
    litecoind.fund(alice.wallet.address(), 10 * 10**8)
    assert litecoind.block_count() >= CLTV_HEIGHT - 1  # enforced from the next block on
    assert alice.balance() > 0

    def mine(n: int) -> None:
        litecoind.generate_to_address(n, bob.wallet.address())

    _swap_round_trip(alice, bob, mine, node_refuses=True)
    _time_expiry_refund(litecoind, alice, bob, mine)


def _time_expiry_refund(litecoind, alice: BitcoinAdapter, bob: BitcoinAdapter, mine) -> None:
    """A time expiry (``UnixTime``): litecoind refuses the refund while the tip's median time
    past is not past it (BIP113), and mines it once it is. The node's clock is moved two
    minutes ahead (``setmocktime``) and eleven blocks carry the median past the expiry; the
    clock is given back after."""
    timed = BitcoinAdapter(alice.backend, alice.wallet, expiry_unit=UnixTime)
    start = timed.expiry_now().value
    expiry = UnixTime(start + 60)
    terms, _ = _terms(timed.chain, timed, bob, expiry)
    ref = timed.lock(terms)
    mine(1)
    refund = timed.prepare_refund(ref)
    assert CTx.deserialize(refund.raw).nLockTime == expiry.value
    with pytest.raises(TxRejected, match="non-final"):
        timed.broadcast(refund)
    try:
        litecoind.rpc("setmocktime", max(start, int(time.time())) + 120)
        mine(11)
        assert timed.expiry_now().value > expiry.value
        timed.broadcast(refund)
        mine(1)
    finally:
        litecoind.rpc("setmocktime", 0)
    status = timed.status(ref)
    assert status.state is HtlcState.REFUNDED and status.spend_txid == refund.txid


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

    _swap_round_trip(alice, bob, mine, node_refuses=False)
