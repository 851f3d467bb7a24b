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
from kofo.clearance.consensus.testnet import (
    LocalTestnet,
    RpcClient,
    TestnetError,
    free_base_port,
)
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


def _solo_run(
    txs: list[bytes], parties: list[Party], now: int, block_txs: int, batch: bool
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        app = LedgerApp(MerkleStore(Path(tmp) / "ledger.db"), ledger_params())
        chain = SoloChain(app, max_block_txs=block_txs)
        for p in parties:
            chain.submit(p.register_tx(ts=now))
        chain.drain()
        latencies = []
        start = time.perf_counter()
        cpu_start = time.process_time()
        for i in range(0, len(txs), block_txs):
            batch_start = time.perf_counter()
            chunk = txs[i : i + block_txs]
            checks = chain.submit_many(chunk) if batch else [chain.submit(tx) for tx in chunk]
            assert all(r.ok for r in checks)
            result = chain.produce_block()
            assert all(r.ok for r in result.results), result.results[0].log
            latencies.append(time.perf_counter() - batch_start)
        elapsed = time.perf_counter() - start
        cpu = time.process_time() - cpu_start
        chain.close()
        return {
            "orders_per_s": round(len(txs) / elapsed, 1),
            "orders_per_cpu_s": round(len(txs) / cpu, 1),
            "commit_latency_ms_p50": round(statistics.median(latencies) * 1000, 1),
            "commit_latency_ms_max": round(max(latencies) * 1000, 1),
        }


def bench_solo(count: int, block_txs: int, repeat: int) -> dict[str, Any]:
    parties = _parties()
    now = int(time.time())
    txs = _orders(parties, count, now)
    out: dict[str, Any] = {"orders": count, "tx_bytes": len(txs[0]), "block_txs": block_txs}
    for name, batch in (("one_by_one", False), ("submit_many", True)):
        runs = [_solo_run(txs, parties, now, block_txs, batch) for _ in range(repeat)]
        out[name] = {
            "orders_per_s_median": statistics.median(r["orders_per_s"] for r in runs),
            "orders_per_cpu_s_median": statistics.median(r["orders_per_cpu_s"] for r in runs),
            "runs": runs,
        }
    out["note"] = (
        "one_by_one: SoloChain.submit per tx on one thread; submit_many: the same txs checked "
        "on a thread pool (signature checks overlap across cores). orders_per_cpu_s divides by "
        "this process's CPU time, so it does not depend on what else the machine runs. Latency "
        "= CheckTx of a full block's txs to its durable commit."
    )
    return out


def _committed(net: LocalTestnet, from_height: int, to_height: int) -> int:
    total = 0
    h = from_height
    while h <= to_height:
        top = min(to_height, h + 19)
        metas = net.rpc(0, "blockchain", minHeight=str(h), maxHeight=str(top))["block_metas"]
        total += sum(int(m["num_txs"]) for m in metas)
        h = top + 1
    return total


def _failed_in_blocks(net: LocalTestnet, from_height: int, to_height: int) -> int:
    """Txs that made it into a block but were refused there (non-zero code)."""
    failed = 0
    for h in range(from_height, to_height + 1):
        # the newest block is stored before it is executed: its results may lag a moment
        deadline = time.monotonic() + 30
        while True:
            try:
                results = net.rpc(0, "block_results", height=str(h)).get("txs_results") or []
                break
            except TestnetError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        failed += sum(1 for r in results if int(r.get("code", 0)) != 0)
    return failed


def _run_network(
    kind: str,
    setup: list[bytes],
    txs: list[bytes],
    samples: list[bytes],
    params: dict[str, Any] | None,
    clients: int,
) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix=f"kofo-bench-{kind}-"))
    net = LocalTestnet(root, 4, base_port=free_base_port(4), app=kind, params=params)
    try:
        net.create()
        with net:
            net.start_all(wait_height=2)
            with RpcClient(net.validators[0].rpc_port) as rpc:
                for tx in setup:  # registrations: committed before the clock starts
                    assert int(rpc.broadcast(tx, "commit")["tx_result"].get("code", 0)) == 0
            return _measure(net, txs, samples, clients)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _measure(
    net: LocalTestnet, txs: list[bytes], samples: list[bytes], clients: int
) -> dict[str, Any]:
    h0 = net.height(0)
    cpu0 = net.cpu_seconds()
    start = time.perf_counter()

    def send(k: int) -> int:
        rejected = 0
        with RpcClient(net.validators[k % len(net.validators)].rpc_port) as rpc:
            for tx in txs[k::clients]:
                if int(rpc.broadcast(tx)["code"]) != 0:
                    rejected += 1
        return rejected

    with ThreadPoolExecutor(clients) as pool:
        rejected = sum(pool.map(send, range(clients)))
    submitted = time.perf_counter() - start
    deadline = time.monotonic() + 300
    committed, top = 0, h0
    while committed < len(txs) - rejected and time.monotonic() < deadline:
        time.sleep(0.05)
        top = net.height(0)
        committed = _committed(net, h0 + 1, top)
    elapsed = time.perf_counter() - start
    cpu1 = net.cpu_seconds()
    failed = _failed_in_blocks(net, h0 + 1, top)
    latencies = []
    with RpcClient(net.validators[0].rpc_port) as rpc:
        for tx in samples:
            t = time.perf_counter()
            result = rpc.broadcast(tx, "commit")
            assert int(result["tx_result"].get("code", 0)) == 0, result
            latencies.append(time.perf_counter() - t)
    per_tx = {k: round((cpu1[k] - cpu0[k]) / max(committed, 1) * 1000, 3) for k in cpu0}
    return {
        "validators": len(net.validators),
        "clients": clients,
        "txs": len(txs),
        "rejected_at_check_tx": rejected,
        "committed": committed,
        "failed_in_block": failed,
        "tx_bytes": len(txs[-1]),
        "submit_s": round(submitted, 2),
        "txs_per_s": round(committed / elapsed, 1),
        "cpu_ms_per_tx": per_tx,
        "commit_latency_ms_p50": round(statistics.median(latencies) * 1000, 1),
        "commit_latency_ms_max": round(max(latencies) * 1000, 1),
    }


