"""Nonce allocation that is safe across threads, processes and restarts.

Three rules keep a node from ever signing two different transactions with one nonce:
1. every nonce handed out is *reserved* in SQLite (``synchronous=FULL``) before the caller gets
   it, and stays reserved until the chain has mined that nonce or the caller
   :meth:`NonceManager.release`\\ s it (a transaction it will never send);
2. every allocation is one write transaction (``BEGIN IMMEDIATE``): two processes sharing the
   store (or two adapters in one process) are serialised by the database, not by a lock only
   one of them holds, and nothing is cached outside it;
3. the nonce handed out is the lowest one at or above the chain's pending count that is not
   reserved. So a crash never reuses a signed transaction's nonce (its reservation survives),
   and a released one (signing failed, or a transaction was discarded unsent) is handed out
   again instead of leaving a gap that would stall every later transaction.

A signed transaction that never reaches the chain (never broadcast, dropped by its node, evicted
from the pool) still leaves a gap, even after its caller gave it up (a refund made obsolete by
the counterparty's redeem is never sent again). So the store also keeps the newest signed raw
transaction of each reserved nonce (:meth:`NonceManager.record`), and the adapter sends those
below a transaction's nonce again before it (:meth:`NonceManager.signed_between`): the gap is
filled by what was signed for it (an obsolete one reverts, costing its gas), never by anything
else. Without a ``db_path`` the store is an
in-memory database: the same rules within one process.

The store also holds the HTLC storage slots taken by this wallet's unmined locks
(:meth:`NonceManager.claim_slot`): a lock names one of its sender's reusable slots in the
contract, and two locks in flight (two threads, two processes, a lock signed but not yet
mined) must not name the same one, or the second reverts (``slot busy``). A claim lasts until
the lock's nonce is mined (the contract's slot then says whether it is busy) or is released.
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
"""Reservations kept before an allocation asks the chain which were mined and drops those: the
table stays small without a chain query on every allocation."""


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
        # Mined (not pending) is what makes a reservation safe to forget: a pending
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
                "CREATE TABLE IF NOT EXISTS eth_nonce_signed "
                "(address TEXT, nonce INTEGER, raw BLOB, PRIMARY KEY (address, nonce))"
            )
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS eth_lock_slot "
                "(address TEXT, slot INTEGER, nonce INTEGER, PRIMARY KEY (address, slot))"
            )
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(eth_nonce_signed)")}
            if "raw" not in columns:  # a store from before raw transactions were kept
                self._db.execute("ALTER TABLE eth_nonce_signed ADD COLUMN raw BLOB")

    def _reserved_count(self) -> int:
        row = self._db.execute(
            "SELECT COUNT(*) FROM eth_nonce_signed WHERE address = ?", (self._address,)
        ).fetchone()
        return int(row[0])

    def _forget_mined(self, mined: int) -> None:
        self._db.execute(
            "DELETE FROM eth_nonce_signed WHERE address = ? AND nonce < ?", (self._address, mined)
        )
        self._db.execute(
            "DELETE FROM eth_lock_slot WHERE address = ? AND nonce < ?", (self._address, mined)
        )

    def claimed_slots(self) -> set[int]:
        """HTLC slots claimed by locks of this wallet that are not known to be mined; claims
        of mined locks are dropped first (the contract's slot is then the authority)."""
        mined = self._mined_count()
        with self._lock, _immediate(self._db):
            self._db.execute(
                "DELETE FROM eth_lock_slot WHERE address = ? AND nonce < ?", (self._address, mined)
            )
            rows = self._db.execute(
                "SELECT slot FROM eth_lock_slot WHERE address = ?", (self._address,)
            ).fetchall()
        return {int(r[0]) for r in rows}

    def claim_slot(self, slot: int) -> bool:
        """Claim ``slot`` for a lock about to be signed; False if another lock holds it."""
        with self._lock, _immediate(self._db):
            taken = self._db.execute(
                "SELECT 1 FROM eth_lock_slot WHERE address = ? AND slot = ?", (self._address, slot)
            ).fetchone()
            if taken:
                return False
            self._db.execute(
                "INSERT INTO eth_lock_slot(address, slot, nonce) VALUES(?, ?, NULL)",
                (self._address, slot),
            )
            return True

    def bind_slot(self, slot: int, nonce: int) -> None:
        """The lock that claimed ``slot`` was signed with ``nonce``: the claim ends once it is
        mined."""
        with self._lock, _immediate(self._db):
            self._db.execute(
                "UPDATE eth_lock_slot SET nonce = ? WHERE address = ? AND slot = ?",
                (nonce, self._address, slot),
            )

    def release_slot(self, slot: int) -> None:
        """No lock will be sent for the claim on ``slot`` (signing failed, or it was given up)."""
        with self._lock, _immediate(self._db):
            self._db.execute(
                "DELETE FROM eth_lock_slot WHERE address = ? AND slot = ?", (self._address, slot)
            )

    def reserved(self) -> list[int]:
        """The nonces handed out and neither mined (as last seen) nor released, ascending."""
        with self._lock:
            rows = self._db.execute(
                "SELECT nonce FROM eth_nonce_signed WHERE address = ? ORDER BY nonce",
                (self._address,),
            ).fetchall()
        return [int(r[0]) for r in rows]

    def allocate(self) -> int:
        """The lowest unreserved nonce at or above the chain's pending count; reserved (and
        persisted) before it is returned."""
        # Read outside the write transaction: the database lock should not wait on the
        # network, and a count read a little early is only lower (reservations cover ours).
        chain = self._chain_count()
        with self._lock:
            prune = self._reserved_count() > PRUNE_ABOVE
        mined = self._mined_count() if prune else None
        with self._lock, _immediate(self._db):
            if mined is not None:
                self._forget_mined(mined)
            nonce = chain
            for (taken,) in self._db.execute(
                "SELECT nonce FROM eth_nonce_signed WHERE address = ? AND nonce >= ? "
                "ORDER BY nonce",
                (self._address, chain),
            ):
                if int(taken) != nonce:
                    break  # a free nonce below the next reserved one
                nonce += 1
            self._db.execute(
                "INSERT INTO eth_nonce_signed(address, nonce) VALUES(?, ?)",
                (self._address, nonce),
            )
            return nonce

    def record(self, nonce: int, raw: bytes) -> None:
        """Keep ``raw``, a transaction signed with the reserved ``nonce`` (the newest version,
        e.g. a fee replacement), to fill the nonce with it if it never reaches the chain."""
        with self._lock, _immediate(self._db):
            self._db.execute(
                "UPDATE eth_nonce_signed SET raw = ? WHERE address = ? AND nonce = ?",
                (raw, self._address, nonce),
            )

    def signed_between(self, low: int, high: int) -> list[tuple[int, bytes]]:
        """The reserved nonces in ``[low, high)`` with their recorded raw transactions."""
        with self._lock:
            rows = self._db.execute(
                "SELECT nonce, raw FROM eth_nonce_signed WHERE address = ? AND nonce >= ? "
                "AND nonce < ? AND raw IS NOT NULL ORDER BY nonce",
                (self._address, low, high),
            ).fetchall()
        return [(int(n), bytes(raw)) for n, raw in rows]

    def release(self, nonce: int) -> None:
        """Say that no transaction signed with ``nonce`` will ever be broadcast (signing failed,
        or the transaction was discarded unsent): the next allocation may hand it out again."""
        with self._lock, _immediate(self._db):
            self._db.execute(
                "DELETE FROM eth_nonce_signed WHERE address = ? AND nonce = ?",
                (self._address, nonce),
            )

    def resync(self) -> None:
        """Forget the reservations of nonces the chain has mined. Allocation already follows
        the chain's pending count, down as well as up, and never hands out a reserved nonce."""
        mined = self._mined_count()
        with self._lock, _immediate(self._db):
            self._forget_mined(mined)


class _immediate:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on error): the write lock is taken at
    the start, so the read inside sees what every other writer committed before it."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self._db.execute("COMMIT" if exc_type is None else "ROLLBACK")
