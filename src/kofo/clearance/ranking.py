"""The importance ranking behind ``/importance`` and ``/rank_routes``, bounded per block.

A query must never cost the validator work that grows with every registered node: anyone who
can reach a public RPC can send thousands. So the app keeps every node's importance inputs
(:class:`~kofo.clearance.importance.NodeStats`, a few integers) in memory, updated at each
Commit from the node records the block wrote, and ranks them **at most once per committed
height** (the scores decay with height, so a ranking is exact for one height only). The first
``/importance`` query at a height pays one pass over those integers (no record decoding, ~20 ms
per 10,000 nodes); every other query at that height is a slice of the cached top list.

That pass covers only the nodes that can score above 0: ones with settled volume or an attested
bond. A node with neither scores 0 at every height (see :func:`~kofo.clearance.importance.score`),
and registrations are free (20 a block, for good), so sybils would otherwise make every height's
first query, on the ABCI loop that also runs consensus, cost a pass over millions of nodes. They
are kept apart in id order (the zero-score tail of a ranking is ordered by id) and cost nothing
per height.
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Callable, Iterable

from kofo.clearance.importance import NodeStats

MAX_RANKED = 1_000
"""The longest ranking kept and answered (``/importance`` limit)."""


class Ranking:
    def __init__(self, score: Callable[[NodeStats, int], int]) -> None:
        self._score = score
        self._stats: dict[bytes, NodeStats] = {}
        """Nodes that can score above 0 (volume or bond): ranked at each height."""
        self._idle: list[bytes] = []
        """Nodes with neither, sorted by id: score 0 at any height, never scored."""
        self._top: list[tuple[bytes, int]] = []
        self._top_height = -1

    def load(self, nodes: Iterable[tuple[bytes, NodeStats]]) -> None:
        """Start from the committed node records (once, when the app opens its store)."""
        self._stats, idle = {}, []
        for node, stats in nodes:
            if _idle(stats):
                idle.append(node)
            else:
                self._stats[node] = stats
        self._idle = sorted(idle)
        self._top_height = -1

    def update(self, node: bytes, stats: NodeStats | None) -> None:
        """A committed block changed (or removed) ``node``'s record."""
        self._stats.pop(node, None)
        i = bisect.bisect_left(self._idle, node)
        if i < len(self._idle) and self._idle[i] == node:
            del self._idle[i]
        if stats is not None:
            if _idle(stats):
                self._idle.insert(i, node)
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
            best = heapq.nsmallest(
                MAX_RANKED, ((-score(s, height), n) for n, s in self._stats.items())
            )
            if len(best) < MAX_RANKED:  # the idle nodes' zeros, by id, merged into the tail
                best = sorted(best + [(0, n) for n in self._idle[:MAX_RANKED]])[:MAX_RANKED]
            self._top = [(node, -neg) for neg, node in best]
            self._top_height = height
        return self._top[: min(limit, MAX_RANKED)]


def _idle(stats: NodeStats) -> bool:
    """Scores 0 at every height: no volume to decay, no bond (penalties only lower a score)."""
    return stats.volume == 0 and stats.bond == 0
