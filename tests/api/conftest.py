"""A real uvicorn server on 127.0.0.1 (an ephemeral port) serving the API over the in-memory
NodeService; one per test (cheap: no chains)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import uvicorn

from kofo.node.api import RateLimit, create_app
from tests.api.memservice import MemService

TOKEN = "f0" * 32
READONLY = "0f" * 32


@dataclass
class Served:
    url: str
    service: MemService
    token: str = TOKEN
    readonly: str = READONLY

    def headers(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.token}"}


class ServerThread:
    def __init__(self, app: object, port: int = 0) -> None:
        config = uvicorn.Config(
            app,  # type: ignore[arg-type]
            host="127.0.0.1",
            port=port,
            log_level="warning",
            lifespan="off",
            ws="websockets-sansio",
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> str:
        self.thread.start()
        for _ in range(500):  # bounded: 500 x 20 ms
            if self.server.started:
                break
            self.thread.join(0.02)
        assert self.server.started, "uvicorn did not start"
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def serve(
    tmp_path: Path, rate_limit: RateLimit | None = None, **kwargs: object
) -> tuple[Served, ServerThread]:
    service = MemService(tmp_path)
    app = create_app(
        service,  # type: ignore[arg-type]
        token=TOKEN,
        readonly_token=READONLY,
        rate_limit=rate_limit or RateLimit(per_second=10_000, burst=10_000),
        event_wait=0.5,
        **kwargs,  # type: ignore[arg-type]
    )
    thread = ServerThread(app)
    return Served(thread.start(), service), thread


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    s, thread = serve(tmp_path)
    try:
        yield s
    finally:
        thread.stop()
        s.service.events_log.close()
