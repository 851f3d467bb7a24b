"""A full trade through the SDK and through `kofo trade`, against the real daemon's API: the
devnet and three in-process daemons (taker, relay, maker) from the daemon's tests, the
taker's app served by uvicorn on 127.0.0.1. Every other route answers the daemon's real views.

Needs the daemon (h/daemon: kofo.node.daemon.Node implementing NodeService, and its
tests.node.test_daemon harness); skipped until that branch is merged with this one."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
from pathlib import Path

import pytest
import uvicorn
from typer.testing import CliRunner

from kofo.node.api import app_for_home, load_tokens
from kofo.node.service import OfferSpec
from kofo.sdk import TERMINAL_TRADE_STATES, AsyncClient
from kofo.sdk.errors import KofoApiError

harness = pytest.importorskip(
    "tests.node.test_daemon", reason="needs the node daemon (h/daemon) merged"
)

pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]


def test_trades_through_the_sdk_and_the_cli_end_redeemed(tmp_path: Path) -> None:
    asyncio.run(_main(tmp_path))


async def _main(tmp_path: Path) -> None:
    async with harness.network(tmp_path) as net:
        taker = net.nodes["taker"]
        server = uvicorn.Server(
            uvicorn.Config(
                app_for_home(taker, taker.config),
                host="127.0.0.1",
                port=0,
                log_level="warning",
                lifespan="off",
                ws="websockets-sansio",
            )
        )
        server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
        serving = asyncio.ensure_future(server.serve())
        try:
            await harness.until(lambda: server.started, "the API to listen")
            port = server.servers[0].sockets[0].getsockname()[1]
            await _sdk_trade(taker, f"http://127.0.0.1:{port}")
            await _cli_trade(taker.config.home, port)
            await _readme(net, port)
        finally:
            server.should_exit = True
            await serving


async def _sdk_trade(taker: object, url: str) -> None:
    token = load_tokens(taker.config.home).token  # type: ignore[attr-defined]
    async with AsyncClient(url, token, timeout=60) as node:
        book = await harness.until(
            lambda: _nonempty(node.book("BTC", "ETH")), "the maker's offer in the book"
        )
        assert book.depth[0].cum_in == book.offers[0].spec.max_in
        quotes = await node.quotes(sell="BTC", amount="0.01", buy="ETH")
        assert quotes and quotes[0].hops >= 1
        after = await node.last_event_seq()
        trade = await node.create_trade(
            sell="BTC", amount="0.01", buy="ETH", min_receive=harness.SATS * harness.PRICE // 2
        )
        stream = node.events(after=after, max_retries=5)
        seqs = []
        async for event in stream:
            seqs.append(event.seq)
            trade = await node.trade(trade.trade_id)
            if trade.state in TERMINAL_TRADE_STATES:
                break
        await stream.aclose()  # type: ignore[attr-defined]
        assert trade.state == "redeemed", (trade.error, [p.phase for p in trade.phases])
        assert seqs == list(range(after + 1, after + 1 + len(seqs)))  # none lost or repeated
        assert trade.order_id and trade.height
        swap = await node.swap(trade.order_id)
        assert swap.state == "redeemed" and len(swap.legs) == 2
        order = await node.ledger_order(trade.order_id)
        assert order.order_id == trade.order_id
        for call in (
            node.info,
            node.health,
            node.balances,
            node.offers,
            node.trades,
            node.swaps,
            node.ledger_orders,
            node.fee_shares,
            node.importance,
            node.evidence,
            node.peers,
        ):
            await call()  # a view the API cannot serve would be a 500 (ServerError)
        # the taker earned no fee share: the daemon's withdrawal says so (the maker's own
        # withdrawal, decrypted and committed once, is tests/node/test_daemon.py's)
        with pytest.raises(KofoApiError) as none:
            await node.withdraw_fees("BTC", "bcrt1qpayout")
        assert none.value.status == 409 and "no fee balance" in str(none.value), none.value


async def _nonempty(book_call):  # type: ignore[no-untyped-def]
    book = await book_call
    return book if book.offers else None


async def _cli_trade(home: Path, port: int) -> None:
    config = home / "config.toml"
    text = config.read_text()
    config.write_text(text.replace('bind = "127.0.0.1:9731"', f'bind = "127.0.0.1:{port}"'))
    from kofo.cli import app

    result = await asyncio.to_thread(
        CliRunner().invoke,
        app,
        [
            "trade",
            "--sell",
            "BTC:0.01",
            "--buy",
            "ETH",
            "--min-receive",
            "0.005",
            "--home",
            str(home),
        ],
        env={"COLUMNS": "80"},
    )
    assert result.exit_code == 0, result.stdout + result.stderr
    for text in ("claim sent", "quote(s) in", "order committed at height", "both legs redeemed"):
        assert text in result.stdout, (text, result.stdout)
    assert "\nreceived " in result.stdout and " ETH" in result.stdout.rsplit("received", 1)[1]


README = Path(__file__).resolve().parents[2] / "README.md"


def _readme_blocks(lang: str) -> list[str]:
    """The README's fenced ``lang`` blocks in its API section."""
    text = README.read_text()
    section = text.split("## Using a node: the API, the SDK, the dashboard", 1)[1].split("\n## ")[0]
    return re.findall(rf"```{lang}\n(.*?)```", section, re.S)


