"""The node daemon in-process: ``kofo devnet``'s servers and three :class:`Node` daemons in
one event loop (taker, relay, maker) on 127.0.0.1, each with its own home, wallet, chains
over RPC, swap engine, phase journal and exchange node. A routed BTC -> ETH trade ends
``redeemed`` on both sides with exact balances and the order settled on the ledger; an order
the maker did not quote is refused with a logged reason and nothing locked; a maker whose
liquidity is short quotes less, or not at all."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import itertools
import logging
import os
import time
import time as time_module
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from kofo.errors import KofoError
from kofo.exchange.route import OrderPolicy, RouteParty, build_settlement_order
from kofo.node import daemon as daemon_module
from kofo.node.chains import ChainMismatch, build_chains
from kofo.node.config import Endpoint, NodeConfig, OfferConfig, load_config
from kofo.node.daemon import HEIGHT_TOLERANCE, Node
from kofo.node.devnet import DEVNET_TIMING, Devnet, start_devnet
from kofo.node.home import init_home
from kofo.node.service import Conflict, OfferSpec, TradeRequest
from kofo.node.trades import TradeRefused, engine_legs
from kofo.settlement.engine import CrashHook
from kofo.wallet import NodeWallet
from kofo.wire.codec import decode, encode
from kofo.wire.exchange import Claim
from kofo.wire.expiry import BlockHeight
from kofo.wire.orders import SettlementOrder, with_derived_id
from tests.clearance.helpers import ledger_params
from tests.node.event_order import watch_trade_events
from tests.swap.btc_helpers import expected_after, fees_paid, holdings

pytestmark = [pytest.mark.timeout(300)]

PASS = "daemon test passphrase"
SATS = 1_000_000
PRICE = 10**10  # wei per satoshi: 1 BTC = 10^18 wei... 0.01 BTC -> 0.01 ETH
WAIT = 90.0


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
        await asyncio.sleep(0.1)


@dataclass
class Net:
    devnet: Devnet
    nodes: dict[str, Node]


def _wallet(home: Path) -> NodeWallet:
    home.mkdir(mode=0o700)
    return NodeWallet.create(home / "wallet.json", PASS)


async def _make_nodes(
    tmp_path: Path,
    names: list[str],
    offers: dict[str, list[OfferConfig]],
    crash: dict[str, CrashHook] | None = None,
    timing: dict[str, int] | None = None,
) -> tuple[Devnet, dict[str, Node]]:
    wallets = {n: _wallet(tmp_path / n) for n in names}
    fund = []
    for n, w in wallets.items():
        fund.append(w.bitcoin("btc", "regtest", home=tmp_path / n).address())
        fund.append(w.eth_account().address)
    devnet = await asyncio.to_thread(
        start_devnet, fund=fund, block_interval=0.2, ledger_params=ledger_params()
    )
    desc = devnet.describe()
    nodes: dict[str, Node] = {}
    for n in names:
        home = tmp_path / n
        init_home(
            home,
            PASS,
            name=n,
            ledger_url=desc["ledger"]["url"],
            chains=desc["chains"],
            timing=timing,
            force=True,
        )
        cfg = load_config(home)
        cfg = replace(cfg, p2p_listen=Endpoint("127.0.0.1", 0), offers=tuple(offers.get(n, [])))
        nodes[n] = _node(cfg, wallets[n], (crash or {}).get(n))
    for node in nodes.values():
        await node.start()
    return devnet, nodes


def _node(cfg: NodeConfig, wallet: NodeWallet, crash: CrashHook | None = None) -> Node:
    return Node(
        cfg,
        wallet,
        passphrase=PASS,
        paillier_bits=1024,
        # settle_timeout_s: the route's co-signatures cross three nodes, the devnet's chains
        # and the ledger, all in this one process; under load the default 5 s ran out (the
        # SDK trade failed 'timed out waiting for the route's signatures' under pytest-xdist
        # at load ~40). No test here waits for that timeout: a bound, not a timing goal.
        exchange_options={"target_degree": 0, "settle_timeout_s": 60.0},
        crash=crash or CrashHook(),
    )


async def _line(nodes: list[Node]) -> None:
    for a, b in itertools.pairwise(nodes):
        assert a.exchange is not None and b.exchange is not None
        await a.exchange.connect("127.0.0.1", b.exchange.port)
        await until(lambda a=a, b=b: b.node_id in a.exchange.links, "link")  # type: ignore[union-attr]


@contextlib.asynccontextmanager
async def network(
    tmp_path: Path,
    crash: dict[str, CrashHook] | None = None,
    timing: dict[str, int] | None = None,
) -> AsyncIterator[Net]:
    offer = OfferConfig(
        buy="btc", sell="eth", price_num=PRICE, price_den=1, min_in=10_000, max_in=10 * SATS
    )
    devnet, nodes = await _make_nodes(
        tmp_path, ["taker", "relay", "maker"], {"maker": [offer]}, crash, timing
    )
    # every trade event of every test on this network: its state stored before it is published
    published = {name: watch_trade_events(node) for name, node in nodes.items()}
    try:
        await _line([nodes["taker"], nodes["relay"], nodes["maker"]])
        for node in nodes.values():
            await until(lambda node=node: node.state.registered, "registration")
        yield Net(devnet, nodes)
        broken = {n: [s for s in seen if s[2]] for n, seen in published.items()}
        assert not any(broken.values()), f"events visible before their state: {broken}"
    finally:
        for node in nodes.values():
            await node.stop()
        await asyncio.to_thread(devnet.stop)


def test_routed_btc_to_eth_trade_is_redeemed_on_both_sides(tmp_path: Path) -> None:
    asyncio.run(_routed_trade(tmp_path))


async def _routed_trade(tmp_path: Path) -> None:
    async with network(tmp_path) as net:
        await _routed_trade_on(net)


async def _routed_trade_on(net: Net) -> None:
    taker, maker = net.nodes["taker"], net.nodes["maker"]
    await until(
        lambda: taker.exchange is not None and len(taker.exchange.book.pair("btc", "eth", 0)),
        "the maker's offer at the taker",
    )
    assets = [("btc", None), ("eth", None)]
    before = {n: await asyncio.to_thread(holdings, node, assets) for n, node in net.nodes.items()}
    view = await taker.create_trade(
        TradeRequest(sell="btc", amount=SATS, buy="eth", min_receive=SATS * PRICE // 2)
    )
    assert view.state == "quoting"
    done = await until(
        lambda: _ended(taker, view.trade_id), f"trade {view.trade_id} to end", timeout=180
    )
    assert done.state == "redeemed", (done.error, [p.phase for p in done.phases])
    assert done.hops == 2 and done.height and done.order_id
    phases = [p.phase for p in done.phases]
    for want in ("claim_sent", "quotes", "ordering", "submitted", "committed", "redeemed"):
        assert want in phases, phases
    m = await until(lambda: _by_order(maker, done.order_id), "the maker's trade row")
    m = await until(lambda: _ended(maker, m.trade_id), "the maker's trade to end")
    assert m.state == "redeemed"
    # each lock and redeem shows its confirmations as they grow to the leg's depth, once per
    # count (never once per engine tick), and never a secret
    _assert_confirms(done, (("lock", "taker"), ("lock", "maker"), ("redeem", "taker")))
    _assert_confirms(m, (("lock", "maker"), ("redeem", "maker")))
    preimage = taker.engine.journal.preimage(bytes.fromhex(done.order_id))  # type: ignore[union-attr]
    assert preimage is not None and preimage.hex() not in repr(done.phases + m.phases)
    order = await until(lambda: _settled(taker, done.order_id), "the order settled on the ledger")
    assert order.outcomes == {"0": "redeemed", "1": "redeemed"}
    # exact balances: each side gave its leg, got the other's, paid its own chain fees; the
    # relay's wallet did not move (it holds no leg)
    oid = bytes.fromhex(done.order_id)
    found = taker.phases.order(oid)
    assert found is not None
    a, b = engine_legs(found[1], taker.chains.policies)  # type: ignore[union-attr]
    for node, gives, gets in ((taker, a, b), (maker, b, a)):
        after = await asyncio.to_thread(holdings, node, assets)
        fees = await asyncio.to_thread(fees_paid, node, oid)  # type: ignore[arg-type]
        name = node.config.name
        assert after == expected_after(before[name], gives=gives, gets=gets, fees=fees), name
    relay = net.nodes["relay"]
    assert await asyncio.to_thread(holdings, relay, assets) == before["relay"]
    # fees: the relay's and the maker's shares, decrypted with their own Paillier keys, and
    # the foundation's public balance add up to the order's protocol fee, in the notional's
    # asset; the maker withdraws its share once (a second withdrawal finds nothing)
    notional = found[1].legs[0]
    shares = {}
    for name in ("relay", "maker"):
        views = await net.nodes[name].fee_shares()
        shares[name] = sum(v.amount for v in views if v.asset == notional.chain)
    foundation = decode(
        await asyncio.to_thread(taker.ledger.abci_query, "/foundation", encode(notional.chain))
    )
    assert shares["relay"] > 0 and shares["maker"] > 0
    assert shares["relay"] + shares["maker"] + int(foundation) == found[1].protocol_fee
    assert await maker.withdraw_fees(notional.chain, "payout-address") == shares["maker"]
    assert [v for v in await maker.fee_shares() if v.asset == notional.chain] == []
    with pytest.raises(Conflict):
        await maker.withdraw_fees(notional.chain, "payout-address")
    # the trade is in the event stream, and survives in the trade rows
    kinds = [e.data.get("phase") for e in await taker.events(limit=1000) if e.kind == "trade"]
    assert "committed" in kinds and "redeemed" in kinds


def _assert_confirms(trade: Any, want: tuple[tuple[str, str], ...]) -> None:
    """``trade``'s ``confirms`` phases show each (tx, by) in ``want`` reaching its required
    depth, one phase per count, growing."""
    confirms = [p.detail for p in trade.phases if p.phase == "confirms"]
    for tx, by in want:
        seen = [c for c in confirms if (c["tx"], c["by"]) == (tx, by)]
        assert seen, (tx, by, confirms)
        assert len({c["txid"] for c in seen}) == 1, seen
        counts = [c["confirmations"] for c in seen]
        assert counts == sorted(set(counts)), seen  # deduplicated and growing
        assert counts[-1] == seen[-1]["required"] >= 1, seen


def _by_order(node: Node, order_id: str | None):
    return None if order_id is None else node.store.by_order(order_id)


def _ended(node: Node, trade_id: str):
    view = node.store.find(trade_id)
    if view is not None and view.state in ("redeemed", "refunded", "failed", "cancelled"):
        return view
    return None


async def _settled(node: Node, order_id: str | None):
    assert order_id is not None
    view = await node.ledger_order(order_id)
    return view if view.status == "settled" else None


BIG_PRICE = 2 * 10**12  # wei per satoshi: 1 BTC -> 200 ETH, more than the maker's 100 ETH


def test_maker_quotes_within_its_liquidity_and_refuses_orders_beyond_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    asyncio.run(_liquidity(tmp_path, caplog))


async def _liquidity(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    offer = OfferConfig(
        buy="btc", sell="eth", price_num=BIG_PRICE, price_den=1, min_in=10_000, max_in=10**8
    )
    devnet, nodes = await _make_nodes(tmp_path, ["taker", "maker"], {"maker": [offer]})
    taker, maker = nodes["taker"], nodes["maker"]
    try:
        await _line([taker, maker])
        for node in nodes.values():
            await until(lambda node=node: node.state.registered, "registration")
        await until(lambda: len(taker.exchange.book.pair("btc", "eth", 0)), "the offer")  # type: ignore[union-attr]
        free = maker.liquidity("eth")
        assert 0 < free < 10**8 * BIG_PRICE
        want = TradeRequest(sell="btc", amount=10**8, buy="eth")
        quotes = await taker.quotes(want)
        # a partial fill scaled down to what the maker's wallet can lock, never more
        assert quotes, "no quote"
        assert quotes[0].amount_in < 10**8 and quotes[0].receive <= free
        assert quotes[0].hops == 1

        # an all-or-nothing offer it cannot cover: no quote at all
        (own,) = await maker.offers(own_only=True)
        await maker.withdraw_offer(own.offer_id)
        await maker.add_offer(
            OfferSpec("btc", "eth", BIG_PRICE, 1, 10**8, 10**8, partial=False, ttl=600)
        )
        await until(
            lambda: all(
                so.offer.partial is False
                for so in taker.exchange.book.pair("btc", "eth", 0)  # type: ignore[union-attr]
            ),
            "the new offer at the taker",
        )
        assert await taker.quotes(want) == []

        # an order whose maker leg is beyond the liquidity is refused before it is signed:
        # a logged reason, nothing journaled, nothing locked
        order = _order_for(taker, maker, delivered=free + 1)
        with caplog.at_level(logging.WARNING, logger="kofo.node"):
            with pytest.raises(TradeRefused, match="free"):
                maker._order_guard(order, "provider")
        assert any("refused to co-sign" in r.getMessage() for r in caplog.records)
        assert maker.phases.order(order.order_id) is None
        # a leg height far from the maker's own view of the chain is refused too
        ok = _order_for(taker, maker, delivered=free // 2)
        out = ok.legs[0]
        assert isinstance(out.expiry, BlockHeight)
        far = replace(out, expiry=BlockHeight(out.expiry.value + HEIGHT_TOLERANCE + 100))
        bad = with_derived_id(replace(ok, legs=(far, ok.legs[1])))
        with pytest.raises(OrderPolicy, match="not within"):
            maker._order_guard(bad, "provider")
        assert maker.phases.order(bad.order_id) is None
        # the fitting one is journaled (what the maker co-signs) and its amount held
        maker._order_guard(ok, "provider")
        assert maker.phases.order(ok.order_id) is not None
        assert maker.liquidity("eth") <= free - ok.legs[1].amount
        assert maker.engine is not None and maker.engine.unfinished() == []

        # a chain whose RPC serves another network than the config names is refused at
        # start, naming both
        cfg = maker.config
        btc, eth = cfg.chains["btc"], cfg.chains["eth"]
        wrong = replace(cfg, chains={"btc": replace(btc, network="testnet"), "eth": eth})
        with pytest.raises(ChainMismatch, match=r"network is 'testnet' but .* serves 'regtest'"):
            await asyncio.to_thread(build_chains, wrong, maker.wallet)
        wrong = replace(cfg, chains={"btc": btc, "eth": replace(eth, chain_id=1)})
        with pytest.raises(ChainMismatch, match=r"chain_id is 1 but .* serves chain id \d+"):
            await asyncio.to_thread(build_chains, wrong, maker.wallet)
    finally:
        for node in nodes.values():
            await node.stop()
        await asyncio.to_thread(devnet.stop)


def _order_for(taker: Node, maker: Node, *, delivered: int) -> SettlementOrder:
    """The exchange's order for a BTC -> ETH quote between the two, expiries fitted by the
    taker's hook (as ``settle()`` does)."""
    now_s = int(time.time())
    order = build_settlement_order(
        claim=Claim("btc", "eth", SATS, 0, 1, (now_s + 60) * 1000, 3, os.urandom(32)),
        claim_id=os.urandom(32),
        fulfil_id=os.urandom(32),
        amount_in=SATS,
        delivered=delivered,
        initiator=RouteParty(taker.node_id, taker._fresh_addresses()),
        relays=[],
        provider=RouteParty(maker.node_id, maker._fresh_addresses()),
        provider_position=1,
        payment_hash=hashlib.sha256(os.urandom(32)).digest(),
        now_s=now_s,
        protocol_fee_bps=0,
    )
    legs = tuple(
        replace(leg, expiry=taker._expiry_fit(leg.chain, leg.expiry_time, now_s))
        for leg in order.legs
    )
    return with_derived_id(replace(order, legs=legs))


