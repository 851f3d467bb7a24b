"""Block (de)serialization around python-bitcointx transactions.

python-bitcointx serializes transactions but has no block type; a block is an 80-byte header,
a CompactSize count and the transactions, which is all this module adds. Whatever it builds is
then validated by Bitcoin Core's code (:mod:`kofo.settlement.chains.bitcoin.kernel`).
"""

from __future__ import annotations

import hashlib
import io
import struct
from collections.abc import Sequence
from dataclasses import dataclass

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
from bitcointx.core.script import CScript, CScriptWitness
from bitcointx.core.serialize import VarIntSerializer

from kofo.errors import ChainError
from kofo.settlement.chains.bitcoin.kernel import check_block as kernel_check_block
from kofo.settlement.chains.bitcoin.params import ChainParams

REGTEST_BITS = 0x207FFFFF
"""Regtest's proof-of-work limit: about every other nonce meets it, so mining is instant."""

_WITNESS_COMMITMENT_MAGIC = bytes.fromhex("aa21a9ed")  # BIP141 commitment header
_WITNESS_RESERVED_VALUE = b"\x00" * 32


def sha256d(data: bytes) -> bytes:
    return hashlib.sha256(hashlib.sha256(data).digest()).digest()


@dataclass(frozen=True, slots=True)
class Header:
    """The fields of an 80-byte block header (hashes in display hex)."""

    hash: str
    version: int
    prev_hash: str
    merkle_root: str
    time: int
    bits: int
    nonce: int


class BadBlock(ChainError):
    """A block (or header) the node served fails a check any valid block passes: the node is
    lying or broken, and nothing in it is believed."""

    code = "bad_block"


HEADER_SIZE = 80


def parse_header(raw: bytes) -> Header:
    """The header at the start of ``raw`` (a header or a whole block)."""
    if len(raw) < HEADER_SIZE:
        raise BadBlock(f"a block header is {HEADER_SIZE} bytes, got {len(raw)}")
    header = raw[:HEADER_SIZE]
    (version,) = struct.unpack_from("<i", header, 0)
    time, bits, nonce = struct.unpack_from("<III", header, 68)
    return Header(
        hash=sha256d(header)[::-1].hex(),
        version=version,
        prev_hash=header[4:36][::-1].hex(),
        merkle_root=header[36:68][::-1].hex(),
        time=time,
        bits=bits,
        nonce=nonce,
    )


@dataclass(frozen=True, slots=True)
class ParsedBlock:
    hash: str  # display hex
    prev_hash: str
    time: int
    txs: tuple[CTransaction, ...]


def parse_block(raw: bytes) -> ParsedBlock:
    header = parse_header(raw)
    stream = io.BytesIO(raw[HEADER_SIZE:])
    try:
        count = VarIntSerializer.stream_deserialize(stream)
        txs = tuple(CTransaction.stream_deserialize(stream) for _ in range(count))
    except Exception as exc:  # bitcointx raises several types for bad bytes
        raise BadBlock(f"block {header.hash} does not decode: {type(exc).__name__}") from None
    return ParsedBlock(hash=header.hash, prev_hash=header.prev_hash, time=header.time, txs=txs)


def compact_target(bits: int) -> int:
    """The target a header's compact ``bits`` stand for (arith_uint256::SetCompact); a
    negative, zero or overflowing one raises :class:`BadBlock`, as Core's CheckProofOfWork
    refuses it."""
    size = bits >> 24
    word = bits & 0x007FFFFF
    target = word >> 8 * (3 - size) if size <= 3 else word << 8 * (size - 3)
    negative = word != 0 and bits & 0x00800000 != 0
    overflow = word != 0 and (
        size > 34 or (word > 0xFF and size > 33) or (word > 0xFFFF and size > 32)
    )
    if negative or overflow or target == 0:
        raise BadBlock(f"bits {bits:#010x} is no valid target")
    return target


def block_work(bits: int) -> int:
    """Core's GetBlockProof: the expected number of hashes behind a block with ``bits``."""
    return (1 << 256) // (compact_target(bits) + 1)


def pow_hash(header: bytes, algorithm: str) -> int:
    """The header's proof-of-work hash as a number (compared with the target)."""
    if algorithm == "scrypt":  # Litecoin: scrypt_1024_1_1_256(header, salt=header)
        digest = hashlib.scrypt(header, salt=header, n=1024, r=1, p=1, dklen=32)
    else:
        digest = sha256d(header)
    return int.from_bytes(digest, "little")


def check_block(raw: bytes, params: ChainParams) -> Header:
    """Check that ``raw`` proves what the adapter will read from it; return its header
    (:func:`checked_block` also returns the decoded block).

    * Bitcoin Core's own context-free ``CheckBlock`` (:func:`.kernel.check_block`): the merkle
      root commits to exactly these transactions (a CVE-2012-2459 mutated list refused), sizes,
      coinbase, every transaction's own rules, and for Bitcoin the proof of work;
    * the proof of work against ``bits`` and the network's ``powLimit`` (scrypt for Litecoin);
    * the BIP141 witness commitment: witnesses (a claim's preimage) are outside the merkle
      root, so without it a node could swap a mined claim's witness for a refund's;
    * the block carries at least ``params.min_block_work``.

    What a single block cannot show -- that its ``bits`` follow the chain's difficulty, and that
    it is on the chain with the most work -- is for :class:`.adapter.ChainIndex` (bits from its
    parent) and the backend (which branch is best)."""
    return checked_block(raw, params)[0]


