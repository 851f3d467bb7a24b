"""Swap terms and the safety margins that make them safe to accept.

A swap has two legs. The *initiator* (holder of the secret) locks the **initiator leg** on chain 1,
payable to the participant, refundable at ``T_A``; the *participant* locks the **participant leg**
on chain 2, payable to the initiator, refundable at ``T_B``. Every deadline is an absolute value
on the chain it concerns, in that chain's own unit (:class:`BlockHeight` or :class:`UnixTime`):
no deadline is ever checked against a local wall clock.

The margins are derived the way Lightning derives ``cltv_expiry_delta``: for each chain,

* ``notice(c)`` — seconds until our monitor has seen a new block of ``c`` (poll interval plus
  propagation);
* ``settle(c)`` — seconds from broadcasting a transaction on ``c`` until it is buried
  ``confirmations`` deep: ``(inclusion_blocks + confirmations) * block_interval``, where
  ``inclusion_blocks`` is how long a transaction may wait at our fee level (fee bumps included)
  and ``confirmations`` is the reorg depth we refuse to trust below;
* clock uncertainty — an Ethereum block timestamp may lead or lag wall time by ``clock_skew``
  seconds; on a height chain blocks may come faster or slower than nominal, so ``n`` blocks last
  between ``(1 - rate_tolerance)`` and ``(1 + rate_tolerance)`` times ``n * block_interval``.

Laid out on one time line from the proposal (``t = 0``; see ``docs/swap.md`` for the drawing):

====================  ==========================================================================
deadline              reason
====================  ==========================================================================
initiator_lock_by     ``accept_window``: the participant has that long to answer and the
                      initiator to sign its lock; no initiator lock is signed after it.
participant_lock_by   ``+ settle(c1) + notice(c1)``: the initiator's lock is buried and seen.
initiator_redeem_by   ``+ settle(c2) + notice(c2)``: the participant's lock is buried and seen.
                      The initiator never reveals the secret after it.
T_B                   ``+ settle(c2)``: a redeem sent at ``initiator_redeem_by`` is buried before
                      the participant can refund (else it could take both legs).
T_A                   ``+ notice(c2) + settle(c1)``: the participant sees a reveal made just
                      before ``T_B`` and buries its own redeem on chain 1 before the initiator can
                      refund. This gap is the participant's *margin*; it refuses less.
====================  ==========================================================================
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

from kofo.errors import KofoError
from kofo.settlement.chain import BlockHeight, Expiry, UnixTime
from kofo.wire.terms import Leg, SwapTerms

__all__ = [
    "ACCEPT_WINDOW_SECONDS",
    "BITCOIN",
    "DEFAULT_POLICIES",
    "ETHEREUM",
    "LITECOIN",
    "AcceptPolicy",
    "Asset",
    "ChainPolicy",
    "Leg",
    "Offer",
    "SwapTerms",
    "TermsRefused",
    "accept_offers",
    "check_terms_as_initiator",
    "check_terms_as_participant",
    "deny_all",
    "devnet_policy",
    "participant_margin",
    "propose_terms",
]


class TermsRefused(KofoError):
    """Terms that would leave this node less than its safety margin (or break its policy)."""

    code = "terms_refused"


@dataclass(frozen=True, slots=True)
class ChainPolicy:
    """What this node assumes about one chain, in seconds and blocks (see module docstring)."""

    chain: str
    height_clock: bool
    """True when the chain's HTLC expiries are block heights (Bitcoin-like), False for unix time."""
    block_interval: int
    confirmations: int
    notice_seconds: int
    inclusion_blocks: int
    clock_skew: int = 0
    rate_tolerance_pct: int = 0
    max_lock_seconds: int = 7 * 24 * 3600
    """Longest this node lets its own funds sit in an HTLC (refuses a longer expiry: hostage)."""
    bump_after_blocks: int | None = None
    """Blocks our redeem or refund may wait unconfirmed before its fee is raised (a replacement,
    or a child paying for it; again after as many more); None: never bumped on this chain.
    Within ``inclusion_blocks``, which is what the margins allow for inclusion, bumps
    included."""
    bump_locks: bool = False
    """Whether our lock, too, gets a child paying for it after ``bump_after_blocks`` (Bitcoin-
    like chains: the child spends the lock's change, so the HTLC's outpoint never changes)."""

    def settle_seconds(self) -> int:
        return (self.inclusion_blocks + self.confirmations) * self.block_interval

    def to_units(self, seconds: int) -> int:
        """Chain-clock units that surely take at least ``seconds`` of wall time (rounded up)."""
        if seconds <= 0:
            return 0
        if not self.height_clock:
            return seconds + 2 * self.clock_skew
        # Blocks may come (1 - tolerance) faster than nominal: count more of them.
        fast = self.block_interval * (100 - self.rate_tolerance_pct)
        return math.ceil(seconds * 100 / fast)

    def early_seconds(self, units: int) -> int:
        """The least wall time ``units`` of this chain's clock can take."""
        if units <= 0:
            return units
        if not self.height_clock:
            return max(0, units - 2 * self.clock_skew)
        return units * self.block_interval * (100 - self.rate_tolerance_pct) // 100

    def late_seconds(self, units: int) -> int:
        """The most wall time ``units`` of this chain's clock can take."""
        if units <= 0:
            return units
        if not self.height_clock:
            return units + 2 * self.clock_skew
        return math.ceil(units * self.block_interval * (100 + self.rate_tolerance_pct) / 100)

    def expiry(self, value: int) -> Expiry:
        return BlockHeight(value) if self.height_clock else UnixTime(value)


