"""The ledger's Merkle-committed key/value store, persisted in SQLite.

Tree shape: keys are spread over ``2**BUCKET_BITS`` buckets by the first bits of
``sha256(key)``. A bucket's hash commits to its leaves sorted by key; the app hash is the root
of a complete binary Merkle tree over the bucket hashes. A block only rehashes the buckets it
touched and their ``BUCKET_BITS`` ancestors, so the cost of an app hash grows with the writes of
the block (and the size of a bucket), not with the whole state — a flat sorted-leaf tree would
rehash everything every block, and a 256-deep sparse Merkle tree costs 256 hashes per write,
both too slow for a Python app at a thousand orders a second.

Hashes (domain-separated so a leaf can never pass for a node):
``leaf = sha256(0x00 || u32(len key) || key || value)``,
``bucket = sha256(0x02 || leaf_1 || ... || leaf_k)`` (leaves sorted by key),
``node = sha256(0x01 || left || right)``.

Writes go to memory; :meth:`MerkleStore.commit` writes the changed keys, the block record and
the new height/app hash to SQLite in one transaction (WAL, ``synchronous=FULL``), so a crash
leaves the last committed block, never half of one. Reopening rebuilds the tree from the rows
and checks it against the stored app hash.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from kofo.errors import KofoError

BUCKET_BITS = 12
"""4096 buckets: each dirty bucket costs 12 ancestor hashes, and a million keys still leave only
~250 leaves per bucket to rehash."""

_N_BUCKETS = 1 << BUCKET_BITS
_EMPTY_BUCKET = hashlib.sha256(b"\x02").digest()


class StoreCorrupted(KofoError):
    code = "store_corrupted"


def _leaf_hash(key: bytes, value: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + len(key).to_bytes(4, "big") + key + value).digest()


def _bucket_of(key: bytes) -> int:
    d = hashlib.sha256(key).digest()
    return int.from_bytes(d[:2], "big") >> (16 - BUCKET_BITS)


class MerkleStore:
    """Key/value state with an app hash. ``path=None`` keeps everything in memory."""

    def __init__(self, path: str | Path | None = None) -> None:
        # The solo ledger's block producer commits from its own thread; every caller serialises
        # its use of one store (the app is driven by one producer), so the connection may move
        # between threads.
        self._db = sqlite3.connect(
            ":memory:" if path is None else str(path), check_same_thread=False
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(
            """
            CREATE TABLE IF NOT EXISTS kv (key BLOB PRIMARY KEY, value BLOB NOT NULL);
            CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value BLOB NOT NULL);
            CREATE TABLE IF NOT EXISTS blocks (height INTEGER PRIMARY KEY, block BLOB NOT NULL);
            """
        )
        self._data: dict[bytes, bytes] = {}
        self._buckets: list[dict[bytes, bytes]] = [{} for _ in range(_N_BUCKETS)]
        # Every key changed since the last commit, with its committed value (None: absent):
        # what commit() persists, what rollback() restores and what get_committed() reads.
        self._undo: dict[bytes, bytes | None] = {}
        self._unhashed: set[bytes] = set()  # changed since the last root() (to rehash)
        # levels[0] are bucket hashes, levels[-1] == [root]
        self._levels: list[list[bytes]] = []
        for key, value in self._db.execute("SELECT key, value FROM kv"):
            self._data[key] = value
            self._buckets[_bucket_of(key)][key] = _leaf_hash(key, value)
        self._build_tree()
        row = self._db.execute("SELECT value FROM meta WHERE name='app_hash'").fetchone()
        self.height: int = self._meta_int("height")
        self.app_hash: bytes = self.root() if row is None else bytes(row[0])
        if row is not None and self.root() != self.app_hash:
            raise StoreCorrupted(
                f"state rows hash to {self.root().hex()}, but height {self.height} "
                f"committed {self.app_hash.hex()}"
            )

    def _meta_int(self, name: str) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE name=?", (name,)).fetchone()
        return 0 if row is None else int.from_bytes(row[0], "big")

    def _build_tree(self) -> None:
        level = [self._hash_bucket(b) for b in range(_N_BUCKETS)]
        self._levels = [level]
        while len(level) > 1:
            level = [
                hashlib.sha256(b"\x01" + level[i] + level[i + 1]).digest()
                for i in range(0, len(level), 2)
            ]
            self._levels.append(level)

    def _hash_bucket(self, b: int) -> bytes:
        leaves = self._buckets[b]
        if not leaves:
            return _EMPTY_BUCKET
        h = hashlib.sha256(b"\x02")
        for key in sorted(leaves):
            h.update(leaves[key])
        return h.digest()

    # -- reads and writes -------------------------------------------------------------------

    def get(self, key: bytes) -> bytes | None:
        """The current value, including writes not yet committed."""
        return self._data.get(key)

    def get_committed(self, key: bytes) -> bytes | None:
        """The value as of the last commit (what queries answer from)."""
        if key in self._undo:
            return self._undo[key]
        return self._data.get(key)

    # Hashing waits for root(): a key written several times in a block (a node's record is
    # touched by each of its orders) is hashed once, with its final value.

    def set(self, key: bytes, value: bytes) -> None:
        old = self._data.get(key)
        if old == value:
            return
        if key not in self._undo:
            self._undo[key] = old
        self._data[key] = value
        self._unhashed.add(key)

    def delete(self, key: bytes) -> None:
        if key not in self._data:
            return
        if key not in self._undo:
            self._undo[key] = self._data[key]
        del self._data[key]
        self._unhashed.add(key)

    def uncommitted_keys(self) -> list[bytes]:
        """The keys changed since the last commit."""
        return list(self._undo)

    def rollback(self) -> None:
        """Drop every write since the last commit: the contents (and root) are the committed
        ones again. What the app does when a finalized block is finalized again before its
        commit (CometBFT restarted without the app)."""
        for key, old in self._undo.items():
            if old is None:
                self._data.pop(key, None)
            else:
                self._data[key] = old
            self._unhashed.add(key)
        self._undo = {}

    def scan(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        """Every (key, value) under ``prefix``, in key order, including uncommitted writes (a
        full pass: never on a path an outsider can trigger per request)."""
        for key in sorted(k for k in self._data if k.startswith(prefix)):
            yield key, self._data[key]

    def scan_committed(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        """:meth:`scan` of the committed contents (uncommitted writes left out)."""
        keys = {k for k in self._data if k.startswith(prefix)}
        keys.update(k for k in self._undo if k.startswith(prefix))
        for key in sorted(keys):
            value = self.get_committed(key)
            if value is not None:
                yield key, value

    # -- hashing and committing --------------------------------------------------------------

    def root(self) -> bytes:
        """The app hash of the current contents (including writes not yet committed)."""
        if self._unhashed:
            dirty: set[int] = set()
            for key in self._unhashed:
                b = _bucket_of(key)
                value = self._data.get(key)
                if value is None:
                    self._buckets[b].pop(key, None)
                else:
                    self._buckets[b][key] = _leaf_hash(key, value)
                dirty.add(b)
            self._unhashed = set()
            for b in dirty:
                self._levels[0][b] = self._hash_bucket(b)
            for depth in range(1, len(self._levels)):
                below = self._levels[depth - 1]
                dirty = {i >> 1 for i in dirty}
                for i in dirty:
                    self._levels[depth][i] = hashlib.sha256(
                        b"\x01" + below[2 * i] + below[2 * i + 1]
                    ).digest()
        return self._levels[-1][0]

    def commit(self, height: int, block: bytes | None = None) -> bytes:
        """Persist every change since the last commit as block ``height``; returns the app
        hash. ``block`` (the encoded block) is kept for replays."""
        app_hash = self.root()
        upserts: list[tuple[bytes, bytes]] = []
        deletes: list[tuple[bytes]] = []
        for key in self._undo:
            value = self._data.get(key)
            if value is None:
                deletes.append((key,))
            else:
                upserts.append((key, value))
        with self._db:
            self._db.executemany("DELETE FROM kv WHERE key=?", deletes)
            self._db.executemany(
                "INSERT INTO kv(key, value) VALUES(?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                upserts,
            )
            self._db.execute(
                "INSERT OR REPLACE INTO meta(name, value) VALUES('height', ?)",
                (height.to_bytes(8, "big"),),
            )
            self._db.execute(
                "INSERT OR REPLACE INTO meta(name, value) VALUES('app_hash', ?)", (app_hash,)
            )
            if block is not None:
                self._db.execute(
                    "INSERT OR REPLACE INTO blocks(height, block) VALUES(?, ?)", (height, block)
                )
        self._undo = {}
        self.height = height
        self.app_hash = app_hash
        return app_hash

    def blocks(self) -> Iterator[tuple[int, bytes]]:
        """The committed blocks kept for replay, in height order."""
        yield from self._db.execute("SELECT height, block FROM blocks ORDER BY height")

    def close(self) -> None:
        self._db.close()
