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

The node's two counts are checked against what the store knows, because a lying or broken node
(issue 16) could otherwise turn them against the wallet:

- a reservation is forgotten only once a receipt proves its nonce mined (its own recorded
  transaction, or a later one: nonces mine in order), never on the mined count alone. A count
  that lies high would otherwise drop the reservation of a signed, unmined lock, and the next
  allocation would sign another transaction with its nonce (overwriting our own pending lock
  or redeem) and lose the raw transaction that fills the gap;
- the proven height is kept (``floor``) and no nonce below it is handed out: a pending count that
  lies low would otherwise have every new transaction refused as ``nonce too low``;
- the highest nonce handed out is kept (``issued``); a pending count above it claims pending
  transactions this store never signed. The mined count tells whether the chain mined them
  (another user of the key: the count is followed, with a warning); if not, the nonce handed
  out is the first after what is mined or ours, not after the claimed gap, and the gap is
  logged as an error: a transaction signed after a gap that never fills would never mine.

The store also holds the HTLC storage slots taken by this wallet's unmined locks
(:meth:`NonceManager.claim_slot`): a lock names one of its sender's reusable slots in the
contract, and two locks in flight (two threads, two processes, a lock signed but not yet
mined) must not name the same one, or the second reverts (``slot busy``). A claim lasts until
the lock's nonce is mined (the contract's slot then says whether it is busy) or is released.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

from eth_utils.crypto import keccak

BUSY_TIMEOUT_S = 30.0
"""How long an allocation waits for another process's write transaction (each lasts one or
two row writes and an fsync, so a wait this long means a stuck process, not contention)."""

PRUNE_ABOVE = 64
"""Reservations kept before an allocation asks the chain which were mined and drops those: the
table stays small without a chain query on every allocation."""

PROOF_LOOKUPS = 16
"""Receipts looked up at most per prune or resync to prove reservations mined (newest first:
one is enough when the node is honest)."""

log = logging.getLogger(__name__)


