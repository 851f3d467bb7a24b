"""Two nodes swap on embedded EVMs through the engine: happy paths, refunds, journal, stream."""

from __future__ import annotations

import asyncio

from kofo.settlement.chain import HtlcState, TxKind, UnixTime
from kofo.settlement.monitor import EventHub, Watchtower
from kofo.settlement.swap import TERMINAL, State
from kofo.settlement.terms import Leg
from tests.swap.helpers import ETHER, Evm, drive, link, make_node, start_swap

TOKENS = 250 * 10**6


def _gas_spent(evm: Evm, node, txids) -> int:
    total = 0
    for txid in txids:
        r = evm.w3.eth.get_transaction_receipt(txid)
        total += r["gasUsed"] * r["effectiveGasPrice"]
    return total


def _txids(node, swap_id, chain):
    return [txid for _k, c, txid, _at in node.engine.journal.all_txs(swap_id) if c == chain]


def test_eth_for_erc20_on_one_chain_pays_both_sides(tmp_path):
    evm = Evm()
    alice = make_node("alice", tmp_path, {"eth": evm})
    bob = make_node("bob", tmp_path, {"eth": evm})
    link(alice, bob)
    ad_a, ad_b = alice.engine.adapters["eth"], bob.engine.adapters["eth"]
    before = {
        "a_eth": ad_a.balance(),
        "a_tok": ad_a.balance(evm.token),
        "b_eth": ad_b.balance(),
        "b_tok": ad_b.balance(evm.token),
    }
    sid = start_swap(
        alice,
        bob,
        Leg("eth", ETHER // 2, alice.address("eth"), bob.address("eth"), UnixTime(0)),
        Leg("eth", TOKENS, bob.address("eth"), alice.address("eth"), UnixTime(0), evm.token),
    )
    states = drive([alice, bob], sid)
    assert states == {"alice": State.REDEEMED, "bob": State.REDEEMED}
    gas_a = _gas_spent(evm, alice, _txids(alice, sid, "eth"))
    gas_b = _gas_spent(evm, bob, _txids(bob, sid, "eth"))
    assert ad_a.balance() == before["a_eth"] - ETHER // 2 - gas_a
    assert ad_a.balance(evm.token) == before["a_tok"] + TOKENS
    assert ad_b.balance() == before["b_eth"] + ETHER // 2 - gas_b
    assert ad_b.balance(evm.token) == before["b_tok"] - TOKENS
    history = [e.state for e in alice.engine.journal.events(sid)]
    assert history == [
        State.PROPOSED,
        State.ACCEPTED,
        State.LOCK_SIGNED,
        State.LOCK_SENT,
        State.LOCKED,
        State.COUNTER_AUDITED,
        State.REDEEM_SIGNED,
        State.REDEEM_SENT,
        State.REDEEMED,
    ]
    bob_history = [e.state for e in bob.engine.journal.events(sid)]
    assert bob_history[0] is State.ACCEPTED and bob_history[-1] is State.REDEEMED
    assert [u.state for u in alice.updates] == history


def test_eth_for_eth_across_two_chains_pays_both_sides(tmp_path):
    one, two = Evm("eth"), Evm("eth2")
    chains = {"eth": one, "eth2": two}
    alice = make_node("alice", tmp_path, chains)
    bob = make_node("bob", tmp_path, chains)
    link(alice, bob)
    a_two_before = alice.engine.adapters["eth2"].balance()
    b_one_before = bob.engine.adapters["eth"].balance()
    sid = start_swap(
        alice,
        bob,
        Leg("eth", ETHER, alice.address("eth"), bob.address("eth"), UnixTime(0)),
        Leg("eth2", 3 * ETHER, bob.address("eth2"), alice.address("eth2"), UnixTime(0)),
    )
    assert drive([alice, bob], sid) == {"alice": State.REDEEMED, "bob": State.REDEEMED}
    gas_a2 = _gas_spent(two, alice, _txids(alice, sid, "eth2"))
    gas_b1 = _gas_spent(one, bob, _txids(bob, sid, "eth"))
    assert alice.engine.adapters["eth2"].balance() == a_two_before + 3 * ETHER - gas_a2
    assert bob.engine.adapters["eth"].balance() == b_one_before + ETHER - gas_b1


def test_a_participant_that_never_locks_is_refunded_around_and_reported(tmp_path):
    evm = Evm()
    alice = make_node("alice", tmp_path, {"eth": evm})
    bob = make_node("bob", tmp_path, {"eth": evm})
    sid = start_swap(
        alice,
        bob,
        Leg("eth", ETHER, alice.address("eth"), bob.address("eth"), UnixTime(0)),
        Leg("eth", TOKENS, bob.address("eth"), alice.address("eth"), UnixTime(0), evm.token),
    )
    before = alice.engine.adapters["eth"].balance()
    terms = alice.engine.terms_of(sid)

    # Bob vanishes after accepting: only Alice runs. Time moves past T_A.
    def move(r: int) -> None:
        evm.advance(60)

    states = drive([alice], sid, rounds=60, between=move)
    assert states["alice"] is State.REFUNDED
    assert evm.now() >= terms.initiator_leg.expiry.value
    fees = _gas_spent(evm, alice, _txids(alice, sid, "eth"))
    assert alice.engine.adapters["eth"].balance() == before - fees
    (ev,) = alice.engine.journal.evidence(sid)
    assert (ev.kind, ev.code) == ("no_lock", "no_lock")


def test_journal_holds_every_signed_tx_before_it_is_on_chain_and_the_secret_stays_private(
    tmp_path,
):
    evm = Evm()
    alice = make_node("alice", tmp_path, {"eth": evm})
    bob = make_node("bob", tmp_path, {"eth": evm})
    link(alice, bob)
    sid = start_swap(
        alice,
        bob,
        Leg("eth", ETHER, alice.address("eth"), bob.address("eth"), UnixTime(0)),
        Leg("eth", TOKENS, bob.address("eth"), alice.address("eth"), UnixTime(0), evm.token),
    )
    preimage = alice.engine.journal.preimage(sid)
    assert preimage is not None and bob.engine.journal.preimage(sid) is None
    for n in (alice, bob):
        n.engine.tick()
    # Before Alice redeems, the secret appears in no event, no repr and no update.
    texts = [repr(e) for e in alice.engine.journal.events(sid)] + [repr(u) for u in alice.updates]
    assert not any(preimage.hex() in t for t in texts)
    drive([alice, bob], sid)
    assert bob.engine.journal.preimage(sid) == preimage  # read from Alice's redeem on chain
    kinds = {k for k, _c, _t, at in alice.engine.journal.all_txs(sid) if at is not None}
    assert kinds == {TxKind.LOCK, TxKind.REDEEM}


def test_subscribers_receive_every_state_change_as_an_async_stream(tmp_path):
    evm = Evm()
    hub = EventHub()
    alice = make_node("alice", tmp_path, {"eth": evm})
    bob = make_node("bob", tmp_path, {"eth": evm})
    alice.engine._publish = hub.publish
    link(alice, bob)

    async def scenario() -> list[State]:
        seen: list[State] = []

        async def consume() -> None:
            async for update in hub.subscribe():
                seen.append(update.state)
                if update.state is State.REDEEMED:
                    return

        task = asyncio.create_task(consume())
        await asyncio.sleep(0)
        sid = start_swap(
            alice,
            bob,
            Leg("eth", ETHER, alice.address("eth"), bob.address("eth"), UnixTime(0)),
            Leg("eth", TOKENS, bob.address("eth"), alice.address("eth"), UnixTime(0), evm.token),
        )
        tower_a, tower_b = Watchtower(alice.engine), Watchtower(bob.engine)
        for _ in range(20):
            await asyncio.to_thread(tower_a.poll_once, force=True)
            await asyncio.to_thread(tower_b.poll_once, force=True)
            if task.done():
                break
        await asyncio.wait_for(task, 5)
        assert [e.state for e in alice.engine.journal.events(sid)] == seen
        return seen

    seen = asyncio.run(scenario())
    assert seen[0] is State.PROPOSED and seen[-1] is State.REDEEMED


def test_a_restarted_engine_finishes_the_swap_from_its_journal(tmp_path):
    evm = Evm()
    alice = make_node("alice", tmp_path, {"eth": evm})
    bob = make_node("bob", tmp_path, {"eth": evm})
    link(alice, bob)
    sid = start_swap(
        alice,
        bob,
        Leg("eth", ETHER, alice.address("eth"), bob.address("eth"), UnixTime(0)),
        Leg("eth", TOKENS, bob.address("eth"), alice.address("eth"), UnixTime(0), evm.token),
    )
    alice.engine.step(sid)  # signs the lock and journals it, then "crashes" before sending
    assert alice.engine.journal.get(sid).state is State.LOCK_SIGNED
    alice.engine.journal.close()
    alice2 = make_node("alice", tmp_path, {"eth": evm}, accounts=alice.accounts, key=alice.key)
    link(alice2, bob)
    Watchtower(alice2.engine).start()  # resume: the stored lock goes out before anything else
    ref = alice2.engine.adapters["eth"].find_htlc(
        alice2.engine.terms_of(sid).initiator_leg.htlc(alice2.engine.terms_of(sid).payment_hash)
    )
    assert ref is not None
    assert alice2.engine.adapters["eth"].status(ref).state is HtlcState.LOCKED
    assert drive([alice2, bob], sid) == {"alice": State.REDEEMED, "bob": State.REDEEMED}


def _drive_all(nodes, sids, rounds=40, between=None):
    for r in range(rounds):
        for n in nodes:
            n.engine.tick()
        if all(n.engine.journal.get(s).state in TERMINAL for n in nodes for s in sids):
            break
        if between is not None:
            between(r)
    return {(n.name, s): n.engine.journal.get(s).state for n in nodes for s in sids}


def _spend_txids(node, sids, kind):
    return {tx.txid for s in sids for tx in node.engine.journal.txs(s, kind)}


def test_redeems_falling_due_together_go_out_in_one_transaction(tmp_path):
    """Issue 20: the engine batches the redeems that fall due in one tick on a chain whose
    adapter offers BatchSettlement: one redeem_many pays each swap's recipient."""
    evm = Evm()
    alice = make_node("alice", tmp_path, {"eth": evm})
    bob = make_node("bob", tmp_path, {"eth": evm})
    link(alice, bob)
    ad_a, ad_b = alice.engine.adapters["eth"], bob.engine.adapters["eth"]
    before_tok, before_eth = ad_a.balance(evm.token), ad_b.balance()
    sids = [
        start_swap(
            alice,
            bob,
            Leg("eth", ETHER // 4, alice.address("eth"), bob.address("eth"), UnixTime(0)),
            Leg(
                "eth", TOKENS + i, bob.address("eth"), alice.address("eth"), UnixTime(0), evm.token
            ),
        )
        for i in range(3)
    ]
    states = _drive_all([alice, bob], sids)
    assert set(states.values()) == {State.REDEEMED}
    # Bob's three redeems (of Alice's ETH legs) fall due in the same tick: one transaction,
    # each swap storing it as its own. Alice's (of Bob's token legs) go out one by one: a token
    # payout can fail (a token its owner pauses) and would hold back the whole batch.
    assert len(_spend_txids(bob, sids, TxKind.REDEEM)) == 1
    assert len(_spend_txids(alice, sids, TxKind.REDEEM)) == 3
    assert ad_a.balance(evm.token) == before_tok + 3 * TOKENS + 3
    gas_b = _gas_spent(evm, bob, {t for s in sids for t in _txids(bob, s, "eth")})
    assert ad_b.balance() == before_eth + 3 * (ETHER // 4) - gas_b
    # Each swap's own HTLC shows its redeem (with the secret) in that one transaction (the
    # swaps after the first may find it mined already: signed, then redeemed).
    (txid,) = _spend_txids(bob, sids, TxKind.REDEEM)
    for sid in sids:
        history = [e.state for e in bob.engine.journal.events(sid)]
        assert State.REDEEM_SIGNED in history and history[-1] is State.REDEEMED
        ref = bob.engine.adapters["eth"].find_htlc(
            bob.engine.terms_of(sid).initiator_leg.htlc(bob.engine.terms_of(sid).payment_hash),
            spent_since=0,
        )
        assert ref is not None
        status = ad_b.status(ref)
        assert status.state is HtlcState.REDEEMED and status.spend_txid == txid


def test_refunds_falling_due_together_go_out_in_one_transaction(tmp_path):
    evm = Evm()
    alice = make_node("alice", tmp_path, {"eth": evm})
    bob = make_node("bob", tmp_path, {"eth": evm})
    sids = [
        start_swap(
            alice,
            bob,
            Leg("eth", ETHER // 4 + i, alice.address("eth"), bob.address("eth"), UnixTime(0)),
            Leg("eth", TOKENS, bob.address("eth"), alice.address("eth"), UnixTime(0), evm.token),
        )
        for i in range(2)
    ]
    before = alice.engine.adapters["eth"].balance()

    def move(r: int) -> None:
        evm.advance(60)

    # Bob vanishes after accepting: Alice locks both and refunds both at T_A, in one go.
    states = _drive_all([alice], sids, rounds=80, between=move)
    assert set(states.values()) == {State.REFUNDED}
    assert len(_spend_txids(alice, sids, TxKind.REFUND)) == 1
    fees = _gas_spent(evm, alice, {t for s in sids for t in _txids(alice, s, "eth")})
    assert alice.engine.adapters["eth"].balance() == before - fees
