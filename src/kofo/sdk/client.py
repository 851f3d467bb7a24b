"""``Client`` (sync) and ``AsyncClient`` over the node's REST API (httpx) and its event stream
(websockets). Each method mirrors one route and returns the service's view dataclasses
(:mod:`kofo.node.service`); an error reply raises a :class:`~kofo.sdk.errors.KofoApiError`
subclass carrying KOFO's code."""

from __future__ import annotations

import asyncio
import json
import ssl
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any, Generic, TypeVar

import httpx
from pydantic import TypeAdapter, ValidationError
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, InvalidURI
from websockets.sync.client import connect as ws_sync_connect

from kofo.node.service import (
    BalanceView,
    Event,
    EvidenceView,
    FeeShareView,
    FeeWithdrawalView,
    ImportanceView,
    LedgerOrderView,
    NodeInfo,
    OfferView,
    PeerView,
    QuoteView,
    SwapView,
    TradeView,
)
from kofo.sdk.errors import (
    InvalidRequest,
    KofoApiError,
    RateLimited,
    ServerError,
    Unauthorized,
    Unavailable,
    error_from_response,
)

T = TypeVar("T")
Amount = int | str | Decimal
"""An amount: an ``int`` is base units (satoshi, wei); a ``str`` or a ``Decimal`` is a decimal
in the asset's unit (``"0.01"`` BTC), checked by the node against the asset's decimals. Never a
float (refused: a float cannot hold most decimal amounts exactly)."""


def _amount(field: str, value: Any) -> int | str:
    if isinstance(value, bool) or not isinstance(value, int | str | Decimal):
        raise InvalidRequest(
            f"{field}: an amount is an int (base units), a str or a Decimal, "
            f"got {type(value).__name__}",
            status=0,
            problem={"errors": [{"field": f"body.{field}", "message": "not an amount"}]},
        )
    if isinstance(value, Decimal):
        if not value.is_finite() or value < 0:
            raise InvalidRequest(f"{field}: {value} is not an amount", status=0)
        return format(value, "f")
    return value


EVENT_KINDS = ("trade", "swap", "order", "offer", "ledger", "node")
TERMINAL_TRADE_STATES = ("redeemed", "refunded", "failed", "cancelled")


@dataclass(frozen=True, slots=True)
class DepthLevel:
    price_num: int
    price_den: int
    price: str
    offers: int
    amount_in: int
    amount_out: int
    cum_in: int
    cum_out: int


@dataclass(frozen=True, slots=True)
class Book:
    """The offers paying ``sell`` for ``buy`` (best first) and the depth per price level."""

    buy: str
    sell: str
    offers: tuple[OfferView, ...]
    depth: tuple[DepthLevel, ...]


@dataclass(frozen=True, slots=True)
class Health:
    status: str  # "ok" or "degraded"
    ledger: bool
    chains: dict[str, bool]
    peers: int


@cache
def _adapter(kind: Any) -> TypeAdapter[Any]:
    return TypeAdapter(kind)


def _parse(kind: Any, data: Any, key: str | None = None) -> Any:
    if key is not None:
        data = data.get(key) if isinstance(data, dict) else None
    try:
        return _adapter(kind).validate_python(data)
    except ValidationError as exc:
        raise KofoApiError(
            f"the node's reply does not match the API ({exc.error_count()} problem(s))",
            code="bad_reply",
        ) from None


@dataclass(frozen=True, slots=True)
class _Call(Generic[T]):
    method: str
    path: str
    parse: Callable[[Any], T]
    params: dict[str, Any] | None = None
    body: dict[str, Any] | None = None


def _items(kind: Any) -> Callable[[Any], Any]:
    return lambda data: _parse(list[kind], data, "items")


def _one(kind: Any) -> Callable[[Any], Any]:
    return lambda data: _parse(kind, data)


def _quote(part: str) -> str:
    return urllib.parse.quote(part, safe="")


