"""A node that serves forged blocks (issue 16, case 13).

Blocks were checked only for their hash and their link to the one below, so a node could slip
a fake lock into a well-linked block (``audit`` passed, with confirmations), or swap a mined
claim's witness for a refund's (the swap read "refunded" and never learnt the secret). Each
block is now checked for what it proves: Core's context-free checks (merkle root included),
the proof of work against ``bits`` and the network's limit, the witness commitment, a minimum
work per block, and ``bits`` that follow the parent's where the network retargets.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import struct

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
from bitcointx.core import b2lx, lx
from bitcointx.core.script import CScript, CScriptWitness
from bitcointx.core.serialize import VarIntSerializer

from kofo.errors import AuditFailed, InvalidInput
from kofo.settlement.chain import BlockHeight, HtlcRef, HtlcState, HtlcTerms, UnixTime
from kofo.settlement.chains.bitcoin.adapter import BitcoinAdapter, ChainIndex
from kofo.settlement.chains.bitcoin.backend import EmbeddedBackend
from kofo.settlement.chains.bitcoin.blocks import (
    REGTEST_BITS,
    BadBlock,
    Header,
    block_work,
    compact_target,
    merkle_root,
    parse_block,
    pow_hash,
    sha256d,
)
from kofo.settlement.chains.bitcoin.wallet import HdWallet

from .conftest import REGTEST


class ForgingBackend:
    """The embedded chain's backend, except that it serves ``forged`` raw blocks: in place of
    the real block with the same hash, or (``extra``) as one more block on top of the tip."""

    def __init__(self, backend: EmbeddedBackend) -> None:
        self.backend = backend
        self.forged: dict[str, bytes] = {}
        self.extra: str | None = None

    def __getattr__(self, name: str):
        return getattr(self.backend, name)

    def block_count(self) -> int:
        return self.backend.block_count() + (self.extra is not None)

    def block_hash(self, height: int) -> str:
        if self.extra is not None and height == self.backend.block_count() + 1:
            return self.extra
        return self.backend.block_hash(height)

    def block_raw(self, block_hash: str) -> bytes:
        return self.forged.get(block_hash) or self.backend.block_raw(block_hash)

    def mempool_raw(self) -> list[bytes]:
        return []


@pytest.fixture(scope="module")
def parties(chain):
    backend = EmbeddedBackend(chain)
    alice = BitcoinAdapter(backend, HdWallet(b"\x4a" * 32, REGTEST))
    bob = BitcoinAdapter(backend, HdWallet(b"\x4b" * 32, REGTEST))
    backend.mine(1, alice.wallet.address())
    backend.mine(100, bob.wallet.address())
    return alice, bob


def _terms(alice, bob, amount=250_000):
    preimage = os.urandom(32)
    terms = HtlcTerms(
        chain="btc",
        payment_hash=hashlib.sha256(preimage).digest(),
        amount=amount,
        sender=alice.address(),
        recipient=bob.address(),
        expiry=BlockHeight(alice.expiry_now().value + 20),
    )
    return terms, preimage


def _fake_lock(terms: HtlcTerms, spk: bytes) -> CTransaction:
    """A "lock" paying the HTLC out of nothing (its input does not exist)."""
    tx = CMutableTransaction(
        [CTxIn(COutPoint(lx(os.urandom(32).hex()), 0))], [CTxOut(terms.amount, CScript(spk))]
    )
    return CTransaction.from_tx(tx)


def _block(header: bytes, txs: list[CTransaction]) -> bytes:
    return header + VarIntSerializer.serialize(len(txs)) + b"".join(t.serialize() for t in txs)


def _watcher(chain) -> tuple[BitcoinAdapter, ForgingBackend]:
    forging = ForgingBackend(EmbeddedBackend(chain))
    return BitcoinAdapter(forging, HdWallet(b"\x4b" * 32, REGTEST)), forging


def test_a_fake_lock_slipped_into_a_real_block_fails_the_merkle_root(chain, parties):
    alice, bob = parties
    terms, _ = _terms(alice, bob)
    watcher, forging = _watcher(chain)
    alice.backend.mine(1, alice.wallet.address())
    tip = chain.block_hash(chain.height())
    raw = chain.block_raw(tip)
    fake = _fake_lock(terms, watcher.output_script_pubkey(terms))
    forging.forged[tip] = _block(raw[:80], [*parse_block(raw).txs, fake])
    alice.backend.mine(2, alice.wallet.address())
    ref = HtlcRef(terms, f"{b2lx(fake.GetTxid())}:0", b2lx(fake.GetTxid()))
    with pytest.raises(BadBlock, match="block checks: mutated"):
        watcher.audit(ref, terms, min_confirmations=3)


def _header(prev: str, root: bytes, bits: int, *, meets: bool) -> bytes:
    """A header on ``prev`` whose sha256d hash meets ``bits`` or (``meets=False``) misses it."""
    target = compact_target(bits)
    for nonce in range(1 << 20):
        header = struct.pack("<I32s32sIII", 0x20000000, lx(prev), root, 2_000_000_000, bits, nonce)
        if (pow_hash(header, "sha256d") <= target) == meets:
            return header
    raise AssertionError("no nonce found")  # pragma: no cover


def _fake_block_on_tip(chain, txs: list[CTransaction], *, bits=REGTEST_BITS, meets=True):
    prev = chain.block_hash(chain.height())
    coinbase = parse_block(chain.block_raw(prev)).txs[0]  # any coinbase-shaped first tx
    all_txs = [coinbase, *txs]
    root = merkle_root([t.GetTxid() for t in all_txs])
    header = _header(prev, root, bits, meets=meets)
    return sha256d(header)[::-1].hex(), _block(header, all_txs)


def test_a_fake_block_without_proof_of_work_is_refused(chain, parties):
    """A well-formed block (right merkle root, linked to the tip) whose hash misses its bits:
    the old index took it, and the fake lock in it passed audit."""
    alice, bob = parties
    terms, _ = _terms(alice, bob)
    watcher, forging = _watcher(chain)
    fake = _fake_lock(terms, watcher.output_script_pubkey(terms))
    block_hash, raw = _fake_block_on_tip(chain, [fake], meets=False)
    forging.extra, forging.forged[block_hash] = block_hash, raw
    ref = HtlcRef(terms, f"{b2lx(fake.GetTxid())}:0", b2lx(fake.GetTxid()))
    with pytest.raises(BadBlock):
        watcher.audit(ref, terms, min_confirmations=1)


def test_the_minimum_block_work_refuses_cheap_blocks(chain, parties):
    """Regtest blocks carry trivial work: with a floor above it every block is refused (a
    mainnet node sets the floor near the real difficulty)."""
    floor = block_work(REGTEST_BITS) + 1
    strict = BitcoinAdapter(
        EmbeddedBackend(chain), HdWallet(b"\x4c" * 32, REGTEST), min_block_work=floor
    )
    with pytest.raises(BadBlock, match="below the minimum"):
        strict.index.sync()
    with pytest.raises(InvalidInput, match="min_block_work"):
        BitcoinAdapter(EmbeddedBackend(chain), HdWallet(b"\x4c" * 32, REGTEST), min_block_work=-1)


def test_a_claim_whose_witness_is_swapped_for_a_refund_is_caught(chain, parties):
    """The witness is outside the merkle root: a node serving the mined claim with a
    refund-shaped witness made the swap read "refunded" and never see the secret. The witness
    commitment in the coinbase catches it."""
    alice, bob = parties
    terms, preimage = _terms(alice, bob)
    ref = alice.lock(terms)
    alice.backend.mine(1, alice.wallet.address())
    claim = bob.prepare_redeem(ref, preimage)
    bob.broadcast(claim)
    alice.backend.mine(1, alice.wallet.address())
    tip = chain.block_hash(chain.height())
    raw = chain.block_raw(tip)
    txs = list(parse_block(raw).txs)
    index = next(i for i, t in enumerate(txs) if b2lx(t.GetTxid()) == claim.txid)
    sig, _, script = txs[index].wit.vtxinwit[0].scriptWitness.stack
    swapped = CMutableTransaction.from_tx(txs[index])
    swapped.wit = CTxWitness([CTxInWitness(CScriptWitness([sig, script]))])
    txs[index] = CTransaction.from_tx(swapped)
    assert b2lx(txs[index].GetTxid()) == claim.txid  # same txid: same merkle root
    watcher, forging = _watcher(chain)
    forging.forged[tip] = _block(raw[:80], txs)
    with pytest.raises(BadBlock, match="witness commitment"):
        watcher.status(ref)
    honest = BitcoinAdapter(EmbeddedBackend(chain), HdWallet(b"\x4b" * 32, REGTEST))
    seen = honest.status(ref)
    assert seen.state is HtlcState.REDEEMED and seen.preimage == preimage


def test_an_honest_chain_passes_every_check(chain, parties):
    alice, bob = parties
    terms, _ = _terms(alice, bob)
    ref = alice.lock(terms)
    alice.backend.mine(2, alice.wallet.address())
    assert bob.audit(ref, terms, min_confirmations=2).confirmations == 2


def _header_fields(bits: int, height: int) -> Header:
    return Header(
        hash=f"{height:064x}", version=0, prev_hash="", merkle_root="", time=0, bits=bits, nonce=0
    )


def test_bits_must_follow_the_parent_where_the_network_retargets(chain):
    """A lying node cannot lower the difficulty to fake blocks cheaply: inside a period the
    bits stay, at a boundary they move at most 4x (mainnet's 0x1d00ffff limit is the anchor)."""
    params = dataclasses.replace(REGTEST, retarget_interval=2016)
    index = ChainIndex(EmbeddedBackend(chain), 0, params)
    hard = 0x1B0404CB  # a real mainnet target (block 100,000)
    index._bits[4031] = hard
    index._check_bits(4031 + 1, _header_fields(hard, 4032))  # boundary, unchanged: fine
    index._bits[4032] = hard
    index._check_bits(4033, _header_fields(hard, 4033))
    with pytest.raises(BadBlock, match="inside a difficulty period"):
        index._check_bits(4033, _header_fields(0x1D00FFFF, 4033))
    four_times_easier = 0x1B10132C  # 0x0404cb x 4 = 0x10132c, same exponent
    assert compact_target(four_times_easier) == 4 * compact_target(hard)
    index._check_bits(4032, _header_fields(four_times_easier, 4032))
    with pytest.raises(BadBlock, match="more than 4x"):
        index._check_bits(4032, _header_fields(0x1B10132D, 4032))
    # Without retargeting rules (regtest, testnet) any bits under the limit pass.
    ChainIndex(EmbeddedBackend(chain), 0, REGTEST)._check_bits(4033, _header_fields(1, 4033))


def test_litecoin_work_is_scrypt():
    """Litecoin's genesis header: its sha256d hash is the block hash, its scrypt hash the work
    (meeting bits 0x1e0ffff0, which the sha256d hash does not)."""
    root = bytes.fromhex("97ddfbbae6be97fd6cdf3e7ca13232a3afff2353e29badfab7f73011edd4ced9")
    header = struct.pack(
        "<I32s32sIII", 1, bytes(32), root[::-1], 1317972665, 0x1E0FFFF0, 2084524493
    )
    assert sha256d(header)[::-1].hex() == (
        "12a765e31ffd4059bada1e25190f6e98c99d9714d334efa41a195a7e7e04bfe2"
    )
    assert pow_hash(header, "scrypt") <= compact_target(0x1E0FFFF0)
    assert pow_hash(header, "sha256d") > compact_target(0x1E0FFFF0)


def test_an_audit_of_a_real_lock_is_unaffected_by_a_forged_one(chain, parties):
    alice, bob = parties
    terms, _ = _terms(alice, bob)
    with pytest.raises(AuditFailed):
        bob.audit(HtlcRef(terms, "ab" * 32 + ":0", "ab" * 32), terms, min_confirmations=1)


class _LyingClock(ForgingBackend):
    def median_time_past(self) -> int:
        return 4_000_000_000  # year 2096: every time lock "expired"


def test_the_time_lock_clock_comes_from_the_checked_headers_not_the_nodes_word(chain, parties):
    """A node claiming a later median time past would make time-locked refunds look due (and
    a claim look too late to send); the adapter computes BIP113's clock from the headers it
    checked."""
    liar = _LyingClock(EmbeddedBackend(chain))
    adapter = BitcoinAdapter(liar, HdWallet(b"\x4d" * 32, REGTEST), expiry_unit=UnixTime)
    assert adapter.expiry_now() == UnixTime(chain.median_time_past())
    with adapter.observe():
        assert adapter.expiry_now() == UnixTime(chain.median_time_past())
