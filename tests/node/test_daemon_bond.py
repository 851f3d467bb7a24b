"""The maker's bond, locked by the daemon (issue 14 trust bug 4: the daemon never called
``ensure_bond``). In-process daemons on ``kofo devnet``'s servers (``test_daemon``'s harness):
a maker with ``[bond] amount`` locks it in the devnet's bond vault at start, once across
restarts (the vault read first, the deposit journaled before it is sent, its nonce taken from
the wallet's nonce store); the bond shows in ``info`` (vault and ledger view); a maker whose
bond is not locked quotes nothing."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import pytest

from kofo.node.bonds import BOND_TX_FILE, vault_bond
from kofo.node.config import BondConfig, OfferConfig
from kofo.node.daemon import Node
from kofo.node.service import TradeRequest
from tests.node.test_daemon import PRICE, SATS, _line, _make_nodes, _node, until

pytestmark = [pytest.mark.timeout(300)]

BOND = 3 * 10**18  # wei


def test_a_maker_locks_its_bond_once_and_quotes_only_with_it(tmp_path: Path) -> None:
    asyncio.run(_bond(tmp_path))


async def _restart(node: Node, bond: BondConfig) -> Node:
    await node.stop()
    fresh = _node(replace(node.config, bond=bond), node.wallet)
    await fresh.start()
    return fresh


async def _bond(tmp_path: Path) -> None:
    offer = OfferConfig(
        buy="btc", sell="eth", price_num=PRICE, price_den=1, min_in=10_000, max_in=10 * SATS
    )
    devnet, nodes = await _make_nodes(tmp_path, ["taker", "maker"], {"maker": [offer]})
    taker, maker = nodes["taker"], nodes["maker"]
    vault = devnet.describe()["bond"]["vault"]
    want = TradeRequest(sell="btc", amount=SATS, buy="eth", min_receive=1)
    try:
        assert maker.config.bond.amount == 0
        await until(lambda: maker.state.registered, "registration")
        # a bond the node cannot lock (the [bond] vault is no vault: the HTLC contract):
        # no deposit, the reason shown, and no quote
        htlc = maker.config.chains["eth"].htlc_contract  # type: ignore[union-attr]
        maker = nodes["maker"] = await _restart(maker, BondConfig("eth", htlc, BOND))
        await _line([taker, maker])
        info = await until(lambda: _bond_error(maker), "the bond's failure in info")
        assert info.bond.configured == BOND and not info.bond.quoting
        await until(lambda: len(taker.exchange.book.pair("btc", "eth", 0)), "the offer")  # type: ignore[union-attr]
        assert await taker.quotes(want) == []

        # the vault configured: the bond is locked at start, and the maker quotes
        eth = maker.chains.adapters["eth"]  # type: ignore[union-attr]
        maker = nodes["maker"] = await _restart(maker, BondConfig("eth", vault, BOND))
        await _line([taker, maker])
        await until(lambda: maker.state.bond_vault == BOND, "the bond in the vault")
        assert await asyncio.to_thread(vault_bond, eth.w3, vault, maker.node_id) == BOND
        assert not (maker.config.home / BOND_TX_FILE).exists()  # the intent carried out
        info = await maker.info()
        assert info.bond is not None
        assert (info.bond.configured, info.bond.vault, info.bond.quoting) == (BOND, BOND, True)
        assert info.bond.error == ""
        quotes = await taker.quotes(want)
        assert quotes and quotes[0].receive > 0
        # the ledger's validators attest it: the ledger counts the bond too
        await until(lambda: maker.state.bond_attested == BOND, "the bond attested", 120)
        assert (await maker.info()).bond.attested == BOND  # type: ignore[union-attr]
        events = [e.data for e in await maker.events(limit=1000) if e.kind == "node"]
        assert [e["amount"] for e in events if e.get("event") == "bond_locked"] == [BOND]

        # a restart sends nothing: the vault is read first
        address = eth.account.address
        nonce = await asyncio.to_thread(eth.w3.eth.get_transaction_count, address)
        maker = nodes["maker"] = await _restart(maker, BondConfig("eth", vault, BOND))
        await until(lambda: maker.state.bond_vault == BOND, "the bond read after the restart")
        assert await asyncio.to_thread(eth.w3.eth.get_transaction_count, address) == nonce
        assert await asyncio.to_thread(vault_bond, eth.w3, vault, maker.node_id) == BOND
        assert (await maker.info()).bond.quoting  # type: ignore[union-attr]
    finally:
        for node in nodes.values():
            await node.stop()
        await asyncio.to_thread(devnet.stop)


async def _bond_error(node: Node):
    info = await node.info()
    return info if info.bond is not None and info.bond.error else None
