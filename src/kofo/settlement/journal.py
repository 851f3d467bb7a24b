"""The swap journal: SQLite in WAL mode with ``synchronous=FULL``, append-only events.

Durability rule (DESIGN.md): what a restart must know is written *before* the side effect. The
secret is stored with the swap, before any lock can be signed; every signed transaction is stored
before it is broadcast; every state transition is an appended event. A row is on disk when a
write method returns (each write is its own transaction, fsynced by ``synchronous=FULL``).

Tables: ``swaps`` (terms and current state), ``events`` (``swap_id, seq, state, payload, at``),
``txs`` (signed transactions by kind), ``secrets`` (preimages; never printed until public),
``evidence`` (counterparty misbehaviour for the clearance ledger), ``notices`` (what the
counterparty told us about its lock, to audit it).
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kofo.errors import KofoError
from kofo.private_files import check_private_file, ensure_private_dir, fsync_dir
from kofo.settlement.chain import SignedTx, TxKind
from kofo.settlement.swap import TERMINAL, Role, State
from kofo.settlement.terms import SwapTerms
from kofo.wire.codec import decode, encode
from kofo.wire.swap import terms_from_wire, terms_to_wire


class JournalError(KofoError):
    code = "journal_error"


class NotAJournal(JournalError):
    """The file is not a KOFO journal (another application's database, or an older schema)."""

    code = "not_a_journal"


class UnknownSwap(JournalError):
    code = "unknown_swap"


_SCHEMA = """
CREATE TABLE IF NOT EXISTS swaps (
    swap_id BLOB PRIMARY KEY,
    role TEXT NOT NULL,
    terms BLOB NOT NULL,
    state TEXT NOT NULL,
    peer TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    swap_id BLOB NOT NULL,
    seq INTEGER NOT NULL,
    state TEXT NOT NULL,
    payload TEXT NOT NULL,
    at REAL NOT NULL,
    PRIMARY KEY (swap_id, seq)
);
CREATE TABLE IF NOT EXISTS txs (
    swap_id BLOB NOT NULL,
    kind TEXT NOT NULL,
    seq INTEGER NOT NULL,
    chain TEXT NOT NULL,
    txid TEXT NOT NULL,
    raw BLOB NOT NULL,
    broadcast_at REAL,
    sent_height INTEGER,
    role TEXT NOT NULL DEFAULT 'version',
    PRIMARY KEY (swap_id, kind, seq)
);
CREATE TABLE IF NOT EXISTS secrets (
    swap_id BLOB PRIMARY KEY,
    preimage BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS evidence (
    swap_id BLOB NOT NULL,
    kind TEXT NOT NULL,
    code TEXT NOT NULL,
    detail TEXT NOT NULL,
    at REAL NOT NULL,
    PRIMARY KEY (swap_id, kind, code)
);
CREATE TABLE IF NOT EXISTS notices (
    swap_id BLOB NOT NULL,
    kind TEXT NOT NULL,
    body BLOB NOT NULL,
    PRIMARY KEY (swap_id, kind)
);
CREATE TABLE IF NOT EXISTS claims (
    chain TEXT NOT NULL,
    fact TEXT NOT NULL,
    swap_id BLOB NOT NULL,
    PRIMARY KEY (chain, fact)
);
"""


@dataclass(frozen=True, slots=True)
class Event:
    seq: int
    state: State
    payload: dict[str, Any]
    at: float


@dataclass(frozen=True, slots=True)
class StoredSwap:
    swap_id: bytes
    role: Role
    terms: SwapTerms
    state: State
    peer: str
    created_at: float
    updated_at: float


@dataclass(frozen=True, slots=True)
class EvidenceRecord:
    """Counterparty misbehaviour, in the form the clearance ledger's evidence filing takes."""

    swap_id: bytes
    kind: str
    code: str
    detail: dict[str, Any] = field(default_factory=dict)
    at: float = 0.0


def _row_kind(step: TxKind, role: str, last: bool) -> TxKind:
    """The kind of one stored transaction of a ``step``: a fee-bump child (dropped or not) is
    ``CHILD``; in a lock step the last transaction is the lock and any before it prepare it
    (approve)."""
    if role in ("child", "dropped"):
        return TxKind.CHILD
    if step is TxKind.LOCK and not last:
        return TxKind.APPROVE
    return step


_SIDECARS = ("-wal", "-shm", "-journal")
"""SQLite's files next to the journal: the WAL holds every recent write (a live preimage too)
until a checkpoint."""


def _open_private(path: Path) -> None:
    """The journal holds live swap secrets: its directory is made 0700 when missing and must not
    be writable by others (ssh's rule: nobody may plant or swap files in it), the journal and
    its SQLite side files must be 0600, owned by this user and regular files (a file others can
    read is refused, naming it and the fix). A new journal file is created 0600 before SQLite
    opens it; SQLite gives its side files the journal's mode."""
    ensure_private_dir(path.parent, readable=True)
    for p in (path, *(path.with_name(path.name + s) for s in _SIDECARS)):
        check_private_file(p)
    if not path.exists():
        flags = os.O_WRONLY | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)  # never truncates
        os.close(os.open(path, flags, 0o600))
        fsync_dir(path.parent)


