"""The main job on the embedded chains: two KOFO nodes swap BTC→ETH, ETH→BTC and BTC→ERC-20.

One process hosts the chains and both nodes. The chains are the embedded defaults, each served
on 127.0.0.1 in its usual JSON-RPC dialect: a Bitcoin regtest chain validated by Bitcoin Core's
code (Core dialect) and py-evm (Ethereum JSON-RPC). Each node has its own keys, journal, swap
engine and watchtower, reaches the chains only over JSON-RPC and the other node only over the
signed HTTP peer channel -- the code paths it takes against bitcoind/geth and a remote peer.
Progress is read from each engine's subscriber stream; a miner thread adds a regtest block every
:data:`BLOCK_INTERVAL` seconds, as a (fast) real chain would.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import secrets
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from bitcointx.core import b2lx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from web3 import Web3
from web3.exceptions import TransactionNotFound
from web3.types import Wei

from kofo.errors import KofoError
from kofo.money import Amount, Asset
from kofo.settlement.chain import BlockHeight, Expiry, UnixTime
from kofo.settlement.chains.bitcoin._secp import ensure_thread_params
from kofo.settlement.chains.bitcoin.adapter import BitcoinAdapter
from kofo.settlement.chains.bitcoin.backend import RpcBackend
from kofo.settlement.chains.bitcoin.embedded import EmbeddedChain
from kofo.settlement.chains.bitcoin.params import chain_params
from kofo.settlement.chains.bitcoin.rpc import RpcClient
from kofo.settlement.chains.bitcoin.rpcserver import RegtestRpcServer
from kofo.settlement.chains.bitcoin.tx import p2wpkh_script_pubkey
from kofo.settlement.chains.bitcoin.wallet import HdWallet
from kofo.settlement.chains.ethereum.adapter import EthereumAdapter
from kofo.settlement.chains.ethereum.contract import deploy
from kofo.settlement.chains.ethereum.devnet import DevnetServer
from kofo.settlement.chains.ethereum.keys import account_from_seed
from kofo.settlement.engine import SwapEngine, SwapUpdate
from kofo.settlement.journal import Journal
from kofo.settlement.monitor import EventHub, Watchtower
from kofo.settlement.peer_http import SEND_TIMEOUT, PeerClient, PeerServer
from kofo.settlement.swap import TERMINAL, State
from kofo.settlement.terms import AcceptPolicy, Leg, Offer, accept_offers, devnet_policy
from kofo.wire.swap import Accept, Error, Propose, SwapBody

log = logging.getLogger(__name__)

BTC = Asset("btc", "BTC", 8)
ETH = Asset("eth", "ETH", 18)

BLOCK_INTERVAL = 0.5
"""Seconds between regtest blocks: each swap needs two Bitcoin confirmations in sequence (a lock,
then a redeem), so half a second keeps the whole demo well under a minute while every
confirmation is still a separate, visible block."""

POLL_INTERVAL = 0.1
"""Watchtower poll period: a tenth of a block interval, so a node reacts within the same block."""

SWAP_TIMEOUT = 40.0
"""Wall-clock bound per swap. A healthy swap takes a few seconds here; reaching this means
something is broken, and the demo fails instead of hanging."""

_REGTEST = chain_params("btc", "regtest")
_FUNDING_ETH = 10 * 10**18
_FUNDING_DUSD = 1_000 * 10**6
_MINT_ABI = [
    {
        "name": "mint",
        "type": "function",
        "stateMutability": "nonpayable",
        "inputs": [{"name": "to", "type": "address"}, {"name": "amount", "type": "uint256"}],
        "outputs": [],
    }
]


@dataclass(frozen=True, slots=True)
class SwapPlan:
    """One swap the demo runs: the initiator (alice) gives ``gives`` for ``gets``."""

    label: str
    gives: Amount
    gets: Amount
    taproot: bool = False
    """The Bitcoin leg is a Taproot HTLC: its recipient claims it with one signature of both
    nodes (the key path, 99 vB) instead of the P2WSH script (136 vB)."""


@dataclass(slots=True)
class SwapOutcome:
    plan: SwapPlan
    swap_id: bytes
    states: dict[str, State]
    seconds: float
    btc_claim: str = ""
    """How the Bitcoin leg's claim looks on chain (set for Taproot swaps)."""

    @property
    def redeemed(self) -> bool:
        return all(s is State.REDEEMED for s in self.states.values())


