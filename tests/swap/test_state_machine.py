"""The pure swap state machine: safety for any state and facts, liveness on a chain model."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from kofo.settlement.chain import BlockHeight, HtlcState, TxKind, UnixTime
from kofo.settlement.swap import (
    TERMINAL,
    ActionKind,
    ChainFacts,
    EvidenceKind,
    LegFacts,
    Role,
    State,
    SwapRecord,
    next_action,
)
from tests.swap.model import World

WORLD = World()
TERMS = WORLD.terms
A_LEG, B_LEG = TERMS.initiator_leg, TERMS.participant_leg

leg_facts = st.builds(
    LegFacts,
    state=st.sampled_from(HtlcState),
    confirmations=st.integers(0, 3),
    spend_confirmations=st.integers(0, 3),
    preimage=st.sampled_from([None, b"\x07" * 32]),
    audit_error=st.sampled_from([None, "audit_amount"]),
    spend_stuck=st.booleans(),
    lock_stuck=st.booleans(),
    lock_dead=st.booleans(),
)
# Clocks around every deadline of the terms, so each comparison is exercised on both sides.
c1_clock = st.integers(TERMS.initiator_lock_by.value - 3, A_LEG.expiry.value + 3)
c2_clock = st.integers(TERMS.participant_lock_by.value - 3, B_LEG.expiry.value + 3)


@st.composite
def situations(draw):
    role = draw(st.sampled_from(Role))
    state = draw(st.sampled_from(State))
    # The participant holds the preimage only once it has read it from a redeem on chain.
    has_preimage = role is Role.INITIATOR or draw(st.booleans())
    # The secret is shared only by the initiator, or with a participant that stored it.
    secret_shared = has_preimage and draw(st.booleans())
    rec = SwapRecord(TERMS.swap_id, role, TERMS, state, has_preimage, secret_shared)
    facts = ChainFacts(draw(leg_facts), draw(leg_facts))
    now = {"c1": BlockHeight(draw(c1_clock)), "c2": UnixTime(draw(c2_clock))}
    return rec, facts, now


@settings(max_examples=3000, deadline=None)
@given(situations())
def test_no_state_and_no_facts_lead_to_an_unsafe_action(situation):
    rec, facts, now = situation
    action = next_action(rec, facts, now)
    own_leg, counter_leg = rec.own_leg, rec.counter_leg
    own_now, counter_now = now[own_leg.chain].value, now[counter_leg.chain].value
    secret_public = facts.own.state is HtlcState.REDEEMED
    if action.kind is ActionKind.SIGN_LOCK or action.tx_kind is TxKind.LOCK:
        assert own_now < rec.own_lock_by.value, "locks after its lock deadline"
        assert rec.state not in TERMINAL
    if action.kind is ActionKind.SIGN_LOCK and rec.role is Role.PARTICIPANT:
        assert facts.counter.state is HtlcState.LOCKED
        assert facts.counter.confirmations >= counter_leg.confirmations
    if action.kind is ActionKind.SIGN_REFUND:
        assert own_now >= own_leg.expiry.value, "refunds before expiry"
        assert facts.own.state is HtlcState.LOCKED
    reveals = action.kind is ActionKind.SIGN_REDEEM or action.tx_kind is TxKind.REDEEM
    # A bump of a redeem already visible on the counter chain reveals nothing new.
    revealed = action.kind is ActionKind.BUMP and facts.counter.state is HtlcState.REDEEMED
    # A secret shown to the participant for a cooperative claim was shown before the deadline.
    shared = rec.secret_shared
    if reveals and rec.role is Role.INITIATOR and not (secret_public or revealed or shared):
        assert counter_now < TERMS.initiator_redeem_by.value, "reveals the secret late"
        assert facts.counter.state is HtlcState.LOCKED
    if action.kind is ActionKind.SIGN_REDEEM and rec.role is Role.PARTICIPANT:
        assert secret_public or (shared and rec.has_preimage), (
            "the participant redeems only with a secret read from the chain or given to it"
        )
    if action.kind is ActionKind.SIGN_REDEEM and rec.role is Role.INITIATOR and shared:
        assert facts.counter.state is HtlcState.LOCKED or secret_public
    # Liveness once shared: the initiator gives up on the counter leg (goes to refund) only if
    # it is refunded, at the own leg's expiry, or with its own lock gone from the chain --
    # never while it could still redeem it.
    after_locking = (State.LOCKED, State.COUNTER_AUDITED, State.REDEEM_SIGNED, State.REDEEM_SENT)
    if rec.role is Role.INITIATOR and shared and rec.state in after_locking:
        if action.to is State.REFUND_WAIT:
            assert (
                facts.counter.state is HtlcState.REFUNDED
                or own_now >= own_leg.expiry.value
                or facts.own.state is HtlcState.ABSENT
            )
    if rec.role is Role.INITIATOR and shared and rec.state is State.REFUND_WAIT:
        if facts.counter.state is HtlcState.LOCKED and facts.own.state is HtlcState.LOCKED:
            assert action.to is State.COUNTER_AUDITED
    if action.kind is ActionKind.SIGN_REDEEM:
        assert rec.has_preimage or facts.own.preimage is not None
    if rec.state in TERMINAL:
        assert action.kind is ActionKind.DONE
    if action.kind is ActionKind.BUMP and action.tx_kind is TxKind.LOCK:
        # Only our own lock waiting unconfirmed in a mempool, before the lock deadline (above).
        assert facts.own.lock_stuck
        assert facts.own.state is HtlcState.LOCKED and facts.own.confirmations == 0
        assert rec.state is State.LOCK_SENT and action.to is State.LOCK_SENT
    elif action.kind is ActionKind.BUMP:
        # Only a sent spend that has not confirmed is replaced, and only where it is re-sent.
        leg = facts.counter if action.tx_kind is TxKind.REDEEM else facts.own
        assert leg.spend_stuck
        assert leg.state is HtlcState.LOCKED or leg.spend_confirmations == 0
        assert action.to in (State.REDEEM_SENT, State.REFUND_SENT)
        if action.tx_kind is TxKind.REFUND:
            assert rec.state in (State.REFUND_SIGNED, State.REFUND_SENT) or (
                facts.own.state is HtlcState.REFUNDED
            )
    if action.kind is ActionKind.TRANSITION and action.to is State.REDEEMED:
        assert facts.counter.state is HtlcState.REDEEMED
    # Once a lock of ours was signed, the swap is aborted (stops watching) only once that
    # lock can never be mined: a late one is still refunded.
    signed_lock = rec.state not in (State.PROPOSED, State.ACCEPTED, State.COUNTER_AUDITED)
    if action.to is State.ABORTED and signed_lock:
        assert facts.own.state is HtlcState.ABSENT and facts.own.lock_dead


def test_a_signed_lock_not_on_chain_at_expiry_is_watched_until_it_can_never_be_mined():
    """A lock signed and sent but hidden (a node that dropped it, a slow mempool, a lying RPC)
    may still be mined after the swap gave up: ``refund_wait`` keeps watching past the expiry
    until a conflict rules the lock out, and refunds it if it appears."""
    rec = SwapRecord(TERMS.swap_id, Role.INITIATOR, TERMS, State.REFUND_WAIT, True)
    now = {"c1": A_LEG.expiry, "c2": UnixTime(B_LEG.expiry.value + 1)}
    assert next_action(rec, ChainFacts(), now).kind is ActionKind.WAIT
    late = ChainFacts(LegFacts(HtlcState.LOCKED, 1))
    assert next_action(rec, late, now).kind is ActionKind.SIGN_REFUND
    dead = ChainFacts(LegFacts(lock_dead=True))
    assert next_action(rec, dead, now).to is State.ABORTED


def test_participant_aborts_with_no_lock_evidence_when_the_initiator_never_locks():
    rec = SwapRecord(TERMS.swap_id, Role.PARTICIPANT, TERMS, State.ACCEPTED, False)
    now = {"c1": BlockHeight(A_LEG.expiry.value - 1), "c2": TERMS.participant_lock_by}
    action = next_action(rec, ChainFacts(), now)
    assert action.to is State.ABORTED
    assert action.evidence is EvidenceKind.NO_LOCK


def test_initiator_does_not_reveal_a_secret_at_its_redeem_deadline():
    rec = SwapRecord(TERMS.swap_id, Role.INITIATOR, TERMS, State.COUNTER_AUDITED, True)
    facts = ChainFacts(LegFacts(HtlcState.LOCKED, 5), LegFacts(HtlcState.LOCKED, 5))
    now = {"c1": BlockHeight(0), "c2": TERMS.initiator_redeem_by}
    assert next_action(rec, facts, now).to is State.REFUND_WAIT


def test_refund_before_expiry_is_not_signed():
    rec = SwapRecord(TERMS.swap_id, Role.INITIATOR, TERMS, State.REFUND_WAIT, True)
    facts = ChainFacts(LegFacts(HtlcState.LOCKED, 5))
    now = {"c1": BlockHeight(A_LEG.expiry.value - 1), "c2": UnixTime(0)}
    assert next_action(rec, facts, now).kind is ActionKind.WAIT
    now["c1"] = A_LEG.expiry
    assert next_action(rec, facts, now).kind is ActionKind.SIGN_REFUND


def _settle(world: World, order: list[Role], absent: dict[Role, int], steps: list[int]) -> None:
    """Each honest party acts until it only waits after every block (what the monitor does)."""
    for role in order:
        if absent.get(role, 10**9) <= len(world.actions):
            continue
        for _ in range(50):
            if not world.step(role):
                break


@settings(max_examples=300, deadline=None)
@given(
    schedule=st.lists(st.sampled_from(["c1", "c2"]), min_size=0, max_size=60),
    order=st.permutations([Role.INITIATOR, Role.PARTICIPANT]),
    absent_role=st.sampled_from([None, Role.INITIATOR, Role.PARTICIPANT]),
    absent_after=st.integers(0, 30),
    late_start=st.integers(0, 12),
    c1_height=st.booleans(),
    c2_height=st.booleans(),
)
def test_honest_parties_always_finish_and_never_lose(
    schedule, order, absent_role, absent_after, late_start, c1_height, c2_height
):
    world = World(c1_height, c2_height)
    absent = {absent_role: absent_after} if absent_role else {}
    for _ in range(late_start):  # the chains move before anyone acts
        world.mine("c1")
        world.mine("c2")
    for chain in schedule:
        _settle(world, order, absent, [])
        world.mine(chain)
    # Then both chains keep moving until well past every expiry.
    for _ in range(200):
        _settle(world, order, absent, [])
        world.mine("c1")
        world.mine("c2")
    _settle(world, order, absent, [])
    a, b = world.legs["A"], world.legs["B"]
    for role, party in world.parties.items():
        if role in absent:
            continue
        assert party.state in TERMINAL, f"{role} stuck in {party.state}"
        assert party.state is not State.LOST
    if Role.INITIATOR not in absent:  # never: our leg paid out while theirs was not
        assert not (a.state is HtlcState.REDEEMED and b.state is not HtlcState.REDEEMED)
    if Role.PARTICIPANT not in absent:
        assert not (b.state is HtlcState.REDEEMED and a.state is not HtlcState.REDEEMED)
    if not absent:
        assert {a.state, b.state} in (
            {HtlcState.REDEEMED},
            {HtlcState.REFUNDED},
            {HtlcState.REFUNDED, HtlcState.ABSENT},
            {HtlcState.ABSENT},
        )


def test_honest_parties_on_prompt_chains_both_redeem():
    world = World()
    for _ in range(20):
        for role in (Role.INITIATOR, Role.PARTICIPANT):
            while world.step(role):
                pass
        world.mine("c1")
        world.mine("c2")
    assert world.parties[Role.INITIATOR].state is State.REDEEMED
    assert world.parties[Role.PARTICIPANT].state is State.REDEEMED


def _sent(role: Role, state: State) -> SwapRecord:
    return SwapRecord(TERMS.swap_id, role, TERMS, state, True)


def test_a_stuck_redeem_is_bumped_and_an_unstuck_one_waits():
    rec = _sent(Role.PARTICIPANT, State.REDEEM_SENT)
    now = {"c1": BlockHeight(0), "c2": UnixTime(0)}
    pending = LegFacts(HtlcState.REDEEMED, 5, spend_confirmations=0)
    own = LegFacts(HtlcState.REDEEMED, 5, 1, b"\x07" * 32)
    assert next_action(rec, ChainFacts(own, pending), now).kind is ActionKind.WAIT
    stuck = LegFacts(HtlcState.REDEEMED, 5, spend_confirmations=0, spend_stuck=True)
    action = next_action(rec, ChainFacts(own, stuck), now)
    assert (action.kind, action.tx_kind, action.to) == (
        ActionKind.BUMP,
        TxKind.REDEEM,
        State.REDEEM_SENT,
    )
    # Evicted from mempools (the leg still looks locked): bumped instead of re-sent as it was.
    evicted = LegFacts(HtlcState.LOCKED, 5, spend_stuck=True)
    assert next_action(rec, ChainFacts(own, evicted), now).kind is ActionKind.BUMP


def test_a_stuck_refund_is_bumped():
    rec = _sent(Role.INITIATOR, State.REFUND_SENT)
    now = {"c1": A_LEG.expiry, "c2": UnixTime(0)}
    action = next_action(rec, ChainFacts(LegFacts(HtlcState.LOCKED, 9, spend_stuck=True)), now)
    assert (action.kind, action.tx_kind) == (ActionKind.BUMP, TxKind.REFUND)
    pending = LegFacts(HtlcState.REFUNDED, 9, 0, spend_stuck=True)
    assert next_action(rec, ChainFacts(pending), now).kind is ActionKind.BUMP


def test_the_initiator_never_bumps_an_unseen_redeem_after_its_redeem_deadline():
    rec = _sent(Role.INITIATOR, State.REDEEM_SENT)
    facts = ChainFacts(
        LegFacts(HtlcState.LOCKED, 5), LegFacts(HtlcState.LOCKED, 5, spend_stuck=True)
    )
    before = {"c1": BlockHeight(0), "c2": UnixTime(TERMS.initiator_redeem_by.value - 1)}
    assert next_action(rec, facts, before).kind is ActionKind.BUMP
    at = {"c1": BlockHeight(0), "c2": TERMS.initiator_redeem_by}
    assert next_action(rec, facts, at).to is State.REFUND_WAIT


def test_a_lock_waiting_unconfirmed_is_bumped_only_before_the_lock_deadline():
    rec = SwapRecord(TERMS.swap_id, Role.INITIATOR, TERMS, State.LOCK_SENT, True)
    before = {"c1": BlockHeight(TERMS.initiator_lock_by.value - 1), "c2": UnixTime(0)}
    stuck = ChainFacts(LegFacts(HtlcState.LOCKED, 0, lock_stuck=True))
    action = next_action(rec, stuck, before)
    assert (action.kind, action.tx_kind, action.to) == (
        ActionKind.BUMP,
        TxKind.LOCK,
        State.LOCK_SENT,
    )
    assert next_action(rec, ChainFacts(LegFacts(HtlcState.LOCKED, 0)), before).kind is (
        ActionKind.WAIT
    )
    late = {**before, "c1": TERMS.initiator_lock_by}
    assert next_action(rec, stuck, late).kind is ActionKind.WAIT
    signed = SwapRecord(TERMS.swap_id, Role.INITIATOR, TERMS, State.LOCK_SIGNED, True)
    assert next_action(signed, stuck, before).to is State.LOCK_SENT  # first: seen on chain


def test_an_initiator_that_shared_the_secret_redeems_after_its_reveal_deadline():
    """The secret went to the participant for a co-signature before the deadline; a crash or a
    slow step then lets the deadline pass. Holding the redeem back now would only help the
    participant, so it is signed and sent; without the share it would not be."""
    counter = LegFacts(HtlcState.LOCKED, 5)
    facts = ChainFacts(LegFacts(HtlcState.LOCKED, 5), counter)
    now = {"c1": BlockHeight(0), "c2": TERMS.initiator_redeem_by}
    for state, kind in (
        (State.COUNTER_AUDITED, ActionKind.SIGN_REDEEM),
        (State.REDEEM_SIGNED, ActionKind.BROADCAST),
        (State.REDEEM_SENT, ActionKind.BROADCAST),
    ):
        shared = SwapRecord(TERMS.swap_id, Role.INITIATOR, TERMS, state, True, True)
        assert next_action(shared, facts, now).kind is kind, state
        kept = SwapRecord(TERMS.swap_id, Role.INITIATOR, TERMS, state, True, False)
        assert next_action(kept, facts, now).to is State.REFUND_WAIT, state
    locked = SwapRecord(TERMS.swap_id, Role.INITIATOR, TERMS, State.LOCKED, True, True)
    assert next_action(locked, facts, now).to is State.COUNTER_AUDITED


def test_a_participant_given_the_secret_redeems_without_waiting_for_the_chain():
    facts = ChainFacts(LegFacts(HtlcState.LOCKED, 5), LegFacts(HtlcState.LOCKED, 5))
    now = {"c1": BlockHeight(A_LEG.expiry.value - 100), "c2": UnixTime(0)}
    given = SwapRecord(TERMS.swap_id, Role.PARTICIPANT, TERMS, State.LOCKED, True, True)
    assert next_action(given, facts, now).kind is ActionKind.SIGN_REDEEM
    waiting = SwapRecord(TERMS.swap_id, Role.PARTICIPANT, TERMS, State.LOCKED, False, False)
    assert next_action(waiting, facts, now).kind is ActionKind.WAIT
    gone = ChainFacts(LegFacts(HtlcState.LOCKED, 5), LegFacts(HtlcState.ABSENT))
    assert next_action(given, gone, now).kind is not ActionKind.SIGN_REDEEM
