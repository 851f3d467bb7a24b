"""N concurrent two-party swaps (ETH <-> ERC-20) on the embedded EVM, through the engine, against a
floor that sends the same chain transactions directly with the adapters.

    python -m bench.swap [--n 1 10 100] [--repeat 3]

Prints one JSON object per N: wall time, swaps/s, the floor's wall time and the overhead ratio
(engine / floor), as medians over ``--repeat`` alternating runs of each (a single run of
the embedded EVM varies by +-10 %, as much as the margin being measured). Both runs use fresh
chains and keys; the floor does exactly what the engine must (approve + lock for the token leg,
lock, two redeems) but without journal, monitor or audits, so the ratio is the engine's cost.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from tests.swap.helpers import ETHER, Evm, make_node, start_swap

from kofo.settlement.chain import HtlcTerms, UnixTime
from kofo.settlement.engine import PeerLimits
from kofo.settlement.swap import TERMINAL, State
from kofo.settlement.terms import ChainPolicy, Leg

TOKEN_AMOUNT = 10**6

TXS_PER_SWAP = 5
"""Chain transactions one swap makes: approve + lock of the token leg, the ETH lock, two redeems."""


class BenchEvm(Evm):
    """The embedded EVM with deadlines that stretch with the number of swaps in flight.

    It mines one block per transaction and stamps each block at least one second after its
    parent, so its clock runs about one second per transaction: a phase of N swaps moves it ~N
    to 2N seconds, past the devnet policy's few-second margins once N is in the tens. Each
    phase's notice is given room for every transaction of the whole batch.
    """

    def __init__(self, swaps: int) -> None:
        self.swaps = swaps
        super().__init__()

    def policy(self) -> ChainPolicy:
        base = super().policy()
        return replace(base, notice_seconds=base.notice_seconds + TXS_PER_SWAP * self.swaps)


def run_engine(n: int) -> dict[str, float]:
    evm = BenchEvm(n)
    tmp = Path(tempfile.mkdtemp(prefix="kofo-bench-"))
    alice = make_node("alice", tmp, {"eth": evm}, tokens=0)
    # One counterparty opening n swaps at once: lift the per-peer limits a node keeps by default.
    limits = PeerLimits(proposal_burst=n, open_swaps_per_peer=n, open_swaps=max(256, n))
    bob = make_node("bob", tmp, {"eth": evm}, tokens=n * TOKEN_AMOUNT, limits=limits)
    evm.fund(alice.address("eth"), n * ETHER)
    t0 = time.perf_counter()
    ids = [
        start_swap(
            alice,
            bob,
            Leg("eth", ETHER // 100, alice.address("eth"), bob.address("eth"), UnixTime(0)),
            Leg(
                "eth",
                TOKEN_AMOUNT,
                bob.address("eth"),
                alice.address("eth"),
                UnixTime(0),
                evm.token,
            ),
        )
        for _ in range(n)
    ]
    rounds = 0
    while True:
        rounds += 1
        alice.engine.tick()
        bob.engine.tick()
        states = [alice.engine.journal.get(i).state for i in ids] + [
            bob.engine.journal.get(i).state for i in ids
        ]
        if all(s in TERMINAL for s in states):
            break
        if rounds > 50:
            raise RuntimeError("swaps did not finish")
    wall = time.perf_counter() - t0
    assert all(s is State.REDEEMED for s in states)
    return {"wall_s": wall, "rounds": rounds}


def run_floor(n: int) -> float:
    evm = Evm()
    a_acct = evm.account(wei=n * ETHER + 5 * ETHER)
    b_acct = evm.account(tokens=n * TOKEN_AMOUNT)
    a, b = evm.adapter(a_acct), evm.adapter(b_acct)
    t0 = time.perf_counter()
    secrets = [os.urandom(32) for _ in range(n)]
    expiry = UnixTime(evm.now() + 3600)
    a_terms, b_terms = [], []
    for s in secrets:
        h = hashlib.sha256(s).digest()
        a_terms.append(HtlcTerms("eth", h, ETHER // 100, a.address(), b.address(), expiry))
        b_terms.append(
            HtlcTerms("eth", h, TOKEN_AMOUNT, b.address(), a.address(), expiry, evm.token)
        )
    for t in a_terms:
        for tx in a.prepare_lock(t):
            a.broadcast(tx)
    for t in b_terms:
        for tx in b.prepare_lock(t):
            b.broadcast(tx)
    b_refs = [b.find_htlc(t) for t in b_terms]
    for ref, s in zip(b_refs, secrets, strict=True):
        assert ref is not None
        a.broadcast(a.prepare_redeem(ref, s))
    a_refs = [a.find_htlc(t) for t in a_terms]
    for ref, s in zip(a_refs, secrets, strict=True):
        assert ref is not None
        b.broadcast(b.prepare_redeem(ref, s))
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, nargs="+", default=[1, 10, 100])
    parser.add_argument("--repeat", type=int, default=3, help="runs of each, medians reported")
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    for n in args.n:
        floors, walls, rounds = [], [], 0
        for _ in range(args.repeat):
            floors.append(run_floor(n))
            engine = run_engine(n)
            walls.append(engine["wall_s"])
            rounds = max(rounds, int(engine["rounds"]))
        wall, floor = statistics.median(walls), statistics.median(floors)
        print(
            json.dumps(
                {
                    "bench": "swap",
                    "concurrent_swaps": n,
                    "repeats": args.repeat,
                    "wall_s": round(wall, 3),
                    "swaps_per_s": round(n / wall, 2),
                    "monitor_rounds": rounds,
                    "floor_wall_s": round(floor, 3),
                    "overhead_ratio": round(wall / floor, 2),
                    "run_ratios": [round(w / f, 2) for w, f in zip(walls, floors, strict=True)],
                    "goal_ratio": 1.3,
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
