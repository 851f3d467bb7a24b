"""The swap engine: the thin shell around :func:`kofo.settlement.swap.next_action`.

For each unfinished swap the engine reads the chains (facts), asks the pure state machine what to
do, does it, and journals it. It never decides anything itself. Order of effects (the durability
rule): a signed transaction is stored before it is broadcast, a transition is journaled after the
effect it names, and every effect is idempotent, so a crash between any two lines is repaired by
running the same step again after restart.

Fault injection: ``KOFO_CRASH_AT=<point>`` makes the process SIGKILL itself when it reaches
``<point>`` (see :data:`CRASH_POINTS`); ``KOFO_CRASH_LOG=<file>`` appends every point reached, so
a test can enumerate the points a run actually passes through.
"""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from kofo.errors import (
    AuditFailed,
    ChainError,
    FeeTooLow,
    InvalidInput,
    KofoError,
    NotDelivered,
)
from kofo.settlement.chain import (
    BatchSettlement,
    ChainAdapter,
    CooperativeClaims,
    CooperativeClaimSession,
    Expiry,
    HtlcRef,
    HtlcState,
    HtlcTerms,
    SignedTx,
    TxKind,
)
from kofo.settlement.journal import EvidenceRecord, Journal, StoredSwap
from kofo.settlement.swap import (
    LOCK_MAY_STILL_BE_MINED,
    TERMINAL,
    Action,
    ActionKind,
    ChainFacts,
    EvidenceKind,
    LegFacts,
    Role,
    State,
    SwapRecord,
    next_action,
)
from kofo.settlement.terms import (
    ACCEPT_WINDOW_SECONDS,
    AcceptPolicy,
    ChainPolicy,
    Leg,
    SwapTerms,
    TermsRefused,
    check_terms_as_initiator,
    check_terms_as_participant,
    deny_all,
    propose_terms,
)
from kofo.wire.envelope import public_key_bytes
from kofo.wire.swap import (
    Accept,
    Cancel,
    ClaimCosigned,
    CosignClaim,
    Error,
    Locked,
    Propose,
    Redeemed,
    Refunded,
    SwapBody,
    htlc_to_wire,
    terms_digest,
)

log = logging.getLogger(__name__)

_Facts = tuple[ChainFacts, HtlcRef | None, HtlcRef | None, dict[str, str]]
"""What :meth:`SwapEngine.facts` returns: the facts, both legs' references, evidence detail."""
_Seen = tuple[_Facts, dict[str, Expiry] | None]
"""Facts with the chain clocks read alongside them. The facts hold until a transaction is sent;
the clocks until something takes time (a signature: ``None`` then, read them again)."""

_COUNTER_REF = "counter_ref"
"""Journal notice kind under which the counterparty's lock reference is remembered."""
_LOCK_CANCEL = "lock_cancel"
"""Journal notice kind: the self-spend that ends our lock never mined (:meth:`_cancel_lock`)."""
_SCAN_FROM = "scan_from"
"""Journal notice kind: per chain, the height from which a lock of the swap is searched."""

SCAN_BACK_BLOCKS = 64
"""A search for the counterparty's lock starts this far below the tip seen when the swap began:
a reorganisation may move a later lock into a lower block. Ethereum finalises after 64 blocks
(two epochs) and Bitcoin has seen no reorg deeper than a few blocks since 2013."""

_SIGNED_KINDS = (TxKind.LOCK, TxKind.REDEEM, TxKind.REFUND)
CRASH_POINTS: tuple[str, ...] = (
    *(f"enter:{s.value}" for s in State if s not in (State.PROPOSED, State.REJECTED)),
    *(f"stored:{k.value}" for k in _SIGNED_KINDS),
    *(f"before_broadcast:{k.value}" for k in _SIGNED_KINDS),
    *(f"after_broadcast:{k.value}" for k in _SIGNED_KINDS),
    *(f"stored:bump_{k.value}" for k in _SIGNED_KINDS),
)
"""Every named point where a crash is injectable: after each state transition is journaled,
after each step's signed transactions are stored (and each fee bump), and
before/after each broadcast."""


@dataclass(frozen=True, slots=True)
class _Due:
    """A redeem (refund) due in this tick, kept to be signed in one batch (see tick)."""

    swap_id: bytes
    to: State
    reason: str
    ref: HtlcRef
    preimage: bytes  # b"" for a refund


@dataclass(frozen=True, slots=True)
class _CosignAsk:
    """A co-signature request ready to send: the claim it is for (the claimer's MuSig2 session,
    in memory only) and whether sending it shows the secret for the first time."""

    swap_id: bytes
    ref: HtlcRef
    adapter: CooperativeClaims
    claim: CooperativeClaimSession
    body: CosignClaim
    shares: bool
    wait: float
    """Seconds the claimer waits for the answer, at most (see :meth:`SwapEngine._cosign_wait`);
    then it claims by the leaf, whatever comes later."""


@dataclass(frozen=True, slots=True)
class PeerLimits:
    """What proposing nodes can make this node do (DESIGN.md: every budget is per peer).

    A proposal costs chain reads (dust, the build of each leg); an accepted one costs a chain
    read on every tick until the proposer locks or the deadline aborts it (the accept window,
    minutes). The rate bounds the first, the open-swap counts the second."""

    proposal_burst: int = 20
    """Proposals one node may send at once."""
    proposals_per_minute: int = 60
    """... and then per minute: a market maker's quote refresh, not a flood."""
    open_swaps_per_peer: int = 16
    """Unfinished swaps with one node: a busy counterparty's concurrent trades."""
    open_swaps: int = 256
    """Unfinished swaps in all: what one tick may have to read (node ids are free to make,
    so the per-node limits alone bound nothing)."""


MAX_TRACKED_PEERS = 4096
"""Proposal-rate buckets kept (least recently seen forgotten first): bounded memory."""

_UNLOCKED = frozenset(
    {State.PROPOSED, State.ACCEPTED, State.COUNTER_AUDITED, State.LOCK_SIGNED, State.LOCK_SENT}
)
"""States in which the own leg's funds are committed but may still be in the wallet: they are
reserved (:meth:`SwapEngine.reserved`). From ``locked`` on they sit in the HTLC."""

COSIGN_ANSWERS_PER_SWAP = 8
"""Co-signature requests one swap's counterparty may make (an honest claimer asks once per
start of its node, and again after a reorg): more are refused, so a counterparty cannot make
the engine sign (and read the chain, under its lock) without end. Counted in memory; a
restart starts again."""

COSIGN_WAIT = 10.0
"""The longest a claimer waits for a co-signature, in seconds, in total (not per socket
read): a peer on the same host or LAN answers in milliseconds, and ten seconds covers a busy
node. The swap's own deadline may allow less (:meth:`SwapEngine._cosign_wait`)."""


PEER_WAIT_PER_TICK = 10.0
"""The longest one :meth:`SwapEngine.tick` waits on peers in all (co-signers, notice takers),
in seconds: what is still out then goes on in the background, and later steps take its
answer. Without it every peer that stalls added its own wait to the tick, so enough of them
(open swaps with many node ids) kept the watchtower from every other swap for longer than the
notice time the margins allow for."""


NOTICE_THREADS = 8
"""Threads sending notices at most, for the whole engine: a peer that never takes one holds at
most one of them (:class:`_NoticeSender`), never one per notice."""

NOTICES_PER_PEER = 64
"""Notices queued for one counterparty at most; beyond, the oldest is dropped (a notice is a
hint: the chain is the truth, a lost one costs latency)."""


class _NoticeSender:
    """Sends notices with at most ``threads`` threads in all, one notice at a time per
    counterparty, and at most ``per_peer`` queued per counterparty. A thread runs only while
    there is a notice to send to a counterparty not already being sent to, so a counterparty
    that stalls holds one thread (until its channel's timeout), and honest ones keep theirs."""

    def __init__(
        self, send: Callable[[bytes, SwapBody], None], threads: int, per_peer: int
    ) -> None:
        self._send = send
        self.threads = threads
        self.per_peer = per_peer
        self._lock = threading.Lock()
        self._queues: dict[bytes, deque[tuple[bytes, SwapBody, threading.Event]]] = {}
        self._busy: set[bytes] = set()
        self.running = 0
        """Sender threads alive now (at most :attr:`threads`)."""

    def submit(self, peer: bytes, swap_id: bytes, body: SwapBody) -> threading.Event:
        """Queue one notice; the event is set once it was sent, failed or dropped."""
        done = threading.Event()
        with self._lock:
            queue = self._queues.setdefault(peer, deque())
            if len(queue) >= self.per_peer:
                old_id, old_body, old_done = queue.popleft()
                old_done.set()
                log.warning(
                    "notice %s for swap %s dropped: %d notices already queued for its peer",
                    type(old_body).__name__,
                    old_id.hex()[:8],
                    self.per_peer,
                )
            queue.append((swap_id, body, done))
            start = self.running < self.threads and peer not in self._busy
            if start:
                self.running += 1
        if start:
            threading.Thread(target=self._run, name="notices", daemon=True).start()
        return done

    def _next(self) -> tuple[bytes, bytes, SwapBody, threading.Event] | None:
        with self._lock:
            for peer, queue in self._queues.items():
                if peer not in self._busy and queue:
                    self._busy.add(peer)
                    swap_id, body, done = queue.popleft()
                    return peer, swap_id, body, done
            self.running -= 1
            return None

    def _run(self) -> None:
        while (item := self._next()) is not None:
            peer, swap_id, body, done = item
            try:
                self._send(swap_id, body)
            except Exception as exc:  # the chain is the truth; a lost notice costs latency
                log.warning(
                    "notice %s for swap %s not delivered: %s",
                    type(body).__name__,
                    swap_id.hex()[:8],
                    exc,
                )
            finally:
                done.set()
                with self._lock:
                    self._busy.discard(peer)
                    if not self._queues.get(peer):
                        self._queues.pop(peer, None)


class CrashHook:
    """SIGKILLs this process at a named point (tests only; inert unless configured)."""

    def __init__(self, target: str | None = None, log_path: str | None = None) -> None:
        self.target = target
        self.log_path = log_path

    @classmethod
    def from_env(cls) -> CrashHook:
        return cls(os.environ.get("KOFO_CRASH_AT") or None, os.environ.get("KOFO_CRASH_LOG"))

    def hit(self, point: str) -> None:
        if self.log_path:
            with open(self.log_path, "a") as f:
                f.write(point + "\n")
        if point == self.target:
            os.kill(os.getpid(), signal.SIGKILL)


@dataclass(frozen=True, slots=True)
class SwapUpdate:
    """One state change, as published to subscribers."""

    swap_id: bytes
    role: Role
    state: State
    reason: str
    txid: str | None = None
    at: float = 0.0


@dataclass(frozen=True, slots=True)
class TxDepth:
    """How deep one transaction of a swap is, as a step of the engine read it: a lock or a
    spend (``redeem``/``refund``) of either leg. ``mine`` says whether this node sent it
    (its own lock, redeem of the counter leg, refund of its own leg) or the counterparty
    did. ``confirmations`` is capped at ``required`` (the leg's depth, what the engine
    waits for): published once per change of the capped count (:meth:`SwapEngine._depths`),
    never once per tick. Only public data (a txid, counts), never a secret."""

    swap_id: bytes
    role: Role
    leg: str  # "own" or "counter"
    kind: str  # "lock", "redeem" or "refund"
    mine: bool
    chain: str
    txid: str
    confirmations: int
    required: int
    at: float = 0.0


