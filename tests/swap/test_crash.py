"""Crash at every step: a node process is SIGKILLed at each injection point, restarted, and the
swap still ends with both redeemed (or both refunded), value conserved up to fees.

The injection points are not listed by hand: a clean run of each path records every point each
role passes through (``KOFO_CRASH_LOG``), and the test then kills each role at each recorded
point. Two paths:

* **redeem**: both nodes stay up; the swap ends with both legs redeemed.
* **refund**: the initiator disappears once the participant's lock is buried (it never reveals
  the secret) and comes back only after the participant refunded at ``T_B``; it then refunds
  at ``T_A``. Its points are the refund-path points the redeem path never reaches.

Every node reaches the shared devnet over JSON-RPC; time moves only by the test's
``evm_increaseTime`` calls (and one second per mined block), never by sleeping.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from web3 import Web3
from web3.exceptions import TransactionNotFound

from kofo.settlement.chain import UnixTime
from kofo.settlement.chains.ethereum.devnet import DevnetServer
from kofo.settlement.chains.ethereum.keys import account_from_seed
from kofo.settlement.engine import CRASH_POINTS
from kofo.settlement.swap import State
from kofo.settlement.terms import Leg, SwapTerms
from kofo.wire.swap import Propose
from tests.swap.crash_node import build_engine, run_node
from tests.swap.helpers import ETHER, Evm

TOKENS = 10**8
RUN_TIMEOUT = 30
"""Seconds one swap may take across all its kills and restarts (a clean one takes ~1.5 s)."""

DISAPPEAR_AT = "enter:counter_audited"
"""Where the initiator vanishes on the refund path: the participant's lock is buried and the
initiator is about to reveal the secret, so both legs are locked and neither is redeemed."""

_ctx = multiprocessing.get_context("forkserver")
_ctx.set_forkserver_preload(["tests.swap.crash_node"])


@pytest.fixture(scope="module")
def devnet() -> Iterator[tuple[DevnetServer, Evm]]:
    with DevnetServer() as server:
        # The test reaches the chain over JSON-RPC like the nodes do, never through the
        # server's in-process EVM: eth-tester is not thread-safe, and only the server's lock
        # keeps the test's transactions and time jumps from racing the nodes' requests.
        yield server, Evm("eth", Web3(Web3.HTTPProvider(server.url)))


def _key_hex(key: Ed25519PrivateKey) -> str:
    return key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption()).hex()


@dataclass(eq=False)
class Party:
    config: dict[str, Any]
    address: str


def _party(devnet: tuple[DevnetServer, Evm], tmp: Path, name: str, tokens: int = 0) -> Party:
    server, evm = devnet
    seed = os.urandom(32)
    acct = account_from_seed(seed)
    evm.fund(acct.address, 5 * ETHER)
    if tokens:
        evm.mint(acct.address, tokens)
    config = {
        "rpc_url": server.url,
        "eth_key": bytes(acct.key).hex(),
        "htlc": evm.htlc,
        "journal": str(tmp / f"{name}.sqlite"),
        "node_key": _key_hex(Ed25519PrivateKey.generate()),
        "log_file": str(tmp / f"{name}.log"),
    }
    return Party(config, acct.address)


def _setup_swap(devnet: tuple[DevnetServer, Evm], tmp: Path) -> tuple[Party, Party, SwapTerms]:
    _, evm = devnet
    alice, bob = _party(devnet, tmp, "alice"), _party(devnet, tmp, "bob", TOKENS)
    ea, eb = build_engine(alice.config), build_engine(bob.config)
    terms = ea.propose(
        Leg("eth", ETHER, alice.address, bob.address, UnixTime(0)),
        Leg("eth", TOKENS, bob.address, alice.address, UnixTime(0), evm.token),
        participant_node=eb.node_id,
    )
    reply = eb.handle(Propose(terms), ea.node_id)
    assert reply is not None and ea.handle(reply, eb.node_id) is None
    ea.journal.close()
    eb.journal.close()
    return alice, bob, terms


@dataclass
class Plan:
    """How one swap is run: the crash point of each successive life of each node."""

    path: str  # "redeem" or "refund"
    crashes: dict[str, list[str]] = field(default_factory=dict)
    log: dict[str, str] = field(default_factory=dict)  # role -> file recording points reached

    @classmethod
    def make(cls, path: str, role: str | None = None, point: str | None = None) -> Plan:
        crashes: dict[str, list[str]] = {"alice": [], "bob": []}
        if path == "refund":
            crashes["alice"].append(DISAPPEAR_AT)
        if role is not None and point is not None:
            crashes[role].append(point)
        return cls(path, crashes)


class Supervisor:
    """Runs both node processes to the end, restarting each one its crash point killed. On the
    refund path the initiator's first death is its disappearance: it stays down, chain time
    jumps to ``T_B`` so the participant refunds, and only then does it come back (at ``T_A``)."""

    def __init__(self, rpc: Web3, configs: dict[str, dict[str, Any]], terms: SwapTerms, plan: Plan):
        self.rpc, self.configs, self.terms, self.plan = rpc, configs, terms, plan
        self.lives = dict.fromkeys(configs, 0)
        self.kills = 0
        self.procs: dict[str, Any] = {}
        self.held = False

    def _start(self, name: str) -> None:
        plan = self.plan.crashes.get(name, [])
        life = self.lives[name]
        crash_at = plan[life] if life < len(plan) else None
        self.lives[name] += 1
        args = (self.configs[name], crash_at, self.plan.log.get(name))
        self.procs[name] = _ctx.Process(target=run_node, args=args)
        self.procs[name].start()

    def _chain_time(self) -> int:
        return int(self.rpc.eth.get_block("latest")["timestamp"])

    def _advance_to(self, timestamp: int) -> None:
        gap = timestamp - self._chain_time()
        if gap > 0:
            reply = self.rpc.provider.make_request("evm_increaseTime", [gap])  # type: ignore[arg-type]
            assert "error" not in reply, reply

    def run(self) -> int:
        for name in self.configs:
            self._start(name)
        try:
            self._supervise()
        finally:
            for p in self.procs.values():
                if p.exitcode is None:
                    p.kill()
                    p.join(5)
        return self.kills

    def _supervise(self) -> None:
        deadline = time.monotonic() + RUN_TIMEOUT
        while any(p.exitcode != 0 for p in self.procs.values()) or self.held:
            codes = {n: p.exitcode for n, p in self.procs.items()}
            assert time.monotonic() < deadline, f"nodes did not finish: {codes}"
            for name, p in list(self.procs.items()):
                if p.exitcode is None or p.exitcode == 0:
                    continue
                assert p.exitcode == -9, f"{name} exited with {p.exitcode}"
                self.kills += 1
                if self.plan.path == "refund" and name == "alice" and self.lives[name] == 1:
                    # Disappeared before revealing: let the participant reach T_B and refund.
                    self.held = True
                    self._advance_to(self.terms.participant_leg.expiry.value)
                    self.procs[name] = _Gone()
                else:
                    self._start(name)
            if self.held and self.procs["bob"].exitcode == 0:
                self.held = False
                self._advance_to(self.terms.initiator_leg.expiry.value)
                self._start("alice")
            time.sleep(0.05)


class _Gone:
    """A node that is down and not yet restarted (counts as neither running nor finished)."""

    exitcode = 0

    def kill(self) -> None:  # pragma: no cover - nothing to kill
        pass


def _fees(w3: Web3, config: dict[str, Any]) -> int:
    eng = build_engine(config)
    total = 0
    for sw in eng.journal.swaps():
        for _kind, _chain, txid, _at in eng.journal.all_txs(sw.swap_id):
            try:
                r = w3.eth.get_transaction_receipt(txid)
            except TransactionNotFound:
                continue  # signed, superseded before broadcast: never paid for
            total += r["gasUsed"] * r["effectiveGasPrice"]
    eng.journal.close()
    return total


def _balances(evm: Evm, address: str) -> tuple[int, int]:
    tok = evm.w3.eth.contract(
        address=evm.token,
        abi=[
            {
                "name": "balanceOf",
                "type": "function",
                "stateMutability": "view",
                "inputs": [{"name": "o", "type": "address"}],
                "outputs": [{"name": "", "type": "uint256"}],
            }
        ],
    )
    return evm.w3.eth.get_balance(address), tok.functions.balanceOf(address).call()


def _final_states(alice: Party, bob: Party, sid: bytes) -> tuple[State, State]:
    ea, eb = build_engine(alice.config), build_engine(bob.config)
    states = ea.journal.get(sid).state, eb.journal.get(sid).state
    ea.journal.close()
    eb.journal.close()
    return states


def _swap(devnet: tuple[DevnetServer, Evm], tmp: Path, plan: Plan) -> int:
    """Run one swap under ``plan``; check its outcome and that value is conserved up to fees.
    Returns how many times a node was killed."""
    _, evm = devnet
    alice, bob, terms = _setup_swap(devnet, tmp)
    before = {p: _balances(evm, p.address) for p in (alice, bob)}
    configs = {"alice": alice.config, "bob": bob.config}
    kills = Supervisor(evm.w3, configs, terms, plan).run()
    states = _final_states(alice, bob, terms.swap_id)
    after = {p: _balances(evm, p.address) for p in (alice, bob)}
    fees = {p: _fees(evm.w3, p.config) for p in (alice, bob)}
    if plan.path == "redeem":
        assert states == (State.REDEEMED, State.REDEEMED), states
        assert after[alice] == (before[alice][0] - ETHER - fees[alice], before[alice][1] + TOKENS)
        assert after[bob] == (before[bob][0] + ETHER - fees[bob], before[bob][1] - TOKENS)
    else:
        assert states == (State.REFUNDED, State.REFUNDED), states
        assert after[alice] == (before[alice][0] - fees[alice], before[alice][1])
        assert after[bob] == (before[bob][0] - fees[bob], before[bob][1])
    total_before = sum(b[0] for b in before.values())
    assert sum(a[0] for a in after.values()) + sum(fees.values()) == total_before
    return kills


def _discover(devnet: tuple[DevnetServer, Evm], tmp: Path, path: str) -> dict[str, list[str]]:
    """The injection points each role passes through on ``path``, in order, from one clean
    (uninjected) run per role."""
    points = {}
    for role in ("alice", "bob"):
        sub = tmp / f"discover-{path}-{role}"
        sub.mkdir()
        log = sub / "points.log"
        plan = Plan.make(path)
        plan.log = {role: str(log)}
        _swap(devnet, sub, plan)
        seen = list(dict.fromkeys(log.read_text().split()))
        assert set(seen) <= set(CRASH_POINTS), set(seen) - set(CRASH_POINTS)
        points[role] = seen
    return points


def _kill_at_every_point(
    devnet: tuple[DevnetServer, Evm], tmp: Path, path: str, points: dict[str, list[str]]
) -> int:
    base_kills = 1 if path == "refund" else 0  # the initiator's disappearance
    covered = 0
    for role, names in points.items():
        for point in names:
            sub = tmp / f"{path}-{role}-{point.replace(':', '_')}"
            sub.mkdir()
            kills = _swap(devnet, sub, Plan.make(path, role, point))
            assert kills == base_kills + 1, f"{role} was not killed at {point} ({path} path)"
            covered += 1
    return covered


def test_a_clean_multi_process_swap_redeems_both_legs(devnet, tmp_path):
    assert _swap(devnet, tmp_path, Plan.make("redeem")) == 0


def test_an_initiator_that_vanishes_before_revealing_ends_with_both_refunded(devnet, tmp_path):
    assert _swap(devnet, tmp_path, Plan.make("refund")) == 1


@pytest.mark.slow
def test_killing_either_node_at_every_redeem_path_point_still_ends_in_both_redeemed(
    devnet, tmp_path
):
    points = _discover(devnet, tmp_path, "redeem")
    discovered = sum(len(p) for p in points.values())
    covered = _kill_at_every_point(devnet, tmp_path, "redeem", points)
    print(
        f"redeem path: crash injection points covered: {covered} "
        f"(alice {len(points['alice'])}, bob {len(points['bob'])})"
    )
    # Every point the clean run passed through, for both roles; a clean redeem passes at
    # least the lock, redeem and both terminal steps of each role.
    assert covered == discovered >= 24


@pytest.mark.slow
def test_killing_either_node_at_every_refund_path_point_still_ends_in_both_refunded(
    devnet, tmp_path
):
    redeem = _discover(devnet, tmp_path, "redeem")
    refund = _discover(devnet, tmp_path, "refund")
    # Points the redeem path already kills at are not repeated; the rest are the refund path.
    points = {r: [p for p in refund[r] if p not in redeem[r]] for r in refund}
    discovered = sum(len(p) for p in points.values())
    covered = _kill_at_every_point(devnet, tmp_path, "refund", points)
    print(
        f"refund path: crash injection points covered: {covered} "
        f"(alice {len(points['alice'])}: {points['alice']}, "
        f"bob {len(points['bob'])}: {points['bob']})"
    )
    assert covered == discovered
    # Both roles sign, send and bury a refund: at least those points, each.
    for role in ("alice", "bob"):
        assert {"stored:refund", "before_broadcast:refund", "enter:refunded"} <= set(points[role])


@pytest.mark.parametrize(
    ("path", "role", "point"),
    [
        ("redeem", "alice", "after_broadcast:redeem"),
        ("redeem", "bob", "stored:lock"),
        ("redeem", "bob", "enter:redeem_signed"),
        ("refund", "alice", "stored:refund"),
        ("refund", "bob", "before_broadcast:refund"),
    ],
)
def test_a_node_killed_mid_swap_finishes_after_restart(devnet, tmp_path, path, role, point):
    assert _swap(devnet, tmp_path, Plan.make(path, role, point)) == (2 if path == "refund" else 1)
