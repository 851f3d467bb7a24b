"""The adapter end to end on the embedded chain, reached over the Core JSON-RPC dialect."""

from __future__ import annotations

import hashlib
import os

import pytest
from bitcointx.core import CBitcoinMutableTransaction as CMutableTransaction
from bitcointx.core import CBitcoinTransaction as CTransaction
from bitcointx.core import CBitcoinTxInWitness as CTxInWitness
from bitcointx.core import CBitcoinTxWitness as CTxWitness
from bitcointx.core.script import CScriptWitness

from kofo.errors import AuditFailed, ConfigError, InsufficientFunds, InvalidInput, WalletError
from kofo.settlement import keystore
from kofo.settlement.chain import (
    BlockHeight,
    ChainAdapter,
    HtlcRef,
    HtlcState,
    HtlcTerms,
)
from kofo.settlement.chains.bitcoin.adapter import BitcoinAdapter
from kofo.settlement.chains.bitcoin.backend import EmbeddedBackend
from kofo.settlement.chains.bitcoin.params import chain_params
from kofo.settlement.chains.bitcoin.rpc import RpcClient
from kofo.settlement.chains.bitcoin.tx import HtlcSpend, SpendPath, UnrecognisedSpend
from kofo.settlement.chains.bitcoin.wallet import HdWallet
from tests.bitcoin.conftest import REGTEST


def _terms(sender, recipient, expiry, amount=250_000, preimage=None):
    preimage = preimage or os.urandom(32)
    return (
        HtlcTerms(
            chain="btc",
            payment_hash=hashlib.sha256(preimage).digest(),
            amount=amount,
            sender=sender.address(),
            recipient=recipient.address(),
            expiry=expiry,
        ),
        preimage,
    )


def test_adapter_satisfies_the_chain_adapter_protocol(alice):
    assert isinstance(alice, ChainAdapter)


def test_lock_audit_claim_and_extract_preimage(alice, bob):
    terms, preimage = _terms(alice, bob, BlockHeight(alice.expiry_now().value + 20))
    ref = alice.lock(terms)
    assert bob.status(ref).state is HtlcState.LOCKED
    with pytest.raises(AuditFailed, match="confirmations"):
        bob.audit(ref, terms, min_confirmations=1)
    alice.backend.mine(1, alice.wallet.address())
    assert bob.find_htlc(terms) == ref
    assert bob.audit(ref, terms, min_confirmations=1).confirmations == 1
    bob.audit_script(ref, bob.witness_script(terms), terms)
    redeem = bob.prepare_redeem(ref, preimage)
    assert bob.broadcast(redeem) == redeem.txid
    assert bob.broadcast(redeem) == redeem.txid  # idempotent
    seen = alice.status(ref)
    assert seen.state is HtlcState.REDEEMED and seen.preimage == preimage
    alice.backend.mine(1, alice.wallet.address())
    confirmed = alice.status(ref)
    assert confirmed.spend_txid == redeem.txid and confirmed.spend_confirmations == 1
    assert confirmed.preimage == preimage


def test_lock_then_refund_after_expiry(alice, bob):
    expiry = BlockHeight(alice.expiry_now().value + 3)
    terms, _ = _terms(alice, bob, expiry)
    ref = alice.lock(terms)
    alice.backend.mine(1, alice.wallet.address())
    refund = alice.prepare_refund(ref)
    with pytest.raises(Exception, match="non-final"):
        alice.broadcast(refund)
    alice.backend.mine(expiry.value - alice.expiry_now().value, alice.wallet.address())
    assert alice.expiry_now() >= expiry
    alice.broadcast(refund)
    alice.backend.mine(1, alice.wallet.address())
    status = alice.status(ref)
    assert status.state is HtlcState.REFUNDED and status.preimage is None
    assert alice.tx_confirmations(refund.txid) == 1


