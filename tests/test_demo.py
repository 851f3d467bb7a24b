"""``make demo``'s entry point (``kofo demo``): ``kofo devnet`` and six ``kofo node`` processes,
a routed trade driven through the nodes' APIs, the ledger's outcome and fee shares, exact
balances; then a second trade whose maker is killed after the commit (the taker's refund, the
evidence, the slash executed on the bond vault). The test runs the real command and checks its
exit code and the lines it must show."""

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
    # trade 2: the chosen maker killed after the commit, the taker's lock, evidence, slash,
    # the vault executing it, the refund on chain and on the ledger
    second = " ".join(out[out.index("trade 2: maker_b") :].split())  # rich wraps at 80 columns
    assert re.search(r"maker_b SIGKILLed .* exit -9", second)
    assert re.search(r"taker +locked", second)
    assert re.search(r"evidence +kind=leg_not_locked leg=1", second)
    assert re.search(r"evidence_committed height=\d+", second)
    assert re.search(r"maker_b slashed 0\.05 ETH", second)
    assert "relays the validators' slash of 0.05 ETH" in second
    assert re.search(r"maker_b's bond 0\.95 ETH, the foundation received 0\.05 ETH", second)
    assert re.search(r"taker +refunded", second)
    assert "outcomes {'0': 'refunded'}" in second
    # the two trades overlap in time (trade 2 first: its evidence is the critical path) but
    # not on the screen: trade 2's section follows trade 1's balance table, whole
    started = re.search(r"trade 2, below, started at (\d+) s", out)
    assert started, out[:3000]
    assert out.index("BTC change (sat)") < out.index("trade 2: maker_b"), out
    rule2 = re.search(r"trade 2: maker_b is chosen.*\[(\d+) s\]", out)
    assert rule2 and abs(int(rule2.group(1)) - int(started.group(1))) <= 1, out
    assert re.search(r"maker_b\* +\+0 +\+0", out), out  # dead by then: read from the chains
    assert re.search(r"the taker sells 0\.005 BTC: below maker_a's minimum", second), out
    # the phase times, with the load they were measured under
    assert "where the time went" in out and "load average" in out


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


@pytest.mark.timeout(300)
def test_the_node_launcher_forks_the_real_command_and_reports_its_exit(tmp_path) -> None:
    # The demo forks each `kofo node` from one parent that imported the node's code once: the
    # child runs the real command in its own session with its own log and environment, and
    # its exit code comes back as a child's would.
    import os

    log = tmp_path / "node.log"
    zygote = kofo.demo.Zygote(dict(os.environ), tmp_path / "launcher.log")
    try:
        env = dict(os.environ, KOFO_PASSPHRASE=kofo.demo.PASSPHRASE)
        pid = zygote.spawn(["node", "--home", str(tmp_path / "no-home")], env, log)
        child = kofo.demo.Forked(zygote, pid)
        assert child.wait(timeout=120) == 1
        assert child.returncode == 1 and child.poll() == 1
        assert "no-home" in log.read_text()  # the command's own error, in the node's log
    finally:
        zygote.close()
    assert zygote.popen.returncode == 0


def test_demo_homes_use_the_key_store_floor_and_hold_the_paillier_key(tmp_path):
    """make demo writes each home's wallet at the key store's floor N (demo-only, as the tests
    do) and its Paillier key file under the wallet's file key, and the node then opens both:
    its wallet with the passphrase, its Paillier key instead of generating one at
    registration."""
    import os

    from kofo.demo import DEMO_SCRYPT_N, PASSPHRASE, _write_home
    from kofo.node.registration import PAILLIER_FILE, load_or_create_paillier
    from kofo.settlement import keystore
    from kofo.wallet import NodeWallet

    assert DEMO_SCRYPT_N == keystore.MIN_N == 2**17 < keystore.SCRYPT_N
    seed = os.urandom(32)
    home = tmp_path / "maker"
    _write_home(home, "maker", seed)
    assert keystore.read_document(home / "wallet.json")["n"] == DEMO_SCRYPT_N
    assert not (home / PAILLIER_FILE).exists()  # under the wallet's file key: no scrypt
    assert (
        NodeWallet.open(home / "wallet.json", PASSPHRASE).mnemonic() == NodeWallet(seed).mnemonic()
    )
    blob = (home / "paillier.key").read_bytes()
    file_key = NodeWallet(seed).file_key("paillier")
    pub, _ = load_or_create_paillier(home, PASSPHRASE, file_key=file_key)  # the node's open
    assert (home / "paillier.key").read_bytes() == blob  # opened, not generated again
    assert pub.n.bit_length() == 2048


def test_trade_2s_output_is_held_until_trade_1s_section_ends() -> None:
    # The trades run at once; trade 2 writes to a held stream that is printed whole after
    # trade 1's section, then passes straight through.
    import io

    from kofo.demo import _Held

    out = io.StringIO()
    held = _Held(out)
    held.write("trade 2: first\n")
    held.write("t+ 1.0 s  committed\n")
    assert out.getvalue() == ""  # nothing of trade 2 among trade 1's lines
    out.write("trade 1: balances\n")
    held.release()
    held.write("t+40.0 s  refunded\n")
    assert out.getvalue() == (
        "trade 1: balances\ntrade 2: first\nt+ 1.0 s  committed\nt+40.0 s  refunded\n"
    )
