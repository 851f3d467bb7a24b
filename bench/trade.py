"""Routed trades end to end on the embedded devnet: what routing + clearance add to a swap.

    python -m bench.trade [--n 1 20] [--makers 3] [--takers 2]

``kofo devnet``'s servers (embedded Bitcoin regtest over Core RPC, the EVM over Ethereum
JSON-RPC, the solo ledger over CometBFT RPC) and in-process daemons (:class:`kofo.node.daemon.Node`,
one event loop): ``--takers`` takers, a relay and ``--makers`` makers at slightly different
prices, every taker and maker linked to the relay only, so every route has a relay (taker --
relay -- maker). For each N the takers start N BTC -> ETH trades at once (``create_trade``,
round robin) and the bench waits (bounded) until each has ended on both sides. Two takers by
default: a maker's engine keeps at most 16 open swaps with one counterparty
(``PeerLimits.open_swaps_per_peer``), and the best price takes every trade.
Per trade, from its phase timestamps:

* ``quote``: ``claim_sent`` -> ``quotes`` (the claim's round trip and the quote window, which
  ends once every maker of the taker's book has quoted: ``windows_ended``),
* ``commit``: ``quotes`` -> ``committed`` (route co-signing, ``commit_order`` in a block),
* ``settle``: ``committed`` -> both sides ``redeemed`` (the swap engine's work: proposal,
  both HTLC legs locked and redeemed).

The bare engine's figure is ``settle``: the same swap (same chains, amounts, confirmations and
engine tick) driven by the swap engine alone; ``overhead_ratio`` = (``quote`` + ``commit`` +
``settle``) / ``settle``, per trade (p50). The goal is 1.25. One JSON object per N: wall time,
trades/s, p50/p99 per phase, the ratio. Not a test: no assertion on time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from kofo.node.config import Endpoint, LedgerConfig, OfferConfig, load_config
from kofo.node.daemon import Node
from kofo.node.devnet import start_devnet
from kofo.node.home import init_home
from kofo.node.service import TradeRequest, TradeView
from kofo.settlement.engine import CrashHook
from kofo.wallet import NodeWallet

PASS = "bench passphrase"
SATS = 100_000
"""0.001 BTC per trade."""
PRICE = 10**10
TERMINAL = ("redeemed", "refunded", "failed", "cancelled")
WAIT_S = 600.0
"""Bound of every wait: a bench never hangs."""


async def _until(pred: Any, what: str, timeout: float = WAIT_S) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = pred()
        if asyncio.iscoroutine(got):
            got = await got
        if got:
            return got
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def _pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return round(ordered[k], 3)


async def _network(root: Path, makers: int, takers: int) -> tuple[Any, dict[str, Node]]:
    names = [
        *[f"taker{i}" for i in range(takers)],
        "relay",
        *[f"maker{i}" for i in range(makers)],
    ]
    wallets = {}
    fund = []
    for n in names:
        home = root / n
        home.mkdir(mode=0o700)
        w = NodeWallet.create(home / "wallet.json", PASS)
        wallets[n] = w
        fund += [w.bitcoin("btc", "regtest", home=home).address(), w.eth_account().address]
    devnet = await asyncio.to_thread(start_devnet, fund=fund, block_interval=0.2)
    desc = devnet.describe()
    nodes: dict[str, Node] = {}
    for n in names:
        home = root / n
        init_home(
            home, PASS, name=n, ledger_url=desc["ledger"]["url"], chains=desc["chains"], force=True
        )
        cfg = load_config(home)
        offers: tuple[OfferConfig, ...] = ()
        if n.startswith("maker"):
            offers = (
                OfferConfig(
                    buy="btc",
                    sell="eth",
                    price_num=PRICE - int(n[5:]),  # different prices, all quoted
                    price_den=1,
                    min_in=10_000,
                    max_in=100 * SATS,
                ),
            )
        # a generous ledger timeout: the devnet's servers share this process (and its GIL)
        cfg = replace(
            cfg,
            p2p_listen=Endpoint("127.0.0.1", 0),
            offers=offers,
            ledger=LedgerConfig(cfg.ledger.url, 60.0),
        )
        nodes[n] = Node(
            cfg,
            wallets[n],
            passphrase=PASS,
            exchange_options={"target_degree": 0},
            crash=CrashHook(),
        )
    for node in nodes.values():
        await node.start()
    relay = nodes["relay"]
    assert relay.exchange is not None
    for n, node in nodes.items():
        if n != "relay":
            assert node.exchange is not None
            await node.exchange.connect("127.0.0.1", relay.exchange.port)
    for node in nodes.values():
        await _until(lambda node=node: node.state.registered, "registration")
    for name, taker in nodes.items():
        if name.startswith("taker"):
            await _until(
                lambda taker=taker: (
                    taker.exchange is not None
                    and len(taker.exchange.book.pair("btc", "eth", 0)) >= makers
                ),
                "every maker's offer at each taker",
            )
    return devnet, nodes


def _phase_at(view: TradeView, phase: str) -> float | None:
    return next((p.at for p in view.phases if p.phase == phase), None)


def _windows_ended(takers: list[Node]) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in takers:
        if t.exchange is not None:
            for k, v in t.exchange.stats.windows_ended.items():
                out[k] = out.get(k, 0) + v
    return out


async def _batch(nodes: dict[str, Node], n: int) -> dict[str, Any]:
    takers = [node for name, node in nodes.items() if name.startswith("taker")]
    makers = [node for name, node in nodes.items() if name.startswith("maker")]
    before = _windows_ended(takers)
    t0 = time.time()
    views = []
    for i in range(n):
        taker = takers[i % len(takers)]
        req = TradeRequest(sell="btc", amount=SATS, buy="eth", min_receive=1, deadline_s=300)
        views.append((taker, await taker.create_trade(req)))

    def ended(taker: Node, tid: str) -> TradeView | None:
        v = taker.store.find(tid)
        return v if v is not None and v.state in TERMINAL else None

    done = [await _until(lambda t=t, v=v: ended(t, v.trade_id), "a trade to end") for t, v in views]
    served: dict[str, int] = {}
    phases: dict[str, list[float]] = {"quote": [], "commit": [], "settle": [], "total": []}
    ratios: list[float] = []
    failed = [d for d in done if d.state != "redeemed"]
    for d in done:
        if d.state != "redeemed" or not d.order_id:
            continue
        oid = d.order_id

        def maker_row(oid: str = oid) -> TradeView | None:
            for m in makers:
                row = m.store.by_order(oid)
                if row is not None and row.state in TERMINAL:
                    return row
            return None

        m = await _until(maker_row, "the maker's side to end")
        who = next(mk.config.name for mk in makers if mk.store.by_order(oid) is not None)
        served[who] = served.get(who, 0) + 1
        claim, quotes, committed = (_phase_at(d, p) for p in ("claim_sent", "quotes", "committed"))
        end = max(
            _phase_at(d, "redeemed") or d.updated_at, _phase_at(m, "redeemed") or m.updated_at
        )
        if claim is None or quotes is None or committed is None:
            continue
        q, c, s = quotes - claim, committed - quotes, end - committed
        phases["quote"].append(q)
        phases["commit"].append(c)
        phases["settle"].append(s)
        phases["total"].append(end - claim)
        ratios.append((end - claim) / s)
    wall = max((max(_phase_at(d, "redeemed") or d.updated_at for d in done) - t0), 1e-9)
    out: dict[str, Any] = {
        "bench": "trade",
        "concurrent_trades": n,
        "takers": len(takers),
        "makers": len(makers),
        "served_by": served,
        "redeemed": n - len(failed),
        "failed": [f"{d.state}: {d.error[:120]}" for d in failed],
        "wall_s": round(wall, 3),
        "trades_per_s": round((n - len(failed)) / wall, 3),
        # How the takers' quote windows ended (exchange v6): "all_quoted" when every maker of
        # the book answered before window_s, "window" when one did not.
        "windows_ended": {
            k: v - before.get(k, 0)
            for k, v in _windows_ended(takers).items()
            if v > before.get(k, 0)
        },
    }
    for name, values in phases.items():
        out[f"{name}_p50_s"] = _pct(values, 0.5)
        out[f"{name}_p99_s"] = _pct(values, 0.99)
    out["engine_settle_p50_s"] = out["settle_p50_s"]
    out["overhead_ratio_p50"] = round(statistics.median(ratios), 3) if ratios else None
    out["overhead_ratio_max"] = round(max(ratios), 3) if ratios else None
    out["goal_ratio"] = 1.25
    return out


async def _run(sizes: list[int], makers: int, takers: int) -> None:
    with tempfile.TemporaryDirectory(prefix="kofo-bench-trade-") as tmp:
        devnet, nodes = await _network(Path(tmp), makers, takers)
        try:
            for n in sizes:
                print(json.dumps(await _batch(nodes, n)), flush=True)
        finally:
            for node in nodes.values():
                await node.stop()
            await asyncio.to_thread(devnet.stop)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, nargs="+", default=[1, 20])
    parser.add_argument("--makers", type=int, default=3)
    parser.add_argument("--takers", type=int, default=2)
    args = parser.parse_args()
    if any(n < 1 or n > 200 for n in args.n) or not 1 <= args.makers <= 10:
        parser.error("--n must be within 1..200 and --makers within 1..10")
    if not 1 <= args.takers <= 10:
        parser.error("--takers must be within 1..10")
    asyncio.run(_run(args.n, args.makers, args.takers))


if __name__ == "__main__":
    main()
