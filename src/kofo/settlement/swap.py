"""The coordination standard: a two-party swap as an explicit state machine.

:func:`next_action` is pure: given the persisted :class:`SwapRecord`, what the chains say now
(:class:`ChainFacts`) and each chain's own clock, it returns the one :class:`Action` to take. It
reads no clock, does no I/O and keeps no state, so every decision can be replayed and
property-tested. The engine (``kofo.settlement.engine``) performs the action and journals the
transition it names.

Both roles share the state names; *own leg* is the HTLC this node locks, *counter leg* the one
it is paid by. The initiator's own leg is the initiator leg; the participant's is the
participant leg. The full table, with deadlines and timeout paths, is in ``docs/swap.md``.

Safety rules the function never breaks (``tests/swap/test_state_machine.py`` checks them for any
state and any facts):

1. no lock is signed or broadcast once the own chain's clock reaches this role's ``lock_by``;
2. the participant locks only after the initiator's lock is on chain with its confirmations;
3. the initiator reveals the secret (signs or broadcasts its redeem, or shows it to the
   participant to have a cooperative claim co-signed) only before ``initiator_redeem_by`` on the
   participant's chain, unless the secret is already public -- or already shown
   (``secret_shared``): then holding back its redeem would only help the participant;
4. a refund is signed only once the own chain's clock has reached the own leg's expiry;
5. a redeem or refund is fee-bumped (replaced, or paid for by a child) only where it would be
   (re-)sent, and only once a version of it was sent: a bump never reveals the secret where a
   first send would not. A lock is bumped (a child paying for it) only while it waits
   unconfirmed and before ``lock_by`` (rule 1);
6. once a lock of ours was signed, the swap ends only in a state that leaves nothing of ours
   on chain: ``aborted`` only once that lock can never be mined (``lock_dead``); until then a
   late lock is watched for, and refunded.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

from kofo.settlement.chain import Expiry, HtlcState, TxKind
from kofo.settlement.terms import Leg, SwapTerms


class Role(enum.StrEnum):
    INITIATOR = "initiator"
    PARTICIPANT = "participant"


class State(enum.StrEnum):
    PROPOSED = "proposed"  # initiator: proposal sent, waiting for accept
    ACCEPTED = "accepted"  # both agreed on terms (the participant starts here)
    COUNTER_AUDITED = "counter_audited"  # the counter leg is locked, buried and matches terms
    LOCK_SIGNED = "lock_signed"  # own lock signed and journaled, maybe not yet broadcast
    LOCK_SENT = "lock_sent"  # own lock broadcast, waiting for confirmations
    LOCKED = "locked"  # own lock buried
    REDEEM_SIGNED = "redeem_signed"
    REDEEM_SENT = "redeem_sent"
    REFUND_WAIT = "refund_wait"  # gave up on the swap; waiting for the own leg's expiry
    REFUND_SIGNED = "refund_signed"
    REFUND_SENT = "refund_sent"
    REDEEMED = "redeemed"  # terminal: the counter leg paid us, buried
    REFUNDED = "refunded"  # terminal: the own leg came back, buried
    ABORTED = "aborted"  # terminal: nothing of ours was ever locked
    REJECTED = "rejected"  # terminal: terms refused (participant) or declined (initiator)
    LOST = "lost"  # terminal: the counterparty refunded after our leg was redeemed (margin broken)


LOCK_MAY_STILL_BE_MINED = "expiry reached; our lock is not on chain but may still be mined"
"""The wait of ``refund_wait`` past the own leg's expiry with our signed lock unseen and not
yet unminable: the one point where the engine may end that lock with a conflict of its own."""

TERMINAL = frozenset({State.REDEEMED, State.REFUNDED, State.ABORTED, State.REJECTED, State.LOST})


class ActionKind(enum.StrEnum):
    WAIT = "wait"
    TRANSITION = "transition"  # only a state change to journal
    SIGN_LOCK = "sign_lock"
    SIGN_REDEEM = "sign_redeem"
    SIGN_REFUND = "sign_refund"
    BROADCAST = "broadcast"  # (re-)send the journaled txs of ``tx_kind``
    BUMP = "bump"  # raise the fee of the sent ``tx_kind`` (replace or CPFP), then send
    DONE = "done"


class EvidenceKind(enum.StrEnum):
    NO_LOCK = "no_lock"  # the counterparty did not lock (correctly) by its deadline
    BAD_LOCK = "bad_lock"  # it locked, but with terms other than agreed (code says which field)


@dataclass(frozen=True, slots=True)
class Action:
    kind: ActionKind
    to: State | None = None
    reason: str = ""
    tx_kind: TxKind | None = None
    evidence: EvidenceKind | None = None


@dataclass(frozen=True, slots=True)
class LegFacts:
    """What one leg's chain says about the HTLC of the agreed terms.

    ``audit_error`` is the code of the first mismatching field of a lock the counterparty
    *claims* is its leg (from its ``locked`` notice) that is on chain with other terms.
    """

    state: HtlcState = HtlcState.ABSENT
    confirmations: int = 0
    spend_confirmations: int = 0
    preimage: bytes | None = field(default=None, repr=False)
    spend_txid: str | None = None
    """The spend (redeem or refund) of this HTLC the chain shows, if any (for progress)."""
    audit_error: str | None = None
    spend_stuck: bool = False
    """Our own spend of this HTLC (the redeem of the counter leg, the refund of the own leg)
    was sent but is still unconfirmed after this node's fee-bump wait, or its newest
    higher-fee version is stored but not yet sent."""
    lock_stuck: bool = False
    """Own leg only: our lock was sent but is still unconfirmed after this node's fee-bump
    wait (on a chain whose locks are bumped), or a child paying for it is stored but not yet
    sent."""
    lock_dead: bool = False
    """Own leg only, read while it is not on chain past its expiry: no lock of ours for it can
    ever be mined any more (none was signed; one of its inputs is spent by another transaction
    buried at the leg's depth; or the chain refuses a lock once the expiry has passed, as the
    Ethereum contract does). Until then a late lock may still appear, and must be refunded."""


@dataclass(frozen=True, slots=True)
class ChainFacts:
    own: LegFacts = LegFacts()
    counter: LegFacts = LegFacts()


@dataclass(frozen=True, slots=True)
class SwapRecord:
    """The persisted view of a swap the decision needs (never the preimage itself)."""

    swap_id: bytes
    role: Role
    terms: SwapTerms
    state: State
    has_preimage: bool
    secret_shared: bool = False
    """The secret went from the initiator to the participant off chain, in a request to
    co-sign a cooperative claim of the participant leg: the initiator sent it (before
    ``initiator_redeem_by``), or the participant received it (and stored it) in one."""

    @property
    def own_leg(self) -> Leg:
        t = self.terms
        return t.initiator_leg if self.role is Role.INITIATOR else t.participant_leg

    @property
    def counter_leg(self) -> Leg:
        t = self.terms
        return t.participant_leg if self.role is Role.INITIATOR else t.initiator_leg

    @property
    def own_lock_by(self) -> Expiry:
        t = self.terms
        return t.initiator_lock_by if self.role is Role.INITIATOR else t.participant_lock_by


def _wait(reason: str, evidence: EvidenceKind | None = None) -> Action:
    return Action(ActionKind.WAIT, reason=reason, evidence=evidence)


def _go(to: State, reason: str, evidence: EvidenceKind | None = None) -> Action:
    return Action(ActionKind.TRANSITION, to=to, reason=reason, evidence=evidence)


def _send(kind: TxKind, to: State, reason: str) -> Action:
    return Action(ActionKind.BROADCAST, to=to, reason=reason, tx_kind=kind)


def _bump(kind: TxKind, to: State) -> Action:
    return Action(
        ActionKind.BUMP,
        to=to,
        reason=f"our {kind} is not confirming: raise its fee (replace it, or add a child)",
        tx_kind=kind,
    )


def _reached(now: Expiry, deadline: Expiry) -> bool:
    if type(now) is not type(deadline):
        raise TypeError(f"cannot compare chain clock {now} with deadline {deadline}")
    return now.value >= deadline.value


def next_action(rec: SwapRecord, facts: ChainFacts, now: Mapping[str, Expiry]) -> Action:
    """The one thing to do next for ``rec`` (see the module docstring and ``docs/swap.md``)."""
    s = rec.state
    if s in TERMINAL:
        return Action(ActionKind.DONE, reason=f"swap is {s}")
    own_leg, counter_leg = rec.own_leg, rec.counter_leg
    own_now, counter_now = now[own_leg.chain], now[counter_leg.chain]
    own, ctr = facts.own, facts.counter
    initiator = rec.role is Role.INITIATOR
    lock_deadline_passed = _reached(own_now, rec.own_lock_by)
    counter_ok = ctr.state is HtlcState.LOCKED and ctr.confirmations >= counter_leg.confirmations
    # Misbehaviour seen on the counter leg, reported while we wait (the engine de-duplicates).
    bad = EvidenceKind.BAD_LOCK if ctr.audit_error else None

    # -- outcomes that hold whatever state we were in (a crash may have hidden the steps) -----
    if ctr.state is HtlcState.REDEEMED:
        if ctr.spend_confirmations >= counter_leg.confirmations:
            return _go(State.REDEEMED, "the counter leg paid us and is buried")
        if ctr.spend_stuck:
            return _bump(TxKind.REDEEM, State.REDEEM_SENT)
        return _wait("the counter leg's redeem is waiting for confirmations")
    if own.state is HtlcState.REFUNDED:
        if own.spend_confirmations >= own_leg.confirmations:
            return _go(State.REFUNDED, "the own leg's refund is buried")
        if own.spend_stuck:
            return _bump(TxKind.REFUND, State.REFUND_SENT)
        return _wait("the own leg's refund is waiting for confirmations")
    if own.state is HtlcState.REDEEMED:
        # The secret is public: redeeming the counter leg can only help, at any time.
        if ctr.state is HtlcState.REFUNDED:
            return _go(State.LOST, "our leg was redeemed but the counter leg was refunded")
        if ctr.state is HtlcState.ABSENT:
            return _wait("our leg was redeemed; the counter lock is not on the best chain")
        if s is State.REDEEM_SIGNED or s is State.REDEEM_SENT:
            if ctr.spend_stuck:
                return _bump(TxKind.REDEEM, State.REDEEM_SENT)
            return _send(TxKind.REDEEM, State.REDEEM_SENT, "the secret is public: redeem")
        if not (rec.has_preimage or own.preimage is not None):
            return _wait("our leg was redeemed; reading the secret from the chain")
        return Action(ActionKind.SIGN_REDEEM, to=State.REDEEM_SIGNED, reason="secret revealed")

    # -- per state ---------------------------------------------------------------------------
    if s is State.PROPOSED:
        if lock_deadline_passed:
            return _go(State.ABORTED, "no accept before initiator_lock_by")
        return _wait("waiting for the participant to accept")

    if s is State.ACCEPTED:
        if initiator:
            if lock_deadline_passed:
                return _go(State.ABORTED, "initiator_lock_by passed before locking")
            return Action(ActionKind.SIGN_LOCK, to=State.LOCK_SIGNED, reason="terms accepted")
        if lock_deadline_passed:
            return _go(
                State.ABORTED,
                "no correct initiator lock by participant_lock_by",
                bad or EvidenceKind.NO_LOCK,
            )
        if counter_ok:
            return _go(State.COUNTER_AUDITED, "initiator lock matches terms and is buried")
        return _wait("waiting for the initiator's lock and its confirmations", bad)

    if s is State.COUNTER_AUDITED:
        if initiator:
            if rec.secret_shared:
                # The participant holds the secret: redeem while its lock is there (buried or
                # not, whatever the clock), or wait in LOCKED for it to come back.
                if ctr.state is HtlcState.LOCKED:
                    return Action(
                        ActionKind.SIGN_REDEEM,
                        to=State.REDEEM_SIGNED,
                        reason="the secret is shared",
                    )
                return _go(State.LOCKED, "the counter lock left the best chain")
            if _reached(counter_now, rec.terms.initiator_redeem_by):
                return _go(State.REFUND_WAIT, "initiator_redeem_by passed: never reveal late")
            if counter_ok:
                return Action(
                    ActionKind.SIGN_REDEEM, to=State.REDEEM_SIGNED, reason="counter lock audited"
                )
            return _go(State.LOCKED, "the counter lock left the best chain")
        if lock_deadline_passed:
            return _go(State.ABORTED, "participant_lock_by passed before locking")
        if counter_ok:
            return Action(ActionKind.SIGN_LOCK, to=State.LOCK_SIGNED, reason="initiator audited")
        return _go(State.ACCEPTED, "the initiator's lock left the best chain")

    if s is State.LOCK_SIGNED or s is State.LOCK_SENT:
        if own.state is HtlcState.LOCKED:
            if own.confirmations >= own_leg.confirmations:
                return _go(State.LOCKED, "own lock is buried")
            if s is State.LOCK_SIGNED:
                return _go(State.LOCK_SENT, "own lock is on chain")
            # Short of the depth the terms ask (a counterparty may ask more than the chain
            # gives in time): from our expiry on, or once we hold a secret shared with us, the
            # lock is acted on as locked (refund, or redeem the counter leg) instead of waiting.
            if _reached(own_now, own_leg.expiry) or (
                not initiator and rec.secret_shared and rec.has_preimage
            ):
                return _go(State.LOCKED, "own lock is on chain, short of its depth: act on it")
            if own.confirmations == 0 and own.lock_stuck and not lock_deadline_passed:
                return _bump(TxKind.LOCK, State.LOCK_SENT)
            return _wait("own lock is waiting for confirmations")
        if lock_deadline_passed:
            # A lock signed in time but not seen on chain by the deadline is not sent (again);
            # if it does appear, REFUND_WAIT refunds it at expiry.
            return _go(State.REFUND_WAIT, "lock deadline passed with the own lock not on chain")
        return _send(TxKind.LOCK, State.LOCK_SENT, "send the journaled lock")

    if s is State.LOCKED:
        if own.state is HtlcState.ABSENT:
            if lock_deadline_passed:
                return _go(State.REFUND_WAIT, "own lock left the chain after the lock deadline")
            return _send(TxKind.LOCK, State.LOCK_SENT, "own lock left the best chain: re-send")
        if initiator:
            if rec.secret_shared:
                # Giving up on the counter leg would leave ours to a participant that holds the
                # secret: only once it is refunded, or at our own expiry (its lock gone).
                if ctr.state is HtlcState.LOCKED:
                    return _go(
                        State.COUNTER_AUDITED, "the secret is shared: redeem the counter leg"
                    )
                if ctr.state is HtlcState.REFUNDED or _reached(own_now, own_leg.expiry):
                    return _go(State.REFUND_WAIT, "the secret is shared and the counter leg gone")
                return _wait("the secret is shared: waiting for the counter lock to return")
            if _reached(counter_now, rec.terms.initiator_redeem_by):
                # A counter leg seen locked (maybe refunded since, while we were offline) was
                # the participant keeping its word: only a lock that never came is evidence.
                missing = EvidenceKind.NO_LOCK if ctr.state is HtlcState.ABSENT else None
                return _go(
                    State.REFUND_WAIT,
                    "no correct participant lock by initiator_redeem_by",
                    bad or missing,
                )
            if counter_ok:
                return _go(State.COUNTER_AUDITED, "participant lock matches terms and is buried")
            return _wait("waiting for the participant's lock and its confirmations", bad)
        if rec.secret_shared and rec.has_preimage and ctr.state is HtlcState.LOCKED:
            # We co-signed the initiator's claim of our leg for the secret: take the other.
            return Action(
                ActionKind.SIGN_REDEEM, to=State.REDEEM_SIGNED, reason="the secret was shared"
            )
        if _reached(own_now, own_leg.expiry):
            return Action(ActionKind.SIGN_REFUND, to=State.REFUND_SIGNED, reason="T_B reached")
        return _wait("waiting for the initiator to redeem (reveals the secret)")

    if s is State.REDEEM_SIGNED or s is State.REDEEM_SENT:
        if ctr.state is HtlcState.REFUNDED:
            return _go(State.REFUND_WAIT, "the counter leg was refunded before our redeem")
        if ctr.state is HtlcState.ABSENT:
            return _wait("the counter lock is not on the best chain; waiting for it to return")
        late = initiator and _reached(counter_now, rec.terms.initiator_redeem_by)
        if late and not rec.secret_shared:
            return _go(State.REFUND_WAIT, "initiator_redeem_by passed: the secret is not sent")
        if ctr.spend_stuck:
            return _bump(TxKind.REDEEM, State.REDEEM_SENT)
        return _send(TxKind.REDEEM, State.REDEEM_SENT, "send the journaled redeem")

    if s is State.REFUND_WAIT:
        if initiator and rec.secret_shared and ctr.state is HtlcState.LOCKED:
            return _go(State.COUNTER_AUDITED, "the secret is shared and the counter lock is there")
        if not _reached(own_now, own_leg.expiry):
            return _wait("waiting for the own leg's expiry")
        if own.state is HtlcState.LOCKED:
            return Action(ActionKind.SIGN_REFUND, to=State.REFUND_SIGNED, reason="expiry reached")
        if own.lock_dead:
            return _go(State.ABORTED, "expiry reached and our lock can never be mined")
        # A lock signed (and maybe sent) but hidden until now may still be mined: watch for
        # it (then refund) until a conflict makes it unminable (the engine makes one: a
        # self-spend of one of its coins, past this expiry only).
        return _wait(LOCK_MAY_STILL_BE_MINED)

    if s is State.REFUND_SIGNED or s is State.REFUND_SENT:
        if own.state is HtlcState.ABSENT:
            return _wait("the own lock is not on the best chain; waiting for it to return")
        if own.spend_stuck:
            return _bump(TxKind.REFUND, State.REFUND_SENT)
        return _send(TxKind.REFUND, State.REFUND_SENT, "send the journaled refund")

    raise AssertionError(f"unhandled state {s}")  # pragma: no cover
