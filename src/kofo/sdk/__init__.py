"""KOFO's Python SDK: talk to a running node's API.

    from kofo.sdk import Client

    with Client.from_home("~/.kofo") as node:
        trade = node.create_trade(sell="BTC", amount="0.01", buy="ETH")
        print(node.trade(trade.trade_id).state)

:class:`AsyncClient` has the same methods for asyncio, and ``events(after=seq)``, the node's
event stream (resumes by itself after a disconnect). Errors are :class:`KofoApiError`
subclasses with KOFO's stable ``code``. See docs/api.md.
"""

from kofo.node.service import (
    BalanceView,
    Event,
    EvidenceView,
    FeeShareView,
    FeeWithdrawalView,
    ImportanceView,
    LedgerOrderView,
    NodeInfo,
    OfferSpec,
    OfferView,
    PeerView,
    QuoteView,
    SwapView,
    TradeView,
)
from kofo.sdk.client import (
    EVENT_KINDS,
    TERMINAL_TRADE_STATES,
    AsyncClient,
    Book,
    Client,
    DepthLevel,
    Health,
)
from kofo.sdk.errors import (
    Conflict,
    Forbidden,
    InvalidRequest,
    KofoApiError,
    NotFound,
    RateLimited,
    ServerError,
    Unauthorized,
    Unavailable,
)

__all__ = [
    "EVENT_KINDS",
    "TERMINAL_TRADE_STATES",
    "AsyncClient",
    "BalanceView",
    "Book",
    "Client",
    "Conflict",
    "DepthLevel",
    "Event",
    "EvidenceView",
    "FeeShareView",
    "FeeWithdrawalView",
    "Forbidden",
    "Health",
    "ImportanceView",
    "InvalidRequest",
    "KofoApiError",
    "LedgerOrderView",
    "NodeInfo",
    "NotFound",
    "OfferSpec",
    "OfferView",
    "PeerView",
    "QuoteView",
    "RateLimited",
    "ServerError",
    "SwapView",
    "TradeView",
    "Unauthorized",
    "Unavailable",
]