def test_audit_names_the_amount_that_differs(alice, bob):
    terms, _ = _terms(alice, bob, BlockHeight(alice.expiry_now().value + 20))
    ref = alice.lock(terms)
    alice.backend.mine(1, alice.wallet.address())
    wanted = HtlcTerms(**{**_fields(terms), "amount": terms.amount + 1})
    with pytest.raises(AuditFailed, match="amount"):
        bob.audit(ref, wanted, min_confirmations=1)


def test_audit_script_names_the_expiry_that_differs(alice, bob):
    terms, _ = _terms(alice, bob, BlockHeight(alice.expiry_now().value + 20))
    ref = alice.lock(terms)
    alice.backend.mine(1, alice.wallet.address())
    wanted = HtlcTerms(**{**_fields(terms), "expiry": BlockHeight(terms.expiry.value + 1)})
    with pytest.raises(AuditFailed, match="script"):
        bob.audit(ref, wanted, min_confirmations=1)
    with pytest.raises(AuditFailed, match="expiry"):
        bob.audit_script(ref, bob.witness_script(terms), wanted)


def test_redeem_with_a_wrong_preimage_is_refused_before_signing(alice, bob):
    terms, _ = _terms(alice, bob, BlockHeight(alice.expiry_now().value + 20))
    ref = alice.lock(terms)
    with pytest.raises(InvalidInput, match="payment_hash"):
        bob.prepare_redeem(ref, os.urandom(32))


def test_lock_larger_than_the_balance_raises_insufficient_funds(alice, bob):
    terms, _ = _terms(alice, bob, BlockHeight(10_000), amount=alice.balance() + 1)
    with pytest.raises(InsufficientFunds, match="wallet holds"):
        alice.prepare_lock(terms)


def test_tip_and_block_at_agree(alice):
    tip = alice.tip()
    assert alice.block_at(tip.height) == tip
    assert tip.time > 0


def test_fee_estimate_falls_back_and_respects_the_relay_minimum(alice):
    assert alice.estimate_fee().rate >= REGTEST.min_relay_fee_rate


def test_wrong_rpc_password_is_a_config_error(server):
    client = RpcClient(server.url, "kofo", "wrong")
    with pytest.raises(ConfigError, match="user/password"):
        client.call("getblockcount")


def test_reorg_drops_a_lock_to_zero_confirmations(chain, alice, bob):
    terms, _ = _terms(alice, bob, BlockHeight(alice.expiry_now().value + 20))
    fork_point = chain.block_hash(chain.height())
    ref = alice.lock(terms)
    alice.backend.mine(1, alice.wallet.address())
    assert alice.tx_confirmations(ref.lock_txid) == 1
    chain.mine(2, b"\x51", parent=fork_point)  # a longer competing branch without the lock
    assert alice.tx_confirmations(ref.lock_txid) == 0
    assert alice.status(ref).state is HtlcState.LOCKED  # back in the mempool
    alice.backend.mine(1, alice.wallet.address())
    assert alice.tx_confirmations(ref.lock_txid) == 1


def test_a_lock_too_small_to_claim_or_refund_is_refused_by_name(alice, bob):
    """Below dust + 141 vB at the relay minimum no fee market makes the lock spendable. (At
    today's estimate the floor is higher: that is decided on the terms, ``min_amount``.)"""
    terms, _ = _terms(alice, bob, BlockHeight(alice.expiry_now().value + 20), amount=434)
    with pytest.raises(InvalidInput, match="amount 434 is too small to lock") as err:
        alice.prepare_lock(terms)
    assert err.value.code == "amount_too_small"
    assert alice.min_amount(terms) == 576  # 294 dust + 141 vB x the 2 sat/vB estimate
    ok, _ = _terms(alice, bob, BlockHeight(alice.expiry_now().value + 20), amount=435)
    assert alice.prepare_lock(ok)