class Crash(Exception):
    pass


class StopAt(CrashHook):
    """In-process stand-in for a SIGKILL at a phase boundary: the trade's task dies there, its
    memory lost; the journals keep what was written before."""

    def hit(self, point: str) -> None:
        if point == self.target:
            raise Crash(point)


def test_taker_killed_after_the_commit_finishes_the_trade_after_a_restart(
    tmp_path: Path,
) -> None:
    asyncio.run(_restart(tmp_path))


async def _restart(tmp_path: Path) -> None:
    async with network(tmp_path, {"taker": StopAt("trade_committed")}) as net:
        taker, maker = net.nodes["taker"], net.nodes["maker"]
        await until(lambda: len(taker.exchange.book.pair("btc", "eth", 0)), "the offer")  # type: ignore[union-attr]
        view = await taker.create_trade(
            TradeRequest(sell="btc", amount=SATS, buy="eth", min_receive=SATS * PRICE // 2)
        )
        await until(lambda: view.trade_id not in taker._trade_tasks, "the trade task to die")
        dead = taker.store.get(view.trade_id)
        assert dead.state == "committed" and dead.order_id, (dead.state, dead.error)
        oid = bytes.fromhex(dead.order_id)
        assert taker.phases.phase(oid, "swap_started") is None
        assert maker.engine is not None and maker.engine.unfinished() == []
        await taker.stop()
        # the restart: same home, a new process's worth of state
        taker = _node(taker.config, taker.wallet)
        net.nodes["taker"] = taker
        await taker.start()
        done = await until(lambda: _ended(taker, view.trade_id), "the trade to end", 180)
        assert done.state == "redeemed", (done.error, [p.phase for p in done.phases])
        m = await until(lambda: _by_order(maker, done.order_id), "the maker's trade row")
        m = await until(lambda: _ended(maker, m.trade_id), "the maker's trade to end")
        assert m.state == "redeemed"
        order = await until(lambda: _settled(taker, done.order_id), "the order settled")
        assert order.outcomes == {"0": "redeemed", "1": "redeemed"}
        # one trade, one order, committed once at the first height
        assert [t.trade_id for t in await taker.trades()] == [view.trade_id]
        assert order.height == dead.height


def test_a_restarted_maker_announces_the_same_offers_under_the_same_ids(tmp_path: Path) -> None:
    asyncio.run(_offers_restart(tmp_path))


async def _offers_restart(tmp_path: Path) -> None:
    """Offers added with ``kofo offer add`` were kept in memory only: a restarted maker had
    none of them, while peers kept the old announcements for their ttl (an hour by default)
    and takers' claims found no maker; a config offer came back under a new random id beside
    its stale copy. Now the added offers are kept in the home until withdrawn, and every
    offer is announced again under its id, superseding the copy peers hold."""
    async with network(tmp_path) as net:
        taker, relay, maker = net.nodes["taker"], net.nodes["relay"], net.nodes["maker"]
        added = await maker.add_offer(OfferSpec("btc", "eth", PRICE - 1, 1, 10_000, SATS))
        gone = await maker.add_offer(OfferSpec("btc", "eth", PRICE - 2, 1, 10_000, SATS))
        await maker.withdraw_offer(gone.offer_id)
        own = {o.offer_id for o in await maker.offers(own_only=True)}
        assert added.offer_id in own and gone.offer_id not in own and len(own) == 2

        async def seen_by_taker() -> set[str]:
            return {o.offer_id for o in await taker.offers() if o.maker == maker.node_id.hex()}

        await until(lambda: _eq(seen_by_taker(), own), "the taker's book holding both offers")
        await maker.stop()
        maker = _node(maker.config, maker.wallet)
        net.nodes["maker"] = maker
        await maker.start()
        assert {o.offer_id for o in await maker.offers(own_only=True)} == own
        await _line([relay, maker])
        # the book: the same two offers, re-announced (newer expiry), no stale copy beside them
        expiry = {o.offer_id: o.expires_at for o in await maker.offers(own_only=True)}
        await until(
            lambda: _eq(
                _expiries(taker, maker.node_id.hex()),
                expiry,
            ),
            "the taker's book holding the restarted maker's offers",
        )
        await maker.withdraw_offer(added.offer_id)
        await maker.stop()
        maker = _node(maker.config, maker.wallet)
        net.nodes["maker"] = maker
        await maker.start()
        left = {o.offer_id for o in await maker.offers(own_only=True)}
        assert left == own - {added.offer_id}  # a withdrawn offer stays withdrawn


async def _eq(got: Any, want: Any) -> bool:
    return bool(await got == want)


async def _expiries(node: Node, maker: str) -> dict[str, int]:
    return {o.offer_id: o.expires_at for o in await node.offers() if o.maker == maker}


def test_an_order_co_signed_and_never_submitted_ends_failed_and_frees_the_makers_hold(
    tmp_path: Path,
) -> None:
    asyncio.run(_never_submitted(tmp_path))


async def _never_submitted(tmp_path: Path) -> None:
    """Issue 14, bad input from the network: a counterparty that signs but never submits.
    The taker gets the route's co-signatures and never sends ``commit_order``: the maker's
    row (and the amount its leg held from its liquidity) lasts until ``legs[0].lock_by``,
    then the row ends ``failed`` naming why, the hold is released, nothing is on the ledger
    and no wallet moved. (The devnet timing: a 20 s lock window instead of 600 s.)"""
    async with network(tmp_path, timing=DEVNET_TIMING.node_table()) as net:
        taker, maker = net.nodes["taker"], net.nodes["maker"]
        assert taker.exchange is not None
        await until(lambda: len(taker.exchange.book.pair("btc", "eth", 0)), "the offer")  # type: ignore[union-attr]
        assets = [("btc", None), ("eth", None)]
        before = {
            n: await asyncio.to_thread(holdings, node, assets) for n, node in net.nodes.items()
        }
        free = await until(lambda: maker.liquidity("eth"), "the maker's balance read")
        request = TradeRequest(sell="btc", amount=SATS, buy="eth", min_receive=SATS * PRICE // 2)
        quotes, claim_id = await taker._quotes(request)
        assert quotes
        commit = await taker.exchange.settle(claim_id, quotes[0], os.urandom(32))
        order = commit.order
        oid = order.order_id.hex()
        assert len(commit.signatures) >= 2  # the route co-signed; nobody submits it
        row = await until(lambda: _by_order(maker, oid), "the maker's trade row")
        assert row.state == "ordering"
        held = order.legs[1].amount
        assert maker.liquidity("eth") <= free - held  # its leg is held while it may commit
        with caplog_at(logging.INFO, "kofo.node") as records:
            row = await until(
                lambda: (r := maker.store.get(row.trade_id)).state == "failed" and r,
                "the maker's row to fail after lock_by",
                timeout=WAIT + DEVNET_TIMING.lock_window_s,
            )
        assert time.time() > order.legs[0].lock_by
        assert "not committed" in (row.error or ""), row.error
        assert any("never committed: hold released" in r.getMessage() for r in records)
        await until(lambda: maker.liquidity("eth") >= free, "the hold released")
        assert maker.engine is not None and maker.engine.unfinished() == []
        assert await _ledger_has_no_order(taker, oid)
        for name, node in net.nodes.items():
            assert await asyncio.to_thread(holdings, node, assets) == before[name], name


async def _ledger_has_no_order(node: Node, order_id: str) -> bool:
    try:
        await node.ledger_order(order_id)
    except KofoError as exc:
        return exc.code == "not_found" or "not found" in str(exc)
    return False


@contextlib.contextmanager
def caplog_at(level: int, logger: str) -> Iterator[list[logging.LogRecord]]:
    """The records ``logger`` emits at ``level`` and above while the block runs."""
    records: list[logging.LogRecord] = []

    class _Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler, log = _Keep(level), logging.getLogger(logger)
    old = log.level
    log.addHandler(handler)
    log.setLevel(min(level, old) if old else level)
    try:
        yield records
    finally:
        log.removeHandler(handler)
        log.setLevel(old)


class PauseLedgerAt(CrashHook):
    """At ``target`` the devnet's ledger goes down (its RPC refuses connections) instead of
    the process dying."""

    def __init__(self, target: str) -> None:
        super().__init__(target)
        self.devnet: Devnet | None = None
        self.paused = False

    def hit(self, point: str) -> None:
        if point == self.target and self.devnet is not None and not self.paused:
            self.paused = True
            self.devnet.ledger.pause()


def test_a_ledger_outage_right_after_the_commit_delays_the_swap_start_and_never_strands_it(
    tmp_path: Path,
) -> None:
    asyncio.run(_outage_after_commit(tmp_path))


async def _outage_after_commit(tmp_path: Path) -> None:
    hook = PauseLedgerAt("trade_committed")
    async with network(tmp_path, {"taker": hook}) as net:
        hook.devnet = net.devnet
        taker, maker = net.nodes["taker"], net.nodes["maker"]
        await until(lambda: len(taker.exchange.book.pair("btc", "eth", 0)), "the offer")  # type: ignore[union-attr]
        view = await taker.create_trade(
            TradeRequest(sell="btc", amount=SATS, buy="eth", min_receive=SATS * PRICE // 2)
        )

        def waiting():
            v = taker.store.find(view.trade_id)
            return v if v is not None and v.state == "committed" and "ledger" in v.error else None

        await until(waiting, "the swap start to meet the outage")
        # committed, the committed order not readable: nothing locks on either side
        assert maker.engine is not None and maker.engine.unfinished() == []
        assert taker.engine is not None and taker.engine.unfinished() == []
        await asyncio.to_thread(net.devnet.ledger.resume)
        # the trade goes on by itself (it stayed "committed" forever before: no restart here)
        done = await until(lambda: _ended(taker, view.trade_id), "the trade to end", 180)
        assert done.state == "redeemed", (done.error, [p.phase for p in done.phases])
        assert done.error == ""
        order = await until(lambda: _settled(taker, done.order_id), "the order settled")
        assert order.outcomes == {"0": "redeemed", "1": "redeemed"}


def test_a_committed_trade_whose_proposal_the_maker_rejects_ends_failed_with_nothing_locked(
    tmp_path: Path,
) -> None:
    asyncio.run(_rejected(tmp_path))


async def _rejected(tmp_path: Path) -> None:
    from kofo.settlement.terms import TermsRefused

    async with network(tmp_path) as net:
        taker, maker = net.nodes["taker"], net.nodes["maker"]
        assert maker.engine is not None

        def refuse(terms: Any) -> None:
            raise TermsRefused("refused by the test", code="terms_not_offered")

        maker.engine.accept_policy = refuse
        await until(lambda: len(taker.exchange.book.pair("btc", "eth", 0)), "the offer")  # type: ignore[union-attr]
        view = await taker.create_trade(
            TradeRequest(sell="btc", amount=SATS, buy="eth", min_receive=SATS * PRICE // 2)
        )
        # it stayed "committed" for ever before (the rejected swap was not seen as unlocked)
        done = await until(lambda: _ended(taker, view.trade_id), "the trade to end", 120)
        assert done.state == "failed" and "refused by the test" in done.error, done
        assert done.order_id is not None and done.height is not None  # it was committed
        assert taker.engine is not None and taker.engine.unfinished() == []
        # the maker's row says it refused, and why; it stays bound by the committed order (it
        # would lock from it if the taker's leg appeared) until legs[1].lock_by, then fails
        # naming the refusal; nothing is started from the refused proposal
        row = await until(
            lambda: (r := _by_order(maker, done.order_id)) and r.state == "committed" and r,
            "the maker's row committed",
        )
        refused = [p for p in row.phases if p.phase == "proposal_refused"]
        assert refused and "refused by the test" in refused[0].detail["reason"], row.phases
        assert maker.engine.unfinished() == []
        # legs[1].lock_by passes with the taker's leg never locked: the row ends, naming it
        found = maker.phases.order(bytes.fromhex(done.order_id))
        assert found is not None
        order = found[1]

        class Later:  # the daemon's clock past legs[1].lock_by (for this one call)
            @staticmethod
            def time() -> float:
                return float(order.legs[1].lock_by + 1)

            monotonic = staticmethod(time_module.monotonic)

        # the row as the watcher may hold it: read before the proposal came and was refused
        # (its list is read before start_as_maker's chain reads; CI once ended the row so,
        # without naming the refusal)
        stale = dataclasses.replace(
            row, phases=tuple(p for p in row.phases if p.phase != "proposal_refused")
        )
        daemon_module.time = Later  # type: ignore[assignment]
        try:
            await maker._maker_from_order(stale, order)
        finally:
            daemon_module.time = time_module  # type: ignore[assignment]
        end = maker.store.get(row.trade_id)
        assert end.state == "failed", end
        assert "not locked by legs[1].lock_by" in end.error, end.error
        assert "its proposal was refused" in end.error and "refused by the test" in end.error


@pytest.mark.timeout(900)
def test_a_maker_down_right_after_the_commit_gets_the_proposal_again_after_its_restart(
    tmp_path: Path,
) -> None:
    """The crash matrix's ``maker_committed`` case: the maker stops once it has seen the order
    committed, the taker's proposal finds it down, and the maker comes back (same home, same
    address) only after the taker's trade deadline. The proposal used to run under that
    deadline: cancelled there, never sent again; the restarted maker waited for the taker's
    lock, the taker for the accept, and the swap aborted. Now the taker re-sends it (with
    backoff) within the swap's accept window and the trade is redeemed on both sides."""
    asyncio.run(_maker_down_after_commit(tmp_path))


async def _maker_down_after_commit(tmp_path: Path) -> None:
    import threading

    from kofo.settlement.journal import UnknownSwap

    deadline_s = 40
    async with network(tmp_path) as net:
        taker, maker = net.nodes["taker"], net.nodes["maker"]
        assert taker.pipeline is not None and maker.exchange is not None
        port = maker.exchange.port
        real = taker.pipeline.send
        assert real is not None
        down = threading.Event()
        attempts: list[str] = []

        def send(swap_id: bytes, body: Any) -> Any:
            if not attempts:
                # the first proposal waits (bounded) until the maker is down
                assert down.wait(300), "the maker was not stopped"
            try:
                reply = real(swap_id, body)
            except Exception as exc:
                attempts.append(type(exc).__name__)
                raise
            attempts.append("answered")
            return reply

        taker.pipeline.send = send
        await until(lambda: len(taker.exchange.book.pair("btc", "eth", 0)), "the offer")  # type: ignore[union-attr]
        started = time.monotonic()
        view = await taker.create_trade(
            TradeRequest(
                sell="btc",
                amount=SATS,
                buy="eth",
                min_receive=SATS * PRICE // 2,
                deadline_s=deadline_s,
            )
        )
        got = await until(
            lambda: (v := taker.store.find(view.trade_id)) and v.order_id and v, "the order", 120
        )
        oid = bytes.fromhex(got.order_id)
        await until(lambda: maker.phases.phase(oid, "committed") is not None, "the maker's commit")
        await maker.stop()
        down.set()
        await until(lambda: attempts, "the taker's first proposal attempt", 120)
        assert attempts[0] != "answered", attempts
        # back only after the taker's trade deadline has gone by
        await until(lambda: time.monotonic() - started > deadline_s + 1, "the deadline", 120)
        maker = _node(replace(maker.config, p2p_listen=Endpoint("127.0.0.1", port)), maker.wallet)
        net.nodes["maker"] = maker
        await maker.start()

        def accepted() -> bool:
            assert maker.engine is not None
            try:
                maker.engine.journal.get(oid)
            except UnknownSwap:
                return False
            return True

        await until(accepted, "the maker's accept of the re-sent proposal", 150)
        done = await until(lambda: _ended(taker, view.trade_id), "the trade to end", 240)
        assert done.state == "redeemed", (done.error, [p.phase for p in done.phases])
        m = await until(lambda: _by_order(maker, done.order_id), "the maker's trade row")
        m = await until(lambda: _ended(maker, m.trade_id), "the maker's trade to end", 120)
        assert m.state == "redeemed", (m.error, [p.phase for p in m.phases])
        order = await until(lambda: _settled(taker, done.order_id), "the order settled")
        assert order.outcomes == {"0": "redeemed", "1": "redeemed"}
