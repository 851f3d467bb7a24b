"""Twenty exchange nodes as separate processes on loopback, in a random connected topology."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from kofo.wire.codec import decode
from kofo.wire.orders import CommitOrder
from tests.nodes import free_port

N = 20
PROC = Path(__file__).with_name("node_proc.py")
INITIATORS = [0, 1, 2]
MAKERS = {5: 29, 8: 31, 11: 33, 14: 30, 17: 32}  # node index -> ETH base units per BTC unit
AMOUNT = 1_000_000
FEE_BPS = 10  # the ledger's default protocol fee: providers quote net of it
FEELER_S = 0.5  # faster than the default 2 s, so a split heals within the test's budget
# The takers' quote window: each returns as soon as every live maker answered (``enough``), so
# this bounds only a round whose makers do not all answer (the claim flood is best effort: a
# node that forwarded a copy come the long way keeps its shorter reach, and a quote whose link
# closed is lost; each counted in the nodes' status, "flood", see docs/exchange.md "Where a
# quote can be lost"). It must
# lie within the claim horizon (MAX_CLAIM_HORIZON_MS, 30 s): a longer one is refused by
# request_quotes, which is what killed the node processes when this was set to 40.
WINDOW_S = 8.0
# settle()'s bound on the route's joins and signatures (5 s by default) and how long the
# route's relays keep the claim's state (its deadline + quote_valid_ms, 10 s by default):
# honest, live parties (at most seven, two round trips of a few signatures each) that only
# wait for CPU on two loaded cores. Measured at load ~35 (two CPU burners beside the other
# work): settle took up to 13 s, so the 5 s default ran out; these bound that bounded work
# with room, the relays' state outliving the taker's window plus its settle.
SETTLE_TIMEOUT_S = 25.0
QUOTE_VALID_MS = int((WINDOW_S + SETTLE_TIMEOUT_S + 5) * 1000)
LIFETIME_S = 240  # a node's, from its start; a "stop" file ends it sooner


def _wait(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _status(d: Path, i: int) -> dict:
    try:
        return json.loads((d / f"status_{i}.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


class Net:
    def __init__(self, d: Path, seed: int) -> None:
        rng = random.Random(seed)
        self.dir = d
        self.ports = [free_port() for _ in range(N)]
        self.keys = [Ed25519PrivateKey.generate() for _ in range(N)]
        self.ids = [k.public_key().public_bytes_raw() for k in self.keys]
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        # A random tree (each node dials one earlier node) plus a few random extra edges:
        # connected by construction, random in shape.
        boot: list[set[int]] = [set() for _ in range(N)]
        for i in range(1, N):
            boot[i].add(rng.randrange(i))
        for _ in range(N // 2):
            a, b = rng.sample(range(N), 2)
            boot[max(a, b)].add(min(a, b))
        for i in range(N):
            offers = [["btc", "eth", MAKERS[i], 1, 10 * AMOUNT]] if i in MAKERS else []
            cfg = {
                "dir": str(d),
                "index": i,
                "seed": self.keys[i].private_bytes_raw().hex(),
                "port": self.ports[i],
                "bootstrap": [["127.0.0.1", self.ports[j]] for j in sorted(boot[i])],
                "target_degree": 3,
                "feeler_s": FEELER_S,
                "protocol_fee_bps": FEE_BPS,
                "settle_timeout_s": SETTLE_TIMEOUT_S,
                "quote_valid_ms": QUOTE_VALID_MS,
                "offers": offers,
                "claims": [["btc", "eth", AMOUNT]] if i in INITIATORS else [],
                "lifetime_s": LIFETIME_S,
            }
            path = d / f"cfg_{i}.json"
            path.write_text(json.dumps(cfg))
            with (d / f"stderr_{i}.log").open("wb") as err:
                self.procs[i] = subprocess.Popen(
                    [sys.executable, str(PROC), str(path)],
                    stdout=subprocess.DEVNULL,
                    stderr=err,
                )
        self.killed: set[int] = set()

    def died(self) -> str:
        """The nodes that exited on their own, with the end of their stderr ("" if none)."""
        out = []
        for i, p in self.procs.items():
            if i not in self.killed and p.poll() is not None:
                tail = (self.dir / f"stderr_{i}.log").read_text(errors="replace")[-800:]
                out.append(f"node {i} exited ({p.returncode}): {tail}")
        return "\n".join(out)

    def wait(self, cond, timeout: float, what: str) -> None:
        """:func:`_wait`, failing at once (with the cause) when a node process died."""

        def check() -> bool:
            dead = self.died()
            if dead:
                raise AssertionError(f"a node died while waiting for {what}:\n{dead}")
            return bool(cond())

        _wait(check, timeout, what)

    def alive(self) -> list[int]:
        return [i for i, p in self.procs.items() if p.poll() is None]

    def kill(self, i: int) -> None:
        self.killed.add(i)
        self.procs[i].kill()
        self.procs[i].wait(5)

    def connected(self) -> bool:
        """Whether the live nodes are one network: links both ends report, between live nodes
        only (a killed node's links, still in a status written before it died, do not count)."""
        alive = self.alive()
        index = {self.ids[i].hex(): i for i in alive}
        peers = {
            i: {index[p] for p in _status(self.dir, i).get("peers", []) if p in index}
            for i in alive
        }
        seen, todo = {alive[0]}, [alive[0]]
        while todo:
            i = todo.pop()
            for j in peers[i] - seen:
                if i in peers[j]:
                    seen.add(j)
                    todo.append(j)
        return len(seen) == len(alive)

    def wait_connected(self, timeout: float, what: str, stable_s: float = 1.0) -> None:
        """Wait until :meth:`connected` has held for ``stable_s`` (status files are rewritten
        every 100 ms, so a link that just closed may still show in one)."""
        since: list[float] = []

        def stable() -> bool:
            if not self.connected():
                since.clear()
                return False
            if not since:
                since.append(time.monotonic())
            return time.monotonic() - since[0] >= stable_s

        self.wait(stable, timeout, what)

    def wait_ready(self, n_offers: int, timeout: float) -> None:
        # Twenty interpreters importing the node (~0.6 s of CPU each) on two loaded cores take
        # what the load gives them: that is bounded work, not the network's, so it has its own
        # generous bound and the network's budget starts once every node is up.
        self.wait(
            lambda: all((self.dir / f"status_{i}.json").exists() for i in self.alive()),
            LIFETIME_S / 2,
            "every node process to start",
        )
        deadline = time.monotonic() + timeout
        self.wait(
            lambda: all(_status(self.dir, i).get("book", 0) >= n_offers for i in self.alive()),
            timeout,
            "offers to reach every node",
        )
        self.wait_connected(max(deadline - time.monotonic(), 2.0), "the nodes to form one network")

    def run_round(self, k: int, makers: int) -> dict[int, list[dict]]:
        """Every initiator asks for quotes until ``makers`` have answered or its window
        (:data:`WINDOW_S`) closes, and settles the best it received in it. No budget of the
        test's own: each initiator's round is bounded by its window and ``settle``'s timeouts,
        and ends with a result file (an error in it if it failed); a node that dies fails the
        wait at once with its stderr."""
        staged = self.dir / f"staged_go_{k}"
        staged.write_text(json.dumps({"enough": makers, "window_s": WINDOW_S}))
        staged.rename(self.dir / f"go_{k}")  # whole or absent: the nodes poll for go_*
        out: dict[int, list[dict]] = {}

        def all_in() -> bool:
            for i in INITIATORS:
                f = self.dir / f"result_{i}_{k}.json"
                if f.exists():
                    out[i] = json.loads(f.read_text())
            return len(out) == len(INITIATORS)

        self.wait(all_in, LIFETIME_S, f"results of round {k}")
        return out

    def close(self) -> None:
        (self.dir / "stop").touch()
        for p in self.procs.values():
            try:
                p.wait(3)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(3)

    def check_round(self, results: dict[int, list[dict]], makers: dict[int, int]) -> None:
        """Each initiator settled the best quote it received in its window (what
        ``request_quotes`` returned: received by the claim's deadline, best first), with the
        live maker that quoted it. Not that every maker's quote reached it: that depends on
        the load (the old test's 4 s window missed the best maker's quote on a loaded CI
        machine) and on the flood (best effort), not on the choice."""
        net_in = AMOUNT - AMOUNT * FEE_BPS // 10_000
        by_id = {self.ids[m]: m for m in makers}
        for i, entries in results.items():
            (entry,) = entries
            assert "order" in entry, f"initiator {i} got no settlement order: {entry}"
            quotes = entry["quotes"]
            # What the taker reports is what it received within its window, best first.
            assert all(q["received_ms"] <= entry["window_end_ms"] for q in quotes), entry
            assert all(q["amount_in"] == AMOUNT for q in quotes), entry
            # Each a live maker's price, each maker once (a maker fills a claim once).
            prices = [q["delivered"] for q in quotes]
            assert len(set(prices)) == len(prices), entry
            assert set(prices) <= {net_in * makers[m] for m in makers}, entry
            assert prices[0] == max(prices)
            commit = CommitOrder.from_map(decode(bytes.fromhex(entry["order"])))
            commit.verify_party_signatures()  # every route party signed, nobody else
            order = commit.order
            assert order.initiator == self.ids[i]
            provider = order.legs[0].recipient
            assert provider in by_id, f"initiator {i}: the provider is not a live maker"
            assert order.legs[0].amount == AMOUNT
            # The order is the maker's that quoted the chosen (best received) quote.
            assert order.legs[1].amount == net_in * makers[by_id[provider]]
            assert order.legs[1].amount == entry["delivered"] == quotes[0]["delivered"]
            assert order.protocol_fee == AMOUNT * FEE_BPS // 10_000
            assert set(order.relays) <= set(self.ids) - {self.ids[i], provider}


@pytest.mark.slow
@pytest.mark.timeout(LIFETIME_S + 60)
def test_twenty_processes_every_initiator_gets_best_route_and_signed_order(tmp_path):
    net = Net(tmp_path, seed=int.from_bytes(os.urandom(4), "big"))
    try:
        net.wait_ready(len(MAKERS), timeout=25)
        net.check_round(net.run_round(1, makers=len(MAKERS)), MAKERS)
    finally:
        net.close()


@pytest.mark.slow
@pytest.mark.timeout(LIFETIME_S + 60)
def test_killing_a_third_of_the_nodes_mid_run_still_routes_to_best_surviving_maker(tmp_path):
    rng = random.Random()
    net = Net(tmp_path, seed=rng.getrandbits(32))
    try:
        net.wait_ready(len(MAKERS), timeout=25)
        # Kill a third of the network, including the best maker, but never an initiator nor
        # every maker (drawing all four others among six of sixteen happens in ~1 run of 120).
        best = max(MAKERS, key=lambda m: MAKERS[m])
        spared = rng.choice([m for m in MAKERS if m != best])
        victims = [
            best,
            *rng.sample([i for i in range(N) if i not in (*INITIATORS, best, spared)], 6),
        ]
        for v in victims:
            net.kill(v)
        survivors = {m: p for m, p in MAKERS.items() if m not in victims}
        # The network heals: the survivors are one network again (re-dialling known peers up
        # to the target degree, feelers across a split or to a node cut off). Only then is the
        # best surviving maker reachable from every initiator, which is what the round checks.
        net.wait_connected(20, "survivors to form one network again")
        net.check_round(net.run_round(2, makers=len(survivors)), survivors)
    finally:
        net.close()
