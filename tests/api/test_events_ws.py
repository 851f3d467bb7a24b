"""The event stream over a real WebSocket: resume after a disconnect with nothing lost or
repeated while another thread appends, kind filters, refusals the client can read."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from kofo.node.api import RateLimit, create_app
from kofo.sdk import AsyncClient, InvalidRequest, Unauthorized
from tests.api.conftest import READONLY, TOKEN, Served, ServerThread, serve
from tests.api.memservice import MemService

pytestmark = pytest.mark.timeout(90)

N = 300


def ws_url(s: Served, query: str = "") -> str:
    return s.url.replace("http://", "ws://") + "/v1/events" + query


def appender(service: MemService, n: int, started: threading.Event) -> threading.Thread:
    def run() -> None:
        started.set()
        for i in range(n):
            service.events_log.append("swap" if i % 3 else "trade", {"i": i})

    return threading.Thread(target=run, daemon=True)


def test_resume_after_disconnect_loses_and_repeats_nothing(served: Served) -> None:
    auth = {"Authorization": f"Bearer {served.token}"}
    started = threading.Event()
    writer = appender(served.service, N, started)

    async def main() -> list[int]:
        seqs: list[int] = []
        writer.start()
        started.wait(5)
        for _ in range(100):  # bounded: each connection takes a few events then drops
            if len(seqs) >= N:
                break
            after = seqs[-1] if seqs else 0
            # max_queue=None: the client keeps reading frames while it closes (with a bounded
            # queue it stops reading and waits out close_timeout for the server's close frame)
            url = ws_url(served, f"?after={after}")
            async with connect(url, additional_headers=auth, max_queue=None) as ws:
                for _ in range(7):
                    try:
                        seqs.append(json.loads(await asyncio.wait_for(ws.recv(), 10))["seq"])
                    except ConnectionClosed:
                        break
                    if len(seqs) >= N:
                        break
        return seqs

    seqs = asyncio.run(main())
    writer.join(10)
    assert seqs == list(range(1, N + 1))


def test_sdk_resumes_by_itself_across_a_server_restart(tmp_path: Path) -> None:
    service = MemService(tmp_path)

    def app() -> object:
        return create_app(
            service,  # type: ignore[arg-type]
            token=TOKEN,
            readonly_token=READONLY,
            rate_limit=RateLimit(10_000, 10_000),
            event_wait=0.5,
        )

    first = ServerThread(app())
    url = first.start()
    port = int(url.rsplit(":", 1)[1])
    for i in range(10):
        service.events_log.append("trade", {"i": i})

    async def main() -> list[int]:
        got: list[int] = []
        second: ServerThread | None = None
        async with AsyncClient(url, TOKEN) as client:
            stream = client.events(after=0, max_retries=50, retry_delay=0.05)
            async for event in stream:
                got.append(event.seq)
                if event.seq == 5:
                    # the node restarts: the connection drops; events keep being written
                    await asyncio.to_thread(first.stop)
                    for i in range(10, 20):
                        service.events_log.append("trade", {"i": i})
                    second = ServerThread(app(), port)
                    await asyncio.to_thread(second.start)
                if event.seq == 20:
                    break
            await stream.aclose()  # type: ignore[attr-defined]
        if second is not None:
            second.stop()
        return got

    try:
        got = asyncio.run(main())
    finally:
        first.stop()
        service.events_log.close()
    assert got == list(range(1, 21))


def test_kinds_filter(served: Served) -> None:
    for i in range(6):
        served.service.events_log.append("swap" if i % 2 else "offer", {"i": i})

    async def main() -> list[tuple[int, str]]:
        out: list[tuple[int, str]] = []
        async with AsyncClient(served.url, served.readonly) as client:
            stream = client.events(after=0, kinds=("swap",))
            async for event in stream:
                out.append((event.seq, event.kind))
                if len(out) == 3:
                    break
            await stream.aclose()  # type: ignore[attr-defined]
        return out

    assert asyncio.run(main()) == [(2, "swap"), (4, "swap"), (6, "swap")]


def test_token_as_subprotocol_for_browsers(served: Served) -> None:
    served.service.events_log.append("node", {"hello": 1})

    async def main() -> tuple[str | None, dict[str, object]]:
        proto = f"kofo.bearer.{served.readonly}"
        async with connect(ws_url(served), subprotocols=[proto]) as ws:  # type: ignore[list-item]
            return ws.subprotocol, json.loads(await asyncio.wait_for(ws.recv(), 10))

    chosen, event = asyncio.run(main())
    assert chosen == f"kofo.bearer.{served.readonly}"
    assert event["seq"] == 1 and event["data"] == {"hello": 1}


@pytest.mark.parametrize(
    ("query", "headers", "code"),
    [
        ("", {}, 4401),
        ("", {"Authorization": "Bearer " + "ee" * 32}, 4401),
        ("?after=-3", None, 4422),
        ("?after=x", None, 4422),
        ("?kinds=swap,bogus", None, 4422),
    ],
)
def test_refusals_close_with_a_readable_code(
    served: Served, query: str, headers: dict[str, str] | None, code: int
) -> None:
    hdrs = headers if headers is not None else served.headers()

    async def main() -> int | None:
        async with connect(ws_url(served, query), additional_headers=hdrs) as ws:
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 10)
            return ws.close_code

    assert asyncio.run(main()) == code


def test_sdk_raises_on_refusal(served: Served) -> None:
    async def consume(token: str, kinds: tuple[str, ...] = ()) -> None:
        async with AsyncClient(served.url, token) as client:
            async for _ in client.events(kinds=kinds):
                break

    with pytest.raises(Unauthorized):
        asyncio.run(consume("ee" * 32))
    with pytest.raises(InvalidRequest):
        asyncio.run(consume(served.token, ("bogus",)))


def test_open_streams_are_capped(tmp_path: Path) -> None:
    s, thread = serve(tmp_path, max_streams=1)

    async def main() -> int | None:
        async with connect(ws_url(s), additional_headers=s.headers()):
            async with connect(ws_url(s), additional_headers=s.headers()) as second:
                with pytest.raises(ConnectionClosed):
                    await asyncio.wait_for(second.recv(), 10)
                return second.close_code

    try:
        assert asyncio.run(main()) == 4429
    finally:
        thread.stop()
        s.service.events_log.close()


def test_sync_client_events_resume_after_the_server_drops_them(tmp_path: Path) -> None:
    from kofo.sdk import Client

    s, thread = serve(tmp_path)
    for i in range(5):
        s.service.events_log.append("order", {"i": i})
    port = int(s.url.rsplit(":", 1)[1])
    second: ServerThread | None = None
    got: list[int] = []
    try:
        with Client(s.url, s.token) as node:
            stream = node.events(after=2, max_retries=50, retry_delay=0.05)
            for event in stream:
                got.append(event.seq)
                if event.seq == 4:  # the node restarts between two events
                    thread.stop()
                    for i in range(5, 9):
                        s.service.events_log.append("order", {"i": i})
                    second = ServerThread(
                        create_app(
                            s.service,  # type: ignore[arg-type]
                            token=TOKEN,
                            readonly_token=READONLY,
                            rate_limit=RateLimit(10_000, 10_000),
                            event_wait=0.5,
                        ),
                        port,
                    )
                    second.start()
                if event.seq == 9:
                    break
            stream.close()  # type: ignore[attr-defined]
    finally:
        thread.stop()
        if second is not None:
            second.stop()
        s.service.events_log.close()
    assert got == [3, 4, 5, 6, 7, 8, 9]