def bench_networks(count: int, clients: int, repeat: int) -> dict[str, Any]:
    parties = _parties()
    now = int(time.time())
    params = ledger_params().as_map()
    regs = [p.register_tx(ts=now) for p in parties]
    size = len(_orders(parties, 1, now)[0])

    def kv(i: int) -> bytes:
        key = f"bench{i:08d}=".encode()
        return key + os.urandom(size).hex().encode()[: size - len(key)]

    runs: dict[str, list[dict[str, Any]]] = {"kofo": [], "kvstore": []}
    for r in range(repeat):
        # Fresh orders and keys each run (a tx already committed would be refused), and the
        # two apps alternate so that load from elsewhere on the machine hits both alike.
        orders = _orders(parties, count + 5, now)
        runs["kofo"].append(
            _run_network("kofo", regs, orders[:count], orders[count:], params, clients)
        )
        base = (r + 1) * 10**7
        kv_txs = [kv(base + i) for i in range(count)]
        kv_samples = [kv(base + count + i) for i in range(5)]
        runs["kvstore"].append(_run_network("kvstore", [], kv_txs, kv_samples, None, clients))

    def summary(kind: str) -> dict[str, Any]:
        rates = [run["txs_per_s"] for run in runs[kind]]
        return {
            "txs_per_s_median": statistics.median(rates),
            "txs_per_s_runs": rates,
            "runs": runs[kind],
        }

    kofo, kvstore = summary("kofo"), summary("kvstore")
    ratios = [
        a["txs_per_s"] / b["txs_per_s"] for a, b in zip(runs["kofo"], runs["kvstore"], strict=True)
    ]
    return {
        "testnet_kofo": kofo,
        "testnet_kvstore": kvstore,
        "kofo_vs_kvstore_throughput": round(statistics.median(ratios), 3),
        "kofo_vs_kvstore_runs": [round(x, 3) for x in ratios],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--orders", type=int, default=3_000)
    parser.add_argument("--block-txs", type=int, default=500)
    parser.add_argument("--testnet-orders", type=int, default=1_500)
    parser.add_argument("--skip-testnet", action="store_true")
    parser.add_argument(
        "--clients", type=int, default=16, help="concurrent testnet clients (both apps)"
    )
    parser.add_argument("--repeat", type=int, default=2, help="runs of each measurement")
    args = parser.parse_args()
    out: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": sys.version.split()[0],
            # the 2 cores are shared: wall-clock rates below scale with what others leave us
            "load_avg_1m_at_start": os.getloadavg()[0],
        },
        "solo": bench_solo(args.orders, args.block_txs, args.repeat),
        "goals": {"solo_orders_per_s": 1000, "testnet_vs_kvstore": 0.8},
    }
    if not args.skip_testnet:
        out.update(bench_networks(args.testnet_orders, args.clients, args.repeat))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
