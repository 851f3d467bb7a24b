"""The KOFO HTLC as a Taproot (P2TR) output: two tapleaves and a MuSig2 internal key.

Leaves (tapscript, leaf version 0xc0)::

    claim:  OP_SIZE <32> OP_EQUALVERIFY OP_HASH160 <RIPEMD160(payment_hash)> OP_EQUALVERIFY
            <recipient x-only> OP_CHECKSIG
    refund: <refund x-only> OP_CHECKSIGVERIFY <expiry> OP_CHECKLOCKTIMEVERIFY

* The claim leaf opens with the same 32-byte secret as the P2WSH script and the Ethereum
  contract (``HASH160(preimage) = RIPEMD160(payment_hash)``), size check included.
* The refund leaf leaves the CLTV operand (the expiry, never 0) as the single true stack item,
  so it needs no ``OP_DROP``: 39 bytes.
* The internal key is the MuSig2 (BIP327) aggregate of the recipient's and the refunder's keys
  (:mod:`.musig`). When both agree -- the refunder co-signs a claim once it holds the preimage,
  or the recipient co-signs an early refund -- the output is spent by one 64-byte key-path
  signature: the cheapest spend there is, and indistinguishable from any other Taproot payment.
  A key-path spend does not reveal the preimage on chain; the co-signer must already have it.

Witnesses: claim ``[sig, preimage, claim_leaf, control]``; refund ``[sig, refund_leaf, control]``
(``nLockTime = expiry``, non-final ``nSequence``); key path ``[sig]``. Each may end with a BIP341
annex; spends are read by what they prove (:func:`read_taproot_spend`), not by their size.
"""

from __future__ import annotations

from collections.abc import Callable
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
from bitcointx.core import (
    CoreCoinParams,
    Hash160,
    b2lx,
    lx,
)
from bitcointx.core.key import CKey, XOnlyPubKey, compute_tap_tweak_hash
from bitcointx.core.script import (
    OP_CHECKLOCKTIMEVERIFY,
    OP_CHECKSIG,
    OP_CHECKSIGVERIFY,
    OP_EQUALVERIFY,
    OP_HASH160,
    OP_SIZE,
    SIGVERSION_TAPROOT,
    SIGVERSION_TAPSCRIPT,
    CScript,
    CScriptWitness,
    SignatureHashSchnorr,
    TaprootScriptTree,
)

from kofo.errors import InvalidInput
from kofo.settlement.chain import PREIMAGE_SIZE, Expiry, check_preimage
from kofo.settlement.chains.bitcoin.musig import aggregate_key
from kofo.settlement.chains.bitcoin.params import ChainParams
from kofo.settlement.chains.bitcoin.script import (
    check_pubkey,
    expiry_to_locktime,
    payment_hash_to_hash160,
)
from kofo.settlement.chains.bitcoin.tx import (
    RBF_SEQUENCE,
    HtlcSpend,
    SpendPath,
    UnrecognisedSpend,
    htlc_input_witness,
    htlc_spend_value,
)

SCHNORR_SIG_SIZE = 64
"""BIP340 signature with SIGHASH_DEFAULT (no sighash byte): always exactly 64 bytes, so fee
estimates for Taproot spends are exact."""

_CLAIM = "claim"
_REFUND = "refund"


@dataclass(frozen=True, slots=True)
class TaprootHtlc:
    """One Taproot HTLC: its leaves, internal key and output. Keys are 33-byte compressed; the
    leaves use their x-only form (BIP340 signing handles the parity)."""

    hash160: bytes
    recipient_pubkey: bytes
    refund_pubkey: bytes
    expiry: Expiry

    @property
    def claim_leaf(self) -> bytes:
        return bytes(
            CScript(
                [
                    OP_SIZE,
                    PREIMAGE_SIZE,
                    OP_EQUALVERIFY,
                    OP_HASH160,
                    self.hash160,
                    OP_EQUALVERIFY,
                    self.recipient_pubkey[1:],
                    OP_CHECKSIG,
                ]
            )
        )

    @property
    def refund_leaf(self) -> bytes:
        return bytes(
            CScript(
                [
                    self.refund_pubkey[1:],
                    OP_CHECKSIGVERIFY,
                    expiry_to_locktime(self.expiry),
                    OP_CHECKLOCKTIMEVERIFY,
                ]
            )
        )

    @property
    def internal_key(self) -> bytes:
        """x-only MuSig2 aggregate of the two parties' keys (untweaked)."""
        return aggregate_key([self.recipient_pubkey, self.refund_pubkey])

    def tree(self) -> TaprootScriptTree:
        return TaprootScriptTree(
            [CScript(self.claim_leaf, name=_CLAIM), CScript(self.refund_leaf, name=_REFUND)],
            internal_pubkey=XOnlyPubKey(self.internal_key),
        )

    @property
    def tweak(self) -> bytes:
        """BIP341 TapTweak of the internal key with the leaves' merkle root: the MuSig2 signers
        apply it (``musig.MusigSigner(..., tweak=htlc.tweak)``) to sign for the output key."""
        return compute_tap_tweak_hash(
            XOnlyPubKey(self.internal_key), merkle_root=self.tree().merkle_root
        )

    @property
    def output_key(self) -> bytes:
        key = self.tree().output_pubkey
        assert key is not None
        return bytes(key)

    @property
    def script_pubkey(self) -> bytes:
        """``OP_1 <output key>``: the funding output's scriptPubKey."""
        return b"\x51\x20" + self.output_key

    def control_block(self, leaf: str) -> bytes:
        found = self.tree().get_script_with_control_block(leaf)
        assert found is not None
        return found[1]

    def leaf_hash(self, leaf: str) -> bytes:
        script = self.claim_leaf if leaf == _CLAIM else self.refund_leaf
        return bytes(
            CoreCoinParams.tapleaf_hasher(
                bytes([CoreCoinParams.TAPROOT_LEAF_TAPSCRIPT]) + bytes([len(script)]) + script
            )
        )


