"""Solo mode: the ledger app driven by an in-process block producer (the embedded default).

The producer is the only place that reads a clock: it stamps each block with the current unix
time (never earlier than the previous block's, so block time is monotone like CometBFT's BFT
time) and hands the block to the same :class:`~kofo.clearance.app.LedgerApp` CometBFT drives.
Transactions pass ``check_tx`` before they enter the mempool, as under CometBFT.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from kofo.clearance.app import Block, BlockResult, LedgerApp, TxResult

MAX_BLOCK_TXS = 5_000
"""Bounds the work (and the time the app is busy) per block; at ~1-2k orders/s in Python a full
block is a few seconds of work, long enough."""

CHECK_WORKERS = min(4, os.cpu_count() or 1)
"""Threads for :meth:`SoloChain.submit_many`. Ed25519 verification (five signatures per routed
order, over half of CheckTx) runs in the ``cryptography`` library without the GIL, so threads
overlap it on every core; more threads than cores only add switching."""


class SoloChain:
    def __init__(
        self,
        app: LedgerApp,
        *,
        clock: Callable[[], int] | None = None,
        max_block_txs: int = MAX_BLOCK_TXS,
    ) -> None:
        self.app = app
        self._clock = clock or (lambda: int(time.time()))
        self._max = max_block_txs
        self._mempool: deque[bytes] = deque()
        self._lock = threading.Lock()
        self._last_time = 0
        self.last_block: Block | None = None
        """The block :meth:`produce_block` applied last (its txs and time, for the RPC face)."""
        self._pool: ThreadPoolExecutor | None = None
        app.init_chain()

    def submit(self, raw: bytes) -> TxResult:
        """Admit ``raw`` to the mempool if it passes ``check_tx``; returns the check result."""
        result = self.app.check_tx(raw)
        if result.ok:
            with self._lock:
                self._mempool.append(raw)
        return result

    def submit_many(self, raws: Sequence[bytes]) -> list[TxResult]:
        """:meth:`submit` for a batch, checked on a thread pool; the txs that pass enter the
        mempool in the order given, whatever order the checks finish in."""
        if len(raws) < 2 or CHECK_WORKERS < 2:
            return [self.submit(raw) for raw in raws]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(CHECK_WORKERS, thread_name_prefix="kofo-check-tx")
        results = list(self._pool.map(self.app.check_tx, raws))
        with self._lock:
            self._mempool.extend(raw for raw, r in zip(raws, results, strict=True) if r.ok)
        return results

    def close(self) -> None:
        """Stop the check threads (the chain still works; a later batch starts them again)."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    @property
    def pending(self) -> int:
        return len(self._mempool)

    def produce_block(self) -> BlockResult:
        """Take up to ``max_block_txs`` from the mempool, apply and commit them as one block."""
        with self._lock:
            take = min(self._max, len(self._mempool))
            batch = [self._mempool.popleft() for _ in range(take)]
            keep, later = self.app.defer_over_budget(batch)
            self._mempool.extendleft(reversed(later))  # first in line for the next block
            txs = tuple(keep)
            now = max(self._clock(), self._last_time)
            self._last_time = now
            height = self.app.height + 1
            if self.app.observer is not None and height > 1:
                # The producer is the only validator: its own observation of the chains is
                # the attestation (the app refuses one from anywhere but the first position).
                txs = (self.app.solo_attestation(height), *txs)
            block = Block(height, now, txs)
            result = self.app.apply_block(block)
            self.last_block = block
            return result

    def drain(self) -> list[BlockResult]:
        """Produce blocks until the mempool is empty (at least one block)."""
        results = [self.produce_block()]
        while self._mempool:
            results.append(self.produce_block())
        return results
