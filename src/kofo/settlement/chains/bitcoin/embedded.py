"""An in-process Bitcoin regtest chain whose blocks are validated by Bitcoin Core's code.

Blocks are built here and handed to the kernel (:mod:`.kernel`), which validates and connects
them -- so what is on this chain obeys Core's consensus, not ours. The mempool is ours and
deliberately strict: a transaction enters it only if every input exists unspent, coinbase inputs
are mature, it is final for the next block, it pays the minimum relay fee, and every input's
script verifies under Core's consensus script code. A transaction spending an input of a mempool
transaction replaces it only under BIP125's rules (signalled, higher fee and fee rate).
A fee market can be set (:meth:`EmbeddedChain.set_block_min_fee_rate`, Core's ``-blockmintxfee``):
blocks then leave cheaper transactions waiting in the mempool, and ``estimatesmartfee`` answers
that rate. A full mempool's floor can be set too (:meth:`EmbeddedChain.set_mempool_min_fee_rate`,
Core's dynamic ``mempoolminfee``): cheaper transactions are then refused ("mempool min fee not
met"), and the estimate is at least that floor, as Core's is. Reorganisations happen the way
they do on a real node: a longer competing branch (see :meth:`EmbeddedChain.mine` with
``parent``) wins.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from bitcointx.core import (
    CBitcoinTransaction as CTransaction,
)
from bitcointx.core import (
    CheckTransaction,
    CheckTransactionError,
    b2lx,
)

from kofo.errors import ChainError, FeeTooLow, InvalidInput, TxRejected
from kofo.settlement.chains.bitcoin.blocks import ParsedBlock, build_block, parse_block
from kofo.settlement.chains.bitcoin.kernel import KernelChainstate, SpentOutput, verify_input
from kofo.settlement.chains.bitcoin.params import ChainParams, chain_params
from kofo.settlement.chains.bitcoin.policy import check_standard_inputs, check_standard_tx
from kofo.settlement.chains.bitcoin.script import LOCKTIME_THRESHOLD

_SEQUENCE_FINAL = 0xFFFFFFFF
_BIP68_DISABLE = 1 << 31
_BIP68_TYPE_TIME = 1 << 22
_BIP68_MASK = 0xFFFF

_SEQUENCE_NO_RBF = 0xFFFFFFFE
"""BIP125: a transaction is replaceable if any input's nSequence is below this."""

MAX_REPLACEMENT_EVICTIONS = 100
"""BIP125 rule 5 (Core's MAX_REPLACEMENT_CANDIDATES): bounds the work one replacement causes."""

MTP_WINDOW = 11
"""BIP113: time locks compare with the median of the last 11 block times, not the tip's."""


@dataclass(frozen=True, slots=True)
class Coin:
    amount: int
    script_pubkey: bytes
    height: int
    coinbase: bool


MAX_FUTURE_BLOCK_TIME = 2 * 60 * 60
"""Bitcoin Core refuses a block timestamped more than two hours after its own clock."""


class MissingInputs(TxRejected):
    """An input is unknown or already spent (Core: ``bad-txns-inputs-missingorspent``)."""

    code = "tx_missing_inputs"


class MaxFeeExceeded(TxRejected):
    """The fee is over the ceiling the sender set (``maxfeerate``): almost surely a mistake."""

    code = "max_fee_exceeded"


class AlreadyInChain(TxRejected):
    """The transaction is already confirmed (Core's RPC_VERIFY_ALREADY_IN_CHAIN)."""

    code = "tx_already_in_chain"


@dataclass(frozen=True, slots=True)
class TxLocation:
    tx: CTransaction
    block_hash: str | None  # None while in the mempool
    height: int | None


