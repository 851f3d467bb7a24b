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
from kofo.wire.swap import Accept, Cancel, Error, Propose, SwapBody
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


# -- case 1: one lock, two swaps -------------------------------------------------------------


def _world(kind: str, evm_world, btc_world_factory):
    """(``between`` that moves every chain one step, alice, bob, give, get) for ``kind``:
    ``"eth"`` pays ETH for ERC-20 tokens on one EVM, ``"btc"`` pays BTC for ETH."""
    if kind == "eth":
        evm, alice, bob = evm_world
        return (lambda _r: evm.advance(10)), alice, bob, *_eth_for_tokens(evm, alice, bob)
    btc, evm, alice, bob = btc_world_factory()

    def between(_r: int) -> None:
        btc.mine(1)
        evm.advance(10)

    return between, alice, bob, *_btc_for_eth(alice, bob)


@pytest.fixture
def btc_world_factory(tmp_path):
    made: list[Btc] = []

    def factory():
        btc, evm = Btc("btc"), Evm()
        made.append(btc)
        chains = {"btc": btc, "eth": evm}
        alice = make_node("alice", tmp_path, chains)  # type: ignore[arg-type]
        bob = make_node("bob", tmp_path, chains)  # type: ignore[arg-type]
        return btc, evm, alice, bob

    yield factory
    for btc in made:
        btc.close()


def _twin_terms(alice: Node, bob: Node, give: Leg, get: Leg) -> tuple[bytes, SwapTerms, SwapTerms]:
    """The attack's two proposals: identical initiator legs (hash, amount, addresses,
    expiry), participant legs one base unit apart."""
    import hashlib

    secret = os.urandom(32)
    one = _terms(alice, bob, give, get, hashlib.sha256(secret).digest())
    two = replace(
        one,
        swap_id=os.urandom(16),
        participant_leg=replace(one.participant_leg, amount=one.participant_leg.amount - 1),
    )
    return secret, one, two


def _own_lock_count(node: Node, sid: bytes) -> int:
    from kofo.settlement.chain import TxKind

    return sum(1 for tx in node.engine.journal.txs(sid, TxKind.LOCK) if tx.kind is TxKind.LOCK)


def _redeem_as_attacker(alice: Node, terms: SwapTerms, secret: bytes) -> None:
    htlc = terms.participant_leg.htlc(terms.payment_hash)
    ad = alice.engine.adapters[htlc.chain]
    ref = ad.find_htlc(htlc)
    assert ref is not None
    ad.broadcast(ad.prepare_redeem(ref, secret))


@pytest.mark.parametrize("kind", ["eth", "btc"])
def test_a_payment_hash_the_journal_knows_is_refused_for_a_new_swap(
    kind, evm_world, btc_world_factory
):
    between, alice, bob, give, get = _world(kind, evm_world, btc_world_factory)
    secret, one, two = _twin_terms(alice, bob, give, get)
    pays = bob.engine.adapters[get.chain]
    before = pays.balance(get.token)
    assert isinstance(_offer(alice, bob, one), Accept)
    reply = _offer(alice, bob, two)
    assert isinstance(reply, Error) and reply.code == "terms_payment_hash_known", reply
    assert [s.swap_id for s in bob.engine.journal.swaps()] == [one.swap_id]
    # The one lock pays the one swap: bob locks once, is paid once.
    _lock(alice, one.initiator_leg.htlc(one.payment_hash))
    for r in range(12):
        bob.engine.tick()
        if bob.engine.journal.get(one.swap_id).state is State.LOCKED:
            break
        between(r)
    assert bob.engine.journal.get(one.swap_id).state is State.LOCKED
    _redeem_as_attacker(alice, one, secret)
    states = drive([bob], one.swap_id, rounds=12, between=between)
    assert states["bob"] is State.REDEEMED
    spent = before - pays.balance(get.token)
    if get.token is None:  # ETH: the lock plus gas
        assert one.participant_leg.amount <= spent < one.participant_leg.amount + ETHER // 100
    else:
        assert spent == one.participant_leg.amount


