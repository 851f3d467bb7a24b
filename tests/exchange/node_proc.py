"""One exchange node as its own process, driven through files (used by the multi-process test).

Usage: ``python node_proc.py CONFIG.json``. The node writes ``status_<i>.json`` (its links, the
peers' node ids, the size of its book) every 100 ms; for every ``go_<k>`` file that appears it
runs its claims and writes ``result_<i>_<k>.json``: per claim, the quotes the node received in
its window (best first, as ``request_quotes`` returned them), the window's end, and the signed
order for the first, or the error (a failing round never kills the process silently).
It exits on a ``stop`` file or when its lifetime runs out, whichever comes first.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from kofo.errors import KofoError
from kofo.exchange.node import ExchangeConfig, ExchangeNode
from kofo.wire.codec import encode


def _write(path: Path, data: object) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


async def main(cfg: dict) -> None:
    d = Path(cfg["dir"])
    i = cfg["index"]
    key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(cfg["seed"]))
    node = ExchangeNode(
        key,
        ExchangeConfig(
            port=cfg["port"],
            bootstrap=[tuple(b) for b in cfg["bootstrap"]],
            target_degree=cfg["target_degree"],
            feeler_s=cfg["feeler_s"],
            protocol_fee_bps=cfg.get("protocol_fee_bps", 0),
            settle_timeout_s=cfg.get("settle_timeout_s", 5.0),
            quote_valid_ms=cfg.get("quote_valid_ms", 10_000),
            addresses={"btc": f"btc-addr-{i}", "eth": f"eth-addr-{i}"},
        ),
    )
    await node.start()
    for buy, sell, num, den, max_in in cfg["offers"]:
        node.publish_offer(buy, sell, (num, den), max_in=max_in)
    end = time.monotonic() + cfg["lifetime_s"]
    done_rounds: set[str] = set()
    while time.monotonic() < end and not (d / "stop").exists():
        _write(
            d / f"status_{i}.json",
            {
                "links": len(node.links),
                "peers": [peer.hex() for peer in node.links],
                "book": len(node.book),
                "port": node.port,
                # Where a claim or its answer was lost silently (docs/exchange.md, "Where a
                # quote can be lost"): read these when a round misses a live maker.
                "flood": {
                    "claims_shadowed": node.stats.claims_shadowed,
                    "claims_readopted": node.stats.claims_readopted,
                    "claims_unsent": node.stats.claims_unsent,
                    "fulfils_lost": node.stats.fulfils_lost,
                },
            },
        )
        for go in sorted(d.glob("go_*")):
            k = go.name[3:]
            if k in done_rounds:
                continue
            done_rounds.add(k)
            results = []
            go_cfg = json.loads(go.read_text() or "{}")
            for have, want, amount in cfg["claims"]:
                t0 = time.monotonic()
                entry: dict[str, object] = {"ms": 0}
                try:
                    cid, quotes = await node.request_quotes(
                        have, want, amount, window_s=go_cfg["window_s"], enough=go_cfg["enough"]
                    )
                    entry["window_end_ms"] = node._pending[cid].sc.claim.deadline_ms
                    entry["quotes"] = [
                        {
                            "amount_in": q.amount_in,
                            "delivered": q.delivered,
                            "received_ms": q.received_ms,
                            "hops": q.fulfil.fulfil.position,
                        }
                        for q in quotes
                    ]
                    entry["quotes_ms"] = int((time.monotonic() - t0) * 1000)
                    if quotes:
                        commit = await node.settle(cid, quotes[0], os.urandom(32))
                        entry["order"] = encode(commit.as_map()).hex()
                        entry["delivered"] = quotes[0].delivered
                except KofoError as exc:  # RouteFailed, an out-of-range window, ...
                    entry["error"] = f"{type(exc).__name__}: {exc}"
                entry["ms"] = int((time.monotonic() - t0) * 1000)
                entry["quotes_late"] = node.stats.quotes_late  # all claims' so far
                results.append(entry)
            _write(d / f"result_{i}_{k}.json", results)
        await asyncio.sleep(0.1)
    await node.stop()


if __name__ == "__main__":
    logging.basicConfig(level=os.environ.get("KOFO_NODE_PROC_LOG", "ERROR"))
    asyncio.run(main(json.loads(Path(sys.argv[1]).read_text())))