def _private_sidecars(path: Path) -> None:
    """Side files SQLite made are 0600 (tightened if a filesystem ignored the journal's mode),
    then checked like the journal."""
    for p in (path.with_name(path.name + s) for s in _SIDECARS):
        if p.exists() and not p.is_symlink():
            os.chmod(p, 0o600)
        check_private_file(p)


_TABLES = frozenset(re.findall(r"CREATE TABLE IF NOT EXISTS (\w+)", _SCHEMA))


def _key_form(key: str) -> str:
    # One form per key: hex case folded, a compressed secp256k1 key by its x coordinate (a
    # Taproot HTLC names x-only keys: 02x and 03x lock to one output).
    folded = key.lower()
    return folded[2:] if len(folded) == 66 and folded[:2] in ("02", "03") else folded


def _counterparty_keys(role: Role, terms: SwapTerms) -> set[str]:
    """The chain keys the other node uses in a swap of ours in ``role``."""
    if role is Role.PARTICIPANT:
        keys = {terms.initiator_leg.sender, terms.participant_leg.recipient}
    else:
        keys = {terms.participant_leg.sender, terms.initiator_leg.recipient}
    return {_key_form(k) for k in keys}


def hash_shared_safely(role: Role, terms: SwapTerms, others: list[tuple[Role, SwapTerms]]) -> bool:
    """Whether a new swap may use a payment hash that ``others`` (this journal's swaps) use.

    Only a new **participant** swap, and only beside swaps (either role) whose counterparty
    uses none of the new initiator's chain keys (either leg; hex case folded, a compressed key
    by its x coordinate): then every swap pays and is paid by HTLCs of its own (and a
    counterparty lock is bound to one swap anyway, ``claim_fact``), and a participant's safety
    never rests on the secret being unknown (it locks only once paid in, and redeems with
    whatever reveal it sees). The counterparty's node id adds nothing to that: one taker may
    take two of our quotes under one hash with other keys (the ledger allows it), and refusing
    the second got us slashed. Beside a swap of ours as **initiator** (our own secret: a
    griefer copied our public hash into a take of our quote) the participant swap never holds
    the secret (it is kept per swap id), so it reveals nothing before our initiator swap is
    paid in. A new initiator swap never shares (the secret must be ours and unknown), and
    twins (issue 16, case 1: one lock for two swaps) stay refused by their shared keys. Why
    share at all: the ledger lets an order reuse a payment hash it saw (any order's, public)
    with keys of its own, so that nobody can squat a taker's hash (docs/clearance.md); a maker
    drawn into such an order must be able to serve it or be slashed."""
    if role is not Role.PARTICIPANT:
        return False
    keys = _counterparty_keys(role, terms)
    return not any(keys & _counterparty_keys(r, other) for r, other in others)


