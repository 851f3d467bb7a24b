"""Two nodes swap Bitcoin-like legs against Ethereum legs through the engine, on embedded chains.

Each Bitcoin-like chain is one :class:`EmbeddedChain` shared by both nodes; expiries there are
block heights while the Ethereum leg's are block timestamps, so every swap here mixes the units.
Time moves by mining Bitcoin blocks and by jumping the EVM's clock, never by sleeping.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import pytest
from bitcointx.core import CBitcoinTransaction as CTransaction
from bitcointx.core import b2lx

from kofo.errors import ChainError
from kofo.settlement.chain import BlockHeight, HtlcState, SignedTx, TxKind, UnixTime
from kofo.settlement.chains.bitcoin._secp import ensure_thread_params
from kofo.settlement.chains.bitcoin.adapter import BitcoinAdapter
from kofo.settlement.chains.bitcoin.embedded import EmbeddedChain
from kofo.settlement.engine import SECRET_SHARED, CrashHook
from kofo.settlement.peer_http import PeerError, PeerNotReached
from kofo.settlement.swap import TERMINAL, State
from kofo.settlement.terms import Leg, TermsRefused
from kofo.wire.swap import (
    Accept,
    ClaimCosigned,
    CosignClaim,
    Error,
    Locked,
    Propose,
    SwapBody,
    open_swap,
    sign_swap,
)
from tests.swap.btc_helpers import (
    Btc,
    addr,
    btc_fee,
    confirmed_tx,
    expected_after,
    fees_paid,
    holdings,
)
from tests.swap.helpers import ETHER, Evm, Node, drive, link, make_node

BTC_AMOUNT = 1_500_000  # sats
LTC_AMOUNT = 40_000_000  # litoshis
TOKENS = 250 * 10**6  # 250 TUSD (6 decimals)
ACCEPT_WINDOW = 30
"""Short accept window (in seconds, i.e. 30 devnet blocks) so refund tests mine few blocks."""


@dataclass
class World:
    chains: dict[str, Btc | Evm]
    alice: Node
    bob: Node

    def btc_like(self) -> list[Btc]:
        return [c for c in self.chains.values() if isinstance(c, Btc)]

    def mine(self, _round: int = 0) -> None:
        """One block on every Bitcoin-like chain (the EVM mines a block per transaction)."""
        for c in self.btc_like():
            c.mine(1)


@pytest.fixture
def world_factory(tmp_path) -> Iterator[Callable[[str], World]]:
    made: list[Btc] = []

    def factory(btc_chain: str) -> World:
        btc = Btc(btc_chain)
        made.append(btc)
        chains: dict[str, Btc | Evm] = {btc_chain: btc, "eth": Evm()}
        alice = make_node("alice", tmp_path, chains)  # type: ignore[arg-type]
        bob = make_node("bob", tmp_path, chains)  # type: ignore[arg-type]
        return World(chains, alice, bob)

    yield factory
    for btc in made:
        btc.close()


def _leg(w: World, payer: Node, payee: Node, chain: str, amount: int, token: bool = False) -> Leg:
    evm = w.chains["eth"]
    tok = evm.token if token and isinstance(evm, Evm) else None
    unit = BlockHeight(0) if isinstance(w.chains[chain], Btc) else UnixTime(0)
    return Leg(chain, amount, addr(payer, chain), addr(payee, chain), unit, tok)


def _start(w: World, give: Leg, get: Leg) -> bytes:
    """Alice proposes with a short accept window, Bob accepts; both over signed wire bytes."""
    return _propose(w.alice, w.bob, give, get)


def _propose(initiator: Node, participant: Node, give: Leg, get: Leg) -> bytes:
    """``initiator`` proposes, ``participant`` accepts; both over signed wire bytes."""
    terms = initiator.engine.propose(
        give, get, participant_node=participant.node_id, accept_window=ACCEPT_WINDOW
    )
    body, sender = open_swap(sign_swap(initiator.key, Propose(terms)).to_bytes(), participant.guard)
    reply = participant.engine.handle(body, sender)
    assert isinstance(reply, Accept)
    body, sender = open_swap(sign_swap(participant.key, reply).to_bytes(), initiator.guard)
    assert initiator.engine.handle(body, sender) is None
    return terms.swap_id


def _start_btc_for_eth(
    w: World, chain: str = "btc", amount: int = BTC_AMOUNT
) -> tuple[Leg, Leg, set[tuple[str, str | None]], dict, bytes]:
    """Link the nodes and start Alice's ``amount`` on ``chain`` (a Bitcoin-like one) for Bob's
    2 ETH; returns both legs, the assets, each node's holdings before, and the swap id."""
    alice, bob = w.alice, w.bob
    link(alice, bob)
    give = _leg(w, alice, bob, chain, amount)
    get = _leg(w, bob, alice, "eth", 2 * ETHER)
    assets = {(chain, None), ("eth", None)}
    before = {n.name: holdings(n, assets) for n in (alice, bob)}
    return give, get, assets, before, _start(w, give, get)


def _assert_exact_holdings(w: World, give: Leg, get: Leg, assets, before: dict, sid: bytes) -> None:
    """Each node holds what it held before, minus what it gave, plus what it got, minus the
    fees its confirmed transactions paid: nothing more, nothing less."""
    for node in (w.alice, w.bob):
        gives, gets = (give, get) if node is w.alice else (get, give)
        assert holdings(node, assets) == expected_after(
            before[node.name], gives=gives, gets=gets, fees=fees_paid(node, sid)
        )


