"""Shared helpers for the Bitcoin tests: keys, a funded embedded chain, raw spends."""

from __future__ import annotations

import hashlib
import os
import struct

from bitcointx.core import CBitcoinTransaction as CTransaction
from bitcointx.core import b2lx
from bitcointx.core.key import CKey
from bitcointx.core.serialize import VarIntSerializer

import kofo.settlement.chains.bitcoin  # noqa: F401  (loads libsecp256k1)
from kofo.settlement.chain import Expiry
from kofo.settlement.chains.bitcoin.adapter import BitcoinAdapter
from kofo.settlement.chains.bitcoin.blocks import parse_block
from kofo.settlement.chains.bitcoin.embedded import EmbeddedChain
from kofo.settlement.chains.bitcoin.script import build_htlc_script, p2wsh_script_pubkey
from kofo.settlement.chains.bitcoin.tx import Utxo, build_funding_tx, p2wpkh_script_pubkey


def new_key() -> CKey:
    return CKey.from_secret_bytes(os.urandom(32))


def pub(key: CKey) -> bytes:
    return bytes(key.pub)


def coinbase_utxo(chain: EmbeddedChain, height: int) -> Utxo:
    block = parse_block(chain.block_raw(chain.block_hash(height)))
    cb = block.txs[0]
    return Utxo(b2lx(cb.GetTxid()), 0, cb.vout[0].nValue, bytes(cb.vout[0].scriptPubKey))


def fund_htlc(
    chain: EmbeddedChain,
    funder: CKey,
    coin: Utxo,
    recipient: CKey,
    expiry: Expiry,
    amount: int = 1_000_000,
    preimage: bytes | None = None,
) -> tuple[str, bytes, bytes]:
    """Lock ``amount`` from ``coin`` (owned by ``funder``) and mine it.

    Returns (funding txid, witness script, preimage)."""
    preimage = os.urandom(32) if preimage is None else preimage
    script = build_htlc_script(
        hashlib.sha256(preimage).digest(), pub(recipient), pub(funder), expiry
    )
    tx = build_funding_tx(
        [coin],
        lambda _spk: funder,
        [(p2wsh_script_pubkey(script), amount)],
        p2wpkh_script_pubkey(pub(funder)),
        2,
        chain.params,
    )
    txid = chain.send_raw(tx.serialize())
    chain.mine(1, p2wpkh_script_pubkey(pub(funder)))
    return txid, script, preimage


def pay(
    payer: BitcoinAdapter, script_pubkey: bytes, amounts: list[int], rate: int | None = None
) -> str:
    """``payer``'s wallet sends ``amounts`` (one output each) to ``script_pubkey`` at ``rate``
    (default: the node's estimate); returns the txid."""
    tx = build_funding_tx(
        payer.spendable(),
        payer.wallet.key_for_script,
        [(script_pubkey, a) for a in amounts],
        payer.wallet.identity.script_pubkey,
        rate,
        payer.params,
    )
    return payer.backend.send_raw(tx.serialize())


def tapscript_sighash(
    tx: CTransaction,
    spent_amount: int,
    spent_script_pubkey: bytes,
    leaf_hash: bytes,
    annex: bytes | None = None,
) -> bytes:
    """BIP341/342 SIGHASH_DEFAULT message of input 0 (of one) spent through a tapleaf, written
    out from the BIPs: python-bitcointx 1.1.x prefixes ``sha_annex`` with its length, so its
    signature over a spend with an annex does not verify. Without an annex this equals
    ``SignatureHashSchnorr`` (the annex test checks that first)."""

    def sha(data: bytes) -> bytes:
        return hashlib.sha256(data).digest()

    def ser_string(data: bytes) -> bytes:  # CompactSize length prefix
        return VarIntSerializer.serialize(len(data)) + data

    (txin,) = tx.vin
    msg = b"\x00\x00" + struct.pack("<iI", tx.nVersion, tx.nLockTime)
    msg += sha(txin.prevout.serialize())
    msg += sha(struct.pack("<q", spent_amount))
    msg += sha(ser_string(spent_script_pubkey))
    msg += sha(struct.pack("<I", txin.nSequence))
    msg += sha(b"".join(out.serialize() for out in tx.vout))
    msg += bytes([2 + (annex is not None)]) + struct.pack("<I", 0)
    if annex is not None:
        msg += sha(ser_string(annex))
    msg += leaf_hash + b"\x00" + struct.pack("<i", -1)
    tag = sha(b"TapSighash")
    return sha(tag + tag + msg)
