"""The node's public face: what the daemon offers to its API, SDK, CLI and dashboard.

:class:`NodeService` is the one seam between the running daemon (``kofo.node.daemon``, which
implements it) and everything that talks to it (``kofo.node.api`` serves it over REST and
WebSocket; the SDK and ``kofo`` CLI talk to that API). The views are plain frozen dataclasses of
JSON-friendly values: ids, hashes and keys as lower-case hex, amounts as integer base units
(never floats), times as unix seconds (or milliseconds where the name says ``_ms``).

Errors are :class:`~kofo.errors.KofoError` subclasses with stable codes; the API maps them to
RFC 9457 problem details (:data:`NotFound` -> 404, :data:`Conflict` -> 409,
``InvalidInput`` -> 400/422, ``Unavailable`` -> 503).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from kofo.errors import KofoError

# -- errors the service raises (besides InvalidInput and the layers' own) -----------------------


class NotFound(KofoError):
    """No such offer, trade, swap, order (the id is named in the message)."""

    code = "not_found"


class Conflict(KofoError):
    """The request contradicts the object's state (cancel a committed trade, withdraw an
    offer twice)."""

    code = "conflict"


class Unavailable(KofoError):
    """The node cannot serve this now (ledger unreachable, chain down, no peers); retryable."""

    code = "unavailable"
    retryable = True


# -- views ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChainView:
    chain: str  # "btc", "ltc", "eth"
    height: int | None  # None while the chain is unreachable
    error: str = ""


@dataclass(frozen=True, slots=True)
class BondView:
    """The maker's bond (``[bond]``), in wei."""

    configured: int  # [bond] amount; 0: none
    vault: int | None = None  # what the bond vault holds under this node id (None: not read)
    attested: int | None = None  # what the ledger counts (attested less slashes pending)
    min_bond: int = 0  # the ledger's minimum (params); a maker below it does not quote
    quoting: bool = True  # False: offers are not quoted (the bond is not there yet)
    error: str = ""  # why the deposit is not done yet


@dataclass(frozen=True, slots=True)
class NodeInfo:
    name: str
    node_id: str  # hex Ed25519 public key
    version: str
    p2p: str  # host:port this node listens on for peers
    ledger_url: str
    ledger_height: int | None
    ledger_error: str
    chains: tuple[ChainView, ...]
    peers: int
    started_at: int
    addresses: dict[str, str] = field(default_factory=dict)  # chain -> this node's address
    bond: BondView | None = None


@dataclass(frozen=True, slots=True)
class BalanceView:
    asset: str  # "btc", "eth", "eth:0x<token>"
    symbol: str  # "BTC", "ETH", "DUSD"
    decimals: int
    available: int  # base units free to quote or lock
    reserved: int  # base units held by open quotes and open swaps (and their fees)


@dataclass(frozen=True, slots=True)
class OfferSpec:
    """A maker's standing offer: for ``n`` base units of ``buy`` in, the maker pays
    ``n * price_num // price_den - fee`` base units of ``sell`` (``min_in <= n <= max_in``)."""

    buy: str
    sell: str
    price_num: int
    price_den: int
    min_in: int
    max_in: int
    fee: int = 0
    partial: bool = True
    ttl: int = 3_600


@dataclass(frozen=True, slots=True)
class OfferView:
    offer_id: str
    maker: str  # hex node id
    spec: OfferSpec
    expires_at: int
    own: bool


@dataclass(frozen=True, slots=True)
class BookView:
    """The offers this node knows for one direction: makers that pay ``sell`` for ``buy``,
    best price (most ``sell`` per ``buy``) first."""

    buy: str
    sell: str
    offers: tuple[OfferView, ...]


@dataclass(frozen=True, slots=True)
class TradeRequest:
    """A taker's trade: pay ``amount`` base units of ``sell``, receive ``buy``; refuse any quote
    delivering less than ``min_receive``; give up before commit after ``deadline_s`` seconds."""

    sell: str
    amount: int
    buy: str
    min_receive: int = 0
    deadline_s: int = 60
    # How long quotes are collected at most: the taker stops earlier once every maker of its
    # book able to fill the trade has quoted (exchange protocol v6).
    window_s: float = 1.0


@dataclass(frozen=True, slots=True)
class QuoteView:
    quote_id: str  # the fulfil id, hex
    sell: str
    amount_in: int
    buy: str
    receive: int  # delivered to the taker, net of every fee
    hops: int  # route length, never the relays' identities
    valid_until_ms: int


@dataclass(frozen=True, slots=True)
class PhaseView:
    phase: str
    at: float
    detail: dict[str, Any] = field(default_factory=dict)


TRADE_STATES = (
    "quoting",  # claim sent, quotes coming in
    "ordering",  # a quote chosen, the route co-signing the order
    "submitted",  # the co-signed order sent to the ledger
    "committed",  # the ledger committed it (height)
    "settling",  # swap legs in progress
    "redeemed",  # both legs redeemed: done
    "refunded",  # the trade ended with this node's funds back
    "failed",  # ended before anything locked (no quote, route failed, ledger refused, ...)
    "cancelled",  # cancelled by the user before commit
)


