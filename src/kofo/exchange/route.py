"""From the chosen quote to the :class:`~kofo.wire.orders.SettlementOrder` its route co-signs.

The filler of the quote is the route's provider: the initiator locks ``amount_in`` of ``have``
for it, and it locks the delivered amount of ``want`` for the initiator (the two-leg cycle of
the settlement layer). The hops that carried the claim and the fulfil hold no leg: they are the
order's *relays*, paid by the ledger's protocol-fee split, and each is named with a
:class:`~kofo.wire.orders.FeeQuote` that references the fulfil it carried.

Fees follow the ledger's rule (docs/clearance.md, "Fees"): the protocol fee is
``legs[0].amount * protocol_fee_bps // 10_000``, charged in the first leg, which the provider
receives; the ledger shares it out (foundation, relays, providers). So relays take nothing from
the delivered amount (a hop fee would have no leg to be paid on), and a provider quotes its
output on the input it keeps after the fee: :func:`net_of_protocol_fee`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from kofo.errors import KofoError
from kofo.wire.envelope import BadMessage, BadSignature, verify_ed25519
from kofo.wire.exchange import Claim, Join, join_message, quote_id_for
from kofo.wire.expiry import BlockHeight, Expiry, UnixTime
from kofo.wire.orders import (
    FeeQuote,
    Leg,
    OrderKind,
    QuoteRole,
    SettlementOrder,
    derive_order_id,
    with_derived_id,
)

ExpiryFit = Callable[[str, int, int], Expiry]
"""``(chain, expiry_time, now_s) -> expiry`` in the chain's own unit (a block height for a
Bitcoin-like chain; for a unix-clocked chain ``UnixTime(expiry_time)``): the composer's view
of each chain, applied by the initiator to each leg of the order it builds."""

ExpiryCheck = Callable[[str, Expiry, int, int], None]
"""``(chain, expiry, expiry_time, now_s)``: raises (:class:`OrderPolicy` or another
:class:`~kofo.errors.KofoError`) when a leg's block height is not acceptable to this node's view
of the chain; the provider calls it on each block-height leg before co-signing."""

OrderTimes = tuple[int, int, int, int]
"""``(out lock_by, back lock_by, back expiry_time, out expiry_time)`` of a routed order, unix
seconds: the initiator's lock deadline, the provider's, the provider's leg's expiry (T_B) and
the initiator's leg's expiry (T_A)."""

PlanTimes = Callable[[str, str, int], OrderTimes]
"""``(have_chain, want_chain, now_s) -> OrderTimes``: the initiator's plan of an order's
deadlines from its own engine's margins for the chain pair (``kofo.node.trades.
plan_order_times``); the first must be ``now_s`` + the network's lock window
(``ExchangeConfig.lock_window_s``)."""

ChainClock = Callable[[str, int, int], bool | None]
"""``(chain, expiry_time, now_s) ->`` True when the chain's HTLCs expire by block height, False
when by unix time, None when this node does not know the chain."""

LOCK_WINDOW_S = 600
"""The initiator must lock within ten minutes of the order, the provider ten minutes after that:
enough for a Bitcoin block on average plus propagation, short enough that a quote's price is
still meaningful when the funds are locked. The production network's value: every co-signer
checks an order against its ``ExchangeConfig.lock_window_s`` (this by default), so a network
agrees on one value; a local devnet (block a second, no reorganisations) uses a shorter one
(``kofo.node.config.Timing``, docs/node.md)."""

LEG_EXPIRY_STEP_S = 3600
"""The provider's leg (paid to the initiator) expires an hour before the initiator's leg: after
the initiator redeems (revealing the preimage) the provider needs time to see it and get its own
redeem confirmed on the other chain (Bitcoin: ~6 blocks) with margin."""

FIRST_EXPIRY_MARGIN_S = 2 * LOCK_WINDOW_S + 3600
"""The shortest expiry lies an hour beyond both lock deadlines, so the initiator has time to
audit the provider's lock and redeem it."""


BPS = 10_000


