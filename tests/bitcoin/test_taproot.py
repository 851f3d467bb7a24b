"""The Taproot HTLC on the embedded chain: every spend is judged by Bitcoin Core's code."""

from __future__ import annotations

import dataclasses
import hashlib
import os

import pytest
from bitcointx.core import (
    CBitcoinMutableTransaction as CMutableTransaction,
)
from bitcointx.core import (
    CBitcoinOutPoint as COutPoint,
)
from bitcointx.core import (
    CBitcoinTransaction as CTransaction,
)
from bitcointx.core import (
    CBitcoinTxIn as CTxIn,
)
from bitcointx.core import (
    CBitcoinTxInWitness as CTxInWitness,
)
from bitcointx.core import (
    CBitcoinTxOut as CTxOut,
)
from bitcointx.core import (
    CBitcoinTxWitness as CTxWitness,
)
from bitcointx.core import (
    b2lx,
    lx,
)
from bitcointx.core.key import CKey
from bitcointx.core.script import (
    SIGVERSION_TAPSCRIPT,
    CScript,
    CScriptWitness,
    SignatureHashSchnorr,
)

from kofo.errors import AuditFailed, InvalidInput, TxRejected
from kofo.settlement.chain import BlockHeight, HtlcState, HtlcTerms
from kofo.settlement.chains.bitcoin.adapter import BitcoinAdapter
from kofo.settlement.chains.bitcoin.backend import EmbeddedBackend
from kofo.settlement.chains.bitcoin.musig import (
    MusigError,
    MusigSigner,
    aggregate_signature,
    verify_partial,
)
from kofo.settlement.chains.bitcoin.taproot import (
    TaprootHtlc,
    build_taproot_htlc,
    build_taproot_spend,
    extract_taproot_preimage,
    read_taproot_spend,
    sign_key_path_spend,
    unsigned_key_path_spend,
)
from kofo.settlement.chains.bitcoin.tx import (
    SpendPath,
    UnrecognisedSpend,
    build_funding_tx,
    p2wpkh_script_pubkey,
)
from kofo.settlement.chains.bitcoin.wallet import HdWallet

from .helpers import coinbase_utxo, new_key, pub, tapscript_sighash

AMOUNT = 1_000_000


@pytest.fixture(scope="module")
def miner(chain):
    key = new_key()
    chain.mine(130, p2wpkh_script_pubkey(pub(key)))
    return key


_next_coin = iter(range(1, 30))


@pytest.fixture
def coin(chain, miner):
    return coinbase_utxo(chain, next(_next_coin))


def _fund(chain, miner, coin, recipient, expiry, secret=None):
    secret = os.urandom(32) if secret is None else secret
    htlc = build_taproot_htlc(hashlib.sha256(secret).digest(), pub(recipient), pub(miner), expiry)
    tx = build_funding_tx(
        [coin],
        lambda _spk: miner,
        [(htlc.script_pubkey, AMOUNT)],
        p2wpkh_script_pubkey(pub(miner)),
        2,
        chain.params,
    )
    txid = chain.send_raw(tx.serialize())
    chain.mine(1, p2wpkh_script_pubkey(pub(miner)))
    return txid, htlc, secret


def _spend(chain, htlc, txid, key, *, preimage=None, refund=False):
    return build_taproot_spend(
        htlc=htlc,
        txid=txid,
        vout=0,
        amount=AMOUNT,
        key=key,
        destination_script_pubkey=p2wpkh_script_pubkey(pub(key)),
        fee_rate=2,
        params=chain.params,
        preimage=preimage,
        refund=refund,
    )


def _with_witness(tx: CTransaction, stack: list[bytes]) -> bytes:
    mutable = CMutableTransaction.from_tx(tx)
    mutable.wit = CTxWitness([CTxInWitness(CScriptWitness(stack))])
    return CTransaction.from_tx(mutable).serialize()


def _stack(tx: CTransaction) -> list[bytes]:
    return [bytes(item) for item in tx.wit.vtxinwit[0].scriptWitness.stack]


def _cosign(htlc: TaprootHtlc, *keys: CKey):
    pubkeys = [htlc.recipient_pubkey, htlc.refund_pubkey]

    def sign(msg: bytes) -> bytes:
        signers = [MusigSigner(k.secret_bytes, pubkeys, htlc.tweak) for k in keys]
        nonces = [s.public_nonce(msg) for s in signers]
        partials = [s.partial_sign(msg, nonces) for s in signers]
        return aggregate_signature(pubkeys, msg, nonces, partials, htlc.tweak)

    return sign