@dataclass(frozen=True, slots=True)
class TradeView:
    trade_id: str
    role: str  # "taker" or "maker"
    state: str  # one of TRADE_STATES
    sell: str
    amount: int
    buy: str
    receive: int | None  # the chosen quote's amount, once chosen
    order_id: str | None
    height: int | None  # the ledger height the order committed at
    hops: int | None
    error: str
    created_at: float
    updated_at: float
    phases: tuple[PhaseView, ...] = ()


@dataclass(frozen=True, slots=True)
class SwapEventView:
    state: str
    reason: str
    txid: str
    at: float


@dataclass(frozen=True, slots=True)
class SwapLegView:
    chain: str
    token: str | None
    amount: int
    sender: str
    recipient: str
    expiry: dict[str, Any]  # {"unit": "height"|"unix", "value": n}
    lock_txid: str
    spend_txid: str
    confirmations: int | None
    # the HTLC on its chain (kofo.settlement.chain.HtlcState): "absent", "locked", "redeemed",
    # "refunded"; "" when not known. A spend alone does not say which (a refund spends too).
    state: str = ""


@dataclass(frozen=True, slots=True)
class SwapView:
    swap_id: str
    role: str  # "initiator" or "participant"
    state: str
    legs: tuple[SwapLegView, ...]
    events: tuple[SwapEventView, ...]
    updated_at: float


@dataclass(frozen=True, slots=True)
class LedgerOrderView:
    order_id: str
    status: str
    height: int
    legs: tuple[dict[str, Any], ...]
    outcomes: dict[str, str]  # leg index -> locked / redeemed / refunded


@dataclass(frozen=True, slots=True)
class FeeShareView:
    order_id: str
    role: str  # relay / provider
    asset: str
    amount: int  # decrypted with this node's Paillier key


@dataclass(frozen=True, slots=True)
class FeeWithdrawalView:
    asset: str
    amount: int  # base units withdrawn: the node's whole fee balance in the asset
    payout_address: str


@dataclass(frozen=True, slots=True)
class ImportanceView:
    node_id: str
    importance: int
    points: int
    penalties: int
    bond: int


@dataclass(frozen=True, slots=True)
class EvidenceView:
    order_id: str
    kind: str
    accused: str
    height: int
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PeerView:
    node_id: str
    address: str  # host:port
    inbound: bool
    score: int


@dataclass(frozen=True, slots=True)
class Event:
    """One entry of the node's event stream, persisted (``kofo.node.events.EventLog``) so a
    client that reconnects with its last ``seq`` resumes without loss or repetition."""

    seq: int
    kind: str  # "trade", "swap", "order", "offer", "ledger", "node"
    at: float
    data: dict[str, Any]


# -- the service ---------------------------------------------------------------------------------


class NodeService(Protocol):
    """What the running node offers. Every method is safe to call concurrently from the API's
    event loop; long work (chain and ledger reads) happens off the loop."""

    async def info(self) -> NodeInfo: ...

    async def balances(self) -> list[BalanceView]: ...

    async def offers(self, *, own_only: bool = False) -> list[OfferView]: ...

    async def add_offer(self, spec: OfferSpec) -> OfferView: ...

    async def withdraw_offer(self, offer_id: str) -> None: ...

    async def book(self, buy: str, sell: str) -> BookView: ...

    async def quotes(self, request: TradeRequest) -> list[QuoteView]: ...

    async def create_trade(self, request: TradeRequest) -> TradeView:
        """Start a trade and return at once (state ``quoting``); its progress is in
        :meth:`trade` and in the event stream (kind ``trade``)."""
        ...

    async def trades(self, *, limit: int = 50, before: float | None = None) -> list[TradeView]: ...

    async def trade(self, trade_id: str) -> TradeView: ...

    async def cancel_trade(self, trade_id: str) -> TradeView: ...

    async def swaps(self, *, limit: int = 50, before: float | None = None) -> list[SwapView]: ...

    async def swap(self, swap_id: str) -> SwapView: ...

    async def ledger_orders(self, *, limit: int = 50) -> list[LedgerOrderView]: ...

    async def ledger_order(self, order_id: str) -> LedgerOrderView: ...

    async def fee_shares(self) -> list[FeeShareView]: ...

    async def withdraw_fees(self, asset: str, payout_address: str) -> int:
        """Withdraw this node's whole fee balance in ``asset`` on the ledger (to be paid to
        ``payout_address``); the amount. ``Conflict`` when there is none."""
        ...

    async def importance(self, *, limit: int = 50) -> list[ImportanceView]: ...

    async def evidence(self, *, limit: int = 50) -> list[EvidenceView]: ...

    async def peers(self) -> list[PeerView]: ...

    async def events(self, *, after: int = 0, limit: int = 100) -> list[Event]: ...

    async def wait_events(self, *, after: int, timeout: float) -> list[Event]:
        """Events with ``seq > after``; waits up to ``timeout`` seconds for the first one."""
        ...