@dataclass(slots=True)
class DemoResult:
    """What happened: per swap its end states; per party and asset, base units before/after
    and the fees that party paid in that asset."""

    outcomes: list[SwapOutcome]
    assets: list[Asset]
    before: dict[str, dict[Asset, int]]
    after: dict[str, dict[Asset, int]]
    fees: dict[str, dict[Asset, int]]
    seconds: float

    def expected_after(self, party: str) -> dict[Asset, int]:
        """Balances the agreed swaps imply: before, minus what the party gave, plus what it
        got, minus its fees (alice initiated every swap; bob took the other side)."""
        out = dict(self.before[party])
        for o in self.outcomes:
            gave, got = (
                (o.plan.gives, o.plan.gets)
                if party == "alice"
                else (
                    o.plan.gets,
                    o.plan.gives,
                )
            )
            out[gave.asset] -= gave.base_units
            out[got.asset] += got.base_units
        for asset, paid in self.fees[party].items():
            out[asset] -= paid
        return out

    @property
    def ok(self) -> bool:
        return all(o.redeemed for o in self.outcomes) and all(
            self.after[p] == self.expected_after(p) for p in self.before
        )


class _Outbox:
    """A node's outgoing notices, sent to the peer (its URL is set once the peer is up) from
    a thread of their own. The engine notifies while it holds its lock; a synchronous send
    would wait on the peer's engine, which may be notifying us under its lock at that moment.
    Notices are best-effort (the chains are the truth), so queueing them costs nothing."""

    def __init__(self, client: PeerClient) -> None:
        self.client = client
        self.url = ""
        self.peer = b""  # the peer's node key: its answers must be signed by it
        self._queue: queue.Queue[SwapBody | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def __call__(self, _swap_id: bytes, body: SwapBody) -> None:
        self._queue.put(body)

    def ask(self, _swap_id: bytes, body: SwapBody) -> SwapBody | None:
        """Send ``body`` now and return the peer's verified answer (a co-signature request:
        the engine waits for it, and claims by the leaf if it fails)."""
        return self.client.send(self.url, body, expect_sender=self.peer)

    def _run(self) -> None:
        while (body := self._queue.get()) is not None:
            try:
                self.client.send(self.url, body)
            except KofoError as exc:
                log.warning("notice %s not delivered: %s", type(body).__name__, exc)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=SEND_TIMEOUT + 1)


@dataclass
class _Node:
    name: str
    key: Ed25519PrivateKey
    engine: SwapEngine
    hub: EventHub
    tower: Watchtower
    server: PeerServer
    outbox: _Outbox
    btc: BitcoinAdapter
    eth: EthereumAdapter

    @property
    def node_id(self) -> bytes:
        return self.engine.node_id

    def balances(self, dusd: Asset) -> dict[Asset, int]:
        return {
            BTC: self.btc.balance(),
            ETH: self.eth.balance(),
            dusd: self.eth.balance(dusd.token),
        }


@dataclass
class _Chains:
    """The operator's side: the chains themselves and a read-only view for narration."""

    btc: EmbeddedChain
    btc_url: str
    btc_auth: tuple[str, str]
    eth_url: str
    eth_view: Web3
    htlc: str
    dusd: Asset
    faucet: Callable[[str, int], None]
    mint: Callable[[str, int], None]
    burn_script: bytes = field(repr=False, default=b"")

    def confirmations(self, chain: str, txid: str) -> int:
        if chain == "btc":
            found = self.btc.find_tx(txid)
            if found is None or found.height is None:
                return 0
            return self.btc.height() - found.height + 1
        try:
            receipt = self.eth_view.eth.get_transaction_receipt(txid)  # type: ignore[arg-type]
        except TransactionNotFound:
            return 0
        return int(self.eth_view.eth.block_number) - int(receipt["blockNumber"]) + 1

    def fee(self, chain: str, txid: str) -> int:
        """What a confirmed transaction paid: inputs minus outputs, or gas used x price."""
        if chain == "btc":
            found = self.btc.find_tx(txid)
            assert found is not None, f"btc tx {txid} vanished"
            spent = 0
            for txin in found.tx.vin:
                prev = self.btc.find_tx(b2lx(txin.prevout.hash))
                assert prev is not None
                spent += int(prev.tx.vout[txin.prevout.n].nValue)
            return spent - sum(int(out.nValue) for out in found.tx.vout)
        receipt = self.eth_view.eth.get_transaction_receipt(txid)  # type: ignore[arg-type]
        return int(receipt["gasUsed"]) * int(receipt["effectiveGasPrice"])


