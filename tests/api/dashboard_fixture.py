"""A small in-memory node for the dashboard's browser test, served by a minimal /v1 app.

``FixtureNode`` is an honest NodeService double: state in dicts behind a lock, the real
``EventLog`` (SQLite, seq, wake-ups from any thread) for the event stream, and a trade that
moves forward one step each time the test calls :meth:`FixtureNode.advance` (from the test's
thread, like the daemon's swap engine publishing from its workers). ``fixture_app`` serves it
with the routes, the bearer token, problem+json errors and the WebSocket the dashboard uses;
it mounts the real dashboard.

The browser test's main case runs over the real daemon (``tests/api/daemon_net.py``); this
double stays only for what a live devnet does not produce on demand: a swap held at each
intermediate step, yesterday's refunded swap, a journal-only swap, fee shares beyond 2^53,
evidence, a peer named with markup, a node whose ledger does not answer, a trade still open
when the user cancels it, a node serving one item a page; and, through ``fixture_app`` only,
a WebSocket the node drops or refuses when told to.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import threading
import time
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse

from kofo.errors import InsufficientFunds, InvalidInput, KofoError
from kofo.node import dashboard
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

BTC = "btc"
ETH = "eth"
DUSD = "eth:0x5fbdb2315678afecb367f032d93f642f64180aa3"


def hexid(label: str) -> str:
    return hashlib.sha256(label.encode()).hexdigest()


ME = hexid("alice")
MAKERS = [hexid("bob"), hexid("carol"), hexid("dave")]
MY_BTC = "bcrt1qalice0000000000000000000000000000000000000000000000000000"
MY_ETH = "0xa11ce00000000000000000000000000000000a11"
BOB_BTC = "bcrt1qbob00000000000000000000000000000000000000000000000000000000"
BOB_ETH = "0xb0b0000000000000000000000000000000000b0b"


OLD_SWAP = hexid("old-swap")
JOURNAL_SWAP = hexid("journal-swap")


def _journal_only_swap() -> SwapView:
    """A swap as a daemon that fills no leg txids shows it: only the engine's journal, each
    step with its txid. We were the participant and redeemed: the counter (initiator's) leg by
    our redeem, our own leg by the initiator before (that is how we learned the secret)."""
    t = time.time() - 7_200
    lock, redeem = hexid("journal-lock"), hexid("journal-redeem")
    legs = (
        SwapLegView("btc", None, 1_500_000, BOB_BTC, MY_BTC, {"unit": "height", "value": 390},
                    "", "", None),
        SwapLegView("eth", None, 46 * 10**16, MY_ETH, BOB_ETH, {"unit": "unix", "value": int(t)},
                    "", "", None),
    )  # fmt: skip
    steps = [
        ("accepted", "", ""),
        ("counter_audited", "the counter leg matches the terms", ""),
        ("lock_signed", "", lock),
        ("lock_sent", "", lock),
        ("locked", "own lock buried", lock),
        ("redeem_signed", "", redeem),
        ("redeem_sent", "", redeem),
        ("redeemed", "the counter leg paid us, buried", redeem),
    ]
    events = tuple(SwapEventView(st, r, tx, t + n) for n, (st, r, tx) in enumerate(steps))
    return SwapView(JOURNAL_SWAP, "participant", "redeemed", legs, events, t + len(steps))


def _old_refunded_swap() -> SwapView:
    """Yesterday's swap: our ETH leg locked, the maker never locked, our refund is out (the
    swap is not terminal yet). Its legs carry no ``state``: the page must read "refund, not
    redeem" from the swap's history, since a spend alone does not say which."""
    t = time.time() - 86_400
    lock, refund = hexid("old-lock"), hexid("old-refund")
    legs = (
        SwapLegView("eth", None, 2 * 10**17, MY_ETH, BOB_ETH, {"unit": "unix", "value": int(t)},
                    lock, refund, 12),
        SwapLegView("btc", None, 640_000, BOB_BTC, MY_BTC, {"unit": "height", "value": 300},
                    "", "", None),
    )  # fmt: skip
    events = (
        SwapEventView("accepted", "terms agreed", "", t - 7_200),
        SwapEventView("lock_sent", "own lock broadcast", lock, t - 7_100),
        SwapEventView("refund_wait", "the counter leg never appeared", "", t - 3_600),
        SwapEventView("refund_sent", "refund broadcast, waiting to bury it", refund, t),
    )
    return SwapView(OLD_SWAP, "initiator", "refund_sent", legs, events, t)


