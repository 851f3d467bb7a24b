"""Routed trades on real nodes (issue 14, "Real nodes in CI"): three :class:`Node` daemons in
one event loop (taker -- relay -- maker, the maker reached only through the relay) trade over
real chains and clear on a real **4-validator CometBFT** ledger running KOFO's ABCI app, each
validator observing the chains itself (``python -m kofo.node.validator --config``: read-only
adapters over the chains' RPC), so every leg's outcome on the ledger is attested by >2/3 of
the validators from what they saw, not reported by a party.

1. BTC on **btcd** (regtest) -> ETH on **geth --dev**;
2. LTC on **litecoind** (regtest) -> an ERC-20 (the test token, deployed on geth here).

Each ends ``redeemed`` on both sides with exact balances (each side gave its leg, got the
other's, paid its own chain fees; the relay's wallet does not move); the order is ``settled``
on the ledger with one attested outcome per leg (``redeemed`` each, the same on every
validator); the relay's and the maker's fee shares (decrypted with their own Paillier keys)
and the foundation's public balance add up to the order's protocol fee, the foundation's being
``foundation_bps`` (10 %) of it.

The module shares one geth (the session's), one btcd, one litecoind and one CometBFT testnet;
a miner thread makes a Bitcoin-like block every 0.5 s on btcd and litecoind (paying a miner
wallet that is no party: the parties' balances move only by the trade) and keeps geth's clock
going (geth --dev --dev.period 0 makes a block per transaction only, and an Ethereum leg's
expiry is in unix time). The chains stay short (a node indexes its Bitcoin-like chain from
genesis over RPC): redeem paths only, so CLTV's activation height does not matter here.

Measured on the shared 2-core machine, never idle (`uptime` load averages from other jobs):
the module in 165 s at load 24 (setup 52 s: geth, btcd, litecoind, four validators and their
apps; each test ~50 s, most of it its three daemons' start and registration; the trade itself
~20 s from create_trade to both sides redeemed), 185 s at load 12-32, 270 s at load 29-35,
410 s at load 27-38;
each test alone 100-114 s at load 13-15. Not measured on an idle machine; the ~4 min budget
holds only below a load of ~25.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from web3 import Web3

from kofo.clearance.consensus.testnet import LocalTestnet, free_base_port
from kofo.node.config import Endpoint, OfferConfig, load_config
from kofo.node.daemon import Node
from kofo.node.home import init_home
from kofo.node.service import TradeRequest
from kofo.node.trades import engine_legs
from kofo.settlement.chains.bitcoin.adapter import BitcoinAdapter
from kofo.settlement.chains.bitcoin.backend import RpcBackend
from kofo.settlement.chains.bitcoin.params import chain_params
from kofo.settlement.chains.bitcoin.rpc import RpcClient
from kofo.settlement.chains.bitcoin.wallet import HdWallet
from kofo.settlement.chains.ethereum.contract import deploy
from kofo.settlement.engine import CrashHook
from kofo.wallet import NodeWallet
from kofo.wire.codec import decode, encode
from tests.bitcoin.helpers import pay
from tests.clearance.helpers import ledger_params
from tests.conftest import require_binary
from tests.nodes import (
    BtcdNode,
    GethNode,
    LitecoindNode,
    discard_node_dir,
    start_btcd,
    start_litecoind,
)
from tests.swap.btc_helpers import expected_after, fees_paid, holdings

pytestmark = [pytest.mark.realnode, pytest.mark.slow, pytest.mark.timeout(300)]

PASS = "real node trades passphrase"
WAIT = 120.0
COINBASE_MATURITY = 100
SATS = 1_000_000  # 0.01 BTC / LTC sold
BTC_PRICE = 10**10  # wei per satoshi: 0.01 BTC -> 0.01 ETH
LTC_PRICE = 1  # token units (6 decimals) per litoshi: 0.01 LTC -> 1 token
TOKEN = "TUSD"
ETHER = 10**18
MINE_EVERY_S = 0.5


# -- the shared chains and ledger --------------------------------------------------------------


class Miner:
    """Blocks on the Bitcoin-like chains every :data:`MINE_EVERY_S` to a wallet that is no
    party, and a geth block as often (a dev-account self-transfer) so its clock moves."""

    def __init__(self, btcd: BtcdNode, ltcd: LitecoindNode, geth: GethNode) -> None:
        self.btcd, self.ltcd, self.geth = btcd, ltcd, geth
        self.btc_wallet = HdWallet(os.urandom(32), chain_params("btc", "regtest"))
        self.ltc_wallet = HdWallet(os.urandom(32), chain_params("ltc", "regtest"))
        self.ltc_address = self.ltc_wallet.address()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def mine(self) -> None:
        self.btcd.generate(1)
        self.ltcd.generate_to_address(1, self.ltc_address)
        self.geth.rpc(
            "eth_sendTransaction",
            {"from": self.geth.dev_account, "to": self.geth.dev_account, "value": "0x0"},
        )

    def start(self) -> None:
        def loop() -> None:
            while not self._stop.wait(MINE_EVERY_S):
                with contextlib.suppress(Exception):  # a busy node: the next round mines
                    self.mine()

        self._thread = threading.Thread(target=loop, name="miner", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)


@dataclass
class Chains:
    geth: GethNode
    btcd: BtcdNode
    ltcd: LitecoindNode
    htlc: str
    token: str
    miner: Miner
    btc_payer: BitcoinAdapter
    ltc_payer: BitcoinAdapter
    ledger: LocalTestnet

    def describe(self) -> dict[str, dict[str, Any]]:
        """The ``[chains.*]`` tables of a node (and a validator) config."""
        return {
            "btc": {
                "rpc_url": self.btcd.rpc_url,
                "rpc_user": self.btcd.rpc_user,
                "rpc_password": self.btcd.rpc_password,
                "network": "regtest",
                "dialect": "btcd",
                "cert_path": str(self.btcd.cert_path),
            },
            "ltc": {
                "rpc_url": self.ltcd.rpc_url,
                "rpc_user": self.ltcd.rpc_user,
                "rpc_password": self.ltcd.rpc_password,
                "network": "regtest",
            },
            "eth": {
                "rpc_url": self.geth.rpc_url,
                "htlc_contract": self.htlc,
                "chain_id": int(self.geth.rpc("eth_chainId"), 16),
                "tokens": {TOKEN: self.token},
            },
        }

    def w3(self) -> Web3:
        return Web3(Web3.HTTPProvider(self.geth.rpc_url, request_kwargs={"timeout": 30}))


def _validator_toml(chains: dict[str, dict[str, Any]]) -> str:
    lines = []
    for name, keys in chains.items():
        lines.append(f"[chains.{name}]")
        lines += [f"{k} = {v!r}".replace("'", '"') for k, v in keys.items() if k != "tokens"]
        if "tokens" in keys:
            lines.append(f"[chains.{name}.tokens]")
            lines += [f'{s} = "{a}"' for s, a in keys["tokens"].items()]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def chains(geth: GethNode) -> Iterator[Chains]:
    for name in ("btcd", "litecoind", "cometbft"):
        require_binary(name)
    root = Path(tempfile.mkdtemp(prefix="kofo-realtrades-"))
    stack = contextlib.ExitStack()
    try:
        payer_btc = HdWallet(os.urandom(32), chain_params("btc", "regtest"))
        btcd = stack.enter_context(start_btcd(root / "btcd", payer_btc.address()))
        btcd.generate(COINBASE_MATURITY + 10)  # ten mature 50 BTC coinbases to pay from
        ltcd = stack.enter_context(start_litecoind(root / "litecoind"))
        payer_ltc = HdWallet(os.urandom(32), chain_params("ltc", "regtest"))
        ltcd.generate_to_address(10, payer_ltc.address())
        miner = Miner(btcd, ltcd, geth)
        ltcd.generate_to_address(COINBASE_MATURITY, miner.ltc_address)
        btc_payer = BitcoinAdapter(
            RpcBackend(
                RpcClient(
                    btcd.rpc_url,
                    btcd.rpc_user,
                    btcd.rpc_password,
                    dialect="btcd",
                    cert_path=str(btcd.cert_path),
                )
            ),
            payer_btc,
        )
        ltc_payer = BitcoinAdapter(
            RpcBackend(RpcClient(ltcd.rpc_url, ltcd.rpc_user, ltcd.rpc_password)), payer_ltc
        )
        w3 = Web3(Web3.HTTPProvider(geth.rpc_url, request_kwargs={"timeout": 30}))
        htlc = deploy(w3, "HTLC", geth.dev_account)
        token = deploy(w3, "TestToken", geth.dev_account, "Test USD", TOKEN, 6)
        net = LocalTestnet(
            root / "ledger",
            4,
            base_port=free_base_port(4),
            params=ledger_params().as_map(),
            vote_extensions_height=1,
            tx_index=True,
            app_module="kofo.node.validator",
            app_args=["--config", str(root / "validator.toml")],
        )
        c = Chains(geth, btcd, ltcd, htlc, token, miner, btc_payer, ltc_payer, net)
        (root / "validator.toml").write_text(_validator_toml(c.describe()))
        net.create()
        stack.callback(net.stop)
        net.start_all(wait_height=2)  # past the first height that carries attestations
        miner.start()
        stack.callback(miner.stop)
        yield c
    finally:
        stack.close()
        discard_node_dir(root)


# -- the daemons -----------------------------------------------------------------------------


async def until(pred: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
    """Poll (bounded) until ``pred()`` is truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        got = pred()
        if asyncio.iscoroutine(got):
            got = await got
        if got:
            return got
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