# Production defaults. Each number is what the chain gives us, not a guess about the peer.
BITCOIN = ChainPolicy(
    chain="btc",
    height_clock=True,
    block_interval=600,  # the protocol's target
    confirmations=6,  # no Bitcoin reorg deeper than a few blocks since 2013; 6 is the custom
    notice_seconds=120,  # two polls of a minute each (one may straddle a block)
    inclusion_blocks=6,  # a fee estimate for "within 6 blocks", then one fee bump
    bump_after_blocks=3,  # the bump: half-way through the inclusion allowance
    bump_locks=True,
    # 12 blocks at 600 s arrive in under 60 % of the nominal time with probability ~2 %
    # (Poisson), so margins counted in blocks assume blocks 40 % faster or slower than nominal.
    rate_tolerance_pct=40,
    max_lock_seconds=3 * 24 * 3600,
)
LITECOIN = replace(
    BITCOIN,
    chain="ltc",
    block_interval=150,
    confirmations=12,  # 4x faster blocks, shallower work per block: same wall-clock depth x2
    notice_seconds=60,
    # Same bump wait; Litecoin Core relays no replacement by default (-mempoolreplacement=0),
    # so the adapter bumps with a child paying for the stuck spend (CPFP) instead.
)
ETHEREUM = ChainPolicy(
    chain="eth",
    height_clock=False,
    block_interval=12,  # post-merge slot time
    confirmations=64,  # two epochs: finalised, cannot be reorganised without slashing
    notice_seconds=60,
    inclusion_blocks=25,  # 5 minutes at our fee level; EIP-1559 base fee doubles in ~6 blocks
    clock_skew=15,  # consensus rejects blocks >15 s in the future; proposers may also lag
    max_lock_seconds=3 * 24 * 3600,
    # maxFeePerGas is twice the base fee at signing, includable through six full blocks of
    # base-fee rises; a spend still out after 10 blocks (2 minutes) is re-signed higher. A
    # lock is not bumped: a replacement would change the lock's transaction (and an ERC-20
    # lock waits behind its approve); a lock that misses its deadline only aborts the swap.
    bump_after_blocks=10,
)

DEFAULT_POLICIES: dict[str, ChainPolicy] = {p.chain: p for p in (BITCOIN, LITECOIN, ETHEREUM)}


def devnet_policy(chain: str, *, height_clock: bool) -> ChainPolicy:
    """Policy for embedded/dev chains, where blocks come on demand and never reorganise by
    themselves: one confirmation, a one-unit clock, margins small enough that tests move time
    by a few blocks or seconds."""
    return ChainPolicy(
        chain=chain,
        height_clock=height_clock,
        block_interval=1,
        confirmations=1,
        notice_seconds=2,
        inclusion_blocks=2,
        max_lock_seconds=24 * 3600,
        bump_after_blocks=1 if height_clock else None,
        bump_locks=height_clock,
    )


ACCEPT_WINDOW_SECONDS = 300
"""Time the participant has to answer a proposal and the initiator to sign its lock: a network
round trip plus the participant's checks, with room for a restart of either node."""


def _offset(now: Mapping[str, Expiry], chain: str, target: Expiry) -> int:
    current = now[chain]
    if type(current) is not type(target):
        raise TermsRefused(
            f"{chain} deadline {target} is not in the chain's unit ({current})",
            code="terms_expiry_unit",
        )
    return target.value - current.value


