"""Crash at every step: a node process is SIGKILLed at each injection point, restarted, and the
swap still ends with both redeemed (or both refunded), value conserved up to fees.

The injection points are not listed by hand: a clean run records every point each role passes
through (``KOFO_CRASH_LOG``), and the test then kills each role at each recorded point.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from web3 import Web3
from web3.exceptions import TransactionNotFound

from kofo.settlement.chain import UnixTime
from kofo.settlement.chains.ethereum.devnet import DevnetServer
from kofo.settlement.chains.ethereum.keys import account_from_seed
from kofo.settlement.engine import CRASH_POINTS
from kofo.settlement.swap import TERMINAL, State
from kofo.settlement.terms import Leg
from kofo.wire.swap import Propose
from tests.swap.crash_node import build_engine, run_node
from tests.swap.helpers import ETHER, Evm

TOKENS = 10**8
JOIN_TIMEOUT = 30

_ctx = multiprocessing.get_context("forkserver")
_ctx.set_forkserver_preload(["tests.swap.crash_node"])


@pytest.fixture(scope="module")
def devnet() -> Iterator[tuple[DevnetServer, Evm]]:
    with DevnetServer() as server:
        yield server, Evm("eth", server.evm.w3)


def _key_hex(key: Ed25519PrivateKey) -> str:
    return key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption()).hex()


@dataclass(eq=False)
class Party:
    config: dict
    address: str


def _party(devnet, tmp: Path, name: str, tokens: int = 0) -> Party:
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
    }
    return Party(config, acct.address)


def _setup_swap(devnet, tmp: Path) -> tuple[Party, Party, bytes]:
    _, evm = devnet
    alice, bob = _party(devnet, tmp, "alice"), _party(devnet, tmp, "bob", TOKENS)
    ea, eb = build_engine(alice.config), build_engine(bob.config)
    terms = ea.propose(
        Leg("eth", ETHER, alice.address, bob.address, UnixTime(0)),
        Leg("eth", TOKENS, bob.address, alice.address, UnixTime(0), evm.token),
        participant_node=eb.node_id,
    )
    reply = eb.handle(Propose(terms), ea.node_id)
    assert ea.handle(reply, eb.node_id) is None
    ea.journal.close()
    eb.journal.close()
    return alice, bob, terms.swap_id


def _run(configs: dict[str, dict], crash: dict[str, str], log: str | None = None) -> int:
    """Run every node to the end, restarting each one its crash point killed; returns kills."""
    procs = {
        name: _ctx.Process(target=run_node, args=(cfg, crash.get(name), log))
        for name, cfg in configs.items()
    }
    for p in procs.values():
        p.start()
    try:
        return _supervise(configs, procs)
    finally:
        for p in procs.values():
            if p.exitcode is None:
                p.kill()
                p.join(5)


def _supervise(configs: dict[str, dict], procs: dict) -> int:
    kills = 0
    deadline = time.monotonic() + JOIN_TIMEOUT
    while any(p.exitcode is None for p in procs.values()):
        states = {n: p.exitcode for n, p in procs.items()}
        assert time.monotonic() < deadline, f"nodes did not finish: {states}"
        for name, p in list(procs.items()):
            if p.exitcode == -9:  # SIGKILLed at its point: restart at once, no crash this time
                kills += 1
                procs[name] = _ctx.Process(target=run_node, args=(configs[name], None, None))
                procs[name].start()
        time.sleep(0.05)
    for name, p in procs.items():
        if p.exitcode == -9:
            kills += 1
            p = procs[name] = _ctx.Process(target=run_node, args=(configs[name], None, None))
            p.start()
            p.join(JOIN_TIMEOUT)
        assert p.exitcode == 0, f"{name} exited with {p.exitcode}"
    return kills


def _fees(w3: Web3, journal_path: str, engine_cfg: dict) -> int:
    eng = build_engine(engine_cfg)
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


def _swap_with_crash(devnet, tmp: Path, crash: dict[str, str], log: str | None = None):
    _, evm = devnet
    alice, bob, sid = _setup_swap(devnet, tmp)
    before = {p: _balances(evm, p.address) for p in (alice, bob)}
    kills = _run({"alice": alice.config, "bob": bob.config}, crash, log)
    states = _final_states(alice, bob, sid)
    assert all(s in TERMINAL for s in states)
    assert states == (State.REDEEMED, State.REDEEMED), states
    after = {p: _balances(evm, p.address) for p in (alice, bob)}
    fees = {p: _fees(evm.w3, p.config["journal"], p.config) for p in (alice, bob)}
    assert after[alice] == (before[alice][0] - ETHER - fees[alice], before[alice][1] + TOKENS)
    assert after[bob] == (before[bob][0] + ETHER - fees[bob], before[bob][1] - TOKENS)
    total_before = sum(b[0] for b in before.values())
    assert sum(a[0] for a in after.values()) + sum(fees.values()) == total_before
    return kills


def _discover_points(devnet, tmp: Path) -> dict[str, list[str]]:
    points = {}
    for role in ("alice", "bob"):
        log = tmp / f"points-{role}.log"
        sub = tmp / f"discover-{role}"
        sub.mkdir()
        # One clean swap per role, logging only that role's points.
        alice, bob, _sid = _setup_swap(devnet, sub)
        configs = {"alice": alice.config, "bob": bob.config}
        procs = {
            n: _ctx.Process(target=run_node, args=(c, None, str(log) if n == role else None))
            for n, c in configs.items()
        }
        for p in procs.values():
            p.start()
        for p in procs.values():
            p.join(JOIN_TIMEOUT)
            assert p.exitcode == 0
        seen = list(dict.fromkeys(log.read_text().split()))
        assert set(seen) <= set(CRASH_POINTS)
        points[role] = seen
    return points


def test_a_clean_multi_process_swap_redeems_both_legs(devnet, tmp_path):
    assert _swap_with_crash(devnet, tmp_path, {}) == 0


@pytest.mark.slow
def test_killing_either_node_at_every_injection_point_still_ends_in_both_redeemed(devnet, tmp_path):
    points = _discover_points(devnet, tmp_path)
    covered = 0
    for role, names in points.items():
        for point in names:
            print(role, point, flush=True)
            sub = tmp_path / f"{role}-{point.replace(':', '_')}"
            sub.mkdir()
            kills = _swap_with_crash(devnet, sub, {role: point})
            assert kills == 1, f"{role} was not killed at {point}"
            covered += 1
    print(
        f"crash injection points covered: {covered} "
        f"(alice {len(points['alice'])}, bob {len(points['bob'])})"
    )
    assert covered >= 24


@pytest.mark.parametrize(
    ("role", "point"),
    [("alice", "after_broadcast:redeem"), ("bob", "stored:lock"), ("bob", "enter:redeem_signed")],
)
def test_a_node_killed_mid_swap_finishes_after_restart(devnet, tmp_path, role, point):
    assert _swap_with_crash(devnet, tmp_path, {role: point}) == 1
