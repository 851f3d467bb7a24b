"""Bitcoin Core's relay policy (standardness) for the embedded chain's mempool.

What a Core node refuses to relay although it is valid under consensus, so a transaction KOFO's
tests send to the embedded chain is one a real node would take. The rules and reject reasons
are Core 0.21's (``policy/policy.cpp``; the dialect litecoind 0.21 speaks and the RPC server
serves): ``IsStandardTx`` (version, weight, scriptSig size and push-only, standard output types,
OP_RETURN size, one OP_RETURN at most, dust), ``tx-size-small`` and ``AreInputsStandard``.
Not modelled (listed in docs/servers.md): sigop counts (P2SH redeem scripts with more than 15
sigops, ``bad-txns-too-many-sigops``) and ``IsWitnessStandard``'s limits on witness items.
"""

from __future__ import annotations

from bitcointx.core import CBitcoinTransaction as CTransaction
from bitcointx.core.script import CScript, CScriptInvalidError

from kofo.errors import TxRejected
from kofo.settlement.chains.bitcoin.corejson import output_type
from kofo.settlement.chains.bitcoin.params import ChainParams

MAX_STANDARD_TX_WEIGHT = 400_000
MAX_STANDARD_VERSION = 2
MAX_SCRIPTSIG_SIZE = 1650
MAX_OP_RETURN_RELAY = 83
"""Core's ``-datacarriersize`` default: the whole OP_RETURN script, 80 bytes of data plus the
opcodes."""
MIN_STANDARD_TX_NONWITNESS_SIZE = 82
"""Core 0.21 (litecoind's dialect); Core 25 lowered it to 65."""
MAX_STANDARD_MULTISIG_KEYS = 3
_SPEND_WITNESS_INPUT = 32 + 4 + 1 + 107 // 4 + 4  # GetDustThreshold, segwit spend
_SPEND_LEGACY_INPUT = 32 + 4 + 1 + 107 + 4


class NonStandard(TxRejected):
    """Valid under consensus, but Core's relay policy refuses it."""

    code = "tx_nonstandard"


def dust_threshold(script_pubkey: bytes, params: ChainParams) -> int:
    """Core's ``GetDustThreshold`` with ``-dustrelayfee`` (0 for an unspendable output)."""
    script = CScript(script_pubkey)
    if script_pubkey[:1] == b"\x6a" or len(script_pubkey) > 10_000:
        return 0
    size = 8 + _compact_size_len(len(script_pubkey)) + len(script_pubkey)
    size += _SPEND_WITNESS_INPUT if script.is_witness_scriptpubkey() else _SPEND_LEGACY_INPUT
    return size * params.dust_relay_fee_rate


def _compact_size_len(n: int) -> int:
    return 1 if n < 253 else 3 if n <= 0xFFFF else 5


def _refuse(reason: str, detail: str) -> NonStandard:
    return NonStandard(f"{detail} ({reason})")


def _multisig_standard(script_pubkey: bytes) -> bool:
    m, n = script_pubkey[0] - 0x50, script_pubkey[-2] - 0x50
    return 1 <= n <= MAX_STANDARD_MULTISIG_KEYS and 1 <= m <= n


def check_standard_tx(tx: CTransaction, params: ChainParams) -> None:
    """Core's ``IsStandardTx`` and the ``tx-size-small`` check after it."""
    if not 1 <= tx.nVersion <= MAX_STANDARD_VERSION:
        raise _refuse("version", f"transaction version {tx.nVersion} is not standard")
    weight = 3 * len(tx.serialize(include_witness=False)) + len(tx.serialize())
    if weight > MAX_STANDARD_TX_WEIGHT:
        raise _refuse("tx-size", f"weight {weight} is over {MAX_STANDARD_TX_WEIGHT}")
    for index, txin in enumerate(tx.vin):
        script_sig = bytes(txin.scriptSig)
        if len(script_sig) > MAX_SCRIPTSIG_SIZE:
            raise _refuse("scriptsig-size", f"input {index} scriptSig of {len(script_sig)} bytes")
        try:
            push_only = CScript(script_sig).is_push_only()
        except CScriptInvalidError:
            push_only = False
        if not push_only:
            raise _refuse("scriptsig-not-pushonly", f"input {index} scriptSig is not push-only")
    data_outputs = 0
    for index, out in enumerate(tx.vout):
        script_pubkey = bytes(out.scriptPubKey)
        kind = output_type(script_pubkey)
        if kind == "nonstandard" or (kind == "multisig" and not _multisig_standard(script_pubkey)):
            raise _refuse("scriptpubkey", f"output {index} script is not a standard type")
        if kind == "nulldata":
            if len(script_pubkey) > MAX_OP_RETURN_RELAY:
                raise _refuse(
                    "scriptpubkey",
                    f"output {index} OP_RETURN script of {len(script_pubkey)} bytes is over "
                    f"{MAX_OP_RETURN_RELAY}",
                )
            data_outputs += 1
        elif out.nValue < dust_threshold(script_pubkey, params):
            raise _refuse(
                "dust",
                f"output {index} of {out.nValue} is below the dust threshold "
                f"{dust_threshold(script_pubkey, params)}",
            )
    if data_outputs > 1:
        raise _refuse("multi-op-return", f"{data_outputs} OP_RETURN outputs (one is standard)")
    size = len(tx.serialize(include_witness=False))
    if size < MIN_STANDARD_TX_NONWITNESS_SIZE:
        raise _refuse(
            "tx-size-small",
            f"non-witness size {size} is below {MIN_STANDARD_TX_NONWITNESS_SIZE}",
        )


def check_standard_inputs(tx: CTransaction, prevout_scripts: list[bytes]) -> None:
    """Core's ``AreInputsStandard``: what is spent must be a standard type (not ``nonstandard``
    and not a witness version this node cannot check)."""
    for index, script_pubkey in enumerate(prevout_scripts):
        kind = output_type(script_pubkey)
        if kind in ("nonstandard", "witness_unknown", "anchor"):
            raise _refuse("bad-txns-nonstandard-inputs", f"input {index} spends a {kind} output")