def propose_terms(
    *,
    swap_id: bytes,
    payment_hash: bytes,
    initiator_leg: Leg,
    participant_leg: Leg,
    policies: Mapping[str, ChainPolicy],
    now: Mapping[str, Expiry],
    accept_window: int = ACCEPT_WINDOW_SECONDS,
    initiator_node: bytes = b"",
    participant_node: bytes = b"",
) -> SwapTerms:
    """Lay the deadlines out as the module docstring derives them, from the chains' clocks now.
    The legs' ``expiry`` fields are replaced; their ``confirmations`` come from the policies."""
    p1 = policies[initiator_leg.chain]
    p2 = policies[participant_leg.chain]
    n1, n2 = now[initiator_leg.chain].value, now[participant_leg.chain].value
    t = accept_window
    lock_a = t
    t += p1.settle_seconds() + p1.notice_seconds
    lock_b = t
    t += p2.settle_seconds() + p2.notice_seconds
    redeem_a = t
    t += p2.settle_seconds()
    t_b = t
    # T_A is placed so that the participant's own check (early(T_A) - late(T_B) >= gap) holds.
    t_b_units = p2.to_units(t_b)
    gap = p2.notice_seconds + p1.settle_seconds()
    t_a_seconds = p2.late_seconds(t_b_units) + gap
    t_a_units = p1.to_units(t_a_seconds)
    while p1.early_seconds(t_a_units) < t_a_seconds:
        t_a_units += 1
    return SwapTerms(
        swap_id=swap_id,
        payment_hash=payment_hash,
        initiator_leg=replace(
            initiator_leg, expiry=p1.expiry(n1 + t_a_units), confirmations=p1.confirmations
        ),
        participant_leg=replace(
            participant_leg, expiry=p2.expiry(n2 + t_b_units), confirmations=p2.confirmations
        ),
        initiator_lock_by=p1.expiry(n1 + p1.to_units(lock_a)),
        participant_lock_by=p2.expiry(n2 + p2.to_units(lock_b)),
        initiator_redeem_by=p2.expiry(n2 + p2.to_units(redeem_a)),
        initiator_node=initiator_node,
        participant_node=participant_node,
    )


def participant_margin(policies: Mapping[str, ChainPolicy], terms: SwapTerms) -> int:
    """Seconds the participant needs between ``T_B`` and ``T_A``: see a reveal on chain 2, bury
    its own redeem on chain 1."""
    p1 = policies[terms.initiator_leg.chain]
    p2 = policies[terms.participant_leg.chain]
    return p2.notice_seconds + p1.settle_seconds()


def check_terms_as_participant(
    terms: SwapTerms,
    policies: Mapping[str, ChainPolicy],
    now: Mapping[str, Expiry],
    *,
    my_address: Mapping[str, str],
) -> None:
    """Raise :class:`TermsRefused` (with a code per reason) unless accepting ``terms`` is safe for
    the participant. ``my_address[chain]`` is this node's identity on each chain."""
    a, b = terms.initiator_leg, terms.participant_leg
    for leg in (a, b):
        if leg.chain not in policies or leg.chain not in now:
            raise TermsRefused(f"chain {leg.chain!r} is not served here", code="terms_chain")
    p1, p2 = policies[a.chain], policies[b.chain]
    if b.sender != my_address.get(b.chain):
        raise TermsRefused(
            f"participant_leg.sender {b.sender} is not this node's address",
            code="terms_sender",
        )
    if a.recipient != my_address.get(a.chain):
        raise TermsRefused(
            f"initiator_leg.recipient {a.recipient} is not this node's address",
            code="terms_recipient",
        )
    if a.confirmations < p1.confirmations:
        raise TermsRefused(
            f"initiator_leg.confirmations {a.confirmations} is below this node's "
            f"{p1.confirmations} for {a.chain}",
            code="terms_confirmations",
        )
    if b.confirmations < p2.confirmations:
        raise TermsRefused(
            f"participant_leg.confirmations {b.confirmations} is below {p2.confirmations}",
            code="terms_confirmations",
        )
    off_ta = _offset(now, a.chain, a.expiry)
    off_tb = _offset(now, b.chain, b.expiry)
    off_lock_a = _offset(now, a.chain, terms.initiator_lock_by)
    off_lock_b = _offset(now, b.chain, terms.participant_lock_by)
    off_redeem_a = _offset(now, b.chain, terms.initiator_redeem_by)
    if off_lock_b <= 0:
        raise TermsRefused(
            f"participant_lock_by {terms.participant_lock_by} has already passed",
            code="terms_deadline_passed",
        )
    if not off_lock_a <= off_ta or not off_lock_b <= off_redeem_a <= off_tb:
        raise TermsRefused(
            "deadlines out of order: need initiator_lock_by <= T_A and "
            "participant_lock_by <= initiator_redeem_by <= T_B",
            code="terms_deadline_order",
        )
    # Each depth asked must be reachable before the deadline that counts on it: a lock that
    # can never count as buried leaves the swap open for ever (and, for our own lock, kept
    # it from ever counting as locked).
    for leg, policy, span, by in (
        (a, p1, p2.early_seconds(off_lock_b), "participant_lock_by"),
        (b, p2, p2.early_seconds(off_redeem_a - off_lock_b), "initiator_redeem_by"),
    ):
        if leg.confirmations * policy.block_interval > span:
            raise TermsRefused(
                f"{leg.chain} leg asks {leg.confirmations} confirmations; at most {span} s "
                f"({span // policy.block_interval} blocks) are left for them before {by}",
                code="terms_confirmations",
            )
    if p2.late_seconds(off_tb) > p2.max_lock_seconds:
        raise TermsRefused(
            f"participant_leg.expiry {b.expiry} would hold this node's funds for up to "
            f"{p2.late_seconds(off_tb)} s, policy allows {p2.max_lock_seconds} s",
            code="terms_expiry_too_long",
        )
    gap = p1.early_seconds(off_ta) - p2.late_seconds(off_tb)
    need = participant_margin(policies, terms)
    if gap < need:
        raise TermsRefused(
            f"initiator_leg.expiry {a.expiry} leaves {gap} s after participant_leg.expiry "
            f"{b.expiry}; this node needs {need} s to see the secret and redeem",
            code="terms_margin_too_small",
        )


