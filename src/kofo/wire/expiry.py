"""Absolute expiries and chain clocks, with their unit in their type.

They live in ``wire`` because every layer speaks them: HTLC terms (settlement), settlement orders
(clearance) and routes (exchange).
"""

from __future__ import annotations

from dataclasses import dataclass

from kofo.errors import InvalidInput


@dataclass(frozen=True, slots=True, order=True)
class BlockHeight:
    """An absolute expiry or chain time counted in blocks."""

    value: int

    def __post_init__(self) -> None:
        _check_nonneg("block height", self.value)

    def __str__(self) -> str:
        return f"height {self.value}"


@dataclass(frozen=True, slots=True, order=True)
class UnixTime:
    """An absolute expiry or chain time in seconds since the epoch (block timestamp / MTP)."""

    value: int

    def __post_init__(self) -> None:
        _check_nonneg("unix time", self.value)

    def __str__(self) -> str:
        return f"unix {self.value}"


Expiry = BlockHeight | UnixTime
"""When a refund becomes possible. Its unit is in its type: never compare across units."""


def _check_nonneg(what: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidInput(f"{what} must be a non-negative integer, got {value!r}")
