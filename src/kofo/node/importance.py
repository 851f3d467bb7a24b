"""The node's view of ledger importance, for the exchange (the taker's quote ranking, the
order book's standing, the claim fan-out): read from memory on every use, refreshed in the
background from the ledger's ``/importance`` ranking.

The exchange calls the lookup synchronously on the quote path, so it never waits for the
ledger: :class:`ImportanceCache` answers from the last ranking it read. The daemon refreshes it
every :data:`~kofo.node.daemon.IMPORTANCE_INTERVAL` seconds (one ``abci_query`` of the top
:data:`IMPORTANCE_CACHE_SIZE` nodes, the ledger's own bound). A node outside that ranking, or
any node before the first read, counts 0. A read that fails (the ledger down) keeps the last
known values: no trade can commit while the ledger is down anyway (nothing locks before the
commit), so a stale value can at worst break a tie between equally priced quotes, never lose
funds or fail a trade.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from kofo.clearance.ranking import MAX_RANKED
from kofo.errors import InvalidInput

IMPORTANCE_CACHE_SIZE = MAX_RANKED
"""Nodes whose importance the cache holds: the ledger's longest ``/importance`` answer."""


class ImportanceCache:
    """Node id -> ledger importance (an integer score, 0 if unknown), bounded."""

    def __init__(self, size: int = IMPORTANCE_CACHE_SIZE) -> None:
        if not 1 <= size <= MAX_RANKED:
            raise InvalidInput(f"ImportanceCache size must be 1..{MAX_RANKED}, got {size}")
        self.size = size
        self._scores: dict[bytes, int] = {}
        self.refreshed_at: float | None = None  # time.time() of the last successful read
        self.failures = 0  # reads that failed since the last successful one

    def __call__(self, node_id: bytes) -> float:
        """The exchange's lookup (``kofo.exchange.node.Importance``): never blocks."""
        return float(self._scores.get(node_id, 0))

    def score(self, node_id: bytes) -> int:
        return self._scores.get(node_id, 0)

    def __len__(self) -> int:
        return len(self._scores)

    def update(self, ranking: Iterable[tuple[bytes, int]]) -> None:
        """Replace the values with a ranking read from the ledger (best first): at most
        ``size`` entries kept, non-positive scores dropped (they count 0 anyway)."""
        scores: dict[bytes, int] = {}
        for node, score in ranking:
            if len(scores) >= self.size:
                break
            if score > 0:
                scores[bytes(node)] = int(score)
        self._scores = scores
        self.refreshed_at = time.time()
        self.failures = 0

    def failed(self) -> None:
        """A read failed: the last known values stay."""
        self.failures += 1
