"""Chain clocks: comparing leg expiries across chains whose clocks differ (issue 17).

Legs expire at a block height (Bitcoin-like chains) or a unix time (Ethereum). A party that sends
a leg must see it expire sufficiently **before** the leg paying it, or the party paying it could
wait, refund the paying leg and still redeem the sent one with the secret. Heights of two chains,
or a height and a time, cannot be compared without each chain's clock: the validators attest each
chain's tip (``ChainTip``, at their confirmation depth) in their vote extensions, and the ledger
keeps per chain the attested height (``clock/<chain>``: the highest height backed by more than two
thirds of the power, with the block time it was attested at).

The conversion is the settlement engine's (docs/swap.md §2), in integers: the chain's tip is
estimated as ``attested + confirmations - 1`` (validators attest ``tip - confirmations + 1``).
That is a lower bound of the real tip (honest validators report only blocks that exist; the
attested height is at most the highest honest report); it may lag by a block found since the
reads, so a reading that needs the tip as high as it may be adds one block. ``n`` blocks last
between ``(100 - tol) %`` and ``(100 + tol) %`` of ``n x block_interval`` seconds. The margin a
sender needs is the engine's participant margin ``notice(own chain) + settle(paying chain)``.

Two readings of one pair of legs:

* **strict** (paying leg as early as it can be, own leg as late): used when judging
  ``leg_not_locked``; a gap below the margin excuses the sender (errs towards the honest sender);
* **lenient** (paying leg as late, own leg as early): used at ``commit_order``; a gap below the
  margin refuses the order (it is wrong whatever the blocks do: errs towards accepting honest
  orders, whose layout left the margin in the strict reading).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kofo.clearance.params import LedgerParams
from kofo.wire.expiry import BlockHeight
from kofo.wire.orders import Leg

CLOCK_PREFIX = b"clock/"


def clock_key(chain: str) -> bytes:
    return CLOCK_PREFIX + chain.encode()


def fresh_tips(
    clocks: Mapping[str, Mapping[str, Any]], at: int, params: LedgerParams
) -> dict[str, int]:
    """The attested heights (``{"height", "time"}`` per chain) still usable at block time
    ``at``: attested within ``clock_max_age``."""
    return {
        chain: int(c["height"])
        for chain, c in clocks.items()
        if at - int(c["time"]) <= params.clock_max_age
    }


def fresh_since(
    clocks: Mapping[str, Mapping[str, Any]], at: int, params: LedgerParams
) -> dict[str, int]:
    """For the fresh clocks (see :func:`fresh_tips`), the block time their height was first
    attested at (``since``; a clock kept before it was recorded: its ``time``)."""
    return {
        chain: int(c.get("since", c["time"]))
        for chain, c in clocks.items()
        if at - int(c["time"]) <= params.clock_max_age
    }


def _span(blocks: int, interval: int, pct: int) -> tuple[int, int]:
    """(least, most) seconds ``blocks`` blocks may take; for a negative count (an expiry already
    past) the same bounds, mirrored."""
    lo = blocks * interval * (100 - pct) // 100
    hi = -((-blocks * interval * (100 + pct)) // 100)  # ceil
    return (min(lo, hi), max(lo, hi))


def seconds_left(
    leg: Leg,
    at: int,
    tips: Mapping[str, int],
    params: LedgerParams,
    *,
    late: bool,
    since: Mapping[str, int] | None = None,
) -> int | None:
    """Seconds from block time ``at`` until ``leg`` expires: the most it may be if ``late``
    (the tip at its lower bound, blocks at their slowest), else the least (the tip a block
    further on, blocks at their fastest); None if its chain has no clock (``tips``: attested
    height per chain). ``since`` (per chain, the block time the attested height was first
    reached): in the early reading, the blocks that may have come since then at the fastest
    rate count too (a kept height unchanged for long, e.g. validators with more than a third
    of the power behind, is no longer "the tip but a block")."""
    if not isinstance(leg.expiry, BlockHeight):
        return leg.expiry.value - at
    cfg = params.chain_clock.get(leg.chain)
    tip = tips.get(leg.chain)
    if cfg is None or tip is None:
        return None
    blocks = leg.expiry.value - (tip + cfg["confirmations"] - 1)
    if not late:
        # a block may have been found since the validators read the tip; more if the kept
        # height was reached long ago (as many as the fastest rate fits in since then)
        extra = 1
        if since is not None and leg.chain in since:
            fast = cfg["block_interval"] * (100 - params.clock_tolerance_pct)
            extra = max(1, max(0, at - since[leg.chain]) * 100 // fast)
        blocks -= extra
    lo, hi = _span(blocks, cfg["block_interval"], params.clock_tolerance_pct)
    return hi if late else lo


def margin(pay: Leg, own: Leg, params: LedgerParams) -> int:
    """The sender's margin (docs/swap.md §2): it sees a reveal on its own leg's chain just
    before that leg expires (``notice``) and buries its redeem of the paying leg (``settle``)."""
    own_cfg = params.chain_clock.get(own.chain, {})
    pay_cfg = params.chain_clock.get(pay.chain, {})
    return own_cfg.get("notice", 0) + pay_cfg.get("settle", 0)


def expiry_gap(
    pay: Leg,
    own: Leg,
    at: int,
    tips: Mapping[str, int],
    params: LedgerParams,
    *,
    strict: bool,
    since: Mapping[str, int] | None = None,
) -> int | None:
    """Seconds by which ``pay`` (the leg paying ``own``'s sender) expires after ``own``, in the
    strict reading (pay as early, own as late as they may) or the lenient one; None when a chain
    needed has no clock. Both on one height chain: their heights compare directly."""
    if (
        isinstance(pay.expiry, BlockHeight)
        and isinstance(own.expiry, BlockHeight)
        and pay.chain == own.chain
    ):
        cfg = params.chain_clock.get(pay.chain)
        if cfg is None:
            return None
        lo, hi = _span(
            pay.expiry.value - own.expiry.value, cfg["block_interval"], params.clock_tolerance_pct
        )
        return lo if strict else hi
    pay_left = seconds_left(pay, at, tips, params, late=not strict, since=since)
    own_left = seconds_left(own, at, tips, params, late=strict, since=since)
    if pay_left is None or own_left is None:
        return None
    return pay_left - own_left


def crosses_clocks(pay: Leg, own: Leg) -> bool:
    """Whether the pair needs a clock: any height expiry (two unix expiries are ordered exactly
    by ``expiry_time``, ``min_expiry_gap``)."""
    return isinstance(pay.expiry, BlockHeight) or isinstance(own.expiry, BlockHeight)