def protocol_fee(notional: int, fee_bps: int) -> int:
    """The ledger's protocol fee on a routed order's notional (``kofo.clearance.fees``; the
    layers share no code, a test keeps the two equal): floored, never above the rate."""
    return notional * fee_bps // BPS


def net_of_protocol_fee(amount_in: int, amount_out: int, fee_bps: int) -> int:
    """What a provider can deliver for ``amount_in`` when it would deliver ``amount_out`` for
    the whole of it but owes the protocol fee out of it: the output scaled by the share of the
    input it keeps, floored (never more than the provider's own price)."""
    return amount_out * (amount_in - protocol_fee(amount_in, fee_bps)) // amount_in


def split_asset(asset: str) -> tuple[str, str | None]:
    """``"btc"`` -> ``("btc", None)``; ``"eth:0xToken"`` -> ``("eth", "0xToken")``."""
    chain, _, token = asset.partition(":")
    return chain, token or None


MAX_ORDER_HORIZON_S = 3 * 24 * 3600
"""No leg of a routed order may expire more than this after the time it is planned from (the
engines' ``max_lock_seconds``): a co-signer's relay state, its noted contacts and the
provider's liquidity are never held hostage longer, whatever deadlines the initiator plans."""

ORDER_CLOCK_SKEW_S = 60
"""How far the time an order's deadlines are derived from may lie from a co-signer's clock:
the initiator builds the order moments before the parties check it (the settle timeout is
seconds), so a minute absorbs clock drift while a deadline moved by hours or days is refused."""


class OrderPolicy(BadMessage):
    """An order breaks a limit of the refusing party's own (the fee rate it quoted with or
    allows, the time its clock gives): an honest relay before it, with other limits or another
    clock, may have allowed it, so only the initiator that wrote it is to blame."""


@dataclass(frozen=True, slots=True)
class RouteParty:
    node_id: bytes
    addresses: dict[str, str]


def derived_times(now_s: int, lock_window_s: int = LOCK_WINDOW_S) -> OrderTimes:
    """``(out lock_by, back lock_by, back expiry, out expiry)`` of an order built at
    ``now_s`` when the initiator plans nothing of its own (``ExchangeConfig.plan_times`` is
    None: embedded chains and tests). Too short for production Bitcoin-like margins: a node on
    real chains plans per chain pair (``kofo.node.trades.plan_order_times``)."""
    short = now_s + 2 * lock_window_s + FIRST_EXPIRY_MARGIN_S - 2 * LOCK_WINDOW_S
    return now_s + lock_window_s, now_s + 2 * lock_window_s, short, short + LEG_EXPIRY_STEP_S


def order_times_problem(
    times: OrderTimes, t: int, lock_window_s: int = LOCK_WINDOW_S
) -> str | None:
    """What is wrong with an order's deadlines planned from time ``t`` (None: nothing). The
    protocol's only rules on them (link protocol v4), the same for every co-signer: the
    initiator locks within the network's lock window (``lock_window_s``, :data:`LOCK_WINDOW_S`
    on the production network) of ``t``, the provider after it, its leg
    expires before the initiator's, and nothing expires beyond :data:`MAX_ORDER_HORIZON_S`.
    Whether the gaps are safe for the provider is the provider's own judgement
    (``ExchangeConfig.order_guard``)."""
    out_lock, back_lock, back_expiry, out_expiry = times
    if out_lock != t + lock_window_s:
        return f"legs[0].lock_by {out_lock} is not {lock_window_s}s after the order's time {t}"
    if not out_lock < back_lock < back_expiry < out_expiry:
        return (
            f"deadlines out of order: need legs[0].lock_by {out_lock} < legs[1].lock_by "
            f"{back_lock} < legs[1].expiry_time {back_expiry} < legs[0].expiry_time {out_expiry}"
        )
    if out_expiry - t > MAX_ORDER_HORIZON_S:
        return (
            f"legs[0].expiry_time {out_expiry} is {out_expiry - t}s after the order's time, "
            f"beyond the {MAX_ORDER_HORIZON_S}s horizon"
        )
    return None