def test_a_fee_estimate_above_the_ceiling_is_lowered_to_it(chain, alice):
    chain.set_block_min_fee_rate(50_000)  # the node's estimate follows it
    try:
        assert alice.estimate_fee().rate == alice.params.max_fee_rate == 10_000
    finally:
        chain.set_block_min_fee_rate(0)
    assert alice.estimate_fee().rate == 2


def test_a_claim_whose_secret_is_not_the_payment_hash_in_full_yields_no_secret(
    alice, bob, monkeypatch
):
    """HASH160 checks 160 bits of sha256(preimage): a claim with a colliding secret (stood in
    for here, a RIPEMD160 collision costs ~2^80) is a claim, but its secret opens no other leg
    and must not be handed to the swap as one."""
    from kofo.settlement.chains.bitcoin import adapter as adapter_module

    terms, preimage = _terms(alice, bob, BlockHeight(alice.expiry_now().value + 20))
    ref = alice.lock(terms)
    bob.broadcast(bob.prepare_redeem(ref, preimage))
    assert alice.status(ref).preimage == preimage
    colliding = bytes(32)
    monkeypatch.setattr(
        adapter_module, "read_htlc_spend", lambda *_a: HtlcSpend(SpendPath.CLAIM, colliding)
    )
    seen = alice.status(ref)
    assert seen.state is HtlcState.REDEEMED and seen.preimage is None


@pytest.mark.parametrize("locator", ["ab" * 32 + ":\u00b2", "zz" * 32 + ":0", "ab" * 32 + ":"])
def test_a_malformed_locator_is_refused_by_name(alice, locator):
    terms, _ = _terms(alice, alice, BlockHeight(alice.expiry_now().value + 20))
    with pytest.raises(InvalidInput, match="locator must be txid:vout"):
        alice.status(HtlcRef(terms, locator, locator[:64]))


def _restacked(raw: bytes, stack: list[bytes]) -> bytes:
    tx = CMutableTransaction.from_tx(CTransaction.deserialize(raw))
    tx.wit = CTxWitness([CTxInWitness(CScriptWitness(stack))])
    return CTransaction.from_tx(tx).serialize()


def _witness(raw: bytes) -> list[bytes]:
    return [bytes(i) for i in CTransaction.deserialize(raw).wit.vtxinwit[0].scriptWitness.stack]


class _MempoolWith:
    """A lying backend: its mempool also holds ``extra`` (a transaction no node would take)."""

    def __init__(self, backend, extra: bytes) -> None:
        self.backend, self.extra = backend, extra

    def __getattr__(self, name: str):
        return getattr(self.backend, name)

    def mempool_raw(self) -> list[bytes]:
        return [*self.backend.mempool_raw(), self.extra]


@pytest.mark.parametrize(
    "forged", ["other-script", "wrong-secret", "no-witness", "no-arguments", "unsigned-refund"]
)
def test_a_spend_that_proves_neither_branch_is_an_alarm_not_a_refund(alice, bob, forged):
    """A node showing a spend of the HTLC that no valid transaction could be (here: in its
    mempool) must not end the swap as refunded: the adapter raises UnrecognisedSpend."""
    terms, preimage = _terms(alice, bob, BlockHeight(alice.expiry_now().value + 20))
    ref = alice.lock(terms)
    alice.backend.mine(1, alice.wallet.address())
    claim = bob.prepare_redeem(ref, preimage).raw
    sig, _, script = _witness(claim)
    other = bob.witness_script(_terms(alice, bob, terms.expiry)[0])
    stack = {
        "other-script": [sig, other],
        "wrong-secret": [sig, bytes(32), script],
        "no-witness": [],
        "no-arguments": [script],
        # Refund-shaped, but no key signed it: only Core's script interpreter tells.
        "unsigned-refund": [bytes(71), script],
    }[forged]
    liar = BitcoinAdapter(_MempoolWith(bob.backend, _restacked(claim, stack)), bob.wallet)
    with pytest.raises(UnrecognisedSpend) as err:
        liar.status(ref)
    assert err.value.code == "htlc_spend_unrecognised"
    assert preimage.hex() not in str(err.value)