@contextmanager
def _embedded_chains() -> Iterator[_Chains]:
    btc = EmbeddedChain(params=_REGTEST)
    user, password = "kofo-demo", secrets.token_hex(16)
    btc_server = RegtestRpcServer(btc, user, password).start()
    eth_server = DevnetServer().start()
    try:
        w3 = Web3(Web3.HTTPProvider(eth_server.url, request_kwargs={"timeout": 30}))
        faucet_account = w3.eth.accounts[0]  # the devnet's pre-funded, unlocked account

        def faucet(to: str, wei: int) -> None:
            w3.eth.wait_for_transaction_receipt(
                w3.eth.send_transaction({"from": faucet_account, "to": to, "value": Wei(wei)})
            )

        deployer = account_from_seed(os.urandom(32))
        faucet(deployer.address, 10**18)
        htlc = deploy(w3, "HTLC", deployer)
        token = deploy(w3, "TestToken", deployer, "Demo USD", "DUSD", 6)
        minter = w3.eth.contract(address=token, abi=_MINT_ABI)

        def mint(to: str, amount: int) -> None:
            w3.eth.wait_for_transaction_receipt(
                minter.functions.mint(to, amount).transact({"from": faucet_account})
            )

        # Clock-only blocks pay a key nobody holds, so no party's balance moves with them.
        burn = p2wpkh_script_pubkey(HdWallet(os.urandom(32), _REGTEST).identity.pubkey)
        yield _Chains(
            btc=btc,
            btc_url=btc_server.url,
            btc_auth=(user, password),
            eth_url=eth_server.url,
            eth_view=w3,
            htlc=htlc,
            dusd=Asset("eth", "DUSD", 6, token=token),
            faucet=faucet,
            mint=mint,
            burn_script=burn,
        )
    finally:
        eth_server.stop()
        btc_server.stop()
        btc.close()


def _make_node(name: str, chains: _Chains, home: Path) -> _Node:
    key = Ed25519PrivateKey.generate()
    user, password = chains.btc_auth
    btc = BitcoinAdapter(
        RpcBackend(RpcClient(chains.btc_url, user, password)),
        HdWallet(os.urandom(32), _REGTEST),
    )
    w3 = Web3(Web3.HTTPProvider(chains.eth_url, request_kwargs={"timeout": 30}))
    eth = EthereumAdapter(w3, account_from_seed(os.urandom(32)), chains.htlc)
    hub = EventHub()
    outbox = _Outbox(PeerClient(key))
    engine = SwapEngine(
        Journal(home / f"{name}.sqlite"),
        {"btc": btc, "eth": eth},
        {
            "btc": devnet_policy("btc", height_clock=True),
            "eth": devnet_policy("eth", height_clock=False),
        },
        key,
        notify=outbox,
        request=outbox.ask,
        publish=hub.publish,
        accept_policy=_offers(_plans(chains.dusd)),
    )
    server = PeerServer(key, engine.handle).start()
    tower = Watchtower(engine, poll_interval=POLL_INTERVAL)
    return _Node(name, key, engine, hub, tower, server, outbox, btc, eth)


def _pair(alice: _Node, bob: _Node) -> None:
    """Each node accepts messages only from the other and sends its notices to it."""
    alice.server.allowed, bob.server.allowed = {bob.node_id}, {alice.node_id}
    alice.outbox.url, bob.outbox.url = bob.server.url, alice.server.url
    alice.outbox.peer, bob.outbox.peer = bob.node_id, alice.node_id


def _leg(amount: Amount, payer: _Node, payee: _Node, *, taproot: bool) -> Leg:
    chain = amount.asset.chain
    ad = payer.btc if chain == "btc" else payer.eth
    to = payee.btc if chain == "btc" else payee.eth
    unit: Expiry = BlockHeight(0) if chain == "btc" else UnixTime(0)
    output = "p2tr" if taproot and chain == "btc" else ad.leg_output()
    return Leg(
        chain,
        amount.base_units,
        ad.address(),
        to.address(),
        unit,
        amount.asset.token,
        output=output,
    )


