"""An attacker-briefed review of the swap engine (issue 16, "look for siblings"): a malicious
counterparty against the real engine on the embedded chains. Each test fails on the engine
before the fix it names (see docs/swap.md, section 6)."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator
from dataclasses import replace

import pytest

from kofo.settlement.chain import BlockHeight, UnixTime
from kofo.settlement.swap import State
from kofo.settlement.terms import Leg, SwapTerms, propose_terms
from kofo.wire.swap import Accept, Error, Propose, SwapBody
from tests.swap.btc_helpers import Btc, addr
from tests.swap.helpers import ETHER, Evm, Node, drive, link, make_node
from tests.swap.test_settlement_safety import (
    BTC_AMOUNT,
    STALL,
    _spend_by_hand,
    _start_short,
)

TOKENS = 100 * 10**6


@pytest.fixture
def evm_world(tmp_path):
    evm = Evm()
    alice = make_node("alice", tmp_path, {"eth": evm})
    bob = make_node("bob", tmp_path, {"eth": evm})
    return evm, alice, bob


@pytest.fixture
def btc_world(tmp_path) -> Iterator[tuple[Btc, Evm, Node, Node]]:
    btc, evm = Btc("btc"), Evm()
    chains = {"btc": btc, "eth": evm}
    alice = make_node("alice", tmp_path, chains)  # type: ignore[arg-type]
    bob = make_node("bob", tmp_path, chains)  # type: ignore[arg-type]
    yield btc, evm, alice, bob
    btc.close()


def _legs(evm: Evm, alice: Node, bob: Node) -> tuple[Leg, Leg]:
    return (
        Leg("eth", ETHER, alice.address("eth"), bob.address("eth"), UnixTime(0)),
        Leg("eth", TOKENS, bob.address("eth"), alice.address("eth"), UnixTime(0), evm.token),
    )


def _terms(alice: Node, bob: Node, give: Leg, get: Leg, payment_hash: bytes) -> SwapTerms:
    """Terms as a (possibly malicious) initiator lays them out, with a hash of its choosing."""
    return propose_terms(
        swap_id=os.urandom(16),
        payment_hash=payment_hash,
        initiator_leg=give,
        participant_leg=get,
        policies=alice.engine.policies,
        now=alice.engine.now(),
        initiator_node=alice.node_id,
        participant_node=bob.node_id,
    )


def _by_hand(node: Node, terms: SwapTerms, leg: Leg, preimage: bytes | None) -> bool:
    """The attacker's own redeem (``preimage``) or refund of ``leg``; False if the chain
    refuses it."""
    ad = node.engine.adapters[leg.chain]
    ref = ad.find_htlc(leg.htlc(terms.payment_hash))
    if ref is None:  # not there to spend (spent already)
        return False
    try:
        tx = ad.prepare_refund(ref) if preimage is None else ad.prepare_redeem(ref, preimage)
        ad.broadcast(tx)
    except Exception:
        return False
    return True


def _lock(node: Node, htlc) -> None:
    ad = node.engine.adapters[htlc.chain]
    for tx in ad.prepare_lock(htlc):
        ad.broadcast(tx)


# -- confirmations the attacker asks of the participant's own lock ------------------------------


def test_a_participant_lock_short_of_its_confirmations_is_refunded_at_its_expiry(evm_world):
    """The initiator asks the participant's lock to be buried 5 deep (more than the
    participant's policy, so accepted) and never mines the chain that far. The participant's
    lock waits in lock_sent, short of its depth; the old state machine refunded only from
    locked, so at T_B it kept waiting, and after T_A the initiator refunded its own leg and
    redeemed the participant's with its secret: the participant ended lost."""
    evm, alice, bob = evm_world
    secret = os.urandom(32)
    terms = _terms(alice, bob, *_legs(evm, alice, bob), hashlib.sha256(secret).digest())
    terms = replace(terms, participant_leg=replace(terms.participant_leg, confirmations=5))
    assert isinstance(bob.engine.handle(Propose(terms), alice.node_id), Accept)
    _lock(alice, terms.initiator_leg.htlc(terms.payment_hash))
    bob.engine.tick()
    assert bob.engine.journal.get(terms.swap_id).state is State.LOCK_SENT
    before = bob.engine.adapters["eth"].balance(evm.token)
    evm.advance_to(terms.participant_leg.expiry.value)  # T_B: one block
    for _ in range(4):
        bob.engine.tick()
    evm.advance_to(terms.initiator_leg.expiry.value)  # T_A: the attacker takes what it can
    assert _by_hand(alice, terms, terms.initiator_leg, None)
    stole = _by_hand(alice, terms, terms.participant_leg, secret)
    for _ in range(8):  # the refund is buried as deep as the terms ask
        bob.engine.tick()
        evm.advance(1)
    state = bob.engine.journal.get(terms.swap_id).state
    assert not stole and state is State.REFUNDED, state
    assert bob.engine.adapters["eth"].balance(evm.token) == before + TOKENS
    assert bob.engine.reserved("eth", evm.token) == 0


@pytest.mark.parametrize("leg", ["initiator_leg", "participant_leg"])
def test_a_depth_the_deadlines_cannot_reach_is_refused(evm_world, leg):
    """A leg asking for a million confirmations: the participant's own lock could never count
    as buried (it never reached locked, so it never refunded), or the initiator's lock, or the
    redeem of it, could never count (the swap stays open for ever, holding a slot of the
    open-swap limits)."""
    evm, alice, bob = evm_world
    terms = _terms(alice, bob, *_legs(evm, alice, bob), os.urandom(32))
    terms = replace(terms, **{leg: replace(getattr(terms, leg), confirmations=10**6)})
    reply = bob.engine.handle(Propose(terms), alice.node_id)
    assert isinstance(reply, Error) and reply.code == "terms_confirmations", reply
    assert bob.engine.journal.swaps() == []


