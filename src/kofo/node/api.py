"""The node's REST + WebSocket API: :func:`create_app` serves a :class:`NodeService` under ``/v1``.

A thin translation (lnd's RPC server, loopd's): each route parses and checks its input, calls
one service method and returns its view. What it adds is the HTTP face's own duties:

* **Auth** -- ``Authorization: Bearer <token>``. Two tokens live in the node home (0600, 32
  random bytes as hex, written by ``kofo init``, read with :func:`load_tokens`): ``api.token``
  may do everything, ``api.readonly.token`` only ``GET``. Compared in constant time.
* **Errors** -- every error path answers RFC 9457 ``application/problem+json`` with ``type``,
  ``title``, ``status``, ``detail`` and ``code`` (KOFO's stable code); validation errors name
  the field (``errors``: ``[{"field": "body.amount", "message": ...}]``). An unexpected
  exception is a 500 whose reply and log line carry only a reference and the exception's type
  and place, never its text (which may hold a value the caller must not see).
* **Limits** -- request bodies over :data:`MAX_BODY` bytes are refused with 413 before they are
  read whole; a token bucket per token (per client address before auth) answers 429.
* **Amounts** -- integers in base units in every reply. A request may give an amount as a JSON
  integer (base units) or as a JSON string holding a decimal in the asset's unit (``"0.01"``
  BTC); more decimals than the asset has is a 422 naming the field.
* **Event stream** -- ``WS /v1/events?after=SEQ&kinds=trade,swap`` sends each persisted event
  after ``SEQ`` as one JSON text frame, oldest first; a client that reconnects with the last
  ``seq`` it saw misses and repeats nothing. Browsers cannot set headers on a WebSocket, so
  the token may also come as the subprotocol ``kofo.bearer.<token>`` (never in the URL, which
  lands in access logs).

Run ``python -m kofo.node.api --write-openapi`` to regenerate ``docs/openapi.json``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import importlib
import importlib.util
import ipaddress
import json
import logging
import math
import re
import secrets
import sys
import time
import traceback
from collections import OrderedDict
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Annotated, Any, Literal, cast

import uvicorn
from fastapi import APIRouter, Depends, FastAPI, Query, Request, WebSocket
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.websockets import WebSocketDisconnect

from kofo import __version__
from kofo.asgi import MAX_HEAD, Limits, deadline_protocol
from kofo.errors import ConfigError, KofoError
from kofo.money import parse_decimal
from kofo.node.api_tokens import (
    READONLY_TOKEN_FILE,
    TOKEN_FILE,
    ApiTokens,
    ensure_tokens,
    load_tokens,
)
from kofo.node.config import NodeConfig
from kofo.node.service import (
    BalanceView,
    BookView,
    EvidenceView,
    FeeShareView,
    FeeWithdrawalView,
    ImportanceView,
    LedgerOrderView,
    NodeInfo,
    NodeService,
    OfferSpec,
    OfferView,
    PeerView,
    QuoteView,
    SwapView,
    TradeRequest,
    TradeView,
)
from kofo.node.service import Event as EventView

__all__ = [
    "READONLY_TOKEN_FILE",
    "TOKEN_FILE",
    "ApiTokens",
    "RateLimit",
    "app_for_home",
    "create_app",
    "ensure_tokens",
    "load_tokens",
    "uvicorn_config",
]

log = logging.getLogger("kofo.api")

MAX_BODY = 64 * 1024
"""Bytes of a request body. The largest honest body (an offer) is a few hundred bytes; the cap
keeps a client from making the node buffer megabytes."""

API_LIMITS = Limits(max_body=MAX_BODY, request_timeout=30.0, write_timeout=30.0)
"""The deadlines :func:`uvicorn_config` serves with (``kofo.asgi``): a request (idle wait, head
and body) within 30 s, a stalled write of an answer within 30 s. The body cap is the app's own
(:data:`MAX_BODY`, a 413 problem); a WebSocket is exempt once upgraded."""

MAX_PAGE = 1_000
MAX_STREAMS = 256
"""Event-stream WebSockets open at once; each holds a task and a socket, so past this a new
one is refused (4429) rather than letting connections exhaust the node."""
MAX_AMOUNT = 2**256 - 1
"""The largest amount any chain KOFO supports can hold (an EVM uint256)."""

EVENT_KINDS = ("trade", "swap", "order", "offer", "ledger", "node")
WS_SUBPROTOCOL_PREFIX = "kofo.bearer."
PROBLEM_JSON = "application/problem+json"
PROBLEM_TYPE = "https://kofo.network/problems/"

_READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_ID = r"^[0-9A-Za-z_.:-]{1,128}$"
_ASSET_NAME = r"^[0-9A-Za-z_.:-]{1,80}$"
_DECIMAL = re.compile(r"[0-9]{1,80}(\.[0-9]{1,80})?", re.ASCII)

_STATUS_OF_CODE = {
    "not_found": 404,
    "unknown_swap": 404,
    "unknown_claim": 404,
    "conflict": 409,
    "already_exists": 409,
    "invalid_input": 422,
    "unavailable": 503,
    "unauthorized": 401,
    "forbidden": 403,
    "rate_limited": 429,
    "body_too_large": 413,
}
_TITLES = {
    400: "Bad request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    413: "Request body too large",
    422: "Invalid input",
    429: "Too many requests",
    500: "Internal error",
    503: "Unavailable",
}


# -- tokens --------------------------------------------------------------------------------------


# -- problems ------------------------------------------------------------------------------------


class ApiProblem(Exception):
    """An error the API answers as problem+json."""

    def __init__(
        self, status: int, code: str, detail: str, *, extra: dict[str, Any] | None = None
    ) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail
        self.extra = extra or {}


def _problem_body(status: int, code: str, detail: str, **extra: Any) -> dict[str, Any]:
    return {
        "type": PROBLEM_TYPE + code,
        "title": _TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
        "code": code,
        **extra,
    }


def _problem(
    status: int, code: str, detail: str, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    return JSONResponse(
        _problem_body(status, code, detail, **extra),
        status_code=status,
        media_type=PROBLEM_JSON,
        headers=headers,
    )


def _kofo_detail(exc: KofoError) -> str:
    return str(exc.args[0]) if exc.args else exc.code


def status_of(code: str, *, retryable: bool = False) -> int:
    """The HTTP status a KOFO error is answered with: by its code, else 503 when it says
    retrying may work (a ledger or chain that is down, a timeout), else 400."""
    return _STATUS_OF_CODE.get(code, 503 if retryable else 400)


class Problem(BaseModel):
    """RFC 9457 problem details, with KOFO's stable error ``code``."""

    model_config = ConfigDict(extra="allow")
    type: str
    title: str
    status: int
    detail: str
    code: str