def _propose(alice: _Node, bob: _Node, plan: SwapPlan) -> bytes:
    """Alice proposes over the peer channel; bob's node checks the terms and answers."""
    ensure_thread_params()  # runs in a worker thread; the BTC adapter builds scripts here
    terms = alice.engine.propose(
        _leg(plan.gives, alice, bob, taproot=plan.taproot),
        _leg(plan.gets, bob, alice, taproot=plan.taproot),
        participant_node=bob.node_id,
        peer=bob.server.url,
    )
    reply = alice.outbox.client.send(bob.server.url, Propose(terms), expect_sender=bob.node_id)
    if reply is not None:
        alice.engine.handle(reply, bob.node_id)
    if isinstance(reply, Error):
        raise KofoError(f"bob refused the terms: {reply.message}", code=reply.code)
    if not isinstance(reply, Accept):
        raise KofoError(f"bob answered the proposal with {reply!r}", code="demo_no_accept")
    return terms.swap_id


def _short(txid: str) -> str:
    t = txid.removeprefix("0x")
    return f"{t[:8]}…{t[-4:]}"


def _plural(n: int) -> str:
    return f"{n} confirmation" + ("" if n == 1 else "s")


class _Narrator:
    """Turns each engine's stream of state changes into one line per step."""

    def __init__(self, console: Console, chains: _Chains) -> None:
        self.console = console
        self.chains = chains

    def symbol(self, leg: Leg) -> str:
        if leg.chain == "btc":
            return BTC.symbol
        return self.chains.dusd.symbol if leg.token else ETH.symbol

    def line(self, node: _Node, u: SwapUpdate) -> str:
        rec = node.engine.journal.get(u.swap_id)
        t = rec.terms
        mine = t.initiator_leg if node.name == "alice" else t.participant_leg
        theirs = t.participant_leg if node.name == "alice" else t.initiator_leg
        label = f"{self.symbol(t.initiator_leg)}→{self.symbol(t.participant_leg)}"
        head = f"[dim]{label:<8}[/] [bold]{node.name:<5}[/] {u.state.value:<15} "
        s = u.state
        if s is State.PROPOSED:
            return head + (
                f"T_A {t.initiator_leg.expiry} on {t.initiator_leg.chain}, "
                f"T_B {t.participant_leg.expiry} on {t.participant_leg.chain}, "
                f"H {t.payment_hash.hex()[:8]}…"
            )
        if s is State.ACCEPTED:
            return head + escape(u.reason)
        if s is State.COUNTER_AUDITED:
            seen = node.engine.journal.notice(u.swap_id, "locked_at") or {}
            txid = str(seen.get("txid", ""))
            confs = self.chains.confirmations(theirs.chain, txid) if txid else 0
            where = f"lock tx {_short(txid)} " if txid else "lock "
            return head + f"audited their {where}on {theirs.chain}: terms match, {_plural(confs)}"
        if s in (State.LOCK_SIGNED, State.REDEEM_SIGNED, State.REFUND_SIGNED) and u.txid:
            chain = theirs.chain if s is State.REDEEM_SIGNED else mine.chain
            return head + f"signed tx {_short(u.txid)} on {chain} (journaled before sending)"
        if s in (State.LOCK_SENT, State.REDEEM_SENT, State.REFUND_SENT) and u.txid:
            chain = theirs.chain if s is State.REDEEM_SENT else mine.chain
            what = {
                State.LOCK_SENT: "lock",
                State.REDEEM_SENT: "redeem, revealing the secret,"
                if node.name == "alice"
                else "redeem, secret read from chain,",
                State.REFUND_SENT: "refund",
            }[s]
            return head + f"sent {what} tx {_short(u.txid)} on {chain}"
        if s is State.LOCKED:
            locks = [tx for k, c, tx, _ in node.engine.journal.all_txs(u.swap_id) if k == "lock"]
            txid = locks[-1] if locks else ""
            confs = self.chains.confirmations(mine.chain, txid) if txid else 0
            return head + f"own lock tx {_short(txid)} on {mine.chain}, {_plural(confs)}"
        if s is State.REDEEMED:
            redeems = [
                tx for k, c, tx, _ in node.engine.journal.all_txs(u.swap_id) if k == "redeem"
            ]
            txid = redeems[-1] if redeems else ""
            confs = self.chains.confirmations(theirs.chain, txid) if txid else 0
            return head + (
                f"[green]paid[/] by redeem tx {_short(txid)} on {theirs.chain}, {_plural(confs)}"
            )
        return head + escape(u.reason)

    async def follow(self, node: _Node) -> None:
        async for update in node.hub.subscribe():
            try:
                text = await asyncio.to_thread(self.line, node, update)
            except Exception as exc:  # narration must never stop the swaps
                text = f"{node.name} {update.state.value} ({type(exc).__name__})"
            self.console.print(text)


