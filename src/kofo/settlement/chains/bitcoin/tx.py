"""Build and sign the three HTLC transactions: funding (lock), claim (redeem) and refund, and
the child that pays a stuck lock's, claim's or refund's fee (CPFP).

Serialization, sighashes and ECDSA come from python-bitcointx (libsecp256k1); this module only
decides inputs, outputs, fees and witness layout.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

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
    Hash160,
    b2lx,
    lx,
)
from bitcointx.core.key import CKey
from bitcointx.core.script import (
    SIGHASH_ALL,
    SIGVERSION_WITNESS_V0,
    CScript,
    CScriptWitness,
    SignatureHash,
)

from kofo.errors import ChainError, InsufficientFunds, InvalidInput
from kofo.settlement.chain import PREIMAGE_SIZE, Expiry, check_preimage
from kofo.settlement.chains.bitcoin.params import ChainParams
from kofo.settlement.chains.bitcoin.script import expiry_to_locktime, parse_htlc_script

RBF_SEQUENCE = 0xFFFFFFFD
"""BIP125 opt-in replace-by-fee, so a stuck lock/claim/refund can be fee-bumped. Being below
0xFFFFFFFF it is also "non-final", which CLTV requires and which makes nLockTime count."""

_MAX_DER_SIG = 72 + 1
"""Largest ECDSA signature with its sighash byte: sizes are estimated with it so the fee rate
actually paid is never below the one asked for (low-R signing usually makes it 71)."""

_SPEND_INPUT_VBYTES = 67
"""Bitcoin Core's dust rule charges a witness output the cost of spending it later:
32 (txid) + 4 (vout) + 1 (script len) + 107/4 (witness) + 4 (sequence) = 67 vbytes."""


@dataclass(frozen=True, slots=True)
class Utxo:
    """A spendable output of the wallet."""

    txid: str
    vout: int
    amount: int
    script_pubkey: bytes = b""


KeyLookup = Callable[[bytes], CKey]
"""scriptPubKey -> the wallet key that can spend it (raises when the wallet has none)."""


def p2wpkh_script_pubkey(pubkey: bytes) -> bytes:
    return b"\x00\x14" + Hash160(pubkey)


_P2WPKH_TEMPLATE = b"\x00\x14" + b"\x00" * 20


def dust_limit(script_pubkey: bytes, params: ChainParams) -> int:
    """Smallest output value the chain's nodes relay (Bitcoin Core's GetDustThreshold)."""
    out_size = 8 + 1 + len(script_pubkey)
    return (out_size + _SPEND_INPUT_VBYTES) * params.dust_relay_fee_rate


def effective_fee_rate(fee_rate: int | None, params: ChainParams) -> int:
    """The rate to pay: the caller's, else the fallback; never below the relay minimum, and a
    rate above the chain's ceiling (``params.max_fee_rate``, Core's ``-maxfeerate``) is refused:
    it is a unit mistake (sat/kvB for sat/vB) or a broken estimate, not a fee."""
    rate = params.fallback_fee_rate if fee_rate is None else fee_rate
    if isinstance(rate, bool) or not isinstance(rate, int) or rate < 0:
        raise InvalidInput(f"fee rate must be a non-negative integer sat/vB, got {rate!r}")
    if rate > params.max_fee_rate:
        raise InvalidInput(
            f"fee rate {rate} sat/vB is above this chain's ceiling of {params.max_fee_rate} "
            "sat/vB (Core's -maxfeerate); refusing to sign",
            code="fee_rate_too_high",
        )
    return max(rate, params.min_relay_fee_rate)


MAX_HTLC_SPEND_VBYTES = 141
"""The largest claim or refund of any HTLC form as the builders size it (1 input -> 1 P2WPKH
output; a 73-byte ECDSA signature assumed): the Taproot claim leaf, 140 vB (the P2WSH claim is
136), plus one for rounding. :func:`min_htlc_amount` prices the smallest HTLC with it."""


def htlc_spend_value(
    amount: int,
    size: int,
    fee_rate: int | None,
    destination_script_pubkey: bytes,
    params: ChainParams,
) -> int:
    """What a claim or refund of ``size`` vbytes pays out of an HTLC worth ``amount`` at
    ``fee_rate`` (between the relay minimum and the chain's ceiling); raises
    :class:`InsufficientFunds` if what is left is dust. The fee is not capped at a share of the
    amount: a claim is all or nothing (one that does not confirm before the sender's refund
    loses the whole leg), so it pays what the chain asks; the fee ceiling
    (``params.max_fee_rate``) is what guards against a broken estimate."""
    fee = effective_fee_rate(fee_rate, params) * size
    value = amount - fee
    limit = dust_limit(destination_script_pubkey, params)
    if value < limit:
        raise InsufficientFunds(
            f"HTLC amount {amount} minus fee {fee} leaves {value}, below the dust limit {limit}"
        )
    return value


def min_htlc_amount(fee_rate: int, params: ChainParams) -> int:
    """The smallest HTLC whose claim and refund, at ``fee_rate``, still pay a relayable output
    to a P2WPKH address: below it a lock could be neither claimed nor refunded."""
    rate = max(fee_rate, params.min_relay_fee_rate)
    return dust_limit(_P2WPKH_TEMPLATE, params) + rate * MAX_HTLC_SPEND_VBYTES


def vsize(tx: CTransaction | CMutableTransaction) -> int:
    return int(tx.get_virtual_size())


def _p2wpkh_witness(tx: CMutableTransaction, index: int, key: CKey, amount: int) -> CTxInWitness:
    script_code = CScript(b"\x76\xa9\x14" + Hash160(key.pub) + b"\x88\xac")  # P2PKH of the key
    sighash = SignatureHash(script_code, tx, index, SIGHASH_ALL, amount, SIGVERSION_WITNESS_V0)
    sig = key.sign(sighash) + bytes([SIGHASH_ALL])
    return CTxInWitness(CScriptWitness([sig, bytes(key.pub)]))


def build_funding_tx(
    utxos: Sequence[Utxo],
    key_for: KeyLookup,
    outputs: Sequence[tuple[bytes, int]],
    change_script_pubkey: bytes,
    fee_rate: int | None,
    params: ChainParams,
) -> CTransaction:
    """Pay ``outputs`` (scriptPubKey, amount) from the wallet's P2WPKH ``utxos``.

    Coin selection is largest-first (fewest inputs, so the lowest fee) and stops as soon as the
    coins pay the outputs and the fee, with or without change; change below the dust limit goes
    to the fee instead of creating an output nobody can relay.
    """
    rate = effective_fee_rate(fee_rate, params)
    for spk, amount in outputs:
        if amount < dust_limit(spk, params):
            raise InvalidInput(
                f"amount {amount} is below the dust limit {dust_limit(spk, params)} for its output"
            )
    target = sum(amount for _, amount in outputs)
    chosen: list[Utxo] = []
    total = 0
    change = 0
    for utxo in sorted(utxos, key=lambda u: (-u.amount, u.txid, u.vout)):
        chosen.append(utxo)
        total += utxo.amount
        fee_with_change = rate * _estimate_funding_vsize(len(chosen), outputs, change_script_pubkey)
        if total >= target + fee_with_change:
            change = total - target - fee_with_change
            break
        # Enough without a change output: what is left (less than a change output would cost)
        # goes to the fee.
        if total >= target + rate * _estimate_funding_vsize(len(chosen), outputs, None):
            break
    else:
        fee = rate * _estimate_funding_vsize(max(len(chosen), 1), outputs, None)
        raise InsufficientFunds(
            f"wallet holds {total} in {len(chosen)} spendable outputs; "
            f"amount {target} plus fee about {fee} is needed"
        )
    vins = [CTxIn(COutPoint(lx(u.txid), u.vout), nSequence=RBF_SEQUENCE) for u in chosen]
    vouts = [CTxOut(amount, CScript(spk)) for spk, amount in outputs]
    if change >= dust_limit(change_script_pubkey, params):
        vouts.append(CTxOut(change, CScript(change_script_pubkey)))
    tx = CMutableTransaction(vins, vouts, nLockTime=0, nVersion=2)
    tx.wit = CTxWitness(
        [
            _p2wpkh_witness(tx, index, key_for(utxo.script_pubkey), utxo.amount)
            for index, utxo in enumerate(chosen)
        ]
    )
    return CTransaction.from_tx(tx)


def self_spend_vsize(destination_script_pubkey: bytes) -> int:
    """The virtual size of :func:`build_self_spend`'s transaction at its largest."""
    return _estimate_funding_vsize(1, [], destination_script_pubkey)


def build_self_spend(
    utxo: Utxo, key: CKey, destination_script_pubkey: bytes, fee: int, params: ChainParams
) -> CTransaction:
    """Spend one wallet P2WPKH coin whole to ``destination_script_pubkey`` less ``fee``
    (signals BIP125): a conflict that makes another transaction spending the coin (a lock
    that was never mined) unminable once it is buried."""
    value = utxo.amount - fee
    if fee < 0 or value < dust_limit(destination_script_pubkey, params):
        raise InsufficientFunds(
            f"coin {utxo.txid}:{utxo.vout} of {utxo.amount} cannot pay a fee of {fee} and "
            "keep an output above the dust limit"
        )
    tx = CMutableTransaction(
        [CTxIn(COutPoint(lx(utxo.txid), utxo.vout), nSequence=RBF_SEQUENCE)],
        [CTxOut(value, CScript(destination_script_pubkey))],
        nLockTime=0,
        nVersion=2,
    )
    tx.wit = CTxWitness([_p2wpkh_witness(tx, 0, key, utxo.amount)])
    return CTransaction.from_tx(tx)


def _estimate_funding_vsize(
    n_inputs: int, outputs: Sequence[tuple[bytes, int]], change: bytes | None
) -> int:
    vouts = [CTxOut(amount, CScript(spk)) for spk, amount in outputs]
    if change is not None:
        vouts.append(CTxOut(0, CScript(change)))
    vins = [CTxIn(COutPoint(b"\x00" * 32, 0), nSequence=RBF_SEQUENCE) for _ in range(n_inputs)]
    tx = CMutableTransaction(vins, vouts, nVersion=2)
    tx.wit = _largest_p2wpkh_witnesses(n_inputs)
    return vsize(tx)


def _largest_p2wpkh_witnesses(count: int) -> CTxWitness:
    """Witnesses of ``count`` P2WPKH inputs at their largest (a 72-byte signature), to size a
    transaction before it is signed."""
    dummy = CScriptWitness([b"\x00" * _MAX_DER_SIG, b"\x02" * 33])
    return CTxWitness([CTxInWitness(dummy) for _ in range(count)])


def build_htlc_spend(
    *,
    txid: str,
    vout: int,
    amount: int,
    witness_script: bytes,
    key: CKey,
    destination_script_pubkey: bytes,
    fee_rate: int | None,
    params: ChainParams,
    preimage: bytes | None = None,
    refund_expiry: Expiry | None = None,
    lock_time: int = 0,
) -> CTransaction:
    """Spend the HTLC output ``txid:vout`` to ``destination_script_pubkey``.

    A claim passes ``preimage`` (witness ``[sig, preimage, script]``); a refund passes
    ``refund_expiry`` (witness ``[sig, script]``, ``nLockTime = expiry``). Exactly one of them.
    """
    if (preimage is None) == (refund_expiry is None):
        raise InvalidInput("give exactly one of preimage (claim) or refund_expiry (refund)")
    if preimage is not None:
        check_preimage(preimage)
        n_lock_time = lock_time
        extra: list[bytes] = [preimage]
    else:
        assert refund_expiry is not None
        n_lock_time = expiry_to_locktime(refund_expiry)
        extra = []
    rate = effective_fee_rate(fee_rate, params)
    vin = CTxIn(COutPoint(lx(txid), vout), nSequence=RBF_SEQUENCE)
    tx = CMutableTransaction(
        [vin],
        [CTxOut(amount, CScript(destination_script_pubkey))],
        nLockTime=n_lock_time,
        nVersion=2,
    )
    tx.wit = CTxWitness(
        [CTxInWitness(CScriptWitness([b"\x00" * _MAX_DER_SIG, *extra, witness_script]))]
    )
    tx.vout[0].nValue = htlc_spend_value(amount, vsize(tx), rate, destination_script_pubkey, params)
    sighash = SignatureHash(
        CScript(witness_script), tx, 0, SIGHASH_ALL, amount, SIGVERSION_WITNESS_V0
    )
    sig = key.sign(sighash) + bytes([SIGHASH_ALL])
    tx.wit = CTxWitness([CTxInWitness(CScriptWitness([sig, *extra, witness_script]))])
    return CTransaction.from_tx(tx)


def build_child_spend(
    parent: Utxo,
    key_for: KeyLookup,
    fee_for_vsize: Callable[[int], int],
    params: ChainParams,
    wallet_coins: Sequence[Utxo] = (),
) -> CTransaction:
    """Spend the wallet's unconfirmed output ``parent`` back to the same script, paying
    ``fee_for_vsize(vsize)``: a child whose fee pays for its parents (CPFP).

    ``parent`` is always the first input. When it alone cannot pay the fee and still leave an
    output above the dust limit (a lock's small change, say), confirmed ``wallet_coins`` are
    added, largest first, until it can. The size is estimated with the largest signature, so
    the fee asked for is never short."""
    limit = dust_limit(parent.script_pubkey, params)
    spent = [parent]
    spare = sorted(wallet_coins, key=lambda u: (-u.amount, u.txid, u.vout))
    while True:
        vins = [CTxIn(COutPoint(lx(u.txid), u.vout), nSequence=RBF_SEQUENCE) for u in spent]
        tx = CMutableTransaction(vins, [CTxOut(0, CScript(parent.script_pubkey))], nVersion=2)
        tx.wit = _largest_p2wpkh_witnesses(len(spent))
        fee = fee_for_vsize(vsize(tx))
        value = sum(u.amount for u in spent) - fee
        if value >= limit:
            break
        if not spare:
            added = sum(u.amount for u in spent[1:])
            coins = f" and {len(spent) - 1} wallet outputs worth {added}" if added else ""
            raise InsufficientFunds(
                f"output {parent.txid}:{parent.vout} of {parent.amount}{coins} minus a child fee "
                f"of {fee} leaves {value}, below the dust limit {limit}"
            )
        spent.append(spare.pop(0))
    tx.vout[0].nValue = value
    tx.wit = CTxWitness(
        [
            _p2wpkh_witness(tx, index, key_for(u.script_pubkey), u.amount)
            for index, u in enumerate(spent)
        ]
    )
    return CTransaction.from_tx(tx)


class SpendPath(enum.Enum):
    """Which way an input opened an HTLC output, as its witness proves it."""

    CLAIM = "claim"  # the hash-lock branch / claim leaf, with the preimage
    REFUND = "refund"  # the timelock branch / refund leaf
    KEY_PATH = "key_path"  # a Taproot key-path signature (both parties, cooperative)


@dataclass(frozen=True, slots=True)
class HtlcSpend:
    """How one transaction spent an HTLC output; ``preimage`` is set for a claim that shows
    it (its ``HASH160`` already checked against the output's hash lock)."""

    path: SpendPath
    preimage: bytes | None = field(default=None, repr=False)


class UnrecognisedSpend(ChainError):
    """A transaction the node reports as spending an HTLC output proves neither its claim nor
    its refund (nor, for Taproot, the key path). No valid Bitcoin spend looks like that, so the
    node (or whoever fed it) is lying, or the output is not the HTLC it should be: an alarm,
    never read as a refund."""

    code = "htlc_spend_unrecognised"


def htlc_input_witness(tx: CTransaction, txid: str, vout: int) -> list[bytes] | None:
    """The witness stack of the input of ``tx`` spending ``txid:vout``; ``None`` when no input
    spends it. An input with no witness has an empty stack."""
    for index, txin in enumerate(tx.vin):
        if txin.prevout.hash != lx(txid) or txin.prevout.n != vout:
            continue
        if index >= len(tx.wit.vtxinwit):
            return []
        return [bytes(item) for item in tx.wit.vtxinwit[index].scriptWitness.stack]
    return None


def read_htlc_spend(
    tx: CTransaction, txid: str, vout: int, witness_script: bytes
) -> HtlcSpend | None:
    """How ``tx`` spends the P2WSH HTLC ``txid:vout`` (``None``: it does not spend it).

    Read by what the witness proves under the script, never by its length: the last item must
    be the witness script (consensus checks it against the output); the script's branch is
    chosen by ``OP_SIZE <32> OP_EQUAL`` on the top stack item, so a 32-byte top item runs the
    claim branch -- which only passes when its ``HASH160`` is the hash lock -- and anything else
    the refund branch. (Segwit v0 demands a clean stack, so a valid claim is exactly ``[sig,
    preimage, script]`` and a valid refund ``[sig, script]``; the reader relies on the script's
    own selector rather than on those sizes.) A witness that proves neither -- which only a
    lying node can show -- raises :class:`UnrecognisedSpend`."""
    stack = htlc_input_witness(tx, txid, vout)
    if stack is None:
        return None
    spender = b2lx(tx.GetTxid())
    if not stack or stack[-1] != witness_script:
        raise UnrecognisedSpend(
            f"{spender} spends HTLC {txid}:{vout} without revealing its witness script"
        )
    args = stack[:-1]
    if not args:
        raise UnrecognisedSpend(f"{spender} spends HTLC {txid}:{vout} with no script arguments")
    top = args[-1]
    if len(top) != PREIMAGE_SIZE:
        return HtlcSpend(SpendPath.REFUND)
    if Hash160(top) != parse_htlc_script(witness_script).hash160:
        raise UnrecognisedSpend(
            f"{spender} spends HTLC {txid}:{vout} through its claim branch with a secret that "
            "does not open its hash lock"
        )
    return HtlcSpend(SpendPath.CLAIM, top)


def extract_preimage(tx: CTransaction, txid: str, vout: int, witness_script: bytes) -> bytes | None:
    """The preimage from an input of ``tx`` that claims ``txid:vout``, or ``None`` when ``tx``
    does not spend it or spends it through the refund branch (:func:`read_htlc_spend`)."""
    found = read_htlc_spend(tx, txid, vout, witness_script)
    return None if found is None else found.preimage
