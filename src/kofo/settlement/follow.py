"""Following a chain block by block, noticing reorganisations.

Works with any :class:`~kofo.settlement.chain.ChainAdapter` (it only needs ``tip`` and
``block_at``). The follower remembers the hashes of the last ``depth`` blocks it reported; on
each poll it first walks back until its memory agrees with the chain again, reports a
:class:`Reorg` from the first height that changed, then reports every new block up to the tip.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Protocol

from kofo.errors import ChainError
from kofo.settlement.chain import BlockInfo

DEFAULT_DEPTH = 100
"""How far back a reorg is followed. Bitcoin has seen no reorg deeper than a few blocks since
2013 and Ethereum finalises after two epochs (64 blocks); 100 covers both with room. A deeper
reorg raises, because swap decisions taken on blocks that old can no longer be trusted."""

MAX_BLOCKS_PER_POLL = 1000
"""A follower that fell far behind catches up in bounded steps, so one poll never blocks the
caller for long."""


class _Chain(Protocol):
    def tip(self) -> BlockInfo: ...
    def block_at(self, height: int) -> BlockInfo: ...


@dataclass(frozen=True, slots=True)
class NewBlock:
    block: BlockInfo


@dataclass(frozen=True, slots=True)
class Reorg:
    """Blocks from ``from_height`` up were replaced; what was seen in them must be re-checked."""

    from_height: int
    depth: int


FollowEvent = NewBlock | Reorg


class DeepReorg(ChainError):
    code = "deep_reorg"


class BlockFollower:
    def __init__(
        self, chain: _Chain, *, start_height: int | None = None, depth: int = DEFAULT_DEPTH
    ) -> None:
        self._chain = chain
        self._depth = depth
        self._seen: deque[BlockInfo] = deque(maxlen=depth)
        self._start = start_height

    @property
    def height(self) -> int | None:
        return self._seen[-1].height if self._seen else None

    def poll(self) -> list[FollowEvent]:
        events: list[FollowEvent] = []
        tip = self._chain.tip()
        if not self._seen:
            first = tip.height if self._start is None else self._start
        else:
            first = self._rewind(events, tip.height)
        last = min(tip.height, first + MAX_BLOCKS_PER_POLL - 1)
        for height in range(first, last + 1):
            block = tip if height == tip.height else self._chain.block_at(height)
            self._seen.append(block)
            events.append(NewBlock(block))
        return events

    def _rewind(self, events: list[FollowEvent], tip_height: int) -> int:
        """Drop remembered blocks the chain no longer has; return the next height to report."""
        dropped = 0
        while self._seen:
            known = self._seen[-1]
            if known.height <= tip_height and self._chain.block_at(known.height).hash == known.hash:
                break
            self._seen.pop()
            dropped += 1
        if dropped:
            if not self._seen:
                raise DeepReorg(f"chain reorganised deeper than the {self._depth} blocks followed")
            events.append(Reorg(from_height=self._seen[-1].height + 1, depth=dropped))
        return self._seen[-1].height + 1
