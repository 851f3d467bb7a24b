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


def parse_header(raw: bytes) -> Header:
    """The header at the start of ``raw`` (a header or a whole block)."""
    header = raw[:80]
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
    stream = io.BytesIO(raw[80:])
    count = VarIntSerializer.stream_deserialize(stream)
    txs = tuple(CTransaction.stream_deserialize(stream) for _ in range(count))
    return ParsedBlock(hash=header.hash, prev_hash=header.prev_hash, time=header.time, txs=txs)


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
        if int.from_bytes(sha256d(header), "little") <= target:
            return header + body
    raise AssertionError("no nonce meets the regtest target")  # pragma: no cover