class _ReorgWhileRead:
    """A backend whose chain reorganises at the moment the sync asks for the hash at ``at``:
    the block count it read before is stale by then."""

    def __init__(self, backend: EmbeddedBackend, chain, at: int, fork: str) -> None:
        self.backend, self.chain, self.at, self.fork = backend, chain, at, fork
        self.reorged = False

    def __getattr__(self, name: str):
        return getattr(self.backend, name)

    def block_hash(self, height: int) -> str:
        if height == self.at and not self.reorged:
            self.reorged = True
            self.chain.mine(3, b"\x51", parent=self.fork)
        return self.backend.block_hash(height)


def test_a_reorg_while_the_index_reads_new_blocks_leaves_no_stale_block(chain):
    """The index is at the fork point; two blocks follow; while the sync reads the second, a
    three-block branch from the fork point wins. Every block in the index must be the chain's
    (a block off the best chain would keep confirming what it holds)."""
    backend = EmbeddedBackend(chain)
    adapter = BitcoinAdapter(backend, HdWallet(os.urandom(32), REGTEST))
    adapter.index.sync()
    fork = chain.block_hash(chain.height())
    chain.mine(2, b"\x51")
    racy = _ReorgWhileRead(backend, chain, chain.height(), fork)
    adapter.index.backend = racy  # type: ignore[assignment]
    adapter.index.sync()
    assert racy.reorged
    index = adapter.index
    assert index.height() == chain.height()
    stale = [
        index.start_height + i
        for i, h in enumerate(index.hashes)
        if h != chain.block_hash(index.start_height + i)
    ]
    assert stale == []


def test_in_process_backend_sees_the_same_chain(chain, alice):
    direct = BitcoinAdapter(EmbeddedBackend(chain), HdWallet(b"\x0a" * 32, REGTEST))
    assert direct.tip() == alice.tip()
    assert direct.balance() == alice.balance()


def test_keystore_round_trip_and_wrong_passphrase(tmp_path):
    path = tmp_path / "seed.json"
    seed = os.urandom(32)
    keystore.save_secret(path, seed, "correct horse", n=2**17)
    assert keystore.load_secret(path, "correct horse") == seed
    assert seed.hex() not in path.read_text()
    with pytest.raises(WalletError, match="wrong passphrase"):
        keystore.load_secret(path, "wrong")
    wallet = HdWallet.open(path, "correct horse", REGTEST)
    assert wallet.identity.pubkey == HdWallet(seed, REGTEST).identity.pubkey
    assert seed.hex() not in repr(wallet)


def test_wallet_uses_bip84_test_network_paths():
    wallet = HdWallet(b"\x01" * 32, REGTEST)
    assert wallet.identity.path == "m/84'/1'/0'/0/0"
    assert wallet.address().startswith("bcrt1q")


def test_wallet_derives_the_bip84_reference_vectors():
    """BIP84's test vectors: mnemonic "abandon x 11, about", no passphrase (its BIP39 seed is
    PBKDF2-HMAC-SHA512 over the mnemonic, salt "mnemonic", 2048 rounds)."""
    mnemonic = " ".join(["abandon"] * 11 + ["about"])
    seed = hashlib.pbkdf2_hmac("sha512", mnemonic.encode(), b"mnemonic", 2048)
    wallet = HdWallet(seed, chain_params("btc", "mainnet"))
    vectors = {
        (0, 0): "bc1qcr8te4kr609gcawutmrza0j4xv80jy8z306fyu",
        (0, 1): "bc1qnjg0jd8228aq7egyzacy8cys3knf9xvrerkf9g",
        (1, 0): "bc1q8c6fshw2dlwun7ekn9qwf37cu2rn755upcp6el",
    }
    for (branch, index), address in vectors.items():
        key = wallet.key(branch, index)
        assert key.path == f"m/84'/0'/0'/{branch}/{index}"
        assert wallet.address(key.script_pubkey) == address
    assert wallet.identity.pubkey.hex() == (
        "0330d54fd0dd420a6e5f8d3624f5f3482cae350f79d5f0753bf5beef9c2d91af3c"
    )


