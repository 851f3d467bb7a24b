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
from dataclasses import replace

import pytest

from kofo.errors import KofoError
from kofo.node.ledger_client import LedgerClient
from kofo.node.service import TradeRequest
from kofo.node.trades import engine_legs, maker_terms
from kofo.settlement.chain import HtlcState
from kofo.settlement.journal import UnknownSwap
from kofo.settlement.swap import State
from kofo.wire.swap import Error, Propose
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


def test_a_taker_that_drains_its_proposal_budget_still_gets_the_makers_lock(
    net: Net, tmp_path
) -> None:
    # Attacker's pass (session 5): the order path ran the maker's engine.accept, which takes
    # a proposal token from the taker's bucket first. A taker that locks leg 0 and keeps its
    # own bucket empty with junk proposals (20 at once, then one as each token comes back)
    # had every start_as_maker refused (peer_rate_limited) until legs[1].lock_by passed:
    # the maker never locked, and the taker could file leg_not_locked against it. The
    # bucket bounds what proposals cost; a committed order with its lock on the chain is no
    # proposal, so the order path no longer takes a token.
    taker, maker = _party("taker", tmp_path, net), _party("maker", tmp_path, net)
    link(taker.node, maker.node)
    preimage = os.urandom(32)
    order = _order(taker, maker, net, payment_hash=hashlib.sha256(preimage).digest())
    oid = order.order_id
    maker.pipe.expect(order)
    taker.pipe.submit(_commit_tx(order, taker, maker), preimage=preimage)
    assert maker.pipe.watch_commit(oid).status == "committed"
    a, _b = engine_legs(order, taker.node.engine.policies)
    # the bucket refills at one token a second; the taker spends each as it comes back
    # (modelled without a race: no refill)
    engine = maker.node.engine
    engine.limits = replace(engine.limits, proposals_per_minute=0)
    with net.lock:
        taker.node.engine.adapters["btc"].lock(a.htlc(order.payment_hash))
        net.btc.mine(1)
        junk = replace(
            maker_terms(
                order,
                engine.policies,
                engine.now(("btc", "eth")),
                maker_node=maker.node.node_id,
                wall_now=int(time.time()),
            ),
            swap_id=os.urandom(16),
        )
        codes = set()
        for _ in range(engine.limits.proposal_burst + 1):
            reply = engine.handle(
                Propose(replace(junk, swap_id=os.urandom(16))), taker.node.node_id
            )
            assert isinstance(reply, Error)
            codes.add(reply.code)
        assert "peer_rate_limited" in codes  # the taker's own bucket is empty
        terms = maker.pipe.start_as_maker(oid)
    assert terms is not None and terms.swap_id == oid
    assert _state(maker, oid) is State.ACCEPTED
    # proposals stay rate limited
    with net.lock:
        reply = engine.handle(Propose(replace(junk, swap_id=os.urandom(16))), taker.node.node_id)
    assert isinstance(reply, Error) and reply.code == "peer_rate_limited"


def test_a_taker_at_its_open_swap_limit_still_gets_the_makers_lock(net: Net, tmp_path) -> None:
    # The same class: the open-swap limits bound what accepted *proposals* make the maker
    # watch. A taker holding open_swaps_per_peer accepted swaps with the maker (proposed,
    # never locked) that locks another committed order's leg 0 without proposing had the
    # order path refused (peer_limit) until legs[1].lock_by: leg_not_locked against the
    # maker. Each committed order is one the maker co-signed (its liquidity holds bound
    # them): the order path no longer counts against these limits.
    taker, maker = _party("taker", tmp_path, net), _party("maker", tmp_path, net)
    link(taker.node, maker.node)
    taker.pipe.send = taker.node.engine._request
    engine = maker.node.engine
    engine.limits = replace(engine.limits, open_swaps_per_peer=1)
    orders = []
    for _ in range(2):
        preimage = os.urandom(32)
        order = _order(taker, maker, net, payment_hash=hashlib.sha256(preimage).digest())
        maker.pipe.expect(order)
        taker.pipe.submit(_commit_tx(order, taker, maker), preimage=preimage)
        assert maker.pipe.watch_commit(order.order_id).status == "committed"
        orders.append(order)
    first, second = orders
    with net.lock:
        taker.pipe.start_as_taker(first.order_id)  # accepted, then never locked
    assert _state(maker, first.order_id) is State.ACCEPTED
    a, _b = engine_legs(second, taker.node.engine.policies)
    with net.lock:
        taker.node.engine.adapters["btc"].lock(a.htlc(second.payment_hash))
        net.btc.mine(1)
        terms = maker.pipe.start_as_maker(second.order_id)
    assert terms is not None and terms.swap_id == second.order_id
    assert _state(maker, second.order_id) is State.ACCEPTED


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


@pytest.mark.timeout(600)
def test_a_maker_that_refuses_a_junk_proposal_still_locks_from_the_committed_order(
    tmp_path,
) -> None:
    """Issue 14 (session 6, bug 1): a taker's proposal that does not match the committed
    order reached the maker before its watcher had read the commit. The accept policy read
    the order (phase ``committed``) and refused; no swap moved the maker's trade row on, so it
    stayed ``ordering`` for ever and the watcher, which starts the maker from the order only
    for a ``committed`` row, never did: that taker could lock its leg and file
    ``leg_not_locked``. Now the refusal is on the row with its reason, nothing starts from
    the junk terms, the row becomes ``committed`` and the maker locks from the order once the
    taker's leg is on the chain. The taker's own swap, rejected, ends its trade ``failed``."""
    asyncio.run(_daemon_junk_proposal(tmp_path))