def _tower_loop(tower: Watchtower, stop: threading.Event) -> None:
    ensure_thread_params()  # bitcointx keeps its chain parameters per thread
    tower.run(stop)


def _miner_loop(chains: _Chains, stop: threading.Event) -> None:
    ensure_thread_params()
    while not stop.wait(BLOCK_INTERVAL):
        chains.btc.mine(1, chains.burn_script)


async def _run_swaps(
    alice: _Node, bob: _Node, plans: list[SwapPlan], chains: _Chains, console: Console
) -> list[SwapOutcome]:
    narrator = _Narrator(console, chains)
    followers = [asyncio.create_task(narrator.follow(n)) for n in (alice, bob)]
    for _ in range(3):  # let both subscriptions register before the first update
        await asyncio.sleep(0)
    stop = threading.Event()
    threads = [
        threading.Thread(target=_tower_loop, args=(n.tower, stop), daemon=True)
        for n in (alice, bob)
    ]
    threads.append(threading.Thread(target=_miner_loop, args=(chains, stop), daemon=True))
    for th in threads:
        th.start()
    outcomes: list[SwapOutcome] = []
    try:
        for plan in plans:
            console.rule(
                f"[bold]{plan.label}: alice gives {plan.gives.display()}, "
                f"bob gives {plan.gets.display()}"
            )
            started = time.monotonic()
            sid = await asyncio.to_thread(_propose, alice, bob, plan)
            states = {n.name: n.engine.journal.get(sid).state for n in (alice, bob)}
            while time.monotonic() - started < SWAP_TIMEOUT:
                states = {n.name: n.engine.journal.get(sid).state for n in (alice, bob)}
                if all(s in TERMINAL for s in states.values()):
                    break
                await asyncio.sleep(POLL_INTERVAL)
            await asyncio.sleep(0.05)  # let the last lines of the stream print
            claim = _btc_claim([alice, bob], sid, chains) if plan.taproot else ""
            outcomes.append(SwapOutcome(plan, sid, states, time.monotonic() - started, claim))
    finally:
        stop.set()
        for th in threads:
            th.join(timeout=10)
        for n in (alice, bob):
            n.hub.close()
        await asyncio.gather(*followers, return_exceptions=True)
    return outcomes


def _btc_claim(nodes: list[_Node], swap_id: bytes, chains: _Chains) -> str:
    """How the swap's confirmed Bitcoin claim spent its HTLC, and its size."""
    for n in nodes:
        for kind, chain, txid, _sent in n.engine.journal.all_txs(swap_id):
            found = chains.btc.find_tx(txid) if chain == "btc" and kind == "redeem" else None
            if found is None or found.height is None:
                continue
            witness = found.tx.wit.vtxinwit[0].scriptWitness.stack
            how = (
                "by the key path (one signature of both nodes; no secret on this chain)"
                if len(witness) == 1
                else "by the claim leaf"
            )
            return f"{how}: {found.tx.get_virtual_size()} vB"
    return "(no confirmed claim found)"


def _offers(plans: list[SwapPlan]) -> AcceptPolicy:
    """The accept policy each demo node installs (an engine accepts nothing without one): as
    participant, exactly the swaps the demo plans -- at most the planned amount of what it
    gives, for at least the planned price in what it gets."""
    return accept_offers(
        *(
            Offer(
                gives=(p.gets.asset.chain, p.gets.asset.token),
                gets=(p.gives.asset.chain, p.gives.asset.token),
                max_gives=p.gets.base_units,
                price_num=p.gives.base_units,
                price_den=p.gets.base_units,
            )
            for p in plans
        )
    )


def _plans(dusd: Asset) -> list[SwapPlan]:
    return [
        SwapPlan("1. BTC → ETH", Amount(BTC, 1_500_000), Amount(ETH, 5 * 10**17)),
        SwapPlan("2. ETH → BTC", Amount(ETH, 3 * 10**17), Amount(BTC, 1_000_000)),
        SwapPlan("3. BTC → DUSD (ERC-20)", Amount(BTC, 2_000_000), Amount(dusd, 250 * 10**6)),
        SwapPlan(
            "4. BTC (Taproot) → ETH", Amount(BTC, 1_200_000), Amount(ETH, 4 * 10**17), taproot=True
        ),
    ]


def _signed(units: int, asset: Asset) -> str:
    sign = "+" if units > 0 else "-" if units < 0 else ""
    return sign + Amount(asset, abs(units)).number()