class Journal:
    """One node's swap journal. Thread-safe (one connection behind a lock)."""

    def __init__(self, path: str | Path, *, read_only: bool = False) -> None:
        """Open (or create) the journal at ``path``; ``read_only`` opens an existing one without
        ever writing to it (SQLite ``mode=ro``: no schema, no WAL switch, no upgrade). Either way
        a database that is not a KOFO journal is refused, never turned into one."""
        self.path = Path(path)
        self._lock = threading.RLock()
        try:
            if read_only:
                for p in (self.path, *(self.path.with_name(self.path.name + s) for s in _SIDECARS)):
                    check_private_file(p)
                uri = self.path.resolve().as_uri() + "?mode=ro"
                self._db = sqlite3.connect(
                    uri, uri=True, check_same_thread=False, isolation_level=None
                )
                self._check_kind(require_all=True)
                return
            _open_private(self.path)
            self._db = sqlite3.connect(
                str(self.path), check_same_thread=False, isolation_level=None
            )
            self._check_kind(require_all=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            # FULL: a commit is fsynced before it returns, so "stored before broadcast" holds
            # even across power loss, not only process crashes.
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA busy_timeout=5000")
            self._db.executescript(_SCHEMA)
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(txs)")}
            if "sent_height" not in columns:  # a journal written before fee bumps existed
                self._db.execute("ALTER TABLE txs ADD COLUMN sent_height INTEGER")
            if "role" not in columns:  # ... or before child-pays-for-parent bumps
                self._db.execute("ALTER TABLE txs ADD COLUMN role TEXT NOT NULL DEFAULT 'version'")
            self._index_payment_hashes()
        except sqlite3.Error as exc:
            raise JournalError(
                f"cannot open the swap journal {self.path}: {exc}", code="journal_unreadable"
            ) from None
        _private_sidecars(self.path)

    def _check_kind(self, *, require_all: bool) -> None:
        """Refuse a database with a table KOFO's schema does not have (read-only: also one
        without every table of the schema): KOFO's tables are never added to someone else's
        database."""
        tables = {
            row[0]
            for row in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            if not row[0].startswith("sqlite_")
        }
        if not tables and not require_all:
            return  # a new, empty file: the schema is created next
        swaps = {row[1] for row in self._db.execute("PRAGMA table_info(swaps)")}
        if not tables <= _TABLES or (
            require_all and (not {"swap_id", "role", "terms", "state"} <= swaps)
        ):
            self._db.close()
            raise NotAJournal(f"{self.path} is a SQLite database but not a KOFO swap journal")
        if require_all and not _TABLES <= tables:
            self._db.close()
            raise NotAJournal(
                f"{self.path} is a journal of an older KOFO: open it with the node once to "
                "upgrade it",
                code="journal_too_old",
            )
        if require_all:
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(txs)")}
            if not {"sent_height", "role"} <= columns:
                self._db.close()
                raise NotAJournal(
                    f"{self.path} is a journal of an older KOFO: open it with the node once to "
                    "upgrade it",
                    code="journal_too_old",
                )

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _index_payment_hashes(self) -> None:
        """Each swap's payment hash in a column of its own, indexed, so a new swap can be
        checked against every hash the journal knows (a journal written before: filled in)."""
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(swaps)")}
        with self._tx() as db:
            if "payment_hash" not in columns:
                db.execute("ALTER TABLE swaps ADD COLUMN payment_hash BLOB")
            for swap_id, terms in db.execute(
                "SELECT swap_id, terms FROM swaps WHERE payment_hash IS NULL"
            ).fetchall():
                hash_ = terms_from_wire(decode(bytes(terms))).payment_hash
                db.execute("UPDATE swaps SET payment_hash=? WHERE swap_id=?", (hash_, swap_id))
            db.execute("CREATE INDEX IF NOT EXISTS swaps_payment_hash ON swaps (payment_hash)")

    # -- swaps and events -------------------------------------------------------------------

    def hash_taken(self, role: Role, terms: SwapTerms) -> bool:
        """Whether a new swap (``role``, ``terms``) may not use its payment hash here: see
        :func:`hash_shared_safely`."""
        with self._lock:
            return self._hash_taken(self._db, role, terms)

    @staticmethod
    def _hash_taken(db: sqlite3.Connection, role: Role, terms: SwapTerms) -> bool:
        rows = db.execute(
            "SELECT role, terms FROM swaps WHERE payment_hash=?", (terms.payment_hash,)
        ).fetchall()
        others = [(Role(r), terms_from_wire(decode(bytes(t)))) for r, t in rows]
        return bool(others) and not hash_shared_safely(role, terms, others)

    def claim_fact(self, swap_id: bytes, chain: str, fact: str) -> bool:
        """Bind a chain fact (a lock's locator, say) to ``swap_id``: True if it is now, or
        already was, this swap's; False if another swap holds it. A fact is claimed by at most
        one swap, for ever: one lock can never pay (or be audited for) two swaps."""
        with self._tx() as db:
            db.execute("INSERT OR IGNORE INTO claims VALUES (?,?,?)", (chain, fact, swap_id))
            row = db.execute(
                "SELECT swap_id FROM claims WHERE chain=? AND fact=?", (chain, fact)
            ).fetchone()
        return bytes(row[0]) == swap_id

    def create_swap(
        self,
        role: Role,
        terms: SwapTerms,
        state: State,
        *,
        preimage: bytes | None = None,
        peer: str = "",
        payload: dict[str, Any] | None = None,
        notices: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        """Store a new swap, its first event, (initiator) its secret and its first ``notices``
        (kind -> body, as :meth:`store_notice`) in one transaction: a crash leaves all or none."""
        now = time.time()
        with self._tx() as db:
            if db.execute("SELECT 1 FROM swaps WHERE swap_id=?", (terms.swap_id,)).fetchone():
                raise JournalError(f"swap {terms.swap_id.hex()} already exists", code="swap_exists")
            # Checked in the same transaction as the insert: two proposals with one hash that
            # arrive together cannot both get in.
            if self._hash_taken(db, role, terms):
                raise JournalError(
                    f"payment hash {terms.payment_hash.hex()} belongs to another swap "
                    "in this journal",
                    code="terms_payment_hash_known",
                )
            db.execute(
                "INSERT INTO swaps (swap_id, role, terms, state, peer, created_at, updated_at, "
                "payment_hash) VALUES (?,?,?,?,?,?,?,?)",
                (
                    terms.swap_id,
                    role.value,
                    encode(terms_to_wire(terms)),
                    state,
                    peer,
                    now,
                    now,
                    terms.payment_hash,
                ),
            )
            if preimage is not None:
                db.execute("INSERT INTO secrets VALUES (?,?)", (terms.swap_id, preimage))
            db.execute(
                "INSERT INTO events VALUES (?,?,?,?,?)",
                (terms.swap_id, 0, state.value, json.dumps(payload or {}), now),
            )
            for kind, body in (notices or {}).items():
                db.execute(
                    "INSERT OR REPLACE INTO notices VALUES (?,?,?)",
                    (terms.swap_id, kind, encode(body)),
                )

    def transition(self, swap_id: bytes, to: State, payload: dict[str, Any] | None = None) -> int:
        """Append an event moving the swap to ``to``; returns the event's sequence number."""
        now = time.time()
        with self._tx() as db:
            row = db.execute(
                "SELECT COALESCE(MAX(seq), -1) FROM events WHERE swap_id=?", (swap_id,)
            ).fetchone()
            seq = int(row[0]) + 1
            db.execute(
                "INSERT INTO events VALUES (?,?,?,?,?)",
                (swap_id, seq, to.value, json.dumps(payload or {}), now),
            )
            db.execute(
                "UPDATE swaps SET state=?, updated_at=? WHERE swap_id=?", (to.value, now, swap_id)
            )
            return seq

    def _row_to_swap(self, row: tuple[Any, ...]) -> StoredSwap:
        return StoredSwap(
            swap_id=bytes(row[0]),
            role=Role(row[1]),
            terms=terms_from_wire(decode(bytes(row[2]))),
            state=State(row[3]),
            peer=str(row[4]),
            created_at=float(row[5]),
            updated_at=float(row[6]),
        )

    def get(self, swap_id: bytes) -> StoredSwap:
        with self._lock:
            row = self._db.execute(
                "SELECT swap_id, role, terms, state, peer, created_at, updated_at "
                "FROM swaps WHERE swap_id=?",
                (swap_id,),
            ).fetchone()
        if row is None:
            raise UnknownSwap(f"no swap {swap_id.hex()} in the journal")
        return self._row_to_swap(row)

    def find(self, prefix_hex: str) -> StoredSwap:
        """A swap by its id or a unique prefix of the hex id (for the CLI)."""
        matches = [s for s in self.swaps() if s.swap_id.hex().startswith(prefix_hex.lower())]
        if len(matches) != 1:
            raise UnknownSwap(
                f"swap id {prefix_hex!r} matches {len(matches)} swaps; give more digits"
            )
        return matches[0]

    def swaps(self, *, unfinished: bool = False) -> list[StoredSwap]:
        """Every swap, oldest first; ``unfinished``: only those not in a terminal state (the
        filter is in the query: finished swaps cost a tick nothing, however many there are)."""
        where, args = "", tuple[str, ...]()
        if unfinished:
            done = sorted(s.value for s in TERMINAL)
            where, args = f"WHERE state NOT IN ({','.join('?' * len(done))}) ", tuple(done)
        with self._lock:
            rows = self._db.execute(
                "SELECT swap_id, role, terms, state, peer, created_at, updated_at "
                f"FROM swaps {where}ORDER BY created_at",
                args,
            ).fetchall()
        return [self._row_to_swap(r) for r in rows]

    def events(self, swap_id: bytes) -> list[Event]:
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, state, payload, at FROM events WHERE swap_id=? ORDER BY seq",
                (swap_id,),
            ).fetchall()
        return [Event(int(r[0]), State(r[1]), json.loads(r[2]), float(r[3])) for r in rows]

    # -- secrets ----------------------------------------------------------------------------

    def store_preimage(self, swap_id: bytes, preimage: bytes) -> None:
        with self._tx() as db:
            db.execute("INSERT OR IGNORE INTO secrets VALUES (?,?)", (swap_id, preimage))

    def preimage(self, swap_id: bytes) -> bytes | None:
        with self._lock:
            row = self._db.execute(
                "SELECT preimage FROM secrets WHERE swap_id=?", (swap_id,)
            ).fetchone()
        return bytes(row[0]) if row else None

    # -- signed transactions ----------------------------------------------------------------

    def store_txs(self, swap_id: bytes, kind: TxKind, txs: list[SignedTx]) -> None:
        """Store the signed transactions of one step (e.g. approve + lock) before any is sent.
        A step is stored once: a second call for the same kind replaces nothing."""
        with self._tx() as db:
            if db.execute(
                "SELECT 1 FROM txs WHERE swap_id=? AND kind=?", (swap_id, kind.value)
            ).fetchone():
                raise JournalError(
                    f"{kind} transactions of swap {swap_id.hex()} are already stored",
                    code="txs_exist",
                )
            for seq, tx in enumerate(txs):
                db.execute(
                    "INSERT INTO txs (swap_id, kind, seq, chain, txid, raw) VALUES (?,?,?,?,?,?)",
                    (swap_id, kind.value, seq, tx.chain, tx.txid, tx.raw),
                )

    def store_bump(self, swap_id: bytes, kind: TxKind, tx: SignedTx) -> None:
        """Store a fee bump of a stored step, before it is sent.

        A replacement (``tx.kind`` is ``kind``; a redeem or refund only) is a new version:
        every version spends the same HTLC, so at most one can ever confirm, and the newest is
        the one (re-)sent from now on. A child (``tx.kind`` is ``CHILD``; also of a lock) pays
        for the newest version and the children before it and is sent after them. A child
        stored replaces any child still never sent (a node refused it, so none holds it): those
        rows are kept, marked dropped. A transaction already stored for the step (signing is
        deterministic, so a bump rebuilt from the same state is the same transaction) is kept
        once, and live."""
        if kind not in (TxKind.LOCK, TxKind.REDEEM, TxKind.REFUND):
            raise JournalError(f"only a lock, redeem or refund is bumped, not a {kind}")
        allowed = (TxKind.CHILD,) if kind is TxKind.LOCK else (kind, TxKind.CHILD)
        if tx.kind not in allowed:
            raise JournalError(
                f"a bump of a {kind} is {' or '.join(f'a {k}' for k in allowed)}, not a {tx.kind}"
            )
        with self._tx() as db:
            row = db.execute(
                "SELECT MAX(seq) FROM txs WHERE swap_id=? AND kind=?", (swap_id, kind.value)
            ).fetchone()
            if row[0] is None:
                raise JournalError(
                    f"no {kind} of swap {swap_id.hex()} is stored to bump", code="no_txs"
                )
            role = "child" if tx.kind is TxKind.CHILD else "version"
            if role == "child":
                db.execute(
                    "UPDATE txs SET role='dropped' WHERE swap_id=? AND kind=? AND role='child' "
                    "AND broadcast_at IS NULL AND txid!=?",
                    (swap_id, kind.value, tx.txid),
                )
            again = db.execute(
                "UPDATE txs SET role=? WHERE swap_id=? AND kind=? AND txid=?",
                (role, swap_id, kind.value, tx.txid),
            )
            if again.rowcount:
                return
            db.execute(
                "INSERT INTO txs (swap_id, kind, seq, chain, txid, raw, role) "
                "VALUES (?,?,?,?,?,?,?)",
                (swap_id, kind.value, int(row[0]) + 1, tx.chain, tx.txid, tx.raw, role),
            )

    def _rows(self, swap_id: bytes, kind: TxKind) -> list[tuple[SignedTx, int | None, str]]:
        """(transaction, first-sent height, role) of every stored transaction of a step, in
        order, each with its own kind (see :func:`_row_kind`)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT chain, txid, raw, sent_height, role FROM txs "
                "WHERE swap_id=? AND kind=? ORDER BY seq",
                (swap_id, kind.value),
            ).fetchall()
        last = max((i for i, r in enumerate(rows) if r[4] == "version"), default=-1)
        return [
            (
                SignedTx(str(r[0]), _row_kind(kind, str(r[4]), i == last), str(r[1]), bytes(r[2])),
                None if r[3] is None else int(r[3]),
                str(r[4]),
            )
            for i, r in enumerate(rows)
        ]

    def versions(self, swap_id: bytes, kind: TxKind) -> list[tuple[SignedTx, int | None]]:
        """Every stored transaction of a step but dropped children, oldest first: a lock step's
        (approve +) lock, every version of a redeem or refund, and every child paying for one
        (kind ``CHILD``); each with the chain height at which it was first sent (None: never
        sent, or sent on a chain without fee bumps)."""
        return [(tx, height) for tx, height, role in self._rows(swap_id, kind) if role != "dropped"]

    def current_txs(self, swap_id: bytes, kind: TxKind) -> list[SignedTx]:
        """What to (re-)send for a step, in order: a lock step's transactions (approve +
        lock), or the newest version of a redeem or refund; then the children paying for it."""
        rows = [tx for tx, _ in self.versions(swap_id, kind)]
        if kind is TxKind.LOCK:
            return rows
        newest = max((i for i, tx in enumerate(rows) if tx.kind is kind), default=len(rows))
        return rows[newest:]

    def txs(self, swap_id: bytes, kind: TxKind) -> list[SignedTx]:
        """The stored transactions of a step, in broadcast order (every version and child,
        dropped ones too, oldest first; see :meth:`current_txs`)."""
        return [tx for tx, _, _ in self._rows(swap_id, kind)]

    def all_txs(self, swap_id: bytes) -> list[tuple[TxKind, str, str, float | None]]:
        """(kind, chain, txid, first sent at) of every stored transaction of the swap."""
        with self._lock:
            rows = self._db.execute(
                "SELECT kind, chain, txid, broadcast_at, role, seq FROM txs WHERE swap_id=? "
                "ORDER BY rowid",
                (swap_id,),
            ).fetchall()
        last = {str(r[0]): int(r[5]) for r in sorted(rows, key=lambda r: r[5]) if r[4] == "version"}
        return [
            (
                _row_kind(TxKind(r[0]), str(r[4]), last.get(str(r[0])) == r[5]),
                str(r[1]),
                str(r[2]),
                r[3],
            )
            for r in rows
        ]

    def mark_broadcast(self, swap_id: bytes, txid: str, height: int | None = None) -> None:
        """Note the first time (and the chain height, when given) ``txid`` was sent."""
        with self._tx() as db:
            db.execute(
                "UPDATE txs SET broadcast_at=COALESCE(broadcast_at, ?), "
                "sent_height=COALESCE(sent_height, ?) WHERE swap_id=? AND txid=?",
                (time.time(), height, swap_id, txid),
            )

    def mark_refused(self, swap_id: bytes, txid: str, height: int) -> None:
        """Date ``txid``, which a node refused for its fee, at ``height`` as if it were sent
        then (it stays unsent): the wait before a fee bump starts, so a spend that never got
        into a mempool is re-signed at a higher fee instead of being retried as it is."""
        with self._tx() as db:
            db.execute(
                "UPDATE txs SET sent_height=COALESCE(sent_height, ?) WHERE swap_id=? AND txid=?",
                (height, swap_id, txid),
            )

    # -- evidence and notices ---------------------------------------------------------------

    def add_evidence(self, ev: EvidenceRecord) -> bool:
        """Record misbehaviour once per (swap, kind, code); True if it was new."""
        with self._tx() as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO evidence VALUES (?,?,?,?,?)",
                (ev.swap_id, ev.kind, ev.code, json.dumps(ev.detail, sort_keys=True), time.time()),
            )
            return cur.rowcount == 1

    def evidence(self, swap_id: bytes | None = None) -> list[EvidenceRecord]:
        q = "SELECT swap_id, kind, code, detail, at FROM evidence"
        args: tuple[Any, ...] = ()
        if swap_id is not None:
            q += " WHERE swap_id=?"
            args = (swap_id,)
        with self._lock:
            rows = self._db.execute(q + " ORDER BY at", args).fetchall()
        return [
            EvidenceRecord(bytes(r[0]), str(r[1]), str(r[2]), json.loads(r[3]), float(r[4]))
            for r in rows
        ]

    def store_notice(self, swap_id: bytes, kind: str, body: dict[str, Any]) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO notices VALUES (?,?,?)", (swap_id, kind, encode(body))
            )

    def drop_notice(self, swap_id: bytes, kind: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM notices WHERE swap_id=? AND kind=?", (swap_id, kind))

    def notice(self, swap_id: bytes, kind: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute(
                "SELECT body FROM notices WHERE swap_id=? AND kind=?", (swap_id, kind)
            ).fetchone()
        if row is None:
            return None
        value: dict[str, Any] = decode(bytes(row[0]))
        return value
