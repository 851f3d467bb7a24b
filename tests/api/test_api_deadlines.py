"""The daemon's API as :func:`kofo.node.api.uvicorn_config` serves it drops a stalled request
(slowloris: uvicorn alone never times out a request trickled in), and leaves an upgraded
WebSocket alone. Same raw-socket checks as tests/test_http_servers.py; no assertion on time."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from websockets.asyncio.client import connect

from kofo import asgi
from kofo.node import api
from kofo.node.api import RateLimit, create_app, uvicorn_config
from kofo.node.config import load_config
from kofo.node.home import init_home
from tests.api.conftest import READONLY, TOKEN
from tests.api.memservice import MemService
from tests.test_http_servers import _closed_by_server, _status

pytestmark = pytest.mark.timeout(120)

SHORT = asgi.Limits(max_body=api.MAX_BODY, request_timeout=1.0, write_timeout=1.0)


@pytest.fixture
def daemon_api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[int, MemService]]:
    monkeypatch.setattr(api, "API_LIMITS", SHORT)
    init_home(tmp_path / "h", "correct horse battery")
    service = MemService(tmp_path)
    app = create_app(
        service,  # type: ignore[arg-type]
        token=TOKEN,
        readonly_token=READONLY,
        rate_limit=RateLimit(per_second=10_000, burst=10_000),
        event_wait=0.5,
    )
    server = uvicorn.Server(uvicorn_config(app, load_config(tmp_path / "h"), port=0))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(500):  # bounded: 500 x 20 ms
        if server.started:
            break
        thread.join(0.02)
    assert server.started
    try:
        yield server.servers[0].sockets[0].getsockname()[1], service
    finally:
        server.should_exit = True
        thread.join(10)


REQUEST = f"GET /v1/events/last HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"


@pytest.mark.parametrize(
    "stall",
    [b"", b"GET /v1/health HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 300],
    ids=["idle", "slow-headers"],
)
def test_a_stalled_request_to_the_daemon_api_is_dropped(
    daemon_api: tuple[int, MemService], stall: bytes
) -> None:
    port, _ = daemon_api
    slow = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(2)]
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as ok:
            ok.sendall(REQUEST.encode())
            assert _status(ok) == 200
        results: list[bool] = []
        threads = [
            threading.Thread(target=lambda s=s: results.append(_closed_by_server(s, stall)))
            for s in slow
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert results == [True, True]
    finally:
        for s in slow:
            s.close()


def test_a_websocket_outlives_the_request_deadline(daemon_api: tuple[int, MemService]) -> None:
    port, service = daemon_api
    auth = {"Authorization": f"Bearer {TOKEN}"}

    async def main() -> int:
        url = f"ws://127.0.0.1:{port}/v1/events?after=0"
        async with connect(url, additional_headers=auth) as ws:
            await asyncio.sleep(3 * SHORT.request_timeout)  # past the request deadline
            service.events_log.append("swap", {"i": 1})
            return int(json.loads(await asyncio.wait_for(ws.recv(), 30))["seq"])

    started = time.monotonic()
    assert asyncio.run(main()) == 1
    assert time.monotonic() - started >= 3 * SHORT.request_timeout  # the deadline did pass
