"""Issue 16, "Settlement safety": attacks by a malicious counterparty (or a failing node) on the
real engine, on the embedded chains. Each test fails on the engine before the fix it names.

The dishonest side is scripted with its own chain adapter (it holds the same keys and chain
access a real cheater has); the honest side is the real engine, ticked as its monitor would.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from dataclasses import replace

import pytest

from kofo.settlement.chain import BlockHeight, HtlcState, UnixTime
from kofo.settlement.monitor import Watchtower
from kofo.settlement.swap import State
from kofo.settlement.terms import Leg, SwapTerms, propose_terms
from kofo.wire.swap import Accept, Error, Propose, SwapBody
from tests.swap.btc_helpers import Btc, addr
from tests.swap.helpers import ETHER, Evm, Node, drive, link, make_node, start_swap

TOKENS = 100 * 10**6
BTC_AMOUNT = 1_500_000


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


def _eth_for_tokens(evm: Evm, alice: Node, bob: Node, amount: int = ETHER) -> tuple[Leg, Leg]:
    return (
        Leg("eth", amount, alice.address("eth"), bob.address("eth"), UnixTime(0)),
        Leg("eth", TOKENS, bob.address("eth"), alice.address("eth"), UnixTime(0), evm.token),
    )


def _btc_for_eth(alice: Node, bob: Node, *, taproot: bool = False) -> tuple[Leg, Leg]:
    give = Leg("btc", BTC_AMOUNT, addr(alice, "btc"), addr(bob, "btc"), BlockHeight(0))
    get = Leg("eth", ETHER, bob.address("eth"), alice.address("eth"), UnixTime(0))
    return (replace(give, output="p2tr") if taproot else give), get


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


def _offer(alice: Node, bob: Node, terms: SwapTerms) -> SwapBody | None:
    return bob.engine.handle(Propose(terms), alice.node_id)


def _lock(node: Node, htlc) -> None:
    ad = node.engine.adapters[htlc.chain]
    for tx in ad.prepare_lock(htlc):
        ad.broadcast(tx)


# -- case 6: terms the adapter cannot build; failures that must not stop the others -----------


def test_a_bitcoin_expiry_no_script_can_hold_is_refused_at_accept(btc_world):
    """A BlockHeight of 600,000,000 passes every check on numbers (it is far in the future, so
    the margin is huge) but no CLTV can hold it: accepted, every later step would fail."""
    _btc, _evm, alice, bob = btc_world
    give, get = _btc_for_eth(alice, bob)
    terms = _terms(alice, bob, give, get, os.urandom(32))
    bad = replace(
        terms, initiator_leg=replace(terms.initiator_leg, expiry=BlockHeight(600_000_000))
    )
    reply = _offer(alice, bob, bad)
    assert isinstance(reply, Error) and reply.code == "terms_unbuildable", reply
    assert "600000000" in reply.message or "600,000,000" in reply.message
    assert bob.engine.journal.swaps() == []
    # The same terms with a buildable expiry are accepted: the refusal is about the build.
    assert isinstance(_offer(alice, bob, terms), Accept)


class _Malformed(ValueError):
    """What a JSON parser raises on a node's malformed answer: not a KOFO error."""


def test_the_deadline_abort_fires_when_the_counter_chain_cannot_be_read(evm_world):
    evm, alice, bob = evm_world
    sid = start_swap(alice, bob, *_eth_for_tokens(evm, alice, bob))

    def broken(*_a, **_k):
        raise _Malformed("estimatesmartfee answered NaN")

    bob.engine.adapters["eth"].find_htlc = broken  # type: ignore[method-assign]
    states = drive([bob], sid, rounds=30, between=lambda _r: evm.advance(30))
    assert states["bob"] is State.ABORTED
    assert bob.engine.journal.evidence(sid) == []  # nothing seen, nothing blamed


def test_one_swap_failing_never_stops_the_tick_for_the_others(evm_world):
    evm, alice, bob = evm_world
    link(alice, bob)
    poisoned = start_swap(alice, bob, *_eth_for_tokens(evm, alice, bob))
    healthy = start_swap(alice, bob, *_eth_for_tokens(evm, alice, bob))
    bad_hash = bob.engine.terms_of(poisoned).payment_hash
    ad = bob.engine.adapters["eth"]
    real_find = ad.find_htlc

    def find(terms, **kw):
        if terms.payment_hash == bad_hash:
            raise _Malformed("a malformed log entry")
        return real_find(terms, **kw)

    ad.find_htlc = find  # type: ignore[method-assign]
    states = drive([alice, bob], healthy, rounds=20)
    assert states == {"alice": State.REDEEMED, "bob": State.REDEEMED}
    assert bob.engine.journal.get(poisoned).state is State.ACCEPTED  # still retried


def test_one_chain_failing_never_stops_the_monitor_for_the_others(tmp_path):
    """Bob serves two chains; one of them starts answering garbage. The watchtower keeps
    following the other and drives its swap to the end."""
    evm, other = Evm(), Evm("eth2")
    chains = {"eth": evm, "eth2": other}
    alice = make_node("alice", tmp_path, chains)
    bob = make_node("bob", tmp_path, chains)
    link(alice, bob)
    sid = start_swap(alice, bob, *_eth_for_tokens(evm, alice, bob))

    def garbage(*_a, **_k):
        raise _Malformed("eth_blockNumber answered 'latest'")

    bad = bob.engine.adapters["eth2"]
    for name in ("tip", "expiry_now", "block_at", "observe"):
        setattr(bad, name, garbage)
    tower = Watchtower(bob.engine)
    for _ in range(20):
        alice.engine.tick()
        tower.poll_once(force=True)
        if bob.engine.journal.get(sid).state is State.REDEEMED:
            break
    assert bob.engine.journal.get(sid).state is State.REDEEMED
    assert alice.engine.tick() == 0
    _ = HtlcState, threading