def _fees(
    nodes: list[_Node], outcomes: list[SwapOutcome], chains: _Chains
) -> dict[str, dict[Asset, int]]:
    fees: dict[str, dict[Asset, int]] = {n.name: {BTC: 0, ETH: 0} for n in nodes}
    for n in nodes:
        for o in outcomes:
            for _kind, chain, txid, sent_at in n.engine.journal.all_txs(o.swap_id):
                if sent_at is not None and chains.confirmations(chain, txid) > 0:
                    fees[n.name][BTC if chain == "btc" else ETH] += chains.fee(chain, txid)
    return fees


def _table(result: DemoResult) -> Table:
    table = Table(title="balances before → after (exact; fees are in each chain's own coin)")
    for col in ("party", "asset", "before", "after", "change", "of which fees"):
        table.add_column(
            col, justify="left" if col in ("party", "asset") else "right", overflow="fold"
        )
    for party in result.before:
        for asset in result.assets:
            b, a = result.before[party][asset], result.after[party][asset]
            fee = result.fees[party].get(asset, 0)
            table.add_row(
                party,
                asset.symbol,
                Amount(asset, b).number(),
                Amount(asset, a).number(),
                _signed(a - b, asset),
                _signed(-fee, asset) if fee else "",
            )
    return table


def run_demo(console: Console | None = None) -> DemoResult:
    """Run the four swaps between two nodes on fresh embedded chains; print the progress and
    a balance table; return what happened (``result.ok`` is the verdict)."""
    console = console or Console()
    started = time.monotonic()
    ensure_thread_params()
    console.rule("[bold]KOFO demo: two nodes swap on embedded Bitcoin regtest and py-evm")
    with _embedded_chains() as chains, tempfile.TemporaryDirectory(prefix="kofo-demo-") as home:
        console.print(
            f"chains: bitcoin regtest (Core JSON-RPC) at {chains.btc_url}, "
            f"EVM (Ethereum JSON-RPC) at {chains.eth_url}; HTLC contract {chains.htlc}, "
            f"DUSD token {chains.dusd.token}"
        )
        alice, bob = (_make_node(name, chains, Path(home)) for name in ("alice", "bob"))
        nodes = [alice, bob]
        try:
            _pair(alice, bob)
            console.print(
                f"nodes: alice {alice.node_id.hex()[:12]}… at {alice.server.url}, "
                f"bob {bob.node_id.hex()[:12]}… at {bob.server.url} (each: own keys, journal, "
                "engine, watchtower)"
            )
            for n in nodes:
                chains.btc.mine(1, n.btc.wallet.identity.script_pubkey)
                chains.faucet(n.eth.address(), _FUNDING_ETH)
            chains.btc.mine(100, chains.burn_script)  # coinbase outputs mature after 100 blocks
            chains.mint(bob.eth.address(), _FUNDING_DUSD)
            console.print(
                "funded: a 50 BTC coinbase each, 10 ETH each, bob 1000 DUSD; "
                f"a regtest block every {BLOCK_INTERVAL} s from now on"
            )
            assets = [BTC, ETH, chains.dusd]
            before = {n.name: n.balances(chains.dusd) for n in nodes}
            outcomes = asyncio.run(_run_swaps(alice, bob, _plans(chains.dusd), chains, console))
            after = {n.name: n.balances(chains.dusd) for n in nodes}
            fees = _fees(nodes, outcomes, chains)
        finally:
            for n in nodes:
                n.outbox.close()
                n.server.stop()
                n.engine.journal.close()
    result = DemoResult(outcomes, assets, before, after, fees, time.monotonic() - started)
    console.rule("[bold]result")
    for o in outcomes:
        mark = "[green]✓[/]" if o.redeemed else "[red]✗[/]"
        ends = ", ".join(f"{p} {s.value}" for p, s in o.states.items())
        console.print(f"{mark} {o.plan.label}: {ends} ({o.seconds:.1f} s)")
        if o.btc_claim:
            console.print(f"  the BTC leg was claimed {o.btc_claim}")
    console.print(_table(result))
    if result.ok:
        console.print(
            f"[bold green]done[/] in {result.seconds:.1f} s: every swap redeemed on both sides "
            "and every balance moved exactly as agreed, minus fees."
        )
    else:
        console.print(
            "[bold red]FAILED[/]: a swap did not end redeemed on both sides, or a "
            "balance did not move as agreed."
        )
    return result
