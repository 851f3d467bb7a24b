"""A KOFO network of real processes for tests: one ``kofo devnet`` and ``kofo node`` daemons,
each in its own home, linked in a fixed topology (``[p2p] target_degree = 0``: a node knows
only its ``bootstrap`` peers, so a route has the relays the test draws), driven through the
SDK (:class:`kofo.sdk.Client`) as a user drives them. Nodes can be SIGKILLed (directly or at
a crash point: ``KOFO_CRASH_AT``) and restarted on the same home; the devnet's ledger can be
paused (SIGUSR1) and resumed (SIGUSR2). Every wait is bounded and fails naming what it waited
for, with the process's last output."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from kofo.node.config import render_config
from kofo.node.home import init_home
from kofo.node.ledger_client import LedgerClient, LedgerRefused
from kofo.node.registration import load_or_create_paillier
from kofo.sdk.client import Client
from kofo.sdk.errors import KofoApiError
from kofo.settlement import keystore
from kofo.wallet import NodeWallet
from kofo.wire.codec import decode, encode
from tests.nodes import free_port

SRC = Path(__file__).resolve().parents[2] / "src"
PASS = "procnet test passphrase"
WAIT = 450.0
"""Bound on a process reaching a state (seconds each when the machine is idle; minutes when
a 2-core machine runs many things at once)."""
TERMINAL = ("redeemed", "refunded", "failed", "cancelled")
TEST_SCRYPT_N = 2**17
"""scrypt cost of the test homes' wallet and Paillier key files: the key store format's floor
(version 2), half the default's (2^18, 256 MiB). Every node start unlocks both files: at 2^18 one
unlock took ~14 s on the 2-core machine at load 28, the largest part of a restart."""


class Proc:
    """A ``kofo`` subprocess whose output lines are pumped by threads into a queue, so a
    test waits for a line with a deadline instead of blocking on a pipe."""

    def __init__(self, *args: str, cwd: Path, env: dict[str, str] | None = None) -> None:
        full = {**os.environ, "PYTHONPATH": str(SRC), "KOFO_PASSPHRASE": PASS, **(env or {})}
        self.args = args
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from kofo.cli import app; app()", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            env=full,
            cwd=cwd,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def drain(self) -> list[str]:
        while True:
            try:
                self.seen.append(self.lines.get_nowait())
            except queue.Empty:
                return self.seen

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.drain()[-n:])

    def wait_line(self, predicate: Callable[[str], bool], what: str, timeout: float = WAIT) -> str:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(f"{self.args[:3]}: no line with {what} in {timeout}s:\n{self.tail()}")
            try:
                line = self.lines.get(timeout=min(left, 1.0))
            except queue.Empty:
                if self.proc.poll() is not None and self.lines.empty():
                    pytest.fail(
                        f"{self.args[:3]} exited {self.proc.returncode} before {what}:\n"
                        + self.tail()
                    )
                continue
            self.seen.append(line)
            if predicate(line):
                return line

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=WAIT)

    def stop(self) -> int:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=WAIT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise


def until(pred: Callable[[], Any], what: str, timeout: float = WAIT, every: float = 0.25) -> Any:
    """Poll (bounded) until ``pred()`` is truthy; fail naming ``what``. An API error while a
    node restarts counts as not yet."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            got = pred()
        except (KofoApiError, OSError) as exc:
            got, last = None, exc
        if got:
            return got
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what} (last error: {last})")
        time.sleep(every)


@dataclass
class NodeProc:
    name: str
    home: Path
    wallet: NodeWallet
    p2p: int
    api: int
    bootstrap: list[str]
    offers: list[dict[str, Any]]
    discover: bool = True
    crash_at: str | None = None
    """The crash point of the node's first start (``KOFO_CRASH_AT``)."""
    ltc: bool = False
    """The node serves the devnet's LTC chain (``[chains.ltc]``, its address funded)."""
    proc: Proc | None = None
    node_id: str = ""
    client: Client | None = None
    runs: list[Proc] = field(default_factory=list)

    @property
    def sdk(self) -> Client:
        assert self.client is not None, f"{self.name} is not running"
        return self.client

    def log(self) -> str:
        return "\n".join(line for run in self.runs for line in run.drain())


