"""A reorg-aware index of the HTLC contract's events, kept current block range by block range.

A node watching many swaps would otherwise ask the chain about each of them on every pass (is
the slot live? which block holds the lock? was it spent, and by whom?). The index instead reads
the contract's logs once per new block range, whatever the number of swaps, and answers those
questions from memory. It is a cache, never the authority: a swap id it has not seen (its lock
predates the index, or it was pruned) is answered by the adapter from the chain as before.

Reorgs: each refresh remembers the tip it indexed (height, hash). The next refresh walks back
from the new head by ``parentHash`` (blocks fetched by hash) until it meets a remembered tip;
events above it are dropped and the walked blocks re-read. A reorg deeper than every remembered
tip clears the index.

Every log is tied to the block it came from: a node's answers may come from different views
(a reorg that flips back and forth, a provider whose backends disagree), so ``eth_getLogs`` by
number can answer from another branch than the head just read. Each log's ``blockHash`` must be
the walked block's hash at its height, and a walked block whose ``logsBloom`` says the contract
logged something must have its logs in the answer; a block that fails either check is re-read
by its hash (``eth_getLogs`` with ``blockHash``, EIP-234, or where the node lacks it the
receipts of the block's transactions, each checked to be from that block). So the index never
holds a lock from a branch it does not index, nor misses a redeem in one it does. Blocks deeper
than :data:`CHECKED_DEPTH` below the head (read only at first use or after a long pause) are
read by number, each log's block hash checked against the node's block at that height.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from eth_bloom.bloom import BloomFilter
from web3 import Web3

from kofo.errors import ChainError

REMEMBERED_TIPS = 64
"""Indexed tips kept for reorg checks; a reorg below the oldest one rebuilds the index."""

START_BACK_BLOCKS = 256
"""How far below the tip (at first use) the index starts: locks from just before a restart are
then answered from memory too."""

CHECKED_DEPTH = 64
"""Blocks below the head that are walked by hash and whose logs are checked against each block's
bloom: deeper than a reorg or a lagging backend reaches (and as deep as the tips remembered)."""

READ_ATTEMPTS = 3
"""Refreshes tried in one call before the node's disagreeing answers are reported as an error
(the index then stays at its last consistent tip)."""

KEEP_BLOCKS = 20_000
"""Swaps whose newest event is older than this many blocks are pruned (memory stays bounded);
a pruned swap is answered from the chain, as an unknown one is."""


LOCK_DATA = 4
"""Bytes of data in a lock's log: the slot, big-endian (see contracts/HTLC.vy)."""


@dataclass(frozen=True)
class HtlcEvent:
    """One event of the HTLC contract: ``Locked``, ``Redeemed`` or ``Refunded``."""

    name: str
    txid: str
    block: int
    log_index: int
    preimage: bytes | None = None  # only on Redeemed
    slot: int | None = None  # only on Locked


def decode_log(topics: list[bytes], data: bytes) -> tuple[bytes, str, int | None, bytes | None]:
    """(swap id, event name, slot, preimage) of one of the HTLC contract's logs.

    The contract's logs are anonymous (no signature topic) and told apart by their shape: one
    topic, the swap id, and 4 bytes of data (a lock: the slot), 32 bytes (a redeem: the
    preimage) or none (a refund). Anything else is no log of this contract's and raises
    :class:`ChainError` (``bad_log``).
    """
    if len(topics) == 1 and len(topics[0]) == 32:
        if len(data) == LOCK_DATA:
            return topics[0], "Locked", int.from_bytes(data, "big"), None
        if len(data) == 32:
            return topics[0], "Redeemed", None, data
        if not data:
            return topics[0], "Refunded", None, None
    raise ChainError(
        f"a log of {len(topics)} topics and {len(data)} bytes is not an HTLC log", code="bad_log"
    )


class _Inconsistent(Exception):
    """The node's answers within one refresh do not describe one chain."""


def _may_hold(block: Mapping[str, Any], items: tuple[bytes, ...]) -> bool:
    """Whether ``block``'s logs bloom may hold a log with every one of ``items`` (the
    contract's address: its logs have no fixed topic). A bloom has false positives, never
    false negatives."""
    bloom = BloomFilter(int.from_bytes(bytes(block.get("logsBloom") or b""), "big"))
    return all(item in bloom for item in items)