class NonceManager:
    def __init__(
        self,
        address: str,
        chain_pending_count: Callable[[], int],
        db_path: Path | None = None,
        *,
        chain_mined_count: Callable[[], int] | None = None,
        tx_mined: Callable[[bytes], bool] | None = None,
    ) -> None:
        """``tx_mined(txid)`` says whether the chain has mined a transaction: with it, a
        reservation is forgotten only once proven mined (see the module doc); without it
        (tests of the store alone), the mined count is taken as the proof."""
        self._address = address
        self._tx_mined = tx_mined
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
            # Per address: the nonces proven mined (floor) and the highest handed out + 1
            # (issued). A store from before them has no row: the chain is trusted once.
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS eth_nonce_mark "
                "(address TEXT PRIMARY KEY, floor INTEGER NOT NULL, issued INTEGER NOT NULL)"
            )

    def _mark(self) -> tuple[int, int] | None:
        row = self._db.execute(
            "SELECT floor, issued FROM eth_nonce_mark WHERE address = ?", (self._address,)
        ).fetchone()
        return None if row is None else (int(row[0]), int(row[1]))

    def _set_mark(self, floor: int, issued: int) -> None:
        self._db.execute(
            "INSERT INTO eth_nonce_mark(address, floor, issued) VALUES(?, ?, ?) "
            "ON CONFLICT(address) DO UPDATE SET floor = MAX(floor, excluded.floor), "
            "issued = MAX(issued, excluded.issued)",
            (self._address, floor, issued),
        )

    def marks(self) -> tuple[int, int]:
        """(floor, issued): no nonce below ``floor`` is handed out (proven mined), and
        ``issued`` is one above the highest ever handed out (0, 0 for a new store)."""
        with self._lock:
            return self._mark() or (0, 0)

    def _reserved_count(self) -> int:
        row = self._db.execute(
            "SELECT COUNT(*) FROM eth_nonce_signed WHERE address = ?", (self._address,)
        ).fetchone()
        return int(row[0])

    def _proven_below(self, mined: int) -> int | None:
        """The highest reserved nonce under the chain's ``mined`` count whose recorded
        transaction has a receipt (so it and every nonce before it are mined), or None. Read
        outside the write transaction: receipts are network reads."""
        if self._tx_mined is None:
            return mined - 1 if mined > 0 else None
        with self._lock:
            rows = self._db.execute(
                "SELECT nonce, raw FROM eth_nonce_signed WHERE address = ? AND nonce < ? "
                "AND raw IS NOT NULL ORDER BY nonce DESC LIMIT ?",
                (self._address, mined, PROOF_LOOKUPS),
            ).fetchall()
        for nonce, raw in rows:
            if self._tx_mined(keccak(bytes(raw))):
                return int(nonce)
        return None

    def _forget_mined(self, mined: int, proven: int | None) -> None:
        """Drop the reservations proven mined (at or below ``proven``), and those under the
        chain's ``mined`` count with nothing signed recorded (nothing to fill a gap with)."""
        if proven is not None:
            self._db.execute(
                "DELETE FROM eth_nonce_signed WHERE address = ? AND nonce <= ?",
                (self._address, proven),
            )
            self._set_mark(proven + 1, proven + 1)
        self._db.execute(
            "DELETE FROM eth_nonce_signed WHERE address = ? AND nonce < ? AND raw IS NULL",
            (self._address, mined),
        )
        self._drop_mined_slots(mined, proven)

    def _drop_mined_slots(self, mined: int, proven: int | None) -> None:
        # A claim ends once its lock is proven mined: under the chain's mined count AND either
        # at or below ``proven`` (a receipt of it or of a later nonce) or no longer reserved (a
        # reservation is forgotten only once proven mined, or when nothing was signed for it).
        # The mined count alone may lie high (issue 16): it would free the slot of a pending
        # lock, and the next lock would name it and revert.
        self._db.execute(
            "DELETE FROM eth_lock_slot WHERE address = ? AND nonce < ? AND (nonce <= ? OR "
            "nonce NOT IN (SELECT nonce FROM eth_nonce_signed WHERE address = ?))",
            (self._address, mined, -1 if proven is None else proven, self._address),
        )

    def claimed_slots(self) -> set[int]:
        """HTLC slots claimed by locks of this wallet that are not known to be mined; claims
        of mined locks are dropped first (the contract's slot is then the authority)."""
        mined = self._mined_count()
        proven = self._proven_below(mined)
        with self._lock, _immediate(self._db):
            self._drop_mined_slots(mined, proven)
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
            mark = self._mark()
        # A pending count above every nonce handed out claims transactions never signed here:
        # the mined count says whether they exist (read only then: it costs a query).
        claims_gap = mark is not None and chain > max(mark)
        mined = self._mined_count() if prune or claims_gap else None
        proven = self._proven_below(mined) if prune and mined is not None else None
        with self._lock, _immediate(self._db):
            if prune and mined is not None:
                self._forget_mined(mined, proven)
            floor, issued = self._mark() or (0, 0)
            start = chain
            if chain < floor:
                log.warning(
                    "eth nonces of %s: the node's pending count %d is below %d, proven "
                    "mined: a lying or reorganised node; not going below %d",
                    self._address,
                    chain,
                    floor,
                    floor,
                )
                start = floor
            elif claims_gap and mined is not None:
                if mined >= chain:
                    log.warning(
                        "eth nonces of %s: the chain mined nonces up to %d that this store "
                        "never handed out (another user of the key?)",
                        self._address,
                        mined - 1,
                    )
                else:
                    start = max(floor, issued, mined)
                    log.error(
                        "eth nonces of %s: the node counts %d pending transactions, but only "
                        "%d are mined and this store signed none after nonce %d: a lying "
                        "node or another user of the key; signing at %d, not after the gap",
                        self._address,
                        chain,
                        mined,
                        issued - 1,
                        start,
                    )
            nonce = start
            for (taken,) in self._db.execute(
                "SELECT nonce FROM eth_nonce_signed WHERE address = ? AND nonce >= ? "
                "ORDER BY nonce",
                (self._address, start),
            ):
                if int(taken) != nonce:
                    break  # a free nonce below the next reserved one
                nonce += 1
            self._db.execute(
                "INSERT INTO eth_nonce_signed(address, nonce) VALUES(?, ?)",
                (self._address, nonce),
            )
            self._set_mark(floor, nonce + 1)
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
        """Forget the reservations of nonces proven mined (a receipt of theirs or of a later
        one: the chain's mined count alone is no proof). Allocation already follows the chain's
        pending count, down as well as up (never below the proven floor), and never hands out
        a reserved nonce."""
        mined = self._mined_count()
        proven = self._proven_below(mined)
        with self._lock, _immediate(self._db):
            self._forget_mined(mined, proven)


class _immediate:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on error): the write lock is taken at
    the start, so the read inside sees what every other writer committed before it."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self._db.execute("COMMIT" if exc_type is None else "ROLLBACK")
