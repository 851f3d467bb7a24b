"""The node's event stream, persisted: trade phases, swap state changes, order commits, offers.

Every event gets the next sequence number inside the SQLite insert (``events.sqlite`` in the
home, 0600), so the numbering survives restarts and a client that reconnects with the last
``seq`` it saw gets exactly the events after it: none lost, none repeated. Appending is
thread-safe (the swap engine publishes from its worker threads); waiting is for asyncio tasks
(the API's WebSocket), woken from any thread.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from kofo.node.service import Event
from kofo.private_files import check_private_file

MAX_PAGE = 1_000


class EventLog:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        if not self.path.exists():
            self.path.touch(mode=0o600)
        check_private_file(self.path)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS events (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
            "kind TEXT NOT NULL, at REAL NOT NULL, data TEXT NOT NULL)"
        )
        self._waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def append(self, kind: str, data: dict[str, Any]) -> Event:
        """Persist one event and wake every waiter. ``data`` must be JSON-serialisable (hex
        strings, ints, plain strings); never put a secret in it."""
        text = json.dumps(data, sort_keys=True, separators=(",", ":"))
        at = time.time()
        with self._lock:
            cur = self._db.execute(
                "INSERT INTO events (kind, at, data) VALUES (?,?,?)", (kind, at, text)
            )
            seq = cur.lastrowid
            waiters = list(self._waiters)
        assert seq is not None
        for loop, ev in waiters:
            if not loop.is_closed():
                loop.call_soon_threadsafe(ev.set)
        return Event(seq, kind, at, data)

    def last_seq(self) -> int:
        with self._lock:
            row = self._db.execute("SELECT MAX(seq) FROM events").fetchone()
        return int(row[0] or 0)

    def after(self, seq: int, limit: int = 100) -> list[Event]:
        """Events with ``seq`` greater than the given one, oldest first, at most ``limit``
        (capped at :data:`MAX_PAGE`)."""
        limit = max(1, min(limit, MAX_PAGE))
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, kind, at, data FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
                (seq, limit),
            ).fetchall()
        return [Event(int(r[0]), str(r[1]), float(r[2]), json.loads(r[3])) for r in rows]

    async def wait(self, after: int, timeout: float, limit: int = 100) -> list[Event]:
        """Events after ``after``; if there are none yet, wait up to ``timeout`` seconds for
        the first to be appended (from any thread)."""
        found = self.after(after, limit)
        if found or timeout <= 0:
            return found
        entry = (asyncio.get_running_loop(), asyncio.Event())
        with self._lock:
            self._waiters.add(entry)
        try:
            deadline = time.monotonic() + timeout
            while True:
                found = self.after(after, limit)
                left = deadline - time.monotonic()
                if found or left <= 0:
                    return found
                entry[1].clear()
                try:
                    await asyncio.wait_for(entry[1].wait(), left)
                except TimeoutError:
                    pass
        finally:
            with self._lock:
                self._waiters.discard(entry)