def check_terms_as_initiator(
    terms: SwapTerms,
    policies: Mapping[str, ChainPolicy],
    now: Mapping[str, Expiry],
) -> None:
    """The initiator's own sanity check before it signs a lock: its funds are not held longer
    than policy, and a reveal at ``initiator_redeem_by`` is buried before ``T_B``."""
    a, b = terms.initiator_leg, terms.participant_leg
    p1, p2 = policies[a.chain], policies[b.chain]
    off_ta = _offset(now, a.chain, a.expiry)
    if p1.late_seconds(off_ta) > p1.max_lock_seconds:
        raise TermsRefused(
            f"initiator_leg.expiry {a.expiry} exceeds the {p1.max_lock_seconds} s lock policy",
            code="terms_expiry_too_long",
        )
    room = b.expiry.value - terms.initiator_redeem_by.value
    if p2.early_seconds(room) < p2.settle_seconds():
        raise TermsRefused(
            f"initiator_redeem_by {terms.initiator_redeem_by} leaves {room} units before "
            f"participant_leg.expiry {b.expiry}; a redeem needs {p2.settle_seconds()} s to bury",
            code="terms_margin_too_small",
        )


AcceptPolicy = Callable[[SwapTerms], None]
"""Decides whether this node accepts a proposal it received: returns if it does, raises
:class:`TermsRefused` (with a code) if not. The engine asks it after its own safety checks
(margins, deadlines, dust) and before it reserves funds; the node answers proposals from its
own quotes, so a policy compares the terms with what the node offered. The default,
:func:`deny_all`, accepts nothing: an engine refuses every proposal until a policy is
installed."""


def deny_all(terms: SwapTerms) -> None:
    """The default accept policy: nothing was offered, so nothing is accepted."""
    raise TermsRefused(
        f"swap {terms.swap_id.hex()}: this node offered nothing; no accept policy is installed",
        code="terms_not_offered",
    )


Asset = tuple[str, str | None]
"""(chain, token): a chain's native coin when the token is ``None``."""


@dataclass(frozen=True, slots=True)
class Offer:
    """What this node is willing to lock in one swap and what it wants for it.

    It gives up to ``max_gives`` base units of ``gives`` (the participant leg's asset) per swap,
    for at least ``price_num / price_den`` base units of ``gets`` (the initiator leg's asset)
    per base unit given; integers only, so a price is compared exactly:
    ``gets_amount * price_den >= gives_amount * price_num``."""

    gives: Asset
    gets: Asset
    max_gives: int
    price_num: int
    price_den: int = 1

    def __post_init__(self) -> None:
        if self.max_gives <= 0 or self.price_num < 0 or self.price_den <= 0:
            raise ValueError(
                f"offer needs max_gives > 0, price_num >= 0, price_den > 0; got {self.max_gives}, "
                f"{self.price_num}, {self.price_den}"
            )

    def allows(self, terms: SwapTerms) -> bool:
        give, get = terms.participant_leg, terms.initiator_leg
        return (
            (give.chain, give.token) == self.gives
            and (get.chain, get.token) == self.gets
            and 0 < give.amount <= self.max_gives
            and get.amount * self.price_den >= give.amount * self.price_num
        )


def accept_offers(*offers: Offer) -> AcceptPolicy:
    """An accept policy allowing exactly the terms one of ``offers`` allows: the asset pair,
    at most the offered amount, at least the offered price."""

    def policy(terms: SwapTerms) -> None:
        if any(offer.allows(terms) for offer in offers):
            return
        give, get = terms.participant_leg, terms.initiator_leg
        raise TermsRefused(
            f"no offer of this node gives {give.amount} of {give.chain}:{give.token or 'native'} "
            f"for {get.amount} of {get.chain}:{get.token or 'native'}",
            code="terms_not_offered",
        )

    return policy
