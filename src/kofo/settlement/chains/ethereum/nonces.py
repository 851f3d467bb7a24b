"""Nonce allocation that is safe across threads, processes and restarts.

Three rules keep a node from ever signing two different transactions with one nonce:
1. every allocation is one SQLite write transaction (``BEGIN IMMEDIATE``): two processes sharing
   the store (or two adapters in one process) are serialised by the database, not by a lock
   only one of them holds, and nothing is cached outside it;
2. the highest nonce handed out is written (``synchronous=FULL``) *before* the caller gets it,
   so after a crash the next nonce is ``max(chain's pending count, stored next)``;
3. every nonce handed out is remembered as *signed* until the chain has mined that nonce or the
   caller :meth:`NonceManager.release`\\ s it (a transaction it will never send). A
   :meth:`NonceManager.resync` never goes back below a remembered one: a signed transaction
   waiting to be broadcast keeps its nonce.

A signed transaction that is never broadcast leaves a gap that stalls later ones; the swap
journal re-broadcasts every stored transaction at start, which fills such gaps. A caller that
discards a signed transaction releases its nonce, and a resync then hands it out again.
Without a ``db_path`` the store is an in-memory database: the same rules within one process.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

BUSY_TIMEOUT_S = 30.0
"""How long an allocation waits for another process's write transaction (each lasts one or
two row writes and an fsync, so a wait this long means a stuck process, not contention)."""

PRUNE_ABOVE = 64
"""Signed-nonce rows kept before an allocation asks the chain which were mined and drops
those: the table stays small without a chain query on every allocation."""


class NonceManager:
    def __init__(
        self,
        address: str,
        chain_pending_count: Callable[[], int],
        db_path: Path | None = None,
        *,
        chain_mined_count: Callable[[], int] | None = None,
    ) -> None:
        self._address = address
        self._chain_count = chain_pending_count
        # Mined (not pending) is what makes a signed nonce safe to forget: a pending
        # transaction can still be dropped from the pool and need its nonce kept.
        self._mined_count = chain_mined_count or chain_pending_count
        self._lock = threading.Lock()  # one connection, shared by this process's threads
        if db_path is not None:
            db_path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(
            ":memory:" if db_path is None else str(db_path),
            check_same_thread=False,
            isolation_level=None,
            timeout=BUSY_TIMEOUT_S,
        )
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS eth_nonce (address TEXT PRIMARY KEY, next INTEGER)"
            )
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS eth_nonce_signed "
                "(address TEXT, nonce INTEGER, PRIMARY KEY (address, nonce))"
            )

    def _stored_next(self) -> int:
        row = self._db.execute(
            "SELECT next FROM eth_nonce WHERE address = ?", (self._address,)
        ).fetchone()
        return int(row[0]) if row else 0

    def _store_next(self, value: int) -> None:
        self._db.execute(
            "INSERT INTO eth_nonce(address, next) VALUES(?, ?) "
            "ON CONFLICT(address) DO UPDATE SET next = excluded.next",
            (self._address, value),
        )

    def _signed_count(self) -> int:
        row = self._db.execute(
            "SELECT COUNT(*) FROM eth_nonce_signed WHERE address = ?", (self._address,)
        ).fetchone()
        return int(row[0])

    def _forget_mined(self, mined: int) -> None:
        self._db.execute(
            "DELETE FROM eth_nonce_signed WHERE address = ? AND nonce < ?", (self._address, mined)
        )

    def allocate(self) -> int:
        """The next unused nonce; persisted (and remembered as signed) before it is returned."""
        # Read outside the write transaction: the chain's count only ever raises the result,
        # and the database lock should not wait on the network.
        chain = self._chain_count()
        with self._lock:
            prune = self._signed_count() > PRUNE_ABOVE
        mined = self._mined_count() if prune else None
        with self._lock, _immediate(self._db):
            # Another wallet using the same key (or another process on this store) may have
            # moved on: the larger of the two wins.
            nonce = max(chain, self._stored_next())
            self._store_next(nonce + 1)
            self._db.execute(
                "INSERT OR IGNORE INTO eth_nonce_signed(address, nonce) VALUES(?, ?)",
                (self._address, nonce),
            )
            if mined is not None:
                self._forget_mined(mined)
            return nonce

    def release(self, nonce: int) -> None:
        """Say that no transaction signed with ``nonce`` will ever be broadcast (signing failed,
        or the transaction was discarded unsent): a later :meth:`resync` may reuse it."""
        with self._lock, _immediate(self._db):
            self._db.execute(
                "DELETE FROM eth_nonce_signed WHERE address = ? AND nonce = ?",
                (self._address, nonce),
            )

    def resync(self) -> None:
        """Follow the chain's pending count, down as well as up, but never below a nonce still
        held by a signed transaction (see :meth:`release`)."""
        pending, mined = self._chain_count(), self._mined_count()
        with self._lock, _immediate(self._db):
            self._forget_mined(mined)
            row = self._db.execute(
                "SELECT MAX(nonce) FROM eth_nonce_signed WHERE address = ?", (self._address,)
            ).fetchone()
            held = -1 if row[0] is None else int(row[0])
            self._store_next(max(pending, held + 1))


class _immediate:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on error): the write lock is taken at
    the start, so the read inside sees what every other writer committed before it."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self._db.execute("COMMIT" if exc_type is None else "ROLLBACK")
