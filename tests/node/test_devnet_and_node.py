"""`kofo devnet`, `kofo init --devnet` and `kofo node` as a newcomer runs them: subprocesses
talked to with the real clients (LedgerClient, the Core RPC client, web3)."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from web3 import Web3

from kofo.node.config import load_config
from kofo.node.devnet import FUND_DUSD, FUND_WEI
from kofo.node.ledger_client import LedgerClient, LedgerRefused
from kofo.settlement.chains.bitcoin.params import chain_params
from kofo.settlement.chains.bitcoin.rpc import RpcClient
from kofo.settlement.chains.bitcoin.wallet import HdWallet
from kofo.settlement.chains.ethereum.keys import account_from_seed
from kofo.wallet import NodeWallet
from kofo.wire.codec import decode

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

SRC = Path(__file__).resolve().parents[2] / "src"
PASS = "devnet test passphrase"
WAIT = 60.0
"""Bound on a process reaching a state (all of them do in seconds)."""


class Proc:
    """A `kofo` subprocess whose output lines are read by threads, so a test waits for a
    line with a deadline instead of blocking on a pipe."""

    def __init__(self, *args: str, cwd: Path, env: dict[str, str] | None = None) -> None:
        env = {**os.environ, "PYTHONPATH": str(SRC), "KOFO_PASSPHRASE": PASS, **(env or {})}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from kofo.cli import app; app()", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            env=env,
            cwd=cwd,
        )
        self.lines: queue.Queue[tuple[str, str]] = queue.Queue()
        self.seen: list[str] = []
        for name, stream in (("out", self.proc.stdout), ("err", self.proc.stderr)):
            threading.Thread(target=self._pump, args=(name, stream), daemon=True).start()

    def _pump(self, name, stream):
        for line in stream:
            self.lines.put((name, line.rstrip("\n")))

    def wait_line(self, predicate, what: str, timeout: float = WAIT) -> str:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(f"no line with {what} in {timeout}s; saw:\n" + "\n".join(self.seen))
            try:
                _, line = self.lines.get(timeout=min(left, 1.0))
            except queue.Empty:
                if self.proc.poll() is not None and self.lines.empty():
                    pytest.fail(
                        f"exited {self.proc.returncode} before {what}:\n" + "\n".join(self.seen)
                    )
                continue
            self.seen.append(line)
            if predicate(line):
                return line

    def stop(self, sig=signal.SIGINT) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=WAIT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def rest(self) -> str:
        time.sleep(0.2)  # the pump threads drain what the exited process wrote
        while not self.lines.empty():
            self.seen.append(self.lines.get()[1])
        return "\n".join(self.seen)


def test_devnet_serves_funded_chains_and_a_ledger_and_a_node_runs_on_it(tmp_path):
    """BTC, LTC (``kofo devnet``'s default) and the EVM, each funded; a node on all three."""
    btc_address = HdWallet(os.urandom(32), chain_params("btc", "regtest")).address()
    ltc_address = HdWallet(os.urandom(32), chain_params("ltc", "regtest")).address()
    eth_address = account_from_seed(os.urandom(32)).address
    devnet = Proc(
        "devnet", "--json", "--fund", btc_address, "--fund", ltc_address, "--fund", eth_address,
        "--block-interval", "0.2", cwd=tmp_path,
    )  # fmt: skip
    node = second = None
    try:
        line = devnet.wait_line(lambda s: s.startswith("{"), "the devnet's JSON")
        desc = json.loads(line)

        ledger = LedgerClient(desc["ledger"]["url"])
        assert ledger.status().network == "kofo-solo"
        assert decode(ledger.abci_query("/params"))["foundation_bps"] == 1_000
        with pytest.raises(LedgerRefused):
            ledger.broadcast_tx_sync(b"not a ledger transaction")

        b = desc["chains"]["btc"]
        core = RpcClient(b["rpc_url"], b["rpc_user"], b["rpc_password"])
        info = core.call("getblockchaininfo")
        assert info["chain"] == "regtest" and info["blocks"] >= 101
        first = core.call("getblock", core.call("getblockhash", 1), 2)
        assert first["tx"][0]["vout"][0]["scriptPubKey"]["address"] == btc_address
        assert first["tx"][0]["vout"][0]["value"] == 50
        height = info["blocks"]
        deadline = time.monotonic() + WAIT
        while core.call("getblockcount") <= height:  # the devnet keeps mining
            assert time.monotonic() < deadline, "no new regtest block"
            time.sleep(0.1)

        # the Litecoin regtest chain: its own Core RPC port, the LTC address's matured coinbase
        l_ = desc["chains"]["ltc"]
        assert l_["rpc_url"] != b["rpc_url"] and l_["network"] == "regtest"
        lcore = RpcClient(l_["rpc_url"], l_["rpc_user"], l_["rpc_password"])
        linfo = lcore.call("getblockchaininfo")
        assert linfo["chain"] == "regtest" and linfo["blocks"] >= 101
        lfirst = lcore.call("getblock", lcore.call("getblockhash", 1), 2)
        assert lfirst["tx"][0]["vout"][0]["scriptPubKey"]["address"] == ltc_address
        assert lfirst["tx"][0]["vout"][0]["value"] == 50
        assert lfirst["hash"] != first["hash"]  # two chains, not one served twice
        assert {"chain": "ltc", "address": ltc_address, "sats": 50 * 10**8} in desc["funded"]
        lheight = linfo["blocks"]
        while lcore.call("getblockcount") <= lheight:  # mined as the BTC chain is
            assert time.monotonic() < deadline + WAIT, "no new litecoin regtest block"
            time.sleep(0.1)

        e = desc["chains"]["eth"]
        w3 = Web3(Web3.HTTPProvider(e["rpc_url"]))
        assert w3.eth.get_balance(eth_address) == FUND_WEI
        assert len(w3.eth.get_code(e["htlc_contract"])) > 0
        erc20 = w3.eth.contract(
            address=e["tokens"]["DUSD"],
            abi=[
                {
                    "name": "balanceOf",
                    "type": "function",
                    "stateMutability": "view",
                    "inputs": [{"name": "a", "type": "address"}],
                    "outputs": [{"name": "", "type": "uint256"}],
                }
            ],
        )
        assert erc20.functions.balanceOf(eth_address).call() == FUND_DUSD

        # a node home from the devnet's JSON, then the node on it
        (tmp_path / "devnet.json").write_text(line)
        home = tmp_path / "alice"
        init = Proc("init", "--home", str(home), "--name", "alice", "--devnet", "devnet.json",
                    cwd=tmp_path)  # fmt: skip
        assert init.proc.wait(timeout=WAIT) == 0, init.rest()
        config = load_config(home)
        assert config.ledger.url == desc["ledger"]["url"]
        assert config.chains["eth"].htlc_contract == e["htlc_contract"]  # type: ignore[union-attr]
        assert config.chains["ltc"].rpc_url == l_["rpc_url"]
        assert config.chains["ltc"].network == "regtest"  # type: ignore[union-attr]
        # the devnet's bond vault is in the config; no bond unless the maker sets an amount
        assert Web3.is_address(desc["bond"]["vault"])
        assert (config.bond.vault, config.bond.amount) == (desc["bond"]["vault"], 0)
        again = Proc("init", "--home", str(home), cwd=tmp_path)
        assert again.proc.wait(timeout=WAIT) == 1
        assert "not empty" in again.rest()

        node = Proc("node", "--home", str(home), cwd=tmp_path)
        node.wait_line(lambda s: "ledger reachable" in s and "kofo-solo" in s, "ledger reachable")
        node.wait_line(lambda s: "node 'alice' started" in s, "the daemon started")
        wallet = NodeWallet.open(home / "wallet.json", PASS)
        address = wallet.eth_account().address
        assert any(address in s for s in node.seen)  # logged before "started"
        # the node built its LTC adapter on the devnet's chain (it refuses a wrong network)
        ltc_own = wallet.bitcoin("ltc", "regtest").address()
        assert any(f"ltc (regtest) address {ltc_own}" in s for s in node.seen)

        second = Proc("node", "--home", str(home), cwd=tmp_path)
        assert second.proc.wait(timeout=WAIT) == 1
        assert f"PID {node.proc.pid}" in second.rest()

        # the ledger goes away: the node waits it out (retryable), it does not die
        assert devnet.stop() == 0
        assert "devnet stopped" in devnet.rest()
        node.wait_line(lambda s: "ledger unreachable" in s, "ledger unreachable")
        assert node.proc.poll() is None
        assert node.stop(signal.SIGTERM) == 0
        assert "stopped" in node.rest()
    finally:
        for p in (devnet, node, second):
            if p is not None and p.proc.poll() is None:
                p.stop()


def test_a_litecoin_address_is_refused_by_a_devnet_without_ltc_naming_it():
    """``--no-ltc`` (the demo's devnet) serves no LTC chain: a Litecoin address to fund is
    refused before anything starts, naming it, never silently left unfunded."""
    from kofo.errors import InvalidInput
    from kofo.node.devnet import start_devnet

    ltc_address = HdWallet(os.urandom(32), chain_params("ltc", "regtest")).address()
    with pytest.raises(InvalidInput, match=ltc_address):
        start_devnet(fund=[ltc_address], block_interval=0)
    with pytest.raises(InvalidInput, match="rltc1"):
        start_devnet(fund=["ltc1qnotaregtestaddress"], block_interval=0, ltc=True)