def build_settlement_order(
    *,
    claim: Claim,
    claim_id: bytes,
    fulfil_id: bytes,
    amount_in: int,
    delivered: int,
    initiator: RouteParty,
    relays: list[tuple[int, bytes]],
    provider: RouteParty,
    provider_position: int,
    payment_hash: bytes,
    now_s: int,
    protocol_fee_bps: int = 0,
    expiry_fit: ExpiryFit | None = None,
    times: OrderTimes | None = None,
    lock_window_s: int = LOCK_WINDOW_S,
) -> SettlementOrder:
    """The order for a chosen quote. ``relays`` are ``(position,
    node id)`` of the hops that carried the claim (the initiator's own dummy hops excluded).

    The deadlines are ``times`` (the initiator's plan for the chain pair, checked by
    :func:`order_times_problem`), else :func:`derived_times` of ``now_s``. Each leg's
    ``expiry`` is its ``expiry_time``, or with ``expiry_fit`` what the fit gives in the chain's
    unit (a block height on a Bitcoin-like chain); a unix ``expiry`` must equal
    ``expiry_time``."""
    have_chain, have_token = split_asset(claim.have)
    want_chain, want_token = split_asset(claim.want)
    for who, party, chain in (
        ("initiator", initiator, have_chain),
        ("initiator", initiator, want_chain),
        ("provider", provider, have_chain),
        ("provider", provider, want_chain),
    ):
        if chain not in party.addresses:
            raise BadMessage(f"order: {who} has no address on chain {chain!r}")
    if times is None:
        times = derived_times(now_s, lock_window_s)
    problem = order_times_problem(times, now_s, lock_window_s)
    if problem is not None:
        raise KofoError(f"order: {problem}", code="invalid_input")
    out_lock, back_lock, short, long = times

    def expiry(chain: str, expiry_time: int) -> Expiry:
        if expiry_fit is None:
            return UnixTime(expiry_time)
        got = expiry_fit(chain, expiry_time, now_s)
        if isinstance(got, BlockHeight) or got == UnixTime(expiry_time):
            return got
        raise KofoError(
            f"order: the expiry fit gave {got!r} for chain {chain!r}; expected a block height "
            f"or unix {expiry_time}",
            code="invalid_input",
        )

    legs = (
        Leg(
            chain=have_chain,
            token=have_token,
            sender=initiator.node_id,
            recipient=provider.node_id,
            sender_address=initiator.addresses[have_chain],
            recipient_address=provider.addresses[have_chain],
            amount=amount_in,
            expiry=expiry(have_chain, long),
            expiry_time=long,
            lock_by=out_lock,
        ),
        Leg(
            chain=want_chain,
            token=want_token,
            sender=provider.node_id,
            recipient=initiator.node_id,
            sender_address=provider.addresses[want_chain],
            recipient_address=initiator.addresses[want_chain],
            amount=delivered,
            expiry=expiry(want_chain, short),
            expiry_time=short,
            lock_by=back_lock,
        ),
    )
    quotes = (
        *(
            FeeQuote(r, QuoteRole.RELAY, quote_id_for(fulfil_id, pos, r, QuoteRole.RELAY.value))
            for pos, r in relays
        ),
        FeeQuote(
            provider.node_id,
            QuoteRole.PROVIDER,
            quote_id_for(fulfil_id, provider_position, provider.node_id, QuoteRole.PROVIDER.value),
        ),
    )
    # The ledger requires the id derived from the order's content (a copied id cannot be
    # squatted by another order); claim and fulfil are bound through the derived quote ids.
    return with_derived_id(
        SettlementOrder(
            order_id=bytes(16),
            kind=OrderKind.ROUTED,
            payment_hash=payment_hash,
            legs=legs,
            relays=tuple(r for _, r in relays),
            quotes=quotes,
            protocol_fee_bps=protocol_fee_bps,
            protocol_fee=protocol_fee(amount_in, protocol_fee_bps),
        )
    )


@dataclass(frozen=True, slots=True)
class RouteView:
    """What a co-signer knows of the route for itself: the claim, the fulfil it carried or
    made (id, amounts, every path key by position, the filler's key last), its own position
    and node id, and the node ids of its two link neighbours on the route."""

    claim: Claim
    claim_id: bytes
    fulfil_id: bytes
    amount_in: int
    amount_out: int
    keys: list[bytes]  # path key of positions 1..p (index 0 is position 1), p = the filler
    position: int
    me: bytes
    upstream: bytes  # the link the claim came from: node at position - 1, or the initiator
    downstream: bytes | None  # the link the fulfil came from (None for the provider)


