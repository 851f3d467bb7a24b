"""Issue 16's last open suspicions on the engine, confirmed through the real engine on the
embedded EVM: the accept's scan start in the swap's own journal transaction (a crash between
them lost it), and notice threads with a cap of their own (a peer that never takes a notice
could make a node hold a thread per notice)."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from kofo.settlement.chain import UnixTime
from kofo.settlement.journal import Journal
from kofo.settlement.swap import State
from kofo.settlement.terms import Leg
from kofo.wire.swap import Propose, SwapBody
from tests.swap.helpers import ETHER, Evm, make_node, start_swap

TOKENS = 100 * 10**6


class _Crash(BaseException):
    """The process dying at this point (a SIGKILL between two journal transactions)."""


@pytest.mark.timeout(120)
def test_a_crash_right_after_the_accept_never_loses_where_to_scan_from(tmp_path):
    evm = Evm()
    alice = make_node("alice", tmp_path, {"eth": evm})
    bob = make_node("bob", tmp_path, {"eth": evm})
    give = Leg("eth", ETHER, alice.address("eth"), bob.address("eth"), UnixTime(0))
    get = Leg("eth", TOKENS, bob.address("eth"), alice.address("eth"), UnixTime(0), evm.token)
    terms = alice.engine.propose(give, get, participant_node=bob.node_id)
    real_store = bob.engine.journal.store_notice

    def die_on_scan_note(swap_id: bytes, kind: str, body: dict[str, Any]) -> None:
        if kind == "scan_from":
            raise _Crash  # the old accept wrote it in a transaction of its own, after the swap
        real_store(swap_id, kind, body)

    bob.engine.journal.store_notice = die_on_scan_note  # type: ignore[method-assign]
    try:
        bob.engine.handle(Propose(terms), alice.node_id)
    except _Crash:
        pass
    bob.engine.journal.close()
    after = Journal(tmp_path / "bob.sqlite")  # the node restarted
    swap = after.get(terms.swap_id)
    assert swap.state is State.ACCEPTED
    note = after.notice(terms.swap_id, "scan_from")
    assert note is not None and set(note) == {"eth"}  # old code: None (search from genesis)
    assert 0 <= note["eth"] <= evm.w3.eth.block_number


def _notice_threads() -> set[threading.Thread]:
    """The notice threads alive now (objects, not a count: one left by an earlier test may
    end meanwhile without changing which ones this test started)."""
    return {t for t in threading.enumerate() if t.name == "notices" and t.is_alive()}


@pytest.mark.timeout(180)
def test_a_peer_that_never_takes_a_notice_holds_one_thread_not_one_per_notice(tmp_path):
    evm = Evm()
    alice = make_node("alice", tmp_path, {"eth": evm})
    bob = make_node("bob", tmp_path, {"eth": evm})
    swaps = 8
    sids = []
    for _ in range(swaps):
        give = Leg("eth", 10**15, alice.address("eth"), bob.address("eth"), UnixTime(0))
        get = Leg("eth", 1000, bob.address("eth"), alice.address("eth"), UnixTime(0), evm.token)
        sids.append(start_swap(alice, bob, give, get))
    release = threading.Event()
    taken: list[tuple[bytes, str]] = []

    def never_answers(swap_id: bytes, body: SwapBody) -> None:
        release.wait(120)  # bounded: the test releases it
        taken.append((swap_id, type(body).__name__))

    alice.engine._notify = never_answers
    alice.engine.peer_wait_per_tick = 0.0  # the watchtower waits on no peer
    before = _notice_threads()
    try:
        alice.engine.tick()  # every swap locks and queues its Locked notice for bob
        assert all(alice.engine.journal.get(s).state is State.LOCKED for s in sids)
        held = _notice_threads() - before
        assert len(held) == 1  # old code: one thread per notice (8), all stuck on bob
    finally:
        release.set()
    for _ in range(600):  # bounded: each notice is then delivered, once
        if len(taken) == swaps and not _notice_threads() - before:
            break
        threading.Event().wait(0.1)
    assert sorted(taken) == sorted((s, "Locked") for s in sids)
    assert not _notice_threads() - before
