"""A malicious maker alone on a pair (or its sybils) sets the price a taker gets: a trade
takes the best quote, and one started without ``min_receive`` (the API's and the CLI's
default was 0) took any, down to 1 base unit for the whole amount sold. The daemon now
refuses to start a trade without a floor, naming the field."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import pytest

from kofo.errors import KofoError
from kofo.node.config import Endpoint, load_config
from kofo.node.daemon import Node
from kofo.node.devnet import start_devnet
from kofo.node.home import init_home
from kofo.node.service import TradeRequest
from kofo.wallet import NodeWallet
from tests.clearance.helpers import ledger_params

pytestmark = [pytest.mark.timeout(240)]

PASS = "price floor test passphrase"


def test_a_trade_without_a_price_floor_is_refused(tmp_path: Path) -> None:
    home = tmp_path / "taker"
    home.mkdir(mode=0o700)
    wallet = NodeWallet.create(home / "wallet.json", PASS)
    devnet = start_devnet(fund=[wallet.eth_account().address], ledger_params=ledger_params())
    try:
        desc = devnet.describe()
        init_home(
            home,
            PASS,
            name="t",
            ledger_url=desc["ledger"]["url"],
            chains=desc["chains"],
            force=True,
        )
        cfg = replace(load_config(home), p2p_listen=Endpoint("127.0.0.1", 0))
        node = Node(cfg, wallet, passphrase=PASS, paillier_bits=1024)

        async def run() -> None:
            await node.start()
            try:
                with pytest.raises(KofoError, match="min_receive") as refused:
                    await node.create_trade(TradeRequest(sell="eth", amount=10**15, buy="btc"))
                assert refused.value.code == "invalid_input"
                assert await node.trades() == []  # nothing started, nothing stored
                view = await node.create_trade(
                    TradeRequest(sell="eth", amount=10**15, buy="btc", min_receive=1)
                )
                assert view.state == "quoting"
                await node.cancel_trade(view.trade_id)
            finally:
                await node.stop()

        asyncio.run(run())
    finally:
        devnet.stop()
