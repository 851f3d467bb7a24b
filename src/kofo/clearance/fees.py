"""The protocol fee and how it is shared ("according to effort").

For a routed order with notional ``N`` (the first leg's amount, in its base units):

1. ``fee = N * protocol_fee_bps // 10_000`` — floored, so rounding never charges the payer more
   than the published rate.
2. ``foundation = fee * foundation_bps // 10_000`` (10 % by default); the rest, ``carriers``,
   goes to the nodes that carried the claim and served the quote.
3. Relays (nodes that forwarded the claim and the fulfil but hold no leg) share a fixed part,
   ``relay_pool = carriers * relay_pool_bps // 10_000`` (30 % by default), equally; forwarding
   costs every relay the same effort whatever the trade size.
4. Providers (the intermediaries on the route, who put up liquidity and bear the lock-up risk)
   take the rest, equally.
5. Rounding: every division floors. What the floors leave over (the relay pool's remainder
   after the equal split, the providers' remainder) goes to the **first provider** in route
   order — the node that served the quote the initiator took. With no relays the relay pool is
   not taken out at all. So the shares always sum to exactly ``fee`` and none is negative.

Direct two-party orders pay no protocol fee.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from kofo.errors import InvalidInput

BPS = 10_000


@dataclass(frozen=True, slots=True)
class FeeSplit:
    fee: int
    foundation: int
    shares: tuple[tuple[bytes, int], ...]
    """(node id, amount) for every relay and provider, relays first, in the order given."""

    def total(self) -> int:
        return self.foundation + sum(amount for _, amount in self.shares)


def protocol_fee(notional: int, fee_bps: int) -> int:
    if notional < 0 or not 0 <= fee_bps <= BPS:
        raise InvalidInput(f"notional {notional} / fee_bps {fee_bps} out of range")
    return notional * fee_bps // BPS


def split_fee(
    fee: int,
    relays: Sequence[bytes],
    providers: Sequence[bytes],
    *,
    foundation_bps: int,
    relay_pool_bps: int,
) -> FeeSplit:
    """Split ``fee`` by the rule in the module docstring."""
    if fee < 0:
        raise InvalidInput(f"fee must not be negative, got {fee}")
    if not providers:
        raise InvalidInput("a routed order needs at least one provider")
    for name, bps in (("foundation_bps", foundation_bps), ("relay_pool_bps", relay_pool_bps)):
        if not 0 <= bps <= BPS:
            raise InvalidInput(f"{name} must be within 0..{BPS}, got {bps}")
    foundation = fee * foundation_bps // BPS
    carriers = fee - foundation
    relay_each = 0
    if relays:
        relay_each = carriers * relay_pool_bps // BPS // len(relays)
    provider_part = carriers - relay_each * len(relays)
    provider_each = provider_part // len(providers)
    dust = provider_part - provider_each * len(providers)
    shares: list[tuple[bytes, int]] = [(r, relay_each) for r in relays]
    shares += [(p, provider_each + (dust if i == 0 else 0)) for i, p in enumerate(providers)]
    return FeeSplit(fee, foundation, tuple(shares))
