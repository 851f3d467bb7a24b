"""Importance: how much the network should trust a node to carry a route (like NEM's PoI).

Integers only, so every validator gets the same number:

``score = max(0, (volume + isqrt(bond)) * success_bps // 10_000 - penalty_points * w)``

* ``volume`` — settled volume in volume units (see ``LedgerParams.volume_units``), decayed with
  a half-life of ``importance_half_life`` blocks: whole half-lives halve it exactly (shift),
  the remaining fraction of a half-life is interpolated linearly between 1 and 1/2. The decay is
  applied whenever a node's stats change and again at query time, so the score is a pure
  function of the committed state and the height — recomputed at every block by definition.
* ``success_bps`` — ``(settled + 1) / (settled + failed + 2)`` in basis points (Laplace's rule:
  a new node starts at 50 %, one lucky trade cannot reach 100 %).
* ``isqrt(bond)`` — bond helps, with diminishing returns, so capital alone cannot buy rank.
* penalties subtract ``penalty_weight`` volume units per penalty point.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from math import isqrt


def decay(value: int, blocks: int, half_life: int) -> int:
    """``value * 2**(-blocks/half_life)``, rounded down, monotone in ``blocks``."""
    if blocks <= 0 or value == 0:
        return value
    halves, rest = divmod(blocks, half_life)
    v = value >> halves if halves < 512 else 0
    return v - v * rest // (2 * half_life)


@dataclass(frozen=True, slots=True)
class NodeStats:
    volume: int
    volume_height: int
    settled: int
    failed: int
    bond: int
    penalty_points: int


def score(stats: NodeStats, height: int, *, half_life: int, penalty_weight: int) -> int:
    volume = decay(stats.volume, height - stats.volume_height, half_life)
    success_bps = (stats.settled + 1) * 10_000 // (stats.settled + stats.failed + 2)
    raw = (volume + isqrt(stats.bond)) * success_bps // 10_000
    return max(0, raw - stats.penalty_points * penalty_weight)


def rank_routes(
    routes: Sequence[Sequence[bytes]], scores: Mapping[bytes, int]
) -> list[tuple[int, int]]:
    """(index, route score) best first. A route is as trustworthy as its weakest node; ties
    keep the caller's order. Unknown nodes score 0."""
    scored = [
        (i, min((scores.get(n, 0) for n in route), default=0)) for i, route in enumerate(routes)
    ]
    return sorted(scored, key=lambda t: (-t[1], t[0]))