class HtlcEventIndex:
    """Events of one HTLC contract by swap id, from a start height to the last indexed tip."""

    def __init__(
        self,
        w3: Web3,
        address: str,
        *,
        start: int | None = None,
        on_new_head: Callable[[], None] | None = None,
    ) -> None:
        """``on_new_head`` runs whenever a refresh finds a head it has not indexed, before any
        of its logs are read: what raises there leaves the index unchanged (the adapter checks
        the node still serves the configured chain)."""
        self._w3 = w3
        self._on_new_head = on_new_head
        self._address = address
        self._address_bytes = bytes.fromhex(address.removeprefix("0x"))
        self._start = start
        self._tips: deque[tuple[int, bytes]] = deque(maxlen=REMEMBERED_TIPS)
        self._by_swap: dict[bytes, list[HtlcEvent]] = {}
        self._refreshes = 0
        self._by_hash: bool | None = None  # does the node take eth_getLogs by blockHash?
        self._lock = threading.Lock()
        self.head: tuple[int, bytes, int] = (-1, b"", 0)
        """The last head indexed: (height, hash, timestamp), replaced as one value."""

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
        """Bring the index up to the current tip; returns the tip height.

        Raises :class:`~kofo.errors.ChainError` when the node's answers keep disagreeing with
        each other; the index then still answers from its last consistent tip."""
        with self._lock:
            problem = ""
            for _ in range(READ_ATTEMPTS):
                try:
                    return self._refresh()
                except _Inconsistent as exc:
                    problem = str(exc)
            raise ChainError(
                f"the node's answers describe no single chain ({problem}); "
                f"events stay indexed to height {self.height}",
                code="chain_inconsistent",
            )

    def _refresh(self) -> int:
        latest = self._w3.eth.get_block("latest")
        height, block_hash = int(latest["number"]), bytes(latest["hash"])
        if self._tips and self._tips[-1] == (height, block_hash):
            self.head = (height, block_hash, int(latest["timestamp"]))
            return height
        if self._on_new_head is not None:
            self._on_new_head()
        if self._start is None:
            self._start = max(0, height - START_BACK_BLOCKS)
        walked, linked = self._walk(latest)
        lowest = int(walked[-1]["number"])
        first, deep = lowest, []
        if linked is None:
            first = self._deep_first(lowest)
            if first < lowest:
                deep = self._read_deep(first, lowest - 1, walked[-1]["parentHash"])
        entries = deep + self._read_walked(walked)
        # Everything was read and checked: only now does the index change.
        self._drop_above(first - 1)
        while self._tips and self._tips[-1][0] >= first:
            self._tips.pop()
        self._add(entries)
        self._tips.append((height, block_hash))
        self.head = (height, block_hash, int(latest["timestamp"]))
        self._refreshes += 1
        if self._refreshes % 1000 == 0:
            self._prune(height)
        return height

    def _walk(self, latest: Any) -> tuple[list[Any], int | None]:
        """The blocks from the head down (by parent hash) to the first one whose parent is a
        remembered tip, or to the index's start, or :data:`CHECKED_DEPTH` of them; and the
        height of the remembered tip reached (None if none was)."""
        assert self._start is not None
        remembered = dict(self._tips)
        walked = [latest]
        block = latest
        while True:
            number = int(block["number"])
            if remembered.get(number - 1) == bytes(block["parentHash"]):
                return walked, number - 1
            if number <= self._start or len(walked) >= CHECKED_DEPTH:
                return walked, None
            parent = self._w3.eth.get_block(block["parentHash"])
            if parent is None or int(parent["number"]) != number - 1:
                raise _Inconsistent(f"block {number}'s parent is not known as block {number - 1}")
            walked.append(parent)
            block = parent

    def _deep_first(self, lowest: int) -> int:
        """Below the walked blocks: the first height to read again, after the newest
        remembered tip still on the node's best chain (compared by number)."""
        assert self._start is not None
        for tip_height, tip_hash in reversed(self._tips):
            if tip_height < lowest:
                block = self._w3.eth.get_block(tip_height)
                if bytes(block["hash"]) == tip_hash:
                    return min(tip_height + 1, lowest)
        return min(self._start, lowest)

    def _read_deep(self, first: int, last: int, link: bytes) -> list[Any]:
        """Logs of ``[first, last]``, below the checked depth, each log's block hash checked
        against the node's block at its height; ``link`` is the hash block ``last`` must have."""
        if bytes(self._w3.eth.get_block(last)["hash"]) != bytes(link):
            raise _Inconsistent(f"block {last} is not the parent of the walked blocks")
        entries = self._read(first, last)
        hashes: dict[int, bytes] = {}
        for entry in entries:
            number = int(entry["blockNumber"])
            if not first <= number <= last:
                raise _Inconsistent(f"a log of block {number} answered a query of {first}..{last}")
            if number not in hashes:
                hashes[number] = bytes(self._w3.eth.get_block(number)["hash"])
            if bytes(entry["blockHash"]) != hashes[number]:
                raise _Inconsistent(f"a log of block {number} is from another branch")
        return entries

    def _read_walked(self, walked: list[Any]) -> list[Any]:
        """The contract's logs in the walked blocks, each tied to its block's hash."""
        if not walked:
            return []
        blocks = {int(b["number"]): b for b in walked}
        first, last = min(blocks), max(blocks)
        by_block: dict[int, list[Any]] = {n: [] for n in blocks}
        suspect: set[int] = set()
        for entry in self._read(first, last):
            number = int(entry["blockNumber"])
            if number not in blocks:
                raise _Inconsistent(f"a log of block {number} answered a query of {first}..{last}")
            if bytes(entry["blockHash"]) != bytes(blocks[number]["hash"]):
                suspect.add(number)  # from another branch: never indexed, the block is re-read
                continue
            by_block[number].append(entry)
        for number, block in blocks.items():
            if not by_block[number] and _may_hold(block, (self._address_bytes,)):
                suspect.add(number)  # the block says it holds our logs; the answer had none
        for number in suspect:
            by_block[number] = self._read_block(blocks[number])
        return [e for n in sorted(by_block) for e in by_block[n]]

    def _read_block(self, block: Any) -> list[Any]:
        """The contract's logs of exactly ``block`` (by its hash)."""
        block_hash, number = bytes(block["hash"]), int(block["number"])
        entries: list[Any] | None = None
        if self._by_hash is not False:
            try:
                entries = list(
                    self._w3.eth.get_logs(
                        {
                            "address": self._address,  # type: ignore[typeddict-item]
                            "blockHash": block_hash,  # type: ignore[typeddict-item]
                        }
                    )
                )
                self._by_hash = True
            except Exception as exc:  # an unknown block, or a node without EIP-234
                if self._by_hash:
                    raise _Inconsistent(f"block {number} by hash: {exc}") from None
                self._by_hash = False  # never worked here: use the receipts from now on
        if entries is None:
            entries = []
            for txid in block["transactions"]:
                receipt = self._w3.eth.get_transaction_receipt(txid)
                if bytes(receipt["blockHash"]) != block_hash:
                    raise _Inconsistent(f"a receipt of block {number} is from another branch")
                entries.extend(
                    log
                    for log in receipt["logs"]
                    if bytes.fromhex(str(log["address"]).removeprefix("0x").lower())
                    == self._address_bytes
                )
        for entry in entries:
            if bytes(entry["blockHash"]) != block_hash:
                raise _Inconsistent(f"block {number} by hash answered with another block's logs")
        return entries

    def _read(self, first: int, last: int) -> list[Any]:
        return list(
            self._w3.eth.get_logs(
                {
                    "address": self._address,  # type: ignore[typeddict-item]
                    "fromBlock": first,
                    "toBlock": last,
                }
            )
        )

    def _add(self, entries: list[Any]) -> None:
        # Decoded by shape (decode_log): the contract emits only these three anonymous logs.
        for entry in entries:
            try:
                sid, name, slot, preimage = decode_log(
                    [bytes(t) for t in entry["topics"]], bytes(entry["data"])
                )
            except ChainError:
                continue  # the contract emits no other log; a node answering one is ignored
            event = HtlcEvent(
                name=name,
                txid="0x" + bytes(entry["transactionHash"]).hex(),
                block=int(entry["blockNumber"]),
                log_index=int(entry["logIndex"]),
                preimage=preimage,
                slot=slot,
            )
            self._by_swap.setdefault(sid, []).append(event)

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
