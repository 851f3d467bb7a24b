"""A reorg-aware index of the HTLC contract's events, kept current block range by block range.

A node watching many swaps would otherwise ask the chain about each of them on every pass (is
the slot live? which block holds the lock? was it spent, and by whom?). The index instead reads
the contract's logs once per new block range, whatever the number of swaps, and answers those
questions from memory. It is a cache, never the authority: a swap id it has not seen (its lock
predates the index, or it was pruned) is answered by the adapter from the chain as before.

Reorgs: each refresh remembers the tip it indexed (height, hash). The next refresh checks that
remembered blocks are still on the best chain, newest first; events above the newest surviving
one are dropped and re-read. A reorg deeper than every remembered tip clears the index.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from web3 import Web3

REMEMBERED_TIPS = 64
"""Indexed tips kept for reorg checks; a reorg below the oldest one rebuilds the index."""

START_BACK_BLOCKS = 256
"""How far below the tip (at first use) the index starts: locks from just before a restart are
then answered from memory too."""

KEEP_BLOCKS = 20_000
"""Swaps whose newest event is older than this many blocks are pruned (memory stays bounded);
a pruned swap is answered from the chain, as an unknown one is."""


@dataclass(frozen=True)
class HtlcEvent:
    """One event of the HTLC contract: ``Locked``, ``Redeemed`` or ``Refunded``."""

    name: str
    txid: str
    block: int
    log_index: int
    preimage: bytes | None = None  # only on Redeemed


class HtlcEventIndex:
    """Events of one HTLC contract by swap id, from a start height to the last indexed tip."""

    def __init__(
        self,
        w3: Web3,
        address: str,
        names_by_topic: Mapping[str, str],
        *,
        start: int | None = None,
    ) -> None:
        self._w3 = w3
        self._address = address
        self._names = {bytes.fromhex(t.removeprefix("0x")): n for t, n in names_by_topic.items()}
        self._start = start
        self._tips: deque[tuple[int, bytes]] = deque(maxlen=REMEMBERED_TIPS)
        self._by_swap: dict[bytes, list[HtlcEvent]] = {}
        self._refreshes = 0
        self._lock = threading.Lock()
        self.head: tuple[int, bytes, int] = (-1, b"", 0)
        """The last head read: (height, hash, timestamp), replaced as one value."""

    @property
    def start(self) -> int | None:
        """The lowest indexed height (None before the first refresh)."""
        return self._start

    @property
    def height(self) -> int:
        """The last indexed tip height (-1 before the first refresh)."""
        return self._tips[-1][0] if self._tips else -1

    def events(self, sid: bytes) -> list[HtlcEvent]:
        """The swap's events in chain order (empty if none were seen)."""
        with self._lock:
            return list(self._by_swap.get(sid, ()))

    def refresh(self) -> int:
        """Bring the index up to the current tip; returns the tip height."""
        with self._lock:
            return self._refresh()

    def _refresh(self) -> int:
        latest = self._w3.eth.get_block("latest")
        height, block_hash = int(latest["number"]), bytes(latest["hash"])
        self.head = (height, block_hash, int(latest["timestamp"]))
        if self._tips and self._tips[-1] == (height, block_hash):
            return height
        if self._start is None:
            self._start = max(0, height - START_BACK_BLOCKS)
        if self._tips and self._tips[-1] == (height - 1, bytes(latest["parentHash"])):
            first = height  # the next block on top of the last indexed one: no reorg
        else:
            first = self._first_unindexed(height)
        if first <= height:
            self._add(self._read(first, height))
        self._tips.append((height, block_hash))
        self._refreshes += 1
        if self._refreshes % 1000 == 0:
            self._prune(height)
        return height

    def _first_unindexed(self, height: int) -> int:
        """The first height to read; drops events of blocks no longer on the best chain."""
        assert self._start is not None
        reorged = False
        while self._tips:
            tip_height, tip_hash = self._tips[-1]
            if tip_height <= height:
                block = self._w3.eth.get_block(tip_height)
                if bytes(block["hash"]) == tip_hash:
                    if reorged:
                        self._drop_above(tip_height)
                    return tip_height + 1
            self._tips.pop()
            reorged = True
        self._drop_above(self._start - 1)  # nothing remembered survives: rebuild
        return self._start

    def _read(self, first: int, last: int) -> list[Any]:
        return list(
            self._w3.eth.get_logs(
                {
                    "address": self._address,  # type: ignore[typeddict-item]
                    "topics": [["0x" + t.hex() for t in self._names]],  # type: ignore[list-item]
                    "fromBlock": first,
                    "toBlock": last,
                }
            )
        )

    def _add(self, entries: list[Any]) -> None:
        # Decoded by hand: every event's first indexed field is the swap id (topic 1), and the
        # only data field read is Redeemed's preimage (one bytes32 word), so the layout is
        # fixed by contracts/HTLC.vy; web3's generic ABI decoding costs more than the query.
        for entry in entries:
            topics = [bytes(t) for t in entry["topics"]]
            name = self._names.get(topics[0]) if topics else None
            if name is None or len(topics) < 2:
                continue  # not one of ours (the query filters on topic 0; a node may not)
            data = bytes(entry["data"])
            event = HtlcEvent(
                name=name,
                txid="0x" + bytes(entry["transactionHash"]).hex(),
                block=int(entry["blockNumber"]),
                log_index=int(entry["logIndex"]),
                preimage=data[:32] if name == "Redeemed" and len(data) >= 32 else None,
            )
            self._by_swap.setdefault(topics[1], []).append(event)

    def _drop_above(self, height: int) -> None:
        for sid in list(self._by_swap):
            kept = [e for e in self._by_swap[sid] if e.block <= height]
            if kept:
                self._by_swap[sid] = kept
            else:
                del self._by_swap[sid]

    def _prune(self, tip: int) -> None:
        floor = tip - KEEP_BLOCKS
        for sid in [s for s, evs in self._by_swap.items() if evs[-1].block < floor]:
            del self._by_swap[sid]