def _fund(c: Chains, wallet: NodeWallet, home: Path, *, sats: dict[str, int], wei: int) -> None:
    """Pay the node's funding address(es) and wait until confirmed (bounded), so its
    balances stand still before the trade."""
    for chain, amount in sats.items():
        payer = c.btc_payer if chain == "btc" else c.ltc_payer
        script = wallet.bitcoin(chain, "regtest", home=home).identity.script_pubkey
        txid = pay(payer, script, [amount])
        deadline = time.monotonic() + WAIT
        while payer.tx_confirmations(txid) < 1:
            assert time.monotonic() < deadline, f"funding {txid} on {chain} never confirmed"
            time.sleep(0.2)
    if wei:
        c.geth.fund(wallet.eth_account().address, wei)


def _mint(c: Chains, to: str, units: int) -> None:
    w3 = c.w3()
    abi = [
        {
            "name": "mint",
            "type": "function",
            "stateMutability": "nonpayable",
            "inputs": [{"name": "to", "type": "address"}, {"name": "amount", "type": "uint256"}],
            "outputs": [],
        }
    ]
    token = w3.eth.contract(address=Web3.to_checksum_address(c.token), abi=abi)
    tx = token.functions.mint(Web3.to_checksum_address(to), units).transact(
        {"from": Web3.to_checksum_address(c.geth.dev_account)}
    )
    assert w3.eth.wait_for_transaction_receipt(tx)["status"] == 1


