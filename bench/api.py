"""The node API's measurements; prints one JSON object.

``python -m bench.api`` measures, on this machine, against the API app served by uvicorn on
127.0.0.1 over the in-memory NodeService of the tests (so the figures are the HTTP layer's:
auth, validation, serialisation, not a chain's or the ledger's):

* requests/s and p50/p99 latency of ``GET /v1/book`` (20 offers, with depth) and
  ``GET /v1/swaps`` (50 swaps) with 50 concurrent clients (keep-alive), the server in its own
  process;
* event-stream delivery latency: from an event's append (from another thread, as the swap
  engine does) to a client subscribed on ``WS /v1/events`` receiving it (p50/p99), server and
  client in one process.

``--requests N`` sets the requests per endpoint (default 3000), ``--events N`` the events
(default 300).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from tests.api.conftest import READONLY, TOKEN, ServerThread, serve
from tests.api.memservice import MemService
from websockets.asyncio.client import connect

from kofo.node.api import RateLimit, create_app
from kofo.node.service import OfferSpec

CLIENTS = 50


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, int(q * len(xs)))], 3)


def _populate(service: MemService) -> None:
    for i in range(20):
        price = 150_000_000_000 - (i % 7) * 1_000_000_000
        service.add_foreign_offer(OfferSpec("btc", "eth", price, 1, 1_000, 10**7 + i))
    for _ in range(50):
        service.add_swap()


def _serve_child(conn: Any) -> None:
    """The server process: the app over a populated MemService until told to stop."""
    home = Path(tempfile.mkdtemp(prefix="kofo-bench-api-"))
    service = MemService(home)
    _populate(service)
    app = create_app(
        service,  # type: ignore[arg-type]
        token=TOKEN,
        readonly_token=READONLY,
        rate_limit=RateLimit(per_second=1e9, burst=10**9),
    )
    thread = ServerThread(app)
    thread.server.config.timeout_keep_alive = 60  # a starved client must not find it closed
    conn.send(thread.start())
    conn.recv()  # stop
    thread.stop()


async def _load(url: str, path: str, total: int) -> dict[str, float]:
    latencies: list[float] = []
    per_client = total // CLIENTS
    headers = {"Authorization": f"Bearer {TOKEN}"}
    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
    async with httpx.AsyncClient(
        base_url=url, headers=headers, limits=limits, timeout=60
    ) as client:
        await client.get(path)  # warm up

        async def one_client() -> None:
            for _ in range(per_client):
                t0 = time.perf_counter()
                r = await client.get(path)
                latencies.append((time.perf_counter() - t0) * 1000)
                assert r.status_code == 200, r.text

        start = time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(CLIENTS)))
        elapsed = time.perf_counter() - start
    return {
        "requests": len(latencies),
        "requests_per_s": round(len(latencies) / elapsed, 1),
        "p50_ms": pct(latencies, 0.50),
        "p99_ms": pct(latencies, 0.99),
    }


def throughput(requests: int) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_serve_child, args=(child,), daemon=True)
    proc.start()
    try:
        url = parent.recv()
        return {
            "book": asyncio.run(_load(url, "/v1/book?buy=BTC&sell=ETH", requests)),
            "swaps": asyncio.run(_load(url, "/v1/swaps?limit=50", requests)),
        }
    finally:
        parent.send("stop")
        proc.join(20)
        if proc.is_alive():
            proc.terminate()


def event_latency(events: int) -> dict[str, Any]:
    served, thread = serve(Path(tempfile.mkdtemp(prefix="kofo-bench-events-")))
    log = served.service.events_log
    latencies: list[float] = []

    async def main() -> None:
        url = served.url.replace("http://", "ws://") + "/v1/events?after=0"
        headers = {"Authorization": f"Bearer {served.token}"}
        async with connect(url, additional_headers=headers) as ws:
            ready = threading.Event()

            def writer() -> None:
                ready.wait(10)
                for i in range(events):
                    log.append("swap", {"i": i, "sent": time.time()})
                    time.sleep(0.005)  # spaced: measure delivery, not a burst's queueing

            t = threading.Thread(target=writer, daemon=True)
            t.start()
            ready.set()
            for _ in range(events):
                event = json.loads(await asyncio.wait_for(ws.recv(), 30))
                latencies.append((time.time() - event["data"]["sent"]) * 1000)
            t.join(10)

    try:
        asyncio.run(main())
    finally:
        thread.stop()
        log.close()
    return {
        "events": len(latencies),
        "p50_ms": pct(latencies, 0.50),
        "p99_ms": pct(latencies, 0.99),
        "mean_ms": round(statistics.fmean(latencies), 3),
        "goal_p50_ms": 5,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3_000)
    parser.add_argument("--events", type=int, default=300)
    args = parser.parse_args()
    out = {
        "clients": CLIENTS,
        **throughput(max(CLIENTS, args.requests)),
        "event_stream": event_latency(max(1, args.events)),
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
