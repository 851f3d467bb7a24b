"""``make demo``'s entry point (``kofo demo``): ``kofo devnet`` and six ``kofo node`` processes,
a routed trade driven through the nodes' APIs, the ledger's outcome and fee shares, exact
balances. The test runs the real command and checks its exit code and the lines it must show."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from typer.testing import CliRunner

import kofo.demo
from kofo.cli import app
from kofo.demo import Check, DemoResult

LAUNCHER = "import sys; from kofo.cli import app; sys.argv[0] = 'kofo'; app()"


@pytest.mark.timeout(900)
def test_kofo_demo_runs_the_network_and_every_check_holds() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", LAUNCHER, "demo"],
        capture_output=True,
        text=True,
        timeout=850,
        env={**__import__("os").environ, "COLUMNS": "80"},
    )
    out = proc.stdout
    assert proc.returncode == 0, out[-4000:] + proc.stderr[-2000:]
    assert "all checks hold" in out
    # the topology: six nodes, every route through relays
    for name in ("maker_a", "maker_b", "relay1", "relay2", "relay3", "taker"):
        assert name in out
    # the offers spread to every node's book
    assert re.search(r"relay2 2 +relay3 2 +relay1 2 +taker 2", out)
    # two quotes, route lengths only (never a relay's identity in a quote line)
    quotes = [line for line in out.splitlines() if "quote:" in line]
    assert len(quotes) >= 2 and all("hops" in q for q in quotes)
    assert re.search(r"ordering +hops=[34]", out)
    # committed at a height with the app hash, each settlement step, the ledger's outcome
    assert re.search(r"committed at ledger height \d+", out)
    assert "app hash after that block" in out
    for step in ("lock_sent", "locked", "redeem_sent", "redeemed"):
        assert f"swap   {step}" in out or f"{step} " in out, step
    assert "outcomes {'0': 'redeemed', '1': 'redeemed'}" in out
    assert re.search(r"foundation +\d+ sat", out)
    # the balance table fits an 80-column terminal
    table = out[out.index("BTC change (sat)") - 10 :].splitlines()[:8]
    assert all(len(line) <= 80 for line in table), table


def _result(ok: bool) -> DemoResult:
    return DemoResult(checks=[Check("x", ok)])


def test_a_failed_check_fails_the_demo() -> None:
    assert _result(True).ok
    assert not _result(False).ok
    assert not DemoResult().ok  # no check at all is no success


def test_kofo_demo_exits_non_zero_when_a_check_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kofo.demo, "run_demo", lambda _console: _result(False))
    assert CliRunner().invoke(app, ["demo"]).exit_code == 1
    monkeypatch.setattr(kofo.demo, "run_demo", lambda _console: _result(True))
    assert CliRunner().invoke(app, ["demo"]).exit_code == 0