def build_taproot_htlc(
    payment_hash: bytes, recipient_pubkey: bytes, refund_pubkey: bytes, expiry: Expiry
) -> TaprootHtlc:
    """The Taproot HTLC paying ``recipient_pubkey`` with the preimage of ``payment_hash``,
    refundable to ``refund_pubkey`` from ``expiry``, co-spendable by both on the key path."""
    recipient = check_pubkey("recipient_pubkey", recipient_pubkey)
    refund = check_pubkey("refund_pubkey", refund_pubkey)
    if recipient[1:] == refund[1:]:
        raise InvalidInput("recipient_pubkey and refund_pubkey must be different keys")
    expiry_to_locktime(expiry)
    return TaprootHtlc(payment_hash_to_hash160(payment_hash), recipient, refund, expiry)


def _unsigned_spend(
    txid: str, vout: int, amount: int, destination: bytes, lock_time: int
) -> CMutableTransaction:
    vin = CTxIn(COutPoint(lx(txid), vout), nSequence=RBF_SEQUENCE)
    return CMutableTransaction(
        [vin], [CTxOut(amount, CScript(destination))], nLockTime=lock_time, nVersion=2
    )


def _set_fee(
    tx: CMutableTransaction, amount: int, fee_rate: int | None, params: ChainParams
) -> None:
    tx.vout[0].nValue = htlc_spend_value(
        amount, int(tx.get_virtual_size()), fee_rate, bytes(tx.vout[0].scriptPubKey), params
    )


def build_taproot_spend(
    *,
    htlc: TaprootHtlc,
    txid: str,
    vout: int,
    amount: int,
    key: CKey,
    destination_script_pubkey: bytes,
    fee_rate: int | None,
    params: ChainParams,
    preimage: bytes | None = None,
    refund: bool = False,
    lock_time: int = 0,
) -> CTransaction:
    """Spend the Taproot HTLC output through a leaf: the claim leaf when ``preimage`` is given,
    the refund leaf when ``refund`` is true (``nLockTime = expiry``). Exactly one of them."""
    if (preimage is None) == (not refund):
        raise InvalidInput("give exactly one of preimage (claim) or refund=True (refund)")
    if preimage is not None:
        check_preimage(preimage)
        leaf, extra, n_lock_time = _CLAIM, [preimage], lock_time
        script = htlc.claim_leaf
    else:
        leaf, extra, n_lock_time = _REFUND, [], expiry_to_locktime(htlc.expiry)
        script = htlc.refund_leaf
    control = htlc.control_block(leaf)
    tx = _unsigned_spend(txid, vout, amount, destination_script_pubkey, n_lock_time)
    placeholder = b"\x00" * SCHNORR_SIG_SIZE
    tx.wit = CTxWitness([CTxInWitness(CScriptWitness([placeholder, *extra, script, control]))])
    _set_fee(tx, amount, fee_rate, params)
    sighash = SignatureHashSchnorr(
        tx,
        0,
        [CTxOut(amount, CScript(htlc.script_pubkey))],
        sigversion=SIGVERSION_TAPSCRIPT,
        tapleaf_hash=htlc.leaf_hash(leaf),
    )
    sig = key.sign_schnorr_no_tweak(sighash)
    tx.wit = CTxWitness([CTxInWitness(CScriptWitness([sig, *extra, script, control]))])
    return CTransaction.from_tx(tx)


KeyPathSigner = Callable[[bytes], bytes]
"""Given the 32-byte BIP341 key-path sighash, return the 64-byte aggregate MuSig2 signature
(both parties' partial signatures over it, with ``htlc.tweak``)."""


def sign_key_path_spend(
    htlc: TaprootHtlc, unsigned: CTransaction, amount: int, sign: KeyPathSigner
) -> CTransaction:
    """``unsigned`` (from :func:`unsigned_key_path_spend`) with the signature ``sign`` makes
    over its key-path sighash: both parties' MuSig2 signature (see :mod:`.cooperative`)."""
    return with_key_path_signature(unsigned, sign(key_path_sighash(htlc, unsigned, amount)))