_UNION_BRANCHES = frozenset({"int", "str", "constrained-int", "constrained-str"})
_AMOUNT_HINT = "must be a JSON integer (base units) or a string holding a decimal amount"


def _field_name(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc) or "body"


# -- rate limit ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RateLimit:
    """A token bucket per caller: ``burst`` requests at once, refilled at ``per_second``."""

    per_second: float = 50.0
    burst: int = 200


class _Limiter:
    MAX_KEYS = 4_096  # callers tracked; the oldest is forgotten first (a flood of addresses
    # cannot grow memory without bound)

    def __init__(self, limit: RateLimit, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit, self.clock = limit, clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, key: str) -> float:
        """0.0 when a request may go now, else the seconds until one may."""
        now = self.clock()
        level, last = self._buckets.pop(key, (float(self.limit.burst), now))
        level = min(float(self.limit.burst), level + (now - last) * self.limit.per_second)
        wait = 0.0
        if level >= 1.0:
            level -= 1.0
        else:
            rate = self.limit.per_second
            wait = (1.0 - level) / rate if rate > 0 else 3600.0
        self._buckets[key] = (level, now)
        while len(self._buckets) > self.MAX_KEYS:
            self._buckets.popitem(last=False)
        return wait


# -- request bodies ------------------------------------------------------------------------------

AssetName = Annotated[
    StrictStr,
    Field(
        pattern=_ASSET_NAME,
        description="An asset: its symbol (`BTC`, `LTC`, `ETH`, a configured token symbol), "
        "case-insensitive, or its ledger name (`btc`, `eth:0x<token>`).",
        examples=["BTC"],
    ),
]
AmountIn = Annotated[
    Annotated[StrictInt, Field(ge=0, le=MAX_AMOUNT)]
    | Annotated[StrictStr, Field(pattern=r"^[0-9]{1,80}(\.[0-9]{1,80})?$")],
    Field(
        description="A JSON integer: base units (satoshi, wei). A JSON string: a decimal in "
        "the asset's unit (`\"0.01\"` BTC), at most the asset's number of decimals.",
        examples=[1_000_000, "0.01"],
    ),
]


class OfferIn(BaseModel):
    """A standing offer: for ``n`` of ``buy`` in, pay ``n * price_num // price_den - fee`` of
    ``sell`` (``min_in <= n <= max_in``, in ``buy``; ``fee`` in ``sell``)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "buy": "BTC",
                    "sell": "ETH",
                    "price_num": 150_000_000_000,
                    "price_den": 1,
                    "min_in": "0.001",
                    "max_in": "0.5",
                    "fee": 0,
                    "partial": True,
                    "ttl": 3_600,
                }
            ]
        },
    )
    buy: AssetName
    sell: AssetName
    price_num: Annotated[StrictInt, Field(gt=0, le=MAX_AMOUNT)]
    price_den: Annotated[StrictInt, Field(gt=0, le=MAX_AMOUNT)]
    min_in: AmountIn
    max_in: AmountIn
    fee: AmountIn = 0
    partial: StrictBool = True
    ttl: Annotated[StrictInt, Field(gt=0, le=30 * 86_400)] = 3_600


class FeeWithdrawalIn(BaseModel):
    """Withdraw this node's whole fee balance in ``asset``, to be paid to ``payout_address``."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"asset": "BTC", "payout_address": "bcrt1q..."}]},
    )
    asset: AssetName
    payout_address: Annotated[StrictStr, Field(min_length=1, max_length=256)]