async def _daemon_junk_proposal(tmp_path) -> None:
    from tests.node.test_daemon import PRICE, SATS, _ended, network, until

    async with network(tmp_path) as net:
        taker, maker = net.nodes["taker"], net.nodes["maker"]
        assert taker.pipeline is not None and maker.engine is not None
        send = taker.pipeline.send
        assert send is not None

        def junk(swap_id: bytes, body):
            if isinstance(body, Propose):  # one base unit more than the order's leg 1
                t = body.terms
                leg = replace(t.participant_leg, amount=t.participant_leg.amount + 1)
                body = Propose(replace(t, participant_leg=leg))
            return send(swap_id, body)

        taker.pipeline.send = junk

        async def ledger_not_read_yet(trade, order) -> None:
            return None  # the maker's watcher has not read the commit (a slow ledger)

        maker._watch_signed = ledger_not_read_yet  # type: ignore[method-assign]
        await until(lambda: len(taker.exchange.book.pair("btc", "eth", 0)), "the offer")  # type: ignore[union-attr]
        view = await taker.create_trade(
            TradeRequest(sell="btc", amount=SATS, buy="eth", min_receive=SATS * PRICE // 2)
        )
        done = await until(lambda: _ended(taker, view.trade_id), "the taker's trade to end", 240)
        # the taker's swap was rejected: its trade ends (nothing of its own locked)
        assert done.state == "failed" and "terms_not_offered" in done.error, done
        oid = bytes.fromhex(done.order_id)
        assert _engine_state(taker, oid) is State.REJECTED
        # nothing started at the maker from the refused terms
        assert _engine_state(maker, oid) is None
        order = taker.phases.order(oid)[1]  # type: ignore[index]
        a, _b = engine_legs(order, taker.chains.policies)  # type: ignore[union-attr]
        # the taker locks its leg as the order fixes it: the maker locks its own from the order
        await asyncio.to_thread(
            taker.chains.adapters["btc"].lock,  # type: ignore[union-attr]
            a.htlc(order.payment_hash),
        )
        await until(lambda: _engine_state(maker, oid) is State.LOCKED, "the maker's lock", 180)
        row = maker.store.by_order(oid.hex())
        assert row is not None
        phases = [p.phase for p in row.phases]
        for want in ("committed", "proposal_refused", "started_from_order"):
            assert want in phases, phases
        refused = next(p for p in row.phases if p.phase == "proposal_refused")
        assert "terms_not_offered" in refused.detail["reason"], refused
        assert "participant_leg.amount" in refused.detail["reason"], refused


def _engine_state(node, oid: bytes) -> State | None:
    try:
        return node.engine.journal.get(oid).state
    except UnknownSwap:
        return None


def test_a_proposal_resent_after_a_lost_accept_is_accepted_again(net: Net, tmp_path) -> None:
    """The maker accepted, its answer never reached the taker (a restart, a dropped link):
    the taker proposes again. The same terms get the same accept (idempotent by swap id and
    terms digest), not ``terms_payment_hash_known`` (which rejected the taker's swap and
    failed the committed trade while the maker waited for a lock). A different proposal under
    the same id is still refused as new, and the re-send takes no proposal token."""
    taker, maker = _party("taker", tmp_path, net), _party("maker", tmp_path, net)
    link(taker.node, maker.node)
    real = taker.node.engine._request
    lost = [True]

    def send(swap_id, body):
        reply = real(swap_id, body)
        if lost[0]:
            lost[0] = False
            return None  # delivered, handled; the answer lost on the way back
        return reply

    taker.pipe.send = send
    preimage = os.urandom(32)
    order = _order(taker, maker, net, payment_hash=hashlib.sha256(preimage).digest())
    oid = order.order_id
    maker.pipe.expect(order)
    taker.pipe.submit(_commit_tx(order, taker, maker), preimage=preimage)
    with net.lock:
        taker.pipe.start_as_taker(oid)
    assert _state(taker, oid) is State.PROPOSED and _state(maker, oid) is State.ACCEPTED

    maker.node.engine.limits = replace(maker.node.engine.limits, proposal_burst=0)
    with net.lock:
        taker.pipe.start_as_taker(oid)  # the daemon's re-send: the same proposal
    assert _state(taker, oid) is State.ACCEPTED
    assert _state(maker, oid) is State.ACCEPTED

    # another proposal under the accepted id is no re-send
    terms = taker.node.engine.terms_of(oid)
    other = replace(terms, initiator_lock_by=replace(terms.initiator_lock_by, value=1))
    sender = taker.node.engine.node_id
    reply = maker.node.engine.handle(Propose(other), sender)
    assert isinstance(reply, Error) and reply.code == "peer_rate_limited", reply  # the limits
    maker.node.engine.limits = replace(maker.node.engine.limits, proposal_burst=5)
    maker.node.engine._buckets.pop(sender, None)  # a full bucket again
    reply = maker.node.engine.handle(Propose(other), sender)
    assert isinstance(reply, Error) and reply.code == "terms_payment_hash_known", reply
    assert _state(maker, oid) is State.ACCEPTED
    assert maker.node.engine.terms_of(oid) == terms