def checked_block(raw: bytes, params: ChainParams) -> tuple[Header, ParsedBlock]:
    """:func:`check_block`, returning the header and the block decoded once (decoding the
    transactions is most of the cost of reading a block; the index needs them too)."""
    header = parse_header(raw)
    kernel_pow = params.pow_hash == "sha256d"
    problem = kernel_check_block(raw, params.network, proof_of_work=kernel_pow)
    if problem is not None:
        raise BadBlock(f"block {header.hash} fails Bitcoin Core's block checks: {problem}")
    target = compact_target(header.bits)
    if target > compact_target(params.pow_limit_bits):
        raise BadBlock(
            f"block {header.hash}: bits {header.bits:#010x} is easier than this network's "
            f"proof-of-work limit {params.pow_limit_bits:#010x}"
        )
    if pow_hash(raw[:HEADER_SIZE], params.pow_hash) > target:
        raise BadBlock(f"block {header.hash}: its hash does not meet its bits {header.bits:#010x}")
    if block_work(header.bits) < params.min_block_work:
        raise BadBlock(
            f"block {header.hash}: work {block_work(header.bits)} is below the minimum "
            f"{params.min_block_work} this node follows"
        )
    block = parse_block(raw)
    _check_witness_commitment(header.hash, block.txs)
    return header, block


def _check_witness_commitment(block_hash: str, txs: Sequence[CTransaction]) -> None:
    """BIP141: the coinbase's last output starting with the commitment header commits to the
    witness merkle root (coinbase wtxid counted as 0) with the coinbase's 32-byte witness
    reserved value; a block without one holds no witness data."""
    coinbase = txs[0]
    commitments = [
        bytes(out.scriptPubKey)
        for out in coinbase.vout
        if bytes(out.scriptPubKey)[:6] == b"\x6a\x24" + _WITNESS_COMMITMENT_MAGIC
        and len(out.scriptPubKey) >= 38
    ]
    if not commitments:
        if any(not tx.wit.is_null() for tx in txs):
            raise BadBlock(f"block {block_hash} has witness data but no witness commitment")
        return
    stack = list(coinbase.wit.vtxinwit[0].scriptWitness.stack) if coinbase.wit.vtxinwit else []
    if len(stack) != 1 or len(stack[0]) != 32:
        raise BadBlock(f"block {block_hash}: coinbase witness is not one 32-byte reserved value")
    root = merkle_root([b"\x00" * 32] + [tx.GetHash() for tx in txs[1:]])
    if commitments[-1][6:38] != sha256d(root + bytes(stack[0])):
        raise BadBlock(f"block {block_hash}: witnesses do not match the witness commitment")


def merkle_root(leaves: Sequence[bytes]) -> bytes:
    level = list(leaves)
    while len(level) > 1:
        if len(level) % 2:
            level.append(level[-1])
        level = [sha256d(level[i] + level[i + 1]) for i in range(0, len(level), 2)]
    return level[0]


def block_subsidy(height: int) -> int:
    # Regtest halves the 50-coin subsidy every 150 blocks (Core's nSubsidyHalvingInterval).
    halvings = height // 150
    return 0 if halvings >= 64 else (50 * 100_000_000) >> halvings


def build_block(
    *,
    prev_hash: str,
    height: int,
    time: int,
    coinbase_script_pubkey: bytes,
    txs: Sequence[CTransaction],
    fees: int,
    tag: bytes = b"",
) -> bytes:
    """A regtest block at ``height`` on top of ``prev_hash`` paying subsidy + ``fees``.

    ``tag`` goes into the coinbase so two blocks at the same height (a fork) differ.
    """
    script_sig = CScript([height, b"kofo" + tag])  # BIP34: the height comes first
    outs = [CTxOut(block_subsidy(height) + fees, CScript(coinbase_script_pubkey))]
    wtxids = [b"\x00" * 32] + [tx.GetHash() for tx in txs]  # coinbase wtxid counts as 0
    commitment = sha256d(merkle_root(wtxids) + _WITNESS_RESERVED_VALUE)
    outs.append(CTxOut(0, CScript(b"\x6a\x24" + _WITNESS_COMMITMENT_MAGIC + commitment)))
    coinbase = CMutableTransaction(
        [CTxIn(COutPoint(), script_sig, nSequence=0xFFFFFFFF)], outs, nVersion=2
    )
    coinbase.wit = CTxWitness([CTxInWitness(CScriptWitness([_WITNESS_RESERVED_VALUE]))])
    all_txs = [CTransaction.from_tx(coinbase), *txs]
    root = merkle_root([tx.GetTxid() for tx in all_txs])
    body = VarIntSerializer.serialize(len(all_txs)) + b"".join(tx.serialize() for tx in all_txs)
    prev = bytes.fromhex(prev_hash)[::-1]
    target = (REGTEST_BITS & 0xFFFFFF) << (8 * ((REGTEST_BITS >> 24) - 3))
    for nonce in range(1 << 32):
        header = struct.pack("<I32s32sIII", 0x20000000, prev, root, time, REGTEST_BITS, nonce)
        # Both proof-of-work hashes meet the target (one nonce in four), so the same block is
        # valid regtest work for Bitcoin (sha256d, what the kernel checks) and for Litecoin
        # (scrypt): the embedded chain stands in for either, and the adapter checks the work.
        if pow_hash(header, "sha256d") <= target and pow_hash(header, "scrypt") <= target:
            return header + body
    raise AssertionError("no nonce meets the regtest target")  # pragma: no cover