class TradeIn(BaseModel):
    """A trade (or a quote request): pay ``amount`` of ``sell``, receive ``buy``."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "sell": "BTC",
                    "amount": "0.01",
                    "buy": "ETH",
                    "min_receive": "0.14",
                    "deadline_s": 60,
                }
            ]
        },
    )
    sell: AssetName
    amount: AmountIn
    buy: AssetName
    min_receive: AmountIn = 0
    deadline_s: Annotated[StrictInt, Field(gt=0, le=86_400)] = 60
    window_s: Annotated[float, Field(gt=0, le=60)] = 1.0


# -- responses -----------------------------------------------------------------------------------


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    ledger: bool
    chains: dict[str, bool]
    peers: int


class DepthLevel(BaseModel):
    """One price level of a book, best first; ``cum_in``/``cum_out`` sum this level and every
    better one (base units of ``buy`` in and ``sell`` out at each offer's ``max_in``)."""

    price_num: int
    price_den: int
    price: str  # display units of sell per display unit of buy, a decimal string
    offers: int
    amount_in: int
    amount_out: int
    cum_in: int
    cum_out: int


class Book(BaseModel):
    buy: str
    sell: str
    offers: list[OfferView]
    depth: list[DepthLevel]


class BalancePage(BaseModel):
    items: list[BalanceView]


class OfferPage(BaseModel):
    items: list[OfferView]


class QuotePage(BaseModel):
    items: list[QuoteView]


class TradePage(BaseModel):
    items: list[TradeView]
    next: float | None = Field(description="pass as `before` for the next (older) page")


class SwapPage(BaseModel):
    items: list[SwapView]
    next: float | None = Field(description="pass as `before` for the next (older) page")


class LedgerOrderPage(BaseModel):
    items: list[LedgerOrderView]


class FeeSharePage(BaseModel):
    items: list[FeeShareView]


class ImportancePage(BaseModel):
    items: list[ImportanceView]


class EvidencePage(BaseModel):
    items: list[EvidenceView]


class PeerPage(BaseModel):
    items: list[PeerView]


class EventPage(BaseModel):
    items: list[EventView]
    next: int = Field(description="the last seq returned (or `after`): pass as `after` next")


class LastSeq(BaseModel):
    seq: int


async def last_seq(service: NodeService) -> int:
    """The newest event's seq, from :meth:`NodeService.events` alone: "is there an event after
    k" is monotone in k, so doubling then bisecting finds it in O(log seq) one-row reads."""
    hi = 1
    while await service.events(after=hi, limit=1):
        hi *= 2
    lo = hi // 2 if hi > 1 else 0  # events exist after lo (or lo == 0), none after hi
    if lo == 0 and not await service.events(after=0, limit=1):
        return 0
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if await service.events(after=mid, limit=1):
            lo = mid
        else:
            hi = mid
    return hi  # lo < last <= hi and hi - lo == 1


# -- assets --------------------------------------------------------------------------------------


class _Assets:
    """Asset names -> the service's balances (its asset list, with decimals). Cached briefly:
    a balance read may touch every chain."""

    TTL = 30.0
    MISS_RELOAD = 2.0  # an unknown name reloads at most this often: a flood of made-up names
    # must not turn into a flood of balance reads

    def __init__(self, service: NodeService) -> None:
        self.service = service
        self._table: dict[str, BalanceView] = {}
        self._at = -math.inf

    async def _load(self) -> None:
        table: dict[str, BalanceView] = {}
        for b in await self.service.balances():
            table[b.asset.lower()] = b
            table[b.symbol.lower()] = b
        self._table, self._at = table, time.monotonic()

    async def resolve(self, field: str, name: str) -> BalanceView:
        key = name.strip().lower()
        age = time.monotonic() - self._at
        if age > self.TTL or (key not in self._table and age > self.MISS_RELOAD):
            await self._load()
        found = self._table.get(key)
        if found is None:
            known = sorted({b.symbol for b in self._table.values()})
            raise _invalid(field, f"unknown asset {name!r}; this node knows {', '.join(known)}")
        return found


def _invalid(field: str, message: str) -> ApiProblem:
    return ApiProblem(
        422,
        "invalid_input",
        f"{field}: {message}",
        extra={"errors": [{"field": field, "message": message}]},
    )


def _units(field: str, value: int | str, asset: BalanceView) -> int:
    if isinstance(value, int):
        return value
    if _DECIMAL.fullmatch(value) is None:
        raise _invalid(field, f"not a decimal amount: {value!r}")
    _, _, frac = value.partition(".")
    if len(frac) > asset.decimals:
        raise _invalid(
            field,
            f"{value!r} has {len(frac)} decimals; {asset.symbol} has {asset.decimals}",
        )
    units = parse_decimal(value, asset.decimals)
    if units > MAX_AMOUNT:
        raise _invalid(field, f"{value!r} is too large")
    return units


def _price(num: int, den: int, buy: BalanceView, sell: BalanceView) -> str:
    """``num/den`` base units of sell per base unit of buy, in display units, as a decimal
    string (8 significant digits; exact arithmetic, no float)."""
    value = Fraction(num, den) * Fraction(10**buy.decimals, 10**sell.decimals)
    if value == 0:
        return "0"
    whole = value.numerator // value.denominator
    places = max(0, 8 - len(str(whole))) if whole else 7 - _log10_floor(value)
    scaled = value * 10**places
    digits = scaled.numerator // scaled.denominator
    text = str(digits).rjust(places + 1, "0")
    head, tail = (text[:-places], text[-places:]) if places else (text, "")
    tail = tail.rstrip("0")
    return f"{head}.{tail}" if tail else head


def _log10_floor(value: Fraction) -> int:
    n = 0
    while value < 1:
        value *= 10
        n -= 1
    return n


def depth_of(book: BookView, buy: BalanceView, sell: BalanceView) -> list[DepthLevel]:
    """Cumulative amounts per price level, best price (most ``sell`` per ``buy``) first."""
    levels: dict[Fraction, list[OfferView]] = {}
    for offer in book.offers:
        levels.setdefault(Fraction(offer.spec.price_num, offer.spec.price_den), []).append(offer)
    out: list[DepthLevel] = []
    cum_in = cum_out = 0
    for price in sorted(levels, reverse=True):
        offers = levels[price]
        amount_in = sum(o.spec.max_in for o in offers)
        amount_out = sum(
            max(0, o.spec.max_in * o.spec.price_num // o.spec.price_den - o.spec.fee)
            for o in offers
        )
        cum_in, cum_out = cum_in + amount_in, cum_out + amount_out
        out.append(
            DepthLevel(
                price_num=price.numerator,
                price_den=price.denominator,
                price=_price(price.numerator, price.denominator, buy, sell),
                offers=len(offers),
                amount_in=amount_in,
                amount_out=amount_out,
                cum_in=cum_in,
                cum_out=cum_out,
            )
        )
    return out


# -- middleware ----------------------------------------------------------------------------------

_Scope = MutableMapping[str, Any]
_Message = MutableMapping[str, Any]
_Receive = Callable[[], Awaitable[_Message]]
_Send = Callable[[_Message], Awaitable[None]]
_Asgi = Callable[[_Scope, _Receive, _Send], Awaitable[None]]


async def _send_problem(send: _Send, status: int, code: str, detail: str) -> None:
    body = json.dumps(_problem_body(status, code, detail)).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", PROBLEM_JSON.encode()),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class _BodyLimit:
    """Refuse a body over ``limit`` bytes with 413, by its Content-Length before reading it, or
    as soon as a chunked body passes the limit; the handler gets the body already read."""

    def __init__(self, app: _Asgi, limit: int = MAX_BODY) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: _Scope, receive: _Receive, send: _Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_big = f"the request body exceeds {self.limit} bytes"
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await _send_problem(send, 400, "bad_request", "bad Content-Length")
                    return
                if declared > self.limit:
                    await _send_problem(send, 413, "body_too_large", too_big)
                    return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                await _send_problem(send, 413, "body_too_large", too_big)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        sent = False

        async def replay() -> _Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def _where(exc: BaseException) -> str:
    """``file:line`` of the innermost frame: enough to find the bug, nothing of the data."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return "?"
    last = frames[-1]
    return f"{Path(last.filename).name}:{last.lineno}"


class _Guard:
    """The last line: an exception no handler took becomes a 500 problem whose reply and log
    carry a reference, the exception's type and place, never its message (it may hold a
    secret-like value). Starlette's own handler would log the whole traceback with it."""

    def __init__(self, app: _Asgi) -> None:
        self.app = app

    async def __call__(self, scope: _Scope, receive: _Receive, send: _Send) -> None:
        started = False

        async def tracking_send(message: _Message) -> None:
            nonlocal started
            if message["type"] in ("http.response.start", "websocket.accept", "websocket.close"):
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            ref = secrets.token_hex(6)
            log.error(
                "internal error ref=%s path=%s %s at %s",
                ref,
                scope.get("path", "?"),
                type(exc).__name__,
                _where(exc),
            )
            if started:
                return
            if scope["type"] == "http":
                await _send_problem(
                    send, 500, "internal", f"internal error (ref {ref}); see the node's log"
                )
            elif scope["type"] == "websocket":
                with contextlib.suppress(Exception):
                    await send({"type": "websocket.close", "code": 1011})


# -- the app -------------------------------------------------------------------------------------

_bearer = HTTPBearer(auto_error=False, description="`api.token` or `api.readonly.token`")

_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": Problem, "content": {PROBLEM_JSON: {}}, "description": _TITLES[status]}
    for status in (400, 401, 403, 404, 409, 413, 422, 429, 503)
}