def test_a_payment_hash_of_our_own_proposal_is_refused_when_offered_back(evm_world):
    """As initiator we hold the secret of our hash; a swap offered to us under the same hash
    (anyone saw it in our proposal) is refused too, in either role."""
    evm, alice, bob = evm_world
    ours = alice.engine.propose(*_eth_for_tokens(evm, alice, bob), participant_node=bob.node_id)
    a_leg, b_leg = _eth_for_tokens(evm, bob, alice)
    back = _terms(bob, alice, a_leg, b_leg, ours.payment_hash)
    reply = alice.engine.handle(Propose(back), bob.node_id)
    assert isinstance(reply, Error) and reply.code == "terms_payment_hash_known", reply


def test_a_participant_serves_two_initiators_that_share_a_payment_hash(evm_world, tmp_path):
    """The ledger lets an order reuse a payment hash it saw (a taker's, in the mempool) with
    keys of its own, so that nobody can squat a taker's hash (docs/clearance.md); a maker can
    then be drawn into two orders under one hash by two initiators. It accepts both, and each
    swap pays it from its own counterparty's lock. Before, the second was refused
    (terms_payment_hash_known) and the maker failed that order: an honest provider slashed."""
    import hashlib

    evm, alice, bob = evm_world
    carol = make_node("carol", tmp_path, {"eth": evm})
    secret = os.urandom(32)
    h = hashlib.sha256(secret).digest()
    one = _terms(alice, bob, *_eth_for_tokens(evm, alice, bob), h)
    two = _terms(carol, bob, *_eth_for_tokens(evm, carol, bob, amount=ETHER // 2), h)
    assert isinstance(_offer(alice, bob, one), Accept)
    reply = _offer(carol, bob, two)
    assert isinstance(reply, Accept), reply
    # carol copying alice's lock (her own leg's keys) is still refused: twins
    twin = _terms(carol, bob, one.initiator_leg, two.participant_leg, h)
    reply = _offer(carol, bob, twin)
    assert isinstance(reply, Error) and reply.code == "terms_payment_hash_known", reply

    tokens = bob.engine.adapters["eth"]
    tokens_before = tokens.balance(evm.token)
    _lock(alice, one.initiator_leg.htlc(h))
    _lock(carol, two.initiator_leg.htlc(h))
    for _r in range(20):
        bob.engine.tick()
        states = {bob.engine.journal.get(t.swap_id).state for t in (one, two)}
        if states == {State.LOCKED}:
            break
        evm.advance(10)
    assert states == {State.LOCKED}
    assert _own_lock_count(bob, one.swap_id) == _own_lock_count(bob, two.swap_id) == 1
    _redeem_as_attacker(alice, one, secret)
    _redeem_as_attacker(carol, two, secret)
    for t in (one, two):
        states = drive([bob], t.swap_id, rounds=20, between=lambda _r: evm.advance(10))
        assert states["bob"] is State.REDEEMED
    # bob paid each swap's tokens once and was paid each swap's ETH
    assert tokens_before - tokens.balance(evm.token) == (
        one.participant_leg.amount + two.participant_leg.amount
    )


def test_a_maker_serves_one_taker_twice_under_one_hash_with_other_keys(evm_world, tmp_path):
    """Any taker, no sybil needed: it takes two of a maker's quotes with one payment hash and
    other chain keys in each order (the ledger allows it: other keys, other HTLCs), locks both
    legs 0, and the maker's engine refused the second proposal (same initiator node), never
    locked it, and was slashed 5 % for it. The node id adds nothing to the maker's safety:
    the keys differ, so each swap is paid by its own lock (bound by ``claims``). Served now;
    the same keys (issue 16's twins) stay refused."""
    evm, alice, bob = evm_world
    other = make_node("alice-2", tmp_path, {"eth": evm})  # alice's second account's keys
    secret = os.urandom(32)
    h = __import__("hashlib").sha256(secret).digest()
    one = _terms(alice, bob, *_eth_for_tokens(evm, alice, bob), h)
    two = _terms(alice, bob, *_eth_for_tokens(evm, other, bob, amount=ETHER // 2), h)
    assert isinstance(_offer(alice, bob, one), Accept)
    reply = _offer(alice, bob, two)
    assert isinstance(reply, Accept), reply  # old code: Error terms_payment_hash_known

    tokens = bob.engine.adapters["eth"]
    tokens_before = tokens.balance(evm.token)
    _lock(alice, one.initiator_leg.htlc(h))
    _lock(other, two.initiator_leg.htlc(h))
    for _r in range(20):
        bob.engine.tick()
        states = {bob.engine.journal.get(t.swap_id).state for t in (one, two)}
        if states == {State.LOCKED}:
            break
        evm.advance(10)
    assert states == {State.LOCKED}
    assert _own_lock_count(bob, one.swap_id) == _own_lock_count(bob, two.swap_id) == 1
    _redeem_as_attacker(alice, one, secret)
    _redeem_as_attacker(other, two, secret)
    for t in (one, two):
        states = drive([bob], t.swap_id, rounds=20, between=lambda _r: evm.advance(10))
        assert states["bob"] is State.REDEEMED
    assert tokens_before - tokens.balance(evm.token) == (
        one.participant_leg.amount + two.participant_leg.amount
    )


def test_a_maker_serves_a_griefer_that_reuses_the_makers_own_payment_hash(evm_world, tmp_path):
    """A node that both takes (initiator, its own secret) and quotes (participant): its taker
    order's payment hash is public on the ledger, and the ledger lets another order reuse it
    with other keys. A griefer takes the node's quote with that hash and locks its leg: the
    node's engine refused the proposal (the hash is its own initiator swap's), never locked,
    and was slashed for the order (leg_not_locked, 5 %; or 2 % had it not committed). Serving
    it is safe: the participant swap never holds the secret (the journal keeps it per swap),
    so it reveals nothing before the node's own initiator swap is paid in, and a participant's
    safety never rests on the secret anyway."""
    evm, alice, bob = evm_world
    carol = make_node("carol", tmp_path, {"eth": evm})
    bob_gives, bob_gets = _eth_for_tokens(evm, bob, alice)
    sid1 = start_swap(bob, alice, bob_gives, bob_gets)
    one = bob.engine.journal.get(sid1).terms
    h = one.payment_hash
    two = _terms(carol, bob, *_eth_for_tokens(evm, carol, bob, amount=ETHER // 2), h)
    reply = _offer(carol, bob, two)
    assert isinstance(reply, Accept), reply  # old code: Error terms_payment_hash_known
    # the griefer copying the counterparty keys of bob's own swap (alice's) is still refused
    twin = _terms(
        carol, bob, replace(two.initiator_leg, sender=one.participant_leg.sender),
        two.participant_leg, h,
    )  # fmt: skip
    reply = _offer(carol, bob, twin)
    assert isinstance(reply, Error) and reply.code == "terms_payment_hash_known", reply

    tokens = bob.engine.adapters["eth"]
    tokens_before = tokens.balance(evm.token)
    _lock(carol, two.initiator_leg.htlc(h))
    for _r in range(20):  # alice does nothing yet: bob's own swap is not paid in
        bob.engine.tick()
        if bob.engine.journal.get(two.swap_id).state is State.LOCKED:
            break
        evm.advance(10)
    assert bob.engine.journal.get(two.swap_id).state is State.LOCKED
    # the secret stayed in bob's initiator swap: nothing of swap two used or showed it
    assert bob.engine.journal.preimage(two.swap_id) is None
    ad = carol.engine.adapters["eth"]
    carol_lock = ad.find_htlc(two.initiator_leg.htlc(h))
    assert carol_lock is not None and ad.status(carol_lock).state is HtlcState.LOCKED
    ours = ad.find_htlc(one.initiator_leg.htlc(h))  # bob's own lock, not yet redeemable
    assert ours is not None and ad.status(ours).state is HtlcState.LOCKED

    states = drive([bob, alice], sid1, rounds=30, between=lambda _r: evm.advance(10))
    assert states == {"bob": State.REDEEMED, "alice": State.REDEEMED}
    secret = bob.engine.journal.preimage(sid1)
    assert secret is not None
    _redeem_as_attacker(carol, two, secret)  # public now: bob's redeem showed it
    states = drive([bob], two.swap_id, rounds=20, between=lambda _r: evm.advance(10))
    assert states["bob"] is State.REDEEMED
    # bob was paid each swap's tokens and paid carol's once
    assert tokens.balance(evm.token) - tokens_before == (
        one.participant_leg.amount - two.participant_leg.amount
    )


@pytest.mark.parametrize("kind", ["eth", "btc"])
def test_one_lock_is_bound_to_one_swap_even_in_a_journal_holding_two_under_its_hash(
    kind, evm_world, btc_world_factory
):
    """A journal written before hashes were checked holds both twin swaps. Alice locks her
    leg once; the lock is bound to the first swap that audits it, the second never counts it
    and aborts at its deadline: bob locks once."""
    from kofo.settlement.swap import Role
    from kofo.wire.codec import encode
    from kofo.wire.swap import terms_to_wire

    between, alice, bob, give, get = _world(kind, evm_world, btc_world_factory)
    _secret, one, two = _twin_terms(alice, bob, give, get)
    assert isinstance(_offer(alice, bob, one), Accept)
    journal = bob.engine.journal
    journal.create_swap(Role.PARTICIPANT, replace(two, payment_hash=os.urandom(32)), State.ACCEPTED)
    with journal._lock:
        db = journal._db
        db.execute(
            "UPDATE swaps SET terms=? WHERE swap_id=?", (encode(terms_to_wire(two)), two.swap_id)
        )
        if "payment_hash" in {row[1] for row in db.execute("PRAGMA table_info(swaps)")}:
            db.execute(
                "UPDATE swaps SET payment_hash=? WHERE swap_id=?", (two.payment_hash, two.swap_id)
            )
    _lock(alice, one.initiator_leg.htlc(one.payment_hash))
    for r in range(40):
        bob.engine.tick()
        if journal.get(two.swap_id).state is State.ABORTED:
            break
        between(r)
    assert journal.get(two.swap_id).state is State.ABORTED
    assert _own_lock_count(bob, one.swap_id) == 1
    assert _own_lock_count(bob, two.swap_id) == 0


# -- cases 2 and 3: a co-signer that stalls ----------------------------------------------------

STALL = 30.0
"""How long the stalling co-signer holds a request before it acts as if time had passed. A
fixed engine waits at most its ``cosign_wait`` (1 s here) and is done long before; the old
engine waited for the answer, so the attack went on."""


def _start_short(alice: Node, bob: Node, give: Leg, get: Leg) -> bytes:
    """Alice proposes with a 30 s accept window (30 devnet blocks), bob accepts."""
    terms = alice.engine.propose(give, get, participant_node=bob.node_id, accept_window=30)
    reply = bob.engine.handle(Propose(terms), alice.node_id)
    assert isinstance(reply, Accept), reply
    assert alice.engine.handle(reply, bob.node_id) is None
    return terms.swap_id


def _lock_both(btc: Btc, alice: Node, bob: Node, sid: bytes) -> None:
    """Both lock; alice (the initiator) does not look at bob's lock yet."""
    for _ in range(12):
        if alice.engine.journal.get(sid).state is not State.LOCKED:
            alice.engine.tick()
        if bob.engine.journal.get(sid).state is not State.LOCKED:
            bob.engine.tick()
        if {n.engine.journal.get(sid).state for n in (alice, bob)} == {State.LOCKED}:
            return
        btc.mine(1)
    raise AssertionError("the locks did not both confirm")


def _spend_by_hand(node: Node, terms: SwapTerms, leg: Leg, preimage: bytes | None) -> None:
    """The attacker's own redeem (``preimage``) or refund of ``leg``, through its adapter."""
    from kofo.settlement.chains.bitcoin._secp import ensure_thread_params

    ensure_thread_params()
    ad = node.engine.adapters[leg.chain]
    ref = ad.find_htlc(leg.htlc(terms.payment_hash))
    assert ref is not None
    tx = ad.prepare_refund(ref) if preimage is None else ad.prepare_redeem(ref, preimage)
    ad.broadcast(tx)


def test_a_co_signer_that_reads_the_secret_and_stalls_cannot_steal_from_the_initiator(btc_world):
    """Case 3. Alice (initiator) gives ETH for bob's Taproot BTC and asks bob to co-sign her
    claim: the request carries the secret. Bob reads it and stalls; were alice to wait, he
    would refund his BTC at T_B and redeem her ETH with the secret. Alice waits no longer than
    her rule allows (the wait ends before initiator_redeem_by) and claims by the leaf."""
    btc, _evm, alice, bob = btc_world
    link(alice, bob)
    alice.engine.cosign_wait = 1.0
    give = Leg("eth", ETHER, alice.address("eth"), bob.address("eth"), UnixTime(0))
    get = Leg(
        "btc", BTC_AMOUNT, addr(bob, "btc"), addr(alice, "btc"), BlockHeight(0), output="p2tr"
    )
    sid = _start_short(alice, bob, give, get)
    _lock_both(btc, alice, bob, sid)
    terms = alice.engine.terms_of(sid)
    btc_before = alice.engine.adapters["btc"].balance()
    released = threading.Event()
    stolen: list[bytes] = []

    def stall(_sid: bytes, body: SwapBody) -> SwapBody | None:
        stolen.append(body.preimage)  # type: ignore[union-attr]
        if not released.wait(STALL):  # alice is still waiting: the clock runs on
            btc.mine_to(terms.participant_leg.expiry.value)
            _spend_by_hand(bob, terms, terms.participant_leg, None)  # refund his BTC at T_B
            btc.mine(1)
            _spend_by_hand(bob, terms, terms.initiator_leg, body.preimage)  # type: ignore[union-attr]
        return Error(_sid, "cosign_refused", "stalled")

    alice.engine._request = stall
    try:
        states = drive([alice], sid, rounds=20, between=lambda _r: btc.mine(1))
    finally:
        released.set()
    assert stolen == [alice.engine.journal.preimage(sid)]  # the attack did get the secret
    assert states["alice"] is State.REDEEMED
    got = alice.engine.adapters["btc"].balance() - btc_before
    assert BTC_AMOUNT - 10_000 < got <= BTC_AMOUNT  # the leaf claim, minus its fee
    # Bob takes her ETH with the secret: that is the swap, and alice is whole.
    _spend_by_hand(bob, terms, terms.initiator_leg, stolen[0])


def test_a_co_signer_that_stalls_cannot_strand_the_participant(btc_world):
    """Case 2. Alice (initiator) gives Taproot BTC for bob's ETH. She redeems bob's ETH (the
    secret is public) and stalls bob's request to co-sign his claim of her BTC; were bob to
    wait, she would refund her BTC at T_A. Bob waits no longer than his deadline allows and
    claims by the leaf."""
    btc, _evm, alice, bob = btc_world
    link(alice, bob)
    bob.engine.cosign_wait = 1.0
    give = Leg(
        "btc", BTC_AMOUNT, addr(alice, "btc"), addr(bob, "btc"), BlockHeight(0), output="p2tr"
    )
    get = Leg("eth", ETHER, bob.address("eth"), alice.address("eth"), UnixTime(0))
    sid = _start_short(alice, bob, give, get)
    _lock_both(btc, alice, bob, sid)
    terms = alice.engine.terms_of(sid)
    secret = alice.engine.journal.preimage(sid)
    assert secret is not None
    _spend_by_hand(alice, terms, terms.participant_leg, secret)  # she takes bob's ETH
    btc_before = bob.engine.adapters["btc"].balance()
    released = threading.Event()
    asked: list[SwapBody] = []

    def stall(_sid: bytes, body: SwapBody) -> SwapBody | None:
        asked.append(body)
        if not released.wait(STALL):  # bob is still waiting: the clock runs on
            btc.mine_to(terms.initiator_leg.expiry.value)
            _spend_by_hand(alice, terms, terms.initiator_leg, None)  # refund her BTC at T_A
            btc.mine(1)
        return Error(_sid, "cosign_refused", "stalled")

    bob.engine._request = stall
    try:
        states = drive([bob], sid, rounds=20, between=lambda _r: btc.mine(1))
    finally:
        released.set()
    assert len(asked) == 1  # he did ask
    assert states["bob"] is State.REDEEMED
    got = bob.engine.adapters["btc"].balance() - btc_before
    assert BTC_AMOUNT - 10_000 < got <= BTC_AMOUNT


def test_a_peer_answering_one_byte_at_a_time_is_cut_off_at_the_total_deadline(monkeypatch):
    """The HTTP channel's timeout is for the whole exchange, not per socket read: a peer that
    dribbles a valid answer a byte every 50 ms is cut off at SEND_TIMEOUT."""
    import socket

    from kofo.settlement import peer_http

    monkeypatch.setattr(peer_http, "SEND_TIMEOUT", 0.5)
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(30)
    stop = threading.Event()

    def dribble() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(65536)
            answer = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 100
            for byte in answer:  # bounded: at most ~7 s, and ends once the client hangs up
                if stop.wait(0.05):
                    return
                try:
                    conn.sendall(bytes([byte]))
                except OSError:
                    return

    worker = threading.Thread(target=dribble, daemon=True)
    worker.start()
    client = peer_http.PeerClient(
        __import__(
            "cryptography.hazmat.primitives.asymmetric.ed25519", fromlist=["Ed25519PrivateKey"]
        ).Ed25519PrivateKey.generate()
    )
    host, port = server.getsockname()
    try:
        with pytest.raises(peer_http.PeerError) as caught:
            client.send_bytes(f"http://{host}:{port}{peer_http.PATH}", b"request")
        assert caught.value.code == "peer_unreachable"
    finally:
        stop.set()
        worker.join(10)
        server.close()


# -- case 4: the accept policy and the funds a node commits ------------------------------------


def test_an_engine_without_an_accept_policy_refuses_every_proposal(evm_world, tmp_path):
    from kofo.settlement.engine import SwapEngine
    from kofo.settlement.journal import Journal

    evm, alice, bob = evm_world
    plain = SwapEngine(
        Journal(tmp_path / "plain.sqlite"),
        bob.engine.adapters,
        bob.engine.policies,
        bob.key,
    )
    terms = alice.engine.propose(*_eth_for_tokens(evm, alice, bob), participant_node=bob.node_id)
    reply = plain.handle(Propose(terms), alice.node_id)
    assert isinstance(reply, Error) and reply.code == "terms_not_offered", reply
    assert plain.journal.swaps() == []


def test_the_offer_policy_allows_only_the_offered_asset_amount_and_price(tmp_path):
    from kofo.settlement.terms import Offer, accept_offers

    evm = Evm()
    alice = make_node("alice", tmp_path, {"eth": evm})
    # Bob sells up to 200 TUSD at >= 0.01 ETH per TUSD (10**16 wei per 10**6 base units).
    offer = Offer(("eth", evm.token), ("eth", None), 200 * 10**6, 10**16, 10**6)
    bob = make_node("bob", tmp_path, {"eth": evm}, accept_policy=accept_offers(offer))

    def offer_of(eth: int, tusd: int, token: str | None = evm.token) -> SwapBody | None:
        give = Leg("eth", eth, alice.address("eth"), bob.address("eth"), UnixTime(0))
        get = Leg("eth", tusd, bob.address("eth"), alice.address("eth"), UnixTime(0), token)
        terms = alice.engine.propose(give, get, participant_node=bob.node_id)
        return bob.engine.handle(Propose(terms), alice.node_id)

    assert isinstance(offer_of(ETHER // 10, 10 * 10**6), Accept)  # 0.01 ETH per TUSD
    for eth, tusd, token in (
        (ETHER // 10 - 1, 10 * 10**6, evm.token),  # a wei short of the price
        (3 * ETHER, 300 * 10**6, evm.token),  # more than offered
        (ETHER // 10, 10**16, None),  # bob's ETH instead of his tokens
    ):
        reply = offer_of(eth, tusd, token)
        assert isinstance(reply, Error) and reply.code == "terms_not_offered", (eth, tusd, reply)


def test_a_node_cannot_be_made_to_commit_more_than_it_holds(evm_world):
    """Bob holds 5 ETH. Proposals asking 2 ETH of him each: two are accepted, the third
    would commit 6: refused. When a swap ends its reservation is released."""
    evm, alice, bob = evm_world
    held = bob.engine.adapters["eth"].balance()
    assert 4 * ETHER < held < 6 * ETHER

    def ask_two_eth() -> SwapBody | None:
        give = Leg("eth", TOKENS, alice.address("eth"), bob.address("eth"), UnixTime(0), evm.token)
        get = Leg("eth", 2 * ETHER, bob.address("eth"), alice.address("eth"), UnixTime(0))
        terms = alice.engine.propose(give, get, participant_node=bob.node_id)
        return bob.engine.handle(Propose(terms), alice.node_id)

    first, second = ask_two_eth(), ask_two_eth()
    assert isinstance(first, Accept) and isinstance(second, Accept)
    assert bob.engine.reserved("eth") == 4 * ETHER
    reply = ask_two_eth()
    assert isinstance(reply, Error) and reply.code == "terms_funds", reply
    assert len(bob.engine.journal.swaps()) == 2
    # Alice never locks the first: it aborts at its deadline and frees its 2 ETH.
    drive([bob], first.swap_id, rounds=30, between=lambda _r: evm.advance(30))
    assert bob.engine.journal.get(first.swap_id).state is State.ABORTED
    assert isinstance(ask_two_eth(), Accept)


# -- case 5: proposal floods -------------------------------------------------------------------


def _junk(evm: Evm, alice: Node, bob: Node) -> SwapBody | None:
    """A proposal for one token unit that alice will never lock."""
    give = Leg("eth", 1, alice.address("eth"), bob.address("eth"), UnixTime(0))
    get = Leg("eth", 1, bob.address("eth"), alice.address("eth"), UnixTime(0), evm.token)
    return bob.engine.handle(
        Propose(alice.engine.propose(give, get, participant_node=bob.node_id)), alice.node_id
    )


def test_one_peer_cannot_open_more_than_its_share_of_swaps(evm_world):
    from kofo.settlement.engine import PeerLimits

    evm, alice, bob = evm_world
    per_peer = PeerLimits().open_swaps_per_peer
    bob.engine._clock = lambda: 0.0  # no refill: the burst alone would stop at 20
    for _ in range(per_peer):
        assert isinstance(_junk(evm, alice, bob), Accept)
    reply = _junk(evm, alice, bob)
    assert isinstance(reply, Error) and reply.code == "peer_limit", reply
    assert len(bob.engine.journal.swaps(unfinished=True)) == per_peer


def test_one_peer_cannot_send_proposals_faster_than_its_rate(evm_world):
    from kofo.settlement.engine import PeerLimits

    evm, alice, bob = evm_world
    now = [0.0]
    bob.engine._clock = lambda: now[0]
    bob.engine.limits = PeerLimits(proposal_burst=3, proposals_per_minute=6)
    for _ in range(3):
        assert isinstance(_junk(evm, alice, bob), Accept)
    reply = _junk(evm, alice, bob)
    assert isinstance(reply, Error) and reply.code == "peer_rate_limited", reply
    now[0] += 10.0  # one proposal's worth at 6 a minute
    assert isinstance(_junk(evm, alice, bob), Accept)
    reply = _junk(evm, alice, bob)
    assert isinstance(reply, Error) and reply.code == "peer_rate_limited", reply


def test_open_junk_swaps_cost_a_tick_nothing_until_their_chain_moves(evm_world):
    """Five accepted proposals alice never locks. While no block comes and no message, a
    tick reads nothing for them; a new block makes each be looked at once."""
    evm, alice, bob = evm_world
    for _ in range(5):
        assert isinstance(_junk(evm, alice, bob), Accept)
    ad = bob.engine.adapters["eth"]
    real_find = ad.find_htlc
    searches: list[bytes] = []

    def counting(terms, **kw):
        searches.append(terms.payment_hash)
        return real_find(terms, **kw)

    ad.find_htlc = counting  # type: ignore[method-assign]
    bob.engine.tick()
    assert len(searches) == 5
    for _ in range(3):
        assert bob.engine.tick() == 5
    assert len(searches) == 5  # nothing new on chain: nothing read
    evm.advance(1)
    bob.engine.tick()
    assert len(searches) == 10
    # A message for one of them (its lock notice, say) has it looked at again, alone.
    from kofo.wire.swap import Locked

    rec = bob.engine.journal.swaps(unfinished=True)[0]
    htlc = rec.terms.initiator_leg.htlc(rec.terms.payment_hash)
    bob.engine.handle(Locked(rec.swap_id, "0x" + "00" * 32, "0x" + "00" * 32, htlc), alice.node_id)
    bob.engine.tick()
    assert searches[10:] == [rec.terms.payment_hash]


# -- siblings found on the attacker's pass -----------------------------------------------------


def test_a_peer_slow_to_take_a_notice_does_not_hold_the_engine(evm_world):
    """Alice's lock notice goes to a bob that takes it as slowly as it likes (a dribbling
    HTTP peer). Meanwhile alice's engine still answers messages: the notice is sent after
    the engine lock is released (old: sent under it, so every message and swap waited)."""
    evm, alice, bob = evm_world
    sid = start_swap(alice, bob, *_eth_for_tokens(evm, alice, bob))
    entered, released = threading.Event(), threading.Event()

    def slow_notice(_sid: bytes, _body: SwapBody) -> None:
        entered.set()
        released.wait(STALL)

    alice.engine._notify = slow_notice
    driver = threading.Thread(target=alice.engine.drive, args=(sid,), daemon=True)
    driver.start()
    try:
        assert entered.wait(60)  # alice locked and is handing bob the notice
        answered: list[SwapBody | None] = []
        other = alice.engine.propose(
            *_eth_for_tokens(evm, alice, bob), participant_node=bob.node_id
        )
        asker = threading.Thread(
            target=lambda: answered.append(
                alice.engine.handle(Cancel(other.swap_id, "no"), bob.node_id)
            ),
            daemon=True,
        )
        asker.start()
        asker.join(STALL / 2)
        assert not released.is_set() and answered == [None]
        assert alice.engine.journal.get(other.swap_id).state is State.REJECTED
    finally:
        released.set()
        driver.join(60)


def test_a_proposal_checked_against_a_node_answering_garbage_is_refused_not_raised(evm_world):
    """The fee read behind the dust check answers NaN (a malformed RPC answer): the proposal
    gets a refusal; nothing escapes to the channel's server thread, nothing is journaled."""
    evm, alice, bob = evm_world

    def nan_fees(*_a, **_k):
        raise _Malformed("estimatesmartfee answered NaN")

    bob.engine.adapters["eth"].min_amount = nan_fees  # type: ignore[method-assign]
    terms = alice.engine.propose(*_eth_for_tokens(evm, alice, bob), participant_node=bob.node_id)
    reply = bob.engine.handle(Propose(terms), alice.node_id)
    assert isinstance(reply, Error) and reply.code == "terms_unchecked", reply
    assert bob.engine.journal.swaps() == []


def test_a_counterparty_cannot_make_the_engine_co_sign_without_end(btc_world):
    """Each co-signature request costs the sender a chain read and a MuSig2 signature under
    its engine lock; one swap's counterparty gets a bounded number of them."""
    from kofo.settlement import engine
    from kofo.wire.swap import ClaimCosigned, CosignClaim

    limit = getattr(engine, "COSIGN_ANSWERS_PER_SWAP", 8)  # (the old engine had no limit)

    btc, _evm, alice, bob = btc_world
    give = Leg("eth", ETHER, alice.address("eth"), bob.address("eth"), UnixTime(0))
    get = Leg(
        "btc", BTC_AMOUNT, addr(bob, "btc"), addr(alice, "btc"), BlockHeight(0), output="p2tr"
    )
    sid = _start_short(alice, bob, give, get)
    _lock_both(btc, alice, bob, sid)
    terms = alice.engine.terms_of(sid)
    secret = alice.engine.journal.preimage(sid)
    ad = alice.engine.adapters["btc"]
    ref = ad.find_htlc(terms.participant_leg.htlc(terms.payment_hash))
    assert ref is not None and secret is not None
    replies = []
    for _ in range(limit + 1):
        claim = ad.begin_cooperative_claim(ref)  # type: ignore[attr-defined]
        body = CosignClaim(sid, "btc", claim.raw, claim.nonce, secret)
        replies.append(bob.engine.handle(body, alice.node_id))
    assert all(isinstance(r, ClaimCosigned) for r in replies[:-1])
    assert isinstance(replies[-1], Error) and replies[-1].code == "cosign_refused"
    assert "times already" in replies[-1].message