SECRET_SHARED = "secret_shared"
"""Journal notice: the secret went from the initiator to the participant off chain, in a
request to co-sign a cooperative claim (see ``SwapRecord.secret_shared``)."""

_REFUNDING = frozenset(
    {State.REFUND_WAIT, State.REFUND_SIGNED, State.REFUND_SENT, State.REFUNDED, State.ABORTED}
)
"""States in which this node does not co-sign a claim of its leg: it is getting it back."""


class SwapEngine:
    """Drives one node's swaps. Thread-safe: one step at a time per engine. A co-signature
    request waits for its answer outside the lock, so meanwhile the engine handles messages
    (the counterparty's own request included) and other threads may step other swaps; the thread
    that asked waits for the answer, at most the request's own deadline (``_CosignAsk.wait``),
    and then claims by the leaf."""

    def __init__(
        self,
        journal: Journal,
        adapters: Mapping[str, ChainAdapter],
        policies: Mapping[str, ChainPolicy],
        node_key: Ed25519PrivateKey,
        *,
        notify: Callable[[bytes, SwapBody], None] | None = None,
        request: Callable[[bytes, SwapBody], SwapBody | None] | None = None,
        publish: Callable[[SwapUpdate], None] | None = None,
        depth: Callable[[TxDepth], None] | None = None,
        crash: CrashHook | None = None,
        cosign_wait: float = COSIGN_WAIT,
        accept_policy: AcceptPolicy = deny_all,
        limits: PeerLimits | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``notify`` sends a notice to the swap's counterparty (best effort); ``request`` sends
        a message and returns its verified reply (raising on a transport failure): with it, a
        Taproot leg paying this node is claimed cooperatively (:meth:`_cosign_ask`; the request
        waits for its answer without the engine lock). ``accept_policy`` decides which
        proposals this node accepts (default: none, :func:`~kofo.settlement.terms.deny_all`);
        ``limits`` bound what one proposing node, and all of them, can open
        (:class:`PeerLimits`); ``clock`` (monotonic seconds) paces the proposal rate."""
        self.journal = journal
        self.adapters = dict(adapters)
        self.policies = dict(policies)
        self.node_key = node_key
        self.node_id = public_key_bytes(node_key)
        self._notify = notify
        self._request = request
        self._publish = publish
        self._publish_depth = depth
        self._depths_seen: dict[bytes, dict[tuple[str, str], tuple[str, int]]] = {}
        self.crash = crash or CrashHook.from_env()
        self._lock = threading.RLock()
        self._counter_refs: dict[bytes, HtlcRef] = {}
        self._cosigned: dict[bytes, tuple[HtlcRef, SignedTx | None]] = {}
        """Per swap, the answer to its co-signature request, until the redeem step takes it:
        the counter leg it was for and the co-signed claim (``None``: claim by the leaf)."""
        self._asking: set[bytes] = set()
        self._due: dict[tuple[str, TxKind], list[_Due]] | None = None  # set during a tick
        """Swaps whose co-signature request is out (sent without the engine lock)."""
        self.cosign_wait = cosign_wait
        self.accept_policy = accept_policy
        self.limits = limits or PeerLimits()
        self._clock = clock
        self._cosign_asked: dict[bytes, int] = {}
        """Per swap, co-signature requests received (each costs a chain read and a MuSig2
        signature under the engine lock): at most :data:`COSIGN_ANSWERS_PER_SWAP`."""
        self._outbox: list[tuple[bytes, bytes, SwapBody]] = []
        """Notices (counterparty, swap, body) queued under the lock, sent after it
        (:meth:`_flush_notices`)."""
        self._notices = _NoticeSender(self._deliver_notice, NOTICE_THREADS, NOTICES_PER_PEER)
        self._idle: dict[bytes, tuple[object, ...]] = {}
        """Per swap skipped by :meth:`tick`: what it was waiting on when last driven."""
        self._touched: dict[bytes, int] = {}
        """Per swap, how many messages came for it (any message may be what it waits on)."""
        self._buckets: OrderedDict[bytes, tuple[float, float]] = OrderedDict()
        """Per proposing node: its proposal tokens left and when they were counted."""
        self.peer_wait_per_tick = PEER_WAIT_PER_TICK
        self._tick_budget = threading.local()
        """Per thread, inside :meth:`tick`: the monotonic time until which it may still wait
        on peers (:meth:`_peer_wait`)."""
        self._hold_journaled()

    def _hold_journaled(self) -> None:
        """Every transaction the unfinished swaps journaled (sent or not) keeps what it uses
        from any new one (``ChainAdapter.hold``): a lock signed before a restart and not yet
        seen on chain still owns its coins, so no other lock is built from them. Swaps in
        ``refund_wait`` go first: past the expiry their lock's coins were given back to the
        wallet (``_lock_dead``), and a later transaction that spends one keeps it held."""
        swaps = sorted(
            self.journal.swaps(unfinished=True), key=lambda r: r.state is not State.REFUND_WAIT
        )
        for rec in swaps:
            for chain, txs in self._journaled(rec.swap_id).items():
                self.adapters[chain].hold(txs)
            cancel = self._lock_cancel_tx(rec)
            if cancel is not None:
                # our self-spend ending a lock never mined keeps its coin: a new lock built
                # from it would be replaced by the self-spend's re-send
                self.adapters[cancel.chain].hold([cancel])

    def _lock_cancel_tx(self, rec: StoredSwap) -> SignedTx | None:
        """The journaled self-spend that ends the swap's lock never mined (:meth:`_cancel_lock`)."""
        kept = self.journal.notice(rec.swap_id, _LOCK_CANCEL)
        if kept is None:
            return None
        chain = self._view_plain(rec).own_leg.chain
        if chain not in self.adapters:
            return None
        return SignedTx(chain, TxKind.TRANSFER, str(kept["txid"]), bytes.fromhex(kept["raw"]))

    def _journaled(self, swap_id: bytes) -> dict[str, list[SignedTx]]:
        """The swap's stored transactions but dropped children, per chain (of ours)."""
        out: dict[str, list[SignedTx]] = {}
        for kind in (TxKind.LOCK, TxKind.REDEEM, TxKind.REFUND):
            for tx, _ in self.journal.versions(swap_id, kind):
                if tx.chain in self.adapters:
                    out.setdefault(tx.chain, []).append(tx)
        return out

    # -- starting swaps -----------------------------------------------------------------------

    @contextmanager
    def _observing(self, chains: tuple[str, ...] | None = None) -> Iterator[None]:
        """Every chain read inside sees one view per chain (see ``ChainAdapter.observe``):
        of ``chains`` (default: all), so a swap reads only its own two chains and a chain
        that fails stops no swap that does not touch it."""
        with ExitStack() as stack:
            for name, adapter in self.adapters.items():
                if chains is None or name in chains:
                    stack.enter_context(adapter.observe())
            yield

    def now(self, chains: tuple[str, ...] | None = None) -> dict[str, Expiry]:
        """Each chain's clock (of ``chains``; default: all)."""
        return {
            name: a.expiry_now()
            for name, a in self.adapters.items()
            if chains is None or name in chains
        }

    @staticmethod
    def _chains(terms: SwapTerms) -> tuple[str, ...]:
        return (terms.initiator_leg.chain, terms.participant_leg.chain)

    def propose(
        self,
        initiator_leg: Leg,
        participant_leg: Leg,
        *,
        participant_node: bytes = b"\x00" * 32,
        accept_window: int = ACCEPT_WINDOW_SECONDS,
        peer: str = "",
    ) -> SwapTerms:
        """Draw a secret, lay out the terms, journal both (secret first), state PROPOSED."""
        import hashlib

        preimage = os.urandom(32)
        chains = (initiator_leg.chain, participant_leg.chain)

        def lay_out() -> SwapTerms:
            now = self.now(chains)
            terms = propose_terms(
                swap_id=swap_id,
                payment_hash=hashlib.sha256(preimage).digest(),
                initiator_leg=initiator_leg,
                participant_leg=participant_leg,
                policies=self.policies,
                now=now,
                accept_window=accept_window,
                initiator_node=self.node_id,
                participant_node=participant_node,
            )
            check_terms_as_initiator(terms, self.policies, now)
            return terms

        swap_id = os.urandom(16)
        # The slow checks (chain reads: dust, the build of each leg, the balance) on a first
        # layout; the terms sent are laid out again from the clocks after them, because the
        # participant's margin check counts from its own clocks when the proposal arrives.
        with self._observing(chains):
            draft = lay_out()
        self._check_new_hash(draft, Role.INITIATOR)
        self._check_legs(draft)
        with self._lock:  # the funds check and the swap that commits them, as one
            self._check_funds(draft, Role.INITIATOR)
            with self._observing(chains):  # one view for the terms and the scan heights
                terms = lay_out()
                self.journal.create_swap(
                    Role.INITIATOR,
                    terms,
                    State.PROPOSED,
                    preimage=preimage,
                    peer=peer,
                    payload={"reason": "proposed"},
                    notices=self._scan_from(terms),
                )
        self._emit(terms.swap_id, Role.INITIATOR, State.PROPOSED, "proposed")
        return terms

    def propose_fixed(
        self,
        initiator_leg: Leg,
        participant_leg: Leg,
        *,
        swap_id: bytes,
        preimage: bytes,
        participant_node: bytes,
        accept_window: int = ACCEPT_WINDOW_SECONDS,
        peer: str = "",
    ) -> SwapTerms:
        """Start an initiator swap whose legs were fixed elsewhere (a settlement order
        committed on the ledger: its id, payment hash, amounts, addresses and expiries are
        kept as given); only the lock and redeem deadlines are laid out from this engine's
        margins and clocks, as :meth:`propose` does. Refuses (:class:`TermsRefused`) legs
        whose expiries are not in the chains' units or leave less than this node's margins.
        Idempotent: a swap already journaled under ``swap_id`` with these legs is returned."""
        payment_hash = hashlib.sha256(preimage).digest()
        try:
            old = self.journal.get(swap_id)
        except KofoError:
            old = None
        if old is not None:
            if (
                old.terms.payment_hash != payment_hash
                or replace(old.terms.initiator_leg, confirmations=1)
                != replace(initiator_leg, confirmations=1)
                or replace(old.terms.participant_leg, confirmations=1)
                != replace(participant_leg, confirmations=1)
            ):
                raise InvalidInput(f"swap {swap_id.hex()} exists with other terms")
            return old.terms
        chains = (initiator_leg.chain, participant_leg.chain)

        def lay_out() -> SwapTerms:
            now = self.now(chains)
            laid = propose_terms(
                swap_id=swap_id,
                payment_hash=payment_hash,
                initiator_leg=initiator_leg,
                participant_leg=participant_leg,
                policies=self.policies,
                now=now,
                accept_window=accept_window,
                initiator_node=self.node_id,
                participant_node=participant_node,
            )
            terms = replace(
                laid,
                initiator_leg=replace(laid.initiator_leg, expiry=initiator_leg.expiry),
                participant_leg=replace(laid.participant_leg, expiry=participant_leg.expiry),
            )
            for leg in (terms.initiator_leg, terms.participant_leg):
                if type(leg.expiry) is not type(now[leg.chain]):
                    raise TermsRefused(
                        f"{leg.chain} leg expiry {leg.expiry} is not in the chain's unit "
                        f"({now[leg.chain]})",
                        code="terms_expiry_unit",
                    )
            check_terms_as_initiator(terms, self.policies, now)
            # The fixed expiries must also leave the participant its margin (it checks the
            # same), and the initiator's own lock deadline must come before its leg expires.
            if not terms.initiator_lock_by.value < terms.initiator_leg.expiry.value or not (
                terms.participant_lock_by.value
                <= terms.initiator_redeem_by.value
                < terms.participant_leg.expiry.value
            ):
                raise TermsRefused(
                    "the fixed expiries come before this node's lock and redeem deadlines "
                    f"(initiator leg {terms.initiator_leg.expiry}, participant leg "
                    f"{terms.participant_leg.expiry})",
                    code="terms_margin_too_small",
                )
            return terms

        with self._observing(chains):
            draft = lay_out()
        self._check_new_hash(draft, Role.INITIATOR)
        self._check_legs(draft)
        with self._lock:
            self._check_funds(draft, Role.INITIATOR)
            with self._observing(chains):
                terms = lay_out()
                # The caller may have journaled the secret already (before the order it
                # hashes was committed, so a restart can still start the swap).
                kept = self.journal.preimage(swap_id)
                if kept is not None and kept != preimage:
                    raise InvalidInput(f"swap {swap_id.hex()}: another secret is journaled")
                self.journal.create_swap(
                    Role.INITIATOR,
                    terms,
                    State.PROPOSED,
                    preimage=None if kept is not None else preimage,
                    peer=peer,
                    payload={"reason": "proposed from fixed legs"},
                    notices=self._scan_from(terms),
                )
        self._emit(terms.swap_id, Role.INITIATOR, State.PROPOSED, "proposed")
        return terms

    def accept(
        self,
        terms: SwapTerms,
        *,
        peer: str = "",
        scan_from: Mapping[str, int] | None = None,
        proposed: bool = True,
    ) -> Accept:
        """The participant's answer to a proposal: check it is safe, allowed and funded,
        journal it, ACCEPTED. Raises :class:`TermsRefused` with the reason's code otherwise.
        ``scan_from`` (per chain, a block height) lowers where the search for the counter
        lock starts: a caller that already saw the initiator's lock (a maker acting from a
        committed order without a proposal) passes the lock's height. ``proposed=False``:
        terms this node derived itself (that maker, from an order it co-signed, with the lock
        on the chain) take no token from the counterparty's proposal bucket, which the
        counterparty can keep empty with junk proposals of its own, and do not count against
        the open-swap limits, which it can fill with accepted proposals it never locks (the
        orders a maker co-signs are bounded by its own liquidity holds); refusing them would
        leave the maker's committed leg unlocked.

        Cheapest first, so a flood costs little: the proposer's rate (per node), the payment
        hash, the accept policy (pure); then what reads the chains (dust, the build of each
        leg, the margins); last, under the engine lock, the open-swap limits and the funds
        this swap commits, checked together with the journal entry that commits them."""
        if terms.participant_node != self.node_id:
            raise TermsRefused("terms name another participant node", code="terms_node")
        for leg in (terms.initiator_leg, terms.participant_leg):
            if leg.chain not in self.adapters:
                raise TermsRefused(f"chain {leg.chain!r} is not served here", code="terms_chain")
        if proposed:
            self._take_proposal_token(terms.initiator_node)
        self._check_new_hash(terms, Role.PARTICIPANT)
        self.accept_policy(terms)
        chains = self._chains(terms)
        # Our side's keys in the terms: the ones this node handed out for the swap (fresh per
        # swap on Bitcoin-like chains), so "ours" is what our wallet owns, not one address.
        mine = {
            leg.chain: address
            for leg, address in (
                (terms.initiator_leg, terms.initiator_leg.recipient),
                (terms.participant_leg, terms.participant_leg.sender),
            )
            if self.adapters[leg.chain].owns(address)
        }
        # The margins first among the chain reads: they shrink as the clocks run on from the
        # proposal, and the deadlines they check are absolute, so later checks cost nothing.
        with self._observing(chains):
            check_terms_as_participant(terms, self.policies, self.now(chains), my_address=mine)
        self._check_legs(terms)
        with self._observing(chains):
            scan = self._scan_from(terms)
        heights = scan[_SCAN_FROM]
        for chain, height in (scan_from or {}).items():
            if chain in heights:
                heights[chain] = max(0, min(int(heights[chain]), int(height)))
        with self._lock:
            if proposed:
                self._check_open_limits(terms.initiator_node)
            self._check_funds(terms, Role.PARTICIPANT)
            # The scan start in the swap's own first transaction: a crash after the accept
            # never leaves a swap without it (a search of the counter leg from genesis).
            self.journal.create_swap(
                Role.PARTICIPANT,
                terms,
                State.ACCEPTED,
                peer=peer,
                payload={"reason": "accepted"},
                notices=scan,
            )
        self._emit(terms.swap_id, Role.PARTICIPANT, State.ACCEPTED, "accepted")
        return Accept(terms.swap_id, terms_digest(terms))

    # -- what a node commits, and to whom ------------------------------------------------------

    def reserved(self, chain: str, token: str | None = None) -> int:
        """Base units of (``chain``, ``token``) this node has committed to lock and not yet
        locked: the own leg of every unfinished swap whose lock has not left the wallet for
        sure (before ``locked``). Released when the swap ends or its lock is buried."""
        total = 0
        for rec in self.journal.swaps(unfinished=True):
            if rec.state not in _UNLOCKED:
                continue
            own = self._view_plain(rec).own_leg
            if own.chain == chain and own.token == token:
                total += own.amount
        return total

    def _open_spends(self, chain: str) -> int:
        """Transactions on ``chain`` the unfinished swaps may still need from this node, each
        counted at :meth:`~kofo.settlement.chain.ChainAdapter.spend_fee_reserve`: per own leg
        there its lock (whose gas would otherwise come out of what is kept for the spends)
        and its refund, per counter leg there its redeem."""
        total = 0
        for rec in self.journal.swaps(unfinished=True):
            view = self._view_plain(rec)
            total += 2 * (view.own_leg.chain == chain) + (view.counter_leg.chain == chain)
        return total

    def _check_funds(self, terms: SwapTerms, role: Role) -> None:
        """Refuse a swap that would commit more of its own leg's asset than the wallet holds
        beyond what other swaps already reserve (a node holding 5 ETH cannot commit 300,000),
        or whose spends it could not pay for: on a chain where the spender pays the fee from
        its wallet (Ethereum), each unfinished swap keeps aside the fee of the spends it may
        need there (the refund of its own leg, the redeem of the other; a redeem that cannot
        pay its gas loses the leg paid for). Call under the engine lock, with the journal
        entry that commits the funds."""
        view = SwapRecord(terms.swap_id, role, terms, State.PROPOSED, False)
        own, ctr = view.own_leg, view.counter_leg
        needs: dict[tuple[str, str | None], int] = {(own.chain, own.token): own.amount}
        # This swap's transactions: the lock and refund of ours, the redeem of theirs.
        spends = {own.chain: 2}
        spends[ctr.chain] = spends.get(ctr.chain, 0) + 1
        for chain, count in spends.items():
            unit = self.adapters[chain].spend_fee_reserve()
            if unit > 0:
                key = (chain, None)
                needs[key] = needs.get(key, 0) + unit * (count + self._open_spends(chain))
        for (chain, token), amount in needs.items():
            held = self.adapters[chain].balance(token)
            need = self.reserved(chain, token) + amount
            if held < need:
                raise TermsRefused(
                    f"{chain}: this swap would commit {need} of {token or 'the native coin'} "
                    f"in all (locks, and the fees of the redeems and refunds this node may "
                    f"have to pay there); this node holds {held}",
                    code="terms_funds",
                )

    def _take_proposal_token(self, peer: bytes) -> None:
        """Per proposing node, a token bucket: ``proposal_burst`` proposals at once, then
        ``proposals_per_minute``. Buckets of the least recently seen nodes are forgotten
        beyond :data:`MAX_TRACKED_PEERS` (a forgotten node starts full again; the open-swap
        limits still bound what it can commit us to)."""
        lim = self.limits
        now = self._clock()
        tokens, last = self._buckets.pop(peer, (float(lim.proposal_burst), now))
        tokens = min(
            float(lim.proposal_burst), tokens + (now - last) * lim.proposals_per_minute / 60
        )
        if tokens < 1:
            self._buckets[peer] = (tokens, now)
            raise TermsRefused(
                f"node {peer.hex()[:16]} sent more than {lim.proposal_burst} proposals at once "
                f"or {lim.proposals_per_minute} a minute",
                code="peer_rate_limited",
            )
        self._buckets[peer] = (tokens - 1, now)
        while len(self._buckets) > MAX_TRACKED_PEERS:
            self._buckets.pop(next(iter(self._buckets)))

    def _check_open_limits(self, peer: bytes) -> None:
        """At most ``open_swaps_per_peer`` unfinished swaps with one node, ``open_swaps`` in
        all: what a flood of accepted proposals can make this node watch is bounded."""
        lim = self.limits
        open_swaps = self.journal.swaps(unfinished=True)
        if len(open_swaps) >= lim.open_swaps:
            raise TermsRefused(
                f"this node has {len(open_swaps)} open swaps, its limit", code="node_busy"
            )
        with_peer = sum(1 for rec in open_swaps if self._counter_node(rec) == peer)
        if with_peer >= lim.open_swaps_per_peer:
            raise TermsRefused(
                f"node {peer.hex()[:16]} has {with_peer} open swaps with this node, the limit",
                code="peer_limit",
            )

    @staticmethod
    def _counter_node(rec: StoredSwap) -> bytes:
        t = rec.terms
        return t.participant_node if rec.role is Role.INITIATOR else t.initiator_node

    @staticmethod
    def _view_plain(rec: StoredSwap) -> SwapRecord:
        return SwapRecord(rec.swap_id, rec.role, rec.terms, rec.state, False)

    def _check_new_hash(self, terms: SwapTerms, role: Role) -> None:
        """A payment hash this journal already knows (any swap, finished or not) is not used
        again: two swaps under one hash could be paid by one lock, and a hash whose secret we
        hold is no secret to bind a new swap to. The one exception is a participant swap whose
        counterparty uses none of the other swaps' counterparty keys
        (:func:`hash_shared_safely`)."""
        if self.journal.hash_taken(role, terms):
            raise TermsRefused(
                f"payment hash {terms.payment_hash.hex()} is already used by a swap here",
                code="terms_payment_hash_known",
            )

    def _check_legs(self, terms: SwapTerms) -> None:
        """Each leg's HTLC form must be one its chain's adapter can lock, audit and spend, and
        its amount at least what that chain's claim and refund need to pay anything out."""
        for leg in (terms.initiator_leg, terms.participant_leg):
            adapter = self.adapters.get(leg.chain)
            known = () if adapter is None else adapter.outputs
            if leg.output is not None and leg.output not in known:
                raise TermsRefused(
                    f"{leg.chain} leg asks for a {leg.output!r} HTLC; this node builds "
                    + (", ".join(known) if known else "only the chain's default"),
                    code="terms_output",
                )
            if adapter is None:
                continue
            smallest = adapter.min_amount(leg.htlc(terms.payment_hash))
            if leg.amount < smallest:
                raise TermsRefused(
                    f"{leg.chain} leg amount {leg.amount} is below {smallest}: at this chain's "
                    "fees now its claim or refund would pay out nothing relayable",
                    code="terms_amount",
                )
            self._build_leg(adapter, leg, terms)

    @staticmethod
    def _build_leg(adapter: ChainAdapter, leg: Leg, terms: SwapTerms) -> None:
        """Build the leg's HTLC (its script, or its contract call) now, at accept time: terms
        this node's adapter cannot build (a Bitcoin expiry of 600,000,000 as a block height,
        an address that is no address) would otherwise pass every check on numbers and then
        fail at every later step. The build is the adapter's own search for the lock
        (``find_htlc``): it derives the script or the contract's key from the terms exactly as
        the lock, the audit and the spends do; searching from the tip on, it reads little."""
        try:
            adapter.find_htlc(leg.htlc(terms.payment_hash), not_before=adapter.tip().height)
        except Exception as exc:  # whatever the builder raises, the leg is not buildable here
            raise TermsRefused(
                f"{leg.chain} leg cannot be built by this node: {type(exc).__name__}: {exc}",
                code="terms_unbuildable",
            ) from None

    def handle(self, body: SwapBody, sender: bytes, *, peer: str = "") -> SwapBody | None:
        """Apply a verified message from ``sender``; returns the reply to send, if any."""
        if isinstance(body, Propose):
            if sender != body.terms.initiator_node:
                return Error(body.terms.swap_id, "wrong_sender", "sender is not initiator_node")
            again = self._accepted_again(body.terms)
            if again is not None:
                return again
            try:
                return self.accept(body.terms, peer=peer)
            except KofoError as exc:
                return Error(body.terms.swap_id, exc.code, str(exc))
            except Exception as exc:  # a chain read failing oddly (a malformed answer)
                log.warning("proposal not checked: %s: %s", type(exc).__name__, exc)
                return Error(
                    body.terms.swap_id,
                    "terms_unchecked",
                    f"the terms could not be checked now ({type(exc).__name__}); not accepted",
                )
        with self._lock:
            try:
                rec = self.journal.get(body.swap_id)
            except KofoError as exc:
                return Error(body.swap_id, exc.code, str(exc))
            # Any message may be what the swap waits on (tick forgets finished swaps' counts).
            self._touched[body.swap_id] = self._touched.get(body.swap_id, 0) + 1
            counter_node = (
                rec.terms.participant_node
                if rec.role is Role.INITIATOR
                else rec.terms.initiator_node
            )
            if sender != counter_node:
                return Error(body.swap_id, "wrong_sender", "sender is not the counterparty")
            if isinstance(body, Accept):
                if rec.role is not Role.INITIATOR or rec.state is not State.PROPOSED:
                    return None
                if body.terms_digest != terms_digest(rec.terms):
                    return Error(body.swap_id, "terms_mismatch", "accept is for other terms")
                self._transition(rec, State.ACCEPTED, "participant accepted")
            elif isinstance(body, Locked):
                self.journal.store_notice(rec.swap_id, "locked", htlc_to_wire(body.htlc))
                self.journal.store_notice(
                    rec.swap_id, "locked_at", {"locator": body.locator, "txid": body.txid}
                )
            elif isinstance(body, Cancel | Error):
                # Only a swap in which nothing of ours is committed can be called off.
                if rec.state in (State.PROPOSED, State.ACCEPTED) and not self.journal.txs(
                    rec.swap_id, TxKind.LOCK
                ):
                    to = State.REJECTED if rec.state is State.PROPOSED else State.ABORTED
                    reason = (
                        body.reason
                        if isinstance(body, Cancel)
                        else f"{body.code}: {body.message[:200]}"
                    )
                    self._transition(rec, to, f"counterparty called off: {reason}")
            elif isinstance(body, Redeemed | Refunded):
                self.journal.store_notice(rec.swap_id, type(body).__name__.lower(), {})
            elif isinstance(body, CosignClaim):
                return self._cosign(rec, body)
        return None

    def _accepted_again(self, terms: SwapTerms) -> Accept | None:
        """A proposal re-sent because our accept did not reach its sender (lost reply, a
        restart on either side): the same answer again, idempotently. Only for the very terms
        this node accepted (same swap id, same terms digest: a different proposal under a
        known id or hash is still refused as new) from the same initiator, while our swap
        still waits for its lock (``accepted``); it takes no proposal token and commits
        nothing new, so the limits are not bypassed by re-sending."""
        try:
            rec = self.journal.get(terms.swap_id)
        except KofoError:
            return None
        if (
            rec.role is not Role.PARTICIPANT
            or rec.state is not State.ACCEPTED
            or rec.terms.initiator_node != terms.initiator_node
        ):
            return None
        digest = terms_digest(terms)
        if digest != terms_digest(rec.terms):
            return None
        log.info("swap %s: proposal received again; accept re-sent", terms.swap_id.hex()[:16])
        return Accept(terms.swap_id, digest)

    # -- the cooperative claim of a Taproot leg ------------------------------------------------

    def _view(self, rec: StoredSwap) -> SwapRecord:
        """What the state machine decides on: the stored swap and what this node knows of the
        secret."""
        return SwapRecord(
            rec.swap_id,
            rec.role,
            rec.terms,
            rec.state,
            self.journal.preimage(rec.swap_id) is not None,
            self.journal.notice(rec.swap_id, SECRET_SHARED) is not None,
        )

    def _cosign(self, rec: StoredSwap, body: CosignClaim) -> SwapBody:
        """Co-sign the counterparty's key-path claim of our Taproot leg, or answer
        ``cosign_refused``.

        A co-signature costs us nothing the claimer could not take anyway: the request carries
        the secret, and whoever holds it can claim our leg by the claim leaf, at any time. So we
        co-sign any claim that comes with the secret, spends only our HTLC output (the adapter
        checks) and meets our lock unspent and not being refunded; as participant, what we get
        is the secret itself, early, stored before we answer so that we redeem the initiator's
        leg at once."""

        def refuse(why: str) -> Error:
            log.info("swap %s: not co-signing a claim: %s", rec.swap_id.hex()[:8], why)
            return Error(rec.swap_id, "cosign_refused", why)

        asked = self._cosign_asked.get(rec.swap_id, 0)
        if asked >= COSIGN_ANSWERS_PER_SWAP:
            return refuse(f"asked {asked} times already for this swap")
        self._cosign_asked[rec.swap_id] = asked + 1
        leg = self._view(rec).own_leg
        adapter = self.adapters[leg.chain]
        if body.chain != leg.chain or leg.output != "p2tr":
            return refuse(f"our leg on {body.chain} is not a Taproot HTLC")
        if not isinstance(adapter, CooperativeClaims):
            return refuse(f"the {leg.chain} adapter cannot co-sign")
        if hashlib.sha256(body.preimage).digest() != rec.terms.payment_hash:
            return refuse("the preimage does not hash to the swap's payment hash")
        if rec.state in _REFUNDING:
            return refuse(f"the swap is {rec.state}: our leg is being refunded")
        own_ref = self._own_ref(rec, leg.htlc(rec.terms.payment_hash))
        if own_ref is None:
            return refuse("we have no lock of this swap")
        with adapter.observe():
            if adapter.status(own_ref).state is not HtlcState.LOCKED:
                return refuse("our lock is not on chain unspent")
        # Written before the answer leaves: a restart must know we hold the secret and that
        # our leg may be claimed without it showing on chain.
        self.journal.store_preimage(rec.swap_id, body.preimage)
        if rec.role is Role.PARTICIPANT:
            self.journal.store_notice(rec.swap_id, SECRET_SHARED, {"by": "initiator"})
        try:
            nonce, partial = adapter.cosign_cooperative_claim(own_ref, body.claim, body.nonce)
        except KofoError as exc:
            return refuse(str(exc))
        log.info("swap %s: co-signed the counterparty's claim", rec.swap_id.hex()[:8])
        return ClaimCosigned(rec.swap_id, nonce, partial)

    def _cosign_ask(self, rec: StoredSwap, ref: HtlcRef, preimage: bytes) -> _CosignAsk | None:
        """Under the engine lock: the co-signature request for our key-path claim of the
        Taproot counter leg at ``ref``, or ``None`` when none is to be sent (the leg is not
        Taproot, there is no channel, or the answer to an earlier request for ``ref`` is waiting
        in :attr:`_cosigned`). A request that cannot be prepared, or that the initiator may no
        longer send, is answered at once with "by the leaf"."""
        view = self._view(rec)
        leg = view.counter_leg
        adapter = self.adapters[leg.chain]
        if (
            leg.output != "p2tr"
            or self._request is None
            or not isinstance(adapter, CooperativeClaims)
        ):
            return None
        answered = self._cosigned.get(rec.swap_id)
        if answered is not None:
            if answered[0] == ref:
                return None  # the redeem step takes it
            del self._cosigned[rec.swap_id]  # for a counter lock that a reorg replaced: ask anew
        # Showing the secret is revealing it (the initiator's only: the participant claims
        # with a secret that is out already): never after initiator_redeem_by (read again here,
        # signing takes time), and recorded first so that, once shown, the redeem goes on
        # whatever the clock says (swap rule 3). Shown before a restart, it stays shown.
        shares = rec.role is Role.INITIATOR and not view.secret_shared
        try:
            claim = adapter.begin_cooperative_claim(ref)
            wait = self._cosign_wait(rec, adapter.expiry_now(), shares=shares)
            if wait <= 0:
                log.info(
                    "swap %s: too little time left to wait for a co-signer: by the leaf",
                    rec.swap_id.hex()[:8],
                )
                self._cosigned[rec.swap_id] = (ref, None)
                return None
            if shares:
                self.journal.store_notice(rec.swap_id, SECRET_SHARED, {"by": "initiator"})
        except Exception as exc:  # any failure here: claim by the leaf
            log.warning(
                "swap %s: cooperative claim not begun (%s): by the leaf", rec.swap_id.hex()[:8], exc
            )
            self._cosigned[rec.swap_id] = (ref, None)
            return None
        body = CosignClaim(rec.swap_id, leg.chain, claim.raw, claim.nonce, preimage)
        return _CosignAsk(rec.swap_id, ref, adapter, claim, body, shares, wait)

    def _cosign_wait(self, rec: StoredSwap, clock: Expiry, *, shares: bool) -> float:
        """How long, in seconds, a co-signature request for our claim of the counter leg may
        be waited for, given the counter chain's clock now; 0 or less: do not ask, claim by
        the leaf at once.

        The rule (docs/swap.md, "Attacks considered"): once the wait is over, the claim by
        the leaf must still be buried before the counter leg's expiry (``T_B`` for the
        initiator, ``T_A`` for the participant), counting the chain's clock as fast as it can
        run: ``wait <= early(expiry - now) - settle``. A request that shows the secret for the
        first time (the initiator's) must moreover be over before ``initiator_redeem_by``:
        ``wait <= early(initiator_redeem_by - now)``; a leaf claim sent then is buried by
        ``T_B`` (the initiator's own check of the terms). So a co-signer that reads the
        secret and stalls cannot keep the initiator from its claim, and one that stalls the
        participant cannot keep it from claiming before ``T_A``. Never more than
        :attr:`cosign_wait`."""
        view = self._view(rec)
        leg = view.counter_leg
        policy = self.policies[leg.chain]
        if type(clock) is not type(leg.expiry):
            return 0.0
        room = policy.early_seconds(leg.expiry.value - clock.value) - policy.settle_seconds()
        if shares:
            room = min(
                room, policy.early_seconds(rec.terms.initiator_redeem_by.value - clock.value)
            )
        return float(min(self.cosign_wait, room))

    def _ask_cosign(self, ask: _CosignAsk) -> tuple[SignedTx | None, bool]:
        """Outside the engine lock (the counterparty may take up to the channel's timeout, and
        it may be asking us at the same time): send the request, check the answer. Returns the
        signed key-path claim (``None``: claim by the leaf) and whether the request certainly
        never left."""
        sid = ask.swap_id.hex()[:8]
        request = self._request
        assert request is not None, "asked without a channel"
        # The request runs in a thread of its own and is waited for ask.wait seconds in
        # total, whatever the channel does (a peer answering one byte at a time resets no
        # timer here); a late answer is dropped, and the claim goes by the leaf.
        answer: list[SwapBody | None] = []
        failure: list[BaseException] = []
        done = threading.Event()

        def send() -> None:
            try:
                answer.append(request(ask.swap_id, ask.body))
            except BaseException as exc:  # handed to the waiting thread
                failure.append(exc)
            finally:
                done.set()

        threading.Thread(target=send, name=f"cosign-{sid}", daemon=True).start()
        if not done.wait(ask.wait):
            log.warning(
                "swap %s: no co-signature within %.1f s: by the leaf (the request stays shown)",
                sid,
                ask.wait,
            )
            return None, False
        try:
            if failure:
                raise failure[0]
            reply = answer[0]
            if not isinstance(reply, ClaimCosigned):
                why = reply.message if isinstance(reply, Error) else f"answer {reply!r}"
                log.info("swap %s: claim not co-signed (%s): by the leaf", sid, why)
                return None, False
            signed = ask.adapter.finish_cooperative_claim(ask.claim, reply.nonce, reply.partial_sig)
        except NotDelivered as exc:
            log.warning("swap %s: co-signature not asked (%s): by the leaf", sid, exc)
            return None, True
        except Exception as exc:  # any failure of the channel or the peer
            log.warning("swap %s: cooperative claim failed (%s): by the leaf", sid, exc)
            return None, False
        log.info("swap %s: claim co-signed: key path", sid)
        return signed, False

    def _cosign_answered(self, ask: _CosignAsk, signed: SignedTx | None, unsent: bool) -> None:
        """Under the engine lock again: keep the answer for the redeem step."""
        if unsent and ask.shares:
            # This request certainly did not leave: unless an earlier one did, the secret is
            # still ours and the reveal deadline holds again.
            self.journal.drop_notice(ask.swap_id, SECRET_SHARED)
        self._cosigned[ask.swap_id] = (ask.ref, signed)

    def _cooperative_claim(self, rec: StoredSwap, ref: HtlcRef) -> SignedTx | None:
        """The key-path claim co-signed for ``ref``, if the answer is here and is for it."""
        answered, signed = self._cosigned.pop(rec.swap_id, (None, None))
        return signed if answered == ref else None

    # -- reading the chains -------------------------------------------------------------------

    def _own_ref(self, rec: StoredSwap, htlc: HtlcTerms) -> HtlcRef | None:
        lock = self._lock_tx(rec)
        return None if lock is None else self.adapters[htlc.chain].htlc_ref(htlc, lock)

    def _lock_tx(self, rec: StoredSwap) -> SignedTx | None:
        """Our stored lock (after any approve, before any child paying for it)."""
        locks = [tx for tx in self.journal.txs(rec.swap_id, TxKind.LOCK) if tx.kind is TxKind.LOCK]
        return locks[-1] if locks else None

    def _counter_ref(self, rec: StoredSwap, htlc: HtlcTerms) -> HtlcRef | None:
        """Where the counterparty's lock is. Found once while it is live, then remembered in
        the journal: after a restart its redeem or refund is read from the lock's block on,
        with no search (and a lock spent while we were down is still known)."""
        ref = self._counter_refs.get(rec.swap_id)
        if ref is None:
            stored = self.journal.notice(rec.swap_id, _COUNTER_REF)
            if stored is not None:
                ref = self._bound(
                    rec, HtlcRef(htlc, str(stored["locator"]), str(stored["lock_txid"]))
                )
            else:
                start = self.journal.notice(rec.swap_id, _SCAN_FROM) or {}
                since = start.get(htlc.chain)
                ref = self._bound(
                    rec,
                    self.adapters[htlc.chain].find_htlc(
                        htlc, not_before=None if since is None else int(since)
                    ),
                )
                if ref is not None:
                    self.journal.store_notice(
                        rec.swap_id,
                        _COUNTER_REF,
                        {"locator": ref.locator, "lock_txid": ref.lock_txid},
                    )
            if ref is not None:
                self._counter_refs[rec.swap_id] = ref
        return ref

    def _bound(self, rec: StoredSwap, ref: HtlcRef | None) -> HtlcRef | None:
        """``ref`` if the counterparty's lock it names is this swap's alone: the journal binds
        each lock to the first swap that audits it, and no other swap may count it (one lock,
        two swaps: paying twice for one payment)."""
        if ref is None:
            return None
        if self.journal.claim_fact(rec.swap_id, ref.terms.chain, ref.locator):
            return ref
        log.warning(
            "swap %s: the lock %s is bound to another swap; not counted for this one",
            rec.swap_id.hex()[:8],
            ref.locator,
        )
        return None

    def _find_spent_counter(self, rec: StoredSwap) -> HtlcRef | None:
        """Search the counter leg's chain since the swap began for a lock already spent."""
        view = SwapRecord(rec.swap_id, rec.role, rec.terms, rec.state, False)
        htlc = view.counter_leg.htlc(rec.terms.payment_hash)
        start = self.journal.notice(rec.swap_id, _SCAN_FROM) or {}
        since = int(start.get(htlc.chain, 0))
        ref = self._bound(rec, self.adapters[htlc.chain].find_htlc(htlc, spent_since=since))
        if ref is not None:
            self.journal.store_notice(
                rec.swap_id, _COUNTER_REF, {"locator": ref.locator, "lock_txid": ref.lock_txid}
            )
            self._counter_refs[rec.swap_id] = ref
        return ref

    def _scan_from(self, terms: SwapTerms) -> dict[str, dict[str, Any]]:
        """Where on each leg's chain a lock of this swap could first appear (a lock needs the
        fresh payment hash), so a later search for it never starts at genesis: the notice the
        swap is created with (:meth:`Journal.create_swap`, one transaction)."""
        heights = {}
        for leg in (terms.initiator_leg, terms.participant_leg):
            heights[leg.chain] = max(0, self.adapters[leg.chain].tip().height - SCAN_BACK_BLOCKS)
        return {_SCAN_FROM: heights}

    def _drop_counter_ref(self, swap_id: bytes) -> None:
        self._counter_refs.pop(swap_id, None)
        self.journal.drop_notice(swap_id, _COUNTER_REF)

    def forget_refs(self, chain: str | None = None) -> None:
        """Drop cached counterparty HTLC references (after a reorg on ``chain``)."""
        with self._lock:
            if chain is None:
                self._counter_refs.clear()
            else:
                self._counter_refs = {
                    k: v for k, v in self._counter_refs.items() if v.terms.chain != chain
                }

    def _leg_facts(
        self, rec: StoredSwap, chain: str, ref: HtlcRef | None, spend: TxKind
    ) -> LegFacts:
        """What ``chain`` says about the HTLC at ``ref``; ``spend`` is the kind of our own
        spend of it (the redeem of the counter leg, the refund of the own leg)."""
        if ref is None:
            # No lock of ours signed: none can appear on the own leg.
            return LegFacts(lock_dead=spend is TxKind.REFUND)
        st = self.adapters[chain].status(ref)
        facts = LegFacts(
            st.state,
            st.confirmations,
            st.spend_confirmations,
            st.preimage,
            spend_txid=st.spend_txid,
        )
        if spend is TxKind.REFUND and st.state is HtlcState.ABSENT:
            facts = replace(facts, lock_dead=self._lock_dead(rec, chain, ref))
        if self._spend_stuck(rec, chain, spend, facts):
            facts = replace(facts, spend_stuck=True)
        if spend is TxKind.REFUND and self._lock_stuck(rec, chain, facts):
            facts = replace(facts, lock_stuck=True)
        return facts

    def _lock_dead(self, rec: StoredSwap, chain: str, ref: HtlcRef) -> bool:
        """Whether our signed lock, not on chain, can never be mined any more (read only in
        ``refund_wait`` past the own expiry, where the swap would otherwise end). While it can,
        its coins go back to the wallet, as an abort gives them: the wallet's next spend of
        one of them is the conflict that ends the watch (unless the lock is mined first, and
        then refunded)."""
        if rec.state is not State.REFUND_WAIT:
            return False
        adapter = self.adapters[chain]
        clock, expiry = adapter.expiry_now(), ref.terms.expiry
        if type(clock) is not type(expiry) or clock.value < expiry.value:
            return False
        txs = self.journal.txs(rec.swap_id, TxKind.LOCK)
        depth = self._view(rec).own_leg.confirmations
        if adapter.lock_unminable(ref, txs, depth):
            return True
        adapter.release(txs)
        return False

    def _cancel_lock(self, rec: StoredSwap, ref: HtlcRef) -> None:
        """End our signed lock that never reached the chain, once the swap is past its own
        leg's expiry (the state machine's :data:`LOCK_MAY_STILL_BE_MINED` wait: the lock is no
        longer wanted, and mined now it would be refunded at once). On a Bitcoin-like chain a
        self-spend of one of its coins (``prepare_lock_cancel``), journaled (notice
        ``lock_cancel``) before it is sent, re-sent while unconfirmed and replaced at a higher
        fee after the chain's ``bump_after_blocks``; buried at the leg's depth it makes the
        lock unminable and the swap ``aborted`` (safety rule 6). Without it the swap waited
        until the wallet happened to spend one of those coins again. Ethereum needs none: its
        clock past the expiry ends the lock."""
        chain = self._view(rec).own_leg.chain
        adapter: Any = self.adapters[chain]
        prepare = getattr(adapter, "prepare_lock_cancel", None)
        if prepare is None:
            return
        kept = self.journal.notice(rec.swap_id, _LOCK_CANCEL)
        prev = self._lock_cancel_tx(rec)
        if kept is not None and prev is not None:
            if adapter.tx_confirmations(prev.txid) > 0:
                return  # mined: lock_unminable counts its depth
            wait = self._bump_after(chain, TxKind.REFUND)
            if wait is None or adapter.tip().height - int(kept["height"]) < wait:
                self._send_cancel(adapter, rec, prev)
                return
        try:
            new = prepare(ref, self.journal.txs(rec.swap_id, TxKind.LOCK), prev)
        except KofoError as exc:
            log.warning("swap %s: lock not cancelled yet: %s", rec.swap_id.hex()[:8], exc)
            if prev is not None:
                self._send_cancel(adapter, rec, prev)
            return
        if new is None:
            return
        self.journal.store_notice(
            rec.swap_id,
            _LOCK_CANCEL,
            {"txid": new.txid, "raw": new.raw.hex(), "height": adapter.tip().height},
        )
        log.info(
            "swap %s: our lock %s never mined, past its expiry: %s %s spends one of its coins "
            "back to the wallet",
            rec.swap_id.hex()[:8],
            ref.lock_txid,
            "replacement" if prev is not None else "self-spend",
            new.txid,
        )
        self._send_cancel(adapter, rec, new)

    def _send_cancel(self, adapter: ChainAdapter, rec: StoredSwap, tx: SignedTx) -> None:
        try:
            adapter.broadcast(tx)
        except KofoError as exc:  # refused or already known: the next step looks again
            log.info("swap %s: lock cancel %s not sent: %s", rec.swap_id.hex()[:8], tx.txid, exc)

    def _bump_after(self, chain: str, kind: TxKind) -> int | None:
        """Blocks our ``kind`` transaction on ``chain`` may wait unconfirmed before it is
        bumped; None where it never is (no bumps on the chain, or a lock where locks are not
        bumped)."""
        policy = self.policies.get(chain)
        if policy is None or (kind is TxKind.LOCK and not policy.bump_locks):
            return None
        return policy.bump_after_blocks

    def _spend_stuck(self, rec: StoredSwap, chain: str, kind: TxKind, leg: LegFacts) -> bool:
        """Whether our ``kind`` spend of this leg should get a higher fee."""
        spent = HtlcState.REDEEMED if kind is TxKind.REDEEM else HtlcState.REFUNDED
        unconfirmed = leg.state is HtlcState.LOCKED or (
            leg.state is spent and leg.spend_confirmations == 0
        )
        return unconfirmed and self._waited(rec, chain, kind)

    def _lock_stuck(self, rec: StoredSwap, chain: str, own: LegFacts) -> bool:
        """Whether our lock, waiting unconfirmed, should get a child paying for it."""
        unconfirmed = own.state is HtlcState.LOCKED and own.confirmations == 0
        return unconfirmed and self._waited(rec, chain, TxKind.LOCK)

    def _waited(self, rec: StoredSwap, chain: str, kind: TxKind) -> bool:
        """Whether the newest stored ``kind`` transaction was sent ``bump_after_blocks`` ago (or
        is a bump stored but not sent yet); False before the step was first sent."""
        after = self._bump_after(chain, kind)
        if after is None:
            return False
        versions = self.journal.versions(rec.swap_id, kind)
        sent = [height for _, height in versions if height is not None]
        if not sent:
            return False  # never sent: a first send, not a bump
        if versions[-1][1] is None:
            return True  # a bump stored before a crash or a failed send: send it
        return self.adapters[chain].tip().height - sent[-1] >= after

    def _bump(
        self, rec: StoredSwap, kind: TxKind, own_ref: HtlcRef | None, ctr_ref: HtlcRef | None
    ) -> list[str]:
        """Raise the fee of our stuck ``kind`` transaction (store first, then send): a
        replacement or a child paying for it, as the chain does it (a lock: a child). A newest
        bump stored but not sent is sent as it is, unless it has waited twice the bump wait;
        then (a node refusing it, say) it is bumped in turn (a replacement of it, or a child of
        what was sent)."""
        ref = ctr_ref if kind is TxKind.REDEEM else own_ref
        assert ref is not None, f"{kind} bump decided without its HTLC"
        chain = ref.terms.chain
        adapter = self.adapters[chain]
        versions = self.journal.versions(rec.swap_id, kind)
        latest_height = versions[-1][1]
        after = self._bump_after(chain, kind) or 0
        last_sent = max(h for _, h in versions if h is not None)
        if latest_height is not None or adapter.tip().height - last_sent >= 2 * after:
            newest = max(i for i, (tx, _) in enumerate(versions) if tx.kind is kind)
            sent = [versions[newest][0]] + [
                tx for tx, height in versions[newest + 1 :] if height is not None
            ]
            preimage = self.journal.preimage(rec.swap_id) if kind is TxKind.REDEEM else None
            try:
                bump = adapter.prepare_bump(ref, sent, preimage)
            except (ChainError, InvalidInput) as exc:
                # No bump within the chain's rules and our fee bounds (or none buildable now):
                # the newest version goes out again, so it is taken as soon as fees allow.
                log.warning(
                    "swap %s: no %s bump (%s); sending the newest version again",
                    rec.swap_id.hex()[:8],
                    kind,
                    exc,
                )
            else:
                self.journal.store_bump(rec.swap_id, kind, bump)
                self.crash.hit(f"stored:bump_{kind.value}")
        return self._broadcast(rec, kind)

    def _audit_claim(self, rec: StoredSwap, expected: HtlcTerms) -> tuple[str, dict[str, str]]:
        """If the counterparty told us it locked with other terms and that lock is on chain,
        the first differing field's code (and where to see it); else ``("", {})``."""
        claim = self.journal.notice(rec.swap_id, "locked")
        if claim is None:
            return "", {}
        from kofo.wire.swap import htlc_from_wire

        try:
            claimed = htlc_from_wire(claim)
        except KofoError:
            return "", {}
        if claimed == expected or claimed.chain != expected.chain:
            return "", {}
        adapter = self.adapters[expected.chain]
        try:
            ref = adapter.find_htlc(claimed)
        except KofoError:
            return "", {}
        if ref is None:
            return "", {}
        try:
            adapter.audit(ref, expected, 0)
        except AuditFailed as exc:
            return exc.code, {"lock_txid": ref.lock_txid, "locator": ref.locator}
        return "", {}

    def facts(
        self, rec: StoredSwap
    ) -> tuple[ChainFacts, HtlcRef | None, HtlcRef | None, dict[str, str]]:
        view = SwapRecord(rec.swap_id, rec.role, rec.terms, rec.state, False)
        own_htlc = view.own_leg.htlc(rec.terms.payment_hash)
        ctr_htlc = view.counter_leg.htlc(rec.terms.payment_hash)
        own_ref = self._own_ref(rec, own_htlc)
        ctr_ref = self._counter_ref(rec, ctr_htlc)
        ctr = self._leg_facts(rec, ctr_htlc.chain, ctr_ref, TxKind.REDEEM)
        audit_code, where = "", dict[str, str]()
        if ctr.state is HtlcState.ABSENT:
            audit_code, where = self._audit_claim(rec, ctr_htlc)
            if ctr_ref is not None:
                self._drop_counter_ref(rec.swap_id)  # re-find after a reorg
        if audit_code:
            ctr = LegFacts(audit_error=audit_code)
        facts = ChainFacts(self._leg_facts(rec, own_htlc.chain, own_ref, TxKind.REFUND), ctr)
        return facts, own_ref, ctr_ref, {"audit": audit_code, **where}

    def _depths(
        self, rec: StoredSwap, facts: ChainFacts, own_ref: HtlcRef | None, ctr_ref: HtlcRef | None
    ) -> None:
        """Publish the depth of each lock and spend of the swap the step just read (the facts
        it decides on: no extra chain read), each only when its count, capped at the leg's
        required depth, or its txid changed since last published: a transaction stuck at 0
        is published once, not once per tick, and a buried one stops being published."""
        if self._publish_depth is None:
            return
        view = self._view(rec)
        seen = self._depths_seen.setdefault(rec.swap_id, {})
        for leg, terms, ref, lf in (
            ("own", view.own_leg, own_ref, facts.own),
            ("counter", view.counter_leg, ctr_ref, facts.counter),
        ):
            if ref is None or lf.state is HtlcState.ABSENT:
                continue
            found = [("lock", ref.lock_txid, lf.confirmations)]
            if lf.state in (HtlcState.REDEEMED, HtlcState.REFUNDED) and lf.spend_txid:
                kind = "redeem" if lf.state is HtlcState.REDEEMED else "refund"
                found.append((kind, lf.spend_txid, lf.spend_confirmations))
            for kind, txid, count in found:
                required = terms.confirmations
                shown = (txid, min(max(count, 0), required))
                if seen.get((leg, kind)) == shown:
                    continue
                seen[(leg, kind)] = shown
                # mine: our lock, our redeem of the counter leg, our refund of our own leg
                mine = leg == ("counter" if kind == "redeem" else "own")
                try:
                    self._publish_depth(
                        TxDepth(
                            rec.swap_id,
                            rec.role,
                            leg,
                            kind,
                            mine,
                            terms.chain,
                            txid,
                            shown[1],
                            required,
                            time.time(),
                        )
                    )
                except Exception:  # a subscriber's failure must not stop the swap
                    log.exception("swap %s: depth not published", rec.swap_id.hex()[:8])

    # -- acting -------------------------------------------------------------------------------

    def _emit(self, swap_id: bytes, role: Role, state: State, reason: str, txid: str = "") -> None:
        if self._publish is not None:
            self._publish(SwapUpdate(swap_id, role, state, reason, txid or None, time.time()))

    def _transition(
        self, rec: StoredSwap, to: State, reason: str, txids: list[str] | None = None
    ) -> StoredSwap:
        payload: dict[str, object] = {"reason": reason}
        if txids:
            payload["txids"] = txids
        self.journal.transition(rec.swap_id, to, payload)
        if to in (State.ABORTED, State.REJECTED):
            # Nothing of ours was locked and nothing will be sent: a lock signed for it gives
            # its coins back to the wallet.
            for chain, txs in self._journaled(rec.swap_id).items():
                self.adapters[chain].release(txs)
        self.crash.hit(f"enter:{to.value}")
        log.info(
            "swap %s %s: %s -> %s (%s)", rec.swap_id.hex()[:8], rec.role, rec.state, to, reason
        )
        self._emit(rec.swap_id, rec.role, to, reason, txids[-1] if txids else "")
        return StoredSwap(
            rec.swap_id, rec.role, rec.terms, to, rec.peer, rec.created_at, time.time()
        )

    def _send_notice(self, rec: StoredSwap, body: SwapBody) -> None:
        """Queue a notice for the counterparty; :meth:`_step` sends it once it has let go of
        the engine lock: a peer slow to take it (up to the channel's deadline) then delays
        this thread only, never the engine's other swaps or its answers to messages."""
        if self._notify is None:
            return
        with self._lock:
            self._outbox.append((self._counter_node(rec), rec.swap_id, body))

    def _deliver_notice(self, swap_id: bytes, body: SwapBody) -> None:
        notify = self._notify
        if notify is not None:
            notify(swap_id, body)

    def _peer_wait(self, wait: float | None) -> float | None:
        """How long this thread may wait on a peer for something worth ``wait`` seconds
        (``None``: until it is done): all of it outside :meth:`tick`; inside, no more than
        what is left of the tick's :attr:`peer_wait_per_tick`."""
        until: float | None = getattr(self._tick_budget, "until", None)
        if until is None:
            return wait
        left = max(0.0, until - time.monotonic())
        return left if wait is None else min(wait, left)

    def _in_background(self, name: str, work: Callable[[], None], wait: float | None) -> bool:
        """Run ``work`` in a thread of its own and wait for it :meth:`_peer_wait` of ``wait``
        seconds; True if it finished meanwhile (else it goes on alone). What stops a thread
        rather than fails a call (a ``BaseException`` that is no ``Exception``: an interrupt,
        an exit) is raised here again when the work ended while we waited."""
        done = threading.Event()
        stopped: list[BaseException] = []

        def run() -> None:
            try:
                work()
            except Exception:
                raise
            except BaseException as exc:
                stopped.append(exc)
            finally:
                done.set()

        threading.Thread(target=run, name=name, daemon=True).start()
        finished = done.wait(self._peer_wait(wait))
        if finished and stopped:
            raise stopped[0]
        return finished

    def _flush_notices(self) -> None:
        """Send the queued notices (best effort), outside the engine lock, through the
        engine's notice senders (:class:`_NoticeSender`: a bounded number of threads, one
        per counterparty at a time): a peer slow to take one holds neither the engine, nor the
        tick beyond its peer budget, nor more than one thread. Waited for as
        :meth:`_peer_wait` allows (outside a tick: until sent)."""
        with self._lock:
            pending, self._outbox = self._outbox, []
        if self._notify is None or not pending:
            return
        sent = [self._notices.submit(peer, sid, body) for peer, sid, body in pending]
        wait = self._peer_wait(None)
        until = None if wait is None else time.monotonic() + wait
        for done in sent:
            if not done.wait(None if until is None else max(0.0, until - time.monotonic())):
                return  # the rest goes on in the background

    def _evidence(self, rec: StoredSwap, kind: EvidenceKind, detail: dict[str, str]) -> None:
        view = SwapRecord(rec.swap_id, rec.role, rec.terms, rec.state, False)
        code = detail.get("audit") or kind.value
        ctr = view.counter_leg
        full = {
            "counter_chain": ctr.chain,
            "deadline": str(
                rec.terms.participant_lock_by
                if rec.role is Role.PARTICIPANT
                else rec.terms.initiator_redeem_by
            ),
            **{k: v for k, v in detail.items() if k != "audit" and v},
        }
        if self.journal.add_evidence(EvidenceRecord(rec.swap_id, kind.value, code, full)):
            log.warning(
                "swap %s: counterparty misbehaved: %s %s", rec.swap_id.hex()[:8], kind.value, code
            )

    def _sign(
        self,
        rec: StoredSwap,
        action: Action,
        facts: ChainFacts,
        own_ref: HtlcRef | None,
        ctr_ref: HtlcRef | None,
    ) -> list[SignedTx]:
        view = SwapRecord(rec.swap_id, rec.role, rec.terms, rec.state, False)
        kind = {
            ActionKind.SIGN_LOCK: TxKind.LOCK,
            ActionKind.SIGN_REDEEM: TxKind.REDEEM,
            ActionKind.SIGN_REFUND: TxKind.REFUND,
        }[action.kind]
        stored = self.journal.txs(rec.swap_id, kind)
        if stored:  # signed before a crash: never sign a second, different transaction
            return stored
        if kind is TxKind.LOCK:
            own_htlc = view.own_leg.htlc(rec.terms.payment_hash)
            txs = list(self.adapters[own_htlc.chain].prepare_lock(own_htlc))
        elif kind is TxKind.REDEEM:
            preimage = self._redeem_preimage(rec, facts)
            assert ctr_ref is not None, "redeem decided without a counter lock"
            coop = self._cooperative_claim(rec, ctr_ref)
            txs = [coop or self.adapters[ctr_ref.terms.chain].prepare_redeem(ctr_ref, preimage)]
        else:
            assert own_ref is not None, "refund decided without an own lock"
            txs = [self.adapters[own_ref.terms.chain].prepare_refund(own_ref)]
        self.journal.store_txs(rec.swap_id, kind, txs)
        self.crash.hit(f"stored:{kind.value}")
        return txs

    def _redeem_preimage(self, rec: StoredSwap, facts: ChainFacts) -> bytes:
        """The secret to redeem with: ours, or the one read off our own leg's claim."""
        preimage = self.journal.preimage(rec.swap_id)
        if preimage is None:
            preimage = facts.own.preimage
            if preimage is None:
                raise InvalidInput("no preimage to redeem with")
            # Stored before it is used: a restart must not depend on re-reading the chain.
            self.journal.store_preimage(rec.swap_id, preimage)
        return preimage

    def _broadcast(self, rec: StoredSwap, kind: TxKind) -> list[str]:
        txs = self.journal.current_txs(rec.swap_id, kind)
        if not txs:
            raise InvalidInput(f"no stored {kind} transaction to broadcast")
        self.crash.hit(f"before_broadcast:{kind.value}")
        sent = []
        for tx in txs:
            adapter = self.adapters[tx.chain]
            # The height a redeem/refund was first sent at dates it for fee bumps (only on a
            # chain that bumps: elsewhere it would cost a head query per send).
            bumps = self._bump_after(tx.chain, kind) is not None
            try:
                adapter.broadcast(tx)
            except FeeTooLow:
                # Refused for its fee (a full mempool, fees risen since it was signed): date it
                # as if sent, so that it is re-signed at a higher fee after the bump wait
                # instead of being re-sent unchanged until its deadline passes.
                if bumps and tx.kind is kind and kind is not TxKind.LOCK:
                    self.journal.mark_refused(rec.swap_id, tx.txid, adapter.tip().height)
                raise
            self.journal.mark_broadcast(
                rec.swap_id, tx.txid, adapter.tip().height if bumps else None
            )
            sent.append(tx.txid)
        self.crash.hit(f"after_broadcast:{kind.value}")
        return sent

    def step(self, swap_id: bytes) -> bool:
        """Take one decision for the swap and perform it; True if the swap's state moved, a
        transaction was signed or a co-signature request was answered (call again), False if it
        waits or is finished."""
        return self._step(swap_id, None)[0]

    def _step(self, swap_id: bytes, seen: _Seen | None) -> tuple[bool, _Seen | None]:
        """:meth:`step`, reusing ``seen`` (the facts and clocks the previous step of this swap
        read) when given. Returns whether to call again and, when this step did nothing on
        chain (a transition or a signature), what it read, which still holds for the next step.

        A co-signature request is the one effect sent without the engine lock: the step
        prepares it under the lock, sends it without, and keeps the answer under the lock
        again; the next step decides afresh and signs the redeem with it. Notices for the
        counterparty go out after the lock is released, too (:meth:`_send_notice`)."""
        try:
            return self._step_unlocked(swap_id, seen)
        finally:
            self._flush_notices()

    def _step_unlocked(self, swap_id: bytes, seen: _Seen | None) -> tuple[bool, _Seen | None]:
        with self._lock:
            if swap_id in self._asking:
                return False, None  # another thread is waiting for this swap's co-signer
            go_on, seen, ask = self._step_locked(swap_id, seen)
            if ask is None:
                return go_on, seen
            self._asking.add(swap_id)

        def ask_and_keep() -> None:
            answer: tuple[SignedTx | None, bool] | None = None
            try:
                answer = self._ask_cosign(ask)
            finally:
                with self._lock:
                    self._asking.discard(swap_id)
                    if answer is not None:
                        self._cosign_answered(ask, *answer)

        # Waited for here no longer than the tick allows; beyond that the request's own
        # wait goes on alone, and a later step takes the answer (or claims by the leaf).
        if self._in_background(f"cosign-{swap_id.hex()[:8]}", ask_and_keep, ask.wait + 1):
            return True, None  # time has passed: read the chains again
        return False, None

    def _step_locked(
        self, swap_id: bytes, seen: _Seen | None
    ) -> tuple[bool, _Seen | None, _CosignAsk | None]:
        """The step under the engine lock; a co-signature request to send, if one is due."""
        rec = self.journal.get(swap_id)
        if rec.state in TERMINAL:
            self._cosigned.pop(swap_id, None)
            self._cosign_asked.pop(swap_id, None)
            self._depths_seen.pop(swap_id, None)
            return False, None, None
        if seen is None:
            try:
                chains = self._chains(rec.terms)
                with self._observing(chains):
                    seen = (self.facts(rec), self.now(chains))
            except Exception as exc:
                if self._abort_unread(rec, exc):
                    return True, None, None
                raise
        (facts, own_ref, ctr_ref, detail), clocks = seen
        self._depths(rec, facts, own_ref, ctr_ref)
        now = clocks if clocks is not None else self.now(self._chains(rec.terms))
        view = self._view(rec)
        action = next_action(view, facts, now)
        if action.evidence is EvidenceKind.NO_LOCK and ctr_ref is None:
            # Before blaming the counterparty, look for a lock it made and already spent
            # (refunded while we were offline): that is a kept promise, not evidence.
            if self._find_spent_counter(rec) is not None:
                facts, own_ref, ctr_ref, detail = self.facts(rec)
                action = next_action(view, facts, now)
        if action.evidence is not None:
            self._evidence(rec, action.evidence, detail)
        if action.reason == LOCK_MAY_STILL_BE_MINED and own_ref is not None:
            self._cancel_lock(rec, own_ref)
        if action.kind in (ActionKind.WAIT, ActionKind.DONE):
            return False, None, None
        assert action.to is not None
        read = ((facts, own_ref, ctr_ref, detail), now)
        if action.kind is ActionKind.TRANSITION:
            self._transition(rec, action.to, action.reason)
            return True, read, None
        if action.kind is ActionKind.BUMP:
            assert action.tx_kind is not None
            txids = self._bump(rec, action.tx_kind, own_ref, ctr_ref)
            self._transition(rec, action.to, action.reason, txids)
            return True, None, None  # the chain has changed: read it again
        if action.kind is ActionKind.BROADCAST:
            assert action.tx_kind is not None
            txids = self._broadcast(rec, action.tx_kind)
            if action.to is rec.state:
                return False, None, None  # a re-send: wait for the chain to move
            rec = self._transition(rec, action.to, action.reason, txids)
            self._after_sent(rec, action.tx_kind, txids)
            return True, None, None  # the chain has changed: read it again
        if action.kind is ActionKind.SIGN_REDEEM and not self.journal.txs(
            rec.swap_id, TxKind.REDEEM
        ):
            assert ctr_ref is not None, "redeem decided without a counter lock"
            ask = self._cosign_ask(rec, ctr_ref, self._redeem_preimage(rec, facts))
            if ask is not None:
                return True, None, ask
        if self._defer_to_batch(rec, action, facts, own_ref, ctr_ref):
            return False, None, None  # signed with the others due on its chain, after the tick
        txs = self._sign(rec, action, facts, own_ref, ctr_ref)
        self._transition(rec, action.to, action.reason, [t.txid for t in txs])
        # A signature is not on chain yet: the facts read before it still describe it (an
        # unsent own lock is absent), and re-reading them would look up an unknown txid.
        # Signing took time, though (fee and gas estimates): the clocks are read again, so
        # a deadline passed meanwhile stops the broadcast.
        return True, (read[0], None), None

    def _abort_unread(self, rec: StoredSwap, exc: Exception) -> bool:
        """The chains could not be read for ``rec`` (``exc``). A swap in which nothing of ours
        is committed (no lock of ours signed) is aborted once its own lock deadline has passed
        on the own chain's clock, whatever else fails to read: the deadline abort must not
        depend on reading (or building) the counterparty's HTLC. Returns whether it aborted.
        No evidence is recorded: the counterparty's lock could not be looked at."""
        if rec.state not in (State.PROPOSED, State.ACCEPTED, State.COUNTER_AUDITED):
            return False
        if self.journal.txs(rec.swap_id, TxKind.LOCK):
            return False
        view = self._view(rec)
        try:
            clock = self.adapters[view.own_leg.chain].expiry_now()
        except Exception:  # the own chain's clock is unreadable too: nothing to decide on
            return False
        deadline = view.own_lock_by
        if type(clock) is not type(deadline) or clock.value < deadline.value:
            return False
        self._transition(
            rec,
            State.ABORTED,
            f"own lock deadline {deadline} passed with the chains unreadable "
            f"({type(exc).__name__}); nothing of ours was locked",
        )
        return True

    def _after_sent(self, rec: StoredSwap, kind: TxKind, txids: list[str]) -> None:
        view = SwapRecord(rec.swap_id, rec.role, rec.terms, rec.state, False)
        if kind is TxKind.LOCK:
            own = view.own_leg.htlc(rec.terms.payment_hash)
            lock = self._lock_tx(rec)
            assert lock is not None, "a lock was sent, so it is stored"
            ref = self.adapters[own.chain].htlc_ref(own, lock)
            self._send_notice(rec, Locked(rec.swap_id, ref.locator, ref.lock_txid, own))
        elif kind is TxKind.REDEEM:
            self._send_notice(rec, Redeemed(rec.swap_id, view.counter_leg.chain, txids[-1]))
        else:
            self._send_notice(rec, Refunded(rec.swap_id, view.own_leg.chain, txids[-1]))

    def drive(self, swap_id: bytes, max_steps: int = 64) -> State:
        """Step the swap until it waits; any failure (a chain error, a malformed answer from a
        node, a bug) leaves it for the next tick and never reaches the caller, which drives the
        other swaps (a swap's failure must not stop the watchtower for the others)."""
        return self._drive(swap_id, max_steps)[0]

    def _drive(self, swap_id: bytes, max_steps: int = 64) -> tuple[State, bool]:
        """:meth:`drive`; also whether the swap ended waiting (not failing, not out of steps)."""
        seen: _Seen | None = None
        waits = False
        for _ in range(max_steps):
            try:
                go_on, seen = self._step(swap_id, seen)
                if not go_on:
                    waits = True
                    break
            except Exception as exc:
                # Not only KOFO's errors: a node answering NaN or a string where a number was
                # due raises whatever the parser raises. The message names the failure; no
                # exception raised here carries a secret (errors.py), so it is safe to log.
                log.warning(
                    "swap %s: %s: %s (will retry)", swap_id.hex()[:8], type(exc).__name__, exc
                )
                break
        try:
            return self.journal.get(swap_id).state, waits
        except KofoError:
            return State.REJECTED, False

    def resume(self, should_stop: Callable[[], bool] | None = None) -> None:
        """At start: re-send every journaled transaction the machine wants sent *before* any new
        signature, so no freshly signed transaction can take a stored one's nonce.
        ``should_stop`` is asked between swaps (a node stopped during its start): the rest
        are re-sent at the next start, or by :meth:`tick`."""
        for rec in self.journal.swaps(unfinished=True):
            if should_stop is not None and should_stop():
                log.info("resume stopped before swap %s", rec.swap_id.hex()[:8])
                return
            try:
                chains = self._chains(rec.terms)
                with self._observing(chains):
                    facts, *_ = self.facts(rec)
                action = next_action(self._view(rec), facts, self.now(chains))
                if action.kind is ActionKind.BROADCAST and action.tx_kind is not None:
                    self._broadcast(rec, action.tx_kind)
            except Exception as exc:  # one swap's failure never stops the others' resume
                log.warning(
                    "swap %s: resume broadcast failed: %s: %s",
                    rec.swap_id.hex()[:8],
                    type(exc).__name__,
                    exc,
                )

    def tick(self) -> int:
        """Drive every unfinished swap once; returns how many are still unfinished. A swap
        failing (any exception) is logged by :meth:`drive` and the others are still driven.

        A swap waiting for its counterparty before anything of ours is locked (an accept, or
        the initiator's lock) is skipped while neither of its chains has a new block and no
        message came for it: nothing it waits for can have happened, so the proposals a peer
        leaves open cost a tick one head read per chain, not a search each."""
        self._tick_budget.until = time.monotonic() + self.peer_wait_per_tick
        try:
            return self._tick()
        finally:
            self._tick_budget.until = None

    def _tick(self) -> int:
        open_swaps = self.journal.swaps(unfinished=True)
        tips: dict[str, str] = {}
        for name in {c for rec in open_swaps for c in self._chains(rec.terms)}:
            try:
                tips[name] = self.adapters[name].tip().hash
            except Exception as exc:  # its swaps are driven (and fail) as usual
                log.warning("chain %s: head not read: %s: %s", name, type(exc).__name__, exc)
        self._due = {}  # redeems and refunds due on chains that batch (_defer_to_batch)
        try:
            self._drive_open(open_swaps, tips)
        finally:
            due, self._due = self._due, None
        try:
            self._sign_batches(due)
        except Exception as exc:  # each swap then signs alone in its drive below
            log.warning("batches not signed: %s: %s", type(exc).__name__, exc)
        for items in due.values():
            for d in items:
                self._drive(d.swap_id)  # broadcast the batch, or sign alone
        live = {rec.swap_id for rec in self.journal.swaps(unfinished=True)}
        for table in (self._idle, self._touched):
            for sid in [sid for sid in table if sid not in live]:
                table.pop(sid, None)
        return len(live)

    def _drive_open(self, open_swaps: list[StoredSwap], tips: Mapping[str, str]) -> None:
        for rec in open_swaps:
            touched = self._touched.get(rec.swap_id, 0)  # before the drive: a message that
            key = self._idle_key(rec, rec.state, touched, tips)  # comes during it counts
            if key is not None and self._idle.get(rec.swap_id) == key:
                continue
            state, waits = self._drive(rec.swap_id)
            after = self._idle_key(rec, state, touched, tips) if waits else None
            if after is None:
                self._idle.pop(rec.swap_id, None)
            else:
                self._idle[rec.swap_id] = after

    def _sign_batches(self, due: dict[tuple[str, TxKind], list[_Due]]) -> None:
        """Sign one transaction for each group of redeems (refunds) that fell due in this tick
        on one chain whose adapter settles several HTLCs at once (:class:`BatchSettlement`).

        Each swap of a batch stores the one transaction as its own redeem (refund) and moves to
        its signed state as if it had signed it alone: its next step broadcasts it (a re-send
        of a known transaction is a no-op) and reads its outcome from its own HTLC, as for a
        single transaction; a replacement re-signs the same batch at a higher fee. A group of
        one, or a batch that cannot be signed, is signed by each swap's own step."""
        for (chain, kind), items in due.items():
            if len(items) < 2:
                continue
            adapter = self.adapters[chain]
            assert isinstance(adapter, BatchSettlement)
            with self._lock:
                try:
                    if kind is TxKind.REDEEM:
                        tx = adapter.prepare_redeem_many([(d.ref, d.preimage) for d in items])
                    else:
                        tx = adapter.prepare_refund_many([d.ref for d in items])
                except Exception as exc:
                    log.warning(
                        "%s: batch of %d %ss not signed (%s: %s); each signs alone",
                        chain,
                        len(items),
                        kind.value,
                        type(exc).__name__,
                        exc,
                    )
                    continue
                for d in items:
                    rec = self.journal.get(d.swap_id)
                    self.journal.store_txs(d.swap_id, kind, [tx])
                    self._transition(
                        rec, d.to, f"{d.reason} (in a batch of {len(items)})", [tx.txid]
                    )
            log.info("%s: %s of %d swaps in one transaction %s", chain, kind, len(items), tx.txid)

    def _defer_to_batch(
        self,
        rec: StoredSwap,
        action: Action,
        facts: ChainFacts,
        own_ref: HtlcRef | None,
        ctr_ref: HtlcRef | None,
    ) -> bool:
        """Inside a tick: keep a redeem (refund) due on a chain that batches for
        :meth:`_sign_batches` instead of signing it now. True if deferred."""
        if self._due is None or action.to is None:
            return False
        if action.kind is ActionKind.SIGN_REDEEM and ctr_ref is not None:
            kind, ref = TxKind.REDEEM, ctr_ref
        elif action.kind is ActionKind.SIGN_REFUND and own_ref is not None:
            kind, ref = TxKind.REFUND, own_ref
        else:
            return False
        if not isinstance(self.adapters[ref.terms.chain], BatchSettlement):
            return False
        if ref.terms.token is not None:
            # A token's payout can fail (a token paused or blocklisted by its owner, who may be
            # this swap's counterparty), and a failing payout reverts the whole batch: it would
            # hold back the other swaps' redeems until their counterparties could refund. An
            # ETH payout to this node's own account cannot fail, so only those are batched.
            return False
        if self.journal.txs(rec.swap_id, kind):
            return False
        preimage = self._redeem_preimage(rec, facts) if kind is TxKind.REDEEM else b""
        self._due.setdefault((ref.terms.chain, kind), []).append(
            _Due(rec.swap_id, action.to, action.reason, ref, preimage)
        )
        return True

    @staticmethod
    def _idle_key(
        rec: StoredSwap, state: State, touched: int, tips: Mapping[str, str]
    ) -> tuple[object, ...] | None:
        """What must change before a swap in ``state`` waiting on its counterparty can have
        something to do (see :meth:`tick`); ``None`` for a swap never skipped: one with
        anything of ours at stake, or whose awaited lock may count unconfirmed."""
        waits_on_peer = state is State.PROPOSED or (
            state is State.ACCEPTED
            and rec.role is Role.PARTICIPANT
            and rec.terms.initiator_leg.confirmations >= 1
        )
        chains = SwapEngine._chains(rec.terms)
        if not waits_on_peer or any(c not in tips for c in chains):
            return None
        return (state, touched, *(tips[c] for c in chains))

    def unfinished(self) -> list[StoredSwap]:
        return self.journal.swaps(unfinished=True)

    def terms_of(self, swap_id: bytes) -> SwapTerms:
        return self.journal.get(swap_id).terms