@contextlib.asynccontextmanager
async def network(
    c: Chains, tmp_path: Path, pair: tuple[str, str], offer: OfferConfig
) -> AsyncIterator[dict[str, Node]]:
    """taker -- relay -- maker on the chains of ``pair`` (Bitcoin-like, eth), each node's
    ledger client on another validator; the taker holds the Bitcoin-like coin, the maker
    ``offer``'s ``sell``."""
    coin = pair[0]
    desc = {name: keys for name, keys in c.describe().items() if name in pair}
    names = ["taker", "relay", "maker"]
    nodes: dict[str, Node] = {}
    for i, name in enumerate(names):
        home = tmp_path / name
        home.mkdir(mode=0o700)
        wallet = NodeWallet.create(home / "wallet.json", PASS)
        url = c.ledger.validators[i].rpc_url
        init_home(home, PASS, name=name, ledger_url=url, chains=desc, force=True)
        cfg = load_config(home)
        offers = (offer,) if name == "maker" else ()
        cfg = replace(cfg, p2p_listen=Endpoint("127.0.0.1", 0), offers=offers)
        if name == "taker":
            await asyncio.to_thread(_fund, c, wallet, home, sats={coin: 5 * SATS}, wei=ETHER // 10)
        elif name == "maker":
            await asyncio.to_thread(_fund, c, wallet, home, sats={coin: SATS}, wei=ETHER)
        nodes[name] = Node(
            cfg,
            wallet,
            passphrase=PASS,
            paillier_bits=1024,
            exchange_options={"target_degree": 0},
            crash=CrashHook(),
        )
    if offer.sell == TOKEN:
        await asyncio.to_thread(_mint, c, nodes["maker"].wallet.eth_account().address, 10**9)
    try:
        await asyncio.gather(*(node.start() for node in nodes.values()))
        for a, b in itertools.pairwise([nodes[n] for n in names]):
            assert a.exchange is not None and b.exchange is not None
            await a.exchange.connect("127.0.0.1", b.exchange.port)
            await until(lambda a=a, b=b: b.node_id in a.exchange.links, "link")  # type: ignore[union-attr]
        for node in nodes.values():
            await until(lambda node=node: node.state.registered, "registration")
        yield nodes
    finally:
        for node in nodes.values():
            await node.stop()


def _ended(node: Node, trade_id: str) -> Any:
    view = node.store.find(trade_id)
    if view is not None and view.state in ("redeemed", "refunded", "failed", "cancelled"):
        return view
    return None


def _on_every_validator(c: Chains, order_id: bytes) -> list[dict[str, Any]] | None:
    records = []
    for v in range(len(c.ledger.validators)):
        code, value = c.ledger.query(v, "/order", encode(order_id))
        if code != 0:
            return None
        records.append(decode(value))
    return records


async def _routed_trade(
    c: Chains, nodes: dict[str, Node], *, sell: str, buy: str, price: int
) -> None:
    taker, maker, relay = nodes["taker"], nodes["maker"], nodes["relay"]
    assert taker.chains is not None
    sell_asset, buy_asset = taker.chains.asset(sell), taker.chains.asset(buy)
    await until(
        lambda: (
            taker.exchange is not None
            and len(taker.exchange.book.pair(sell_asset.asset, buy_asset.asset, 0))
        ),
        "the maker's offer at the taker",
    )
    assets = [(sell_asset.chain, None), ("eth", None), (buy_asset.chain, buy_asset.token)]
    assets = list(dict.fromkeys(assets))
    before = {n: await asyncio.to_thread(holdings, node, assets) for n, node in nodes.items()}
    view = await taker.create_trade(
        TradeRequest(sell=sell, amount=SATS, buy=buy, min_receive=SATS * price // 2)
    )
    done = await until(lambda: _ended(taker, view.trade_id), "the trade to end", timeout=240)
    assert done.state == "redeemed", (done.error, [p.phase for p in done.phases])
    assert done.hops == 2 and done.height and done.order_id
    m = await until(lambda: maker.store.by_order(done.order_id), "the maker's trade row")
    m = await until(lambda: _ended(maker, m.trade_id), "the maker's trade to end")
    assert m.state == "redeemed", m.error

    # the ledger: settled, one attested outcome per leg, the same record on every validator
    oid = bytes.fromhex(done.order_id)

    async def settled() -> Any:
        view = await taker.ledger_order(done.order_id)
        return view if view.status == "settled" else None

    order = await until(settled, "the order settled on the ledger")
    assert order.outcomes == {"0": "redeemed", "1": "redeemed"}
    records = await until(
        lambda: (
            (r := _on_every_validator(c, oid)) and all(x["status"] == "settled" for x in r) and r
        ),
        "the settled order on every validator",
    )
    for record in records:
        assert [leg["outcome"] for leg in record["legs"]] == ["redeemed", "redeemed"]
        assert all(leg["txid"] for leg in record["legs"])
    assert len({repr(r) for r in records}) == 1

    # exact balances: each side gave its leg, got the other's, paid its own chain fees
    found = taker.phases.order(oid)
    assert found is not None
    settlement = found[1]
    a, b = engine_legs(settlement, taker.chains.policies)
    assert (a.chain, a.token, b.chain, b.token) == (
        sell_asset.chain,
        sell_asset.token,
        buy_asset.chain,
        buy_asset.token,
    )
    for node, gives, gets in ((taker, a, b), (maker, b, a)):
        after = await asyncio.to_thread(holdings, node, assets)
        fees = await asyncio.to_thread(fees_paid, node, oid)  # type: ignore[arg-type]
        name = node.config.name
        assert after == expected_after(before[name], gives=gives, gets=gets, fees=fees), name
    assert await asyncio.to_thread(holdings, relay, assets) == before["relay"]

    # fees: the relay's and the maker's shares (each decrypted with its own Paillier key) and
    # the foundation's public balance are the order's protocol fee; the foundation's is 10 %
    notional = settlement.legs[0]
    assert settlement.protocol_fee > 0
    shares = {}
    for name in ("relay", "maker"):
        views = await nodes[name].fee_shares()
        shares[name] = sum(v.amount for v in views if v.asset == notional.chain)
    foundation = int(
        decode(
            await asyncio.to_thread(taker.ledger.abci_query, "/foundation", encode(notional.chain))
        )
    )
    params = decode(await asyncio.to_thread(taker.ledger.abci_query, "/params", b""))
    assert params["foundation_bps"] == 1_000
    assert shares["relay"] > 0 and shares["maker"] > 0
    assert shares["relay"] + shares["maker"] + foundation == settlement.protocol_fee
    assert foundation == settlement.protocol_fee * params["foundation_bps"] // 10_000


def test_routed_btcd_btc_to_geth_eth_settles_on_four_cometbft_validators(
    chains: Chains, tmp_path: Path
) -> None:
    offer = OfferConfig(
        buy="btc", sell="eth", price_num=BTC_PRICE, price_den=1, min_in=10_000, max_in=10 * SATS
    )

    async def run() -> None:
        async with network(chains, tmp_path, ("btc", "eth"), offer) as nodes:
            await _routed_trade(chains, nodes, sell="btc", buy="eth", price=BTC_PRICE)

    asyncio.run(run())


def test_routed_litecoind_ltc_to_an_erc20_settles_on_four_cometbft_validators(
    chains: Chains, tmp_path: Path
) -> None:
    offer = OfferConfig(
        buy="ltc", sell=TOKEN, price_num=LTC_PRICE, price_den=1, min_in=10_000, max_in=10 * SATS
    )

    async def run() -> None:
        async with network(chains, tmp_path, ("ltc", "eth"), offer) as nodes:
            await _routed_trade(chains, nodes, sell="ltc", buy=TOKEN, price=LTC_PRICE)

    asyncio.run(run())