class Network:
    """``kofo devnet`` plus named ``kofo node`` processes; use as a context manager."""

    def __init__(
        self, tmp: Path, *, block_interval: float = 0.2, fast_timing: bool = False
    ) -> None:
        """``fast_timing``: ``kofo devnet --fast-timing`` (the ledger's and every node's
        ``[timing]``: windows of seconds, one confirmation)."""
        self.tmp = tmp
        self.block_interval = block_interval
        self.fast_timing = fast_timing
        self.nodes: dict[str, NodeProc] = {}
        self.devnet: Proc | None = None
        self.desc: dict[str, Any] = {}

    # -- setup ----------------------------------------------------------------------------------

    def add(
        self,
        name: str,
        *,
        bootstrap: Iterable[str] = (),
        offers: Iterable[dict] = (),
        discover: bool = True,
        crash_at: str | None = None,
        ltc: bool = False,
    ) -> None:
        """A node to start with the network. ``discover=False``: it links only its bootstrap
        peers and those dialling in (``[p2p] discover = false``), never an address learned
        from peers, so a restart of a relay cannot be bypassed by a direct link. ``ltc``: it
        also serves the devnet's Litecoin chain (the devnet starts one only if a node does:
        every node serving it would index and poll one more chain at each start)."""
        home = self.tmp / name
        home.mkdir(mode=0o700)
        seed = os.urandom(32)
        keystore.save_secret(home / "wallet.json", seed, PASS, n=TEST_SCRYPT_N)
        wallet = NodeWallet(seed)
        load_or_create_paillier(home, PASS, scrypt_n=TEST_SCRYPT_N)  # else the node makes it
        self.nodes[name] = NodeProc(
            name, home, wallet, free_port(), free_port(), list(bootstrap), list(offers),
            discover, crash_at, ltc,
        )  # fmt: skip

    def start(self) -> None:
        fund: list[str] = []
        for n in self.nodes.values():
            fund.append(n.wallet.bitcoin("btc", "regtest", home=n.home).address())
            fund.append(n.wallet.eth_account().address)
            if n.ltc:
                fund.append(n.wallet.bitcoin("ltc", "regtest", home=n.home).address())
        ltc = any(n.ltc for n in self.nodes.values())
        args = ["devnet", "--json", "--block-interval", str(self.block_interval)]
        args.append("--ltc" if ltc else "--no-ltc")
        if self.fast_timing:
            args.append("--fast-timing")
        for a in fund:
            args += ["--fund", a]
        self.devnet = Proc(*args, cwd=self.tmp)
        line = self.devnet.wait_line(lambda s: s.startswith("{"), "the devnet's JSON")
        self.desc = json.loads(line)
        for n in self.nodes.values():
            self._write_config(n)
        for n in self.nodes.values():
            self.start_node(n.name, n.crash_at)
        for n in self.nodes.values():
            self.wait_ready(n.name)

    def _write_config(self, n: NodeProc) -> None:
        chains = {k: v for k, v in self.desc["chains"].items() if k != "ltc" or n.ltc}
        init_home(
            n.home,
            PASS,
            name=n.name,
            ledger_url=self.desc["ledger"]["url"],
            chains=chains,
            force=True,
        )
        text = render_config(
            name=n.name,
            ledger_url=self.desc["ledger"]["url"],
            chains=chains,
            timing=self.desc.get("timing"),
            p2p_listen=f"127.0.0.1:{n.p2p}",
            api_bind=f"127.0.0.1:{n.api}",
        )
        peers = [f'"127.0.0.1:{self.nodes[b].p2p}"' for b in n.bootstrap]
        text = text.replace("bootstrap = []", f"bootstrap = [{', '.join(peers)}]", 1)
        # one link each (its bootstrap peer), no feelers: the line the test draws
        text = text.replace("target_degree = 4", "target_degree = 1", 1)
        text = text.replace("feeler_s = 2.0", "feeler_s = 0", 1)
        if not n.discover:
            text = text.replace("discover = true ", "discover = false", 1)
        for o in n.offers:
            text += "\n[[offers]]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in o.items())
        (n.home / "config.toml").write_text(text)

    def start_node(self, name: str, crash_at: str | None = None) -> None:
        n = self.nodes[name]
        assert n.proc is None or not n.proc.alive(), f"{name} is running"
        env = {"KOFO_CRASH_AT": crash_at or "", "KOFO_CRASH_LOG": str(n.home / "crash.log")}
        n.proc = Proc("node", "--home", str(n.home), cwd=self.tmp, env=env)
        n.runs.append(n.proc)
        if n.client is None:
            n.client = Client.from_home(n.home, timeout=30.0)

    def wait_ready(self, name: str, *, ledger: bool = True) -> None:
        """The node's API answers and (``ledger``) the ledger knows it."""
        n = self.nodes[name]

        def answers(call: Callable[[], Any]) -> Any:
            if n.proc is not None and not n.proc.alive():
                pytest.fail(f"{name} exited {n.proc.proc.returncode}:\n{n.proc.tail()}")
            return call()

        try:
            if not ledger:  # /v1/info needs the ledger; /v1/health answers without it
                until(lambda: answers(n.sdk.health), f"{name}'s API to answer", WAIT)
                return
            info = until(lambda: answers(n.sdk.info), f"{name}'s API to answer", WAIT)
        except pytest.fail.Exception:
            tail = n.proc.tail() if n.proc is not None else ""
            raise AssertionError(f"{name}'s API never answered; its output:\n{tail}") from None
        n.node_id = info.node_id
        until(lambda: self.registered(info.node_id), f"{name} registered on the ledger", WAIT)
        # and the node knows it (it trades only then)
        until(
            lambda: any(
                "registered on the ledger" in line or "registered at height" in line
                for line in (n.proc.drain() if n.proc is not None else [])
            ),
            f"{name} to see its registration",
            WAIT,
        )

    def registered(self, node_id: str) -> bool:
        try:
            self.ledger.abci_query("/node", encode(bytes.fromhex(node_id)))
        except LedgerRefused:
            return False
        return True

    def kill(self, name: str) -> None:
        n = self.nodes[name]
        assert n.proc is not None
        n.proc.kill()

    def restart(self, name: str, crash_at: str | None = None, *, ledger: bool = True) -> None:
        """Stop the node if it runs (SIGTERM), start it again on its home."""
        n = self.nodes[name]
        if n.proc is not None and n.proc.alive():
            n.proc.stop()
        self.start_node(name, crash_at)
        self.wait_ready(name, ledger=ledger)

    def wait_killed(self, name: str, point: str, timeout: float = 180.0) -> None:
        """The node SIGKILLed itself at its crash point."""
        proc = self.nodes[name].proc
        assert proc is not None
        until(lambda: not proc.alive(), f"{name} to die at {point}", timeout)
        assert proc.proc.returncode == -signal.SIGKILL, (
            f"{name} exited {proc.proc.returncode}, not SIGKILLed at {point}:\n{proc.tail()}"
        )

    def holdings(self) -> dict[str, int]:
        """Per asset, the sum of every node's wallet (available + reserved)."""
        out: dict[str, int] = {}
        for n in self.nodes.values():
            for b in n.sdk.balances():
                out[b.asset] = out.get(b.asset, 0) + b.available + b.reserved
        return out

    def pause_ledger(self) -> None:
        assert self.devnet is not None
        self.devnet.proc.send_signal(signal.SIGUSR1)
        self.devnet.wait_line(lambda s: "ledger paused" in s, "the ledger paused")

    def resume_ledger(self) -> None:
        assert self.devnet is not None
        self.devnet.proc.send_signal(signal.SIGUSR2)
        self.devnet.wait_line(lambda s: "ledger resumed" in s, "the ledger resumed")

    def crashes(self, name: str) -> list[str]:
        """The crash points the node passed, in order, over all its runs (``KOFO_CRASH_LOG``)."""
        path = self.nodes[name].home / "crash.log"
        return path.read_text().split() if path.exists() else []

    def close(self) -> None:
        for n in self.nodes.values():
            if n.client is not None:
                n.client.close()
            for run in n.runs:
                if run.alive():
                    try:
                        run.stop()
                    except subprocess.TimeoutExpired:
                        pass
        if self.devnet is not None and self.devnet.alive():
            self.devnet.stop()
        for n in self.nodes.values():  # for a post-mortem: each node's output, all its runs
            (self.tmp / f"{n.name}.log").write_text(n.log())

    def __enter__(self) -> Network:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the ledger, read directly ----------------------------------------------------------------

    @property
    def ledger(self) -> LedgerClient:
        return LedgerClient(self.desc["ledger"]["url"])

    def foundation(self, asset: str) -> int:
        return int(decode(self.ledger.abci_query("/foundation", encode(asset))) or 0)

    def params(self) -> dict[str, Any]:
        out: dict[str, Any] = decode(self.ledger.abci_query("/params"))
        return out

    def asset(self, name: str, node: str = "taker") -> str:
        """The asset id orders and the ledger use for a config name (``DUSD`` ->
        ``eth:0x<token>``), as the node names it."""
        for b in self.nodes[node].sdk.balances():
            if name.lower() in (b.asset.lower(), b.symbol.lower()):
                return b.asset
        raise AssertionError(f"{node} has no asset {name!r}")

    # -- trades -----------------------------------------------------------------------------------

    def wait_offer(self, taker: str, buy: str, sell: str) -> None:
        c = self.nodes[taker].sdk
        until(lambda: c.book(buy, sell).offers, f"an offer {sell}->{buy} at {taker}")

    def trade_end(self, node: str, trade_id: str, timeout: float = 240.0) -> Any:
        n = self.nodes[node]

        def ended() -> Any:
            view = n.sdk.trade(trade_id)
            return view if view.state in TERMINAL else None

        try:
            return until(ended, f"{node}'s trade {trade_id} to end", timeout, every=0.5)
        except pytest.fail.Exception:
            log = n.log()[-6000:]
            raise AssertionError(f"{node}'s trade did not end; its log:\n{log}") from None

    def maker_trade(self, node: str, order_id: str) -> Any:
        n = self.nodes[node]
        return until(
            lambda: next((t for t in n.sdk.trades(limit=200) if t.order_id == order_id), None),
            f"{node}'s trade row of order {order_id[:12]}",
        )

    def settled(self, node: str, order_id: str, timeout: float = 120.0) -> Any:
        c = self.nodes[node].sdk

        def done() -> Any:
            view = c.ledger_order(order_id)
            return view if view.status == "settled" else None

        return until(done, f"order {order_id[:12]} settled on the ledger", timeout, every=0.5)