def _fields(terms: HtlcTerms) -> dict[str, object]:
    return {
        "chain": terms.chain,
        "payment_hash": terms.payment_hash,
        "amount": terms.amount,
        "sender": terms.sender,
        "recipient": terms.recipient,
        "expiry": terms.expiry,
    }


def _with_unseen_input(raw: bytes, stack: list[bytes]) -> bytes:
    """``raw`` with the HTLC input's witness set to ``stack`` and a second input spending an
    output no chain or mempool holds (so no script interpreter can run on the spend)."""
    from bitcointx.core import COutPoint, CTxIn

    tx = CMutableTransaction.from_tx(CTransaction.deserialize(raw))
    tx.vin.append(CTxIn(COutPoint(os.urandom(32), 0)))
    tx.wit = CTxWitness(
        [CTxInWitness(CScriptWitness(stack)), CTxInWitness(CScriptWitness([bytes(72)]))]
    )
    return CTransaction.from_tx(tx).serialize()


def test_a_forged_refund_with_an_input_nobody_can_see_is_not_believed(alice, bob):
    """Review (lying node): the interpreter check of a mempool spend was skipped when one of the
    spend's inputs was on no chain the adapter follows, and the witness was then read by its
    shape. A node that adds an input of a made-up transaction to an unsigned refund made the
    HTLC look refunded (the engine then gives up its redeem). A spend seen only in a mempool
    that cannot be checked proves nothing: the HTLC still reads as locked."""
    terms, preimage = _terms(alice, bob, BlockHeight(alice.expiry_now().value + 20))
    ref = alice.lock(terms)
    alice.backend.mine(1, alice.wallet.address())
    claim = bob.prepare_redeem(ref, preimage).raw
    _, _, script = _witness(claim)
    forged = _with_unseen_input(claim, [bytes(71), script])
    liar = BitcoinAdapter(_MempoolWith(bob.backend, forged), bob.wallet)
    seen = liar.status(ref)
    assert seen.state is HtlcState.LOCKED and seen.spend_txid is None
    # A real claim that cannot be checked either still yields its secret (it proves itself).
    revealing = _with_unseen_input(claim, _witness(claim))
    liar = BitcoinAdapter(_MempoolWith(bob.backend, revealing), bob.wallet)
    seen = liar.status(ref)
    assert seen.state is HtlcState.REDEEMED and seen.preimage == preimage


def test_a_signed_refund_shown_before_its_expiry_is_not_believed(alice, bob):
    """Review (a counterparty and a lying node together): the script interpreter checks the
    refund's nLockTime against the script's expiry, not against the chain, so a refund the
    sender signed early passes it. A node that shows it in its mempool long before the expiry
    (no honest mempool holds a transaction the next block could not include) made the HTLC
    look refunded, and the recipient's engine give up its redeem. A mempool spend that is not
    final for the next block is not believed."""
    terms, _ = _terms(alice, bob, BlockHeight(alice.expiry_now().value + 20))
    ref = alice.lock(terms)
    alice.backend.mine(1, alice.wallet.address())
    early = alice.prepare_refund(ref).raw  # signed by the sender, 19 blocks early
    liar = BitcoinAdapter(_MempoolWith(bob.backend, early), bob.wallet)
    seen = liar.status(ref)
    assert seen.state is HtlcState.LOCKED and seen.spend_txid is None
    alice.backend.mine(19, alice.wallet.address())  # the next block may hold it now
    assert liar.status(ref).state is HtlcState.REFUNDED
