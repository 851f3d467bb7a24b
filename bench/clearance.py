"""Clearance ledger throughput and commit latency; prints one JSON document.

    python -m bench.clearance [--orders 3000] [--testnet-orders 1500] [--skip-testnet]

* ``solo``: the ledger app under the in-process block producer (SQLite on disk, WAL, fsync at
  every commit). Orders are 3-hop routed orders with one relay: four party signatures plus the
  envelope's, all verified at CheckTx. Signing happens before the clock starts (clients sign,
  the ledger verifies).
* ``testnet``: the same orders through a 4-validator CometBFT v0.38 network on loopback, each
  validator with its own Python ABCI app, clients spread over the validators' RPC ports.
* ``kvstore``: CometBFT's own kvstore example app (built into the cometbft binary) on the same
  4-validator layout, same machine, same run, txs padded to the same size as the orders.

Throughput counts transactions in committed blocks from the first submission until the last
one is committed. Commit latency is measured separately, one tx at a time with
``broadcast_tx_commit`` (submission to inclusion in a committed block), so queueing behind the
throughput load does not inflate it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tests.clearance.helpers import Party, commit_tx, ledger_params, make_order

from kofo.clearance.app import LedgerApp
from kofo.clearance.consensus.solo import SoloChain
from kofo.clearance.consensus.testnet import LocalTestnet, free_base_port
from kofo.clearance.store import MerkleStore


def _parties() -> list[Party]:
    return [Party.make(i) for i in range(8)]


def _orders(parties: list[Party], count: int, t0: int) -> list[bytes]:
    out = []
    for k in range(count):
        a, b, c, relay = (parties[(k + j) % len(parties)] for j in range(4))
        order = make_order([a, b, c], relays=[relay], t0=t0)
        out.append(commit_tx(order, [a, b, c, relay], a, ts=t0))
    return out


def bench_solo(count: int, block_txs: int) -> dict[str, Any]:
    parties = _parties()
    now = int(time.time())
    with tempfile.TemporaryDirectory() as tmp:
        app = LedgerApp(MerkleStore(Path(tmp) / "ledger.db"), ledger_params())
        chain = SoloChain(app, max_block_txs=block_txs)
        for p in parties:
            chain.submit(p.register_tx(ts=now))
        chain.drain()
        txs = _orders(parties, count, now)
        latencies = []
        start = time.perf_counter()
        cpu_start = time.process_time()
        for i in range(0, len(txs), block_txs):
            batch_start = time.perf_counter()
            for tx in txs[i : i + block_txs]:
                assert chain.submit(tx).ok
            result = chain.produce_block()
            assert all(r.ok for r in result.results), result.results[0].log
            latencies.append(time.perf_counter() - batch_start)
        elapsed = time.perf_counter() - start
        cpu = time.process_time() - cpu_start
        return {
            "orders": count,
            "orders_per_cpu_s": round(count / cpu, 1),
            "tx_bytes": len(txs[0]),
            "block_txs": block_txs,
            "orders_per_s": round(count / elapsed, 1),
            "commit_latency_ms_p50": round(statistics.median(latencies) * 1000, 1),
            "commit_latency_ms_max": round(max(latencies) * 1000, 1),
            "note": "latency = submit (CheckTx) of a full block's txs to its durable commit",
        }


def _committed_txs(net: LocalTestnet, from_height: int, to_height: int) -> int:
    total = 0
    h = from_height
    while h <= to_height:
        top = min(to_height, h + 19)
        metas = net.rpc(0, "blockchain", minHeight=str(h), maxHeight=str(top))["block_metas"]
        total += sum(int(m["num_txs"]) for m in metas)
        h = top + 1
    return total


def _run_network(
    kind: str, txs: list[bytes], samples: list[bytes], params: dict[str, Any] | None
) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix=f"kofo-bench-{kind}-"))
    net = LocalTestnet(root, 4, base_port=free_base_port(4), app=kind, params=params)
    try:
        net.create()
        with net:
            net.start_all()
            time.sleep(1.0)
            return _measure(net, txs, samples)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _measure(net: LocalTestnet, txs: list[bytes], samples: list[bytes]) -> dict[str, Any]:
    h0 = net.height(0)
    start = time.perf_counter()

    def send(chunk: tuple[int, list[bytes]]) -> int:
        v, items = chunk
        rejected = 0
        for tx in items:
            if int(net.broadcast(v, tx)["code"]) != 0:
                rejected += 1
        return rejected

    chunks = [(v, txs[v::4]) for v in range(4)]
    with ThreadPoolExecutor(4) as pool:
        rejected = sum(pool.map(send, chunks))
    submitted = time.perf_counter() - start
    deadline = time.monotonic() + 300
    committed = 0
    while committed < len(txs) - rejected and time.monotonic() < deadline:
        time.sleep(0.1)
        committed = _committed_txs(net, h0 + 1, net.height(0))
    elapsed = time.perf_counter() - start
    latencies = []
    for tx in samples:
        t = time.perf_counter()
        result = net.broadcast(0, tx, mode="commit")
        assert int(result["tx_result"].get("code", 0)) == 0, result
        latencies.append(time.perf_counter() - t)
    return {
        "validators": 4,
        "txs": len(txs),
        "rejected_at_check_tx": rejected,
        "committed": committed,
        "tx_bytes": len(txs[-1]),
        "submit_s": round(submitted, 2),
        "txs_per_s": round(committed / elapsed, 1),
        "commit_latency_ms_p50": round(statistics.median(latencies) * 1000, 1),
        "commit_latency_ms_max": round(max(latencies) * 1000, 1),
    }


def bench_networks(count: int) -> dict[str, Any]:
    parties = _parties()
    now = int(time.time())
    params = ledger_params().as_map()
    regs = [p.register_tx(ts=now) for p in parties]
    orders = _orders(parties, count + 5, now)
    kofo_txs, kofo_samples = regs + orders[:count], orders[count:]
    size = len(orders[0])

    def kv(i: int) -> bytes:
        key = f"bench{i:08d}=".encode()
        return key + os.urandom(size).hex().encode()[: size - len(key)]

    kv_txs = [kv(i) for i in range(len(kofo_txs))]
    kv_samples = [kv(10**7 + i) for i in range(5)]
    kofo = _run_network("kofo", kofo_txs, kofo_samples, params)
    kvstore = _run_network("kvstore", kv_txs, kv_samples, None)
    return {
        "testnet_kofo": kofo,
        "testnet_kvstore": kvstore,
        "kofo_vs_kvstore_throughput": round(kofo["txs_per_s"] / kvstore["txs_per_s"], 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--orders", type=int, default=3_000)
    parser.add_argument("--block-txs", type=int, default=500)
    parser.add_argument("--testnet-orders", type=int, default=1_500)
    parser.add_argument("--skip-testnet", action="store_true")
    args = parser.parse_args()
    out: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": sys.version.split()[0],
            # the 2 cores are shared: wall-clock rates below scale with what others leave us
            "load_avg_1m_at_start": os.getloadavg()[0],
        },
        "solo": bench_solo(args.orders, args.block_txs),
        "goals": {"solo_orders_per_s": 1000, "testnet_vs_kvstore": 0.8},
    }
    if not args.skip_testnet:
        out.update(bench_networks(args.testnet_orders))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