def test_claim_leaf_with_the_preimage_confirms_and_reveals_it(chain, miner, coin):
    recipient = new_key()
    txid, htlc, secret = _fund(chain, miner, coin, recipient, BlockHeight(chain.height() + 50))
    claim = _spend(chain, htlc, txid, recipient, preimage=secret)
    chain.send_raw(claim.serialize())
    chain.mine(1, p2wpkh_script_pubkey(pub(miner)))
    seen = chain.find_tx(b2lx(claim.GetTxid()))
    assert seen is not None and seen.height == chain.height()
    assert extract_taproot_preimage(seen.tx, txid, 0, htlc) == secret


def test_taproot_claim_with_a_wrong_preimage_is_rejected(chain, miner, coin):
    recipient = new_key()
    txid, htlc, _ = _fund(chain, miner, coin, recipient, BlockHeight(chain.height() + 50))
    with pytest.raises(TxRejected, match="script verification"):
        chain.send_raw(_spend(chain, htlc, txid, recipient, preimage=os.urandom(32)).serialize())


@pytest.mark.parametrize("size", [31, 33])
def test_taproot_claim_with_a_preimage_of_the_wrong_size_is_rejected(chain, miner, coin, size):
    # The secret holder made the payment hash from a 31/33-byte secret: the hash lock opens,
    # the size check must not (the Ethereum leg only takes 32 bytes). Tapscript signatures do
    # not cover the witness, so the signed 32-byte placeholder is swapped for the real secret.
    recipient = new_key()
    secret = os.urandom(size)
    txid, htlc, _ = _fund(chain, miner, coin, recipient, BlockHeight(10_000), secret=secret)
    claim = _spend(chain, htlc, txid, recipient, preimage=b"\x00" * 32)
    sig, _, leaf, control = _stack(claim)
    with pytest.raises(TxRejected, match="script verification"):
        chain.send_raw(_with_witness(claim, [sig, secret, leaf, control]))


def test_taproot_claim_signed_by_the_refund_key_is_rejected(chain, miner, coin):
    recipient = new_key()
    txid, htlc, secret = _fund(chain, miner, coin, recipient, BlockHeight(chain.height() + 50))
    with pytest.raises(TxRejected, match="script verification"):
        chain.send_raw(_spend(chain, htlc, txid, miner, preimage=secret).serialize())


def test_taproot_claim_signed_by_a_stranger_is_rejected(chain, miner, coin):
    recipient = new_key()
    txid, htlc, secret = _fund(chain, miner, coin, recipient, BlockHeight(chain.height() + 50))
    with pytest.raises(TxRejected, match="script verification"):
        chain.send_raw(_spend(chain, htlc, txid, new_key(), preimage=secret).serialize())


def test_refund_leaf_before_expiry_is_rejected_then_confirms_at_expiry(chain, miner, coin):
    recipient = new_key()
    expiry = BlockHeight(chain.height() + 5)
    txid, htlc, _ = _fund(chain, miner, coin, recipient, expiry)
    refund = _spend(chain, htlc, txid, miner, refund=True)
    with pytest.raises(TxRejected, match="non-final"):
        chain.send_raw(refund.serialize())
    chain.mine(expiry.value - chain.height(), p2wpkh_script_pubkey(pub(miner)))
    chain.send_raw(refund.serialize())
    chain.mine(1, p2wpkh_script_pubkey(pub(miner)))
    seen = chain.find_tx(b2lx(refund.GetTxid()))
    assert seen is not None and seen.block_hash is not None
    assert extract_taproot_preimage(seen.tx, txid, 0, htlc) is None


def test_refund_leaf_with_nlocktime_below_the_expiry_is_rejected(chain, miner, coin):
    recipient = new_key()
    expiry = BlockHeight(chain.height() + 2)
    txid, htlc, _ = _fund(chain, miner, coin, recipient, expiry)
    chain.mine(5, p2wpkh_script_pubkey(pub(miner)))  # the chain is past the expiry
    # A correctly signed refund whose nLockTime is one block short: CLTV must refuse it.
    early = CMutableTransaction.from_tx(_spend(chain, htlc, txid, miner, refund=True))
    early.nLockTime = expiry.value - 1
    sighash = SignatureHashSchnorr(
        early,
        0,
        [CTxOut(AMOUNT, CScript(htlc.script_pubkey))],
        sigversion=SIGVERSION_TAPSCRIPT,
        tapleaf_hash=htlc.leaf_hash("refund"),
    )
    stack = [miner.sign_schnorr_no_tweak(sighash), htlc.refund_leaf, htlc.control_block("refund")]
    with pytest.raises(TxRejected, match="script verification"):
        chain.send_raw(_with_witness(CTransaction.from_tx(early), stack))