def route_owners(view: RouteView, joins: list[Join]) -> list[bytes]:
    """The node id bound to each position 1..p by the joins the initiator forwarded (each
    signed by the position's path key and by the node key): raises unless every position has
    exactly one valid binding."""
    p = len(view.keys)
    if len(joins) != p:
        raise BadMessage(f"order: {len(joins)} joins for a route of {p} positions")
    owners = []
    for i, j in enumerate(joins, start=1):
        if j.position != i:
            raise BadMessage(f"order: join {i} is for position {j.position}")
        data = join_message(
            view.claim_id, view.fulfil_id, i, view.keys[i - 1], j.node_id, j.addresses, j.contact
        )
        if not verify_ed25519(view.keys[i - 1], j.eph_sig, data):
            raise BadSignature(f"order: path key at position {i} did not sign its join")
        if not verify_ed25519(j.node_id, j.node_sig, data):
            raise BadSignature(f"order: node key at position {i} did not sign its join")
        owners.append(j.node_id)
    return owners


def check_order(
    order: SettlementOrder,
    joins: list[Join],
    view: RouteView,
    *,
    provider_addresses: dict[str, str] | None,
    now_s: int,
    max_protocol_fee_bps: int,
    chain_clock: ChainClock | None = None,
    expiry_check: ExpiryCheck | None = None,
    lock_window_s: int = LOCK_WINDOW_S,
) -> None:
    """What a party checks before co-signing: the order equals the one the protocol derives
    from what this party quoted or carried. Only the initiator's own choices are free: the
    payment hash, its addresses and (link protocol v4) the deadlines it planned for the chain
    pair, which must only keep the protocol's order and bounds (:func:`order_times_problem`);
    the time they are planned from (``legs[0].lock_by - lock_window_s``) must lie within
    :data:`ORDER_CLOCK_SKEW_S` of ours. Whether the gaps are safe is the provider's judgement
    (its ``order_guard``); a relay holds no leg. Exactly the hops that carried the claim are the
    relays, each bound to its path key by a join, and this party's link neighbours are the
    nodes next to it on the route (so nobody can add, drop or swap a hop). The provider passes
    its own addresses (the order must pay it there, and take from it only there) and the fee
    rate it quoted with as ``max_protocol_fee_bps``.

    Per-chain expiries (protocol v3): a leg whose ``expiry`` is unix time must equal its
    ``expiry_time``; a leg whose ``expiry`` is a block height is compared on everything else
    (``expiry_time``, ``lock_by``, ...), its height being the initiator's fit of
    ``expiry_time`` to its view of the chain. ``chain_clock`` tells which unit a chain uses
    where this node knows (a height on a unix-clocked chain, or unix time on a height-clocked
    one, is refused); ``expiry_check`` (the provider's) judges each height with this node's
    own view of the chain. A relay without a view accepts any height: it holds no leg, the
    two parties that do each check theirs, and the ledger orders legs by ``expiry_time``."""
    if order.order_id != derive_order_id(order):
        raise BadMessage("order: order_id is not derived from the order's content")
    if order.kind is not OrderKind.ROUTED or len(order.legs) != 2:
        raise BadMessage("order: a routed order from a claim has exactly two legs")
    owners = route_owners(view, joins)
    p = len(owners)
    if owners[view.position - 1] != view.me:
        raise BadMessage(f"order: position {view.position} is not bound to this node")
    initiator = order.legs[0].sender
    # The initiator's own dummy hops (see ExchangeNode.request_quotes) lead the path.
    dummies = 0
    while dummies < p - 1 and owners[dummies] == initiator:
        dummies += 1
    route = [initiator, *owners[dummies:]]
    if len(set(route)) != len(route):
        raise BadMessage("order: a node appears twice on the route")
    left = initiator if view.position == 1 else owners[view.position - 2]
    if left != view.upstream:
        raise BadMessage("order: the hop before this one is not the link the claim came from")
    if view.downstream is not None and owners[view.position] != view.downstream:
        raise BadMessage("order: the hop after this one is not the link the fulfil came from")
    out, back = order.legs
    # Heights are the initiator's fit (checked below against this node's clocks and view):
    # compare the rest of the order with the derivation, as if every expiry were unix time.
    unit_problems: list[str] = []
    heights: list[tuple[str, BlockHeight, int]] = []
    plain = []
    for i, leg in enumerate(order.legs):
        height_clock = (
            None if chain_clock is None else chain_clock(leg.chain, leg.expiry_time, now_s)
        )
        if isinstance(leg.expiry, BlockHeight):
            if height_clock is False:
                unit_problems.append(
                    f"legs[{i}].expiry is {leg.expiry} but chain {leg.chain!r} expires by unix time"
                )
            heights.append((leg.chain, leg.expiry, leg.expiry_time))
            leg = replace(leg, expiry=UnixTime(leg.expiry_time))
        elif height_clock:
            unit_problems.append(
                f"legs[{i}].expiry is {leg.expiry} but chain {leg.chain!r} expires by block height"
            )
        plain.append(leg)
    compared = with_derived_id(replace(order, legs=tuple(plain))) if heights else order
    addresses = joins[-1].addresses if provider_addresses is None else provider_addresses
    provider = RouteParty(owners[-1], addresses)
    have_chain, _ = split_asset(view.claim.have)
    want_chain, _ = split_asset(view.claim.want)
    t = out.lock_by - lock_window_s
    times = (out.lock_by, back.lock_by, back.expiry_time, out.expiry_time)
    problem = order_times_problem(times, t, lock_window_s)
    if problem is not None:  # the same for every co-signer: the upstream forwarded it
        raise BadMessage(f"order: {problem}")
    expected = build_settlement_order(
        claim=view.claim,
        claim_id=view.claim_id,
        fulfil_id=view.fulfil_id,
        amount_in=view.amount_in,
        delivered=view.amount_out,
        initiator=RouteParty(
            initiator, {have_chain: out.sender_address, want_chain: back.recipient_address}
        ),
        relays=[(i, owners[i - 1]) for i in range(dummies + 1, p)],
        provider=provider,
        provider_position=p,
        payment_hash=order.payment_hash,
        now_s=t,
        protocol_fee_bps=order.protocol_fee_bps,
        times=times,
        lock_window_s=lock_window_s,
    )
    if compared != expected:
        diff = _first_difference(compared, expected)
        raise BadMessage(f"order: {diff} differs from what this party quoted or carried")
    # Policy last: a refusal on it does not score a relaying upstream (OrderPolicy), so
    # everything an honest relay checks alike must have passed first.
    if order.protocol_fee_bps > max_protocol_fee_bps:
        raise OrderPolicy(f"order: protocol_fee_bps {order.protocol_fee_bps} is above the limit")
    if abs(t - now_s) > ORDER_CLOCK_SKEW_S:
        raise OrderPolicy(
            f"order: deadlines are planned from time {t}, {t - now_s:+d}s from this node's clock"
        )
    if unit_problems:
        raise OrderPolicy(f"order: {unit_problems[0]}")
    if expiry_check is not None:
        for chain, height, expiry_time in heights:
            try:
                expiry_check(chain, height, expiry_time, now_s)
            except OrderPolicy:
                raise
            except Exception as exc:  # the composer's refusal (or its failure): never signed
                raise OrderPolicy(f"order: {chain} expiry {height}: {exc}") from None


def _first_difference(order: SettlementOrder, expected: SettlementOrder) -> str:
    got, want = order.as_map(), expected.as_map()
    # order_id is derived from every other field: name the field that makes it differ
    for k in sorted(want, key=lambda k: k == "order_id"):
        if k == "legs":
            for i, (a, b) in enumerate(zip(got[k], want[k], strict=False)):
                for f in b:
                    if a.get(f) != b[f]:
                        return f"legs[{i}].{f}"
        elif got.get(k) != want[k]:
            return k
    return "the order"
