"""The maker acts from the committed order (issue 14, the daemon's trust bugs 1 and 2), two
pipelines in-process on the embedded chains and the solo ledger (``test_trades``' harness).

1. A taker that commits an order, locks its leg (the HTLC is fixed by the order) and never
   proposes could file ``leg_not_locked`` against the maker, whose engine never heard of the
   swap. The maker now looks for leg 0's lock itself once the order is committed and locks
   leg 1 from the order, by the order's ``legs[1].lock_by``.
2. A maker whose ledger read fails (unreachable, slow) answered a proposal with a definite
   refusal (``terms_not_offered``): the committed trade was given up and the taker refunded.
   It now answers "not yet" (``ledger_not_yet``); the taker's swap stays proposed and the
   next proposal is accepted once the ledger answers.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time

import pytest

from kofo.errors import KofoError
from kofo.node.ledger_client import LedgerClient
from kofo.node.service import TradeRequest
from kofo.node.trades import engine_legs
from kofo.settlement.chain import HtlcState
from kofo.settlement.journal import UnknownSwap
from kofo.settlement.swap import State
from tests.node.test_trades import Net, _commit_tx, _order, _party
from tests.node.test_trades import net as net  # the fixture
from tests.swap.helpers import link

pytestmark = pytest.mark.timeout(300)


def _state(party, oid: bytes) -> State | None:
    try:
        return party.node.engine.journal.get(oid).state
    except UnknownSwap:
        return None


def test_a_taker_that_locks_and_never_proposes_gets_the_makers_lock(net: Net, tmp_path) -> None:
    taker, maker = _party("taker", tmp_path, net), _party("maker", tmp_path, net)
    link(taker.node, maker.node)
    preimage = os.urandom(32)
    order = _order(taker, maker, net, payment_hash=hashlib.sha256(preimage).digest())
    oid = order.order_id
    maker.pipe.expect(order)
    taker.pipe.submit(_commit_tx(order, taker, maker), preimage=preimage)
    assert maker.pipe.watch_commit(oid).status == "committed"

    # committed, nothing locked: the maker starts nothing (an honest taker proposes first)
    with net.lock:
        assert maker.pipe.start_as_maker(oid) is None
    assert _state(maker, oid) is None and maker.node.engine.unfinished() == []

    # the taker locks leg 0 by hand, exactly as the order fixes it, and never proposes
    a, b = engine_legs(order, taker.node.engine.policies)
    with net.lock:
        taker.node.engine.adapters["btc"].lock(a.htlc(order.payment_hash))
        net.btc.mine(1)
        terms = maker.pipe.start_as_maker(oid)
    assert terms is not None
    assert terms.swap_id == oid and terms.payment_hash == order.payment_hash
    assert terms.initiator_leg.expiry == a.expiry and terms.participant_leg.expiry == b.expiry
    # the maker's lock deadline is no later than the order's legs[1].lock_by
    assert terms.participant_lock_by.value <= order.legs[1].lock_by
    assert _state(maker, oid) is State.ACCEPTED
    with net.lock:
        assert maker.pipe.start_as_maker(oid) is None  # once

    # the maker's engine sees the taker's lock and locks leg 1, by itself
    for _ in range(60):
        with net.lock:
            maker.node.engine.tick()
            state = _state(maker, oid)
            if state is State.LOCKED:
                break
            net.btc.mine(1)
        time.sleep(0.02)
    assert _state(maker, oid) is State.LOCKED
    with net.lock:
        eth = maker.node.engine.adapters["eth"]
        ref = eth.find_htlc(b.htlc(order.payment_hash))
        assert ref is not None and eth.status(ref).state is HtlcState.LOCKED

    # the ledger's validators attest both legs locked: no leg_not_locked can stand
    for _ in range(200):
        rec = net.app.order(oid)
        if rec is not None and [x["outcome"] for x in rec["legs"]] == ["locked", "locked"]:
            break
        with net.lock:
            net.btc.mine(1)
        time.sleep(0.05)
    rec = net.app.order(oid)
    assert rec is not None and [x["outcome"] for x in rec["legs"]] == ["locked", "locked"]
    assert rec["legs"][1]["locked_at"] <= order.legs[1].lock_by


def test_a_maker_whose_ledger_does_not_answer_says_not_yet_and_accepts_later(
    net: Net, tmp_path
) -> None:
    taker, maker = _party("taker", tmp_path, net), _party("maker", tmp_path, net)
    link(taker.node, maker.node)
    taker.pipe.send = taker.node.engine._request
    preimage = os.urandom(32)
    order = _order(taker, maker, net, payment_hash=hashlib.sha256(preimage).digest())
    oid = order.order_id
    maker.pipe.expect(order)
    taker.pipe.submit(_commit_tx(order, taker, maker), preimage=preimage)

    # the maker's ledger does not answer (nothing listens there); its watcher has not seen
    # the commit, so the proposal's check asks the ledger, and gets no answer
    maker.pipe.ledger = LedgerClient("http://127.0.0.1:9", timeout=0.5)
    with net.lock, pytest.raises(KofoError) as not_yet:
        taker.pipe.start_as_taker(oid)
    # not a refusal: the taker's swap is still proposed (it was rejected, trade failed)
    assert not_yet.value.code == "proposal_not_yet", not_yet.value
    assert _state(taker, oid) is State.PROPOSED
    assert _state(maker, oid) is None

    # the ledger answers again: the same proposal, sent again, is accepted
    maker.pipe.ledger = net.client
    with net.lock:
        taker.pipe.start_as_taker(oid)
    assert _state(taker, oid) is State.ACCEPTED
    assert _state(maker, oid) is State.ACCEPTED


@pytest.mark.timeout(600)
def test_the_makers_daemon_locks_from_the_committed_order_when_no_proposal_comes(
    tmp_path,
) -> None:
    """The same through the daemons (the watcher's wiring): a taker whose proposals never
    leave it, and who locks its leg by hand; the maker's daemon locks its own leg."""
    asyncio.run(_daemon_no_proposal(tmp_path))


async def _daemon_no_proposal(tmp_path) -> None:
    from tests.node.test_daemon import PRICE, SATS, network, until

    async with network(tmp_path) as net:
        taker, maker = net.nodes["taker"], net.nodes["maker"]
        assert taker.pipeline is not None and maker.engine is not None
        taker.pipeline.send = None  # its proposals never leave it
        await until(lambda: len(taker.exchange.book.pair("btc", "eth", 0)), "the offer")  # type: ignore[union-attr]
        view = await taker.create_trade(
            TradeRequest(sell="btc", amount=SATS, buy="eth", min_receive=SATS * PRICE // 2)
        )
        got = await until(
            lambda: (v := taker.store.find(view.trade_id)) and v.height and v, "the commit", 180
        )
        oid = bytes.fromhex(got.order_id)
        found = taker.phases.order(oid)
        assert found is not None
        order = found[1]
        a, _b = engine_legs(order, taker.chains.policies)  # type: ignore[union-attr]
        await asyncio.sleep(2)  # the maker's watcher has seen the commit, and no proposal
        assert _engine_state(maker, oid) is None
        await asyncio.to_thread(
            taker.chains.adapters["btc"].lock,  # type: ignore[union-attr]
            a.htlc(order.payment_hash),
        )
        await until(lambda: _engine_state(maker, oid) is State.LOCKED, "the maker's lock", 120)
        row = maker.store.by_order(oid.hex())
        assert row is not None and "started_from_order" in [p.phase for p in row.phases]

        async def both_locked():
            rec = await taker.ledger_order(oid.hex())
            return rec.outcomes == {"0": "locked", "1": "locked"}

        await until(both_locked, "both legs attested locked", 120)


def _engine_state(node, oid: bytes) -> State | None:
    try:
        return node.engine.journal.get(oid).state
    except UnknownSwap:
        return None