PAIRS = {
    # name: (btc-like chain, initiator leg (chain, amount, token?), participant leg)
    "btc_for_eth": ("btc", ("btc", BTC_AMOUNT, False), ("eth", 2 * ETHER, False)),
    "eth_for_btc": ("btc", ("eth", ETHER, False), ("btc", BTC_AMOUNT, False)),
    "btc_for_erc20": ("btc", ("btc", BTC_AMOUNT, False), ("eth", TOKENS, True)),
    "ltc_for_eth": ("ltc", ("ltc", LTC_AMOUNT, False), ("eth", ETHER // 4, False)),
}


@pytest.mark.parametrize("pair", list(PAIRS))
def test_swap_pays_both_sides_exactly_the_agreed_amounts(world_factory, pair):
    btc_chain, (c1, a1, t1), (c2, a2, t2) = PAIRS[pair]
    w = world_factory(btc_chain)
    alice, bob = w.alice, w.bob
    link(alice, bob)
    give = _leg(w, alice, bob, c1, a1, t1)
    get = _leg(w, bob, alice, c2, a2, t2)
    assets = {(c1, None), (c2, None), (c1, give.token), (c2, get.token)}
    before = {n.name: holdings(n, assets) for n in (alice, bob)}

    sid = _start(w, give, get)
    terms = alice.engine.terms_of(sid)
    # Each deadline is in its own chain's unit: heights on Bitcoin-like chains, time on eth.
    for leg in (terms.initiator_leg, terms.participant_leg):
        unit = BlockHeight if leg.chain == btc_chain else UnixTime
        assert type(leg.expiry) is unit
    assert type(terms.initiator_lock_by) is type(terms.initiator_leg.expiry)
    assert type(terms.initiator_redeem_by) is type(terms.participant_leg.expiry)

    states = drive([alice, bob], sid, between=w.mine)
    assert states == {"alice": State.REDEEMED, "bob": State.REDEEMED}
    preimage = alice.engine.journal.preimage(sid)
    assert preimage is not None and hashlib.sha256(preimage).digest() == terms.payment_hash
    assert bob.engine.journal.preimage(sid) == preimage  # read off the chain alice redeemed on
    _assert_exact_holdings(w, give, get, assets, before, sid)
    assert alice.engine.journal.evidence(sid) == [] and bob.engine.journal.evidence(sid) == []


@pytest.mark.parametrize("cooperative", [True, False], ids=["key_path", "leaf"])
@pytest.mark.parametrize("pair", ["btc_for_eth", "eth_for_btc", "ltc_for_eth"])
def test_a_taproot_leg_is_claimed_by_the_key_path_when_both_sign_else_by_its_leaf(
    world_factory, pair, cooperative
):
    btc_chain, (c1, a1, t1), (c2, a2, t2) = PAIRS[pair]
    w = world_factory(btc_chain)
    alice, bob = w.alice, w.bob
    link(alice, bob, requests=cooperative)
    give = _leg(w, alice, bob, c1, a1, t1)
    get = _leg(w, bob, alice, c2, a2, t2)
    give, get = (replace(g, output="p2tr") if g.chain == btc_chain else g for g in (give, get))
    assets = {(c1, None), (c2, None)}
    before = {n.name: holdings(n, assets) for n in (alice, bob)}

    sid = _start(w, give, get)
    terms = bob.engine.terms_of(sid)  # bob's copy came over the wire: the form travelled
    btc_leg = terms.initiator_leg if c1 == btc_chain else terms.participant_leg
    assert btc_leg.output == "p2tr"

    states = drive([alice, bob], sid, between=w.mine)
    assert states == {"alice": State.REDEEMED, "bob": State.REDEEMED}
    _assert_exact_holdings(w, give, get, assets, before, sid)
    secret = alice.engine.journal.preimage(sid)
    assert secret is not None and bob.engine.journal.preimage(sid) == secret
    assert alice.engine.journal.evidence(sid) == [] and bob.engine.journal.evidence(sid) == []
    # On chain: the lock pays a v1 witness program (OP_1 <32 bytes>).
    locker, claimer = (alice, bob) if c1 == btc_chain else (bob, alice)
    lock_out = confirmed_tx(locker, btc_chain, sid, TxKind.LOCK).vout
    assert any(bytes(o.scriptPubKey)[:2] == b"\x51\x20" for o in lock_out)
    claim = confirmed_tx(claimer, btc_chain, sid, TxKind.REDEEM)
    stack = list(claim.wit.vtxinwit[0].scriptWitness.stack)
    if cooperative:
        # One 64-byte signature of both keys: 99 vB, and no secret on this chain.
        assert len(stack) == 1 and len(stack[0]) == 64
        assert claim.get_virtual_size() == 99 and secret not in claim.serialize()
    else:
        # The claim leaf: signature, preimage, leaf script, control block.
        assert len(stack) == 4 and stack[1] == secret
        assert stack[3][0] & 0xFE == 0xC0


def _taproot_swap(w: World, pair: str) -> tuple[Leg, Leg, set, dict, bytes]:
    """Start ``pair`` (from :data:`PAIRS`) with its Bitcoin-like leg as a Taproot HTLC."""
    btc_chain, (c1, a1, t1), (c2, a2, t2) = PAIRS[pair]
    give = _leg(w, w.alice, w.bob, c1, a1, t1)
    get = _leg(w, w.bob, w.alice, c2, a2, t2)
    give, get = (replace(g, output="p2tr") if g.chain == btc_chain else g for g in (give, get))
    assets = {(c1, None), (c2, None)}
    before = {n.name: holdings(n, assets) for n in (w.alice, w.bob)}
    return give, get, assets, before, _start(w, give, get)


@pytest.mark.parametrize(
    "failure",
    ["cheating_cosigner", "peer_not_reached", "peer_unreachable", "broken_channel", "refused"],
)
@pytest.mark.parametrize("pair", ["btc_for_eth", "eth_for_btc"])
def test_a_cooperative_claim_that_fails_falls_back_to_the_leaf_and_the_swap_completes(
    world_factory, pair, failure
):
    w = world_factory("btc")
    alice, bob = w.alice, w.bob
    link(alice, bob)
    give, get, assets, before, sid = _taproot_swap(w, pair)
    claimer = bob if pair == "btc_for_eth" else alice
    honest = claimer.engine._request
    assert honest is not None
    asked: list[SwapBody] = []

    def failing(swap_id: bytes, body: SwapBody) -> SwapBody | None:
        asked.append(body)
        if failure == "peer_not_reached":  # the request never left: the secret stays ours
            raise PeerNotReached("peer http://127.0.0.1:9 not reached: refused")
        if failure == "peer_unreachable":  # it left, no answer came: it may have arrived
            honest(swap_id, body)
            raise PeerError("peer http://127.0.0.1:9 did not answer", code="peer_unreachable")
        if failure == "broken_channel":  # not a KofoError: still only a fallback
            raise ConnectionResetError("reset by peer")
        if failure == "refused":  # a secret that is not the swap's
            body = replace(body, preimage=bytes(32))  # type: ignore[arg-type]
        reply = honest(swap_id, body)
        if failure == "cheating_cosigner":
            assert isinstance(reply, ClaimCosigned)
            return replace(reply, partial_sig=(1).to_bytes(32, "big"))
        assert isinstance(reply, Error) and reply.code == "cosign_refused"
        assert "does not hash to the swap's payment hash" in reply.message
        return reply

    claimer.engine._request = failing
    states = drive([alice, bob], sid, between=w.mine)
    assert states == {"alice": State.REDEEMED, "bob": State.REDEEMED}
    assert len(asked) == 1 and isinstance(asked[0], CosignClaim)
    if claimer is alice:  # the initiator: her secret counts as shown unless it never left
        shown = alice.engine.journal.notice(sid, SECRET_SHARED) is not None
        assert shown is (failure != "peer_not_reached")
    _assert_exact_holdings(w, give, get, assets, before, sid)
    claim = confirmed_tx(claimer, "btc", sid, TxKind.REDEEM)
    assert len(claim.wit.vtxinwit[0].scriptWitness.stack) == 4  # the claim leaf


def _eth_for_taproot_btc(world_factory: Callable[[str], World]) -> tuple[World, Btc, bytes]:
    """Linked nodes; alice proposes her ETH for bob's BTC in a Taproot HTLC."""
    w = world_factory("btc")
    btc = w.chains["btc"]
    assert isinstance(btc, Btc)
    link(w.alice, w.bob)
    *_, sid = _taproot_swap(w, "eth_for_btc")
    return w, btc, sid


def _lock_both(w: World, btc: Btc, sid: bytes) -> None:
    """Alice locks ETH, bob audits it and locks BTC; alice does not look at bob's lock yet."""
    alice, bob = w.alice, w.bob
    for _ in range(8):
        alice.engine.tick() if alice.engine.journal.get(sid).state is not State.LOCKED else None
        bob.engine.tick()
        btc.mine(1)
    assert alice.engine.journal.get(sid).state is State.LOCKED
    assert bob.engine.journal.get(sid).state is State.LOCKED


def test_the_participant_co_signs_only_for_the_secret_and_then_redeems_at_once(world_factory):
    """ETH for Taproot BTC, stepped by hand: Alice (initiator) asks Bob to co-sign her claim of
    his BTC leg. Requests without the secret, for another output, or spending something else
    are refused; the real one is answered, and Bob redeems Alice's ETH at once."""
    w, btc, sid = _eth_for_taproot_btc(world_factory)
    alice, bob = w.alice, w.bob
    _lock_both(w, btc, sid)
    terms = alice.engine.terms_of(sid)
    secret = alice.engine.journal.preimage(sid)
    assert secret is not None
    ad = alice.engine.adapters["btc"]
    ref = ad.find_htlc(terms.participant_leg.htlc(terms.payment_hash))
    assert ref is not None
    claim = ad.begin_cooperative_claim(ref)  # type: ignore[attr-defined]

    def ask(body: CosignClaim) -> SwapBody | None:
        data = sign_swap(alice.key, body).to_bytes()
        return bob.engine.handle(*open_swap(data, bob.guard))

    good = CosignClaim(sid, "btc", claim.raw, claim.nonce, secret)
    for bad, why in (
        (replace(good, preimage=bytes(32)), "does not hash to the swap's payment hash"),
        (replace(good, chain="eth"), "our leg on eth is not a Taproot HTLC"),
    ):
        reply = ask(bad)
        assert isinstance(reply, Error) and reply.code == "cosign_refused", bad
        assert why in reply.message
    assert bob.engine.journal.preimage(sid) is None  # no secret came with them
    # A node getting its leg back does not co-sign a claim of it.
    for refunding in (State.REFUND_WAIT, State.REFUND_SIGNED):
        bob.engine.journal.transition(sid, refunding, {"reason": "test"})
        reply = ask(good)
        assert isinstance(reply, Error) and "our leg is being refunded" in reply.message
    bob.engine.journal.transition(sid, State.LOCKED, {"reason": "test"})
    assert bob.engine.journal.preimage(sid) is None  # no secret came with them
    # A claim that would also spend another coin is refused, though its secret is kept.
    reply = ask(replace(good, claim=_with_extra_input(claim.raw)))
    assert isinstance(reply, Error) and "must have 1 input, it has 2" in reply.message

    reply = ask(good)
    assert isinstance(reply, ClaimCosigned)
    assert bob.engine.journal.preimage(sid) == secret
    signed = ad.finish_cooperative_claim(claim, reply.nonce, reply.partial_sig)  # type: ignore[attr-defined]
    # Bob now holds the secret: he redeems alice's ETH before her claim is even broadcast
    # (the embedded EVM mines each transaction at once, so he is paid in one tick).
    bob.engine.tick()
    assert bob.engine.journal.get(sid).state is State.REDEEMED
    ad.broadcast(signed)
    states = drive([alice, bob], sid, between=w.mine)
    assert states == {"alice": State.REDEEMED, "bob": State.REDEEMED}
    # Once the lock is spent there is nothing left to co-sign.
    reply = ask(replace(good, nonce=ad.begin_cooperative_claim(ref).nonce))  # type: ignore[attr-defined]
    assert isinstance(reply, Error) and "our lock is not on chain unspent" in reply.message


def test_the_initiator_does_not_ask_once_its_reveal_deadline_passed(world_factory):
    """The decision to redeem was taken before initiator_redeem_by, the request would leave
    after it (signing takes time): no request leaves, the secret is not marked shared, and the
    redeem is the leaf claim, which the state machine then holds back."""
    w, btc, sid = _eth_for_taproot_btc(world_factory)
    alice = w.alice
    _lock_both(w, btc, sid)
    assert alice.engine.step(sid)
    rec = alice.engine.journal.get(sid)
    assert rec.state is State.COUNTER_AUDITED
    asked: list[SwapBody] = []
    alice.engine._request = lambda _sid, body: asked.append(body)  # type: ignore[func-returns-value]
    terms = rec.terms
    btc.mine_to(terms.initiator_redeem_by.value)
    ref = alice.engine.adapters["btc"].find_htlc(terms.participant_leg.htlc(terms.payment_hash))
    assert ref is not None
    secret = alice.engine.journal.preimage(sid)
    assert secret is not None
    assert alice.engine._cosign_ask(rec, ref, secret) is None
    assert asked == [] and alice.engine.journal.notice(sid, SECRET_SHARED) is None


ANSWER_WAIT = 10.0
"""How long the overlapping channel below waits for an answer (the HTTP channel's SEND_TIMEOUT)."""


def test_two_nodes_asking_each_other_to_co_sign_at_once_both_claim_by_the_key_path(
    world_factory,
):
    """Two swaps between the same nodes, in opposite directions (each initiator's ETH for the
    other's Taproot BTC), reach their redeem together: each node asks the other to co-sign
    while the other is asking it. A node waiting for its co-signer holds no engine lock, so
    each answers the other and both claims take the key path. (Were the request sent under
    the lock, each would wait on the other until the channel's timeout and fall back to the
    leaf.)"""
    w = world_factory("btc")
    btc = w.chains["btc"]
    assert isinstance(btc, Btc)
    alice, bob = w.alice, w.bob
    link(alice, bob)
    sids: dict[bytes, tuple[Node, Node]] = {}
    for initiator, participant in ((alice, bob), (bob, alice)):
        give = _leg(w, initiator, participant, "eth", 2 * ETHER)
        get = replace(_leg(w, participant, initiator, "btc", BTC_AMOUNT), output="p2tr")
        sids[_propose(initiator, participant, give, get)] = (initiator, participant)
    # Both sides of both swaps lock; the initiators do not look at the BTC locks yet.
    for _ in range(8):
        for sid, (initiator, participant) in sids.items():
            if initiator.engine.journal.get(sid).state is not State.LOCKED:
                initiator.engine.drive(sid)
            participant.engine.drive(sid)
        btc.mine(1)
    for sid in sids:
        assert {n.engine.journal.get(sid).state for n in (alice, bob)} == {State.LOCKED}

    # Each request waits until the other is out too, then is delivered; an answer that does
    # not come within ANSWER_WAIT is a peer that did not answer, as over HTTP.
    both_out = threading.Barrier(2, timeout=60)
    first_out = threading.Event()
    stuck: list[str] = []
    answered: set[bytes] = set()

    def overlapping(node: Node) -> None:
        honest = node.engine._request
        assert honest is not None

        def send(swap_id: bytes, body: SwapBody) -> SwapBody | None:
            first_out.set()
            both_out.wait()
            answer: list[SwapBody | None] = []

            def deliver() -> None:
                ensure_thread_params()
                answer.append(honest(swap_id, body))

            worker = threading.Thread(target=deliver, daemon=True)
            worker.start()
            worker.join(ANSWER_WAIT)
            answered.add(swap_id)
            if not answer:
                stuck.append(node.name)
                raise PeerError("peer did not answer", code="peer_unreachable")
            return answer[0]

        node.engine._request = send

    overlapping(alice)
    overlapping(bob)

    failed: list[BaseException] = []

    def redeem_step(sid: bytes) -> None:
        """Step the initiator until its co-signature request is answered (no broadcast)."""
        try:
            ensure_thread_params()
            engine = sids[sid][0].engine
            for _ in range(4):
                engine.step(sid)
                if sid in answered:
                    return
        except BaseException as exc:  # re-raised in the test's thread below
            failed.append(exc)
            both_out.abort()
            first_out.set()

    one, two = (threading.Thread(target=redeem_step, args=(sid,)) for sid in sids)
    one.start()
    assert first_out.wait(60)  # the second starts once the first waits: no chain is read twice
    two.start()
    for t in (one, two):
        t.join(2 * ANSWER_WAIT + 60)
        assert not t.is_alive()
    if failed:
        raise failed[0]
    assert answered == set(sids) and stuck == []

    link(alice, bob)
    for sid, (initiator, participant) in sids.items():
        states = drive([initiator, participant], sid, between=w.mine)
        assert states == {"alice": State.REDEEMED, "bob": State.REDEEMED}
        claim = confirmed_tx(initiator, "btc", sid, TxKind.REDEEM)
        assert len(claim.wit.vtxinwit[0].scriptWitness.stack) == 1  # the key path
        assert claim.get_virtual_size() == 99


class _Died(BaseException):
    """The process stops here (not an Exception: nothing in the engine catches it)."""


def test_an_initiator_that_died_after_sharing_the_secret_still_claims_after_its_deadline(
    world_factory, tmp_path
):
    """ETH for Taproot BTC. Alice's node dies right after Bob co-signed her claim (so Bob holds
    the secret) and before she stored it; she comes back after initiator_redeem_by, with Bob
    silent. She must claim his BTC anyway -- by the leaf -- instead of waiting to refund: Bob
    could take her ETH with the secret and refund his BTC at T_B."""
    w, btc, sid = _eth_for_taproot_btc(world_factory)
    alice, bob = w.alice, w.bob
    honest = alice.engine._request
    assert honest is not None

    def dies_after_the_answer(swap_id: bytes, body: SwapBody) -> SwapBody | None:
        honest(swap_id, body)
        raise _Died

    alice.engine._request = dies_after_the_answer
    with pytest.raises(_Died):
        drive([alice, bob], sid, between=w.mine)
    assert alice.engine.journal.get(sid).state is State.COUNTER_AUDITED
    assert alice.engine.journal.txs(sid, TxKind.REDEEM) == []
    assert bob.engine.journal.preimage(sid) == alice.engine.journal.preimage(sid)

    terms = alice.engine.terms_of(sid)
    btc.mine_to(terms.initiator_redeem_by.value)  # alice is down past her reveal deadline
    back = make_node("alice", tmp_path, w.chains, accounts=alice.accounts, key=alice.key)  # type: ignore[arg-type]
    states = drive([back], sid, rounds=10, between=w.mine)
    assert states == {"alice": State.REDEEMED}
    claim = confirmed_tx(back, "btc", sid, TxKind.REDEEM)
    assert len(claim.wit.vtxinwit[0].scriptWitness.stack) == 4  # the leaf: no co-signer asked


def _with_extra_input(raw: bytes) -> bytes:
    from bitcointx.core import (
        CBitcoinMutableTransaction,
        CBitcoinOutPoint,
        CBitcoinTxIn,
        CBitcoinTxInWitness,
    )

    tx = CBitcoinMutableTransaction.from_tx(CTransaction.deserialize(raw))
    tx.vin.append(CBitcoinTxIn(CBitcoinOutPoint(b"\x11" * 32, 0)))
    tx.wit.vtxinwit.append(CBitcoinTxInWitness())
    return bytes(CTransaction.from_tx(tx).serialize())


def test_a_taproot_initiator_leg_is_refunded_by_its_leaf_when_the_participant_vanishes(
    world_factory,
):
    w = world_factory("btc")
    alice, bob = w.alice, w.bob
    btc, evm = w.chains["btc"], w.chains["eth"]
    assert isinstance(btc, Btc) and isinstance(evm, Evm)
    give = replace(_leg(w, alice, bob, "btc", BTC_AMOUNT), output="p2tr")
    get = _leg(w, bob, alice, "eth", ETHER)
    before = holdings(alice, {("btc", None)})
    sid = _start(w, give, get)  # bob accepts, then is never heard of again

    def time_passes(_r: int) -> None:
        btc.mine(3)
        evm.advance(5)

    assert drive([alice], sid, rounds=40, between=time_passes) == {"alice": State.REFUNDED}
    assert holdings(alice, {("btc", None)}) == expected_after(
        before, gives=give, gets=get, fees=fees_paid(alice, sid), refunded=True
    )
    refund = confirmed_tx(alice, "btc", sid, TxKind.REFUND)
    assert len(refund.wit.vtxinwit[0].scriptWitness.stack) == 3  # sig, leaf, control block
    assert refund.nLockTime == alice.engine.terms_of(sid).initiator_leg.expiry.value


def test_a_bitcoin_leg_too_small_to_claim_or_refund_is_refused_by_both_sides(world_factory):
    """A lock whose claim (or refund) would leave dust at today's fees could be neither claimed
    nor refunded: the proposer does not offer it, and a participant does not accept it."""
    w = world_factory("btc")
    alice, bob = w.alice, w.bob
    smallest = 294 + 2 * 141  # dust to P2WPKH + the largest spend (141 vB) at 2 sat/vB
    get = _leg(w, bob, alice, "eth", ETHER)
    with pytest.raises(TermsRefused, match=f"btc leg amount {smallest - 1} is below") as err:
        alice.engine.propose(
            _leg(w, alice, bob, "btc", smallest - 1), get, participant_node=bob.node_id
        )
    assert err.value.code == "terms_amount"
    good = alice.engine.propose(
        _leg(w, alice, bob, "btc", smallest), get, participant_node=bob.node_id
    )
    small = replace(good, initiator_leg=replace(good.initiator_leg, amount=smallest - 1))
    with pytest.raises(TermsRefused, match="its claim or refund would pay out nothing"):
        bob.engine.accept(small)
    assert bob.engine.unfinished() == []
    # Fees rise: the floor rises with them.
    btc = w.chains["btc"]
    assert isinstance(btc, Btc)
    btc.chain.set_block_min_fee_rate(20)
    leg = good.initiator_leg.htlc(good.payment_hash)
    assert bob.engine.adapters["btc"].min_amount(leg) == 294 + 20 * 141
    with pytest.raises(TermsRefused, match=f"btc leg amount {smallest} is below {294 + 20 * 141}"):
        bob.engine.accept(good)


def test_a_leg_naming_an_output_its_chain_does_not_build_is_refused_by_both_sides(
    world_factory,
):
    w = world_factory("btc")
    alice, bob = w.alice, w.bob
    give = _leg(w, alice, bob, "btc", BTC_AMOUNT)
    eth_p2tr = replace(_leg(w, bob, alice, "eth", ETHER), output="p2tr")
    with pytest.raises(TermsRefused, match="eth leg asks for a 'p2tr' HTLC") as err:
        alice.engine.propose(give, eth_p2tr, participant_node=bob.node_id)
    assert err.value.code == "terms_output"
    # A proposer that skips its own check meets the participant's.
    good = alice.engine.propose(
        give, _leg(w, bob, alice, "eth", ETHER), participant_node=bob.node_id
    )
    odd = replace(good, initiator_leg=replace(good.initiator_leg, output="p2sh"))
    with pytest.raises(
        TermsRefused, match="btc leg asks for a 'p2sh' HTLC; this node builds p2wsh, p2tr"
    ):
        bob.engine.accept(odd)
    assert bob.engine.unfinished() == []


def _initiator_gone_after_both_locks(w: World, *, saw_counter_lock: bool) -> bytes:
    """Alice locks BTC, Bob locks ETH, Alice goes offline before redeeming (so the secret
    never comes out); Bob refunds at T_B; then Alice comes back and refunds at T_A.
    ``saw_counter_lock``: Alice audited Bob's lock before going offline."""
    alice, bob = w.alice, w.bob
    btc, evm = w.chains["btc"], w.chains["eth"]
    assert isinstance(btc, Btc) and isinstance(evm, Evm)
    give, get, assets, before, sid = _start_btc_for_eth(w)
    terms = alice.engine.terms_of(sid)

    for _ in range(5):
        alice.engine.tick()
        btc.mine(1)
        if alice.engine.journal.get(sid).state is State.LOCKED:
            break
    assert alice.engine.journal.get(sid).state is State.LOCKED
    for _ in range(5):
        bob.engine.tick()
        btc.mine(1)
    assert bob.engine.journal.get(sid).state is State.LOCKED  # bob's ETH is in the HTLC
    if saw_counter_lock:
        assert alice.engine.step(sid)  # one decision: audit bob's lock, then she is gone
        assert alice.engine.journal.get(sid).state is State.COUNTER_AUDITED

    # T_B is a timestamp on eth: jump the EVM past it; bob refunds, alice is still offline.
    evm.advance_to(terms.participant_leg.expiry.value + 1)
    assert drive([bob], sid, rounds=10) == {"bob": State.REFUNDED}

    # Alice comes back; T_A is a height on btc, reached only by mining.
    assert btc.height() < terms.initiator_leg.expiry.value
    states = drive([alice], sid, rounds=60, between=lambda _r: btc.mine(3))
    assert states == {"alice": State.REFUNDED}
    assert btc.height() >= terms.initiator_leg.expiry.value
    for node in (alice, bob):
        gives, gets = (give, get) if node is alice else (get, give)
        assert holdings(node, assets) == expected_after(
            before[node.name],
            gives=gives,
            gets=gets,
            fees=fees_paid(node, sid),
            refunded=True,
        )
    return sid


def test_initiator_gone_after_both_locks_both_refund_at_their_own_expiries(world_factory):
    w = world_factory("btc")
    sid = _initiator_gone_after_both_locks(w, saw_counter_lock=True)
    # Bob kept his word (he locked, then refunded at his expiry): no evidence against him.
    assert w.alice.engine.journal.evidence(sid) == []


def test_initiator_offline_for_the_counter_lock_records_no_evidence_against_an_honest_peer(
    world_factory,
):
    w = world_factory("btc")
    sid = _initiator_gone_after_both_locks(w, saw_counter_lock=False)
    assert w.alice.engine.journal.evidence(sid) == []


def test_participant_gone_after_the_first_lock_leaves_the_initiator_refunded_with_evidence(
    world_factory,
):
    w = world_factory("btc")
    alice, bob = w.alice, w.bob
    btc = w.chains["btc"]
    assert isinstance(btc, Btc)
    give = _leg(w, alice, bob, "btc", BTC_AMOUNT)
    get = _leg(w, bob, alice, "eth", ETHER)
    before = holdings(alice, {("btc", None)})
    sid = _start(w, give, get)  # bob accepts, then is never heard of again
    terms = alice.engine.terms_of(sid)
    evm = w.chains["eth"]
    assert isinstance(evm, Evm)

    def time_passes(_r: int) -> None:
        btc.mine(3)
        evm.advance(5)

    states = drive([alice], sid, rounds=40, between=time_passes)
    assert states == {"alice": State.REFUNDED}
    assert btc.height() >= terms.initiator_leg.expiry.value
    assert holdings(alice, {("btc", None)}) == expected_after(
        before, gives=give, gets=get, fees=fees_paid(alice, sid), refunded=True
    )
    (ev,) = alice.engine.journal.evidence(sid)
    assert (ev.kind, ev.code, ev.detail["counter_chain"]) == ("no_lock", "no_lock", "eth")


def test_btc_lock_with_a_wrong_amount_is_refused_and_reported_with_the_field(world_factory):
    w = world_factory("btc")
    alice, bob = w.alice, w.bob
    btc = w.chains["btc"]
    assert isinstance(btc, Btc)
    sid = _start(w, _leg(w, alice, bob, "btc", BTC_AMOUNT), _leg(w, bob, alice, "eth", ETHER))
    terms = alice.engine.terms_of(sid)
    good = terms.initiator_leg.htlc(terms.payment_hash)
    bad = replace(good, amount=good.amount - 1_000)  # a cheater shaving the agreed amount
    ad = alice.engine.adapters["btc"]
    txs = ad.prepare_lock(bad)
    for tx in txs:
        ad.broadcast(tx)
    ref = ad.htlc_ref(bad, txs[-1])
    bob.engine.handle(Locked(sid, ref.locator, ref.lock_txid, bad), alice.node_id)
    bob_eth = bob.engine.adapters["eth"].balance()

    # Reported while the bad lock is still in the mempool: for its amount, not as unconfirmed.
    bob.engine.tick()
    assert [(e.kind, e.code) for e in bob.engine.journal.evidence(sid)] == [
        ("bad_lock", "audit_amount")
    ]
    evm = w.chains["eth"]
    assert isinstance(evm, Evm)
    # participant_lock_by is a timestamp on eth (bob's chain): time moves there.
    states = drive([bob], sid, rounds=40, between=lambda _r: (btc.mine(1), evm.advance(5)))
    assert states == {"bob": State.ABORTED}  # bob never locked his ETH
    assert evm.now() >= terms.participant_lock_by.value
    assert bob.engine.journal.all_txs(sid) == []
    assert bob.engine.adapters["eth"].balance() == bob_eth
    (ev,) = bob.engine.journal.evidence(sid)
    assert ev.detail["lock_txid"] == ref.lock_txid and ev.detail["locator"] == ref.locator


@pytest.mark.parametrize(
    ("chain", "amount", "block_min_rate"),
    [("btc", BTC_AMOUNT, 40), ("ltc", LTC_AMOUNT, 80)],
    ids=["btc_replacement", "ltc_child"],
)
def test_a_redeem_stuck_by_a_fee_rise_is_bumped_and_the_swap_completes(
    world_factory, chain, amount, block_min_rate
):
    """Bob's redeem is sent at the fee of the moment; then the next blocks need a higher rate
    (fees rose). After one block without it (the devnet bump wait) his node raises its fee:
    on Bitcoin by a BIP125 replacement, which confirms instead; on Litecoin (whose nodes relay
    no replacement) by a child spending its output, and the two confirm as one package."""
    w = world_factory(chain)
    alice, bob = w.alice, w.bob
    btc = w.chains[chain]
    assert isinstance(btc, Btc)
    give, get, assets, before, sid = _start_btc_for_eth(w, chain, amount)
    for _ in range(40):
        for n in (alice, bob):
            n.engine.tick()
        if bob.engine.journal.get(sid).state is State.REDEEM_SENT:
            break
        btc.mine(1)
    assert bob.engine.journal.get(sid).state is State.REDEEM_SENT
    [(first, sent_at)] = bob.engine.journal.versions(sid, TxKind.REDEEM)
    assert sent_at == btc.height()
    btc.chain.set_block_min_fee_rate(block_min_rate)

    states = drive([alice, bob], sid, between=lambda _r: btc.mine(1))
    assert states == {"alice": State.REDEEMED, "bob": State.REDEEMED}
    versions = [tx for tx, _ in bob.engine.journal.versions(sid, TxKind.REDEEM)]
    assert len(versions) == 2 and versions[0] == first
    bump = versions[1]
    adapter = bob.engine.adapters[chain]
    assert adapter.tx_confirmations(bump.txid) >= 1
    if chain == "btc":
        assert bump.kind is TxKind.REDEEM and adapter.tx_confirmations(first.txid) == 0
        confirmed = [bump]
    else:
        assert bump.kind is TxKind.CHILD and adapter.tx_confirmations(first.txid) >= 1
        confirmed = [first, bump]
    package_fee = sum(btc_fee(adapter, tx.txid) for tx in confirmed)
    package_vsize = sum(CTransaction.deserialize(tx.raw).get_virtual_size() for tx in confirmed)
    assert package_fee >= block_min_rate * package_vsize
    reasons = [e.payload.get("reason", "") for e in bob.engine.journal.events(sid)]
    assert any("raise its fee" in r for r in reasons)
    _assert_exact_holdings(w, give, get, assets, before, sid)


def test_a_lock_stuck_by_a_fee_rise_gets_a_child_and_the_swap_completes(world_factory):
    """Alice's BTC lock is sent at the fee of the moment; then the next blocks need 40 sat/vB.
    After one block without it her node adds a child spending the lock's change, the two
    confirm together (the HTLC's outpoint never moved), and the swap completes."""
    w = world_factory("btc")
    alice, bob = w.alice, w.bob
    btc = w.chains["btc"]
    assert isinstance(btc, Btc)
    give, get, assets, before, sid = _start_btc_for_eth(w)
    for _ in range(10):
        alice.engine.tick()
        if alice.engine.journal.get(sid).state is State.LOCK_SENT:
            break
    assert alice.engine.journal.get(sid).state is State.LOCK_SENT
    [(lock, _)] = alice.engine.journal.versions(sid, TxKind.LOCK)
    btc.chain.set_block_min_fee_rate(40)

    states = drive([alice, bob], sid, between=lambda _r: btc.mine(1))
    assert states == {"alice": State.REDEEMED, "bob": State.REDEEMED}
    steps = [tx for tx, _ in alice.engine.journal.versions(sid, TxKind.LOCK)]
    assert steps[0] == lock and [t.kind for t in steps[1:]] == [TxKind.CHILD]
    adapter = alice.engine.adapters["btc"]
    package = [lock, steps[1]]
    assert all(adapter.tx_confirmations(t.txid) >= 1 for t in package)
    # mined in the same block: the lock alone paid too little for any block since the rise
    assert len({adapter.tx_confirmations(t.txid) for t in package}) == 1
    fee = sum(btc_fee(adapter, t.txid) for t in package)
    assert fee >= 40 * sum(CTransaction.deserialize(t.raw).get_virtual_size() for t in package)
    events = [e.payload.get("reason", "") for e in alice.engine.journal.events(sid)]
    assert any("our lock is not confirming" in r for r in events)
    _assert_exact_holdings(w, give, get, assets, before, sid)


class _FeesRiseBeforeSend(CrashHook):
    """The engine's named-point hook (the one crash tests kill at), used here to move the fee
    market at an exact instant: the first time ``point`` is reached, the chain's mempool floor
    rises to ``rate``, so the transaction just signed is refused for its fee."""

    def __init__(self, chain: EmbeddedChain, point: str, rate: int) -> None:
        super().__init__()
        self.chain, self.point, self.rate = chain, point, rate
        self.fired = False

    def hit(self, point: str) -> None:
        if point == self.point and not self.fired:
            self.fired = True
            self.chain.set_mempool_min_fee_rate(self.rate)


@pytest.mark.parametrize(("chain", "amount"), [("btc", BTC_AMOUNT), ("ltc", LTC_AMOUNT)])
def test_a_redeem_refused_for_its_fee_is_re_signed_and_the_swap_completes(
    world_factory, chain, amount
):
    """Fees rise between Bob's signature of his redeem and its send: the node refuses it for
    its fee, so it is in no mempool. His engine dates the refusal as a send; after the bump
    wait it re-signs the redeem at the new rate (on Litecoin too, where a redeem the node holds
    gets a child instead), the node takes it, and the swap completes with exact balances.
    Without the dating the same redeem would be re-sent unchanged until Alice could refund."""
    w = world_factory(chain)
    alice, bob = w.alice, w.bob
    btc = w.chains[chain]
    assert isinstance(btc, Btc)
    rate = 5 * btc.params.fallback_fee_rate
    bob.engine.crash = _FeesRiseBeforeSend(btc.chain, "before_broadcast:redeem", rate)
    give, get, assets, before, sid = _start_btc_for_eth(w, chain, amount)

    states = drive([alice, bob], sid, between=lambda _r: btc.mine(1))
    assert states == {"alice": State.REDEEMED, "bob": State.REDEEMED}
    versions = [tx for tx, _ in bob.engine.journal.versions(sid, TxKind.REDEEM)]
    assert [v.kind for v in versions] == [TxKind.REDEEM, TxKind.REDEEM]
    adapter = bob.engine.adapters[chain]
    assert adapter.tx_confirmations(versions[0].txid) == 0  # never taken
    assert adapter.tx_confirmations(versions[1].txid) >= 1
    paid = btc_fee(adapter, versions[1].txid)
    assert paid >= rate * CTransaction.deserialize(versions[1].raw).get_virtual_size()
    _assert_exact_holdings(w, give, get, assets, before, sid)


def test_a_redeem_whose_bump_the_fee_cap_refuses_is_sent_again_once_fees_fall(
    world_factory, caplog
):
    """A small BTC leg (20,000 sat): fees jump to 100 sat/vB between Bob's signature of his
    redeem and its send, so the node refuses it. A bump would have to pay more than half the
    leg (MAX_BUMP_FEE_PCT): the engine bumps once to what the cap allows, then, with no bump
    left, sends the newest version again each time instead of giving up on it. Fees fall, the
    node takes it, the swap completes -- Alice never gets to refund."""
    w = world_factory("btc")
    alice, bob = w.alice, w.bob
    btc = w.chains["btc"]
    assert isinstance(btc, Btc)
    amount = 20_000
    bob.engine.crash = _FeesRiseBeforeSend(btc.chain, "before_broadcast:redeem", 100)
    give, get, assets, before, sid = _start_btc_for_eth(w, "btc", amount)

    def no_bump_left() -> bool:
        return "sending the newest version again" in caplog.text

    def time_passes(_r: int) -> None:
        btc.mine(1)
        if no_bump_left():
            btc.chain.set_mempool_min_fee_rate(0)  # fees fall

    with caplog.at_level(logging.WARNING, logger="kofo.settlement.engine"):
        states = drive([alice, bob], sid, between=time_passes)
    assert states == {"alice": State.REDEEMED, "bob": State.REDEEMED}
    assert no_bump_left()
    adapter = bob.engine.adapters["btc"]
    versions = [tx for tx, _ in bob.engine.journal.versions(sid, TxKind.REDEEM)]
    mined = [v for v in versions if adapter.tx_confirmations(v.txid) >= 1]
    assert len(versions) >= 2 and len(mined) == 1
    assert btc_fee(adapter, mined[0].txid) <= amount // 2
    _assert_exact_holdings(w, give, get, assets, before, sid)


def test_a_lock_hidden_until_after_the_swap_gave_up_is_refunded_once_mined(world_factory):
    """Alice's BTC lock is signed and sent, but the node drops it (so her engine never sees it
    by its deadline, nor by the leg's expiry); later someone relays the very same lock and it
    is mined. Her swap must still be watching it, refund it after expiry, and leave her whole
    minus fees. (Before, ``refund_wait`` declared the swap ``aborted`` at the expiry, and the
    late lock sat in an HTLC nobody watched.)"""
    w = world_factory("btc")
    alice, bob = w.alice, w.bob
    btc, evm = w.chains["btc"], w.chains["eth"]
    assert isinstance(btc, Btc) and isinstance(evm, Evm)
    give = _leg(w, alice, bob, "btc", BTC_AMOUNT)
    get = _leg(w, bob, alice, "eth", ETHER)
    before = holdings(alice, {("btc", None)})
    sid = _start(w, give, get)  # bob accepts, then is never heard of again
    terms = alice.engine.terms_of(sid)
    adapter = alice.engine.adapters["btc"]
    send = adapter.broadcast
    dropped: list[SignedTx] = []

    def dropping(tx: SignedTx) -> str:  # a node that takes the lock and relays nothing
        if tx.kind is TxKind.LOCK:
            dropped.append(tx)
            return tx.txid
        if tx.kind is TxKind.TRANSFER:
            return tx.txid  # nor the engine's self-spend ending the lock past its expiry
        return send(tx)

    adapter.broadcast = dropping  # type: ignore[method-assign]

    def time_passes(_r: int) -> None:
        btc.mine(3)
        evm.advance(5)

    # Well past the leg's expiry, the lock still unseen.
    for r in range(60):
        alice.engine.tick()
        if btc.height() > terms.initiator_leg.expiry.value + 6:
            break
        time_passes(r)
    assert btc.height() > terms.initiator_leg.expiry.value + 6
    assert dropped, "the lock was signed and sent"

    # The same lock reaches a miner late (relayed by whoever held it).
    adapter.broadcast = send  # type: ignore[method-assign]
    send(dropped[-1])
    btc.mine(1)
    states = drive([alice], sid, rounds=20, between=lambda _r: btc.mine(1))
    assert states == {"alice": State.REFUNDED}
    assert holdings(alice, {("btc", None)}) == expected_after(
        before, gives=give, gets=get, fees=fees_paid(alice, sid), refunded=True
    )
    assert fees_paid(alice, sid)["btc"] > 0  # both the lock and its refund were mined


def test_a_lock_made_unminable_by_a_buried_conflict_ends_the_swap_aborted(world_factory):
    """The same hidden lock, but the wallet spends one of its coins elsewhere (its coins went
    back to the wallet at the expiry): once that conflict is buried, the lock can never be
    mined and the swap is ``aborted``. (The engine's own self-spend, which ends such a lock
    past its expiry, is off here: ``test_a_lock_never_mined_is_ended_by_...`` has it.)"""
    w = world_factory("btc")
    alice, bob = w.alice, w.bob
    btc, evm = w.chains["btc"], w.chains["eth"]
    assert isinstance(btc, Btc) and isinstance(evm, Evm)
    give = _leg(w, alice, bob, "btc", BTC_AMOUNT)
    get = _leg(w, bob, alice, "eth", ETHER)
    sid = _start(w, give, get)
    terms = alice.engine.terms_of(sid)
    adapter = alice.engine.adapters["btc"]
    assert isinstance(adapter, BitcoinAdapter)
    adapter.prepare_lock_cancel = lambda *_a, **_k: None  # type: ignore[method-assign]
    send = adapter.broadcast
    dropped: list[SignedTx] = []

    def dropping(tx: SignedTx) -> str:
        if tx.kind is TxKind.LOCK:
            dropped.append(tx)
            return tx.txid
        return send(tx)

    adapter.broadcast = dropping  # type: ignore[method-assign]

    def time_passes(_r: int) -> None:
        btc.mine(3)
        evm.advance(5)

    drive([alice], sid, rounds=60, between=time_passes)
    assert alice.engine.journal.get(sid).state is State.REFUND_WAIT
    lock = CTransaction.deserialize(dropped[-1].raw)
    spent = {(b2lx(i.prevout.hash), i.prevout.n) for i in lock.vin}
    # The lock's coins are free again: the wallet's next payment takes them.
    assert spent <= {(u.txid, u.vout) for u in adapter.spendable()}
    (conflict,) = adapter.prepare_lock(terms.initiator_leg.htlc(b"\x42" * 32))
    assert spent & {
        (b2lx(i.prevout.hash), i.prevout.n) for i in CTransaction.deserialize(conflict.raw).vin
    }
    send(conflict)
    states = drive([alice], sid, rounds=20, between=lambda _r: btc.mine(1))
    assert states == {"alice": State.ABORTED}
    with pytest.raises(ChainError):  # the lock can never be mined now
        send(dropped[-1])


def test_a_lock_never_mined_is_ended_by_a_self_spend_past_its_expiry(world_factory):
    """Issue 14 (session 6, bug 3): our BTC lock was signed but never reached a miner (every
    send dropped). The swap waited in ``refund_wait`` until the wallet happened to spend one
    of the lock's coins again, for ever in a wallet that never pays anything else. Now, past
    the own leg's expiry (never before: until then the lock is still wanted), the engine
    spends one of the lock's coins back to the wallet; that first self-spend is dropped too,
    so after the policy's ``bump_after_blocks`` it is replaced at a higher fee; once buried
    the lock can never be mined and the swap is ``aborted``: the wallet is down by exactly
    the replacement's fee, Bob's by nothing."""
    w = world_factory("btc")
    alice, bob = w.alice, w.bob
    btc, evm = w.chains["btc"], w.chains["eth"]
    assert isinstance(btc, Btc) and isinstance(evm, Evm)
    adapter = alice.engine.adapters["btc"]
    assert isinstance(adapter, BitcoinAdapter)
    before = adapter.balance()
    bob_before = bob.engine.adapters["eth"].balance()
    give = _leg(w, alice, bob, "btc", BTC_AMOUNT)
    get = _leg(w, bob, alice, "eth", ETHER)
    sid = _start(w, give, get)
    expiry = alice.engine.terms_of(sid).initiator_leg.expiry.value
    send = adapter.broadcast
    dropped: list[SignedTx] = []

    def dropping(tx: SignedTx) -> str:
        if tx.kind is TxKind.LOCK or (tx.kind is TxKind.TRANSFER and not dropped_cancel):
            (dropped if tx.kind is TxKind.LOCK else dropped_cancel).append(tx)
            return tx.txid
        return send(tx)

    dropped_cancel: list[SignedTx] = []
    adapter.broadcast = dropping  # type: ignore[method-assign]
    waited_before_expiry = 0
    state = State.PROPOSED
    for _ in range(200):
        alice.engine.tick()
        bob.engine.tick()
        state = alice.engine.journal.get(sid).state
        if state in TERMINAL:
            break
        if state is State.REFUND_WAIT and adapter.expiry_now().value < expiry:
            # before the abort point: the lock may still be wanted, nothing spends its coins
            waited_before_expiry += 1
            assert alice.engine.journal.notice(sid, "lock_cancel") is None
            assert not dropped_cancel
        btc.mine(3)
        evm.advance(5)
    assert state is State.ABORTED, state
    assert waited_before_expiry > 0 and dropped and len(dropped_cancel) == 1
    kept = alice.engine.journal.notice(sid, "lock_cancel")
    assert kept is not None and kept["txid"] != dropped_cancel[0].txid  # the fee-bumped one
    cancel = CTransaction.deserialize(bytes.fromhex(kept["raw"]))
    first = CTransaction.deserialize(dropped_cancel[0].raw)
    lock = CTransaction.deserialize(dropped[-1].raw)
    (coin,) = [(b2lx(i.prevout.hash), i.prevout.n) for i in cancel.vin]
    assert coin in {(b2lx(i.prevout.hash), i.prevout.n) for i in lock.vin}
    assert coin == (b2lx(first.vin[0].prevout.hash), first.vin[0].prevout.n)
    assert cancel.vout[0].nValue < first.vout[0].nValue  # a higher fee
    assert adapter.tx_confirmations(kept["txid"]) >= 1
    coin_value = adapter.index.txs[coin[0]].tx.vout[coin[1]].nValue
    fee = coin_value - sum(o.nValue for o in cancel.vout)
    assert adapter.balance() == before - fee
    assert bob.engine.journal.get(sid).state in TERMINAL
    assert bob.engine.adapters["eth"].balance() == bob_before
    adapter.broadcast = send  # type: ignore[method-assign]
    with pytest.raises(ChainError):  # the lock can never be mined now
        send(dropped[-1])


def test_an_eth_lock_hidden_until_its_expiry_can_only_revert_so_the_swap_aborts(world_factory):
    """On Ethereum the contract refuses a lock whose expiry has passed (``expiry past``): once
    the head's clock reaches the expiry, a late lock (or anything taking its nonce) can never
    create the HTLC, so ``aborted`` is safe there; mined late, the lock reverts and the wallet
    loses only its gas."""
    w = world_factory("btc")
    alice, bob = w.alice, w.bob
    btc, evm = w.chains["btc"], w.chains["eth"]
    assert isinstance(btc, Btc) and isinstance(evm, Evm)
    give = _leg(w, alice, bob, "eth", ETHER)
    get = _leg(w, bob, alice, "btc", BTC_AMOUNT)
    sid = _start(w, give, get)
    terms = alice.engine.terms_of(sid)
    adapter = alice.engine.adapters["eth"]
    send = adapter.broadcast
    dropped: list[SignedTx] = []

    def dropping(tx: SignedTx) -> str:
        if tx.kind is TxKind.LOCK:
            dropped.append(tx)
            return tx.txid
        return send(tx)

    adapter.broadcast = dropping  # type: ignore[method-assign]
    alice.engine.tick()
    assert dropped, "the lock was signed and sent"
    before = adapter.balance()
    evm.advance_to(terms.initiator_leg.expiry.value)
    states = drive([alice], sid, rounds=10, between=lambda _r: btc.mine(1))
    assert states == {"alice": State.ABORTED}

    adapter.broadcast = send  # type: ignore[method-assign]
    try:
        send(dropped[-1])
    except ChainError:
        pass  # refused outright: it can never create the HTLC either
    assert (
        adapter.status(
            adapter.htlc_ref(terms.initiator_leg.htlc(terms.payment_hash), dropped[-1])
        ).state
        is HtlcState.ABSENT
    )
    assert before - adapter.balance() < ETHER // 100  # gas at most, never the amount


def test_each_lock_and_redeem_depth_is_published_once_per_count_up_to_its_required_depth(
    world_factory,
):
    """The engine publishes the depth of each lock and spend from the facts its steps read:
    a lock stuck unconfirmed through many ticks is published once (0/n), then once per new
    block up to the leg's required depth, never beyond it; the redeems likewise."""
    from kofo.settlement.engine import TxDepth

    w = world_factory("btc")
    alice, bob = w.alice, w.bob
    btc = w.chains["btc"]
    assert isinstance(btc, Btc)
    seen: dict[str, list[TxDepth]] = {"alice": [], "bob": []}
    for node in (alice, bob):  # a depth that grows over several blocks (devnet's is 1)
        node.engine.policies["btc"] = replace(node.engine.policies["btc"], confirmations=3)
    alice.engine._publish_depth = seen["alice"].append
    bob.engine._publish_depth = seen["bob"].append
    _give, _get, _assets, _before, sid = _start_btc_for_eth(w)
    required = alice.engine.terms_of(sid).initiator_leg.confirmations
    assert required == 3
    for _ in range(30):  # many ticks, no block: the lock stays at 0 confirmations
        alice.engine.tick()
    assert alice.engine.journal.get(sid).state is State.LOCK_SENT
    [lock] = seen["alice"]
    assert (lock.leg, lock.kind, lock.mine, lock.chain) == ("own", "lock", True, "btc")
    assert (lock.confirmations, lock.required, lock.swap_id) == (0, required, sid)
    for _ in range(required + 3):  # past the required depth: no more events
        btc.mine(1)
        for _ in range(3):
            alice.engine.tick()
    own = [(d.txid, d.confirmations) for d in seen["alice"] if (d.leg, d.kind) == ("own", "lock")]
    assert own == [(lock.txid, n) for n in range(required + 1)]

    states = drive([alice, bob], sid, between=w.mine)
    assert states == {"alice": State.REDEEMED, "bob": State.REDEEMED}
    for name, leg, by_me in (
        ("alice", "counter", True),  # alice's redeem of bob's eth lock
        ("bob", "counter", True),  # bob's redeem of alice's btc lock
        ("bob", "own", False),  # alice's redeem of bob's lock, as bob sees it
    ):
        redeems = [d for d in seen[name] if (d.leg, d.kind) == (leg, "redeem")]
        assert redeems and all(d.mine is by_me for d in redeems), (name, seen[name])
        counts = [d.confirmations for d in redeems]
        assert counts == sorted(set(counts)) and counts[-1] <= redeems[-1].required, redeems
        if by_me:  # its own redeem: the engine waits for its depth before it ends
            assert counts[-1] == redeems[-1].required, redeems
    # bob saw alice's lock (his counter leg) reach its depth before he locked
    theirs = [d for d in seen["bob"] if (d.leg, d.kind) == ("counter", "lock")]
    assert theirs and not theirs[-1].mine and theirs[-1].confirmations == required
