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

from dataclasses import dataclass

from kofo.wire.envelope import BadMessage
from kofo.wire.exchange import Claim, Quote
from kofo.wire.orders import (
    FeeQuote,
    Leg,
    OrderKind,
    QuoteRole,
    SettlementOrder,
    derive_order_id,
    expiry_from_map,
    with_derived_id,
)

LOCK_WINDOW_S = 600
"""The initiator must lock within ten minutes of the order, the provider ten minutes after that:
enough for a Bitcoin block on average plus propagation, short enough that a quote's price is
still meaningful when the funds are locked."""

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


def quote_ref(fulfil_id: bytes) -> bytes:
    """The 16-byte ``quote_id`` the ledger uses for a fulfil (a prefix of its hash)."""
    return fulfil_id[:16]


@dataclass(frozen=True, slots=True)
class RouteParty:
    node_id: bytes
    addresses: dict[str, str]


def build_settlement_order(
    *,
    claim: Claim,
    quote: Quote,
    initiator: RouteParty,
    relays: list[bytes],
    provider: RouteParty,
    payment_hash: bytes,
    now_s: int,
    protocol_fee_bps: int = 0,
) -> SettlementOrder:
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
    short = now_s + FIRST_EXPIRY_MARGIN_S
    long = short + LEG_EXPIRY_STEP_S
    legs = (
        Leg(
            chain=have_chain,
            token=have_token,
            sender=initiator.node_id,
            recipient=provider.node_id,
            sender_address=initiator.addresses[have_chain],
            recipient_address=provider.addresses[have_chain],
            amount=quote.amount_in,
            expiry=expiry_from_map({"unit": "unix", "value": long}, "leg.expiry"),
            expiry_time=long,
            lock_by=now_s + LOCK_WINDOW_S,
        ),
        Leg(
            chain=want_chain,
            token=want_token,
            sender=provider.node_id,
            recipient=initiator.node_id,
            sender_address=provider.addresses[want_chain],
            recipient_address=initiator.addresses[want_chain],
            amount=quote.delivered,
            expiry=expiry_from_map({"unit": "unix", "value": short}, "leg.expiry"),
            expiry_time=short,
            lock_by=now_s + 2 * LOCK_WINDOW_S,
        ),
    )
    ref = quote_ref(quote.fulfil_id)
    quotes = (
        *(FeeQuote(r, QuoteRole.RELAY, ref) for r in relays),
        FeeQuote(provider.node_id, QuoteRole.PROVIDER, ref),
    )
    # The ledger requires the id derived from the order's content (a copied id cannot be
    # squatted by another order); the claim and fulfil are bound through the quote refs.
    return with_derived_id(
        SettlementOrder(
            order_id=bytes(16),
            kind=OrderKind.ROUTED,
            payment_hash=payment_hash,
            legs=legs,
            relays=tuple(relays),
            quotes=quotes,
            protocol_fee_bps=protocol_fee_bps,
            protocol_fee=protocol_fee(quote.amount_in, protocol_fee_bps),
        )
    )


def check_order(
    order: SettlementOrder,
    *,
    me: bytes,
    fulfil_id: bytes,
    have: str,
    want: str,
    amount_in: int,
    max_payout: int,
    provider: bool,
    now_s: int,
    max_protocol_fee_bps: int,
) -> None:
    """What a party checks before co-signing: the order is for this claim and fulfil, this
    node is in it in the right role, its protocol fee follows the ledger's rule, and (for the
    provider) the legs match its own quote. A provider passes the fee rate it quoted with as
    ``max_protocol_fee_bps``: a higher rate would take more of its input than it priced in."""
    if order.order_id != derive_order_id(order):
        raise BadMessage("order: order_id is not derived from the order's content")
    if order.kind is not OrderKind.ROUTED or len(order.legs) != 2:
        raise BadMessage("order: a routed order from a claim has exactly two legs")
    if order.protocol_fee_bps > max_protocol_fee_bps:
        raise BadMessage(f"order: protocol_fee_bps {order.protocol_fee_bps} is above the limit")
    out, back = order.legs
    if order.protocol_fee != protocol_fee(out.amount, order.protocol_fee_bps):
        raise BadMessage(
            f"order: protocol_fee {order.protocol_fee} does not follow the rule "
            f"({out.amount} * {order.protocol_fee_bps} // {BPS})"
        )
    if out.asset != have or back.asset != want:
        raise BadMessage(f"order: legs move {out.asset}/{back.asset}, claim was {have}/{want}")
    if out.sender != back.recipient or out.recipient != back.sender:
        raise BadMessage("order: the two legs are not a cycle")
    if not back.expiry_time < out.expiry_time or back.expiry_time < now_s + LEG_EXPIRY_STEP_S:
        raise BadMessage("order: the provider's leg must expire first, and not too soon")
    ref = quote_ref(fulfil_id)
    if provider:
        if out.recipient != me:
            raise BadMessage("order: this node is not the provider")
        if out.amount != amount_in or back.amount > max_payout:
            raise BadMessage(
                f"order: legs {out.amount}/{back.amount} differ from the quote "
                f"{amount_in}/{max_payout}"
            )
        roles = [(q.node, q.role) for q in order.quotes if q.quote_id == ref]
        if (me, QuoteRole.PROVIDER) not in roles:
            raise BadMessage("order: the provider's quote is not referenced")
    else:
        if me not in order.relays:
            raise BadMessage("order: this node is not among the relays")
        if out.amount != amount_in:
            raise BadMessage(f"order: leg amount {out.amount} differs from the fulfil {amount_in}")
        if not any(
            q.node == me and q.role is QuoteRole.RELAY and q.quote_id == ref for q in order.quotes
        ):
            raise BadMessage("order: this relay's fee quote is missing")
