"""Twenty exchange nodes as separate processes on loopback, in a random connected topology."""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from kofo.wire.codec import decode
from kofo.wire.orders import CommitOrder

N = 20
PROC = Path(__file__).with_name("node_proc.py")
INITIATORS = [0, 1, 2]
MAKERS = {5: 29, 8: 31, 11: 33, 14: 30, 17: 32}  # node index -> ETH base units per BTC unit
AMOUNT = 1_000_000
FEE_BPS = 10  # the ledger's default protocol fee: providers quote net of it


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


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
        self.ports = _free_ports(N)
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
                "protocol_fee_bps": FEE_BPS,
                "offers": offers,
                "claims": [["btc", "eth", AMOUNT]] if i in INITIATORS else [],
                "lifetime_s": 55,
            }
            path = d / f"cfg_{i}.json"
            path.write_text(json.dumps(cfg))
            self.procs[i] = subprocess.Popen(
                [sys.executable, str(PROC), str(path)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )

    def alive(self) -> list[int]:
        return [i for i, p in self.procs.items() if p.poll() is None]

    def kill(self, i: int) -> None:
        self.procs[i].kill()
        self.procs[i].wait(5)

    def wait_ready(self, n_offers: int, timeout: float) -> None:
        _wait(
            lambda: all(
                _status(self.dir, i).get("book", 0) >= n_offers
                and _status(self.dir, i).get("links", 0) >= 1
                for i in self.alive()
            ),
            timeout,
            "offers to reach every node",
        )

    def run_round(self, k: int, timeout: float) -> dict[int, list[dict]]:
        (self.dir / f"go_{k}").touch()
        out: dict[int, list[dict]] = {}

        def all_in() -> bool:
            for i in INITIATORS:
                f = self.dir / f"result_{i}_{k}.json"
                if f.exists():
                    out[i] = json.loads(f.read_text())
            return len(out) == len(INITIATORS)

        _wait(all_in, timeout, f"results of round {k}")
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
        best = max(makers, key=lambda m: makers[m])
        for i, entries in results.items():
            (entry,) = entries
            assert "order" in entry, f"initiator {i} got no settlement order: {entry}"
            commit = CommitOrder.from_map(decode(bytes.fromhex(entry["order"])))
            commit.verify_signatures()  # every route party signed, nobody else
            order = commit.order
            assert order.initiator == self.ids[i]
            provider = order.legs[0].recipient
            assert provider == self.ids[best], f"initiator {i} did not get the best maker"
            assert order.legs[0].amount == AMOUNT
            net_in = AMOUNT - AMOUNT * FEE_BPS // 10_000
            assert order.legs[1].amount == net_in * makers[best] == entry["delivered"]
            assert order.protocol_fee == AMOUNT * FEE_BPS // 10_000
            assert set(order.relays) <= set(self.ids) - {self.ids[i], provider}


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_twenty_processes_every_initiator_gets_best_route_and_signed_order(tmp_path):
    net = Net(tmp_path, seed=int.from_bytes(os.urandom(4), "big"))
    try:
        net.wait_ready(len(MAKERS), timeout=25)
        net.check_round(net.run_round(1, timeout=12), MAKERS)
    finally:
        net.close()


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_killing_a_third_of_the_nodes_mid_run_still_routes_to_best_surviving_maker(tmp_path):
    rng = random.Random()
    net = Net(tmp_path, seed=rng.getrandbits(32))
    try:
        net.wait_ready(len(MAKERS), timeout=25)
        # Kill a third of the network, including the best maker, but never an initiator.
        best = max(MAKERS, key=lambda m: MAKERS[m])
        victims = [best, *rng.sample([i for i in range(N) if i not in (*INITIATORS, best)], 6)]
        for v in victims:
            net.kill(v)
        survivors = {m: p for m, p in MAKERS.items() if m not in victims}
        # The network heals: every survivor is linked again (dialling known peers).
        _wait(
            lambda: all(_status(tmp_path, i).get("links", 0) >= 1 for i in net.alive()),
            10,
            "survivors to relink",
        )
        time.sleep(1.0)  # let broken links be noticed and replaced
        net.check_round(net.run_round(2, timeout=12), survivors)
    finally:
        net.close()
