"""The status monitor (watchtower): follows every chain a swap touches and drives the engine.

Each chain gets a :class:`~kofo.settlement.follow.BlockFollower`. A poll re-evaluates the open
swaps when any chain moved (a new block, or a reorg, after which cached counterparty HTLC
references are dropped and re-found). Acting on confirmations, extracting the preimage, refunding
at expiry and recording evidence are the state machine's decisions; this module only decides
*when* to ask.

Subscribers get every state change through :meth:`EventHub.subscribe`, an async iterator (the
API exposes it as a WebSocket).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator

from kofo.settlement.engine import SwapEngine, SwapUpdate
from kofo.settlement.follow import BlockFollower, Reorg

log = logging.getLogger(__name__)

SUBSCRIBER_QUEUE = 10_000
"""A subscriber that falls this far behind is dropped rather than letting it grow memory without
bound; it can re-read the journal's event history to catch up."""


class EventHub:
    """Fans :class:`SwapUpdate` out to async subscribers; ``publish`` works from any thread."""

    def __init__(self) -> None:
        self._subs: list[tuple[asyncio.AbstractEventLoop, asyncio.Queue[SwapUpdate | None]]] = []
        self._lock = threading.Lock()

    def publish(self, update: SwapUpdate) -> None:
        with self._lock:
            subs = list(self._subs)
        for loop, queue in subs:
            try:
                loop.call_soon_threadsafe(self._put, loop, queue, update)
            except RuntimeError:  # the subscriber's loop is closed
                self._drop(queue)

    def _put(
        self,
        loop: asyncio.AbstractEventLoop,
        queue: asyncio.Queue[SwapUpdate | None],
        update: SwapUpdate,
    ) -> None:
        try:
            queue.put_nowait(update)
        except asyncio.QueueFull:
            self._drop(queue)
            queue.put_nowait(None) if not queue.full() else None

    def _drop(self, queue: asyncio.Queue[SwapUpdate | None]) -> None:
        with self._lock:
            self._subs = [(lp, q) for lp, q in self._subs if q is not queue]

    async def subscribe(self) -> AsyncIterator[SwapUpdate]:
        """Every update published from now on, in order, until the hub closes."""
        queue: asyncio.Queue[SwapUpdate | None] = asyncio.Queue(SUBSCRIBER_QUEUE)
        with self._lock:
            self._subs.append((asyncio.get_running_loop(), queue))
        try:
            while True:
                update = await queue.get()
                if update is None:
                    return
                yield update
        finally:
            self._drop(queue)

    def close(self) -> None:
        with self._lock:
            subs, self._subs = list(self._subs), []
        for loop, queue in subs:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, None)
            except RuntimeError:
                pass


class Watchtower:
    """Polls the engine's chains and drives its open swaps whenever a chain moves."""

    def __init__(self, engine: SwapEngine, *, poll_interval: float = 0.5) -> None:
        self.engine = engine
        self.poll_interval = poll_interval
        self._followers = {name: BlockFollower(a) for name, a in engine.adapters.items()}
        self._started = False

    def start(self) -> None:
        """Reload every unfinished swap and re-send its journaled transactions."""
        self.engine.resume()
        self._started = True

    def poll_once(self, *, force: bool = False) -> int:
        """Follow each chain; drive the open swaps if any moved (or ``force``). Returns the
        number of unfinished swaps."""
        if not self._started:
            self.start()
            force = True
        moved = force
        for name, follower in self._followers.items():
            try:
                events = follower.poll()
            except Exception as exc:  # one chain's failure (a malformed answer too) never
                # stops following the others or driving their swaps
                log.warning("following %s failed: %s: %s", name, type(exc).__name__, exc)
                continue
            if events:
                moved = True
            if any(isinstance(e, Reorg) for e in events):
                log.warning("reorg on %s: re-checking every swap on it", name)
                self.engine.forget_refs(name)
        if not moved:
            return len(self.engine.unfinished())
        return self.engine.tick()

    def run(self, stop: threading.Event, *, until_idle: bool = False) -> None:
        """Poll until ``stop`` is set (or, with ``until_idle``, no swap is unfinished)."""
        while not stop.is_set():
            remaining = self._poll_safely()
            if until_idle and remaining == 0:
                return
            stop.wait(self.poll_interval)

    def _poll_safely(self) -> int | None:
        """:meth:`poll_once`, logging instead of raising: the loop outlives any one failure
        (the journal unreadable for a moment, say). ``None`` when it failed."""
        try:
            return self.poll_once(force=True)
        except Exception as exc:
            log.warning("watchtower poll failed: %s: %s", type(exc).__name__, exc)
            return None

    async def run_async(self, stop: asyncio.Event) -> None:
        """The same loop for an asyncio node: polls in a worker thread."""
        while not stop.is_set():
            await asyncio.to_thread(self._poll_safely)
            try:
                await asyncio.wait_for(stop.wait(), self.poll_interval)
            except TimeoutError:
                pass


def evidence_for_ledger(engine: SwapEngine) -> list[dict[str, object]]:
    """The node's recorded counterparty misbehaviour, as plain maps for the clearance ledger."""
    return [
        {"swap_id": e.swap_id.hex(), "kind": e.kind, "code": e.code, "detail": e.detail}
        for e in engine.journal.evidence()
    ]
