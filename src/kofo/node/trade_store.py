"""The node's trade rows: a ``trades`` table in ``trades.sqlite`` beside the phase journal.

One row per trade this node takes part in (a taker's ``create_trade``, a maker's signed order),
with its state (:data:`~kofo.node.service.TRADE_STATES`), the chosen quote's figures, the
order id and height once known, and for a taker the signed ``commit_order`` tx (so a restart
re-submits the same bytes) and the ``leg_not_locked`` evidence tx once built (journaled before
it is sent: filed once). A row's phases (each with its detail) are in ``trade_phases``. No
secret is stored here: the taker's preimage lives in the swap journal. Amounts are decimal text
(wei overflow SQLite's 64-bit integers).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from kofo.node.service import PhaseView, TradeView
from kofo.private_files import check_private_file

TERMINAL_TRADE_STATES = frozenset({"redeemed", "refunded", "failed", "cancelled"})

_COLUMNS = (
    "trade_id",
    "role",
    "state",
    "sell",
    "amount",
    "buy",
    "receive",
    "order_id",
    "height",
    "hops",
    "error",
    "created_at",
    "updated_at",
)


class TradeStore:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        if not self.path.exists():
            self.path.touch(mode=0o600)
        check_private_file(self.path)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS trades (trade_id TEXT PRIMARY KEY, role TEXT NOT NULL, "
            "state TEXT NOT NULL, sell TEXT NOT NULL, amount TEXT NOT NULL, buy TEXT NOT NULL, "
            "receive TEXT, order_id TEXT, height INTEGER, hops INTEGER, "
            "error TEXT NOT NULL DEFAULT '', created_at REAL NOT NULL, updated_at REAL NOT NULL, "
            "min_receive TEXT NOT NULL DEFAULT '0', commit_tx BLOB, evidence_tx BLOB)"
        )
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS trade_phases (trade_id TEXT NOT NULL, "
            "seq INTEGER NOT NULL, phase TEXT NOT NULL, at REAL NOT NULL, detail TEXT NOT NULL, "
            "PRIMARY KEY (trade_id, seq))"
        )
        self._db.execute("CREATE INDEX IF NOT EXISTS trades_order ON trades (order_id)")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS contacts (node_id BLOB PRIMARY KEY, contact TEXT NOT NULL)"
        )

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def create(
        self, trade_id: str, role: str, sell: str, amount: int, buy: str, *, min_receive: int = 0
    ) -> TradeView:
        now = time.time()
        with self._lock:
            self._db.execute(
                "INSERT INTO trades (trade_id, role, state, sell, amount, buy, created_at, "
                "updated_at, min_receive) VALUES (?,?,?,?,?,?,?,?,?)",
                (trade_id, role, "quoting", sell, str(amount), buy, now, now, str(min_receive)),
            )
        return self.get(trade_id)

    def update(self, trade_id: str, **fields: Any) -> TradeView:
        if fields:
            with self._lock:
                self._update(trade_id, fields)
        return self.get(trade_id)

    def phase(self, trade_id: str, phase: str, detail: dict[str, Any] | None = None) -> None:
        self.record(trade_id, phase, detail)

    def record(
        self, trade_id: str, phase: str, detail: dict[str, Any] | None = None, **fields: Any
    ) -> None:
        """Append a phase and set ``fields`` (``state=`` ...) in ONE transaction: a reader sees
        both or neither. The node publishes the phase's event only after this returns, so a
        client that re-reads the trade on the event always finds the state it announces."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute(
                    "SELECT COALESCE(MAX(seq), 0) FROM trade_phases WHERE trade_id=?", (trade_id,)
                ).fetchone()
                self._db.execute(
                    "INSERT INTO trade_phases VALUES (?,?,?,?,?)",
                    (
                        trade_id,
                        int(row[0]) + 1,
                        phase,
                        time.time(),
                        json.dumps(detail or {}, sort_keys=True),
                    ),
                )
                if fields:
                    self._update(trade_id, fields)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _update(self, trade_id: str, fields: dict[str, Any]) -> None:
        """The UPDATE of ``fields``; the caller holds the lock."""
        allowed = {"state", "receive", "order_id", "height", "hops", "error", "commit_tx"}
        allowed |= {"evidence_tx"}
        unknown = set(fields) - allowed
        if unknown:
            raise ValueError(f"unknown trade fields {sorted(unknown)}")
        if fields.get("receive") is not None:
            fields = {**fields, "receive": str(fields["receive"])}  # decimal text: wei > 2^63
        # a terminal state is final: a late writer (another engine thread that read the row
        # before it ended) never moves an ended trade back to ``settling``
        final = "state IN (" + ",".join(f"'{t}'" for t in sorted(TERMINAL_TRADE_STATES)) + ")"
        sets = ", ".join(
            f"state=CASE WHEN {final} THEN state ELSE ? END" if k == "state" else f"{k}=?"
            for k in fields
        )
        self._db.execute(
            f"UPDATE trades SET {sets}, updated_at=? WHERE trade_id=?",
            (*fields.values(), time.time(), trade_id),
        )

    def save_contact(self, node_id: bytes, contact: str) -> None:
        """Where a counterparty accepts links (its signed join's contact): a restarted taker
        dials it again for the swap's messages."""
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO contacts VALUES (?,?)", (node_id, contact))

    def contacts(self) -> dict[bytes, str]:
        with self._lock:
            rows = self._db.execute("SELECT node_id, contact FROM contacts").fetchall()
        return {bytes(r[0]): str(r[1]) for r in rows}

    def raw(self, trade_id: str, column: str) -> Any:
        if column not in ("commit_tx", "evidence_tx", "min_receive"):
            raise ValueError(column)
        with self._lock:
            row = self._db.execute(
                f"SELECT {column} FROM trades WHERE trade_id=?",
                (trade_id,),
            ).fetchone()
        return None if row is None else row[0]

    def find(self, trade_id: str) -> TradeView | None:
        with self._lock:
            row = self._db.execute(
                f"SELECT {', '.join(_COLUMNS)} FROM trades WHERE trade_id=?",
                (trade_id,),
            ).fetchone()
            phases = self._db.execute(
                "SELECT phase, at, detail FROM trade_phases WHERE trade_id=? ORDER BY seq",
                (trade_id,),
            ).fetchall()
        if row is None:
            return None
        view = _view(row)
        return replace(
            view, phases=tuple(PhaseView(str(p), float(a), json.loads(d)) for p, a, d in phases)
        )

    def get(self, trade_id: str) -> TradeView:
        view = self.find(trade_id)
        if view is None:
            raise KeyError(trade_id)
        return view

    def by_order(self, order_id: str) -> TradeView | None:
        with self._lock:
            row = self._db.execute(
                "SELECT trade_id FROM trades WHERE order_id=? ORDER BY created_at LIMIT 1",
                (order_id,),
            ).fetchone()
        return None if row is None else self.find(str(row[0]))

    def recent(self, *, limit: int = 50, before: float | None = None) -> list[TradeView]:
        limit = max(1, min(limit, 1_000))
        with self._lock:
            rows = self._db.execute(
                "SELECT trade_id FROM trades WHERE created_at < ? ORDER BY created_at DESC LIMIT ?",
                (float("inf") if before is None else before, limit),
            ).fetchall()
        return [self.get(str(r[0])) for r in rows]

    def unfinished(self) -> list[TradeView]:
        """Trades not in a terminal state, oldest first."""
        marks = ",".join("?" for _ in TERMINAL_TRADE_STATES)
        with self._lock:
            rows = self._db.execute(
                f"SELECT trade_id FROM trades WHERE state NOT IN ({marks}) ORDER BY created_at",
                tuple(TERMINAL_TRADE_STATES),
            ).fetchall()
        return [self.get(str(r[0])) for r in rows]


def _view(row: tuple[Any, ...]) -> TradeView:
    d = dict(zip(_COLUMNS, row, strict=True))
    return TradeView(
        trade_id=str(d["trade_id"]),
        role=str(d["role"]),
        state=str(d["state"]),
        sell=str(d["sell"]),
        amount=int(d["amount"]),
        buy=str(d["buy"]),
        receive=None if d["receive"] is None else int(d["receive"]),
        order_id=None if d["order_id"] is None else str(d["order_id"]),
        height=None if d["height"] is None else int(d["height"]),
        hops=None if d["hops"] is None else int(d["hops"]),
        error=str(d["error"]),
        created_at=float(d["created_at"]),
        updated_at=float(d["updated_at"]),
    )
