"""The trade pipeline core: a co-signed settlement order -> committed on the ledger -> swap.

The node composes the layers here (DESIGN.md section 4); it holds no protocol logic of its own:

1. the taker submits ``commit_order`` through :class:`~kofo.node.ledger_client.LedgerClient`
   (``commit`` looks the tx up by hash first, so a retry never sends it twice) and waits until
   it is in a block (height);
2. each party reads the **committed** order back from the ledger (``/order``): the order on the
   ledger is the single source of truth for amounts, payment hash, addresses and expiries;
3. the taker (the first leg's sender, holder of the secret) starts the swap engine as
   initiator from the order's legs (:meth:`SwapEngine.propose_fixed`: the order's expiries are
   kept, the lock/redeem deadlines laid out from the engine's margins); the maker is the
   participant, and its engine's accept policy (:meth:`TradePipeline.accept_policy`) accepts
   exactly the terms derived from a committed order it is party to and that equals the order it
   co-signed (what it quoted). Nothing locks before the commit is seen.

Each phase is journaled in ``trades.sqlite`` (0600) before its side effect: ``signed`` (the
order this node co-signed), ``submitted`` (the commit tx's hash), ``committed`` (height),
``swap_started``.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from kofo.errors import KofoError
from kofo.exchange.route import LEG_EXPIRY_STEP_S, LOCK_WINDOW_S, OrderTimes
from kofo.node.ledger_client import LedgerClient, LedgerError, LedgerRefused, tx_hash
from kofo.private_files import check_private_file
from kofo.settlement.chain import HtlcState
from kofo.settlement.engine import SwapEngine
from kofo.settlement.journal import UnknownSwap
from kofo.settlement.swap import State
from kofo.settlement.terms import (
    ACCEPT_WINDOW_SECONDS,
    ChainPolicy,
    SwapTerms,
    TermsRefused,
    check_terms_as_participant,
    propose_terms,
)
from kofo.wire.codec import decode, encode
from kofo.wire.envelope import public_key_bytes, read_message
from kofo.wire.expiry import BlockHeight, Expiry, UnixTime
from kofo.wire.orders import CommitOrder, Leg, SettlementOrder, parse_tx_body
from kofo.wire.swap import Accept, Error, Propose, SwapBody
from kofo.wire.terms import Leg as EngineLeg

log = logging.getLogger("kofo.node.trades")

PHASES = ("signed", "submitted", "committed", "swap_started")


class TradeRefused(KofoError):
    """This node will not act on an order (not party to it, not what it quoted, refused by the
    ledger, expiries that do not fit the chains): nothing was locked."""

    code = "trade_refused"


class NotCommitted(TradeRefused):
    """The ledger (this node's validator) does not show the order committed: not yet, or never."""


VALIDATOR_LAG_S = 5.0
"""Seconds a maker keeps re-reading an order its taker's proposal says is committed while its
own validator does not show it. The validators of one CometBFT network commit a height within
moments of each other, but the taker may read the commit from a validator that applied the
block before the maker's did (a block at most apart, on a loaded machine up to seconds), and
a refusal is final (the taker gives the committed trade up). Well within the direct message's
30 s answer budget; an order that is truly not committed is still refused, only later (and
the proposals that could make a maker wait are rate-limited per node by the engine)."""
LAG_POLL_S = 0.25


class LedgerNotYet(KofoError):
    """The maker could not read the order from the ledger now (unreachable, slow): not a
    refusal. Sent back as the proposal's answer (code ``ledger_not_yet``); the taker keeps its
    swap proposed and asks again."""

    code = "ledger_not_yet"
    retryable = True


class ProposalNotYet(KofoError):
    """The maker answered the proposal "not yet" (its ledger read failed): asked again later;
    nothing changed on either side."""

    code = "proposal_not_yet"
    retryable = True


NOT_YET_CODES = frozenset({LedgerNotYet.code})
"""Error codes in a proposal's answer that mean "ask again", never a refusal."""


class OrderUnfit(TradeRefused):
    """An order leg's expiry is not in its chain's unit (Bitcoin-like chains: block heights;
    Ethereum: unix time): the engine cannot lock it as written."""

    code = "order_unfit"


# -- the phase journal ---------------------------------------------------------------------------


class PhaseJournal:
    """One SQLite file (0600): per order, this node's role, the order it co-signed and each
    phase reached, written before the phase's side effect (idempotent: a phase is recorded
    once, with its first detail)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        if not self.path.exists():
            self.path.touch(mode=0o600)
        check_private_file(self.path)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS orders (order_id BLOB PRIMARY KEY, role TEXT NOT NULL, "
            "order_cbor BLOB NOT NULL)"
        )
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS phases (order_id BLOB NOT NULL, phase TEXT NOT NULL, "
            "detail BLOB NOT NULL, at REAL NOT NULL, PRIMARY KEY (order_id, phase))"
        )

    def close(self) -> None:
        self._db.close()

    def record_order(self, order: SettlementOrder, role: str) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO orders VALUES (?,?,?)",
                (order.order_id, role, encode(order.as_map())),
            )

    def order(self, order_id: bytes) -> tuple[str, SettlementOrder] | None:
        with self._lock:
            row = self._db.execute(
                "SELECT role, order_cbor FROM orders WHERE order_id=?", (order_id,)
            ).fetchone()
        if row is None:
            return None
        return str(row[0]), SettlementOrder.from_map(decode(bytes(row[1])))

    def record(self, order_id: bytes, phase: str, detail: dict[str, object] | None = None) -> None:
        if phase not in PHASES:
            raise ValueError(f"unknown phase {phase!r}")
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO phases VALUES (?,?,?,?)",
                (order_id, phase, encode(detail or {}), time.time()),
            )

    def phase(self, order_id: bytes, phase: str) -> dict[str, object] | None:
        with self._lock:
            row = self._db.execute(
                "SELECT detail FROM phases WHERE order_id=? AND phase=?", (order_id, phase)
            ).fetchone()
        return None if row is None else dict(decode(bytes(row[0])))

    def phases(self, order_id: bytes) -> list[str]:
        with self._lock:
            rows = self._db.execute(
                "SELECT phase FROM phases WHERE order_id=? ORDER BY at", (order_id,)
            ).fetchall()
        return [str(r[0]) for r in rows]


# -- order legs -> engine legs --------------------------------------------------------------------


def fit_expiries(
    order: SettlementOrder,
    policies: Mapping[str, ChainPolicy],
    now: Mapping[str, Expiry],
    wall_now: int,
) -> tuple[Leg, ...]:
    """The composer's step (issue 14 item 7): each leg's ``expiry`` in its chain's own unit.

    A Bitcoin-like leg whose expiry is unix time gets the block height that surely comes no
    earlier than its ``expiry_time`` (``policy.to_units`` counts blocks at the fast end of the
    policy's rate tolerance); ``expiry_time`` stays the unix estimate the ledger orders legs by.
    The caller re-derives the order id (the id covers the content)."""
    legs = []
    for i, leg in enumerate(order.legs):
        policy = policies.get(leg.chain)
        if policy is None or leg.chain not in now:
            raise OrderUnfit(f"order legs[{i}]: chain {leg.chain!r} is not served here")
        if policy.height_clock and isinstance(leg.expiry, UnixTime):
            height = now[leg.chain].value + policy.to_units(leg.expiry_time - wall_now)
            leg = _replace_leg(leg, expiry=BlockHeight(height))
        legs.append(leg)
    return tuple(legs)


def _replace_leg(leg: Leg, **changes: object) -> Leg:
    return replace(leg, **changes)  # type: ignore[arg-type]


def engine_legs(
    order: SettlementOrder, policies: Mapping[str, ChainPolicy]
) -> tuple[EngineLeg, EngineLeg]:
    """The order's two legs as the engine's (initiator leg, participant leg): the first leg's
    sender is the initiator. Raises :class:`OrderUnfit` for a leg whose expiry is not in its
    chain's unit, and :class:`TradeRefused` for an order that is not a two-leg cycle."""
    if len(order.legs) != 2:
        raise TradeRefused(f"order {order.order_id.hex()}: {len(order.legs)} legs; only two-leg")
    out, back = order.legs
    if out.sender != back.recipient or out.recipient != back.sender:
        raise TradeRefused(f"order {order.order_id.hex()}: the two legs are not one cycle")
    legs = []
    for i, leg in enumerate(order.legs):
        policy = policies.get(leg.chain)
        if policy is None:
            raise OrderUnfit(f"order legs[{i}]: chain {leg.chain!r} is not served here")
        want = BlockHeight if policy.height_clock else UnixTime
        if not isinstance(leg.expiry, want):
            raise OrderUnfit(
                f"order legs[{i}] ({leg.chain}): expiry {leg.expiry} is not in the chain's "
                f"unit ({want.__name__}); the order's expiries must be derived per chain"
            )
        legs.append(
            EngineLeg(
                chain=leg.chain,
                amount=leg.amount,
                sender=leg.sender_address,
                recipient=leg.recipient_address,
                expiry=leg.expiry,
                token=leg.token,
            )
        )
    return legs[0], legs[1]


def plan_order_times(
    policies: Mapping[str, ChainPolicy],
    have_chain: str,
    want_chain: str,
    now_s: int,
    *,
    lock_window_s: int = LOCK_WINDOW_S,
    accept_window_s: int = ACCEPT_WINDOW_SECONDS,
    leg_expiry_step_s: int = LEG_EXPIRY_STEP_S,
) -> OrderTimes:
    """The taker's plan of a routed order's deadlines for the chain pair (the exchange's
    ``plan_times``; link protocol v4), in unix seconds from the order's time ``t``: the
    layout :func:`propose_terms` gives the swap, made to hold for a proposal made any time
    before the taker's lock deadline, so the maker's engine (and its guard,
    :func:`check_order_as_maker`) finds its margins in the order once each leg is fitted to
    its chain (``expiry_fit``). Chain 1 is ``have`` (the taker's leg), chain 2 ``want`` (the
    maker's):

    * ``legs[0].lock_by``: ``t + LOCK_WINDOW_S``; the proposal comes before it (after the
      ledger commit), and each chain may advance by ``to_units(LOCK_WINDOW_S)`` meanwhile;
    * ``legs[1].lock_by``: + the taker's lock buried, blocks at their slowest, and seen: the
      maker locks only then, and the ledger would penalise it for a later lock;
    * ``T_B`` (``legs[1]``): chain 2's progress before the proposal + the engine's layout from
      the proposal (accept window, chain 1 settle + notice, chain 2 settle + notice, chain 2
      settle), and at least ``legs[1].lock_by`` + chain 2's settle + notice + settle, in chain
      2's units as the engine counts them;
    * ``T_A`` (``legs[0]``): ``T_B`` at its slowest + the maker's margin (``notice(c2) +
      settle(c1)``) reached by chain 1's units at their fastest, plus chain 1's progress before
      the proposal; at least ``LEG_EXPIRY_STEP_S`` after ``T_B`` (the ledger's default
      ``min_expiry_gap``).

    ``lock_window_s``, ``accept_window_s`` and ``leg_expiry_step_s`` are the network's timing
    (``[timing]``; the production constants by default, a devnet's own with
    ``kofo devnet --fast-timing``): ``LOCK_WINDOW_S``, ``ACCEPT_WINDOW_SECONDS`` and
    ``LEG_EXPIRY_STEP_S`` above stand for them."""
    for chain in (have_chain, want_chain):
        if chain not in policies:
            raise OrderUnfit(f"chain {chain!r} is not served here: no plan for it")
    p1, p2 = policies[have_chain], policies[want_chain]

    def units(p: ChainPolicy, seconds: int) -> int:
        """The chain units the fit gives for ``seconds`` from now (``fit_expiries``)."""
        return p.to_units(seconds) if p.height_clock else seconds

    def seconds_for(p: ChainPolicy, want_units: int) -> int:
        """The fewest seconds from now the fit turns into at least ``want_units``."""
        if not p.height_clock:
            return want_units
        s = p.early_seconds(want_units)
        while units(p, s) < want_units:
            s += 1
        return s

    out_lock = lock_window_s
    blocks1 = p1.inclusion_blocks + p1.confirmations
    buried1 = p1.late_seconds(blocks1) if p1.height_clock else p1.late_seconds(p1.settle_seconds())
    back_lock = out_lock + max(buried1, p1.settle_seconds()) + p1.notice_seconds
    layout = (
        accept_window_s
        + p1.settle_seconds()
        + p1.notice_seconds
        + 2 * p2.settle_seconds()
        + p2.notice_seconds
    )
    # ... and from the maker's lock deadline on the ledger: the taker's reveal and its redeem
    # buried on chain 2 still fit before T_B after a maker lock at that deadline.
    after_lock = back_lock + 2 * p2.settle_seconds() + p2.notice_seconds
    units_b = max(p2.to_units(lock_window_s) + p2.to_units(layout), p2.to_units(after_lock))
    t_b = seconds_for(p2, units_b)
    need = p2.late_seconds(units(p2, t_b)) + p2.notice_seconds + p1.settle_seconds()
    units_a = p1.to_units(need)
    while p1.early_seconds(units_a) < need:
        units_a += 1
    t_a = seconds_for(p1, units_a + p1.to_units(lock_window_s))
    t_a = max(t_a, t_b + leg_expiry_step_s)
    return now_s + out_lock, now_s + back_lock, now_s + t_b, now_s + t_a


def check_order_as_maker(
    order: SettlementOrder,
    policies: Mapping[str, ChainPolicy],
    now: Mapping[str, Expiry],
    *,
    maker_node: bytes,
    accept_window_s: int = ACCEPT_WINDOW_SECONDS,
) -> None:
    """The maker's check before it co-signs a routed order (the exchange's ``order_guard``,
    role ``"provider"``): the swap its engine will be asked to accept for this order is safe
    for it. Raises :class:`TermsRefused` (the engine's code) or :class:`TradeRefused`.

    The exchange's per-leg ``expiry_check`` judges each height alone, within a tolerance of
    the maker's own fit; it cannot see the gap between the two legs, which is what keeps the
    maker whole (its leg must expire, at the slowest, its margin before the taker's leg can,
    at the fastest). A height within tolerance on each leg can break that gap, and an order
    the maker signs but its engine refuses still binds it on the ledger (``leg_not_locked``
    once the taker locks). So the maker lays out the terms the taker's engine proposes for
    the order (``propose_fixed``: the order's expiries, lock and redeem deadlines from the
    policies) and runs the engine's own participant check on them, from ``now`` (cached chain
    tips: the hook must answer from memory)."""
    a, b = engine_legs(order, policies)
    if order.legs[1].sender != maker_node:
        raise TradeRefused(f"order {order.order_id.hex()}: this node is not its maker")
    for leg in (a, b):
        if leg.chain not in now:
            raise TermsRefused(f"chain {leg.chain!r} is not served here", code="terms_chain")
    # The ledger's deadline for the maker's lock: it locks only once the taker's lock is
    # buried and seen, so a taker planning it sooner would get the maker penalised.
    out, back = order.legs
    p1 = policies[a.chain]
    wait = p1.settle_seconds() + p1.notice_seconds
    if back.lock_by - out.lock_by < wait:
        raise TermsRefused(
            f"order legs[1].lock_by {back.lock_by} leaves {back.lock_by - out.lock_by} s after "
            f"legs[0].lock_by; this node locks only after the {a.chain} lock is buried and seen "
            f"({wait} s)",
            code="terms_deadline_order",
        )
    laid = propose_terms(
        swap_id=order.order_id,
        payment_hash=order.payment_hash,
        initiator_leg=a,
        participant_leg=b,
        policies=policies,
        now=now,
        initiator_node=order.legs[0].sender,
        participant_node=maker_node,
        accept_window=accept_window_s,
    )
    terms = replace(
        laid,
        initiator_leg=replace(laid.initiator_leg, expiry=a.expiry),
        participant_leg=replace(laid.participant_leg, expiry=b.expiry),
    )
    check_terms_as_participant(
        terms, policies, now, my_address={a.chain: a.recipient, b.chain: b.sender}
    )


def maker_terms(
    order: SettlementOrder,
    policies: Mapping[str, ChainPolicy],
    now: Mapping[str, Expiry],
    *,
    maker_node: bytes,
    wall_now: int,
) -> SwapTerms:
    """The swap terms the maker's engine runs for a committed ``order`` that no proposal
    brought (:meth:`TradePipeline.start_as_maker`): the legs, hash, nodes and expiries of the
    order, the deadlines laid out from ``now`` as the taker's engine would, and the maker's
    own lock deadline no later than the order's ``legs[1].lock_by`` (on a height-clocked
    chain, the last height that comes before it even at the slowest block rate), so the
    maker's engine never locks later than the ledger judges. Raises :class:`TermsRefused`
    when that deadline has passed."""
    a, b = engine_legs(order, policies)
    laid = propose_terms(
        swap_id=order.order_id,
        payment_hash=order.payment_hash,
        initiator_leg=a,
        participant_leg=b,
        policies=policies,
        now=now,
        initiator_node=order.legs[0].sender,
        participant_node=maker_node,
    )
    p2 = policies[b.chain]
    left = order.legs[1].lock_by - wall_now
    if left <= 0:
        raise TermsRefused(
            f"order {order.order_id.hex()}: legs[1].lock_by {order.legs[1].lock_by} has passed",
            code="terms_deadline_passed",
        )
    if p2.height_clock:
        units = p2.to_units(left)
        while units > 0 and p2.late_seconds(units) > left:
            units -= 1
        by: Expiry = BlockHeight(now[b.chain].value + units)
    else:
        by = UnixTime(order.legs[1].lock_by)
    lock_b = laid.participant_lock_by if laid.participant_lock_by.value <= by.value else by
    # The initiator's reveal deadline is laid from now, and a maker that saw the lock late
    # would find it past T_B and refuse terms it must honour: it is only the initiator's
    # bound, so it is kept within the order's T_B less a redeem's settling (never before our
    # own lock deadline).
    room = b.expiry.value - p2.to_units(p2.settle_seconds())
    redeem_a = min(laid.initiator_redeem_by.value, max(lock_b.value, room))
    return replace(
        laid,
        initiator_leg=replace(laid.initiator_leg, expiry=a.expiry),
        participant_leg=replace(laid.participant_leg, expiry=b.expiry),
        participant_lock_by=lock_b,
        initiator_redeem_by=p2.expiry(redeem_a),
    )


# -- the pipeline -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Committed:
    order: SettlementOrder
    height: int
    status: str


class TradePipeline:
    """One node's trades from co-signed order to swap (see the module docstring).

    ``send(swap_id, body)`` delivers a swap message to the counterparty and returns its reply
    (the engine's ``request`` transport)."""

    def __init__(
        self,
        *,
        ledger: LedgerClient,
        engine: SwapEngine,
        node_key: Ed25519PrivateKey,
        phases: PhaseJournal,
        send: Callable[[bytes, SwapBody], SwapBody | None] | None = None,
        commit_timeout: float = 30.0,
        crash: Callable[[str], None] = lambda _point: None,
        accept_window_s: int = ACCEPT_WINDOW_SECONDS,
    ) -> None:
        self.crash = crash  # fault injection (tests): the engine's CrashHook.hit
        self.accept_window_s = accept_window_s  # the network's ([timing]) proposal window
        self.ledger = ledger
        self.engine = engine
        self.node_id = public_key_bytes(node_key)
        self.phases = phases
        self.send = send
        self.commit_timeout = commit_timeout

    # -- both roles ------------------------------------------------------------------------------

    def expect(self, order: SettlementOrder) -> None:
        """Record the order this node co-signed (what it quoted or proposed), before the
        signature leaves: the committed order must equal it."""
        role = self._role(order)
        self.phases.record_order(order, role)
        self.phases.record(order.order_id, "signed")

    def committed(self, order_id: bytes) -> Committed:
        """The order as the ledger committed it; :class:`TradeRefused` if it is not there."""
        try:
            raw = self.ledger.abci_query("/order", encode(order_id))
        except LedgerRefused as exc:
            kind = NotCommitted if exc.code == "not_found" else TradeRefused
            raise kind(f"order {order_id.hex()} is not committed on the ledger: {exc.log}") from exc
        rec = decode(raw)
        order = SettlementOrder.from_map(rec["order"])
        if order.order_id != order_id:
            raise TradeRefused(
                f"the ledger answered order {order.order_id.hex()} for {order_id.hex()}"
            )
        return Committed(order, int(rec.get("height", 0)), str(rec.get("status", "")))

    def _role(self, order: SettlementOrder) -> str:
        if len(order.legs) != 2:
            raise TradeRefused(f"order {order.order_id.hex()}: only two-leg orders are traded")
        if order.legs[0].sender == self.node_id:
            return "taker"
        if order.legs[1].sender == self.node_id:
            return "maker"
        raise TradeRefused(f"order {order.order_id.hex()}: this node sends no leg of it")

    def _check_against_signed(self, committed: SettlementOrder) -> str:
        mine = self.phases.order(committed.order_id)
        if mine is None:
            raise TradeRefused(
                f"order {committed.order_id.hex()} is committed but this node never co-signed it"
            )
        role, signed = mine
        if committed != signed:
            raise TradeRefused(
                f"committed order {committed.order_id.hex()} differs from what this node signed"
            )
        return role

    # -- the taker --------------------------------------------------------------------------------

    def submit(self, commit_tx: bytes, *, preimage: bytes | None = None) -> int:
        """Commit the co-signed order (a signed ``commit_order`` tx); returns its height.

        Journals ``submitted`` (the tx hash) before the broadcast; ``LedgerClient.commit``
        looks the hash up first, so calling this again (a retry, a restart) never sends twice.
        A refusal by the ledger raises :class:`TradeRefused` and starts nothing. The taker
        passes its ``preimage``: it is kept in the swap journal (with the engine's other
        secrets) before the order is sent, so a restart after the commit can start the swap."""
        env = read_message(commit_tx).envelope
        body = parse_tx_body(env.type, env.body)
        if not isinstance(body, CommitOrder):
            raise TradeRefused(f"a {env.type} tx is not a commit_order")
        order = body.order
        if self.phases.order(order.order_id) is None:
            self.expect(order)
        done = self.phases.phase(order.order_id, "committed")
        if done is not None:
            return int(str(done["height"]))
        if preimage is not None:
            if hashlib.sha256(preimage).digest() != order.payment_hash:
                raise TradeRefused(f"order {order.order_id.hex()}: the preimage is not its hash's")
            self.engine.journal.store_preimage(order.order_id, preimage)
        digest = tx_hash(commit_tx)
        self.phases.record(order.order_id, "submitted", {"tx": digest})
        self.crash("trade_submitted")
        try:
            included = self.ledger.commit(commit_tx, timeout=self.commit_timeout)
        except LedgerRefused as exc:
            log.warning("order %s refused by the ledger: %s", order.order_id.hex(), exc.log)
            raise TradeRefused(
                f"order {order.order_id.hex()} refused by the ledger ({exc.code}): {exc.log}"
            ) from exc
        self.phases.record(order.order_id, "committed", {"height": included.height})
        log.info("order %s committed at height %d", order.order_id.hex(), included.height)
        return included.height

    def start_as_taker(self, order_id: bytes, preimage: bytes | None = None) -> SwapTerms:
        """After the commit: read the committed order back, start the engine as initiator
        from its legs, propose to the maker and record its accept. The secret is the one
        journaled by :meth:`submit` unless given."""
        if preimage is None:
            preimage = self.engine.journal.preimage(order_id)
            if preimage is None:
                raise TradeRefused(f"order {order_id.hex()}: no secret journaled for it")
        com = self.committed(order_id)
        role = self._check_against_signed(com.order)
        if com.status != "committed" and self.phases.phase(order_id, "swap_started") is None:
            raise TradeRefused(f"order {order_id.hex()} is {com.status} on the ledger: no swap")
        if role != "taker":
            raise TradeRefused(f"order {order_id.hex()}: this node is not its taker")
        self.phases.record(order_id, "committed", {"height": com.height})
        a, b = engine_legs(com.order, self.engine.policies)
        terms = self.engine.propose_fixed(
            a,
            b,
            swap_id=order_id,
            preimage=preimage,
            participant_node=com.order.legs[1].sender,
            accept_window=self.accept_window_s,
        )
        self.phases.record(order_id, "swap_started")
        state = self.engine.journal.get(order_id).state
        if self.send is not None and state is State.PROPOSED:
            reply = self.send(order_id, Propose(terms))
            if isinstance(reply, Accept):
                self.engine.handle(reply, com.order.legs[1].sender)
            elif isinstance(reply, Error) and reply.code in NOT_YET_CODES:
                # not a refusal: the maker's ledger read failed; the swap stays proposed
                log.info("order %s: the maker says not yet: %s", order_id.hex(), reply.message)
                raise ProposalNotYet(
                    f"order {order_id.hex()}: the maker cannot read the order yet: {reply.message}"
                )
            elif isinstance(reply, Error):
                log.warning(
                    "order %s: the maker refused: %s %s", order_id.hex(), reply.code, reply.message
                )
                self.engine.handle(reply, com.order.legs[1].sender)
                raise TradeRefused(
                    f"order {order_id.hex()}: the maker refused ({reply.code}): {reply.message}"
                )
        return terms

    # -- the maker --------------------------------------------------------------------------------

    def watch_commit(self, order_id: bytes, *, lag_s: float = 0.0) -> Committed:
        """The maker's step once the order is committed: read it back from the ledger and check
        it equals what this node co-signed. From then on (and only then) the accept policy
        accepts the taker's proposal for it. ``lag_s``: seconds to keep re-reading an order
        the ledger does not show yet (:data:`VALIDATOR_LAG_S`, for a proposal that says it is
        committed), then :class:`TradeRefused` as without; only for an order this node
        co-signed as its maker (a proposal for any other order makes it wait for nothing)."""
        mine = self.phases.order(order_id)
        if mine is None or mine[0] != "maker":
            lag_s = 0.0
        deadline = time.monotonic() + lag_s
        while True:
            try:
                com = self.committed(order_id)
                break
            except NotCommitted:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(LAG_POLL_S)
        role = self._check_against_signed(com.order)
        if com.status != "committed":
            raise TradeRefused(f"order {order_id.hex()} is {com.status} on the ledger: no swap")
        if role != "maker":
            raise TradeRefused(f"order {order_id.hex()}: this node is not its maker")
        self.phases.record(order_id, "committed", {"height": com.height})
        return com

    def start_as_maker(self, order_id: bytes) -> SwapTerms | None:
        """The maker acts from the committed order itself, with or without a proposal.

        A taker may lock its leg (the HTLC is fixed by the order) and never propose, or
        propose late; the ledger's ``leg_not_locked`` would then blame the maker, whose engine
        never heard of the swap. So once the order is seen committed (``watch_commit``) and no
        swap for it is in this node's engine, the maker looks for leg 0's lock on its own view
        of the chain (the order's full terms); when it is there, the engine accepts the terms
        derived from the order (:func:`maker_terms`: the order's expiries, the maker's lock
        deadline no later than ``legs[1].lock_by``) and locks leg 1 as for any proposal.
        Returns those terms, or None (a swap exists, the order is not seen committed, or leg
        0 is not locked yet). Raises :class:`TermsRefused` when the order can no longer be
        started (``legs[1].lock_by`` passed, margins gone)."""
        try:
            self.engine.journal.get(order_id)
            return None  # the proposal came (or we started before): the engine drives it
        except UnknownSwap:
            pass
        if self.phases.phase(order_id, "committed") is None:
            return None
        found = self.phases.order(order_id)
        if found is None or found[0] != "maker":
            return None
        order = found[1]
        a, b = engine_legs(order, self.engine.policies)
        adapter = self.engine.adapters[a.chain]
        ref = adapter.find_htlc(a.htlc(order.payment_hash))
        if ref is None:
            return None
        status = adapter.status(ref)
        if status.state is not HtlcState.LOCKED:
            return None
        tip = adapter.tip().height
        lock_height = tip - status.confirmations + 1 if status.confirmations else tip
        now = self.engine.now((a.chain, b.chain))
        terms = maker_terms(
            order, self.engine.policies, now, maker_node=self.node_id, wall_now=int(time.time())
        )
        log.warning(
            "order %s: the taker locked leg 0 without a proposal; locking leg 1 from the "
            "committed order",
            order_id.hex(),
        )
        self.engine.accept(terms, scan_from={a.chain: lock_height})
        return terms

    def accept_policy(self, terms: SwapTerms) -> None:
        """The maker's engine policy: accept exactly the terms derived from a committed order
        this node is the maker of and that equals the order it co-signed. Every refusal is
        logged with its reason."""
        try:
            self._check_proposal(terms)
        except TermsRefused as exc:
            log.warning("swap %s refused: %s", terms.swap_id.hex(), exc)
            raise

    def _check_proposal(self, terms: SwapTerms) -> None:
        oid = terms.swap_id
        if self.phases.phase(oid, "committed") is None:
            # not yet seen committed: ask the ledger now (the proposal may beat our watcher)
            try:
                self.watch_commit(oid, lag_s=VALIDATOR_LAG_S)
            except LedgerError as exc:
                if isinstance(exc, LedgerRefused):
                    raise TermsRefused(
                        f"order {oid.hex()}: not seen committed on the ledger ({exc})",
                        code="terms_not_offered",
                    ) from exc
                # No answer is no refusal: "not yet", while the order may still start (its
                # taker's lock deadline is ahead); only a definite answer, or that deadline
                # passed, refuses.
                mine = self.phases.order(oid)
                if (
                    mine is not None
                    and mine[0] == "maker"
                    and time.time() < mine[1].legs[0].lock_by
                ):
                    raise LedgerNotYet(
                        f"order {oid.hex()}: the ledger did not answer ({exc.code}); ask again"
                    ) from exc
                raise TermsRefused(
                    f"order {oid.hex()}: not seen committed on the ledger ({exc})",
                    code="terms_not_offered",
                ) from exc
            except KofoError as exc:
                raise TermsRefused(
                    f"order {oid.hex()}: not seen committed on the ledger ({exc})",
                    code="terms_not_offered",
                ) from exc
        mine = self.phases.order(oid)
        if mine is None or mine[0] != "maker":
            raise TermsRefused(
                f"order {oid.hex()}: this node is not its maker", code="terms_not_offered"
            )
        order = mine[1]
        try:
            a, b = engine_legs(order, self.engine.policies)
        except TradeRefused as exc:
            raise TermsRefused(str(exc), code="terms_not_offered") from exc
        checks = (
            ("payment_hash", terms.payment_hash, order.payment_hash),
            ("initiator_node", terms.initiator_node, order.legs[0].sender),
            ("participant_node", terms.participant_node, self.node_id),
        )
        for name, got, want in checks:
            if got != want:
                raise TermsRefused(
                    f"order {oid.hex()}: {name} differs from the committed order",
                    code="terms_not_offered",
                )
        for name, got_leg, want_leg in (
            ("initiator_leg", terms.initiator_leg, a),
            ("participant_leg", terms.participant_leg, b),
        ):
            for field in ("chain", "token", "amount", "sender", "recipient", "expiry", "output"):
                if getattr(got_leg, field) != getattr(want_leg, field):
                    raise TermsRefused(
                        f"order {oid.hex()}: {name}.{field} {getattr(got_leg, field)!r} differs "
                        f"from the committed order's {getattr(want_leg, field)!r}",
                        code="terms_not_offered",
                    )