def test_taproot_refund_signed_by_the_recipient_is_rejected(chain, miner, coin):
    recipient = new_key()
    expiry = BlockHeight(chain.height() + 1)
    txid, htlc, _ = _fund(chain, miner, coin, recipient, expiry)
    chain.mine(2, p2wpkh_script_pubkey(pub(miner)))
    with pytest.raises(TxRejected, match="script verification"):
        chain.send_raw(_spend(chain, htlc, txid, recipient, refund=True).serialize())


def test_claim_witness_with_the_refund_leaf_control_block_is_rejected(chain, miner, coin):
    recipient = new_key()
    txid, htlc, secret = _fund(chain, miner, coin, recipient, BlockHeight(chain.height() + 50))
    claim = _spend(chain, htlc, txid, recipient, preimage=secret)
    sig, preimage, leaf, _ = _stack(claim)
    with pytest.raises(TxRejected, match="script verification"):
        chain.send_raw(_with_witness(claim, [sig, preimage, leaf, htlc.control_block("refund")]))


def test_claim_witness_with_an_extra_item_is_rejected(chain, miner, coin):
    # Tapscript demands exactly one item left on the stack: a malleated witness that adds an
    # item (it would change the wtxid and the fee rate) is refused.
    recipient = new_key()
    txid, htlc, secret = _fund(chain, miner, coin, recipient, BlockHeight(chain.height() + 50))
    claim = _spend(chain, htlc, txid, recipient, preimage=secret)
    sig, preimage, leaf, control = _stack(claim)
    with pytest.raises(TxRejected, match="script verification"):
        chain.send_raw(_with_witness(claim, [b"\x01", sig, preimage, leaf, control]))


def _key_path_claim(chain, txid: str, recipient: CKey):
    return unsigned_key_path_spend(
        txid=txid,
        vout=0,
        amount=AMOUNT,
        destination_script_pubkey=p2wpkh_script_pubkey(pub(recipient)),
        fee_rate=2,
        params=chain.params,
    )


def test_cooperative_key_path_claim_confirms_without_revealing_the_preimage(chain, miner, coin):
    recipient = new_key()
    txid, htlc, _ = _fund(chain, miner, coin, recipient, BlockHeight(chain.height() + 50))
    spend = sign_key_path_spend(
        htlc, _key_path_claim(chain, txid, recipient), AMOUNT, _cosign(htlc, recipient, miner)
    )
    assert len(_stack(spend)) == 1 and len(_stack(spend)[0]) == 64
    chain.send_raw(spend.serialize())
    chain.mine(1, p2wpkh_script_pubkey(pub(miner)))
    seen = chain.find_tx(b2lx(spend.GetTxid()))
    assert seen is not None and seen.block_hash is not None
    assert extract_taproot_preimage(seen.tx, txid, 0, htlc) is None


def test_key_path_signed_by_one_party_alone_is_rejected(chain, miner, coin):
    recipient = new_key()
    txid, htlc, _ = _fund(chain, miner, coin, recipient, BlockHeight(chain.height() + 50))
    spend = sign_key_path_spend(
        htlc,
        _key_path_claim(chain, txid, recipient),
        AMOUNT,
        lambda msg: recipient.sign_schnorr_no_tweak(msg),
    )
    with pytest.raises(TxRejected, match="script verification"):
        chain.send_raw(spend.serialize())


def test_musig_partial_signature_from_a_cheater_is_detected():
    a, b = new_key(), new_key()
    pubkeys = [pub(a), pub(b)]
    msg = os.urandom(32)
    sa, sb = MusigSigner(a.secret_bytes, pubkeys), MusigSigner(b.secret_bytes, pubkeys)
    nonces = [sa.public_nonce(msg), sb.public_nonce(msg)]
    honest = sa.partial_sign(msg, nonces)
    assert verify_partial(pubkeys, pub(a), msg, nonces, 0, honest)
    forged = bytes(32 - 1) + b"\x07"
    assert not verify_partial(pubkeys, pub(b), msg, nonces, 1, forged)


def test_musig_secret_nonce_cannot_sign_twice():
    a, b = new_key(), new_key()
    pubkeys = [pub(a), pub(b)]
    msg = os.urandom(32)
    sa, sb = MusigSigner(a.secret_bytes, pubkeys), MusigSigner(b.secret_bytes, pubkeys)
    nonces = [sa.public_nonce(msg), sb.public_nonce(msg)]
    sa.partial_sign(msg, nonces)
    with pytest.raises(MusigError, match="no unused nonce"):
        sa.partial_sign(os.urandom(32), nonces)