def _params(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def _trade_body(
    sell: str, amount: Amount, buy: str, min_receive: Amount, deadline_s: int, window_s: float
) -> dict[str, Any]:
    return {
        "sell": sell,
        "amount": _amount("amount", amount),
        "buy": buy,
        "min_receive": _amount("min_receive", min_receive),
        "deadline_s": deadline_s,
        "window_s": window_s,
    }


class _Calls:
    """The requests, once, for both clients."""

    @staticmethod
    def info() -> _Call[NodeInfo]:
        return _Call("GET", "/v1/info", _one(NodeInfo))

    @staticmethod
    def health() -> _Call[Health]:
        return _Call("GET", "/v1/health", _one(Health))

    @staticmethod
    def balances() -> _Call[list[BalanceView]]:
        return _Call("GET", "/v1/balances", _items(BalanceView))

    @staticmethod
    def offers(own: bool) -> _Call[list[OfferView]]:
        return _Call("GET", "/v1/offers", _items(OfferView), {"own": str(own).lower()})

    @staticmethod
    def add_offer(body: dict[str, Any]) -> _Call[OfferView]:
        return _Call("POST", "/v1/offers", _one(OfferView), body=body)

    @staticmethod
    def withdraw_offer(offer_id: str) -> _Call[None]:
        return _Call("DELETE", f"/v1/offers/{_quote(offer_id)}", lambda _: None)

    @staticmethod
    def book(buy: str, sell: str) -> _Call[Book]:
        return _Call("GET", "/v1/book", _one(Book), {"buy": buy, "sell": sell})

    @staticmethod
    def quotes(body: dict[str, Any]) -> _Call[list[QuoteView]]:
        return _Call("POST", "/v1/quotes", _items(QuoteView), body=body)

    @staticmethod
    def create_trade(body: dict[str, Any]) -> _Call[TradeView]:
        return _Call("POST", "/v1/trades", _one(TradeView), body=body)

    @staticmethod
    def trades(limit: int, before: float | None) -> _Call[list[TradeView]]:
        return _Call("GET", "/v1/trades", _items(TradeView), _params(limit=limit, before=before))

    @staticmethod
    def trade(trade_id: str) -> _Call[TradeView]:
        return _Call("GET", f"/v1/trades/{_quote(trade_id)}", _one(TradeView))

    @staticmethod
    def cancel_trade(trade_id: str) -> _Call[TradeView]:
        return _Call("POST", f"/v1/trades/{_quote(trade_id)}/cancel", _one(TradeView))

    @staticmethod
    def swaps(limit: int, before: float | None) -> _Call[list[SwapView]]:
        return _Call("GET", "/v1/swaps", _items(SwapView), _params(limit=limit, before=before))

    @staticmethod
    def swap(swap_id: str) -> _Call[SwapView]:
        return _Call("GET", f"/v1/swaps/{_quote(swap_id)}", _one(SwapView))

    @staticmethod
    def ledger_orders(limit: int) -> _Call[list[LedgerOrderView]]:
        return _Call("GET", "/v1/ledger/orders", _items(LedgerOrderView), {"limit": limit})

    @staticmethod
    def ledger_order(order_id: str) -> _Call[LedgerOrderView]:
        return _Call("GET", f"/v1/ledger/orders/{_quote(order_id)}", _one(LedgerOrderView))

    @staticmethod
    def fee_shares() -> _Call[list[FeeShareView]]:
        return _Call("GET", "/v1/ledger/fees", _items(FeeShareView))

    @staticmethod
    def withdraw_fees(body: dict[str, Any]) -> _Call[FeeWithdrawalView]:
        return _Call("POST", "/v1/ledger/fees/withdraw", _one(FeeWithdrawalView), body=body)

    @staticmethod
    def importance(limit: int) -> _Call[list[ImportanceView]]:
        return _Call("GET", "/v1/ledger/importance", _items(ImportanceView), {"limit": limit})

    @staticmethod
    def evidence(limit: int) -> _Call[list[EvidenceView]]:
        return _Call("GET", "/v1/ledger/evidence", _items(EvidenceView), {"limit": limit})

    @staticmethod
    def peers() -> _Call[list[PeerView]]:
        return _Call("GET", "/v1/peers", _items(PeerView))

    @staticmethod
    def events(after: int, limit: int) -> _Call[list[Event]]:
        return _Call("GET", "/v1/events", _items(Event), {"after": after, "limit": limit})

    @staticmethod
    def last_event_seq() -> _Call[int]:
        return _Call("GET", "/v1/events/last", lambda data: int(_parse(int, data, "seq")))


def _offer_body(
    buy: str,
    sell: str,
    price_num: int,
    price_den: int,
    min_in: Amount,
    max_in: Amount,
    fee: Amount,
    partial: bool,
    ttl: int,
) -> dict[str, Any]:
    return {
        "buy": buy,
        "sell": sell,
        "price_num": price_num,
        "price_den": price_den,
        "min_in": _amount("min_in", min_in),
        "max_in": _amount("max_in", max_in),
        "fee": _amount("fee", fee),
        "partial": partial,
        "ttl": ttl,
    }


def _result(call: _Call[T], response: httpx.Response) -> T:
    if response.status_code == 204:
        return call.parse(None)
    try:
        body = response.json() if response.content else None
    except ValueError:
        body = None
    if response.status_code >= 400:
        raise error_from_response(response.status_code, body)
    if body is None and call.method != "DELETE":
        raise KofoApiError(f"the node sent no JSON for {call.path}", code="bad_reply")
    return call.parse(body)


def _transport_error(base_url: str, exc: httpx.HTTPError) -> KofoApiError:
    return Unavailable(f"cannot reach the node at {base_url}: {type(exc).__name__}: {exc}")


def _ssl_context(cafile: Path | None) -> ssl.SSLContext | bool:
    if cafile is None:
        return True
    return ssl.create_default_context(cafile=str(cafile))


def home_endpoint(home: Path | str) -> tuple[str, str, Path | None]:
    """The base URL, the full token and the TLS certificate (to trust) of a node home."""
    from kofo.node.api_tokens import load_tokens
    from kofo.node.config import load_config

    home = Path(home).expanduser()
    config = load_config(home)
    tokens = load_tokens(home)
    host = config.api.host
    if host in ("0.0.0.0", "::", ""):  # bound to every address: reach it on loopback
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    scheme = "https" if config.api_tls is not None else "http"
    cert = config.api_tls.cert if config.api_tls is not None else None
    return f"{scheme}://{host}:{config.api.port}", tokens.token, cert


class Client:
    """The node's API, synchronously. ``Client.from_home(home)`` reads the home's bind and
    token; use it as a context manager (or call :meth:`close`)."""

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout: float = 30.0,
        verify: ssl.SSLContext | bool = True,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._token, self._verify = token, verify
        self._http = httpx.Client(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout,
            verify=verify,
            transport=transport,
            # straight to the node: an HTTP(S)_PROXY from the environment would be handed
            # the bearer token with every request (the event stream passes proxy=None too)
            trust_env=False,
        )

    @classmethod
    def from_home(cls, home: Path | str, **kwargs: Any) -> Client:
        url, token, cert = home_endpoint(home)
        return cls(url, token, verify=_ssl_context(cert), **kwargs)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _do(self, call: _Call[T]) -> T:
        try:
            response = self._http.request(
                call.method, call.path, params=call.params, json=call.body
            )
        except httpx.HTTPError as exc:
            raise _transport_error(self.base_url, exc) from None
        return _result(call, response)

    def info(self) -> NodeInfo:
        return self._do(_Calls.info())

    def health(self) -> Health:
        return self._do(_Calls.health())

    def balances(self) -> list[BalanceView]:
        return self._do(_Calls.balances())

    def offers(self, *, own: bool = False) -> list[OfferView]:
        return self._do(_Calls.offers(own))

    def add_offer(
        self,
        *,
        buy: str,
        sell: str,
        price_num: int,
        price_den: int,
        min_in: Amount,
        max_in: Amount,
        fee: Amount = 0,
        partial: bool = True,
        ttl: int = 3_600,
    ) -> OfferView:
        body = _offer_body(buy, sell, price_num, price_den, min_in, max_in, fee, partial, ttl)
        return self._do(_Calls.add_offer(body))

    def withdraw_offer(self, offer_id: str) -> None:
        self._do(_Calls.withdraw_offer(offer_id))

    def book(self, buy: str, sell: str) -> Book:
        return self._do(_Calls.book(buy, sell))

    def quotes(
        self,
        *,
        sell: str,
        amount: Amount,
        buy: str,
        min_receive: Amount = 0,
        deadline_s: int = 60,
        window_s: float = 1.0,
    ) -> list[QuoteView]:
        body = _trade_body(sell, amount, buy, min_receive, deadline_s, window_s)
        return self._do(_Calls.quotes(body))

    def create_trade(
        self,
        *,
        sell: str,
        amount: Amount,
        buy: str,
        min_receive: Amount = 0,
        deadline_s: int = 60,
        window_s: float = 1.0,
    ) -> TradeView:
        body = _trade_body(sell, amount, buy, min_receive, deadline_s, window_s)
        return self._do(_Calls.create_trade(body))

    def trades(self, *, limit: int = 50, before: float | None = None) -> list[TradeView]:
        """Newest first; the next page: ``before=page[-1].created_at``."""
        return self._do(_Calls.trades(limit, before))

    def trade(self, trade_id: str) -> TradeView:
        return self._do(_Calls.trade(trade_id))

    def cancel_trade(self, trade_id: str) -> TradeView:
        return self._do(_Calls.cancel_trade(trade_id))

    def swaps(self, *, limit: int = 50, before: float | None = None) -> list[SwapView]:
        """Most recently updated first; the next page: ``before=page[-1].updated_at``."""
        return self._do(_Calls.swaps(limit, before))

    def swap(self, swap_id: str) -> SwapView:
        return self._do(_Calls.swap(swap_id))

    def ledger_orders(self, *, limit: int = 50) -> list[LedgerOrderView]:
        return self._do(_Calls.ledger_orders(limit))

    def ledger_order(self, order_id: str) -> LedgerOrderView:
        return self._do(_Calls.ledger_order(order_id))

    def fee_shares(self) -> list[FeeShareView]:
        return self._do(_Calls.fee_shares())

    def withdraw_fees(self, asset: str, payout_address: str) -> FeeWithdrawalView:
        """Withdraw this node's whole fee balance in ``asset`` (``KofoApiError`` 409: none)."""
        return self._do(_Calls.withdraw_fees({"asset": asset, "payout_address": payout_address}))

    def importance(self, *, limit: int = 50) -> list[ImportanceView]:
        return self._do(_Calls.importance(limit))

    def evidence(self, *, limit: int = 50) -> list[EvidenceView]:
        return self._do(_Calls.evidence(limit))

    def peers(self) -> list[PeerView]:
        return self._do(_Calls.peers())

    def events_page(self, *, after: int = 0, limit: int = 100) -> list[Event]:
        """Persisted events after seq ``after``, oldest first."""
        return self._do(_Calls.events(after, limit))

    def last_event_seq(self) -> int:
        return self._do(_Calls.last_event_seq())

    def events(
        self,
        *,
        after: int = 0,
        kinds: Sequence[str] = (),
        max_retries: int | None = None,
        retry_delay: float = 0.2,
    ) -> Iterator[Event]:
        """As :meth:`AsyncClient.events`, blocking: every event after ``after``, then live
        ones, resuming by itself from the last seq yielded after a disconnect."""
        stream = _Stream(self.base_url, self._token, self._verify, kinds, max_retries)
        while True:
            try:
                with ws_sync_connect(stream.url(after), **stream.options()) as ws:
                    stream.connected()
                    try:
                        for raw in ws:
                            event = _parse(Event, json.loads(raw))
                            after = event.seq
                            yield event
                    except ConnectionClosed:
                        pass
                    stream.closed(ws.close_code, ws.close_reason)
            except (InvalidStatus, OSError, TimeoutError, ConnectionClosed, InvalidURI) as exc:
                stream.failed(exc)
            time.sleep(stream.delay(retry_delay))


# WebSocket close codes the node uses to refuse a subscription (4000 + the HTTP status).
_WS_REFUSALS: dict[int, type[KofoApiError]] = {
    4401: Unauthorized,
    4403: Unauthorized,
    4422: InvalidRequest,
    4429: RateLimited,
}


class AsyncClient:
    """The node's API for asyncio; the same methods as :class:`Client`, awaited, plus
    :meth:`events`, the live event stream."""

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout: float = 30.0,
        verify: ssl.SSLContext | bool = True,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._token = token
        self._verify = verify
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout,
            verify=verify,
            transport=transport,
            # straight to the node: an HTTP(S)_PROXY from the environment would be handed
            # the bearer token with every request (the event stream passes proxy=None too)
            trust_env=False,
        )

    @classmethod
    def from_home(cls, home: Path | str, **kwargs: Any) -> AsyncClient:
        url, token, cert = home_endpoint(home)
        return cls(url, token, verify=_ssl_context(cert), **kwargs)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _do(self, call: _Call[T]) -> T:
        try:
            response = await self._http.request(
                call.method, call.path, params=call.params, json=call.body
            )
        except httpx.HTTPError as exc:
            raise _transport_error(self.base_url, exc) from None
        return _result(call, response)

    async def info(self) -> NodeInfo:
        return await self._do(_Calls.info())

    async def health(self) -> Health:
        return await self._do(_Calls.health())

    async def balances(self) -> list[BalanceView]:
        return await self._do(_Calls.balances())

    async def offers(self, *, own: bool = False) -> list[OfferView]:
        return await self._do(_Calls.offers(own))

    async def add_offer(
        self,
        *,
        buy: str,
        sell: str,
        price_num: int,
        price_den: int,
        min_in: Amount,
        max_in: Amount,
        fee: Amount = 0,
        partial: bool = True,
        ttl: int = 3_600,
    ) -> OfferView:
        body = _offer_body(buy, sell, price_num, price_den, min_in, max_in, fee, partial, ttl)
        return await self._do(_Calls.add_offer(body))

    async def withdraw_offer(self, offer_id: str) -> None:
        await self._do(_Calls.withdraw_offer(offer_id))

    async def book(self, buy: str, sell: str) -> Book:
        return await self._do(_Calls.book(buy, sell))

    async def quotes(
        self,
        *,
        sell: str,
        amount: Amount,
        buy: str,
        min_receive: Amount = 0,
        deadline_s: int = 60,
        window_s: float = 1.0,
    ) -> list[QuoteView]:
        body = _trade_body(sell, amount, buy, min_receive, deadline_s, window_s)
        return await self._do(_Calls.quotes(body))

    async def create_trade(
        self,
        *,
        sell: str,
        amount: Amount,
        buy: str,
        min_receive: Amount = 0,
        deadline_s: int = 60,
        window_s: float = 1.0,
    ) -> TradeView:
        body = _trade_body(sell, amount, buy, min_receive, deadline_s, window_s)
        return await self._do(_Calls.create_trade(body))

    async def trades(self, *, limit: int = 50, before: float | None = None) -> list[TradeView]:
        return await self._do(_Calls.trades(limit, before))

    async def trade(self, trade_id: str) -> TradeView:
        return await self._do(_Calls.trade(trade_id))

    async def cancel_trade(self, trade_id: str) -> TradeView:
        return await self._do(_Calls.cancel_trade(trade_id))

    async def swaps(self, *, limit: int = 50, before: float | None = None) -> list[SwapView]:
        return await self._do(_Calls.swaps(limit, before))

    async def swap(self, swap_id: str) -> SwapView:
        return await self._do(_Calls.swap(swap_id))

    async def ledger_orders(self, *, limit: int = 50) -> list[LedgerOrderView]:
        return await self._do(_Calls.ledger_orders(limit))

    async def ledger_order(self, order_id: str) -> LedgerOrderView:
        return await self._do(_Calls.ledger_order(order_id))

    async def fee_shares(self) -> list[FeeShareView]:
        return await self._do(_Calls.fee_shares())

    async def withdraw_fees(self, asset: str, payout_address: str) -> FeeWithdrawalView:
        """Withdraw this node's whole fee balance in ``asset`` (``KofoApiError`` 409: none)."""
        body = {"asset": asset, "payout_address": payout_address}
        return await self._do(_Calls.withdraw_fees(body))

    async def importance(self, *, limit: int = 50) -> list[ImportanceView]:
        return await self._do(_Calls.importance(limit))

    async def evidence(self, *, limit: int = 50) -> list[EvidenceView]:
        return await self._do(_Calls.evidence(limit))

    async def peers(self) -> list[PeerView]:
        return await self._do(_Calls.peers())

    async def events_page(self, *, after: int = 0, limit: int = 100) -> list[Event]:
        return await self._do(_Calls.events(after, limit))

    async def last_event_seq(self) -> int:
        return await self._do(_Calls.last_event_seq())

    async def events(
        self,
        *,
        after: int = 0,
        kinds: Sequence[str] = (),
        max_retries: int | None = None,
        retry_delay: float = 0.2,
    ) -> AsyncIterator[Event]:
        """Every event after seq ``after`` (of ``kinds``, default all), then live ones, without
        end. When the connection drops it reconnects from the last seq it yielded: nothing is
        lost or repeated. After ``max_retries`` failed reconnects in a row (default: never give
        up) it raises :class:`Unavailable`; a refused subscription (bad token, bad kinds)
        raises at once.

        The node never publishes an event before the state it announces is readable: to
        follow a trade, re-read it (:meth:`trade`) on each event and stop at a state in
        :data:`TERMINAL_TRADE_STATES` (docs/api.md, "Ordering guarantee")."""
        stream = _Stream(self.base_url, self._token, self._verify, kinds, max_retries)
        while True:
            try:
                async with ws_connect(stream.url(after), **stream.options()) as ws:
                    stream.connected()
                    try:
                        async for raw in ws:
                            event = _parse(Event, json.loads(raw))
                            after = event.seq
                            yield event
                    except ConnectionClosed:
                        pass
                    stream.closed(ws.close_code, ws.close_reason)
            except (InvalidStatus, OSError, TimeoutError, ConnectionClosed, InvalidURI) as exc:
                stream.failed(exc)
            await asyncio.sleep(stream.delay(retry_delay))