def _ok(example: Any, description: str = "OK") -> dict[int | str, dict[str, Any]]:
    return {
        200: {"description": description, "content": {"application/json": {"example": example}}}
    }


_NODE_ID = "3f" * 32
_OFFER = {
    "offer_id": "a1" * 16,
    "maker": _NODE_ID,
    "spec": {
        "buy": "btc",
        "sell": "eth",
        "price_num": 150_000_000_000,
        "price_den": 1,
        "min_in": 100_000,
        "max_in": 50_000_000,
        "fee": 0,
        "partial": True,
        "ttl": 3_600,
    },
    "expires_at": 1_796_000_000,
    "own": True,
}
_TRADE_PHASES: list[dict[str, Any]] = [
    {"phase": "quoting", "at": 1_795_000_000.5, "detail": {}},
    {"phase": "committed", "at": 1_795_000_004.1, "detail": {"height": 1_204}},
]
_TRADE = {
    "trade_id": "7e" * 16,
    "role": "taker",
    "state": "committed",
    "sell": "btc",
    "amount": 1_000_000,
    "buy": "eth",
    "receive": 149_700_000_000_000_000,
    "order_id": "c4" * 32,
    "height": 1_204,
    "hops": 2,
    "error": "",
    "created_at": 1_795_000_000.5,
    "updated_at": 1_795_000_004.1,
    "phases": _TRADE_PHASES,
}
_TRADE_SETTLING = {
    **_TRADE,
    "state": "settling",
    "updated_at": 1_795_000_031.0,
    "phases": [
        *_TRADE_PHASES,
        {"phase": "swap_started", "at": 1_795_000_004.2, "detail": {"order_id": "c4" * 32}},
        {
            "phase": "confirms",
            "at": 1_795_000_031.0,
            "detail": {
                "tx": "lock",
                "by": "taker",
                "chain": "btc",
                "txid": "ab" * 32,
                "confirmations": 1,
                "required": 2,
            },
        },
    ],
}
_SWAP = {
    "swap_id": "5d" * 32,
    "role": "initiator",
    "state": "redeemed",
    "legs": [
        {
            "chain": "btc",
            "token": None,
            "amount": 1_000_000,
            "sender": "bcrt1qsender0000000000000000000000000000000",
            "recipient": "bcrt1qrecipient00000000000000000000000000",
            "expiry": {"unit": "height", "value": 1_344},
            "lock_txid": "aa" * 32,
            "spend_txid": "bb" * 32,
            "confirmations": 6,
        }
    ],
    "events": [{"state": "redeemed", "reason": "", "txid": "bb" * 32, "at": 1_795_000_100.0}],
    "updated_at": 1_795_000_100.0,
}
_ORDER = {
    "order_id": "c4" * 32,
    "status": "settled",
    "height": 1_204,
    "legs": [{"chain": "btc", "token": None, "amount": 1_000_000}],
    "outcomes": {"0": "redeemed", "1": "redeemed"},
}
_EVENT = {"seq": 42, "kind": "trade", "at": 1_795_000_004.1, "data": {"trade_id": "7e" * 16}}


Limit = Annotated[int, Query(ge=1, le=MAX_PAGE, description="page size")]
Before = Annotated[
    float | None,
    Query(ge=0, allow_inf_nan=False, description="cursor: the `next` of the previous page"),
]
TradeId = Annotated[str, PathParam(pattern=_ID, examples=["7e" * 16])]


