"""``kofo node --home DIR``: the daemon's skeleton.

What runs today: the home is locked (one node per home), the config and the wallet are loaded,
and a health loop watches the ledger through :class:`~kofo.node.ledger_client.LedgerClient`,
logging when it becomes reachable or unreachable (a ledger outage is waited out, never fatal).
SIGINT and SIGTERM stop it cleanly. It does NOT trade yet: the exchange node, the swap engine,
the watchtower and the phase journal are composed here in a later step (issue 14); until
then the node says so at start instead of pretending.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass
from pathlib import Path

from kofo.node.config import BitcoinChainConfig, NodeConfig, load_config
from kofo.node.home import HomeLock
from kofo.node.ledger_client import LedgerClient, LedgerError, Status
from kofo.wallet import NodeWallet

log = logging.getLogger("kofo.node")

HEALTH_INTERVAL = 5.0
"""Seconds between ledger checks: an outage is noticed within one interval, and a check is
one small RPC, nothing a ledger notices."""


@dataclass
class NodeState:
    """What the node knows now; the API will expose it."""

    ledger: Status | None = None
    ledger_error: str = ""


class Node:
    def __init__(self, config: NodeConfig, wallet: NodeWallet) -> None:
        self.config = config
        self.wallet = wallet
        self.ledger = LedgerClient(config.ledger.url, timeout=config.ledger.timeout)
        self.state = NodeState()
        self._stop = asyncio.Event()

    def identity_lines(self) -> list[str]:
        lines = [f"eth address {self.wallet.eth_account().address}"]
        for chain in self.config.chains.values():
            if isinstance(chain, BitcoinChainConfig):
                hd = self.wallet.bitcoin(chain.chain, chain.network)
                lines.append(f"{chain.chain} ({chain.network}) address {hd.address()}")
        return lines

    def stop(self) -> None:
        self._stop.set()

    async def check_ledger(self) -> None:
        try:
            status = await asyncio.to_thread(self.ledger.status)
        except LedgerError as exc:
            if self.state.ledger_error != str(exc):
                log.warning("ledger unreachable, retrying every %gs: %s", HEALTH_INTERVAL, exc)
            self.state.ledger_error = str(exc)
            return
        if self.state.ledger is None or self.state.ledger_error:
            log.info(
                "ledger reachable: %s, network %s, height %d",
                self.config.ledger.url,
                status.network,
                status.height,
            )
        self.state.ledger, self.state.ledger_error = status, ""

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stop)
        log.info("node %r started (home %s)", self.config.name, self.config.home)
        for line in self.identity_lines():
            log.info("%s", line)
        log.warning(
            "this node does not trade yet: it holds its home, loads its wallet and watches "
            "the ledger; offers, quotes and swaps come with the rest of issue 14"
        )
        try:
            while not self._stop.is_set():
                await self.check_ledger()
                try:
                    await asyncio.wait_for(self._stop.wait(), HEALTH_INTERVAL)
                except TimeoutError:
                    pass
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
        log.info("node %r stopped", self.config.name)


def run_node(home: Path, passphrase: str) -> None:
    """Lock the home, load config and wallet, run until SIGINT/SIGTERM. Raises
    :class:`~kofo.node.home.NodeAlreadyRunning`, ``ConfigError`` or ``WalletError``."""
    home = home.expanduser().absolute()
    config = load_config(home)
    logging.basicConfig(
        level=getattr(logging, config.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )
    with HomeLock(home):
        wallet = NodeWallet.open(config.wallet_path, passphrase)
        asyncio.run(Node(config, wallet).run())
