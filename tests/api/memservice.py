"""An in-memory NodeService for the API tests: honest and small, state in dicts, events in the
real :class:`~kofo.node.events.EventLog`. It tests the HTTP layer (and the SDK and CLI through
it); the daemon implements the same protocol for real. Not shipped."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import time
from pathlib import Path

from kofo.errors import InvalidInput
from kofo.node.events import EventLog
from kofo.node.service import (
    BalanceView,
    BookView,
    ChainView,
    Conflict,
    Event,
    EvidenceView,
    FeeShareView,
    ImportanceView,
    LedgerOrderView,
    NodeInfo,
    NotFound,
    OfferSpec,
    OfferView,
    PeerView,
    PhaseView,
    QuoteView,
    SwapEventView,
    SwapLegView,
    SwapView,
    TradeRequest,
    TradeView,
    Unavailable,
)

NODE_ID = "ab" * 32
OTHER = "cd" * 32
TOKEN = "0x" + "11" * 20
# Longer than 80 columns with a label: the CLI must print it whole.
BTC_ADDRESS = "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080xxkfd0hmeqdsq4eyzzs9a7kw"
ETH_ADDRESS = "0x" + "5a" * 20


class MemService:
    def __init__(self, home: Path) -> None:
        self.events_log = EventLog(home / "events.sqlite")
        self.withdrawn: dict[str, int] = {}
        self.assets = {
            "btc": BalanceView("btc", "BTC", 8, 150_000_000, 0),
            "ltc": BalanceView("ltc", "LTC", 8, 900_000_000, 0),
            "eth": BalanceView("eth", "ETH", 18, 20 * 10**18, 0),
            f"eth:{TOKEN}": BalanceView(f"eth:{TOKEN}", "DUSD", 6, 5_000 * 10**6, 0),
        }
        self.offers_by_id: dict[str, OfferView] = {}
        self.trades_by_id: dict[str, TradeView] = {}
        self.swaps_by_id: dict[str, SwapView] = {}
        self.orders: dict[str, LedgerOrderView] = {}
        self.ids = itertools.count(1)
        self.clock = itertools.count(1_795_000_000)
        self.fail_next: Exception | None = None  # raised by the next call (error-path tests)
        self.ledger_up = True
        self.balance_reads = 0

    def _check(self) -> None:
        if self.fail_next is not None:
            exc, self.fail_next = self.fail_next, None
            raise exc

    def _id(self) -> str:
        return f"{next(self.ids):032x}"

    # -- node -----------------------------------------------------------------------------------

    async def info(self) -> NodeInfo:
        self._check()
        return NodeInfo(
            name="mem",
            node_id=NODE_ID,
            version="test",
            p2p="127.0.0.1:9730",
            ledger_url="http://127.0.0.1:26657",
            ledger_height=100 if self.ledger_up else None,
            ledger_error="" if self.ledger_up else "connection refused",
            chains=(ChainView("btc", 300), ChainView("eth", 40)),
            peers=1,
            started_at=1_795_000_000,
            addresses={"btc": BTC_ADDRESS, "eth": ETH_ADDRESS},
        )

    async def balances(self) -> list[BalanceView]:
        self._check()
        self.balance_reads += 1
        return list(self.assets.values())

    # -- offers ---------------------------------------------------------------------------------

    async def offers(self, *, own_only: bool = False) -> list[OfferView]:
        self._check()
        return [o for o in self.offers_by_id.values() if o.own or not own_only]

    async def add_offer(self, spec: OfferSpec) -> OfferView:
        self._check()
        for name in (spec.buy, spec.sell):
            if name not in self.assets:
                raise InvalidInput(f"unknown asset {name!r}")
        offer = OfferView(self._id(), NODE_ID, spec, int(time.time()) + spec.ttl, True)
        self.offers_by_id[offer.offer_id] = offer
        self.events_log.append("offer", {"offer_id": offer.offer_id, "state": "added"})
        return offer

    def add_foreign_offer(self, spec: OfferSpec) -> OfferView:
        offer = OfferView(self._id(), OTHER, spec, int(time.time()) + spec.ttl, False)
        self.offers_by_id[offer.offer_id] = offer
        return offer

    async def withdraw_offer(self, offer_id: str) -> None:
        self._check()
        offer = self.offers_by_id.get(offer_id)
        if offer is None:
            raise NotFound(f"no offer {offer_id}")
        if not offer.own:
            raise Conflict(f"offer {offer_id} is not this node's")
        del self.offers_by_id[offer_id]
        self.events_log.append("offer", {"offer_id": offer_id, "state": "withdrawn"})

    async def book(self, buy: str, sell: str) -> BookView:
        self._check()
        offers = [o for o in self.offers_by_id.values() if (o.spec.buy, o.spec.sell) == (buy, sell)]
        offers.sort(key=lambda o: o.spec.price_num / o.spec.price_den, reverse=True)
        return BookView(buy, sell, tuple(offers))

    # -- trades ---------------------------------------------------------------------------------

    async def quotes(self, request: TradeRequest) -> list[QuoteView]:
        self._check()
        book = await self.book(request.sell, request.buy)
        out = []
        for o in book.offers:
            if o.spec.min_in <= request.amount:
                # like the daemon's exchange: a maker short of the amount fills a part of it
                n = min(request.amount, o.spec.max_in)
                receive = n * o.spec.price_num // o.spec.price_den - o.spec.fee
                if receive >= request.min_receive:
                    out.append(
                        QuoteView(
                            self._id(),
                            request.sell,
                            n,
                            request.buy,
                            receive,
                            1,
                            int(time.time() * 1000) + 30_000,
                        )
                    )
        return sorted(out, key=lambda q: -q.receive)

    async def create_trade(self, request: TradeRequest) -> TradeView:
        self._check()
        now = float(next(self.clock))
        trade = TradeView(
            trade_id=self._id(),
            role="taker",
            state="quoting",
            sell=request.sell,
            amount=request.amount,
            buy=request.buy,
            receive=None,
            order_id=None,
            height=None,
            hops=None,
            error="",
            created_at=now,
            updated_at=now,
            phases=(PhaseView("quoting", now, {}),),
        )
        self.trades_by_id[trade.trade_id] = trade
        self.events_log.append("trade", {"trade_id": trade.trade_id, "phase": "quoting"})
        return trade

    def advance(self, trade_id: str, state: str, **changes: object) -> TradeView:
        """Move a trade on (as the daemon's pipeline would), with its event."""
        old = self.trades_by_id[trade_id]
        now = float(next(self.clock))
        detail = {k: v for k, v in changes.items() if isinstance(v, int | str)}
        new = dataclasses.replace(
            old,
            state=state,
            updated_at=now,
            phases=(*old.phases, PhaseView(state, now, detail)),
            **changes,  # type: ignore[arg-type]
        )
        self.trades_by_id[trade_id] = new
        self.events_log.append("trade", {"trade_id": trade_id, "phase": state, **detail})
        return new

    def phase(self, trade_id: str, phase: str, **detail: object) -> TradeView:
        """A finer step (the daemon's claim_sent, quotes, swap ...): a phase and its event,
        the trade's state unchanged."""
        old = self.trades_by_id[trade_id]
        now = float(next(self.clock))
        new = dataclasses.replace(
            old, updated_at=now, phases=(*old.phases, PhaseView(phase, now, dict(detail)))
        )
        self.trades_by_id[trade_id] = new
        self.events_log.append("trade", {"trade_id": trade_id, "phase": phase, **detail})
        return new

    async def trades(self, *, limit: int = 50, before: float | None = None) -> list[TradeView]:
        self._check()
        items = sorted(self.trades_by_id.values(), key=lambda t: -t.created_at)
        if before is not None:
            items = [t for t in items if t.created_at < before]
        return items[:limit]

    async def trade(self, trade_id: str) -> TradeView:
        self._check()
        try:
            return self.trades_by_id[trade_id]
        except KeyError:
            raise NotFound(f"no trade {trade_id}") from None

    async def cancel_trade(self, trade_id: str) -> TradeView:
        trade = await self.trade(trade_id)
        if trade.state not in ("quoting", "ordering"):
            raise Conflict(f"trade {trade_id} is {trade.state}; only a trade before commit can")
        return self.advance(trade_id, "cancelled")

    # -- swaps and ledger -----------------------------------------------------------------------

    def add_swap(self, state: str = "redeemed") -> SwapView:
        now = float(next(self.clock))
        swap_id = f"{next(self.ids):064x}"
        leg = SwapLegView(
            "btc",
            None,
            1_000_000,
            BTC_ADDRESS,
            BTC_ADDRESS[::-1],
            {"unit": "height", "value": 400},
            "aa" * 32,
            "bb" * 32,
            3,
        )
        swap = SwapView(
            swap_id, "initiator", state, (leg,), (SwapEventView(state, "", "bb" * 32, now),), now
        )
        self.swaps_by_id[swap_id] = swap
        self.events_log.append("swap", {"swap_id": swap_id, "state": state})
        return swap

    async def swaps(self, *, limit: int = 50, before: float | None = None) -> list[SwapView]:
        self._check()
        items = sorted(self.swaps_by_id.values(), key=lambda s: -s.updated_at)
        if before is not None:
            items = [s for s in items if s.updated_at < before]
        return items[:limit]

    async def swap(self, swap_id: str) -> SwapView:
        self._check()
        try:
            return self.swaps_by_id[swap_id]
        except KeyError:
            raise NotFound(f"no swap {swap_id}") from None

    async def ledger_orders(self, *, limit: int = 50) -> list[LedgerOrderView]:
        self._check()
        if not self.ledger_up:
            raise Unavailable("the ledger is unreachable")
        return list(self.orders.values())[:limit]

    async def ledger_order(self, order_id: str) -> LedgerOrderView:
        self._check()
        try:
            return self.orders[order_id]
        except KeyError:
            raise NotFound(f"no order {order_id}") from None

    async def fee_shares(self) -> list[FeeShareView]:
        self._check()
        return [FeeShareView(o, "relay", "btc", 300) for o in self.orders]

    async def withdraw_fees(self, asset: str, payout_address: str) -> int:
        self._check()
        amount = sum(s.amount for s in await self.fee_shares() if s.asset == asset)
        if amount - self.withdrawn.get(asset, 0) <= 0:
            raise Conflict(f"no fee balance in {asset!r} to withdraw")
        self.withdrawn[asset] = amount
        return amount

    async def importance(self, *, limit: int = 50) -> list[ImportanceView]:
        self._check()
        return [ImportanceView(NODE_ID, 120, 130, 10, 1_000_000)][:limit]

    async def evidence(self, *, limit: int = 50) -> list[EvidenceView]:
        self._check()
        return []

    async def peers(self) -> list[PeerView]:
        self._check()
        return [PeerView(OTHER, "127.0.0.1:9740", False, 0)]

    async def events(self, *, after: int = 0, limit: int = 100) -> list[Event]:
        self._check()
        return await asyncio.to_thread(self.events_log.after, after, limit)

    async def wait_events(self, *, after: int, timeout: float) -> list[Event]:
        return await self.events_log.wait(after, timeout)