def create_app(
    service: NodeService,
    *,
    token: str,
    readonly_token: str,
    rate_limit: RateLimit | None = None,
    max_body: int = MAX_BODY,
    event_wait: float = 5.0,
    max_streams: int = MAX_STREAMS,
) -> FastAPI:
    """The node's API app. ``token`` may do everything, ``readonly_token`` only read (GET).
    ``event_wait`` is how long the WebSocket waits for events before checking its client;
    ``max_streams`` caps the event streams open at once."""
    if not token or not readonly_token or token == readonly_token:
        raise ConfigError("the API needs two different, non-empty tokens")
    limiter = _Limiter(rate_limit or RateLimit())
    open_streams = 0
    assets = _Assets(service)
    tokens = {token.encode(): "full", readonly_token.encode(): "readonly"}

    def role_of(presented: str) -> str | None:
        found = None
        for known, role in tokens.items():
            if hmac.compare_digest(presented.encode(), known):  # every one compared: no early exit
                found = role
        return found

    async def authorize(
        request: Request,
        creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> str:
        role = role_of(creds.credentials) if creds is not None else None
        client = request.client.host if request.client else "?"
        wait = limiter.take(role or f"anon:{client}")
        if wait > 0:
            raise ApiProblem(
                429,
                "rate_limited",
                f"too many requests; retry in {wait:.1f} s",
                extra={"retry_after": math.ceil(wait)},
            )
        if role is None:
            what = "missing" if creds is None else "wrong"
            raise ApiProblem(
                401, "unauthorized", f"{what} bearer token (Authorization: Bearer <api.token>)"
            )
        if role == "readonly" and request.method not in _READ_METHODS:
            raise ApiProblem(403, "forbidden", "the read-only token may only GET")
        route = request.scope.get("route")
        if route is not None:  # a misspelt parameter is an error, not silently ignored
            known = {f.alias for f in route.dependant.query_params}
            unknown = sorted(set(request.query_params) - known)
            if unknown:
                name = unknown[0][:40]
                raise _invalid(
                    f"query.{name}",
                    f"unknown parameter; {request.url.path} takes "
                    + (", ".join(sorted(known)) or "none"),
                )
            for name in sorted(known):  # every parameter here is one value
                if len(request.query_params.getlist(name)) > 1:
                    raise _invalid(f"query.{name}", "given more than once")
        return role

    app = FastAPI(
        title="KOFO node API",
        version=__version__,
        summary="Trade, quote, watch swaps and the ledger on a KOFO node.",
        description=(
            "REST + WebSocket API of a KOFO node. Authenticate with `Authorization: Bearer "
            "<token>` (the node home's `api.token`; `api.readonly.token` may only GET). Amounts "
            "are integers in base units; a request may give a decimal string in the asset's "
            "unit instead. Errors are RFC 9457 problem+json with KOFO's `code`. See docs/api.md."
        ),
        openapi_url="/v1/openapi.json",
        docs_url=None,
        redoc_url=None,
        responses=_ERRORS,
    )

    @app.exception_handler(ApiProblem)
    async def _on_problem(request: Request, exc: ApiProblem) -> Response:
        headers = None
        if exc.status == 429:
            headers = {"Retry-After": str(exc.extra.get("retry_after", 1))}
        if exc.status == 401:
            headers = {"WWW-Authenticate": "Bearer"}
        return _problem(exc.status, exc.code, exc.detail, headers, **exc.extra)

    @app.exception_handler(KofoError)
    async def _on_kofo(request: Request, exc: KofoError) -> Response:
        retryable = bool(getattr(exc, "retryable", False))
        return _problem(status_of(exc.code, retryable=retryable), exc.code, _kofo_detail(exc))

    @app.exception_handler(RequestValidationError)
    async def _on_invalid(request: Request, exc: RequestValidationError) -> Response:
        errors = []
        for e in exc.errors():
            loc = tuple(e.get("loc", ()))
            if e.get("type") == "json_invalid":
                return _problem(400, "malformed_json", "the request body is not valid JSON")
            message = str(e.get("msg", "invalid"))
            if loc and str(loc[-1]) in _UNION_BRANCHES:  # the branch pydantic tried, not a field
                loc, message = loc[:-1], _AMOUNT_HINT
            errors.append({"field": _field_name(loc), "message": message})
        seen: dict[str, str] = {}
        for err in errors:
            seen.setdefault(err["field"], err["message"])
        detail = "; ".join(f"{f}: {m}" for f, m in seen.items()) or "invalid request"
        return _problem(
            422,
            "invalid_input",
            detail,
            errors=[{"field": f, "message": m} for f, m in seen.items()],
        )

    @app.exception_handler(StarletteHTTPException)
    async def _on_http(request: Request, exc: StarletteHTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "bad_request")
        detail = {404: f"no route {request.url.path}", 405: f"{request.method} not allowed"}
        return _problem(
            exc.status_code,
            code,
            detail.get(exc.status_code, str(exc.detail)),
            dict(exc.headers) if exc.headers else None,
        )

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(authorize)])

    @v1.get(
        "/info",
        summary="Node info",
        description="The node's identity, version, ledger and chain heights, peer count.",
        responses=_ok(
            {
                "name": "kofo",
                "node_id": _NODE_ID,
                "version": __version__,
                "p2p": "127.0.0.1:9730",
                "ledger_url": "http://127.0.0.1:26657",
                "ledger_height": 1_204,
                "ledger_error": "",
                "chains": [{"chain": "btc", "height": 312, "error": ""}],
                "peers": 3,
                "started_at": 1_795_000_000,
                "addresses": {"btc": "bcrt1q0000000000000000000000000000000000000"},
                "bond": {
                    "configured": 10**18,
                    "vault": 10**18,
                    "attested": 10**18,
                    "min_bond": 0,
                    "quoting": True,
                    "error": "",
                },
            }
        ),
    )
    async def get_info() -> NodeInfo:
        return await service.info()

    @v1.get(
        "/health",
        summary="Health",
        description="`ok` when the ledger and every chain answer, else `degraded` (still 200).",
        responses=_ok({"status": "ok", "ledger": True, "chains": {"btc": True}, "peers": 3}),
    )
    async def get_health() -> Health:
        info = await service.info()
        chains = {c.chain: c.height is not None for c in info.chains}
        ledger = info.ledger_height is not None
        ok = ledger and all(chains.values())
        return Health(
            status="ok" if ok else "degraded", ledger=ledger, chains=chains, peers=info.peers
        )

    @v1.get(
        "/balances",
        summary="Wallet balances",
        description="Per asset: base units available to quote or lock, and reserved by open "
        "quotes and swaps.",
        responses=_ok(
            {
                "items": [
                    {
                        "asset": "btc",
                        "symbol": "BTC",
                        "decimals": 8,
                        "available": 150_000_000,
                        "reserved": 1_000_000,
                    }
                ]
            }
        ),
    )
    async def get_balances() -> BalancePage:
        return BalancePage(items=await service.balances())

    @v1.get(
        "/offers",
        summary="List offers",
        description="Offers this node knows (`own=true`: only its own standing offers).",
        responses=_ok({"items": [_OFFER]}),
    )
    async def list_offers(own: bool = False) -> OfferPage:
        return OfferPage(items=await service.offers(own_only=own))

    @v1.post(
        "/offers",
        status_code=201,
        summary="Add an offer",
        description="Publish a standing offer as maker. `min_in`/`max_in` are in `buy`, `fee` "
        "in `sell`; amounts as integers (base units) or decimal strings.",
        responses={201: {"content": {"application/json": {"example": _OFFER}}}},
    )
    async def add_offer(body: OfferIn) -> OfferView:
        buy = await assets.resolve("body.buy", body.buy)
        sell = await assets.resolve("body.sell", body.sell)
        if buy.asset == sell.asset:
            raise _invalid("body.sell", f"must differ from buy ({body.buy!r})")
        min_in = _units("body.min_in", body.min_in, buy)
        max_in = _units("body.max_in", body.max_in, buy)
        if min_in > max_in:
            raise _invalid("body.min_in", f"({min_in}) must not exceed max_in ({max_in})")
        if max_in == 0:
            raise _invalid("body.max_in", "must be > 0")
        spec = OfferSpec(
            buy=buy.asset,
            sell=sell.asset,
            price_num=body.price_num,
            price_den=body.price_den,
            min_in=min_in,
            max_in=max_in,
            fee=_units("body.fee", body.fee, sell),
            partial=body.partial,
            ttl=body.ttl,
        )
        return await service.add_offer(spec)

    @v1.delete(
        "/offers/{offer_id}",
        status_code=204,
        summary="Withdraw an offer",
        description="Withdraw one of this node's offers; 404 if unknown, 409 if already gone.",
        responses={204: {"description": "withdrawn"}},
    )
    async def withdraw_offer(
        offer_id: Annotated[str, PathParam(pattern=_ID, examples=["a1" * 16])],
    ) -> Response:
        await service.withdraw_offer(offer_id)
        return Response(status_code=204)

    @v1.get(
        "/book",
        summary="Order book",
        description="The offers paying `sell` for `buy`, best price first, with depth: the "
        "cumulative amounts per price level.",
        responses=_ok(
            {
                "buy": "btc",
                "sell": "eth",
                "offers": [_OFFER],
                "depth": [
                    {
                        "price_num": 150_000_000_000,
                        "price_den": 1,
                        "price": "15",
                        "offers": 1,
                        "amount_in": 50_000_000,
                        "amount_out": 7_500_000_000_000_000_000,
                        "cum_in": 50_000_000,
                        "cum_out": 7_500_000_000_000_000_000,
                    }
                ],
            }
        ),
    )
    async def get_book(
        buy: Annotated[str, Query(pattern=_ASSET_NAME, examples=["BTC"])],
        sell: Annotated[str, Query(pattern=_ASSET_NAME, examples=["ETH"])],
    ) -> Book:
        b = await assets.resolve("query.buy", buy)
        s = await assets.resolve("query.sell", sell)
        if b.asset == s.asset:
            raise _invalid("query.sell", f"must differ from buy ({buy!r})")
        book = await service.book(b.asset, s.asset)
        return Book(
            buy=book.buy, sell=book.sell, offers=list(book.offers), depth=depth_of(book, b, s)
        )

    async def _trade_request(body: TradeIn) -> TradeRequest:
        sell = await assets.resolve("body.sell", body.sell)
        buy = await assets.resolve("body.buy", body.buy)
        if buy.asset == sell.asset:
            raise _invalid("body.buy", f"must differ from sell ({body.sell!r})")
        amount = _units("body.amount", body.amount, sell)
        if amount == 0:
            raise _invalid("body.amount", "must be > 0")
        return TradeRequest(
            sell=sell.asset,
            amount=amount,
            buy=buy.asset,
            min_receive=_units("body.min_receive", body.min_receive, buy),
            deadline_s=body.deadline_s,
            window_s=body.window_s,
        )

    _quote = {
        "quote_id": "f0" * 16,
        "sell": "btc",
        "amount_in": 1_000_000,
        "buy": "eth",
        "receive": 149_700_000_000_000_000,
        "hops": 2,
        "valid_until_ms": 1_795_000_030_000,
    }

    @v1.post(
        "/quotes",
        summary="Ask for quotes",
        description="Ask the network what it would deliver for this trade (collects quotes for "
        "at most `window_s` seconds, less once every maker of the node's book has answered); "
        "best first. Nothing is committed.",
        responses=_ok({"items": [_quote]}),
    )
    async def post_quotes(body: TradeIn) -> QuotePage:
        return QuotePage(items=await service.quotes(await _trade_request(body)))

    @v1.post(
        "/trades",
        status_code=202,
        summary="Start a trade",
        description="Start a taker trade and return at once (state `quoting`); follow it with "
        "`GET /v1/trades/{id}` or the event stream (kind `trade`).",
        responses={202: {"content": {"application/json": {"example": _TRADE}}}},
    )
    async def post_trade(body: TradeIn) -> TradeView:
        return await service.create_trade(await _trade_request(body))

    @v1.get(
        "/trades",
        summary="List trades",
        description="This node's trades, newest first; page with `before` = the previous "
        "page's `next`.",
        responses=_ok({"items": [_TRADE], "next": None}),
    )
    async def list_trades(limit: Limit = 50, before: Before = None) -> TradePage:
        items = await service.trades(limit=limit, before=before)
        nxt = items[-1].created_at if len(items) >= limit else None
        return TradePage(items=items, next=nxt)

    @v1.get(
        "/trades/{trade_id}",
        summary="Show a trade",
        description="One trade with every phase it went through. A settling trade's "
        "`confirms` phases give each lock and redeem (`tx`: lock, redeem or refund; `by`: "
        "taker or maker) on its `chain` with its `txid` and its `confirmations` of the "
        "`required` depth, one phase per new count (docs/node.md, Taker).",
        responses=_ok(_TRADE_SETTLING),
    )
    async def get_trade(trade_id: TradeId) -> TradeView:
        return await service.trade(trade_id)

    @v1.post(
        "/trades/{trade_id}/cancel",
        summary="Cancel a trade",
        description="Cancel a trade before its order is committed; 409 once committed.",
        responses=_ok({**_TRADE, "state": "cancelled"}),
    )
    async def cancel_trade(trade_id: TradeId) -> TradeView:
        return await service.cancel_trade(trade_id)

    @v1.get(
        "/swaps",
        summary="List swaps",
        description="Swaps in this node's journal, most recently updated first; page with "
        "`before` = the previous page's `next`.",
        responses=_ok({"items": [_SWAP], "next": None}),
    )
    async def list_swaps(limit: Limit = 50, before: Before = None) -> SwapPage:
        items = await service.swaps(limit=limit, before=before)
        nxt = items[-1].updated_at if len(items) >= limit else None
        return SwapPage(items=items, next=nxt)

    @v1.get(
        "/swaps/{swap_id}",
        summary="Show a swap",
        description="One swap: both legs (addresses, amounts, expiries, txids, confirmations) "
        "and every event.",
        responses=_ok(_SWAP),
    )
    async def get_swap(
        swap_id: Annotated[str, PathParam(pattern=_ID, examples=["5d" * 32])],
    ) -> SwapView:
        return await service.swap(swap_id)

    @v1.get(
        "/ledger/orders",
        summary="Ledger orders",
        description="Settlement orders on the ledger this node is a party to, newest first.",
        responses=_ok({"items": [_ORDER]}),
    )
    async def ledger_orders(limit: Limit = 50) -> LedgerOrderPage:
        return LedgerOrderPage(items=await service.ledger_orders(limit=limit))

    @v1.get(
        "/ledger/orders/{order_id}",
        summary="Show a ledger order",
        description="One settlement order: its legs, status and each leg's outcome.",
        responses=_ok(_ORDER),
    )
    async def ledger_order(
        order_id: Annotated[str, PathParam(pattern=_ID, examples=["c4" * 32])],
    ) -> LedgerOrderView:
        return await service.ledger_order(order_id)

    @v1.get(
        "/ledger/fees",
        summary="Own fee shares",
        description="This node's fee shares as relay or provider, decrypted with its key.",
        responses=_ok(
            {"items": [{"order_id": "c4" * 32, "role": "relay", "asset": "btc", "amount": 300}]}
        ),
    )
    async def ledger_fees() -> FeeSharePage:
        return FeeSharePage(items=await service.fee_shares())

    @v1.post(
        "/ledger/fees/withdraw",
        summary="Withdraw own fees",
        description="Withdraw this node's whole fee balance in `asset` (decrypted with its "
        "key, revealed to the ledger with a proof; each withdrawal once); 409 when there is "
        "none.",
        responses=_ok({"asset": "btc", "amount": 630, "payout_address": "bcrt1q..."}),
    )
    async def withdraw_fees(body: FeeWithdrawalIn) -> FeeWithdrawalView:
        asset = await assets.resolve("body.asset", body.asset)
        amount = await service.withdraw_fees(asset.asset, body.payout_address)
        return FeeWithdrawalView(asset.asset, amount, body.payout_address)

    @v1.get(
        "/ledger/importance",
        summary="Importance ranking",
        description="Nodes by ledger importance (points, penalties, bond), highest first.",
        responses=_ok(
            {
                "items": [
                    {
                        "node_id": _NODE_ID,
                        "importance": 120,
                        "points": 130,
                        "penalties": 10,
                        "bond": 1_000_000,
                    }
                ]
            }
        ),
    )
    async def ledger_importance(limit: Limit = 50) -> ImportancePage:
        return ImportancePage(items=await service.importance(limit=limit))

    @v1.get(
        "/ledger/evidence",
        summary="Evidence",
        description="Misbehaviour evidence recorded on the ledger (late locks, bad orders).",
        responses=_ok(
            {
                "items": [
                    {
                        "order_id": "c4" * 32,
                        "kind": "late_lock",
                        "accused": _NODE_ID,
                        "height": 1_250,
                        "detail": {"leg": 1},
                    }
                ]
            }
        ),
    )
    async def ledger_evidence(limit: Limit = 50) -> EvidencePage:
        return EvidencePage(items=await service.evidence(limit=limit))

    @v1.get(
        "/peers",
        summary="Peers",
        description="Peers this node is connected to.",
        responses=_ok(
            {
                "items": [
                    {"node_id": _NODE_ID, "address": "127.0.0.1:9730", "inbound": False, "score": 0}
                ]
            }
        ),
    )
    async def get_peers() -> PeerPage:
        return PeerPage(items=await service.peers())

    @v1.get(
        "/events",
        summary="Events (page)",
        description="Persisted events after seq `after`, oldest first. The WebSocket "
        "`/v1/events?after=&kinds=` streams the same events live.",
        responses=_ok({"items": [_EVENT], "next": 42}),
    )
    async def get_events(
        after: Annotated[int, Query(ge=0, le=2**62)] = 0,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
    ) -> EventPage:
        items = await service.events(after=after, limit=limit)
        return EventPage(items=items, next=items[-1].seq if items else after)

    @v1.get(
        "/events/last",
        summary="Last event seq",
        description="The seq of the newest persisted event (0 when none): subscribe with "
        "`after` = this to receive only what happens from now on.",
        responses=_ok({"seq": 42}),
    )
    async def get_last_seq() -> LastSeq:
        return LastSeq(seq=await last_seq(service))

    app.include_router(v1)

    @app.websocket("/v1/events")
    async def events_ws(websocket: WebSocket) -> None:
        nonlocal open_streams
        params = websocket.query_params
        presented, subprotocol = None, None
        header = websocket.headers.get("authorization", "")
        if header[:7].lower() == "bearer ":
            presented = header[7:].strip()
        for proto in websocket.scope.get("subprotocols", []):
            if proto.startswith(WS_SUBPROTOCOL_PREFIX):
                presented, subprotocol = proto[len(WS_SUBPROTOCOL_PREFIX) :], proto
        client = websocket.client.host if websocket.client else "?"
        role = role_of(presented) if presented else None
        refusal: tuple[int, str] | None = None
        kinds = {k for k in params.get("kinds", "").split(",") if k}
        unknown = kinds - set(EVENT_KINDS)
        after = -1
        with contextlib.suppress(ValueError):
            after = int(params.get("after", "0"))
        if limiter.take(role or f"anon:{client}") > 0:
            refusal = (4429, "rate_limited: too many requests")
        elif role is None:
            refusal = (4401, "unauthorized: missing or wrong bearer token")
        elif not 0 <= after <= 2**62:
            refusal = (4422, "invalid_input: after must be an event seq >= 0")
        elif unknown:
            refusal = (4422, f"invalid_input: unknown kinds {','.join(sorted(unknown))}"[:120])
        elif open_streams >= max_streams:
            refusal = (4429, f"rate_limited: {max_streams} event streams are open; retry later")
        # Accept, then close with a code the client can read (4000 + the HTTP status): a
        # refusal before the handshake reaches a client as a bare HTTP 403, for any reason.
        await websocket.accept(subprotocol=subprotocol)
        if refusal is not None:
            await websocket.close(*refusal)
            return
        open_streams += 1
        gone = asyncio.ensure_future(_until_disconnect(websocket))
        try:
            while not gone.done():
                waiter = asyncio.ensure_future(service.wait_events(after=after, timeout=event_wait))
                await asyncio.wait({waiter, gone}, return_when=asyncio.FIRST_COMPLETED)
                if not waiter.done():
                    waiter.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await waiter
                    break
                for event in waiter.result():
                    after = event.seq
                    if kinds and event.kind not in kinds:
                        continue
                    await websocket.send_text(
                        json.dumps(
                            {
                                "seq": event.seq,
                                "kind": event.kind,
                                "at": event.at,
                                "data": event.data,
                            }
                        )
                    )
        except (WebSocketDisconnect, RuntimeError, OSError):
            pass  # the client went away mid-send; it resumes from its last seq
        finally:
            open_streams -= 1
            gone.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await gone

    if importlib.util.find_spec("kofo.node.dashboard") is not None:
        importlib.import_module("kofo.node.dashboard").mount(app)

    app.add_middleware(_BodyLimit, limit=max_body)  # type: ignore[arg-type]
    app.add_middleware(_Guard)  # type: ignore[arg-type]
    return app


