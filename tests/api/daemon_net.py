"""The daemon's in-process network (``tests.node.test_daemon.network``: the embedded devnet,
three real :class:`kofo.node.daemon.Node` daemons taker -> relay -> maker) running in its own
event loop on a background thread, with the taker's real API app (``app_for_home``) served by
uvicorn on 127.0.0.1 in that same loop: for tests that drive the node from outside (a browser,
a README snippet) and so cannot live inside the network's ``async with``.

:meth:`DaemonNet.run` runs a coroutine in the network's loop and returns its result;
:meth:`DaemonNet.stop_api` and :meth:`DaemonNet.start_api` take the API down and bring it back
on the same port while the daemons keep running (a node whose HTTP face restarts)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import uvicorn

from kofo.node.api import app_for_home, load_tokens

T = TypeVar("T")
START_WAIT = 300.0  # seconds the devnet and three daemons may take to come up (a bound)


class DaemonNet:
    def __init__(self, tmp_path: Path) -> None:
        from tests.node import test_daemon as harness

        self.harness = harness
        self.tmp_path = tmp_path
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.failed: BaseException | None = None
        self._stop: asyncio.Event | None = None
        self._server: uvicorn.Server | None = None
        self._serving: asyncio.Future[None] | None = None
        self.port = 0
        self.nodes: dict[str, Any] = {}
        self.thread = threading.Thread(target=self._main, name="daemon-net", daemon=True)

    # -- lifecycle ------------------------------------------------------------------------

    def __enter__(self) -> DaemonNet:
        self.thread.start()
        if not self.ready.wait(START_WAIT):
            raise AssertionError("the daemon network did not start")
        if self.failed is not None:
            raise AssertionError("the daemon network failed to start") from self.failed
        return self

    def __exit__(self, *exc: object) -> None:
        if self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        self.thread.join(120)

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._run())
        except BaseException as e:  # reported to __enter__ if it was still waiting
            self.failed = e
        finally:
            self.ready.set()
            self.loop.close()

    async def _run(self) -> None:
        self._stop = asyncio.Event()
        async with self.harness.network(self.tmp_path) as net:
            self.nodes = net.nodes
            self.devnet = net.devnet
            self.taker = net.nodes["taker"]
            tokens = load_tokens(self.taker.config.home)
            self.token, self.readonly_token = tokens.token, tokens.readonly_token
            self.app = app_for_home(self.taker, self.taker.config)
            await self._start_api()
            self.ready.set()
            await self._stop.wait()
            await self._stop_api()

    # -- the API --------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _start_api(self) -> None:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # back on the same port
        sock.bind(("127.0.0.1", self.port))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app, log_level="warning", lifespan="off", ws="websockets-sansio"
        )
        server = uvicorn.Server(config)
        server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
        self._server = server
        self._serving = asyncio.ensure_future(server.serve(sockets=[sock]))
        await self.harness.until(lambda: server.started, "the API to listen")
        self._sock = sock

    async def _stop_api(self) -> None:
        if self._server is None or self._serving is None:
            return
        self._server.should_exit = True
        with contextlib.suppress(Exception):
            await self._serving
        self._sock.close()
        self._server = self._serving = None

    def start_api(self) -> None:
        self.run(self._start_api())

    def stop_api(self) -> None:
        self.run(self._stop_api())

    # -- calls into the loop --------------------------------------------------------------

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 120.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)
