"""Nonce allocation that is safe under concurrency and across restarts.

Two rules keep a node from ever signing two different transactions with one nonce:
1. allocation is serialised by a lock, and
2. the highest nonce handed out is written to SQLite (``synchronous=FULL``) *before* the caller
   gets it, so after a crash the next nonce is ``max(chain's pending count, stored + 1)``.

A signed transaction that is never broadcast leaves a gap that stalls later ones; the swap
journal re-broadcasts every stored transaction at start, which fills such gaps. When a caller
knows nothing it signed is outstanding it may :meth:`NonceManager.resync` to the chain.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path


class NonceManager:
    def __init__(
        self,
        address: str,
        chain_pending_count: Callable[[], int],
        db_path: Path | None = None,
    ) -> None:
        self._address = address
        self._chain_count = chain_pending_count
        self._lock = threading.Lock()
        self._next: int | None = None
        self._db: sqlite3.Connection | None = None
        if db_path is not None:
            db_path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(db_path), check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS eth_nonce (address TEXT PRIMARY KEY, next INTEGER)"
            )

    def _stored_next(self) -> int:
        if self._db is None:
            return 0
        row = self._db.execute(
            "SELECT next FROM eth_nonce WHERE address = ?", (self._address,)
        ).fetchone()
        return int(row[0]) if row else 0

    def _store_next(self, value: int) -> None:
        if self._db is not None:
            self._db.execute(
                "INSERT INTO eth_nonce(address, next) VALUES(?, ?) "
                "ON CONFLICT(address) DO UPDATE SET next = excluded.next",
                (self._address, value),
            )

    def allocate(self) -> int:
        """The next unused nonce; persisted before it is returned."""
        with self._lock:
            if self._next is None:
                self._next = max(self._chain_count(), self._stored_next())
            else:
                # Another wallet using the same key (or a restart of this one) may have moved on.
                self._next = max(self._next, self._chain_count())
            nonce = self._next
            self._next += 1
            self._store_next(self._next)
            return nonce

    def resync(self) -> None:
        """Forget local state and follow the chain's pending count (nothing outstanding)."""
        with self._lock:
            self._next = self._chain_count()
            self._store_next(self._next)