# -- a leg the node cannot spend: no coin for the gas of its redeem ----------------------------


def test_a_node_without_gas_for_its_redeem_refuses_the_swap(tmp_path):
    """Bob gives ETH on one EVM chain for ETH on another where his account holds nothing (a
    node quoting one chain's coin for another's). The old engine accepted: the initiator
    locked, bob locked, the initiator redeemed bob's leg (the secret is out), and bob's
    redeem of the leg paying him could never pay its gas; after T_A the initiator refunded
    it and bob ended lost. A node now refuses a swap whose spends it cannot pay for: per
    swap, on each chain where the caller pays the fee, the gas of the spend it may need
    (the refund of its own leg, the redeem of the other) is kept aside like the lock's
    funds (terms_funds)."""
    one, two = Evm("eth"), Evm("eth2")
    chains = {"eth": one, "eth2": two}
    alice = make_node("alice", tmp_path, chains)  # type: ignore[arg-type]
    bob = make_node(
        "bob",
        tmp_path,
        chains,  # type: ignore[arg-type]
        accounts={"eth": one.account(wei=0), "eth2": two.account()},
    )
    give = Leg("eth", ETHER, alice.address("eth"), bob.address("eth"), UnixTime(0))
    get = Leg("eth2", ETHER, bob.address("eth2"), alice.address("eth2"), UnixTime(0))
    secret = os.urandom(32)
    terms = _terms(alice, bob, give, get, hashlib.sha256(secret).digest())
    reply = bob.engine.handle(Propose(terms), alice.node_id)
    if isinstance(reply, Error):
        assert reply.code == "terms_funds", reply
        assert "] eth: " in reply.message and bob.engine.journal.swaps() == []
        return
    # The old engine's path: the attack runs to its end.
    _lock(alice, terms.initiator_leg.htlc(terms.payment_hash))
    for _ in range(4):
        bob.engine.tick()
    assert bob.engine.journal.get(terms.swap_id).state is State.LOCKED
    assert _by_hand(alice, terms, terms.participant_leg, secret)
    for _ in range(4):
        bob.engine.tick()
    one.advance_to(terms.initiator_leg.expiry.value)
    assert _by_hand(alice, terms, terms.initiator_leg, None)
    for _ in range(4):
        bob.engine.tick()
    state = bob.engine.journal.get(terms.swap_id).state
    assert state is not State.LOST, "bob paid and was not paid"


# -- peers that stall the watchtower -------------------------------------------------------------


def test_stalling_co_signers_do_not_hold_the_watchtower(btc_world):
    """Alice gives Taproot BTC for bob's ETH in two swaps, redeems both ETH legs and stalls
    both of bob's co-sign requests. The old tick waited out each request in turn (up to
    cosign_wait each, for every swap so stalled: with 256 open swaps, far longer than the
    notice time the margins allow for, so every other swap's deadline was at risk). Now one
    tick waits on peers at most peer_wait_per_tick in all; the rest of a request's wait goes
    on in the background and a later step takes its answer (or claims by the leaf)."""
    btc, _evm, alice, bob = btc_world
    link(alice, bob)
    bob.engine.cosign_wait = STALL
    bob.engine.peer_wait_per_tick = 0.0  # type: ignore[attr-defined]
    sids = []
    for _ in range(2):
        give = Leg(
            "btc", BTC_AMOUNT, addr(alice, "btc"), addr(bob, "btc"), BlockHeight(0), output="p2tr"
        )
        get = Leg("eth", ETHER, bob.address("eth"), alice.address("eth"), UnixTime(0))
        sids.append(_start_short(alice, bob, give, get))
    for node in (alice, bob):  # alice locks both, then bob both (she never sees his locks)
        for _ in range(16):
            if all(node.engine.journal.get(sid).state is State.LOCKED for sid in sids):
                break
            node.engine.tick()
            btc.mine(1)
    assert {n.engine.journal.get(sid).state for n in (alice, bob) for sid in sids} == {State.LOCKED}
    for sid in sids:
        terms = alice.engine.terms_of(sid)
        _spend_by_hand(alice, terms, terms.participant_leg, alice.engine.journal.preimage(sid))
    released, entered = threading.Event(), threading.Semaphore(0)
    asked: list[bytes] = []

    def stall(sid: bytes, _body: SwapBody) -> SwapBody | None:
        asked.append(sid)
        entered.release()
        released.wait(STALL)
        return Error(sid, "cosign_refused", "stalled")

    bob.engine._request = stall
    ticker = threading.Thread(target=bob.engine.tick, daemon=True)
    try:
        ticker.start()
        assert entered.acquire(timeout=STALL / 2)
        assert entered.acquire(timeout=STALL / 2)
        assert sorted(asked) == sorted(sids)  # both asked while neither was answered
        ticker.join(STALL / 2)
        assert not ticker.is_alive(), "the tick is waiting on a co-signer"
    finally:
        released.set()
        ticker.join(60)
    for sid in sids:  # the refusals come; bob claims both by the leaf
        states = drive([bob], sid, rounds=20, between=lambda _r: btc.mine(1))
        assert states["bob"] is State.REDEEMED
