"""``kofo node --home DIR``: the daemon. One asyncio process composes the three layers.

- the ledger client, a health loop, and registration at start (idempotent, retried while the
  ledger is down, never fatal);
- one adapter and policy per configured chain (:mod:`kofo.node.chains`);
- the swap engine (journal in the home), ticked off the event loop (``asyncio.to_thread``);
  its updates go to the persisted event stream (kind ``swap``);
- the trade pipeline (:class:`~kofo.node.trades.TradePipeline`, phases in ``trades.sqlite``)
  and the trade rows (:class:`~kofo.node.trade_store.TradeStore`);
- the exchange node (P2P listen and bootstrap), whose hooks make this node a maker
  (offers, liquidity, ``order_guard``) and a taker (``expiry_fit``), and whose direct
  messages carry the swap messages between the two traders;
- :class:`~kofo.node.service.NodeService`, every method real, for the API.

Nothing locks before the ledger committed the order (the pipeline's rule); every phase is
journaled before its side effect, so a restart resumes each trade where it stood
(:meth:`Node._recover`). SIGINT/SIGTERM stop it cleanly: the exchange first, then the engine
finishes its step, then the journals close.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import importlib
import json
import logging
import os
import re
import signal
import threading
import time
import traceback
from collections.abc import Awaitable, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

from kofo import __version__
from kofo.clearance import privacy
from kofo.errors import ConfigError, InvalidInput, KofoError
from kofo.exchange.node import ExchangeConfig, ExchangeNode, RouteFailed, now_ms
from kofo.exchange.route import OrderPolicy, OrderTimes
from kofo.node.bonds import ensure_bond, vault_bond
from kofo.node.chains import Chains, build_chains
from kofo.node.config import BitcoinChainConfig, NodeConfig, OfferConfig, load_config
from kofo.node.events import EventLog
from kofo.node.home import HomeLock
from kofo.node.importance import ImportanceCache
from kofo.node.ledger_client import LedgerClient, LedgerError, LedgerRefused, Status, tx_hash
from kofo.node.redact import Redactor, public_url
from kofo.node.registration import ensure_registered, load_or_create_paillier
from kofo.node.service import (
    BalanceView,
    BondView,
    BookView,
    ChainView,
    Conflict,
    EvidenceView,
    FeeShareView,
    ImportanceView,
    LedgerOrderView,
    NodeInfo,
    NotFound,
    OfferSpec,
    OfferView,
    PeerView,
    QuoteView,
    SwapEventView,
    SwapLegView,
    SwapView,
    TradeRequest,
    TradeView,
    Unavailable,
)
from kofo.node.service import Event as ServiceEvent
from kofo.node.trade_store import TERMINAL_TRADE_STATES, TradeStore
from kofo.node.trades import (
    NOT_YET_CODES,
    PhaseJournal,
    TradePipeline,
    TradeRefused,
    check_order_as_maker,
    plan_order_times,
)
from kofo.private_files import read_private_file, write_private_file
from kofo.settlement.engine import CrashHook, SwapEngine, SwapUpdate, TxDepth
from kofo.settlement.journal import Journal, StoredSwap, UnknownSwap
from kofo.settlement.swap import TERMINAL, Role, State
from kofo.settlement.terms import ACCEPT_WINDOW_SECONDS, TermsRefused
from kofo.wallet import NodeWallet
from kofo.wire.codec import decode, encode
from kofo.wire.envelope import ReplayGuard
from kofo.wire.exchange import Quote, SignedOffer
from kofo.wire.expiry import BlockHeight, Expiry, UnixTime
from kofo.wire.legkeys import LegRole
from kofo.wire.orders import (
    CommitOrder,
    EvidenceKind,
    FileEvidence,
    SettlementOrder,
    WithdrawFees,
    leg_roles_of,
    sign_tx,
)
from kofo.wire.swap import Error, Propose, SwapBody, open_swap, sign_swap

log = logging.getLogger("kofo.node")

T = TypeVar("T")

HEALTH_INTERVAL = 5.0
"""Seconds between ledger checks while all is well; an outage is noticed within one."""
TICK_INTERVAL = 0.5
"""Seconds between engine ticks: a swap step waits at most this for its turn."""
REFRESH_INTERVAL = 1.0
"""Seconds between chain reads (tips, balances) that the synchronous exchange hooks use."""
WATCH_INTERVAL = 1.0
IMPORTANCE_INTERVAL = 10.0
"""Seconds between reads of the ledger's importance ranking into the exchange's lookup
(:mod:`kofo.node.importance`): never read on the quote path."""
MAX_REFUSALS_RECORDED = 3
"""Refused proposals recorded per maker trade row (the first ones; the log has them all)."""
"""Seconds between looks at the ledger for signed-but-uncommitted orders and lock deadlines."""
DIRECT_TIMEOUT = 30.0
"""Seconds a swap message to the counterparty may take (the engine's request transport). The
first proposal of a trade dials the maker and has it read the order back from the ledger: on
a loaded machine that took more than 10 s, and the committed trade was given up unlocked."""
HEIGHT_TOLERANCE = 3
"""Blocks a Bitcoin-like leg's height may differ from what this node derives for its
expiry_time: the parties' tips differ by a block or two at the moment of the order."""
TIP_STALENESS_S = 10
"""Seconds the tips the hooks read may lag (refreshed every :data:`REFRESH_INTERVAL`, on each
side, plus the order's round trip): their blocks are added to :data:`HEIGHT_TOLERANCE`."""
PROPOSE_RETRY_S = ACCEPT_WINDOW_SECONDS - 60
"""Seconds a taker keeps re-sending its proposal to a maker it cannot reach (or that did not
answer) after the commit: within the engine's accept window, so the swap ends aborted (nothing
locked) if the maker never comes back. With another accept window (``[timing]``):
:func:`propose_retry_s`."""


def evidence_due(lock_by: int, attest_grace: int, ledger_time: int) -> bool:
    """Whether ``leg_not_locked`` evidence on a leg is valid in the ledger's next block: the
    ledger accepts it only in a block whose time is after ``lock_by + attest_grace``, and a
    block's time is never before the latest one's (``ledger_time``)."""
    return ledger_time > lock_by + attest_grace


def propose_retry_s(accept_window_s: int) -> int:
    """:data:`PROPOSE_RETRY_S` for an accept window: a fifth of it (at most 60 s) is kept
    for the last proposal's round trip and the lock."""
    return accept_window_s - min(60, accept_window_s // 5)


PROPOSE_RETRY_INTERVAL = 5.0
"""Seconds before the first re-send of an unanswered proposal; doubled after each, up to
:data:`PROPOSE_RETRY_MAX_INTERVAL` (the maker answers an identical re-send idempotently)."""
PROPOSE_RETRY_MAX_INTERVAL = 20.0
STOP_WAIT = 60.0
"""Seconds a stop waits for thread work in progress (a ledger commit is bounded by 30 s)."""
OFFERS_FILE = "offers.json"
"""The offers added through the API (``kofo offer add``), kept until withdrawn: a restart
announces them again under their ids (a config offer's id is derived from the node and its
place in ``[[offers]]``), so peers' books hold the live offer, never a stale copy."""
WITHDRAWALS_FILE = "withdrawals.json"
"""Per asset, the ``seq`` of this node's next fee withdrawal (the ledger's count, kept)."""
EVENTS_FILE = "events.sqlite"
TRADES_FILE = "trades.sqlite"
TRADE_STATE_OF_SWAP = {
    State.REDEEMED: "redeemed",
    State.REFUNDED: "refunded",
    State.ABORTED: "failed",
    # terms refused or declined: nothing of ours was locked and the swap never goes on (left
    # out, a taker whose maker called the proposal off later stayed "settling" for ever)
    State.REJECTED: "failed",
    # the counterparty refunded after our leg was redeemed: the swap is over, so is the trade
    # (left "settling", a client following the trade would wait for an end that never comes)
    State.LOST: "failed",
}


@dataclass
class NodeState:
    """What the node knows now (shown by :meth:`Node.info`)."""

    ledger: Status | None = None
    ledger_error: str = ""
    registered: bool = False
    tips: dict[str, Expiry] = field(default_factory=dict)
    heights: dict[str, int] = field(default_factory=dict)  # chain -> block height (info)
    chain_errors: dict[str, str] = field(default_factory=dict)
    balances: dict[str, int] = field(default_factory=dict)  # asset -> wallet balance
    fee_reserve: dict[str, int] = field(default_factory=dict)  # asset -> kept for spends
    params: dict[str, Any] = field(default_factory=dict)  # the ledger's /params
    bond_vault: int | None = None  # wei the bond vault holds under this node id (as last read)
    bond_attested: int | None = None  # the ledger's count of it (attested less slashes pending)
    bond_error: str = ""  # why the configured bond is not locked yet


@dataclass
class _Hold:
    """Base units of an asset held for a quote or a signed order, until ``until`` (unix s)."""

    asset: str
    amount: int
    until: float
    order_id: bytes | None = None


@dataclass
class _OwnOffer:
    spec: OfferSpec
    signed: SignedOffer


class StartCancelled(KofoError):
    """A SIGINT/SIGTERM came during the node's start: it stops there."""

    code = "start_cancelled"


class Node:
    """One participant's daemon. ``chains`` may be given (tests); otherwise built from the
    config at :meth:`start` (which checks each chain's network)."""

    def __init__(
        self,
        config: NodeConfig,
        wallet: NodeWallet,
        *,
        passphrase: str,
        chains: Chains | None = None,
        paillier_bits: int | None = None,
        exchange_options: dict[str, Any] | None = None,
        crash: CrashHook | None = None,
    ) -> None:
        self.config = config
        self.wallet = wallet
        self._passphrase = passphrase
        self.key = wallet.node_key()
        self.node_id = self.key.public_key().public_bytes_raw()
        self.ledger = LedgerClient(config.ledger.url, timeout=config.ledger.timeout)
        # credentials in the endpoint URLs (an API key in the path, user:pass@): errors quote
        # the URL, and every error text this node shows or logs passes through this
        self._redact = Redactor.for_urls(
            [c.rpc_url for c in config.chains.values()] + [config.ledger.url],
            [c.rpc_password for c in config.chains.values() if isinstance(c, BitcoinChainConfig)],
        )
        self.state = NodeState()
        self.chains = chains
        self._paillier_bits = paillier_bits
        self._exchange_options = dict(exchange_options or {})
        self.crash = crash or CrashHook.from_env()
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="kofo-node")
        self._inflight: set[Future[Any]] = set()
        self._paillier: Any = None
        self._stop = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._trade_tasks: dict[str, asyncio.Task[Any]] = {}
        self._guard = ReplayGuard()
        self._holds: list[_Hold] = []
        self._holds_lock = threading.Lock()
        self._own_offers: dict[bytes, _OwnOffer] = {}
        self._contacts: dict[bytes, str] = {}
        self._started_at = int(time.time())
        self._reserved: dict[str, int] = {}
        self._funding: dict[str, str] = {}  # chain -> the wallet's address (info)
        self._settled_legs: dict[bytes, list[dict[str, Any]]] = {}  # both spent: read once
        self._ticking = threading.Lock()
        self.event_log = EventLog(config.home / EVENTS_FILE)
        self.phases = PhaseJournal(config.home / TRADES_FILE)
        self.store = TradeStore(config.home / TRADES_FILE)
        self._contacts.update(self.store.contacts())
        self.stopped_in_start = False  # a SIGINT/SIGTERM came before the start ended
        self.stop_signal = 0  # the first SIGINT/SIGTERM :meth:`run` received
        self.engine: SwapEngine | None = None
        self.pipeline: TradePipeline | None = None
        self.exchange: ExchangeNode | None = None
        # the exchange's importance lookup (rank, book standing, fan-out): memory only
        self.importance_cache = ImportanceCache()

    # -- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        """Build and start everything; returns once the node serves (trades may still wait
        for the ledger: registration is retried in the background)."""
        self._loop = asyncio.get_running_loop()
        log.info("starting node %r (home %s)", self.config.name, self.config.home)
        if self.chains is None:
            log.info("connecting to the chains")
            self.chains = await self._detached(build_chains, self.config, self.wallet)
        chains = self.chains
        self.engine = SwapEngine(
            Journal(self.config.journal_path),
            chains.adapters,
            chains.policies,
            self.key,
            notify=self._notify,
            request=self._request,
            publish=self._on_swap_update,
            depth=self._on_swap_depth,
            crash=self.crash,
        )
        self.pipeline = TradePipeline(
            ledger=self.ledger,
            engine=self.engine,
            node_key=self.key,
            phases=self.phases,
            send=self._request,
            crash=self.crash.hit,
            accept_window_s=self.config.timing.accept_window_s,
        )
        self.engine.accept_policy = self.pipeline.accept_policy
        await self._refresh_chains()
        await self.check_ledger()  # the ledger's params (protocol fee) if it is up
        self.exchange = ExchangeNode(
            self.key, self._exchange_config(), importance=self.importance_cache
        )
        await self.exchange.start()
        if not self.config.p2p_listen.port and hasattr(self.exchange.config, "contact"):
            # listening on a free port (tests): the contact is known now
            self.exchange.config.contact = f"{self.config.p2p_listen.host}:{self.exchange.port}"
        # the journal's re-sends: waited for by a stop (in _inflight), which it checks between
        # swaps, so the journal closes only after it
        await self._thread(self.engine.resume, self._stop.is_set)
        if self._stop.is_set():
            raise StartCancelled("stopped during the start")
        for i, offer in enumerate(self.config.offers):
            self._publish(_spec_of(offer), offer_id=self._config_offer_id(i))
        for oid, spec in self._saved_offers().items():
            try:
                self._publish(spec, offer_id=oid)
            except KofoError as exc:  # a chain or token no longer configured
                log.warning("offer %s from %s not announced: %s", oid.hex(), OFFERS_FILE, exc)
        self._tasks = [
            asyncio.ensure_future(self._health_loop()),
            asyncio.ensure_future(self._register_loop()),
            asyncio.ensure_future(self._bond_loop()),
            asyncio.ensure_future(self._tick_loop()),
            asyncio.ensure_future(self._refresh_loop()),
            asyncio.ensure_future(self._watch_loop()),
            asyncio.ensure_future(self._offer_loop()),
            asyncio.ensure_future(self._importance_loop()),
        ]
        self._recover()
        for line in self.identity_lines():
            log.info("%s", line)
        self.event_log.append("node", {"event": "started", "node_id": self.node_id.hex()})
        log.info(
            "node %r started (home %s), node id %s, p2p %s:%d",
            self.config.name,
            self.config.home,
            self.node_id.hex()[:16],
            self.config.p2p_listen.host,
            self.exchange.port,
        )

    def identity_lines(self) -> list[str]:
        """The node's addresses for the log (never a key)."""
        lines = [f"eth address {self.wallet.eth_account().address}"]
        for chain in self.config.chains.values():
            if isinstance(chain, BitcoinChainConfig):
                hd = self.wallet.bitcoin(chain.chain, chain.network, home=self.config.home)
                lines.append(f"{chain.chain} ({chain.network}) address {hd.address()}")
        return lines

    async def stop(self) -> None:
        """Stop the exchange (no new quotes or orders), the trade tasks and loops (the engine
        finishes the step it is in), then close the journals."""
        self._stop.set()
        if self.exchange is not None:
            await self.exchange.stop()
        tasks = list(self._trade_tasks.values()) + self._tasks
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        # work already handed to a thread (a submit, a swap start, a message) ends by itself
        # (each is bounded by its timeouts): wait for it before the journals close
        await asyncio.to_thread(wait_futures, list(self._inflight), STOP_WAIT)
        self._pool.shutdown(wait=False)
        await asyncio.to_thread(self._ticking.acquire)  # the engine's step in progress ends
        try:
            if self.engine is not None:
                self.engine.journal.close()
            self.phases.close()
            self.store.close()
            self.event_log.close()
        finally:
            self._ticking.release()
        log.info("node %r stopped", self.config.name)

    async def run(self, stop: threading.Event | None = None) -> None:
        """Start, serve until SIGINT/SIGTERM, stop. A signal during the start stops it there
        (:attr:`stopped_in_start`): its blocking steps run in threads a stop does not wait for
        (reads, atomic writes: as a SIGKILL there), the journal's re-sends check for it
        between swaps. ``stop``: set by a signal before this loop ran (``run_node``)."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._on_signal, sig)
        if stop is not None and stop.is_set():
            self._stop.set()
        try:
            start = asyncio.ensure_future(self.start())
            stopped = asyncio.ensure_future(self._stop.wait())
            await asyncio.wait({start, stopped}, return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
            if self._stop.is_set() and (
                not start.done()
                or start.cancelled()
                or (isinstance(start.exception(), StartCancelled))
            ):
                self.stopped_in_start = True
                log.warning("stop requested during the start: stopping")
                start.cancel()
                with contextlib.suppress(asyncio.CancelledError, StartCancelled):
                    await start
            else:
                start.result()  # a start that failed raises here
                await self._serve_api()
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            await self.stop()

    async def _serve_api(self) -> None:
        """Serve the API (``kofo.node.api``: ``app_for_home`` + ``uvicorn_config``, the home's
        tokens, TLS when configured) on ``[api] bind`` until stopped. Without the API module
        the node runs headless (logged)."""
        try:
            import uvicorn

            api: Any = importlib.import_module("kofo.node.api")
            app = api.app_for_home(self, self.config)
            server = uvicorn.Server(api.uvicorn_config(app, self.config))
        except (ImportError, AttributeError) as exc:
            log.warning("the API is not available (%s): serving no API", exc)
            await self._stop.wait()
            return
        server.install_signal_handlers = lambda: None  # type: ignore[attr-defined]  # ours
        serving = asyncio.ensure_future(server.serve())
        log.info("API on http://%s", self.config.api)
        stopped = asyncio.ensure_future(self._stop.wait())
        await asyncio.wait({serving, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if serving.done() and not self._stop.is_set():
            log.error("the API server ended: %s", serving.exception() or "(no error)")
            await self._stop.wait()
        server.should_exit = True
        stopped.cancel()
        with contextlib.suppress(Exception):
            await serving

    def stop_soon(self) -> None:
        self._stop.set()

    def _on_signal(self, sig: int) -> None:
        self.stop_signal = self.stop_signal or sig
        if not self._stop.is_set():
            log.info("%s received: stopping", signal.Signals(sig).name)
        self._stop.set()

    async def _detached(self, fn: Callable[..., T], *args: Any) -> T:
        """Blocking work that only reads, or writes atomically (a chain or ledger RPC, the
        start's connections, a Paillier key), in a daemon thread: a stop abandons it (as a
        SIGKILL there would) instead of waiting for an RPC timeout or a key generation; the
        process exits without joining it."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()

        def settle(ok: bool, value: Any) -> None:
            if not fut.done():
                if ok:
                    fut.set_result(value)
                else:
                    fut.set_exception(value)

        def work() -> None:
            try:
                value: Any = fn(*args)
                ok = True
            except BaseException as exc:  # handed to the awaiting task
                value, ok = exc, False
            with contextlib.suppress(RuntimeError):  # the loop is gone: abandoned
                loop.call_soon_threadsafe(settle, ok, value)

        threading.Thread(target=work, name="kofo-node-detached", daemon=True).start()
        return await fut

    async def _thread(self, fn: Callable[..., T], *args: Any) -> T:
        """Run blocking work (ledger, chains, the engine) off the loop; a stop waits for it."""
        cf = self._pool.submit(fn, *args)
        self._inflight.add(cf)
        cf.add_done_callback(self._inflight.discard)
        return await asyncio.wrap_future(cf)

    # -- the exchange's hooks ---------------------------------------------------------------------

    def _exchange_config(self) -> ExchangeConfig:
        options = dict(self._exchange_options)
        if not self.config.discover:
            # A fixed topology: dial the bootstrap peers only (each until it is linked), no
            # feelers, and learn no address (neither from peers' lists nor an inbound peer's
            # hint): with learned addresses in the table, a node whose bootstrap link dropped
            # (a relay restarting) dialled one of them to make up its degree, e.g. a taker its
            # maker, bypassing the relay.
            options.setdefault("discover", False)
            options.setdefault("target_degree", len(self.config.bootstrap))
            options.setdefault("feeler_s", 0.0)
            options.setdefault("max_known_per_source", 0)
        options.setdefault("target_degree", self.config.target_degree)
        options.setdefault("feeler_s", self.config.feeler_s)
        cfg = ExchangeConfig(
            host=self.config.p2p_listen.host,
            port=self.config.p2p_listen.port,
            bootstrap=[(e.host, e.port) for e in self.config.bootstrap],
            addresses=self._fresh_addresses(),
            protocol_fee_bps=int(self.state.params.get("protocol_fee_bps", 0)),
            lock_window_s=self.config.timing.lock_window_s,
            **options,
        )
        hooks: dict[str, Any] = {
            "expiry_fit": self._expiry_fit,
            "expiry_check": self._expiry_check,
            "order_guard": self._order_guard,
            "liquidity": self._quotable,
            "on_fill": self._on_fill,
            "contact": str(self.config.p2p_listen) if self.config.p2p_listen.port else "",
            "on_direct": self._on_direct,
            "plan_times": self._plan_times,
            "prove_legs": self._prove_legs,
            "chain_clocks": {
                name: "height" if p.height_clock else "unix"
                for name, p in (self.chains.policies.items() if self.chains else ())
            },
        }
        names = {f.name for f in fields(cfg)}
        missing = sorted(set(hooks) - names)
        if missing:
            log.warning("the exchange layer lacks hooks %s: this node cannot trade", missing)
        for name, value in hooks.items():
            if name in names:
                setattr(cfg, name, value)
        return cfg

    def _fresh_addresses(self) -> dict[str, str]:
        """This node's address per chain for the next order: a fresh HTLC key on Bitcoin-like
        chains (no two swaps share a key), the account on Ethereum."""
        assert self.chains is not None
        return {name: a.address() for name, a in self.chains.adapters.items()}

    def _prove_legs(self, order: SettlementOrder) -> dict[tuple[int, LegRole], bytes]:
        """Proofs of control of this node's leg keys in ``order`` (the exchange's
        ``prove_legs``): each signed by the settlement wallet's key behind the address, so the
        ledger commits the order (a copier of a stranger's HTLC terms has no such keys)."""
        assert self.chains is not None
        out = {}
        for i, role, address in leg_roles_of(order, self.node_id):
            adapter = self.chains.adapters.get(order.legs[i].chain)
            if adapter is None:
                raise OrderPolicy(f"chain {order.legs[i].chain!r} is not served by this node")
            out[(i, role)] = adapter.prove_leg_key(address, order.order_id, i, role)
        return out

    def _rotate_addresses(self) -> None:
        if self.exchange is not None:
            self.exchange.config.addresses = self._fresh_addresses()

    def _expiry_fit(self, chain: str, expiry_time: int, now_s: int) -> Expiry:
        """A leg's expiry in its chain's unit: on a height-clocked chain the first height that
        surely comes no earlier than ``expiry_time`` (``fit_expiries``' arithmetic)."""
        assert self.chains is not None
        policy = self.chains.policies.get(chain)
        if policy is None:
            raise OrderPolicy(f"chain {chain!r} is not served by this node")
        if not policy.height_clock:
            return UnixTime(expiry_time)
        tip = self.state.tips.get(chain)
        if not isinstance(tip, BlockHeight):
            raise OrderPolicy(f"chain {chain}: no tip known yet")
        return BlockHeight(tip.value + policy.to_units(expiry_time - now_s))

    def _plan_times(self, have_chain: str, want_chain: str, now_s: int) -> OrderTimes:
        """The taker's plan of an order's deadlines from its engine's margins (link v4)."""
        assert self.chains is not None
        t = self.config.timing
        return plan_order_times(
            self.chains.policies,
            have_chain,
            want_chain,
            now_s,
            lock_window_s=t.lock_window_s,
            accept_window_s=t.accept_window_s,
            leg_expiry_step_s=t.leg_expiry_step_s,
        )

    def _expiry_check(self, chain: str, expiry: Expiry, expiry_time: int, now_s: int) -> None:
        """Refuse a leg whose expiry is not in its chain's unit, or whose height is more than
        :data:`HEIGHT_TOLERANCE` blocks (plus those of :data:`TIP_STALENESS_S`) from what this
        node derives for ``expiry_time``."""
        want = self._expiry_fit(chain, expiry_time, now_s)
        if type(want) is not type(expiry):
            raise OrderPolicy(f"chain {chain}: expiry {expiry} is not in the chain's unit")
        assert self.chains is not None
        slack = HEIGHT_TOLERANCE + self.chains.policies[chain].to_units(TIP_STALENESS_S)
        if isinstance(want, BlockHeight) and abs(want.value - expiry.value) > slack:
            raise OrderPolicy(
                f"chain {chain}: expiry height {expiry.value} is not within {slack} "
                f"blocks of {want.value} (this node's view for expiry_time {expiry_time})"
            )

    def liquidity(self, asset: str) -> int:
        """Base units of ``asset`` this node can still promise: the spendable wallet balance
        less the engine's open swaps (``reserved``), the fee reserve for their spends, and
        the holds of open quotes and signed orders not yet swaps. Read from the last refresh
        (no chain read here: the exchange calls this on its event loop)."""
        assert self.engine is not None
        balance = self.state.balances.get(asset, 0)
        reserved = self._reserved.get(asset, 0)
        fee = self.state.fee_reserve.get(asset, 0)
        now = time.time()
        with self._holds_lock:
            held = sum(h.amount for h in self._holds if h.asset == asset and h.until > now)
        return max(0, balance - reserved - fee - held)

    def bond_ok(self) -> bool:
        """Whether this node may quote as a maker: the bond it is configured with (``[bond]
        amount``) is in the vault, and the ledger counts at least its ``min_bond`` (when the
        ledger asks for one). A maker short of either quotes nothing and co-signs nothing."""
        want = self.config.bond.amount
        if want > 0 and (self.state.bond_vault or 0) < want:
            return False
        min_bond = int(self.state.params.get("min_bond", 0) or 0)
        return not (min_bond > 0 and (self.state.bond_attested or 0) < min_bond)

    def _quotable(self, asset: str) -> int:
        """The exchange's ``liquidity`` hook: :meth:`liquidity`, or 0 while the bond is
        missing (no quote, no order)."""
        return self.liquidity(asset) if self.bond_ok() else 0

    def _on_fill(self, asset: str, amount_out: int, valid_until_ms: int) -> None:
        with self._holds_lock:
            self._holds.append(_Hold(asset, amount_out, valid_until_ms / 1000))

    def _order_guard(self, order: SettlementOrder, role: str) -> None:
        """Before this node co-signs an order. A relay signs what the exchange checked; the
        provider (maker) checks its own leg fits its liquidity and the legs' heights, then
        journals the order (``TradePipeline.expect``) before its signature leaves."""
        if role != "provider":
            log.info("co-signing order %s as a relay", order.order_id.hex()[:16])
            self.crash.hit("relay_signed")
            return
        assert self.pipeline is not None
        if len(order.legs) != 2 or order.legs[1].sender != self.node_id:
            raise TradeRefused(f"order {order.order_id.hex()}: this node sends no second leg")
        if not self.bond_ok():
            raise TradeRefused(f"order {order.order_id.hex()}: this maker's bond is not locked")
        mine = order.legs[1]
        asset = mine.chain if mine.token is None else f"{mine.chain}:{mine.token}"
        now_s = int(time.time())
        for leg in order.legs:
            self._expiry_check(leg.chain, leg.expiry, leg.expiry_time, now_s)
        assert self.chains is not None
        # the swap the taker's engine will propose for this order must pass this node's
        # participant check (the gap between the legs), before the signature binds it
        check_order_as_maker(
            order,
            self.chains.policies,
            self.state.tips,
            maker_node=self.node_id,
            accept_window_s=self.config.timing.accept_window_s,
        )
        with self._holds_lock:
            # the fill's quote hold becomes this order's hold (same amount, until lock_by)
            quote = next(
                (
                    h
                    for h in self._holds
                    if h.order_id is None and h.asset == asset and h.amount >= mine.amount
                ),
                None,
            )
            if quote is not None:
                self._holds.remove(quote)
        free = self.liquidity(asset)
        if mine.amount > free:
            if quote is not None:
                with self._holds_lock:
                    self._holds.append(quote)
            reason = f"order {order.order_id.hex()}: leg of {mine.amount} {asset} > {free} free"
            log.warning("refused to co-sign: %s", reason)
            raise TradeRefused(reason)
        self.pipeline.expect(order)
        with self._holds_lock:
            self._holds.append(
                _Hold(asset, mine.amount, float(order.legs[0].lock_by), order.order_id)
            )
        oid = order.order_id.hex()
        if self.store.find(oid) is None:
            self.store.create(oid, "maker", asset, mine.amount, _asset(order.legs[0]))
            self.store.update(oid, state="ordering", order_id=oid, receive=order.legs[0].amount)
        self.crash.hit("maker_signed")
        self._trade_event(oid, "order_signed", {"order_id": oid, "amount": mine.amount})
        self._rotate_addresses()

    async def _on_direct(self, sender: bytes, payload: bytes) -> bytes | None:
        """A swap message from a counterparty over the P2P link: verified, replay-checked,
        handled by the engine in a thread; the signed reply goes back."""
        body, signer = open_swap(payload, self._guard)
        if signer != sender:
            raise InvalidInput("a swap message signed by another node than the link's")
        assert self.engine is not None
        reply = await self._thread(self.engine.handle, body, signer)
        if isinstance(body, Propose) and isinstance(reply, Error):
            self._proposal_refused(body.terms.swap_id, reply)
        return None if reply is None else sign_swap(self.key, reply).to_bytes()

    def _proposal_refused(self, swap_id: bytes, reply: Error) -> None:
        """The maker refused a proposal for one of its orders: the trade row says so (its
        code and reason), a few times at most (a taker re-proposing junk cannot flood it).
        The refusal ends nothing: the order is committed and co-signed, so the maker still
        locks from it if the taker's leg is locked on the chain (:meth:`_maker_from_order`:
        otherwise a taker could propose junk, lock its leg and file ``leg_not_locked``), and
        the row ends ``failed`` with this reason once ``legs[1].lock_by`` passes unlocked."""
        if reply.code in NOT_YET_CODES:
            return  # not a refusal: the taker asks again
        trade = self.store.by_order(swap_id.hex())
        if trade is None or trade.role != "maker" or trade.state in TERMINAL_TRADE_STATES:
            return  # a proposal for no order of ours: nothing to record (or to start)
        if sum(p.phase == "proposal_refused" for p in trade.phases) >= MAX_REFUSALS_RECORDED:
            return
        reason = self._redact(f"{reply.code}: {reply.message}")[:300]
        self._trade_event(trade.trade_id, "proposal_refused", {"reason": reason})

    # -- the engine's transports (called from engine threads) -----------------------------------

    def _counterparty(self, swap_id: bytes) -> bytes:
        found = self.phases.order(swap_id)
        if found is None:
            raise KofoError(f"swap {swap_id.hex()[:16]}: no order journaled", code="no_route")
        role, order = found
        return order.legs[1].sender if role == "taker" else order.legs[0].sender

    def _request(self, swap_id: bytes, body: SwapBody) -> SwapBody | None:
        assert self.exchange is not None and self._loop is not None
        peer = self._counterparty(swap_id)
        data = sign_swap(self.key, body).to_bytes()
        contact = self._contacts.get(peer) or _contact_of(self.exchange, peer)
        fut: Future[bytes | None] = asyncio.run_coroutine_threadsafe(
            self.exchange.direct(peer, data, contact=contact, timeout=DIRECT_TIMEOUT),  # type: ignore[attr-defined]
            self._loop,
        )
        raw = fut.result(DIRECT_TIMEOUT + 5)
        if raw is None:
            return None
        reply, signer = open_swap(raw, self._guard)
        if signer != peer:
            raise InvalidInput("a swap reply signed by another node than the counterparty")
        return reply

    def _notify(self, swap_id: bytes, body: SwapBody) -> None:
        try:
            self._request(swap_id, body)
        except Exception as exc:  # best effort: the chains carry what matters
            log.info("swap %s: notice not delivered: %s", swap_id.hex()[:8], exc)

    def _on_swap_update(self, u: SwapUpdate) -> None:
        oid = u.swap_id.hex()
        data: dict[str, Any] = {
            "swap_id": oid,
            "role": u.role.value,
            "state": u.state.value,
            "reason": u.reason,
        }
        if u.txid:
            data["txid"] = u.txid
        self.event_log.append("swap", data)
        trade = self.store.by_order(oid)
        if trade is None or trade.state in TERMINAL_TRADE_STATES:
            return
        end = TRADE_STATE_OF_SWAP.get(u.state)
        detail = {k: v for k, v in data.items() if k in ("state", "txid", "reason")}
        if end is not None:
            detail.update(self._amounts(u.swap_id, u.state))
            fields: dict[str, Any] = {"state": end}
            if end == "failed":
                fields["error"] = self._redact(f"swap {u.state.value}: {u.reason}")[:500]
            self._trade_event(trade.trade_id, end, detail, **fields)
            with self._holds_lock:
                self._holds = [h for h in self._holds if h.order_id != u.swap_id]
        else:
            settling = {} if trade.state == "settling" else {"state": "settling"}
            self._trade_event(trade.trade_id, "swap", detail, **settling)

    def _on_swap_depth(self, d: TxDepth) -> None:
        """A lock or spend of a trade's swap went deeper: phase ``confirms`` (the engine
        publishes each count once, capped at the leg's required depth). ``by`` names the
        party that sent it (this node's trade role, or the other one)."""
        trade = self.store.by_order(d.swap_id.hex())
        if trade is None or trade.state in TERMINAL_TRADE_STATES:
            return
        other = "maker" if trade.role == "taker" else "taker"
        detail = {
            "tx": d.kind,
            "by": trade.role if d.mine else other,
            "chain": d.chain,
            "txid": d.txid,
            "confirmations": d.confirmations,
            "required": d.required,
        }
        self._trade_event(trade.trade_id, "confirms", detail)

    def _amounts(self, swap_id: bytes, state: State) -> dict[str, Any]:
        assert self.engine is not None
        try:
            terms = self.engine.terms_of(swap_id)
        except UnknownSwap:
            return {}
        rec = self.engine.journal.get(swap_id)
        from kofo.settlement.swap import Role

        own, counter = (
            (terms.initiator_leg, terms.participant_leg)
            if rec.role is Role.INITIATOR
            else (terms.participant_leg, terms.initiator_leg)
        )
        if state is State.REDEEMED:
            return {"received": counter.amount, "received_asset": _asset_of(counter)}
        if state is State.REFUNDED:
            return {"refunded": own.amount, "refunded_asset": _asset_of(own)}
        return {}

    def _trade_event(
        self, trade_id: str, phase: str, detail: dict[str, Any], **fields: Any
    ) -> None:
        """Record a trade's phase with the row's new ``fields`` (``state=``, ``height=`` ...)
        in one store transaction, THEN publish its event: an event is never visible before
        the state it announces (a client re-reading the trade on the event that ends it finds
        it ended; reading it first, it would wait for an event that never comes). Every trade
        state change that has an event goes through here."""
        detail = self._redact.deep(detail)
        self.store.record(trade_id, phase, detail, **fields)
        self.event_log.append("trade", {"trade_id": trade_id, "phase": phase, **detail})

    # -- background loops -------------------------------------------------------------------------

    async def _every(self, interval: float, step: Callable[[], Awaitable[None]]) -> None:
        while not self._stop.is_set():
            try:
                await step()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s failed; trying again", getattr(step, "__name__", step))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), interval)

    async def _health_loop(self) -> None:
        await self._every(HEALTH_INTERVAL, self.check_ledger)

    async def check_ledger(self) -> None:
        try:
            status = await self._detached(self.ledger.status)
            if not self.state.params:
                raw = await self._detached(self.ledger.abci_query, "/params")
                self.state.params = dict(decode(raw))
                gap = int(self.state.params.get("min_expiry_gap", 0))
                if gap > self.config.timing.leg_expiry_step_s:
                    log.error(
                        "the ledger's min_expiry_gap %d s exceeds [timing] leg_expiry_step_s "
                        "%d s: the ledger will refuse this node's orders (another network's "
                        "timing? see docs/node.md, Timing)",
                        gap,
                        self.config.timing.leg_expiry_step_s,
                    )
                if self.exchange is not None:
                    fee = int(self.state.params.get("protocol_fee_bps", 0))
                    self.exchange.config.protocol_fee_bps = fee
        except LedgerError as exc:
            error = self._redact(str(exc))
            if self.state.ledger_error != error:
                log.warning("ledger unreachable, retrying every %gs: %s", HEALTH_INTERVAL, error)
            self.state.ledger_error = error
            return
        if self.state.ledger is None or self.state.ledger_error:
            log.info(
                "ledger reachable: %s, network %s, height %d",
                public_url(self.config.ledger.url),
                status.network,
                status.height,
            )
        self.state.ledger, self.state.ledger_error = status, ""
        if self.state.registered and (
            self.config.bond.amount > 0 or int(self.state.params.get("min_bond", 0) or 0) > 0
        ):
            await self._read_attested_bond()

    async def _importance_loop(self) -> None:
        await self._every(IMPORTANCE_INTERVAL, self.refresh_importance)

    async def refresh_importance(self) -> None:
        """Read the ledger's importance ranking into :attr:`importance_cache`. The ledger down
        (or a bad answer): the last known values stay, the exchange never waits for it."""
        cache = self.importance_cache
        try:
            raw = await self._detached(self.ledger.abci_query, "/importance", encode(cache.size))
            ranking = [(bytes(node), int(score)) for node, score in decode(raw)]
        except (KofoError, ValueError, TypeError) as exc:  # down, or an answer not a ranking
            if not cache.failures:
                log.info(
                    "ledger importance not read (last known values kept): %s",
                    self._redact(str(exc)),
                )
            cache.failed()
            return
        cache.update(ranking)

    async def _read_attested_bond(self) -> None:
        try:
            raw = await self._detached(self.ledger.abci_query, "/node", encode(self.node_id))
        except LedgerError:
            return
        rec = decode(raw)
        locked = int(rec.get("bond_locked", 0) or 0)
        self.state.bond_attested = max(0, locked - int(rec.get("slash_pending", 0) or 0))

    async def _register_loop(self) -> None:
        """Register once (idempotent); retried every health interval while the ledger is down
        or refuses, never fatal."""
        while not self._stop.is_set() and not self.state.registered:
            try:
                await self._detached(self._register)  # idempotent, journaled: abandonable
                self.state.registered = True
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("registration not done yet (%s); retrying", exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), HEALTH_INTERVAL)

    async def _bond_loop(self) -> None:
        """A maker's bond (``[bond] amount`` > 0): locked in the vault at start by
        ``ensure_bond`` (reads the vault first, journals the signed deposit in ``bond.tx``
        before sending it, re-sends those bytes after a restart: once across restarts),
        retried every health interval until it is there; offers are not quoted before."""
        bond = self.config.bond
        if bond.amount <= 0:
            return
        while not self._stop.is_set():
            try:
                await self._thread(self._ensure_bond)
                self.state.bond_error = ""
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                error = self._redact(f"{type(exc).__name__}: {exc}")[:500]
                if error != self.state.bond_error:
                    log.warning("bond not locked yet (%s); retrying, no quotes meanwhile", error)
                self.state.bond_error = error
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), HEALTH_INTERVAL)

    def _ensure_bond(self) -> None:
        assert self.chains is not None
        bond = self.config.bond
        adapter: Any = self.chains.adapters.get(bond.chain)
        if adapter is None or not hasattr(adapter, "w3"):
            raise KofoError(f"[bond] chain {bond.chain!r} is not a configured Ethereum chain")
        sent = ensure_bond(
            home=self.config.home,
            w3=adapter.w3,
            account=adapter.account,
            vault=bond.vault,
            node_id=self.node_id,
            amount=bond.amount,
            nonces=getattr(adapter, "nonces", None),
        )
        self.state.bond_vault = vault_bond(adapter.w3, bond.vault, self.node_id)
        if sent is not None:
            self.event_log.append(
                "node", {"event": "bond_locked", "amount": bond.amount, "tx": sent}
            )
        log.info("bond: the vault holds %d wei under this node", self.state.bond_vault)

    def _register(self) -> None:
        assert self.chains is not None
        bits = self._paillier_bits
        if bits is None:
            allowed = decode(self.ledger.abci_query("/params")).get("paillier_bits") or [2048]
            bits = int(allowed[0])
        pub, priv = load_or_create_paillier(
            self.config.home,
            self._passphrase,
            bits=bits,
            file_key=self.wallet.file_key("paillier"),
        )
        self._paillier = priv
        addresses = self._funding_addresses()
        height = ensure_registered(
            home=self.config.home,
            ledger=self.ledger,
            node_key=self.key,
            paillier_pub=pub,
            paillier_priv=priv,
            addresses=addresses,
            timeout=max(30.0, self.config.ledger.timeout),
        )
        self.event_log.append("ledger", {"event": "registered", "height": height})

    async def _tick_loop(self) -> None:
        await self._every(TICK_INTERVAL, self._tick)

    async def _tick(self) -> None:
        def step() -> None:
            with self._ticking:
                if not self._stop.is_set():
                    assert self.engine is not None
                    self.engine.tick()

        await asyncio.to_thread(step)

    async def _refresh_loop(self) -> None:
        await self._every(REFRESH_INTERVAL, self._refresh_chains)

    async def _refresh_chains(self) -> None:
        await self._detached(self._refresh_sync)

    def _refresh_sync(self) -> None:
        assert self.chains is not None and self.engine is not None
        reserved: dict[str, int] = {}
        for asset in self.chains.assets.values():
            adapter = self.chains.adapters[asset.chain]
            try:
                if asset.token is None:
                    self.state.tips[asset.chain] = adapter.expiry_now()
                    self.state.heights[asset.chain] = adapter.tip().height
                self.state.balances[asset.asset] = adapter.balance(asset.token)
                self.state.chain_errors.pop(asset.chain, None)
            except Exception as exc:
                self.state.chain_errors[asset.chain] = self._redact(f"{type(exc).__name__}: {exc}")
                continue
            reserved[asset.asset] = self.engine.reserved(asset.chain, asset.token)
            if asset.token is None:
                spends = self.engine._open_spends(asset.chain)
                self.state.fee_reserve[asset.asset] = spends * adapter.spend_fee_reserve()
        self._reserved = reserved
        now = time.time()
        with self._holds_lock:
            self._holds = [h for h in self._holds if h.until > now]

    async def _offer_loop(self) -> None:
        """Re-announce own offers before their ttl lapses (at half of it)."""

        async def step() -> None:
            now = now_ms()
            for oid, own in list(self._own_offers.items()):
                left = own.signed.offer.expiry_ms - now
                if left < own.spec.ttl * 500:
                    self._publish(own.spec, offer_id=oid)

        await self._every(1.0, step)

    async def _watch_loop(self) -> None:
        await self._every(WATCH_INTERVAL, self._watch)

    async def _watch(self) -> None:
        """The maker's signed orders until committed (or their first lock_by passes: the
        hold is released); the taker's legs against their lock deadlines (evidence)."""
        assert self.pipeline is not None
        for trade in self.store.unfinished():
            if trade.order_id is None:
                continue
            oid = bytes.fromhex(trade.order_id)
            found = self.phases.order(oid)
            if found is None:
                continue
            role, order = found
            committed = self.phases.phase(oid, "committed")
            if role == "maker" and committed is None:
                await self._watch_signed(trade, order)
            elif role == "maker" and trade.state == "ordering" and committed is not None:
                # seen committed by the accept policy (a proposal came before this watcher
                # read the ledger) and that proposal refused, so no swap moved the row on:
                # it stayed "ordering" for ever and the maker never locked from the order
                height = int(str(committed.get("height", 0)))
                self._trade_event(
                    trade.trade_id,
                    "committed",
                    {"height": height},
                    state="committed",
                    height=height,
                )
                await self._maker_from_order(self.store.get(trade.trade_id), order)
            elif role == "maker" and trade.state == "committed":
                await self._maker_from_order(trade, order)
            elif role == "taker" and trade.state in ("settling", "committed"):
                await self._check_lock_deadline(trade, order)

    async def _watch_signed(self, trade: TradeView, order: SettlementOrder) -> None:
        assert self.pipeline is not None
        try:
            com = await self._thread(self.pipeline.watch_commit, order.order_id)
        except TradeRefused as exc:
            if time.time() > order.legs[0].lock_by:
                with self._holds_lock:
                    self._holds = [h for h in self._holds if h.order_id != order.order_id]
                log.info("order %s never committed: hold released", order.order_id.hex()[:16])
                error = self._redact(str(exc))[:500]
                self._trade_event(
                    trade.trade_id,
                    "failed",
                    {"reason": "not committed"},
                    state="failed",
                    error=error,
                )
            return
        except LedgerError:
            return
        self._trade_event(
            trade.trade_id,
            "committed",
            {"height": com.height},
            state="committed",
            height=com.height,
        )
        self.crash.hit("maker_committed")

    async def _maker_from_order(self, trade: TradeView, order: SettlementOrder) -> None:
        """A committed order with no swap in the engine yet (no proposal came): once the
        taker's leg is locked on the chain, the maker locks its own from the committed order
        (``TradePipeline.start_as_maker``), so a taker that locks and never proposes cannot
        get it slashed. Past ``legs[1].lock_by`` with nothing started, the trade has failed
        (the taker never locked): its hold is released."""
        assert self.pipeline is not None
        try:
            terms = await self._thread(self.pipeline.start_as_maker, order.order_id)
        except TermsRefused as exc:
            # some refusals pass (a rate limit, funds in flight): again next time, until the
            # maker's lock deadline has gone by
            log.warning("order %s: not started: %s", order.order_id.hex()[:16], exc)
            if time.time() > order.legs[1].lock_by:
                self._maker_lapsed(trade, order, f"{exc.code}: {exc}")
            return
        except KofoError as exc:  # a chain read failed: look again next time
            log.info("order %s: %s", order.order_id.hex()[:16], self._redact(str(exc)))
            return
        if terms is not None:
            self._trade_event(
                trade.trade_id, "started_from_order", {"order_id": order.order_id.hex()}
            )
        elif time.time() > order.legs[1].lock_by and self._unlocked(order.order_id):
            reason = "the taker's leg was not locked by legs[1].lock_by"
            # the row as it is now: ``trade`` may have been read before a proposal came and
            # was refused (the watcher's list is read before ``start_as_maker``'s chain reads)
            now = self.store.get(trade.trade_id)
            refused = [p for p in now.phases if p.phase == "proposal_refused"]
            if refused:
                reason += f" (its proposal was refused: {refused[-1].detail.get('reason', '')})"
            self._maker_lapsed(trade, order, reason)

    def _maker_lapsed(self, trade: TradeView, order: SettlementOrder, reason: str) -> None:
        with self._holds_lock:
            self._holds = [h for h in self._holds if h.order_id != order.order_id]
        if self.store.get(trade.trade_id).state in TERMINAL_TRADE_STATES:
            return
        reason = self._redact(reason)[:500]
        log.info("order %s: nothing started: %s", order.order_id.hex()[:16], reason)
        self._trade_event(
            trade.trade_id, "failed", {"reason": reason}, state="failed", error=reason
        )

    async def _check_lock_deadline(self, trade: TradeView, order: SettlementOrder) -> None:
        """Item 9: the maker's leg not attested locked by its ``lock_by`` + the ledger's
        attest grace -> ``file_evidence(leg_not_locked)``, once (journaled before the send)."""
        if any(p.phase in ("evidence_committed", "evidence_refused") for p in trade.phases):
            return  # filed once
        grace = int(self.state.params.get("attest_grace", 1_800))
        leg = order.legs[1]
        if time.time() < leg.lock_by + grace:
            return
        tx = self.store.raw(trade.trade_id, "evidence_tx")
        if tx is None:
            # The ledger judges by its block time, not this node's clock: filed in the second of
            # lock_by + grace (or with the ledger's clock behind ours) the evidence was refused
            # as early, once and for all. File once the ledger's latest block is past it.
            try:
                status = await self._detached(self.ledger.status)
            except LedgerError:
                return
            if not evidence_due(leg.lock_by, grace, status.block_time):
                return
        if tx is None:
            rec = await self._detached(self._ledger_order_raw, order.order_id)
            outcome = str(rec["legs"][1].get("outcome", "")) if rec else ""
            if outcome in ("locked", "redeemed", "refunded"):
                return
            if rec and rec.get("status") == "committed" and "missed_at" not in rec["legs"][1]:
                # the validators have not yet looked at the order since the deadline (a flood
                # of open orders slows their window): the ledger would refuse it as early
                return
            tx = sign_tx(self.key, FileEvidence(EvidenceKind.LEG_NOT_LOCKED, order.order_id, 1))
            self._trade_event(
                trade.trade_id, "evidence", {"kind": "leg_not_locked", "leg": 1}, evidence_tx=tx
            )
        try:
            # journaled before, looked up by hash first: a stop may abandon it
            included = await self._detached(
                functools.partial(self.ledger.commit, timeout=30.0), bytes(tx)
            )
            self._trade_event(trade.trade_id, "evidence_committed", {"height": included.height})
        except LedgerRefused as exc:
            log.info("evidence for %s refused: %s", order.order_id.hex()[:16], exc.log)
            self._trade_event(trade.trade_id, "evidence_refused", {"reason": exc.log[:200]})
        except LedgerError:
            return

    # -- the maker's offers -----------------------------------------------------------------------

    def _publish(self, spec: OfferSpec, offer_id: bytes | None = None) -> SignedOffer:
        assert self.exchange is not None and self.chains is not None
        buy = self.chains.asset(spec.buy).asset
        sell = self.chains.asset(spec.sell).asset
        so = self.exchange.publish_offer(
            buy,
            sell,
            (spec.price_num, spec.price_den),
            min_in=spec.min_in,
            max_in=spec.max_in,
            partial=spec.partial,
            fee=spec.fee,
            ttl_ms=spec.ttl * 1000,
            offer_id=offer_id,
        )
        self._own_offers[so.offer.offer_id] = _OwnOffer(spec, so)
        return so

    # -- the taker --------------------------------------------------------------------------------

    async def _run_trade(self, trade_id: str, request: TradeRequest) -> None:
        try:
            signed = await asyncio.wait_for(self._take(trade_id, request), request.deadline_s)
            # Past the signature the deadline no longer applies: the order may be on the
            # ledger, so its submit and the proposal (re-sent while the maker is down or
            # restarting, within the swap's accept window) run to their own ends. Cancelling
            # them at the deadline left a committed order's proposal unsent: the maker waited
            # for the taker's lock, the taker for the accept, and the swap aborted.
            await self._commit_and_start(trade_id, *signed)
        except asyncio.CancelledError:
            view = self.store.find(trade_id)
            if view is not None and view.state in ("quoting", "ordering"):
                self._trade_event(trade_id, "cancelled", {}, state="cancelled")
            raise
        except TimeoutError:
            self._fail(trade_id, f"no commit within the deadline of {request.deadline_s}s")
        except KofoError as exc:
            self._fail(trade_id, f"{exc.code}: {exc}")
        except Exception as exc:
            # the type, place and redacted message: the message may quote an endpoint URL
            where = traceback.extract_tb(exc.__traceback__)[-1:]
            place = f" at {where[0].filename}:{where[0].lineno}" if where else ""
            log.error(
                "trade %s failed%s: %s",
                trade_id,
                place,
                self._redact(f"{type(exc).__name__}: {exc}"),
            )
            self._fail(trade_id, f"{type(exc).__name__}: {exc}")
        finally:
            self._trade_tasks.pop(trade_id, None)

    def _fail(self, trade_id: str, reason: str) -> None:
        reason = self._redact(reason)
        view = self.store.find(trade_id)
        if view is None or view.state in TERMINAL_TRADE_STATES:
            return
        if view.state in ("submitted", "committed", "settling"):
            # past the submit: the order may be on the ledger; the swap (or the restart's
            # recovery) decides the end, never this error
            log.warning("trade %s: %s (kept: it may be committed)", trade_id, reason)
            self.store.update(trade_id, error=reason[:500])
            return
        self._trade_event(
            trade_id, "failed", {"reason": reason[:500]}, state="failed", error=reason[:500]
        )

    async def _take(self, trade_id: str, request: TradeRequest) -> tuple[bytes, bytes]:
        """Quotes, the route's co-signature and the signed commit tx: what ``deadline_s``
        bounds. Returns the tx and the order id for :meth:`_commit_and_start`."""
        assert self.exchange is not None and self.pipeline is not None and self.engine is not None
        if not self.state.registered:
            raise Unavailable("this node is not registered on the ledger yet")
        quotes, claim_id = await self._quotes(request)
        self._trade_event(
            trade_id,
            "quotes",
            {"count": len(quotes), "best": quotes[0].delivered if quotes else None},
        )
        if not quotes:
            raise TradeRefused(
                f"no quote delivers at least {request.min_receive} {request.buy} "
                f"for {request.amount} {request.sell}"
            )
        best = quotes[0]
        hops = len(best.fees) + 1
        self._trade_event(
            trade_id,
            "ordering",
            {"receive": best.delivered, "hops": hops},
            state="ordering",
            receive=best.delivered,
            hops=hops,
        )
        preimage = os.urandom(32)
        payment_hash = hashlib.sha256(preimage).digest()
        # the secret is journaled before its hash leaves this node
        self.engine.journal.store_preimage(claim_id, preimage)
        self._rotate_addresses()
        commit: CommitOrder = await self.exchange.settle(claim_id, best, payment_hash)
        order = commit.order
        oid = order.order_id
        maker = order.legs[1].sender
        contact = _contact_of(self.exchange, maker)
        if contact:
            self._contacts[maker] = contact
            self.store.save_contact(maker, contact)
        self.pipeline.expect(order)
        self.engine.journal.store_preimage(oid, preimage)
        tx = sign_tx(self.key, commit)
        self._trade_event(
            trade_id,
            "submitted",
            {"order_id": oid.hex(), "tx": tx_hash(tx)},
            state="submitted",
            order_id=oid.hex(),
            commit_tx=tx,
        )
        self.crash.hit("trade_signed")
        return tx, oid

    async def _commit_and_start(self, trade_id: str, tx: bytes, oid: bytes) -> None:
        assert self.pipeline is not None
        while True:
            try:
                height = await self._thread(self.pipeline.submit, tx)
                break
            except LedgerError as exc:  # unreachable or slow: wait it out, never re-sign
                if isinstance(exc, LedgerRefused):
                    raise
                log.warning("trade %s: ledger not reached (%s); retrying", trade_id, exc)
                if self._stop.is_set():
                    return  # the restart's recovery submits the same bytes again
                await asyncio.sleep(HEALTH_INTERVAL)
        self._trade_event(
            trade_id,
            "committed",
            {"order_id": oid.hex(), "height": height},
            state="committed",
            height=height,
        )
        self.crash.hit("trade_committed")
        retry_s = propose_retry_s(self.config.timing.accept_window_s)
        deadline = time.monotonic() + retry_s
        waited = False
        interval = PROPOSE_RETRY_INTERVAL
        while True:
            try:
                await self._thread(self.pipeline.start_as_taker, oid)
                if waited:
                    self.store.update(trade_id, error="")
                    waited = False
            except (TradeRefused, TermsRefused) as exc:
                if self._unlocked(oid):
                    # committed, but the swap cannot start (or the maker refused it): nothing
                    # of ours is locked, so the trade ends here; the order lapses on the ledger
                    # (a refusal the swap took as ``rejected`` has ended the trade already)
                    if self.store.get(trade_id).state not in TERMINAL_TRADE_STATES:
                        reason = self._redact(f"{exc.code}: {exc}")[:500]
                        self._trade_event(
                            trade_id, "failed", {"reason": reason}, state="failed", error=reason
                        )
                    return
                raise
            except LedgerError as exc:
                # the committed order could not be read back (the ledger's only call, before
                # any side effect): wait the outage out, as for the submit; it does not count
                # against the proposal's retry time
                if isinstance(exc, LedgerRefused):
                    raise
                waited = True
                error = self._redact(f"waiting for the ledger: {exc}")[:500]
                log.warning("trade %s: ledger not reached; retrying: %s", trade_id, error)
                self.store.update(trade_id, error=error)
                if self._stop.is_set():
                    return  # the restart's recovery starts the swap
                await asyncio.sleep(HEALTH_INTERVAL)
                deadline = time.monotonic() + retry_s
                continue
            except Exception as exc:
                # the maker not reached (down, restarting), no answer in time (a transport
                # timeout of any kind): ask again while the swap waits for the accept
                if time.monotonic() > deadline or self._stop.is_set():
                    raise
                log.info(
                    "trade %s: proposal not delivered (%s); again in %gs",
                    trade_id,
                    self._redact(f"{type(exc).__name__}: {exc}"),
                    interval,
                )
                await asyncio.sleep(interval)
                interval = min(interval * 2, PROPOSE_RETRY_MAX_INTERVAL)
                continue
            if not self._proposed(oid) or time.monotonic() > deadline or self._stop.is_set():
                break
            await asyncio.sleep(interval)  # no answer yet: propose again
            interval = min(interval * 2, PROPOSE_RETRY_MAX_INTERVAL)
        view = self.store.get(trade_id)
        if view.state not in TERMINAL_TRADE_STATES:
            self._trade_event(trade_id, "swap_started", {"order_id": oid.hex()}, state="settling")
        self.crash.hit("trade_swap_started")

    def _proposed(self, oid: bytes) -> bool:
        """The swap is proposed and the maker's accept not in (it may not have got it)."""
        assert self.engine is not None
        try:
            return self.engine.journal.get(oid).state is State.PROPOSED
        except UnknownSwap:
            return False

    def _unlocked(self, oid: bytes) -> bool:
        assert self.engine is not None
        try:
            rec = self.engine.journal.get(oid)
        except UnknownSwap:
            return True
        # rejected: the maker refused the proposal, nothing of ours was ever locked
        return rec.state in (State.PROPOSED, State.ABORTED, State.REJECTED)

    async def _quotes(self, request: TradeRequest) -> tuple[list[Quote], bytes]:
        assert self.exchange is not None and self.chains is not None
        sell = self.chains.asset(request.sell).asset
        buy = self.chains.asset(request.buy).asset
        if request.amount <= 0:
            raise InvalidInput(f"amount must be > 0 base units, got {request.amount}")
        limit = (request.min_receive, request.amount) if request.min_receive > 0 else (0, 1)
        claim_id, quotes = await self.exchange.request_quotes(
            sell, buy, request.amount, limit=limit, window_s=request.window_s
        )
        ok = [q for q in quotes if q.delivered >= request.min_receive]
        for q in quotes:
            if q.delivered < request.min_receive:
                log.info("quote of %d %s below min_receive: dropped", q.delivered, buy)
        return ok, claim_id

    # -- restart ----------------------------------------------------------------------------------

    def _recover(self) -> None:
        """After a restart: a taker's trade submitted but not committed is re-submitted (the
        same bytes: ``commit`` looks the hash up first), one committed without a swap is
        started; a maker's signed orders are watched again (by :meth:`_watch`)."""
        for trade in self.store.unfinished():
            if trade.role != "taker":
                continue
            tx = self.store.raw(trade.trade_id, "commit_tx")
            if trade.order_id is None or tx is None:
                self._fail(trade.trade_id, "interrupted before the order was signed")
                continue
            oid = bytes.fromhex(trade.order_id)
            if self.phases.phase(oid, "swap_started") is not None and not self._proposed(oid):
                continue  # the engine drives it (resume); a proposal not accepted is re-sent
            log.info("trade %s: resuming after a restart", trade.trade_id)
            self._trade_tasks[trade.trade_id] = asyncio.ensure_future(
                self._resume_trade(trade.trade_id, bytes(tx), oid)
            )

    async def _resume_trade(self, trade_id: str, tx: bytes, oid: bytes) -> None:
        try:
            await self._commit_and_start(trade_id, tx, oid)
        except asyncio.CancelledError:
            raise
        except KofoError as exc:
            view = self.store.get(trade_id)
            if view.state == "submitted":
                error = self._redact(str(exc))[:500]
                self._trade_event(
                    trade_id, "failed", {"reason": error}, state="failed", error=error
                )
            else:
                self._fail(trade_id, f"{exc.code}: {exc}")
        finally:
            self._trade_tasks.pop(trade_id, None)

    # -- NodeService ------------------------------------------------------------------------------

    def _funding_addresses(self) -> dict[str, str]:
        """The wallet's address per chain (the one funds are sent to), not the fresh HTLC key
        the exchange hands out per order (a public key on Bitcoin-like chains)."""
        assert self.chains is not None
        if not self._funding:
            for name, adapter in self.chains.adapters.items():
                cfg = self.config.chains.get(name)
                if isinstance(cfg, BitcoinChainConfig):
                    hd = self.wallet.bitcoin(cfg.chain, cfg.network, home=self.config.home)
                    self._funding[name] = hd.address()
                else:
                    self._funding[name] = adapter.address()
        return dict(self._funding)

    async def info(self) -> NodeInfo:
        assert self.chains is not None
        chains = tuple(
            ChainView(
                name,
                self.state.heights.get(name),  # a block height, not the chain's expiry clock
                self.state.chain_errors.get(name, ""),
            )
            for name in self.chains.adapters
        )
        ledger = self.state.ledger
        return NodeInfo(
            name=self.config.name,
            node_id=self.node_id.hex(),
            version=__version__,
            p2p=f"{self.config.p2p_listen.host}:{self.exchange.port if self.exchange else 0}",
            ledger_url=public_url(self.config.ledger.url),
            ledger_height=None if ledger is None else ledger.height,
            ledger_error=self.state.ledger_error,
            chains=chains,
            peers=0 if self.exchange is None else len(self.exchange.links),
            started_at=self._started_at,
            addresses=self._funding_addresses(),
            bond=BondView(
                configured=self.config.bond.amount,
                vault=self.state.bond_vault,
                attested=self.state.bond_attested,
                min_bond=int(self.state.params.get("min_bond", 0) or 0),
                quoting=self.bond_ok(),
                error=self.state.bond_error,
            ),
        )

    async def balances(self) -> list[BalanceView]:
        assert self.chains is not None
        await self._refresh_chains()
        out = []
        for asset in self.chains.assets.values():
            free = self.liquidity(asset.asset)
            total = self.state.balances.get(asset.asset, 0)
            out.append(
                BalanceView(asset.asset, asset.symbol, asset.decimals, free, max(0, total - free))
            )
        return out

    def _offer_view(self, so: SignedOffer, spec: OfferSpec | None = None) -> OfferView:
        o = so.offer
        spec = spec or OfferSpec(
            o.buy, o.sell, o.price_num, o.price_den, o.min_in, o.max_in, o.fee, o.partial
        )
        return OfferView(
            o.offer_id.hex(), so.maker.hex(), spec, o.expiry_ms // 1000, so.maker == self.node_id
        )

    async def offers(self, *, own_only: bool = False) -> list[OfferView]:
        assert self.exchange is not None
        own = [self._offer_view(o.signed, o.spec) for o in self._own_offers.values()]
        if own_only:
            return own
        others = [
            self._offer_view(so)
            for so in self.exchange.book.all(now_ms())
            if so.maker != self.node_id and so.offer.max_in > 0
        ]
        return own + others

    async def add_offer(self, spec: OfferSpec) -> OfferView:
        assert self.chains is not None
        try:
            self.chains.asset(spec.buy)
            self.chains.asset(spec.sell)
        except KofoError as exc:
            raise InvalidInput(str(exc)) from None
        if spec.buy == spec.sell or spec.min_in > spec.max_in or spec.min_in <= 0:
            raise InvalidInput("an offer needs buy != sell and 0 < min_in <= max_in")
        if spec.price_num <= 0 or spec.price_den <= 0 or spec.fee < 0 or spec.ttl <= 0:
            raise InvalidInput("price_num, price_den and ttl must be > 0, fee >= 0")
        so = self._publish(spec)
        saved = self._saved_offers()
        saved[so.offer.offer_id] = spec
        self._save_offers(saved)
        self.event_log.append("offer", {"event": "added", "offer_id": so.offer.offer_id.hex()})
        return self._offer_view(so, spec)

    def _config_offer_id(self, index: int) -> bytes:
        """The id of ``[[offers]]`` number ``index``: the same at every start, so the restarted
        node's announcement supersedes (a newer ``seq``) the one peers hold from before."""
        return hashlib.sha256(b"kofo/config-offer/v1" + self.node_id + index.to_bytes(4)).digest()[
            :16
        ]

    def _saved_offers(self) -> dict[bytes, OfferSpec]:
        path = self.config.home / OFFERS_FILE
        if not path.exists():
            return {}
        try:
            data = json.loads(read_private_file(path, max_size=1 << 20))
            return {bytes.fromhex(oid): OfferSpec(**spec) for oid, spec in data.items()}
        except (ValueError, TypeError, AttributeError) as exc:
            raise ConfigError(f"{path}: not a KOFO offers file ({exc})") from None

    def _save_offers(self, offers: dict[bytes, OfferSpec]) -> None:
        data = {
            oid.hex(): {f.name: getattr(spec, f.name) for f in fields(spec)}
            for oid, spec in offers.items()
        }
        write_private_file(
            self.config.home / OFFERS_FILE, json.dumps(data, sort_keys=True).encode()
        )

    async def withdraw_offer(self, offer_id: str) -> None:
        assert self.exchange is not None
        try:
            oid = bytes.fromhex(offer_id)
        except ValueError:
            raise InvalidInput(f"offer id {offer_id!r} is not hex") from None
        if oid not in self._own_offers:
            raise NotFound(f"no own offer {offer_id}")
        self._own_offers.pop(oid)
        saved = self._saved_offers()
        if saved.pop(oid, None) is not None:
            self._save_offers(saved)
        self.exchange.withdraw_offer(oid)
        self.event_log.append("offer", {"event": "withdrawn", "offer_id": offer_id})

    async def book(self, buy: str, sell: str) -> BookView:
        assert self.exchange is not None and self.chains is not None
        b, s = self.chains.asset(buy).asset, self.chains.asset(sell).asset
        offers = [
            self._offer_view(so)
            for so in self.exchange.book.pair(b, s, now_ms())
            if so.offer.max_in > 0
        ]
        offers.sort(key=lambda v: v.spec.price_num / v.spec.price_den, reverse=True)
        return BookView(b, s, tuple(offers))

    async def quotes(self, request: TradeRequest) -> list[QuoteView]:
        quotes, _ = await self._quotes(request)
        return [
            QuoteView(
                q.fulfil_id.hex(),
                request.sell,
                q.amount_in,
                request.buy,
                q.delivered,
                len(q.fees) + 1,
                q.received_ms + (self.exchange.config.quote_valid_ms if self.exchange else 0),
            )
            for q in quotes
        ]

    async def create_trade(self, request: TradeRequest) -> TradeView:
        assert self.chains is not None
        try:
            sell = self.chains.asset(request.sell).asset
            buy = self.chains.asset(request.buy).asset
        except KofoError as exc:
            raise InvalidInput(str(exc)) from None
        if request.amount <= 0 or request.min_receive < 0 or request.deadline_s <= 0:
            raise InvalidInput("amount and deadline_s must be > 0, min_receive >= 0")
        if request.min_receive == 0:
            # the trade takes the best quote: without a floor, a maker alone on the pair (or
            # its sybils) sets the price, down to 1 base unit for everything sold
            raise InvalidInput(
                "min_receive: a trade needs the least it accepts to receive (> 0); "
                "POST /v1/quotes shows what the network offers"
            )
        trade_id = os.urandom(16).hex()
        view = self.store.create(
            trade_id, "taker", sell, request.amount, buy, min_receive=request.min_receive
        )
        self._trade_event(trade_id, "claim_sent", {"sell": sell, "amount": request.amount})
        self._trade_tasks[trade_id] = asyncio.ensure_future(self._run_trade(trade_id, request))
        return view

    async def trades(self, *, limit: int = 50, before: float | None = None) -> list[TradeView]:
        return self.store.recent(limit=limit, before=before)

    async def trade(self, trade_id: str) -> TradeView:
        view = self.store.find(trade_id)
        if view is None:
            raise NotFound(f"no trade {trade_id}")
        return view

    async def cancel_trade(self, trade_id: str) -> TradeView:
        view = await self.trade(trade_id)
        if view.state not in ("quoting", "ordering"):
            raise Conflict(f"trade {trade_id} is {view.state}: only before the submit")
        task = self._trade_tasks.get(trade_id)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        view = self.store.get(trade_id)
        if view.state not in TERMINAL_TRADE_STATES:
            self._trade_event(trade_id, "cancelled", {}, state="cancelled")
        return self.store.get(trade_id)

    def _chain_legs(self, rec: StoredSwap) -> list[dict[str, Any]]:
        """Each leg's HTLC as its chain shows it now (lock and spend txids, state,
        confirmations), the initiator's first: the journal alone does not say that the
        counterparty redeemed our leg. Legs both spent, or a finished swap with no leg still
        locked, are read once and remembered; a chain that does not answer leaves its leg to
        the journal's history."""
        known = self._settled_legs.get(rec.swap_id)
        if known is not None:
            return known
        assert self.engine is not None and self.chains is not None
        out: list[dict[str, Any]] = []
        for leg, ours in (
            (rec.terms.initiator_leg, rec.role is Role.INITIATOR),
            (rec.terms.participant_leg, rec.role is Role.PARTICIPANT),
        ):
            htlc = leg.htlc(rec.terms.payment_hash)
            got: dict[str, Any] = {"lock_txid": "", "spend_txid": "", "state": "", "confs": None}
            try:
                engine = self.engine
                ref = engine._own_ref(rec, htlc) if ours else engine._counter_ref(rec, htlc)
                if ref is not None:
                    st = self.chains.adapters[htlc.chain].status(ref)
                    got = {
                        "lock_txid": ref.lock_txid,
                        "spend_txid": st.spend_txid or "",
                        "state": st.state.value,
                        "confs": st.confirmations,
                    }
            except Exception as exc:
                log.debug("swap %s: leg on %s not read: %s", rec.swap_id.hex()[:8], htlc.chain, exc)
            out.append(got)
        if all(x["state"] in ("redeemed", "refunded") for x in out) or (
            rec.state in TERMINAL and not any(x["state"] == "locked" for x in out)
        ):  # nothing on these legs can move any more: a swap list reads no chain for it
            self._settled_legs[rec.swap_id] = out
        return out

    def _swap_view(self, rec: StoredSwap) -> SwapView:
        assert self.engine is not None
        legs = []
        chain = self._chain_legs(rec)
        for leg, seen in zip(
            (rec.terms.initiator_leg, rec.terms.participant_leg), chain, strict=True
        ):
            legs.append(
                SwapLegView(
                    chain=leg.chain,
                    token=leg.token,
                    amount=leg.amount,
                    sender=leg.sender,
                    recipient=leg.recipient,
                    expiry={
                        "unit": "height" if isinstance(leg.expiry, BlockHeight) else "unix",
                        "value": leg.expiry.value,
                    },
                    lock_txid=seen["lock_txid"],
                    spend_txid=seen["spend_txid"],
                    confirmations=seen["confs"],
                    state=seen["state"],
                )
            )
        events = tuple(
            SwapEventView(
                e.state.value if hasattr(e.state, "value") else str(e.state),
                self._redact(str(e.payload.get("reason", ""))),  # may quote a peer
                str((e.payload.get("txids") or [""])[-1]),
                float(e.at),
            )
            for e in self.engine.journal.events(rec.swap_id)
        )
        return SwapView(
            rec.swap_id.hex(), rec.role.value, rec.state.value, tuple(legs), events, rec.updated_at
        )

    async def swaps(self, *, limit: int = 50, before: float | None = None) -> list[SwapView]:
        assert self.engine is not None
        recs = [r for r in self.engine.journal.swaps() if before is None or r.updated_at < before]
        recs.sort(key=lambda r: r.updated_at, reverse=True)
        # the legs are read from their chains: off the event loop
        return await asyncio.to_thread(lambda: [self._swap_view(r) for r in recs[: max(1, limit)]])

    async def swap(self, swap_id: str) -> SwapView:
        assert self.engine is not None
        try:
            rec = self.engine.journal.get(bytes.fromhex(swap_id))
        except (UnknownSwap, ValueError):
            raise NotFound(f"no swap {swap_id}") from None
        return await asyncio.to_thread(self._swap_view, rec)

    def _ledger_order_raw(self, order_id: bytes) -> dict[str, Any] | None:
        try:
            return dict(decode(self.ledger.abci_query("/order", encode(order_id))))
        except LedgerRefused:
            return None

    def _ledger_view(self, order_id: bytes, rec: dict[str, Any]) -> LedgerOrderView:
        order = rec.get("order", {})
        legs = tuple(_jsonable(x) for x in order.get("legs", []))
        outcomes = {
            str(i): str(x.get("outcome", ""))
            for i, x in enumerate(rec.get("legs", []))
            if isinstance(x, dict) and x.get("outcome")
        }
        return LedgerOrderView(
            order_id.hex(), str(rec.get("status", "")), int(rec.get("height", 0)), legs, outcomes
        )

    async def ledger_orders(self, *, limit: int = 50) -> list[LedgerOrderView]:
        ids = [bytes.fromhex(t.order_id) for t in self.store.recent(limit=limit) if t.order_id]
        out = []
        for oid in ids:
            rec = await self._ledger_call(self._ledger_order_raw, oid)
            if rec is not None:
                out.append(self._ledger_view(oid, rec))
        return out

    async def ledger_order(self, order_id: str) -> LedgerOrderView:
        try:
            oid = bytes.fromhex(order_id)
        except ValueError:
            raise InvalidInput(f"order id {order_id!r} is not hex") from None
        rec = await self._ledger_call(self._ledger_order_raw, oid)
        if rec is None:
            raise NotFound(f"order {order_id} is not on the ledger")
        return self._ledger_view(oid, rec)

    async def _ledger_call(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            return await self._detached(fn, *args)
        except LedgerError as exc:
            if isinstance(exc, LedgerRefused):
                raise
            raise Unavailable(f"the ledger is unreachable: {self._redact(str(exc))}") from None

    async def fee_shares(self) -> list[FeeShareView]:
        """This node's fee balance per asset, decrypted with its Paillier key (the ledger
        keeps one encrypted balance per asset; ``order_id`` is empty: shares add up)."""
        assert self.chains is not None
        if self._paillier is None:
            raise Unavailable("this node is not registered yet")
        out = []
        for asset in self.chains.assets:
            arg = encode({"node": self.node_id, "asset": asset})
            try:
                raw = await self._ledger_call(self.ledger.abci_query, "/balance", arg)
            except LedgerRefused:
                continue
            rec = decode(raw)
            earned = privacy.decrypt(self._paillier, rec["balance"]) if rec.get("balance") else 0
            if earned:
                out.append(FeeShareView("", "fees", asset, earned))
        return out

    async def withdraw_fees(self, asset: str, payout_address: str) -> int:
        """Withdraw this node's whole fee balance in ``asset`` (a ``withdraw_fees`` tx: the
        balance revealed with its randomness, a fresh zero seed and its proof, the next
        ``seq``); returns the amount. The ledger applies a given ``seq`` once, so a retry of
        the same withdrawal is refused rather than paid twice."""
        if self._paillier is None:
            raise Unavailable("this node is not registered yet")
        if not payout_address or len(payout_address) > 256:
            raise InvalidInput("payout_address must be 1..256 characters")
        arg = encode({"node": self.node_id, "asset": asset})
        rec = decode(await self._ledger_call(self.ledger.abci_query, "/balance", arg))
        ct = rec.get("balance")
        amount, randomness = privacy.reveal(self._paillier, ct) if ct else (0, b"")
        if amount <= 0:
            raise Conflict(f"no fee balance in {asset!r} to withdraw")
        seq = self._withdrawals().get(asset, 0)
        for _ in range(2):
            seed, proof = privacy.zero_seed(
                self._paillier.public_key, privacy.withdraw_context(self.node_id, asset, seq)
            )
            body = WithdrawFees(asset, amount, randomness, seed, payout_address, seq, proof)
            try:
                tx = sign_tx(self.key, body)
                included = await self._ledger_call(lambda tx=tx: self.ledger.commit(tx, timeout=30))
            except LedgerRefused as exc:
                found = re.search(r"seq must be (\d+)", exc.log)
                if found is None or int(found.group(1)) == seq:
                    raise
                seq = int(found.group(1))  # our count was behind the ledger's: use its
                continue
            self._save_withdrawal(asset, seq + 1)
            self.event_log.append(
                "ledger",
                {
                    "event": "fees_withdrawn",
                    "asset": asset,
                    "amount": amount,
                    "height": included.height,
                },
            )
            return amount
        raise Conflict(f"withdrawal of {asset!r} not accepted at seq {seq}")

    def _withdrawals(self) -> dict[str, int]:
        path = self.config.home / WITHDRAWALS_FILE
        if not path.exists():
            return {}
        data = json.loads(read_private_file(path, max_size=1 << 20))
        return {str(k): int(v) for k, v in data.items()}

    def _save_withdrawal(self, asset: str, next_seq: int) -> None:
        data = self._withdrawals()
        data[asset] = next_seq
        write_private_file(
            self.config.home / WITHDRAWALS_FILE, json.dumps(data, sort_keys=True).encode()
        )

    async def importance(self, *, limit: int = 50) -> list[ImportanceView]:
        raw = await self._ledger_call(self.ledger.abci_query, "/importance", encode(limit))
        out = []
        for node, score in decode(raw):
            try:
                rec = decode(await self._ledger_call(self.ledger.abci_query, "/node", encode(node)))
            except LedgerRefused:
                rec = {}
            out.append(
                ImportanceView(
                    bytes(node).hex(),
                    int(score),
                    int(rec.get("points", 0)),
                    int(rec.get("penalties", 0)),
                    int(rec.get("bond", 0)),
                )
            )
        return out

    async def evidence(self, *, limit: int = 50) -> list[EvidenceView]:
        out = []
        for t in self.store.recent(limit=limit):
            if t.order_id is None or self.store.raw(t.trade_id, "evidence_tx") is None:
                continue
            phase = next((p for p in t.phases if p.phase == "evidence_committed"), None)
            out.append(
                EvidenceView(
                    t.order_id,
                    "leg_not_locked",
                    "",
                    int(phase.detail.get("height", 0)) if phase else 0,
                    {"committed": phase is not None},
                )
            )
        return out

    async def peers(self) -> list[PeerView]:
        assert self.exchange is not None
        out = []
        for peer, link in self.exchange.links.items():
            addr = getattr(link, "addr", None) or getattr(link, "peer_addr", None)
            out.append(
                PeerView(
                    peer.hex(),
                    f"{addr[0]}:{addr[1]}" if isinstance(addr, tuple) else str(addr or ""),
                    bool(getattr(link, "inbound", False)),
                    int(self.exchange._scores.get(peer, 0)),
                )
            )
        return out

    async def events(self, *, after: int = 0, limit: int = 100) -> list[ServiceEvent]:
        return self.event_log.after(after, limit)

    async def wait_events(self, *, after: int, timeout: float) -> list[ServiceEvent]:
        return await self.event_log.wait(after, timeout)


def _contact_of(exchange: ExchangeNode, peer: bytes) -> str | None:
    contacts = getattr(exchange, "contacts", None)
    if isinstance(contacts, dict):
        value = contacts.get(peer)
        return value if isinstance(value, str) and value else None
    return None


def _asset(leg: Any) -> str:
    return str(leg.chain) if leg.token is None else f"{leg.chain}:{leg.token}"


def _asset_of(leg: Any) -> str:
    return _asset(leg)


def _jsonable(x: Any) -> Any:
    if isinstance(x, bytes):
        return x.hex()
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    return x


def _spec_of(o: OfferConfig) -> OfferSpec:
    return OfferSpec(
        o.buy, o.sell, o.price_num, o.price_den, o.min_in, o.max_in, o.fee, o.partial, o.ttl
    )


def _cancellable(fn: Callable[..., T], stop: threading.Event, *args: Any) -> T:
    """``fn(*args)`` in a daemon thread (an scrypt of the wallet: seconds on a loaded
    machine, not interruptible), given up when ``stop`` is set: :class:`StartCancelled`."""
    done = threading.Event()
    out: list[Any] = []

    def work() -> None:
        try:
            out.append((True, fn(*args)))
        except BaseException as exc:
            out.append((False, exc))
        done.set()

    threading.Thread(target=work, name="kofo-node-start", daemon=True).start()
    while not done.wait(0.05):
        if stop.is_set():
            raise StartCancelled("stopped during the start")
    ok, value = out[0]
    if not ok:
        raise value
    return value  # type: ignore[no-any-return]


def run_node(home: Path, passphrase: str, stop: threading.Event | None = None) -> int | None:
    """Lock the home, load config and wallet, run until SIGINT/SIGTERM. Raises
    :class:`~kofo.node.home.NodeAlreadyRunning`, ``ConfigError`` or ``WalletError``.
    ``stop``: set by the caller's signal handlers, installed before this is called, so a
    signal during the start (the wallet's scrypt, connecting to the chains, the ledger, the
    journal's re-sends) stops it promptly. Returns None, or when the node stopped during its
    start (the home unlocked, nothing left running) the signal the daemon's loop received
    (0: none, the caller's handlers had it)."""
    stop = stop or threading.Event()
    home = home.expanduser().absolute()
    config = load_config(home)
    logging.basicConfig(
        level=getattr(logging, config.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )
    with HomeLock(home):
        try:
            if stop.is_set():
                raise StartCancelled("stopped during the start")
            log.info("unlocking the wallet")
            wallet = _cancellable(NodeWallet.open, stop, config.wallet_path, passphrase)
            if stop.is_set():
                raise StartCancelled("stopped during the start")
        except StartCancelled:
            log.warning("stop requested during the start (unlocking the wallet): stopping")
            return 0
        node = Node(config, wallet, passphrase=passphrase)
        asyncio.run(node.run(stop))
        return node.stop_signal if node.stopped_in_start else None


__all__ = ["Node", "NodeState", "RouteFailed", "StartCancelled", "run_node"]