def test_musig_signer_repr_shows_no_secret():
    key = new_key()
    signer = MusigSigner(key.secret_bytes, [pub(key), pub(new_key())])
    assert key.secret_bytes.hex() not in repr(signer)


def test_taproot_htlc_refuses_the_same_key_on_both_sides():
    key = new_key()
    with pytest.raises(InvalidInput, match="different keys"):
        build_taproot_htlc(b"\x00" * 32, pub(key), pub(key), BlockHeight(100))


# ---- the adapter with terms naming output="p2tr" -----------------------------------------


@pytest.fixture(scope="module")
def parties(chain, miner):
    backend = EmbeddedBackend(chain)
    regtest = chain.params
    alice = BitcoinAdapter(backend, HdWallet(b"\x1a" * 32, regtest), htlc_kind="p2tr")
    bob = BitcoinAdapter(backend, HdWallet(b"\x1b" * 32, regtest), htlc_kind="p2tr")
    backend.mine(1, alice.wallet.address())
    backend.mine(100, bob.wallet.address())
    return alice, bob


def _terms(alice, bob, expiry):
    secret = os.urandom(32)
    return (
        HtlcTerms(
            chain="btc",
            payment_hash=hashlib.sha256(secret).digest(),
            amount=300_000,
            sender=alice.address(),
            recipient=bob.address(),
            expiry=expiry,
            output="p2tr",
        ),
        secret,
    )


def test_adapter_p2tr_lock_audit_redeem_reports_the_preimage(parties):
    alice, bob = parties
    terms, secret = _terms(alice, bob, BlockHeight(alice.expiry_now().value + 20))
    ref = alice.lock(terms)
    alice.backend.mine(1, alice.wallet.address())
    assert bob.find_htlc(terms) == ref
    assert bob.audit(ref, terms, min_confirmations=1).confirmations == 1
    redeem = bob.prepare_redeem(ref, secret)
    bob.broadcast(redeem)
    alice.backend.mine(1, alice.wallet.address())
    status = alice.status(ref)
    assert status.state is HtlcState.REDEEMED and status.preimage == secret
    assert status.spend_txid == redeem.txid


def test_adapter_p2tr_refund_after_expiry(parties):
    alice, bob = parties
    expiry = BlockHeight(alice.expiry_now().value + 3)
    terms, _ = _terms(alice, bob, expiry)
    ref = alice.lock(terms)
    alice.backend.mine(1, alice.wallet.address())
    refund = alice.prepare_refund(ref)
    with pytest.raises(TxRejected, match="non-final"):
        alice.broadcast(refund)
    alice.backend.mine(expiry.value - alice.expiry_now().value, alice.wallet.address())
    alice.broadcast(refund)
    alice.backend.mine(1, alice.wallet.address())
    status = alice.status(ref)
    assert status.state is HtlcState.REFUNDED and status.preimage is None


def test_an_audit_of_p2wsh_terms_refuses_a_p2tr_lock_of_the_same_fields(parties):
    alice, bob = parties
    terms, _ = _terms(alice, bob, BlockHeight(alice.expiry_now().value + 20))
    ref = alice.lock(terms)
    alice.backend.mine(1, alice.wallet.address())
    with pytest.raises(AuditFailed, match="script"):
        bob.audit(ref, dataclasses.replace(terms, output=None), min_confirmations=1)
    # The form comes from the terms, not from the auditor's own htlc_kind.
    p2wsh_bob = BitcoinAdapter(bob.backend, bob.wallet)
    assert p2wsh_bob.audit(ref, terms, min_confirmations=1).confirmations == 1


def test_adapter_rejects_an_unknown_htlc_kind(chain, parties):
    with pytest.raises(InvalidInput, match="htlc_kind"):
        BitcoinAdapter(
            EmbeddedBackend(chain), HdWallet(b"\x1c" * 32, chain.params), htlc_kind="p2sh"
        )
    alice, bob = parties
    terms, _ = _terms(alice, bob, BlockHeight(alice.expiry_now().value + 20))
    with pytest.raises(InvalidInput, match=r"terms\.output must be one of p2wsh, p2tr") as err:
        alice.prepare_lock(dataclasses.replace(terms, output="p2sh"))
    assert err.value.code == "bad_output"


# ---- a spend is read by what it proves (issue 16, case 11) -------------------------------


