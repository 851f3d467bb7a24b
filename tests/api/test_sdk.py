"""The SDK (sync and async) against the real server: typed views back, one exception class
per error code, from_home reading the bind and the token."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from kofo.node.api import RateLimit
from kofo.node.api_tokens import READONLY_TOKEN_FILE, TOKEN_FILE
from kofo.node.config import render_config
from kofo.node.service import OfferSpec
from kofo.node.service import Unavailable as ServiceUnavailable
from kofo.sdk import (
    AsyncClient,
    Client,
    Conflict,
    Forbidden,
    InvalidRequest,
    NotFound,
    OfferView,
    RateLimited,
    ServerError,
    TradeView,
    Unauthorized,
    Unavailable,
)
from tests.api.conftest import Served, serve
from tests.api.memservice import BTC_ADDRESS

pytestmark = pytest.mark.timeout(60)


def make_home(tmp: Path, url: str, token: str, readonly: str) -> Path:
    home = tmp / "home"
    home.mkdir(mode=0o700)
    port = url.rsplit(":", 1)[1]
    (home / "config.toml").write_text(
        render_config(name="t", ledger_url="http://127.0.0.1:1", api_bind=f"127.0.0.1:{port}")
    )
    for name, value in ((TOKEN_FILE, token), (READONLY_TOKEN_FILE, readonly)):
        path = home / name
        path.write_text(value + "\n")
        path.chmod(0o600)
    return home


def test_sync_client_round_trip(served: Served, tmp_path: Path) -> None:
    home = make_home(tmp_path, served.url, served.token, served.readonly)
    with Client.from_home(home) as node:
        assert node.info().addresses["btc"] == BTC_ADDRESS
        assert node.health().status == "ok"
        assert {b.symbol for b in node.balances()} == {"BTC", "LTC", "ETH", "DUSD"}
        offer = node.add_offer(
            buy="BTC",
            sell="ETH",
            price_num=150_000_000_000,
            price_den=1,
            min_in="0.001",
            max_in="0.5",
        )
        assert isinstance(offer, OfferView) and offer.spec.max_in == 50_000_000
        assert node.offers(own=True) == [offer]
        book = node.book("btc", "eth")
        assert book.offers == (offer,) and book.depth[0].price == "15"
        trade = node.create_trade(sell="ETH", amount="1", buy="BTC", min_receive=5)
        assert isinstance(trade, TradeView) and trade.amount == 10**18
        served.service.advance(trade.trade_id, "committed", height=77, order_id="c4" * 32)
        again = node.trade(trade.trade_id)
        assert again.state == "committed" and again.height == 77
        assert [p.phase for p in again.phases] == ["quoting", "committed"]
        assert node.trades(limit=10) == [again]
        swap = served.service.add_swap()
        assert node.swap(swap.swap_id) == swap
        assert node.swaps() == [swap]
        assert [e.kind for e in node.events_page(after=0)] == ["offer", "trade", "trade", "swap"]
        assert node.last_event_seq() == 4
        node.withdraw_offer(offer.offer_id)
        assert node.offers() == []
        assert node.peers()[0].address == "127.0.0.1:9740"
        assert node.importance()[0].importance == 120


def test_errors_are_typed_with_codes(served: Served) -> None:
    with Client(served.url, served.token) as node:
        with pytest.raises(NotFound) as nf:
            node.trade("nope")
        assert nf.value.code == "not_found" and nf.value.status == 404
        t = node.create_trade(sell="BTC", amount=1000, buy="ETH")
        served.service.advance(t.trade_id, "committed")
        with pytest.raises(Conflict):
            node.cancel_trade(t.trade_id)
        with pytest.raises(InvalidRequest) as bad:
            node.create_trade(sell="BTC", amount="0.123456789", buy="ETH")
        assert bad.value.fields == ["body.amount"] and bad.value.code == "invalid_input"
        served.service.fail_next = ServiceUnavailable("ledger down")
        with pytest.raises(Unavailable) as down:
            node.ledger_orders()
        assert down.value.retryable and "ledger down" in str(down.value)
        served.service.fail_next = RuntimeError("hidden")
        with pytest.raises(ServerError):
            node.info()
    with Client(served.url, served.readonly) as ro:
        assert ro.balances()
        with pytest.raises(Forbidden):
            ro.create_trade(sell="BTC", amount=1000, buy="ETH")
    with Client(served.url, "ee" * 32) as wrong, pytest.raises(Unauthorized):
        wrong.info()


def test_rate_limited_carries_retry_after(tmp_path: Path) -> None:
    s, thread = serve(tmp_path, rate_limit=RateLimit(per_second=0.01, burst=1))
    try:
        with Client(s.url, s.token) as node:
            node.balances()
            with pytest.raises(RateLimited) as limited:
                node.balances()
            assert limited.value.retry_after >= 1
    finally:
        thread.stop()
        s.service.events_log.close()


def test_unreachable_node_is_unavailable() -> None:
    with Client("http://127.0.0.1:9", "aa" * 32, timeout=2) as node, pytest.raises(Unavailable):
        node.info()


def test_async_client(served: Served) -> None:
    served.service.add_foreign_offer(OfferSpec("eth", "btc", 1, 10_000_000_000, 1, 10**20))

    async def main() -> None:
        async with AsyncClient(served.url, served.token) as node:
            quotes = await node.quotes(sell="ETH", amount="1", buy="BTC")
            assert [q.receive for q in quotes] == [10**18 // 10_000_000_000]
            trade = await node.create_trade(sell="ETH", amount="1", buy="BTC")
            last = await node.last_event_seq()
            served.service.advance(trade.trade_id, "redeemed", receive=quotes[0].receive)
            stream = node.events(after=last, kinds=("trade",))
            event = await anext(stream)
            await stream.aclose()  # type: ignore[attr-defined]
            assert event.data["trade_id"] == trade.trade_id
            assert event.data["phase"] == "redeemed"
            assert (await node.trade(trade.trade_id)).state == "redeemed"
            with pytest.raises(NotFound):
                await node.swap("x")

    asyncio.run(main())


def test_the_ten_lines_in_docs_api_md_trade(served: Served, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    from tests.api.test_cli_api import drive

    doc = (Path(__file__).parents[2] / "docs" / "api.md").read_text()
    code = doc.split("## The SDK in ten lines", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    assert len([line for line in code.strip().splitlines() if line.strip()]) <= 12
    home = make_home(tmp_path, served.url, served.token, served.readonly)
    served.service.add_foreign_offer(OfferSpec("btc", "eth", 150_000_000_000, 1, 1, 10**9))
    thread = drive(served, [("committed", {"height": 9}), ("redeemed", {"receive": 15 * 10**16})])
    exec(compile(code.replace('"~/.kofo"', repr(str(home))), "docs/api.md", "exec"), {})
    thread.join(10)
    assert capsys.readouterr().out.strip() == f"redeemed {15 * 10**16}"


def test_amounts_as_decimal_and_never_float(served: Served) -> None:
    from decimal import Decimal

    with Client(served.url, served.token) as node:
        t = node.create_trade(sell="BTC", amount=Decimal("0.0100"), buy="ETH")
        assert t.amount == 1_000_000
        with pytest.raises(InvalidRequest) as bad:
            node.create_trade(sell="BTC", amount=0.01, buy="ETH")  # type: ignore[arg-type]
        assert bad.value.fields == ["body.amount"]
        with pytest.raises(InvalidRequest):
            node.create_trade(sell="BTC", amount=True, buy="ETH")
    assert len(served.service.trades_by_id) == 1  # the refused ones never left the client