async def _readme(net: object, port: int) -> None:
    """The README's curl lines and its ten-line SDK trade, run as written against this node:
    only its home (``~/.kofo``) and, for curl, the default port differ. A maker offering the
    README's price (15 ETH per BTC) joins first, so its ``min_receive`` of 0.14 ETH is met."""
    taker, maker = net.nodes["taker"], net.nodes["maker"]  # type: ignore[attr-defined]
    home = str(taker.config.home)
    config = taker.config.home / "config.toml"  # the API is where this test serves it
    config.write_text(
        re.sub(r'bind = "127\.0\.0\.1:\d+"', f'bind = "127.0.0.1:{port}"', config.read_text())
    )
    await maker.add_offer(OfferSpec("btc", "eth", 15 * harness.PRICE, 1, 10_000, 10 * harness.SATS))
    url = f"http://127.0.0.1:{port}"
    async with AsyncClient(url, load_tokens(taker.config.home).token, timeout=60) as node:

        async def priced() -> object:
            book = await node.book("BTC", "ETH")
            return any(o.spec.price_num == 15 * harness.PRICE for o in book.offers)

        await harness.until(priced, "the README's maker in the taker's book")

    (curl,) = _readme_blocks("sh")
    assert "~/.kofo" in curl and "9731" in curl
    script = curl.replace("~/.kofo", home).replace("9731", str(port))
    out = await asyncio.to_thread(
        subprocess.run,
        ["bash", "-euo", "pipefail", "-c", script.replace("curl -s ", "curl -sf ")],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "NO_PROXY": "127.0.0.1"},
    )
    assert out.returncode == 0, out.stderr
    balances, trade = out.stdout.replace("}{", "}\n{").splitlines()
    assert '"items"' in balances and '"asset":"btc"' in balances.replace(" ", "")
    assert '"trade_id"' in trade, trade

    (sdk,) = _readme_blocks("python")
    api_doc = (README.parent / "docs" / "api.md").read_text()
    assert curl in api_doc and sdk in api_doc, "docs/api.md shows the same curl and SDK lines"
    assert len([line for line in sdk.splitlines() if line.strip()]) <= 12
    assert 'from_home("~/.kofo")' in sdk
    code = sdk.replace('from_home("~/.kofo")', f"from_home({home!r})")
    printed: list[tuple[object, ...]] = []
    env = {"__name__": "readme", "print": lambda *a: printed.append(a)}
    await asyncio.to_thread(exec, compile(code, "README.md", "exec"), env)  # asyncio.run(main())
    assert printed and printed[-1][0] == "redeemed", printed
    assert isinstance(printed[-1][1], int) and printed[-1][1] >= 14 * 10**16, printed
