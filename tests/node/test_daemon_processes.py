"""The daemon as a newcomer runs it: ``kofo devnet``, then ``kofo node`` processes (a maker with
an ``[[offers]]`` table, a taker), and ``kofo trade`` through the API (the CLI uses the SDK).
The trade ends redeemed on both nodes and the order settled on the ledger. Then the taker is
SIGKILLed at a phase boundary (``KOFO_CRASH_AT=trade_committed``: the order is committed, the
swap not started) and restarted: the trade still ends redeemed on both sides."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from kofo.sdk import Client
from kofo.wallet import NodeWallet
from tests.node.test_devnet_and_node import PASS, Proc
from tests.nodes import free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

SATS = 1_000_000
WAIT = 120.0


def _until(pred, what: str, timeout: float = WAIT):
    deadline = time.monotonic() + timeout
    while True:
        try:
            got = pred()
        except Exception:  # the API not up yet, a node restarting
            got = None
        if got:
            return got
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.5)


def _home(tmp_path: Path, name: str, devnet_json: Path, p2p: int, api: int, extra: str) -> Path:
    home = tmp_path / name
    init = Proc(
        "init", "--home", str(home), "--name", name, "--devnet", str(devnet_json), "--force",
        cwd=tmp_path,
    )  # fmt: skip
    assert init.proc.wait(timeout=WAIT) == 0, init.rest()
    cfg = home / "config.toml"
    text = cfg.read_text()
    text = text.replace('listen = "127.0.0.1:9730"', f'listen = "127.0.0.1:{p2p}"')
    text = text.replace('bind = "127.0.0.1:9731"', f'bind = "127.0.0.1:{api}"')
    cfg.write_text(text + extra)
    return home


def test_kofo_trade_between_node_processes_and_a_taker_killed_after_the_commit(
    tmp_path: Path,
) -> None:
    wallets = {}
    for name in ("taker", "maker"):
        (tmp_path / name).mkdir(mode=0o700)
        wallets[name] = NodeWallet.create(tmp_path / name / "wallet.json", PASS)
    fund = []
    for name, w in wallets.items():
        fund += ["--fund", w.bitcoin("btc", "regtest", home=tmp_path / name).address()]
        fund += ["--fund", w.eth_account().address]
    # --no-ltc: BTC -> ETH only; an LTC chain would add its start and each node's polling
    devnet = Proc("devnet", "--json", "--no-ltc", "--block-interval", "0.5", *fund, cwd=tmp_path)
    procs: list[Proc] = [devnet]
    try:
        line = devnet.wait_line(lambda s: s.startswith("{"), "the devnet's JSON")
        (tmp_path / "devnet.json").write_text(line)
        json.loads(line)
        mp, tp = free_port(), free_port()
        maker = _home(
            tmp_path, "maker", tmp_path / "devnet.json", mp, free_port(),
            '\n[[offers]]\nbuy = "btc"\nsell = "eth"\nprice_num = 10_000_000_000\n'
            "price_den = 1\nmin_in = 10_000\nmax_in = 100_000_000\n",
        )  # fmt: skip
        taker = _home(tmp_path, "taker", tmp_path / "devnet.json", tp, free_port(), "")
        text = (taker / "config.toml").read_text()
        (taker / "config.toml").write_text(
            text.replace("bootstrap = []", f'bootstrap = ["127.0.0.1:{mp}"]')
        )
        m = Proc("node", "--home", str(maker), cwd=tmp_path)
        procs.append(m)
        t = Proc("node", "--home", str(taker), cwd=tmp_path)
        procs.append(t)
        for p in (m, t):
            p.wait_line(lambda s: "registered" in s, "registration", timeout=WAIT)
        tc, mc = Client.from_home(taker), Client.from_home(maker)
        _until(lambda: any(not o.own for o in tc.offers()), "the maker's offer at the taker")

        # 1. a trade through the CLI (SDK -> API -> daemon), followed to its end
        trade = Proc(
            "trade", "--sell", "BTC:0.01", "--buy", "ETH", "--home", str(taker), cwd=tmp_path
        )
        assert trade.proc.wait(timeout=300) == 0, trade.rest()
        out = trade.rest()
        assert "received" in out, out
        (done,) = tc.trades()
        assert done.state == "redeemed" and done.order_id, done
        _until(lambda: [x.state for x in mc.trades()] == ["redeemed"], "the maker's trade redeemed")
        order = _until(
            lambda: (o := tc.ledger_order(done.order_id)).status == "settled" and o,
            "the order settled",
        )
        assert order.outcomes == {"0": "redeemed", "1": "redeemed"}

        # 2. the taker SIGKILLed once its order is committed, before the swap starts
        t.stop()
        tc.close()
        t = Proc(
            "node", "--home", str(taker), cwd=tmp_path, env={"KOFO_CRASH_AT": "trade_committed"}
        )
        procs.append(t)
        t.wait_line(lambda s: "started" in s, "the taker restarted")
        t.wait_line(lambda s: "registered on the ledger" in s, "the taker's registration")
        tc = Client.from_home(taker)
        _until(lambda: any(not o.own for o in tc.offers()), "the offer after the restart")
        view = _until(
            lambda: tc.create_trade(sell="BTC", amount=SATS, buy="ETH", min_receive=1),
            "a trade accepted",
        )
        try:
            code = t.proc.wait(timeout=WAIT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"not killed at trade_committed: {tc.trade(view.trade_id)}")
        assert code == -9  # killed at the crash point
        t = Proc("node", "--home", str(taker), cwd=tmp_path)
        procs.append(t)
        tc.close()
        tc = Client.from_home(taker)
        end = _until(
            lambda: (
                (v := tc.trade(view.trade_id)).state in ("redeemed", "refunded", "failed") and v
            ),
            "the trade to end after the restart",
            timeout=300,
        )
        assert end.state == "redeemed", end
        assert "committed" in [p.phase for p in end.phases]
        _until(
            lambda: sorted(x.state for x in mc.trades()) == ["redeemed", "redeemed"],
            "the maker's second trade redeemed",
        )
        second = _until(
            lambda: (o := tc.ledger_order(end.order_id)).status == "settled" and o,
            "the second order settled",
        )
        assert second.outcomes == {"0": "redeemed", "1": "redeemed"}
        assert len(tc.trades()) == 2
    finally:
        for p in reversed(procs):
            if p.proc.poll() is None:
                p.stop()
