"""The only module that touches py-bitcoinkernel (``pbk``): Bitcoin Core's consensus code.

The binding is alpha (0.1.0a5), so everything KOFO needs from it goes through this small
interface: verify one input's script, and keep a chainstate that validates and connects blocks
(reorganising to the most-work chain on its own).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

import pbk
from pbk.script import PrecomputedTransactionData

from kofo.errors import ChainError, TxRejected

# Consensus script flags Bitcoin Core enforces on a block at any regtest height (BIP16, BIP66,
# BIP65, BIP112, BIP141/143/147, BIP341/342): a transaction is only accepted into the embedded
# mempool if its inputs verify under them, so a mined block cannot fail on a script.
CONSENSUS_FLAGS = pbk.ScriptVerificationFlags.ALL


@dataclass(frozen=True, slots=True)
class SpentOutput:
    script_pubkey: bytes
    amount: int


def verify_input(tx_raw: bytes, index: int, spent: Sequence[SpentOutput]) -> None:
    """Raise :class:`TxRejected` unless input ``index`` of ``tx_raw`` validly spends
    ``spent[index]`` under Core's consensus script rules. ``spent`` lists every input's output
    (taproot sighashes commit to all of them)."""
    try:
        tx = pbk.Transaction(tx_raw)
    except Exception as exc:
        raise TxRejected(f"transaction does not parse: {exc}") from None
    outputs = [pbk.TransactionOutput(pbk.ScriptPubkey(s.script_pubkey), s.amount) for s in spent]
    precomputed = PrecomputedTransactionData(tx, outputs)
    target = spent[index]
    try:
        ok = pbk.ScriptPubkey(target.script_pubkey).verify(
            target.amount, tx, precomputed, index, CONSENSUS_FLAGS
        )
    except pbk.ScriptVerifyException as exc:
        raise TxRejected(f"input {index}: script verification error {exc.status.name}") from None
    if not ok:
        raise TxRejected(f"input {index}: script verification failed (mandatory-script-verify)")


@dataclass(frozen=True, slots=True)
class KernelBlock:
    height: int
    hash: str  # display (big-endian) hex
    time: int


class KernelChainstate:
    """A regtest chainstate validated by Bitcoin Core's code, kept in ``datadir``."""

    def __init__(self, datadir: str, *, in_memory: bool = True) -> None:
        self._lock = threading.RLock()
        self._checked: list[tuple[str, pbk.ValidationMode, pbk.BlockValidationResult]] = []
        callbacks = pbk.ValidationInterfaceCallbacks(block_checked=self._on_block_checked)
        options = pbk.ContextOptions()
        options.set_chainparams(pbk.ChainParameters(pbk.ChainType.REGTEST))
        options.set_validation_interface(callbacks)
        self._callbacks = callbacks  # the kernel keeps raw pointers into it
        self._context = pbk.Context(options)
        cm_options = pbk.ChainstateManagerOptions(self._context, datadir, f"{datadir}/blocks")
        cm_options.update_block_tree_db_in_memory(in_memory)
        cm_options.update_chainstate_db_in_memory(in_memory)
        self._chainman = pbk.ChainstateManager(cm_options)

    def _on_block_checked(
        self, _user_data: object, block: pbk.Block, state: pbk.BlockValidationState
    ) -> None:
        self._checked.append(
            (str(block.block_hash), state.validation_mode, state.block_validation_result)
        )

    def process_block(self, raw: bytes) -> None:
        """Validate ``raw`` and connect it if it is valid; raise :class:`ChainError` if not."""
        with self._lock:
            self._checked.clear()
            try:
                block = pbk.Block(raw)
            except Exception as exc:
                raise ChainError(f"block does not parse: {exc}") from None
            block_hash = str(block.block_hash)
            try:
                self._chainman.process_block(block)
            except pbk.ProcessBlockException as exc:
                raise ChainError(f"block {block_hash} rejected (kernel code {exc.code})") from None
            for checked_hash, mode, result in self._checked:
                if checked_hash == block_hash and mode != pbk.ValidationMode.VALID:
                    raise ChainError(f"block {block_hash} is invalid: {result.name}")

    def height(self) -> int:
        with self._lock:
            return int(self._chainman.get_active_chain().height)

    def block_at(self, height: int) -> KernelBlock:
        with self._lock:
            chain = self._chainman.get_active_chain()
            if not 0 <= height <= chain.height:
                raise ChainError(f"no block at height {height} (tip is {chain.height})")
            entry = chain.block_tree_entries[height]
            return _kernel_block(entry)

    def contains(self, block_hash: str) -> bool:
        """Whether ``block_hash`` is on the active (best) chain."""
        with self._lock:
            entries = self._chainman.block_tree_entries
            key = pbk.BlockHash(bytes.fromhex(block_hash)[::-1])
            if key not in entries:
                return False
            entry = entries[key]
            chain = self._chainman.get_active_chain()
            return bool(entry.height <= chain.height and entry in chain.block_tree_entries)

    def block_raw(self, block_hash: str) -> bytes:
        with self._lock:
            entries = self._chainman.block_tree_entries
            key = pbk.BlockHash(bytes.fromhex(block_hash)[::-1])
            if key not in entries:
                raise ChainError(f"unknown block {block_hash}")
            return bytes(self._chainman.blocks[entries[key]])

    def header_of(self, block_hash: str) -> KernelBlock:
        with self._lock:
            key = pbk.BlockHash(bytes.fromhex(block_hash)[::-1])
            entries = self._chainman.block_tree_entries
            if key not in entries:
                raise ChainError(f"unknown block {block_hash}")
            return _kernel_block(entries[key])


def _kernel_block(entry: pbk.BlockTreeEntry) -> KernelBlock:
    header = entry.block_header
    return KernelBlock(
        height=int(entry.height),
        hash=str(entry.block_hash),
        time=int(header.timestamp.timestamp()),
    )


_CHECK_CHAINS = {
    "mainnet": pbk.ChainType.MAINNET,
    "testnet": pbk.ChainType.TESTNET,
    "signet": pbk.ChainType.SIGNET,
    "regtest": pbk.ChainType.REGTEST,
}
_check_params: dict[str, pbk.ChainParameters] = {}


def check_block(raw: bytes, network: str, *, proof_of_work: bool) -> str | None:
    """Core's context-free ``CheckBlock`` on ``raw`` under ``network``'s Bitcoin consensus
    parameters: size limits, coinbase placement, each transaction's own checks, sigops, the
    merkle root (a mutated block included) and, with ``proof_of_work``, the header's hash
    against its ``bits`` and the network's ``powLimit``. Returns why it fails, ``None`` if it
    passes. A network Core does not know (btcd's simnet, Litecoin) is checked under regtest's
    parameters, whose ``powLimit`` accepts any target: their own limit is the caller's check."""
    with _GLOBAL_LOCK:
        chain = _check_params.get(network)
        if chain is None:
            chain = pbk.ChainParameters(_CHECK_CHAINS.get(network, pbk.ChainType.REGTEST))
            _check_params[network] = chain
    try:
        block = pbk.Block(raw)
    except Exception:  # the binding raises RuntimeError for bytes that are no block
        return "does not parse as a block"
    flags = pbk.BlockCheckFlags.ALL if proof_of_work else pbk.BlockCheckFlags.MERKLE
    state = block.check(chain.consensus_params, flags)
    if state.validation_mode == pbk.ValidationMode.VALID:
        return None
    return str(state.block_validation_result.name).lower()


_GLOBAL_LOCK = threading.Lock()