class EmbeddedChain:
    """A regtest chain in this process. Thread-safe (the RPC server calls it from threads)."""

    def __init__(
        self,
        datadir: str | None = None,
        *,
        params: ChainParams | None = None,
        clock: Callable[[], int] | None = None,
        require_standard: bool = True,
    ) -> None:
        self.params = params or chain_params("btc", "regtest")
        self.require_standard = require_standard
        """Apply Core's relay policy (:mod:`.policy`) as a regtest node does by default
        (``-acceptnonstdtxn=0``); off only for a test that needs a non-standard transaction."""
        self._own_dir = datadir is None
        self.datadir = datadir or tempfile.mkdtemp(prefix="kofo-regtest-")
        self._clock = clock or (lambda: int(time.time()))
        self._time_offset = 0
        self._lock = threading.RLock()
        self._kernel = KernelChainstate(self.datadir)
        self._blocks: dict[str, ParsedBlock] = {}
        self._heights: dict[str, int] = {}
        self._tx_blocks: dict[str, list[str]] = {}
        self._mempool: dict[str, CTransaction] = {}
        self._utxo: dict[tuple[str, int], Coin] = {}
        self._utxo_tip = ""
        self._tag = 0
        self._block_min_fee_rate = 0
        self._mempool_min_fee_rate = 0
        genesis = self._kernel.block_at(0)
        self._remember(parse_block(self._kernel.block_raw(genesis.hash)), 0)
        # Blocks already in a persistent datadir (a restart) are re-read from the kernel.
        for height in range(1, self._kernel.height() + 1):
            entry = self._kernel.block_at(height)
            self._remember(parse_block(self._kernel.block_raw(entry.hash)), height)

    def close(self) -> None:
        if self._own_dir:
            shutil.rmtree(self.datadir, ignore_errors=True)

    # ---- clock -------------------------------------------------------------------------------

    def now(self) -> int:
        return self._clock() + self._time_offset

    def advance_time(self, seconds: int) -> None:
        """Move the chain's wall clock forward (new blocks get later timestamps)."""
        with self._lock:
            self._time_offset += seconds

    # ---- reading the chain -------------------------------------------------------------------

    def height(self) -> int:
        return self._kernel.height()

    def block_hash(self, height: int) -> str:
        return self._kernel.block_at(height).hash

    def block_raw(self, block_hash: str) -> bytes:
        return self._kernel.block_raw(block_hash)

    def block_height(self, block_hash: str) -> int:
        try:
            return self._heights[block_hash]
        except KeyError:
            raise ChainError(f"unknown block {block_hash}") from None

    def block_time(self, block_hash: str) -> int:
        return self._blocks[block_hash].time if block_hash in self._blocks else 0

    def on_best_chain(self, block_hash: str) -> bool:
        return self._kernel.contains(block_hash)

    def median_time_past(self, block_hash: str | None = None) -> int:
        with self._lock:
            cursor = block_hash or self.block_hash(self.height())
            times: list[int] = []
            while cursor in self._blocks and len(times) < MTP_WINDOW:
                block = self._blocks[cursor]
                times.append(block.time)
                cursor = block.prev_hash
            # Core's GetMedianTimePast: the element at len/2 of the sorted times.
            return sorted(times)[len(times) // 2]

    def mempool_txids(self) -> list[str]:
        with self._lock:
            return list(self._mempool)

    def find_tx(self, txid: str) -> TxLocation | None:
        """Where ``txid`` is: a block on the best chain, the mempool, or nowhere (``None``)."""
        with self._lock:
            for block_hash in self._tx_blocks.get(txid, []):
                if self._kernel.contains(block_hash):
                    block = self._blocks[block_hash]
                    tx = next(t for t in block.txs if b2lx(t.GetTxid()) == txid)
                    return TxLocation(tx, block_hash, self._heights[block_hash])
            if txid in self._mempool:
                return TxLocation(self._mempool[txid], None, None)
            return None

    def utxo(self, txid: str, vout: int) -> Coin | None:
        with self._lock:
            return self._utxo_set().get((txid, vout))

    # ---- mempool -----------------------------------------------------------------------------

    def test_accept(self, raw: bytes, *, max_fee_rate: int = 0) -> str:
        """Check ``raw`` as :meth:`send_raw` would, without keeping it. Returns the txid."""
        with self._lock:
            tx = self._decode(raw)
            self._check(tx, raw, allow_replace=True, max_fee_rate=max_fee_rate)
            return b2lx(tx.GetTxid())

    def send_raw(self, raw: bytes, *, max_fee_rate: int = 0) -> str:
        """Accept ``raw`` into the mempool (idempotent for a tx already there). A transaction
        that spends an input of mempool transactions replaces them (and their descendants) if
        it meets BIP125's rules (see :meth:`_replacement_check`). ``max_fee_rate`` (base units
        per 1000 vbytes, 0 for none) refuses a fee above it, as ``sendrawtransaction``'s
        ``maxfeerate`` does (``max-fee-exceeded``)."""
        with self._lock:
            tx = self._decode(raw)
            txid = b2lx(tx.GetTxid())
            if txid in self._mempool:
                return txid
            for evicted in self._check(tx, raw, allow_replace=True, max_fee_rate=max_fee_rate):
                self._mempool.pop(evicted, None)
            self._mempool[txid] = tx
            return txid

    def _decode(self, raw: bytes) -> CTransaction:
        try:
            tx = CTransaction.deserialize(raw)
        except Exception as exc:
            raise TxRejected(f"transaction does not decode: {exc}") from None
        try:
            CheckTransaction(tx)
        except CheckTransactionError as exc:
            raise TxRejected(f"transaction is malformed: {exc}") from None
        if tx.is_coinbase():
            raise TxRejected("coinbase transactions cannot be broadcast (coinbase)")
        return tx

    def _check(
        self, tx: CTransaction, raw: bytes, *, allow_replace: bool = False, max_fee_rate: int = 0
    ) -> set[str]:
        """Raise :class:`TxRejected` unless ``tx`` may enter the mempool; return the mempool
        txids it replaces (empty unless ``allow_replace`` and it conflicts)."""
        txid = b2lx(tx.GetTxid())
        utxos = self._utxo_set()
        found = self.find_tx(txid)
        if found is not None and found.block_hash is not None:
            raise AlreadyInChain(f"transaction {txid} is already in block {found.block_hash}")
        if self.require_standard:
            check_standard_tx(tx, self.params)
        mempool_outputs: dict[tuple[str, int], Coin] = {}
        mempool_spent: dict[tuple[str, int], str] = {}
        for other_id, other in self._mempool.items():
            for n, out in enumerate(other.vout):
                mempool_outputs[(other_id, n)] = Coin(
                    out.nValue, bytes(out.scriptPubKey), self.height() + 1, False
                )
            for txin in other.vin:
                mempool_spent[(b2lx(txin.prevout.hash), txin.prevout.n)] = other_id
        next_height = self.height() + 1
        spent: list[SpentOutput] = []
        total_in = 0
        conflicts: dict[str, int] = {}  # mempool txid -> the first input of ``tx`` it spends
        for index, txin in enumerate(tx.vin):
            outpoint = (b2lx(txin.prevout.hash), txin.prevout.n)
            if outpoint in mempool_spent:
                if not allow_replace:
                    raise TxRejected(
                        f"input {index} ({outpoint[0]}:{outpoint[1]}) is already spent by "
                        f"{mempool_spent[outpoint]} in the mempool (txn-mempool-conflict)"
                    )
                conflicts.setdefault(mempool_spent[outpoint], index)
            coin = utxos.get(outpoint) or mempool_outputs.get(outpoint)
            if coin is None:
                raise MissingInputs(
                    f"input {index} ({outpoint[0]}:{outpoint[1]}) does not exist or is already "
                    "spent (bad-txns-inputs-missingorspent)"
                )
            if coin.coinbase and next_height - coin.height < self.params.coinbase_maturity:
                raise TxRejected(
                    f"input {index} spends a coinbase at height {coin.height} before it matures "
                    f"at {coin.height + self.params.coinbase_maturity} "
                    "(bad-txns-premature-spend-of-coinbase)"
                )
            self._check_relative_lock(tx, index, coin, next_height)
            spent.append(SpentOutput(coin.script_pubkey, coin.amount))
            total_in += coin.amount
        self._check_final(tx, next_height)
        if self.require_standard:
            check_standard_inputs(tx, [coin.script_pubkey for coin in spent])
        total_out = sum(out.nValue for out in tx.vout)
        if total_out > total_in:
            raise TxRejected(f"outputs {total_out} exceed inputs {total_in} (bad-txns-in-belowout)")
        fee_floor = self.params.min_relay_fee_rate * int(tx.get_virtual_size())
        if total_in - total_out < fee_floor:
            raise FeeTooLow(
                f"fee {total_in - total_out} is below the minimum relay fee {fee_floor} "
                "(min relay fee not met)"
            )
        pool_floor = self._mempool_min_fee_rate * int(tx.get_virtual_size())
        if total_in - total_out < pool_floor:
            raise FeeTooLow(
                f"fee {total_in - total_out} is below the mempool's minimum {pool_floor} at "
                f"{self._mempool_min_fee_rate} sat/vB (mempool min fee not met)"
            )
        evicted: set[str] = set()
        if conflicts:
            evicted = self._replacement_check(tx, total_in - total_out, conflicts, utxos)
        for index in range(len(tx.vin)):
            verify_input(raw, index, spent)
        max_fee = max_fee_rate * int(tx.get_virtual_size()) // 1000
        if max_fee_rate and total_in - total_out > max_fee:
            raise MaxFeeExceeded(
                f"fee {total_in - total_out} is over the maximum {max_fee} at {max_fee_rate} "
                "per kvB (max-fee-exceeded)"
            )
        return evicted

    def _replacement_check(
        self,
        tx: CTransaction,
        fee: int,
        conflicts: dict[str, int],
        utxos: dict[tuple[str, int], Coin],
    ) -> set[str]:
        """BIP125 (Bitcoin Core's policy/rbf.cpp, without the ancestor-package details):

        1. every directly conflicting tx signals replaceability (an input nSequence below
           0xfffffffe; KOFO's RBF_SEQUENCE);
        2. the replacement spends no unconfirmed output it did not already depend on;
        3. its absolute fee is at least the evicted transactions' total;
        4. the extra fee pays the relay fee for its own size;
        5. it evicts at most MAX_REPLACEMENT_EVICTIONS transactions;
        6. its fee rate is higher than every directly conflicting tx's.

        Returns the evicted txids (the conflicts and all their mempool descendants).
        """
        txid = b2lx(tx.GetTxid())
        for other_id, index in conflicts.items():
            other = self._mempool[other_id]
            if all(txin.nSequence >= _SEQUENCE_NO_RBF for txin in other.vin):
                raise TxRejected(
                    f"input {index} conflicts with {other_id}, which does not signal BIP125 "
                    "replaceability (txn-mempool-conflict)"
                )
        evicted = set(conflicts)
        frontier = list(conflicts)
        while frontier:
            parent = frontier.pop()
            for child_id, child in self._mempool.items():
                if child_id not in evicted and any(
                    b2lx(i.prevout.hash) == parent for i in child.vin
                ):
                    evicted.add(child_id)
                    frontier.append(child_id)
        if len(evicted) > MAX_REPLACEMENT_EVICTIONS:
            raise TxRejected(
                f"replacing {len(evicted)} transactions exceeds {MAX_REPLACEMENT_EVICTIONS} "
                "(too many potential replacements)"
            )
        original_parents = {
            b2lx(i.prevout.hash) for other_id in conflicts for i in self._mempool[other_id].vin
        }
        for index, txin in enumerate(tx.vin):
            parent = b2lx(txin.prevout.hash)
            if parent in evicted:
                raise TxRejected(
                    f"input {index} spends {parent}, which this transaction would replace "
                    "(bad-txns-spends-conflicting-tx)"
                )
            if parent in self._mempool and parent not in original_parents:
                raise TxRejected(
                    f"input {index} spends the unconfirmed {parent} that the replaced "
                    "transactions did not (replacement-adds-unconfirmed)"
                )
        vsize = int(tx.get_virtual_size())
        for other_id in conflicts:
            other = self._mempool[other_id]
            other_fee = self._mempool_fee(other, utxos)
            other_vsize = int(other.get_virtual_size())
            # Compare fee rates without division: fee/vsize > other_fee/other_vsize.
            if fee * other_vsize <= other_fee * vsize:
                raise FeeTooLow(
                    f"replacement {txid} fee rate {fee}/{vsize} vB is not above {other_id}'s "
                    f"{other_fee}/{other_vsize} vB (insufficient fee, txn-mempool-conflict)"
                )
        evicted_fees = sum(self._mempool_fee(self._mempool[e], utxos) for e in evicted)
        if fee < evicted_fees:
            raise FeeTooLow(
                f"replacement fee {fee} is below the {evicted_fees} paid by the transactions it "
                "replaces (insufficient fee, txn-mempool-conflict)"
            )
        relay = self.params.min_relay_fee_rate * vsize
        if fee - evicted_fees < relay:
            raise FeeTooLow(
                f"replacement adds {fee - evicted_fees} in fees, less than the relay fee {relay} "
                "for its own size (insufficient fee, txn-mempool-conflict)"
            )
        return evicted

    def _mempool_fee(self, tx: CTransaction, utxos: dict[tuple[str, int], Coin]) -> int:
        total_in = 0
        for txin in tx.vin:
            outpoint = (b2lx(txin.prevout.hash), txin.prevout.n)
            coin = utxos.get(outpoint)
            if coin is not None:
                total_in += coin.amount
            else:
                total_in += self._mempool[outpoint[0]].vout[outpoint[1]].nValue
        return total_in - sum(out.nValue for out in tx.vout)

    def _check_final(self, tx: CTransaction, next_height: int) -> None:
        # IsFinalTx with BIP113: a time lock compares with the tip's median time past.
        if tx.nLockTime == 0 or all(txin.nSequence == _SEQUENCE_FINAL for txin in tx.vin):
            return
        if tx.nLockTime < LOCKTIME_THRESHOLD:
            if tx.nLockTime < next_height:
                return
            raise TxRejected(
                f"nLockTime {tx.nLockTime} is not final at height {next_height} (non-final)"
            )
        mtp = self.median_time_past()
        if tx.nLockTime < mtp:
            return
        raise TxRejected(f"nLockTime {tx.nLockTime} is not final at median time {mtp} (non-final)")

    def _check_relative_lock(self, tx: CTransaction, index: int, coin: Coin, height: int) -> None:
        sequence = tx.vin[index].nSequence
        if tx.nVersion < 2 or sequence & _BIP68_DISABLE:
            return
        if sequence & _BIP68_TYPE_TIME:
            # KOFO never uses time-based relative locks; refuse rather than guess (the kernel
            # would reject the block if we let a premature one through).
            raise TxRejected(f"input {index} uses a time-based relative lock (non-BIP68-final)")
        if coin.height + (sequence & _BIP68_MASK) > height:
            raise TxRejected(f"input {index} relative lock not yet reached (non-BIP68-final)")

    # ---- mining ------------------------------------------------------------------------------

    @property
    def block_min_fee_rate(self) -> int:
        return self._block_min_fee_rate

    def set_block_min_fee_rate(self, rate: int) -> None:
        """Mine only transactions paying at least ``rate`` sat/vB (Core's ``-blockmintxfee``);
        cheaper ones wait in the mempool until replaced or the rate falls. 0 mines everything."""
        rate = _fee_rate("block min fee rate", rate)
        with self._lock:
            self._block_min_fee_rate = rate

    @property
    def mempool_min_fee_rate(self) -> int:
        return self._mempool_min_fee_rate

    def set_mempool_min_fee_rate(self, rate: int) -> None:
        """Refuse transactions paying under ``rate`` sat/vB (Core's floor for a full mempool,
        ``mempoolminfee``); those already in the mempool stay. 0 lifts the floor."""
        rate = _fee_rate("mempool min fee rate", rate)
        with self._lock:
            self._mempool_min_fee_rate = rate

    @property
    def fee_estimate_rate(self) -> int:
        """What ``estimatesmartfee`` answers (sat/vB; 0: no estimate): the rate the next block
        needs, and never under the mempool's floor."""
        return max(self._block_min_fee_rate, self._mempool_min_fee_rate)

    def _block_template(self) -> list[CTransaction]:
        """The mempool transactions a block takes at the block minimum fee rate, chosen the
        way Core's block assembler does: by *ancestor fee rate* (a transaction together with
        its unconfirmed parents, the package a miner must take to take it), best package
        first, each parent before its children. A parent below the rate is taken when a child
        pays enough for both (child pays for parent, CPFP)."""
        if self._block_min_fee_rate == 0:
            return list(self._mempool.values())
        utxos = self._utxo_set()
        fee = {txid: self._mempool_fee(tx, utxos) for txid, tx in self._mempool.items()}
        size = {txid: int(tx.get_virtual_size()) for txid, tx in self._mempool.items()}
        taken: dict[str, CTransaction] = {}  # insertion order is block order

        def package(txid: str) -> list[str]:
            """``txid`` and its untaken in-mempool ancestors, parents first."""
            out: list[str] = []
            for txin in self._mempool[txid].vin:
                parent = b2lx(txin.prevout.hash)
                if parent in self._mempool and parent not in taken:
                    out += [p for p in package(parent) if p not in out]
            return [*out, txid]

        while True:
            best: list[str] = []
            best_fee, best_size = 0, 1
            for txid in self._mempool:
                if txid in taken:
                    continue
                pkg = package(txid)
                pkg_fee, pkg_size = sum(fee[t] for t in pkg), sum(size[t] for t in pkg)
                if pkg_fee * best_size > best_fee * pkg_size or not best:
                    best, best_fee, best_size = pkg, pkg_fee, pkg_size
            if not best or best_fee < self._block_min_fee_rate * best_size:
                return list(taken.values())
            for txid in best:
                taken[txid] = self._mempool[txid]

    def mine(self, count: int, script_pubkey: bytes, *, parent: str | None = None) -> list[str]:
        """Mine ``count`` blocks paying ``script_pubkey``.

        On the tip, blocks take the mempool. With ``parent`` (a block hash), the blocks build a
        competing branch from there and carry no transactions; once that branch has more work
        the kernel reorganises to it, as a real node would.
        """
        hashes: list[str] = []
        with self._lock:
            prev = parent or self.block_hash(self.height())
            if prev not in self._blocks:
                raise ChainError(f"unknown parent block {prev}")
            for _ in range(count):
                old_tip = self.block_hash(self.height())
                on_tip = prev == old_tip
                txs = self._block_template() if on_tip else []
                fees = self._fees(txs) if on_tip else 0
                height = self._heights[prev] + 1
                block_time = max(self.now(), self.median_time_past(prev) + 1)
                if block_time > int(time.time()) + MAX_FUTURE_BLOCK_TIME:
                    raise ChainError(
                        f"block time {block_time} is more than {MAX_FUTURE_BLOCK_TIME} s ahead of "
                        "this machine's clock: Bitcoin Core refuses it (time-too-new); the chain's "
                        "clock was advanced too far (advance_time)"
                    )
                self._tag += 1
                raw = build_block(
                    prev_hash=prev,
                    height=height,
                    time=block_time,
                    coinbase_script_pubkey=script_pubkey,
                    txs=txs,
                    fees=fees,
                    tag=self._tag.to_bytes(4, "little"),
                )
                self._kernel.process_block(raw)
                block = parse_block(raw)
                self._remember(block, height)
                self._after_tip_change(old_tip)
                hashes.append(block.hash)
                prev = block.hash
        return hashes

    def _fees(self, txs: list[CTransaction]) -> int:
        if not txs:  # most blocks only move the clock: no need for the UTXO set
            return 0
        known: dict[tuple[str, int], int] = {k: c.amount for k, c in self._utxo_set().items()}
        for tx in txs:
            for n, out in enumerate(tx.vout):
                known[(b2lx(tx.GetTxid()), n)] = out.nValue
        total = 0
        for tx in txs:
            total += sum(known[(b2lx(i.prevout.hash), i.prevout.n)] for i in tx.vin)
            total -= sum(out.nValue for out in tx.vout)
        return total

    def _remember(self, block: ParsedBlock, height: int) -> None:
        self._blocks[block.hash] = block
        self._heights[block.hash] = height
        for tx in block.txs:
            self._tx_blocks.setdefault(b2lx(tx.GetTxid()), []).append(block.hash)

    def _after_tip_change(self, old_tip: str) -> None:
        """Drop confirmed/conflicting txs from the mempool; on a reorg, give the disconnected
        blocks' transactions back to it (as Core does)."""
        returned: list[CTransaction] = []
        cursor = old_tip
        disconnected: list[ParsedBlock] = []
        while cursor in self._blocks and not self._kernel.contains(cursor):
            disconnected.append(self._blocks[cursor])
            cursor = self._blocks[cursor].prev_hash
        for block in reversed(disconnected):
            returned.extend(block.txs[1:])
        candidates = returned + list(self._mempool.values())
        self._mempool.clear()
        for tx in candidates:
            txid = b2lx(tx.GetTxid())
            if txid in self._mempool:
                continue
            try:
                raw = tx.serialize()
                self._check(tx, raw)
            except TxRejected:
                continue
            self._mempool[txid] = tx

    def _utxo_set(self) -> dict[tuple[str, int], Coin]:
        tip = self.block_hash(self.height())
        if tip == self._utxo_tip:
            return self._utxo
        tip_block = self._blocks[tip]
        if tip_block.prev_hash != self._utxo_tip:
            self._utxo = {}
            for height in range(0, self.height()):
                self._apply(self._blocks[self.block_hash(height)], height)
        self._apply(tip_block, self.height())
        self._utxo_tip = tip
        return self._utxo

    def _apply(self, block: ParsedBlock, height: int) -> None:
        if height == 0:
            return  # the genesis output is not in the UTXO set (a Bitcoin quirk Core keeps)
        for tx in block.txs:
            txid = b2lx(tx.GetTxid())
            coinbase = tx.is_coinbase()
            if not coinbase:
                for txin in tx.vin:
                    self._utxo.pop((b2lx(txin.prevout.hash), txin.prevout.n), None)
            for n, out in enumerate(tx.vout):
                spk = bytes(out.scriptPubKey)
                if spk[:1] == b"\x6a":  # OP_RETURN outputs are provably unspendable
                    continue
                self._utxo[(txid, n)] = Coin(out.nValue, spk, height, coinbase)


def _fee_rate(name: str, rate: object) -> int:
    """``rate`` (sat/vB) if it is a non-negative integer; else :class:`InvalidInput`."""
    if isinstance(rate, bool) or not isinstance(rate, int) or rate < 0:
        raise InvalidInput(f"{name} must be a non-negative integer, got {rate!r}")
    return rate
