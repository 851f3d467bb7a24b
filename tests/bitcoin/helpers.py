"""Shared helpers for the Bitcoin tests: keys, a funded embedded chain, raw spends."""

from __future__ import annotations

import hashlib
import os

from bitcointx.core import b2lx
from bitcointx.core.key import CKey

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
