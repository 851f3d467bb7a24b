"""The main job end to end: two nodes, embedded Bitcoin regtest and EVM, four swaps."""

from __future__ import annotations

import io

from rich.console import Console
from typer.testing import CliRunner

import kofo.demo
from kofo.cli import app
from kofo.demo import BTC, ETH, DemoResult, SwapOutcome, SwapPlan, run_demo
from kofo.money import Amount
from kofo.settlement.swap import State

MAX_BTC_FEE_PER_SWAP = 1_000
"""sats: one HTLC lock or redeem is ~150 vB at the 2 sat/vB regtest fallback rate."""
MAX_ETH_FEE_PER_SWAP = 10**16
"""wei: a few hundred thousand gas at devnet prices is far below 0.01 ETH."""


def test_demo_swaps_btc_eth_both_ways_and_an_erc20_and_balances_move_as_agreed():
    out = io.StringIO()
    result = run_demo(Console(file=out, width=120, color_system=None))
    text = out.getvalue()

    assert [o.plan.label for o in result.outcomes] == [
        "1. BTC → ETH",
        "2. ETH → BTC",
        "3. BTC → DUSD (ERC-20)",
        "4. BTC (Taproot) → ETH",
    ]
    for o in result.outcomes:
        assert o.states == {"alice": State.REDEEMED, "bob": State.REDEEMED}, o.plan.label
    dusd = result.assets[2]
    assert dusd.token is not None and dusd.symbol == "DUSD"

    # The agreed amounts, written out: alice gives 0.015 BTC for 0.5 ETH, 0.3 ETH for 0.01 BTC,
    # 0.02 BTC for 250 DUSD and 0.012 BTC (Taproot) for 0.4 ETH; bob takes the other side.
    fees = result.fees
    before, after = result.before, result.after
    btc_out = 1_500_000 - 1_000_000 + 2_000_000 + 1_200_000
    eth_in = 5 * 10**17 - 3 * 10**17 + 4 * 10**17
    assert after["alice"][BTC] == before["alice"][BTC] - btc_out - fees["alice"][BTC]
    assert after["bob"][BTC] == before["bob"][BTC] + btc_out - fees["bob"][BTC]
    assert after["alice"][ETH] == before["alice"][ETH] + eth_in - fees["alice"][ETH]
    assert after["bob"][ETH] == before["bob"][ETH] - eth_in - fees["bob"][ETH]
    assert after["alice"][dusd] == before["alice"][dusd] + 250 * 10**6
    assert after["bob"][dusd] == before["bob"][dusd] - 250 * 10**6
    for party in ("alice", "bob"):
        assert 0 < fees[party][BTC] <= 4 * MAX_BTC_FEE_PER_SWAP
        assert 0 < fees[party][ETH] <= 4 * MAX_ETH_FEE_PER_SWAP
        assert set(fees[party]) == {BTC, ETH}  # tokens never pay fees
    assert result.ok

    # Progress came from the engines' streams: every step of both nodes, with confirmations,
    # and the exact balances (no float rounding) in the final table.
    for state in ("lock_sent", "counter_audited", "redeem_sent", "redeemed"):
        assert text.count(f" {state} ") >= 8, state
    # A participant whose lock is redeemed before it sees the lock buried goes straight from
    # lock_sent to redeeming (the secret is public): only the four initiators surely pass
    # through "locked".
    assert text.count(" locked ") >= 4
    # Bob's Taproot BTC claim went through the key path, co-signed by alice over the channel.
    (taproot,) = [o for o in result.outcomes if o.plan.taproot]
    assert taproot.btc_claim == (
        "by the key path (one signature of both nodes; no secret on this chain): 99 vB"
    )
    assert "the BTC leg was claimed by the key path" in text
    assert "1 confirmation" in text
    assert Amount(ETH, after["alice"][ETH]).number() in text.replace("\n", "").replace(" ", "")
    assert "every swap redeemed on both sides" in text


def _result(states: dict[str, State]) -> DemoResult:
    plan = SwapPlan("x", Amount(BTC, 10), Amount(ETH, 20))
    same = {"alice": {BTC: 100, ETH: 100}, "bob": {BTC: 100, ETH: 100}}
    return DemoResult(
        outcomes=[SwapOutcome(plan, b"\x00" * 16, states, 1.0)],
        assets=[BTC, ETH],
        before=same,
        after={"alice": {BTC: 90, ETH: 120}, "bob": {BTC: 110, ETH: 80}},
        fees={"alice": {}, "bob": {}},
        seconds=1.0,
    )


def test_a_swap_not_redeemed_on_both_sides_fails_the_demo():
    assert _result({"alice": State.REDEEMED, "bob": State.REDEEMED}).ok
    assert not _result({"alice": State.REDEEMED, "bob": State.REFUNDED}).ok


def test_kofo_demo_exits_non_zero_when_the_demo_fails(monkeypatch):
    failed = _result({"alice": State.REFUNDED, "bob": State.REFUNDED})
    monkeypatch.setattr(kofo.demo, "run_demo", lambda _console: failed)
    assert CliRunner().invoke(app, ["demo"]).exit_code == 1