def _claim_with_annex(
    htlc: TaprootHtlc, claim: CTransaction, amount: int, key: CKey, annex: bytes
) -> bytes:
    """``claim`` (through the claim leaf) with a BIP341 annex appended, signed over it."""
    _, preimage, leaf, control = _stack(claim)
    spk, leaf_hash = htlc.script_pubkey, htlc.leaf_hash("claim")
    # The hand-written sighash matches the library's where the library is right (no annex).
    plain = SignatureHashSchnorr(
        claim,
        0,
        [CTxOut(amount, CScript(spk))],
        sigversion=SIGVERSION_TAPSCRIPT,
        tapleaf_hash=leaf_hash,
    )
    assert tapscript_sighash(claim, amount, spk, leaf_hash) == plain
    signed = key.sign_schnorr_no_tweak(tapscript_sighash(claim, amount, spk, leaf_hash, annex))
    return _with_witness(claim, [signed, preimage, leaf, control, annex])


def test_a_claim_with_an_annex_is_read_as_a_claim_and_yields_the_secret(parties):
    """The claim leaf spent with ``[sig, preimage, leaf, control, annex]`` is valid under
    consensus (Bitcoin Core's kernel mines it); it was read as a refund with no secret, so the
    participant never learnt the preimage and lost its counter leg."""
    alice, bob = parties
    terms, secret = _terms(alice, bob, BlockHeight(alice.expiry_now().value + 20))
    ref = alice.lock(terms)
    alice.backend.mine(1, alice.wallet.address())
    claim = CTransaction.deserialize(bob.prepare_redeem(ref, secret).raw)
    htlc = bob.taproot_htlc(terms)
    key = bob.wallet.key_for_pubkey(htlc.recipient_pubkey)
    raw = _claim_with_annex(htlc, claim, terms.amount, key, b"\x50" + os.urandom(20))
    alice.backend.chain.send_raw(raw)  # the embedded mempool checks consensus, not relay policy
    alice.backend.mine(1, alice.wallet.address())
    mined = CTransaction.deserialize(raw)
    assert alice.tx_confirmations(b2lx(mined.GetTxid())) == 1
    status = alice.status(ref)
    assert status.state is HtlcState.REDEEMED
    assert status.preimage == secret


def test_taproot_spends_are_read_by_leaf_and_control_block_not_by_size():
    """Each witness is read as BIP341 reads it; an annex changes nothing, and a spend that is
    none of the HTLC's own paths is an alarm, never a refund."""
    recipient, refunder, secret = new_key(), new_key(), os.urandom(32)
    htlc = build_taproot_htlc(
        hashlib.sha256(secret).digest(), pub(recipient), pub(refunder), BlockHeight(500)
    )
    other = build_taproot_htlc(bytes(32), pub(recipient), pub(refunder), BlockHeight(500))
    txid = "ab" * 32
    spend = _spend_stub(txid)
    sig, annex = bytes(64), b"\x50\x00"
    claim = [sig, secret, htlc.claim_leaf, htlc.control_block("claim")]
    refund = [sig, htlc.refund_leaf, htlc.control_block("refund")]

    def read(stack):
        return read_taproot_spend(
            CTransaction.deserialize(_with_witness(spend, stack)), txid, 0, htlc
        )

    for stack in (claim, [*claim, annex]):
        found = read(stack)
        assert found.path is SpendPath.CLAIM and found.preimage == secret
    for stack in (refund, [*refund, annex]):
        assert read(stack).path is SpendPath.REFUND
    for stack in ([sig], [sig, annex], [sig + b"\x01"]):
        assert read(stack).path is SpendPath.KEY_PATH
    forged = [
        [sig, secret, htlc.claim_leaf, htlc.control_block("refund")],  # wrong control block
        [sig, other.refund_leaf, other.control_block("refund")],  # another HTLC's leaf
        [sig, bytes(32), htlc.claim_leaf, htlc.control_block("claim")],  # secret does not open
        [sig, htlc.refund_leaf, htlc.control_block("refund")[:-1]],  # truncated control
        [bytes(63)],  # no key-path signature has 63 bytes
        [annex, annex],  # an annex and nothing it annexes
    ]
    for stack in forged:
        with pytest.raises(UnrecognisedSpend):
            read(stack)
    assert (
        read_taproot_spend(
            CTransaction.deserialize(_with_witness(spend, claim)), "cd" * 32, 0, htlc
        )
        is None
    )


def _spend_stub(txid: str) -> CTransaction:
    tx = CMutableTransaction(
        [CTxIn(COutPoint(lx(txid), 0))], [CTxOut(1000, CScript(b"\x51"))], nVersion=2
    )
    return CTransaction.from_tx(tx)
