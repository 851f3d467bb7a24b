"""Issue 17 section 4: a finalized block reaches the store only at Commit, so finalizing the
same block again (CometBFT restarted without the app) gives the same app hash, and queries never
see a block that is not committed."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kofo.clearance.app import Block
from kofo.wire.orders import LegOutcome, ReportOutcome, sign_tx

from .helpers import T0, Ledger, Party, commit_tx, make_order

pytestmark = pytest.mark.timeout(120)

PARTIES = [Party.make(i) for i in range(4)]


def _txs() -> list[bytes]:
    alice, m1, m2, _ = PARTIES
    order = make_order([alice, m1, m2])
    return [
        *(p.register_tx() for p in PARTIES),
        commit_tx(order, [alice, m1, m2], alice),
        sign_tx(
            m1.key, ReportOutcome(order.order_id, 0, LegOutcome.LOCKED, "tx0"), ts=T0
        ),  # refused
        alice.register_tx(),  # refused: already registered in this block
    ]


TXS = _txs()


def test_finalizing_a_block_again_before_commit_gives_the_same_app_hash():
    once = Ledger()
    block = Block(1, T0, tuple(TXS))
    first = once.app.finalize_block(block)
    again = once.app.finalize_block(block)  # CometBFT restarted: the same block, again
    assert again.app_hash == first.app_hash
    assert [r.code for r in again.results] == [r.code for r in first.results]
    assert once.app.commit() == first.app_hash
    fresh = Ledger()
    assert fresh.app.apply_block(block).app_hash == first.app_hash


def test_a_different_block_finalized_after_an_uncommitted_one_replaces_it():
    ledger = Ledger()
    ledger.app.finalize_block(Block(1, T0, tuple(TXS[:2])))
    result = ledger.app.finalize_block(Block(1, T0, (TXS[2],)))
    ledger.app.commit()
    assert ledger.app.node(PARTIES[0].id) is None
    assert ledger.app.node(PARTIES[2].id) is not None
    fresh = Ledger()
    assert fresh.app.apply_block(Block(1, T0, (TXS[2],))).app_hash == result.app_hash


def test_queries_see_only_committed_state():
    ledger = Ledger()
    ledger.app.finalize_block(Block(1, T0, (PARTIES[0].register_tx(),)))
    assert ledger.app.node(PARTIES[0].id) is None
    assert ledger.app.tx_count() == 0
    ledger.app.commit()
    assert ledger.app.node(PARTIES[0].id) is not None
    assert ledger.app.tx_count() == 1


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    first=st.lists(st.sampled_from(range(len(TXS))), max_size=6),
    second=st.lists(st.sampled_from(range(len(TXS))), max_size=6),
    junk=st.lists(st.binary(max_size=40), max_size=3),
    refinalize=st.booleans(),
)
def test_block_execution_is_a_function_of_committed_state_and_block(
    first, second, junk, refinalize
):
    b1 = Block(1, T0, tuple(TXS[i] for i in first) + tuple(junk))
    b2 = Block(2, T0 + 5, tuple(TXS[i] for i in second))
    hashes = []
    for replay in (False, True):
        ledger = Ledger()
        if replay and refinalize:
            ledger.app.finalize_block(b2.__class__(1, T0, tuple(TXS[i] for i in second)))
        r1 = ledger.app.finalize_block(b1)
        if replay:
            r1 = ledger.app.finalize_block(b1)
        ledger.app.commit()
        r2 = ledger.app.apply_block(b2)
        hashes.append((r1.app_hash, r2.app_hash, [r.code for r in r1.results + r2.results]))
    assert hashes[0] == hashes[1]