class _Stream:
    """What the sync and async event streams share: the URL, the connection options, and what
    a close or a failure means (raise now, or reconnect after a delay)."""

    def __init__(
        self,
        base_url: str,
        token: str,
        verify: ssl.SSLContext | bool,
        kinds: Sequence[str],
        max_retries: int | None,
    ) -> None:
        unknown = set(kinds) - set(EVENT_KINDS)
        if unknown:
            raise InvalidRequest(
                f"kinds: unknown event kind(s) {', '.join(sorted(unknown))}; "
                f"known: {', '.join(EVENT_KINDS)}",
                status=422,
            )
        self.base_url, self.token, self.kinds = base_url, token, tuple(kinds)
        self.max_retries = max_retries
        self.ssl: ssl.SSLContext | None = None
        if base_url.startswith("https://"):
            self.ssl = (
                verify if isinstance(verify, ssl.SSLContext) else ssl.create_default_context()
            )
        self.failures = 0

    def url(self, after: int) -> str:
        base = self.base_url.replace("https://", "wss://", 1).replace("http://", "ws://", 1)
        query = {"after": str(after)}
        if self.kinds:
            query["kinds"] = ",".join(self.kinds)
        return f"{base}/v1/events?{urllib.parse.urlencode(query)}"

    def options(self) -> dict[str, Any]:
        return {
            "additional_headers": {"Authorization": f"Bearer {self.token}"},
            "open_timeout": 10,
            "close_timeout": 2,  # leaving mid-stream: don't wait long for the close reply
            "proxy": None,
            "ssl": self.ssl,
            "max_size": 4 * 1024 * 1024,
        }

    def connected(self) -> None:
        self.failures = 0

    def closed(self, code: int | None, reason: str | None) -> None:
        refused = _WS_REFUSALS.get(code or 0)
        if refused is not None:
            raise refused(reason or "refused", status=code or 0)

    def failed(self, exc: Exception) -> None:
        if isinstance(exc, InvalidStatus):
            status = exc.response.status_code
            if status in (401, 403):
                raise Unauthorized(
                    "the node refused the event stream's token", status=status
                ) from None
            exc = ServerError(f"event stream: HTTP {status}", status=status)
        self.failures += 1
        if self.max_retries is not None and self.failures > self.max_retries:
            raise Unavailable(
                f"event stream at {self.base_url} lost: {type(exc).__name__}: {exc}"
            ) from None

    def delay(self, retry_delay: float) -> float:
        return min(retry_delay * 2.0 ** max(0, self.failures - 1), 5.0)
