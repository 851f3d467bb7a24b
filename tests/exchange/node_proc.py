"""One exchange node as its own process, driven through files (used by the multi-process test).

Usage: ``python node_proc.py CONFIG.json``. The node writes ``status_<i>.json`` (its links, the
peers' node ids, the size of its book) every 100 ms; for every ``go_<k>`` file that appears it
runs its claims and writes ``result_<i>_<k>.json``.
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

from kofo.exchange.node import ExchangeConfig, ExchangeNode, RouteFailed
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
            },
        )
        for go in sorted(d.glob("go_*")):
            k = go.name[3:]
            if k in done_rounds:
                continue
            done_rounds.add(k)
            results = []
            enough = json.loads(go.read_text() or "{}").get("enough")
            for have, want, amount in cfg["claims"]:
                t0 = time.monotonic()
                cid, quotes = await node.request_quotes(
                    have, want, amount, window_s=4.0, enough=enough
                )
                entry: dict[str, object] = {"quotes": len(quotes), "ms": 0}
                if quotes:
                    try:
                        commit = await node.settle(cid, quotes[0], os.urandom(32))
                        entry["order"] = encode(commit.as_map()).hex()
                        entry["delivered"] = quotes[0].delivered
                    except RouteFailed as exc:
                        entry["error"] = str(exc)
                entry["ms"] = int((time.monotonic() - t0) * 1000)
                results.append(entry)
            _write(d / f"result_{i}_{k}.json", results)
        await asyncio.sleep(0.1)
    await node.stop()


if __name__ == "__main__":
    logging.basicConfig(level=logging.ERROR)
    asyncio.run(main(json.loads(Path(sys.argv[1]).read_text())))