def unsigned_key_path_spend(
    *,
    txid: str,
    vout: int,
    amount: int,
    destination_script_pubkey: bytes,
    fee_rate: int | None,
    params: ChainParams,
    lock_time: int = 0,
) -> CTransaction:
    """The key-path spend of ``txid:vout`` before its signature: the witness holds a 64-byte
    placeholder, so its size and fee are already final (a BIP340 signature is always 64 bytes)
    and the co-signer can be sent exactly the transaction it signs."""
    tx = _unsigned_spend(txid, vout, amount, destination_script_pubkey, lock_time)
    tx.wit = CTxWitness([CTxInWitness(CScriptWitness([b"\x00" * SCHNORR_SIG_SIZE]))])
    _set_fee(tx, amount, fee_rate, params)
    return CTransaction.from_tx(tx)


def with_key_path_signature(tx: CTransaction | CMutableTransaction, sig: bytes) -> CTransaction:
    """``tx`` (one input, spent by the key path) with ``sig`` as its witness."""
    if len(sig) != SCHNORR_SIG_SIZE:
        raise InvalidInput(f"key-path signature must be 64 bytes, got {len(sig)}")
    signed = CMutableTransaction.from_tx(tx)
    signed.wit = CTxWitness([CTxInWitness(CScriptWitness([sig]))])
    return CTransaction.from_tx(signed)


def key_path_sighash(
    htlc: TaprootHtlc, tx: CTransaction | CMutableTransaction, amount: int
) -> bytes:
    """BIP341 SIGHASH_DEFAULT message for input 0 of ``tx`` spending ``htlc``'s output: what
    both MuSig2 parties sign (each should rebuild ``tx`` and check it before signing)."""
    return bytes(
        SignatureHashSchnorr(
            tx, 0, [CTxOut(amount, CScript(htlc.script_pubkey))], sigversion=SIGVERSION_TAPROOT
        )
    )


ANNEX_TAG = 0x50
"""BIP341: with two or more witness items, a last item starting with this byte is the annex.
Consensus ignores it (beyond committing to it in the signature); Core does not relay it by
default, but a miner may mine it, so a reader strips it before looking at the spend."""


def read_taproot_spend(
    tx: CTransaction, txid: str, vout: int, htlc: TaprootHtlc
) -> HtlcSpend | None:
    """How ``tx`` spends the Taproot HTLC ``txid:vout`` (``None``: it does not spend it).

    Read as BIP341 reads it, never by witness size: the annex is dropped first; one item left is
    a key-path signature (64 bytes, or 65 with a sighash type); otherwise the last item is the
    control block and the one before it the leaf script. A leaf counts only when both the script
    and the control block are this HTLC's own: with two leaves, the control block (leaf version
    and output-key parity, internal key, the other leaf's hash) is the only one that commits
    that script to this output key, so an equal control block is that commitment checked. The
    claim leaf's secret is the top item of its stack (whatever lies below it) and must open the
    hash lock. Anything else raises :class:`UnrecognisedSpend`."""
    stack = htlc_input_witness(tx, txid, vout)
    if stack is None:
        return None
    spender = b2lx(tx.GetTxid())
    if len(stack) >= 2 and stack[-1][:1] == bytes([ANNEX_TAG]):
        stack = stack[:-1]
    if len(stack) == 1:
        if len(stack[0]) in (SCHNORR_SIG_SIZE, SCHNORR_SIG_SIZE + 1):
            return HtlcSpend(SpendPath.KEY_PATH)
        raise UnrecognisedSpend(
            f"{spender} spends Taproot HTLC {txid}:{vout} by the key path with a "
            f"{len(stack[0])}-byte signature"
        )
    if len(stack) < 2:
        raise UnrecognisedSpend(f"{spender} spends Taproot HTLC {txid}:{vout} with no witness")
    control, script, args = stack[-1], stack[-2], stack[:-2]
    if script == htlc.claim_leaf and control == htlc.control_block(_CLAIM):
        if args and len(args[-1]) == PREIMAGE_SIZE and Hash160(args[-1]) == htlc.hash160:
            return HtlcSpend(SpendPath.CLAIM, args[-1])
        raise UnrecognisedSpend(
            f"{spender} spends Taproot HTLC {txid}:{vout} through its claim leaf without a "
            "secret that opens its hash lock"
        )
    if script == htlc.refund_leaf and control == htlc.control_block(_REFUND):
        return HtlcSpend(SpendPath.REFUND)
    raise UnrecognisedSpend(
        f"{spender} spends Taproot HTLC {txid}:{vout} through a script path that is neither of "
        "its leaves under its output key"
    )


def extract_taproot_preimage(
    tx: CTransaction, txid: str, vout: int, htlc: TaprootHtlc
) -> bytes | None:
    """The preimage from an input of ``tx`` that claims ``txid:vout`` through the claim leaf;
    ``None`` for a refund, a key-path spend (which reveals nothing) or another transaction
    (:func:`read_taproot_spend`)."""
    found = read_taproot_spend(tx, txid, vout, htlc)
    return None if found is None else found.preimage
