"""A swap node as its own process, for crash tests: runs one journal's swaps to the end.

``run_node(config, crash_at, crash_log)`` connects to the shared devnet chain over JSON-RPC (and,
when the config names one, to the shared embedded Bitcoin regtest chain over its Core-dialect
JSON-RPC), opens the node's journal and runs the watchtower until every swap is finished. With
``crash_at`` it SIGKILLs itself at that point (see ``kofo.settlement.engine.CRASH_POINTS``).
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from eth_account import Account
from web3 import Web3

from kofo.settlement.chain import ChainAdapter
from kofo.settlement.chains.bitcoin.adapter import BitcoinAdapter
from kofo.settlement.chains.bitcoin.backend import RpcBackend
from kofo.settlement.chains.bitcoin.params import chain_params
from kofo.settlement.chains.bitcoin.rpc import RpcClient
from kofo.settlement.chains.bitcoin.wallet import HdWallet
from kofo.settlement.chains.ethereum.adapter import EthereumAdapter
from kofo.settlement.engine import CrashHook, SwapEngine
from kofo.settlement.journal import Journal
from kofo.settlement.monitor import Watchtower
from kofo.settlement.terms import ChainPolicy, SwapTerms, devnet_policy

RUN_LIMIT_SECONDS = 300
"""A life that has not finished by then stops (exit 3): a hang bound, as the test's RUN_TIMEOUT."""


def accept_any(terms: SwapTerms) -> None:
    """The crash tests' accept policy (explicit; the engine's default accepts nothing)."""
    del terms


def build_engine(config: dict[str, Any], crash: CrashHook | None = None) -> SwapEngine:
    w3 = Web3(Web3.HTTPProvider(config["rpc_url"], request_kwargs={"timeout": 30}))
    account = Account.from_key(bytes.fromhex(config["eth_key"]))
    adapters: dict[str, ChainAdapter] = {
        "eth": EthereumAdapter(w3, account, config["htlc"], chain="eth")
    }
    policies: dict[str, ChainPolicy] = {"eth": devnet_policy("eth", height_clock=False)}
    if config.get("btc_rpc_url"):
        client = RpcClient(
            config["btc_rpc_url"], config["btc_rpc_user"], config["btc_rpc_password"]
        )
        wallet = HdWallet(bytes.fromhex(config["btc_seed"]), chain_params("btc", "regtest"))
        adapters["btc"] = BitcoinAdapter(
            RpcBackend(client), wallet, start_height=int(config["btc_start_height"])
        )
        policies["btc"] = devnet_policy("btc", height_clock=True)
    return SwapEngine(
        Journal(config["journal"]),
        adapters,
        policies,
        Ed25519PrivateKey.from_private_bytes(bytes.fromhex(config["node_key"])),
        crash=crash or CrashHook(),
        accept_policy=accept_any,
    )


def run_node(config: dict[str, Any], crash_at: str | None, crash_log: str | None) -> None:
    if config.get("log_file"):
        logging.basicConfig(
            filename=config["log_file"],
            level=logging.INFO,
            format=f"%(asctime)s {crash_at or '-'} %(name)s %(levelname)s %(message)s",
        )
    engine = build_engine(config, CrashHook(crash_at, crash_log))
    tower = Watchtower(engine, poll_interval=0.05)
    stop = threading.Event()
    timer = threading.Timer(RUN_LIMIT_SECONDS, stop.set)
    timer.daemon = True
    timer.start()
    tower.run(stop, until_idle=True)
    timer.cancel()
    sys.exit(0 if not engine.unfinished() else 3)