async def _until_disconnect(websocket: WebSocket) -> None:
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return


# -- serving -------------------------------------------------------------------------------------


def app_for_home(service: NodeService, config: NodeConfig, **kwargs: Any) -> FastAPI:
    """:func:`create_app` with the home's tokens, created if the home predates them
    (:func:`ensure_tokens`: 0600, in the 0700 home)."""
    tokens = ensure_tokens(config.home)
    return create_app(service, token=tokens.token, readonly_token=tokens.readonly_token, **kwargs)


def uvicorn_config(app: FastAPI, config: NodeConfig, **kwargs: Any) -> uvicorn.Config:
    """How the daemon serves the app: on ``[api] bind``, with TLS when configured (the config
    refuses a non-loopback bind without it), no access log (paths carry ids, not secrets, but
    the log is the node's, not a request journal). ``kwargs`` override (``log_level``...)."""
    if config.api_tls is None and not _loopback(config.api.host):
        raise ConfigError(f"[api] bind {config.api} is not loopback and no TLS is configured")
    options: dict[str, Any] = {
        "host": config.api.host,
        "port": config.api.port,
        "ws": "websockets-sansio",
        "lifespan": "off",
        "access_log": False,
        "log_level": "warning",
        "server_header": False,
        # kofo.asgi's deadlines: uvicorn alone never drops a request trickled in (slowloris).
        "http": deadline_protocol(API_LIMITS),
        "h11_max_incomplete_event_size": MAX_HEAD,
    }
    if config.api_tls is not None:
        options["ssl_certfile"] = str(config.api_tls.cert)
        options["ssl_keyfile"] = str(config.api_tls.key)
    options.update(kwargs)
    return uvicorn.Config(app, **options)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# -- the OpenAPI file ----------------------------------------------------------------------------

OPENAPI_PATH = Path(__file__).resolve().parents[3] / "docs" / "openapi.json"


def openapi_document() -> dict[str, Any]:
    """The spec :func:`create_app` serves (independent of the service behind it)."""
    app = create_app(cast(NodeService, _NoService()), token="0" * 64, readonly_token="1" * 64)
    return app.openapi()


def openapi_text() -> str:
    return json.dumps(openapi_document(), indent=2, sort_keys=True) + "\n"


class _NoService:
    """Enough of a NodeService to build the app for its spec; never called."""

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(name)


def main(argv: list[str]) -> int:
    if argv[1:] != ["--write-openapi"]:
        print("usage: python -m kofo.node.api --write-openapi", file=sys.stderr)
        return 2
    OPENAPI_PATH.write_text(openapi_text())
    print(f"wrote {OPENAPI_PATH}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
