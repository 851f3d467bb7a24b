"""The importance ranking behind ``/importance`` and ``/rank_routes``, bounded per block.

A query must never cost the validator work that grows with every registered node: anyone who
can reach a public RPC can send thousands. So the app keeps every node's importance inputs
(:class:`~kofo.clearance.importance.NodeStats`, a few integers) in memory, updated at each
Commit from the node records the block wrote, and ranks them **at most once per committed
height** (the scores decay with height, so a ranking is exact for one height only). The first
``/importance`` query at a height pays one pass over those integers (no record decoding, ~20 ms
per 10,000 nodes); every other query at that height is a slice of the cached top list.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable

from kofo.clearance.importance import NodeStats

MAX_RANKED = 1_000
"""The longest ranking kept and answered (``/importance`` limit)."""


class Ranking:
    def __init__(self, score: Callable[[NodeStats, int], int]) -> None:
        self._score = score
        self._stats: dict[bytes, NodeStats] = {}
        self._top: list[tuple[bytes, int]] = []
        self._top_height = -1

    def load(self, nodes: Iterable[tuple[bytes, NodeStats]]) -> None:
        """Start from the committed node records (once, when the app opens its store)."""
        self._stats = dict(nodes)
        self._top_height = -1

    def update(self, node: bytes, stats: NodeStats | None) -> None:
        """A committed block changed (or removed) ``node``'s record."""
        if stats is None:
            self._stats.pop(node, None)
        else:
            self._stats[node] = stats
        self._top_height = -1

    def importance(self, node: bytes, height: int) -> int:
        stats = self._stats.get(node)
        return 0 if stats is None else self._score(stats, height)

    def top(self, limit: int, height: int) -> list[tuple[bytes, int]]:
        """Nodes by importance at ``height``, best first (ties by node id)."""
        if self._top_height != height:
            score = self._score
            self._top = [
                (node, -neg)
                for neg, node in heapq.nsmallest(
                    MAX_RANKED, ((-score(s, height), n) for n, s in self._stats.items())
                )
            ]
            self._top_height = height
        return self._top[: min(limit, MAX_RANKED)]