def _offer(
    n: int, maker: str, buy: str, sell: str, num: int, den: int, mn: int, mx: int
) -> OfferView:
    spec = OfferSpec(buy=buy, sell=sell, price_num=num, price_den=den, min_in=mn, max_in=mx)
    return OfferView(hexid(f"offer{n}"), maker, spec, int(time.time()) + 1800 + 60 * n, False)


class FixtureNode:
    """The NodeService protocol over dicts; one scripted trade at a time."""

    def __init__(self, home: Path) -> None:
        self.log = EventLog(home / "events.sqlite")
        self._lock = threading.Lock()
        self.started = int(time.time()) - 3_725
        self.heights = {"btc": 412, "eth": 1_907}
        self.balances_ = {
            BTC: [120_000_000, 0],
            ETH: [5_250_000_000_000_000_000, 0],
            DUSD: [1_000_000_000, 0],
        }
        # Around 1 BTC = 31.3 ETH, three makers. The best bid pays 312345678901.234567 wei per
        # satoshi: 0.01 BTC brings 0.312345678901234567 ETH, 18 significant digits (a float
        # keeps 15 to 17: the page must do this in exact integers).
        self.offers_: list[OfferView] = [
            # makers buying BTC (they pay ETH): price_num/den = wei per satoshi
            _offer(1, MAKERS[0], BTC, ETH, 312_345_678_901_234_567, 10**6, 100_000, 50_000_000),
            _offer(2, MAKERS[1], BTC, ETH, 311_000_000_000, 1, 100_000, 120_000_000),
            _offer(3, MAKERS[2], BTC, ETH, 309_500_000_000, 1, 1_000_000, 200_000_000),
            # makers selling BTC (they take ETH): satoshi per wei
            _offer(4, MAKERS[1], ETH, BTC, 1, 314_000_000_000, 10**16, 10 * 10**18),
            _offer(5, MAKERS[2], ETH, BTC, 1, 316_500_000_000, 10**16, 25 * 10**18),
        ]
        self.trades_: dict[str, TradeView] = {}
        self.swaps_: dict[str, SwapView] = {
            OLD_SWAP: _old_refunded_swap(),
            JOURNAL_SWAP: _journal_only_swap(),
        }
        self.last_swap_id = ""
        self.orders_: dict[str, LedgerOrderView] = {}
        self.fees_: list[FeeShareView] = [
            FeeShareView(hexid("old-order"), "relay", ETH, 1_234_567_890_123_456_789),
        ]
        self.steps: list[Any] = []
        # the event WebSockets open now (to drop them: kick()), and whether new ones are refused
        self.sockets: set[tuple[asyncio.AbstractEventLoop, WebSocket]] = set()
        self.refuse_sockets = False
        self.info_fails = False
        self.page_size = 50
        # a slow read on demand: the next newest-page trade list read answers with what it read
        # only once this event is set (trade_list_held says it is waiting)
        self.hold_trade_list: threading.Event | None = None
        self.trade_list_held = threading.Event()

    def kick(self) -> int:
        """Close every event WebSocket from the server side (from the test's thread), as a
        restart or a network drop would; returns how many were open."""
        found = list(self.sockets)
        for loop, ws in found:
            asyncio.run_coroutine_threadsafe(ws.close(code=1012), loop).result(10)
        return len(found)

    # -- views ------------------------------------------------------------------------------

    async def info(self) -> NodeInfo:
        if self.info_fails:
            raise Unavailable("the ledger at http://127.0.0.1:26657 does not answer")
        with self._lock:
            chains = tuple(ChainView(c, h) for c, h in self.heights.items())
        return NodeInfo(
            name="alice",
            node_id=ME,
            version="0.1.0",
            p2p="127.0.0.1:9730",
            ledger_url="http://127.0.0.1:26657",
            ledger_height=8_812,
            ledger_error="",
            chains=chains,
            peers=3,
            started_at=self.started,
            addresses={"btc": MY_BTC, "eth": MY_ETH},
        )

    async def balances(self) -> list[BalanceView]:
        meta = {BTC: ("BTC", 8), ETH: ("ETH", 18), DUSD: ("DUSD", 6)}
        with self._lock:
            return [BalanceView(a, *meta[a], av, rs) for a, (av, rs) in self.balances_.items()]

    async def offers(self, *, own_only: bool = False) -> list[OfferView]:
        return [o for o in self.offers_ if o.own or not own_only]

    async def add_offer(self, spec: OfferSpec) -> OfferView:
        raise Conflict("the fixture node makes no offers")

    async def withdraw_offer(self, offer_id: str) -> None:
        raise NotFound(f"offer {offer_id} not found")

    async def book(self, buy: str, sell: str) -> BookView:
        for asset, field in ((buy, "buy"), (sell, "sell")):
            if asset not in self.balances_:
                raise InvalidInput(f"{field}: unknown asset {asset!r}")
        found = [o for o in self.offers_ if o.spec.buy == buy and o.spec.sell == sell]
        found.sort(key=lambda o: o.spec.price_num * 10**30 // o.spec.price_den, reverse=True)
        return BookView(buy, sell, tuple(found))

    async def quotes(self, request: TradeRequest) -> list[QuoteView]:
        with self._lock:
            available = self.balances_.get(request.sell, [0, 0])[0]
        if request.amount > available:
            raise InsufficientFunds(
                f"amount: {request.amount} base units of {request.sell} exceeds the "
                f"{available} available"
            )
        now_ms = int(time.time() * 1000)
        out = []
        for o in self.offers_:
            s = o.spec
            if s.buy == request.sell and s.sell == request.buy and s.min_in <= request.amount:
                n = min(request.amount, s.max_in)
                if n == request.amount:
                    receive = n * s.price_num // s.price_den - s.fee
                    out.append(
                        QuoteView(
                            hexid(o.offer_id),
                            request.sell,
                            n,
                            request.buy,
                            receive,
                            1,
                            now_ms + 30_000,
                        )
                    )
        if out:  # a two-hop route through a relay, a little worse
            best = max(q.receive for q in out)
            out.append(
                QuoteView(
                    hexid("relay"),
                    request.sell,
                    request.amount,
                    request.buy,
                    best * 997 // 1000,
                    2,
                    now_ms + 20_000,
                )
            )
        return [q for q in out if q.receive >= request.min_receive]

    async def create_trade(self, request: TradeRequest) -> TradeView:
        quotes = await self.quotes(request)
        if not quotes:
            raise Conflict("no quote for this trade: no maker answered")
        best = max(quotes, key=lambda q: q.receive)
        now = time.time()
        trade_id = hexid(f"trade{len(self.trades_)}")
        t = TradeView(
            trade_id,
            "taker",
            "quoting",
            request.sell,
            request.amount,
            request.buy,
            None,
            None,
            None,
            None,
            "",
            now,
            now,
            (PhaseView("quoting", now),),
        )
        with self._lock:
            self.trades_[trade_id] = t
            self.balances_[request.sell][0] -= request.amount
            self.balances_[request.sell][1] += request.amount
        self.log.append("trade", {"trade_id": trade_id, "state": "quoting"})
        self.steps = self._script(trade_id, best)
        return t

    async def trades(self, *, limit: int = 50, before: float | None = None) -> list[TradeView]:
        with self._lock:
            ts = sorted(self.trades_.values(), key=lambda t: t.created_at, reverse=True)
        return [t for t in ts if before is None or t.created_at < before][:limit]

    async def trade(self, trade_id: str) -> TradeView:
        with self._lock:
            if trade_id not in self.trades_:
                raise NotFound(f"trade {trade_id} not found")
            return self.trades_[trade_id]

    async def cancel_trade(self, trade_id: str) -> TradeView:
        t = await self.trade(trade_id)
        if t.state not in ("quoting", "ordering"):
            raise Conflict(
                f"trade {trade_id} is {t.state}: only a trade before commit can be cancelled"
            )
        with self._lock:
            self.balances_[t.sell][0] += t.amount
            self.balances_[t.sell][1] -= t.amount
        self.steps = []
        self._set_trade(trade_id, "cancelled", error="cancelled by the user before commit")
        return await self.trade(trade_id)

    async def swaps(self, *, limit: int = 50, before: float | None = None) -> list[SwapView]:
        with self._lock:
            ss = sorted(self.swaps_.values(), key=lambda s: s.updated_at, reverse=True)
        return [s for s in ss if before is None or s.updated_at < before][:limit]

    async def swap(self, swap_id: str) -> SwapView:
        with self._lock:
            if swap_id not in self.swaps_:
                raise NotFound(f"swap {swap_id} not found")
            return self.swaps_[swap_id]

    async def ledger_orders(self, *, limit: int = 50) -> list[LedgerOrderView]:
        with self._lock:
            return sorted(self.orders_.values(), key=lambda o: -o.height)[:limit]

    async def ledger_order(self, order_id: str) -> LedgerOrderView:
        with self._lock:
            if order_id not in self.orders_:
                raise NotFound(f"order {order_id} not found")
            return self.orders_[order_id]

    async def fee_shares(self) -> list[FeeShareView]:
        with self._lock:
            return list(self.fees_)

    async def importance(self, *, limit: int = 50) -> list[ImportanceView]:
        return [
            ImportanceView(MAKERS[1], 9_120, 912, 0, 5_000),
            ImportanceView(ME, 4_410, 441, 0, 5_000),
            ImportanceView(MAKERS[0], 3_870, 390, 3, 5_000),
        ][:limit]

    async def evidence(self, *, limit: int = 50) -> list[EvidenceView]:
        return [
            EvidenceView(
                hexid("bad-order"), "late_lock", MAKERS[0], 7_730, {"leg": 1, "deadline": 7_700}
            )
        ][:limit]

    async def peers(self) -> list[PeerView]:
        return [
            PeerView(MAKERS[0], "127.0.0.1:9741", False, 12),
            PeerView(MAKERS[1], "127.0.0.1:9742", True, 40),
            # a peer-chosen string: the page must show it as text, never as markup
            PeerView(MAKERS[2], "<img src=x onerror=alert(1)>:9743", True, -2),
        ]

    async def events(self, *, after: int = 0, limit: int = 100) -> list[Event]:
        return self.log.after(after, limit)

    async def wait_events(self, *, after: int, timeout: float) -> list[Event]:
        return await self.log.wait(after, timeout)

    # -- the scripted trade, one step per advance() -----------------------------------------

    def advance(self) -> str:
        """Run the next step of the open trade (from any thread); returns its name."""
        name, step = self.steps.pop(0)
        step()
        return name

    def _set_trade(self, trade_id: str, state: str, **changes: Any) -> None:
        now = time.time()
        with self._lock:
            t = self.trades_[trade_id]
            phases = (*t.phases, PhaseView(state, now))
            self.trades_[trade_id] = dataclasses.replace(
                t, state=state, updated_at=now, phases=phases, **changes
            )
        self.log.append("trade", {"trade_id": trade_id, "state": state})

    def _set_swap(
        self,
        swap_id: str,
        swap_state: str,
        reason: str,
        leg: int = -1,
        txid: str = "",
        **leg_changes: Any,
    ) -> None:
        now = time.time()
        with self._lock:
            s = self.swaps_[swap_id]
            legs = list(s.legs)
            if leg >= 0:
                legs[leg] = dataclasses.replace(legs[leg], **leg_changes)
            self.swaps_[swap_id] = dataclasses.replace(
                s,
                state=swap_state,
                legs=tuple(legs),
                updated_at=now,
                events=(*s.events, SwapEventView(swap_state, reason, txid, now)),
            )
        self.log.append("swap", {"swap_id": swap_id, "state": swap_state})

    def _script(self, trade_id: str, q: QuoteView) -> list[Any]:
        order_id = hexid(f"order-{trade_id}")
        swap_id = hexid(f"swap-{trade_id}")
        txs = [hexid(f"tx{i}-{trade_id}") for i in range(4)]
        expiry_btc = self.heights["btc"] + 144
        expiry_eth = int(time.time()) + 6 * 3600

        def committed() -> None:
            self._set_trade(trade_id, "committed", order_id=order_id, height=8_813)
            legs = (
                {"chain": "btc", "asset": BTC, "amount": q.amount_in, "from": ME, "to": MAKERS[0]},
                {"chain": "eth", "asset": q.buy, "amount": q.receive, "from": MAKERS[0], "to": ME},
            )
            with self._lock:
                self.orders_[order_id] = LedgerOrderView(order_id, "committed", 8_813, legs, {})
            self.log.append("order", {"order_id": order_id, "status": "committed"})

        def settling() -> None:
            legs = (
                SwapLegView(
                    "btc",
                    None,
                    q.amount_in,
                    MY_BTC,
                    BOB_BTC,
                    {"unit": "height", "value": expiry_btc},
                    "",
                    "",
                    None,
                ),
                SwapLegView(
                    "eth",
                    None,
                    q.receive,
                    BOB_ETH,
                    MY_ETH,
                    {"unit": "unix", "value": expiry_eth},
                    "",
                    "",
                    None,
                ),
            )
            now = time.time()
            with self._lock:
                self.swaps_[swap_id] = SwapView(swap_id, "initiator", "accepted", legs, (), now)
                self.last_swap_id = swap_id
            self._set_trade(trade_id, "settling")
            self._set_swap(swap_id, "accepted", "terms agreed with the maker")

        def own_lock() -> None:
            self._set_swap(
                swap_id,
                "locked",
                "own lock buried",
                0,
                txs[0],
                lock_txid=txs[0],
                confirmations=1,
                state="locked",
            )

        def counter_lock() -> None:
            self._set_swap(
                swap_id,
                "counter_audited",
                "the counter leg matches the terms",
                1,
                txs[1],
                lock_txid=txs[1],
                confirmations=2,
                state="locked",
            )

        def redeem_counter() -> None:
            self._set_swap(
                swap_id,
                "redeem_sent",
                "redeemed the counter leg",
                1,
                txs[2],
                spend_txid=txs[2],
                confirmations=3,
                state="redeemed",
            )

        def done() -> None:
            self._set_swap(
                swap_id,
                "redeemed",
                "the maker redeemed our leg; both buried",
                0,
                txs[3],
                spend_txid=txs[3],
                confirmations=4,
                state="redeemed",
            )
            with self._lock:
                o = self.orders_[order_id]
                self.orders_[order_id] = dataclasses.replace(
                    o, outcomes={"0": "redeemed", "1": "redeemed"}
                )
                self.balances_[q.sell][1] -= q.amount_in
                self.balances_[q.buy][0] += q.receive
            self.log.append("order", {"order_id": order_id, "status": "settled"})
            self._set_trade(trade_id, "redeemed")

        return [
            (
                "ordering",
                lambda: self._set_trade(trade_id, "ordering", receive=q.receive, hops=q.hops),
            ),
            ("submitted", lambda: self._set_trade(trade_id, "submitted")),
            ("committed", committed),
            ("settling", settling),
            ("own_lock", own_lock),
            ("counter_lock", counter_lock),
            ("redeem_counter", redeem_counter),
            ("done", done),
        ]


# -- the /v1 surface the page uses ------------------------------------------------------------


def _json(value: Any, status: int = 200) -> JSONResponse:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    elif isinstance(value, list):  # a page, as kofo.node.api answers lists
        value = {"items": [dataclasses.asdict(v) for v in value]}
    return JSONResponse(value, status_code=status)


def _problem(status: int, code: str, detail: str) -> JSONResponse:
    return JSONResponse(
        {
            "type": f"https://kofo.dev/errors/{code}",
            "title": code.replace("_", " "),
            "status": status,
            "detail": detail,
            "code": code,
        },
        status_code=status,
        media_type="application/problem+json",
    )


_STATUS = {"not_found": 404, "conflict": 409, "invalid_input": 422, "unavailable": 503}


def fixture_app(node: FixtureNode, token: str, readonly_token: str) -> FastAPI:
    app = FastAPI()

    @app.middleware("http")
    async def auth(request: Request, call_next: Any) -> Any:
        if request.url.path.startswith("/v1/"):
            presented = request.headers.get("authorization", "")
            if presented == f"Bearer {readonly_token}":
                if request.method != "GET":
                    return _problem(403, "forbidden", "the read-only token may only GET")
            elif presented != f"Bearer {token}":
                return _problem(
                    401, "unauthorized", "wrong bearer token (Authorization: Bearer <api.token>)"
                )
        return await call_next(request)

    @app.exception_handler(KofoError)
    async def kofo_error(_request: Request, exc: KofoError) -> JSONResponse:
        return _problem(_STATUS.get(exc.code, 400), exc.code, str(exc.args[0]))

    async def trade_request(request: Request) -> TradeRequest:
        body = await request.json()
        for name in ("amount", "min_receive", "deadline_s"):
            if name in body and not isinstance(body[name], int):
                raise InvalidInput(f"{name}: an integer of base units, got {body[name]!r}")
        return TradeRequest(
            sell=body["sell"],
            amount=body["amount"],
            buy=body["buy"],
            min_receive=body.get("min_receive", 0),
            deadline_s=body.get("deadline_s", 60),
        )

    @app.get("/v1/info")
    async def info() -> JSONResponse:
        return _json(await node.info())

    @app.get("/v1/balances")
    async def balances() -> JSONResponse:
        return _json(await node.balances())

    @app.get("/v1/book")
    async def book(buy: str, sell: str) -> JSONResponse:
        return _json(await node.book(buy, sell))

    @app.post("/v1/quotes")
    async def quotes(request: Request) -> JSONResponse:
        return _json(await node.quotes(await trade_request(request)))

    @app.post("/v1/trades")
    async def create_trade(request: Request) -> JSONResponse:
        return _json(await node.create_trade(await trade_request(request)), 201)

    @app.get("/v1/trades")
    async def trades(limit: int = 50, before: float | None = None) -> JSONResponse:
        found = await node.trades(limit=min(limit, node.page_size) + 1, before=before)
        gate = node.hold_trade_list if before is None else None
        if gate is not None:
            node.hold_trade_list = None
            node.trade_list_held.set()
            await asyncio.get_running_loop().run_in_executor(None, gate.wait, 60)
        page = found[: min(limit, node.page_size)]
        more = len(found) > len(page)
        return JSONResponse(
            {
                "items": [dataclasses.asdict(t) for t in page],
                "next": page[-1].created_at if more else None,
            }
        )

    @app.get("/v1/trades/{trade_id}")
    async def trade(trade_id: str) -> JSONResponse:
        return _json(await node.trade(trade_id))

    @app.post("/v1/trades/{trade_id}/cancel")
    async def cancel(trade_id: str) -> JSONResponse:
        return _json(await node.cancel_trade(trade_id))

    @app.get("/v1/swaps")
    async def swaps(limit: int = 50, before: float | None = None) -> JSONResponse:
        # a page as the API gives it: `next` (pass as `before`) while older ones remain; the
        # node may serve fewer than asked (page_size)
        found = await node.swaps(limit=min(limit, node.page_size) + 1, before=before)
        page = found[: min(limit, node.page_size)]
        more = len(found) > len(page)
        return JSONResponse(
            {
                "items": [dataclasses.asdict(s) for s in page],
                "next": page[-1].updated_at if more else None,
            }
        )

    @app.get("/v1/swaps/{swap_id}")
    async def swap(swap_id: str) -> JSONResponse:
        return _json(await node.swap(swap_id))

    @app.get("/v1/ledger/orders")
    async def orders(limit: int = 50) -> JSONResponse:
        return _json(await node.ledger_orders(limit=limit))

    @app.get("/v1/ledger/fees")
    async def fees() -> JSONResponse:
        return _json(await node.fee_shares())

    @app.get("/v1/ledger/importance")
    async def importance(limit: int = 50) -> JSONResponse:
        return _json(await node.importance(limit=limit))

    @app.get("/v1/ledger/evidence")
    async def evidence(limit: int = 50) -> JSONResponse:
        return _json(await node.evidence(limit=limit))

    @app.get("/v1/peers")
    async def peers() -> JSONResponse:
        return _json(await node.peers())

    @app.get("/v1/events/last")
    async def last() -> JSONResponse:
        return JSONResponse({"seq": node.log.last_seq()})

    @app.get("/v1/events")
    async def events(after: int = 0, limit: int = 100) -> JSONResponse:
        return _json(await node.events(after=after, limit=limit))

    @app.websocket("/v1/events")
    async def stream(ws: WebSocket, after: int = 0) -> None:
        # as kofo.node.api does: the token as a subprotocol, echoed; a refusal is a close
        # with 4000 + the HTTP status after the handshake
        if node.refuse_sockets:  # a proxy that does not pass WebSockets: the handshake fails
            await ws.close()
            return
        offered = [p for p in ws.scope.get("subprotocols", []) if p.startswith("kofo.bearer.")]
        ok = {dashboard.WS_TOKEN_PREFIX + t for t in (token, readonly_token)}
        await ws.accept(subprotocol=offered[0] if offered else None)
        if not offered or offered[0] not in ok:
            await ws.close(code=4401, reason="unauthorized: wrong bearer token")
            return
        # Watch for the client leaving while waiting for events, so the handler ends with it.
        receiver = asyncio.ensure_future(ws.receive())
        entry = (asyncio.get_running_loop(), ws)
        node.sockets.add(entry)
        try:
            while True:
                waiter = asyncio.ensure_future(node.wait_events(after=after, timeout=5.0))
                await asyncio.wait({receiver, waiter}, return_when=asyncio.FIRST_COMPLETED)
                if receiver.done():
                    waiter.cancel()
                    if receiver.result()["type"] == "websocket.disconnect":
                        return
                    receiver = asyncio.ensure_future(ws.receive())
                    continue
                for e in waiter.result():
                    await ws.send_json(dataclasses.asdict(e))
                    after = e.seq
        except (WebSocketDisconnect, RuntimeError):
            return
        finally:
            node.sockets.discard(entry)
            receiver.cancel()

    dashboard.mount(app)
    return app
