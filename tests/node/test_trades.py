"""The trade pipeline core (issue 14 items 4, 6, 7, 10): two nodes' pipelines in-process on the
embedded chains (Bitcoin regtest + EVM) and the solo ledger served over CometBFT's RPC, whose
producer attests leg outcomes through an AdapterObserver over the same chains.

A co-signed order is committed, both nodes read it back from the ledger and start their swap
engines from it (nothing locks before), both legs are locked and redeemed, the ledger settles the
order from its own observation, and every balance is exact. An order the ledger refuses starts
nothing; terms that differ from the committed order are refused by the maker, with a reason in
its log."""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from kofo.clearance.app import LedgerApp
from kofo.clearance.consensus.solo import SoloChain
from kofo.clearance.consensus.solo_rpc import SoloLedgerRpc
from kofo.clearance.store import MerkleStore
from kofo.exchange.route import RouteParty, build_settlement_order
from kofo.node.ledger_client import LedgerClient, LedgerRefused, tx_hash
from kofo.node.registration import ensure_registered, load_or_create_paillier, registered
from kofo.node.trades import (
    OrderUnfit,
    PhaseJournal,
    TradePipeline,
    TradeRefused,
    engine_legs,
    fit_expiries,
)
from kofo.settlement.chains.bitcoin.wallet import HdWallet
from kofo.settlement.observer import AdapterObserver
from kofo.settlement.swap import State
from kofo.settlement.terms import TermsRefused
from kofo.wire.attest import (
    BondObservation,
    ChainTip,
    ChainUnreadable,
    ExecutedDecision,
    LegRef,
    Observation,
)
from kofo.wire.exchange import Claim
from kofo.wire.expiry import UnixTime
from kofo.wire.orders import CommitOrder, leg_roles_of, sign_tx, with_derived_id
from kofo.wire.swap import Propose
from tests.clearance.helpers import ledger_params
from tests.swap.btc_helpers import Btc, expected_after, fees_paid, holdings
from tests.swap.helpers import Evm, Node, link, make_node

pytestmark = pytest.mark.timeout(300)

SATS = 1_000_000
WEI = 10**17
PASSPHRASE = "correct horse battery"


class LockedObserver:
    """The solo producer observes the chains from its own thread; the test's engines use the
    same embedded chains from the test thread: one lock keeps them apart."""

    def __init__(self, inner: AdapterObserver, lock: threading.RLock) -> None:
        self.inner, self.lock = inner, lock

    def observe(self, ref: LegRef) -> Observation | None:
        # The test thread may hold the lock while it waits on the ledger (whose producer is
        # here, holding the app lock): not getting the chains now is "saw nothing this time",
        # as for a lagging node (not read: never "no lock"); the next block looks again.
        if not self.lock.acquire(timeout=0.2):
            raise ChainUnreadable(ref.leg.chain, "the test holds the chains")
        try:
            return self.inner.observe(ref)
        finally:
            self.lock.release()

    def observe_bond(self, node: bytes, step: int = 1) -> BondObservation | None:
        return None

    def observe_decision(self, decision: bytes, step: int = 1) -> ExecutedDecision | None:
        return None

    def observe_tips(self) -> list[ChainTip]:
        if not self.lock.acquire(timeout=0.2):
            return []
        try:
            return self.inner.observe_tips()
        finally:
            self.lock.release()


@dataclass
class Net:
    btc: Btc
    evm: Evm
    client: LedgerClient
    lock: threading.RLock
    app: LedgerApp


@pytest.fixture
def net() -> Iterator[Net]:
    btc, evm = Btc(), Evm()
    lock = threading.RLock()
    watcher_btc = btc.adapter(HdWallet(os.urandom(32), btc.params))
    watcher_eth = evm.adapter(evm.account(wei=10**15))
    observer = AdapterObserver(
        {"btc": watcher_btc, "eth": watcher_eth},
        spent_since={"btc": btc.height(), "eth": evm.w3.eth.block_number},
    )
    app = LedgerApp(MerkleStore(), ledger_params(), observer=LockedObserver(observer, lock))
    try:
        with SoloLedgerRpc(SoloChain(app), block_interval=0.05) as rpc:
            yield Net(btc, evm, LedgerClient(rpc.url), lock, app)
    finally:
        btc.close()


@dataclass
class Party:
    node: Node
    pipe: TradePipeline
    phases: PhaseJournal


def _party(name: str, tmp_path: Path, net: Net) -> Party:
    node = make_node(name, tmp_path, {"btc": net.btc, "eth": net.evm})
    phases = PhaseJournal(tmp_path / f"{name}-trades.sqlite")
    pipe = TradePipeline(ledger=net.client, engine=node.engine, node_key=node.key, phases=phases)
    node.engine.accept_policy = pipe.accept_policy
    home = tmp_path / f"{name}-home"
    home.mkdir(mode=0o700)
    pub, priv = load_or_create_paillier(home, PASSPHRASE, bits=1024, scrypt_n=2**17)
    addresses = {"btc": node.engine.adapters["btc"].address(), "eth": node.address("eth")}
    assert ensure_registered(
        home=home,
        ledger=net.client,
        node_key=node.key,
        paillier_pub=pub,
        paillier_priv=priv,
        addresses=addresses,
    )
    # idempotent: a restart asks the ledger first and sends nothing
    assert (
        ensure_registered(
            home=home,
            ledger=net.client,
            node_key=node.key,
            paillier_pub=pub,
            paillier_priv=priv,
            addresses=addresses,
        )
        is None
    )
    assert registered(net.client, node.node_id) is not None
    return Party(node, pipe, phases)


def _order(taker: Party, maker: Party, net: Net, *, payment_hash: bytes):
    """The exchange's order for a BTC -> ETH quote, with each leg's expiry then put in its
    chain's unit by the composer (fit_expiries: a block height on Bitcoin)."""
    t, m = taker.node, maker.node
    now_s = int(time.time())
    order = build_settlement_order(
        claim=Claim("btc", "eth", SATS, 1, 1, (now_s + 60) * 1000, 3, os.urandom(32)),
        claim_id=os.urandom(32),
        fulfil_id=os.urandom(32),
        amount_in=SATS,
        delivered=WEI,
        initiator=RouteParty(
            t.node_id, {"btc": t.engine.adapters["btc"].address(), "eth": t.address("eth")}
        ),
        relays=[],
        provider=RouteParty(
            m.node_id, {"btc": m.engine.adapters["btc"].address(), "eth": m.address("eth")}
        ),
        provider_position=1,
        payment_hash=payment_hash,
        now_s=now_s,
        protocol_fee_bps=10,
    )
    with net.lock:
        with pytest.raises(OrderUnfit, match=r"legs\[0\] \(btc\).*not in the chain's unit"):
            engine_legs(order, t.engine.policies)
        legs = fit_expiries(order, t.engine.policies, t.engine.now(), now_s)
    return with_derived_id(replace(order, legs=legs))


def _prove(commit: CommitOrder, *parties: Party) -> CommitOrder:
    """``commit`` with each party's proofs of its leg keys, by its settlement wallet."""
    proofs = {}
    for p in parties:
        for i, role, address in leg_roles_of(commit.order, p.node.node_id):
            adapter = p.node.engine.adapters[commit.order.legs[i].chain]
            proofs[(i, role)] = adapter.prove_leg_key(address, commit.order.order_id, i, role)
    return commit.with_leg_proofs(proofs)


def _commit_tx(order, taker: Party, maker: Party, *, sign_maker: bool = True) -> bytes:
    sigs = [order.sign(taker.node.key)]
    if sign_maker:
        sigs.append(order.sign(maker.node.key))
    return sign_tx(taker.node.key, _prove(CommitOrder(order, tuple(sigs)), taker, maker))


def _drive(net: Net, parties: list[Party], swap_id: bytes, rounds: int = 60) -> dict[str, State]:
    states: dict[str, State] = {}
    for _ in range(rounds):
        with net.lock:
            for p in parties:
                p.node.engine.tick()
            states = {p.node.name: p.node.engine.journal.get(swap_id).state for p in parties}
            if all(s is State.REDEEMED for s in states.values()):
                return states
            net.btc.mine(1)
    return states


def _status(net: Net, pipe: TradePipeline, order_id: bytes, want: str, rounds: int = 200) -> str:
    """The order's status on the ledger once it is ``want`` (bounded wait: blocks come every
    0.05 s and each attests what the chains show)."""
    status = ""
    for _ in range(rounds):
        status = pipe.committed(order_id).status
        if status == want:
            return status
        with net.lock:
            net.btc.mine(1)
        time.sleep(0.05)
    return status


def test_committed_order_is_settled_by_both_pipelines(net: Net, tmp_path: Path) -> None:
    taker, maker = _party("taker", tmp_path, net), _party("maker", tmp_path, net)
    link(taker.node, maker.node)
    taker.pipe.send = taker.node.engine._request
    preimage = os.urandom(32)
    order = _order(taker, maker, net, payment_hash=hashlib.sha256(preimage).digest())
    oid = order.order_id
    assets = [("btc", None), ("eth", None)]
    with net.lock:
        before = {p.node.name: holdings(p.node, assets) for p in (taker, maker)}

    # Nothing starts before the commit: the maker refuses a proposal for an order it
    # co-signed but has not seen committed.
    maker.pipe.expect(order)
    with net.lock:
        a, b = engine_legs(order, taker.node.engine.policies)
        early = _probe_terms(taker, maker, oid, order, a, b)
        reply = maker.node.engine.handle(Propose(early), taker.node.node_id)
    assert reply is not None and getattr(reply, "code", "") == "terms_not_offered"
    assert maker.node.engine.unfinished() == []

    tx = _commit_tx(order, taker, maker)
    height = taker.pipe.submit(tx, preimage=preimage)
    assert height > 0
    assert taker.pipe.submit(tx) == height  # a retry sends nothing new
    assert net.client.tx(tx_hash(tx)).height == height
    assert maker.pipe.watch_commit(oid).height == height
    assert taker.phases.phases(oid) == ["signed", "submitted", "committed"]

    # a restart after the commit: the phases and the secret come back from disk
    taker.phases.close()
    taker.phases = PhaseJournal(tmp_path / "taker-trades.sqlite")
    taker.pipe = TradePipeline(
        ledger=net.client,
        engine=taker.node.engine,
        node_key=taker.node.key,
        phases=taker.phases,
        send=taker.node.engine._request,
    )
    assert taker.pipe.submit(tx) == height
    assert net.client.status().height >= height
    with net.lock:
        terms = taker.pipe.start_as_taker(oid)
        assert taker.pipe.start_as_taker(oid) == terms  # idempotent
    assert terms.swap_id == oid and terms.payment_hash == order.payment_hash
    assert maker.node.engine.journal.get(oid).state is State.ACCEPTED
    assert taker.node.engine.journal.get(oid).state is State.ACCEPTED

    states = _drive(net, [taker, maker], oid)
    assert states == {"taker": State.REDEEMED, "maker": State.REDEEMED}
    # the ledger settles it from its own observation of the chains (solo attestation)
    assert _status(net, taker.pipe, oid, "settled") == "settled"
    committed = taker.pipe.committed(oid)
    rec = net.app.order(oid)
    assert rec is not None and [x["outcome"] for x in rec["legs"]] == ["redeemed", "redeemed"]
    assert committed.order == order
    with pytest.raises(TradeRefused, match="settled on the ledger"):
        maker.pipe.watch_commit(oid)  # a settled order starts nothing again

    with net.lock:
        for p, gives, gets in ((taker, a, b), (maker, b, a)):
            after = holdings(p.node, assets)
            want = expected_after(
                before[p.node.name], gives=gives, gets=gets, fees=fees_paid(p.node, oid)
            )
            assert after == want, p.node.name


def _probe_terms(taker: Party, maker: Party, oid: bytes, order, a, b):
    """Terms exactly as the committed order would give them (built by hand: the taker's
    engine must not journal a swap before the commit)."""
    from kofo.settlement.terms import propose_terms

    with_exp = propose_terms(
        swap_id=oid,
        payment_hash=order.payment_hash,
        initiator_leg=a,
        participant_leg=b,
        policies=taker.node.engine.policies,
        now=taker.node.engine.now(),
        initiator_node=taker.node.node_id,
        participant_node=maker.node.node_id,
    )
    return replace(
        with_exp,
        initiator_leg=replace(with_exp.initiator_leg, expiry=a.expiry),
        participant_leg=replace(with_exp.participant_leg, expiry=b.expiry),
    )


def test_refused_order_starts_nothing_and_differing_terms_are_refused(
    net: Net, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    taker, maker = _party("taker", tmp_path, net), _party("maker", tmp_path, net)
    link(taker.node, maker.node)
    taker.pipe.send = taker.node.engine._request
    preimage = os.urandom(32)
    order = _order(taker, maker, net, payment_hash=hashlib.sha256(preimage).digest())
    oid = order.order_id
    maker.pipe.expect(order)

    # signed by the taker alone: the ledger refuses it, and nothing starts
    with pytest.raises(TradeRefused, match="refused by the ledger"):
        taker.pipe.submit(_commit_tx(order, taker, maker, sign_maker=False))
    with pytest.raises(TradeRefused, match="not committed"):
        taker.pipe.start_as_taker(oid, preimage)
    with pytest.raises(TradeRefused, match="not committed"):
        maker.pipe.watch_commit(oid)
    assert taker.node.engine.unfinished() == [] and maker.node.engine.unfinished() == []

    # committed properly; then the taker proposes terms that differ from the order (a
    # larger participant amount): the maker refuses, says why in its log, reserves nothing
    taker.pipe.submit(_commit_tx(order, taker, maker))
    # (the maker's watcher has not seen the commit: its policy asks the ledger itself)
    with net.lock:
        a, b = engine_legs(order, taker.node.engine.policies)
        terms = _probe_terms(taker, maker, oid, order, a, b)
        bad = replace(terms, participant_leg=replace(terms.participant_leg, amount=WEI + 1))
        with caplog.at_level(logging.WARNING, logger="kofo.node.trades"):
            reply = maker.node.engine.handle(Propose(bad), taker.node.node_id)
    assert reply is not None and getattr(reply, "code", "") == "terms_not_offered"
    assert "participant_leg.amount" in getattr(reply, "message", "")
    assert any("participant_leg.amount" in r.getMessage() for r in caplog.records)
    assert maker.node.engine.unfinished() == []
    assert maker.node.engine.reserved("eth") == 0

    # another hash than the order's is refused too
    with net.lock:
        other = replace(terms, payment_hash=hashlib.sha256(b"x").digest())
        reply = maker.node.engine.handle(Propose(other), taker.node.node_id)
    assert reply is not None and "payment_hash" in getattr(reply, "message", "")
    assert maker.node.engine.unfinished() == []

    # each other field an order fixes: a recipient (the maker's payout address, the taker's
    # own) or an expiry that differs from the committed order is refused, named, logged
    variants = [
        ("initiator_leg", "recipient", "bcrt1qsomeoneelse"),
        ("participant_leg", "recipient", "0x" + "ab" * 20),
        ("initiator_leg", "expiry", _later(terms.initiator_leg.expiry)),
        ("participant_leg", "expiry", _later(terms.participant_leg.expiry)),
    ]
    for leg_name, field, value in variants:
        leg = replace(getattr(terms, leg_name), **{field: value})
        with net.lock, caplog.at_level(logging.WARNING, logger="kofo.node.trades"):
            reply = maker.node.engine.handle(Propose(replace(terms, **{leg_name: leg})),
                                             taker.node.node_id)  # fmt: skip
        assert reply is not None and getattr(reply, "code", "") == "terms_not_offered"
        assert f"{leg_name}.{field}" in getattr(reply, "message", ""), reply
        assert any(f"{leg_name}.{field}" in r.getMessage() for r in caplog.records)
        assert maker.node.engine.unfinished() == [] and maker.node.engine.reserved("eth") == 0

    # a replayed commit: the same bytes are found by hash (never sent twice); a new commit of
    # the same order (signed again) is refused by the ledger; nothing starts on either side
    commit = _commit_tx(order, taker, maker)
    height = taker.pipe.submit(commit)
    assert taker.pipe.submit(commit) == height
    sigs = (order.sign(taker.node.key), order.sign(maker.node.key))
    again = sign_tx(
        taker.node.key, _prove(CommitOrder(order, sigs), taker, maker), ts=int(time.time()) + 1
    )
    assert tx_hash(again) != tx_hash(commit)
    with pytest.raises(LedgerRefused) as replayed:
        taker.pipe.ledger.commit(again, timeout=30)
    assert replayed.value.code == "already_exists", replayed.value
    assert taker.node.engine.unfinished() == [] and maker.node.engine.unfinished() == []


def _later(expiry):
    return replace(expiry, value=expiry.value + 7)


def test_order_expiries_that_do_not_fit_the_engine_margins_are_refused(
    net: Net, tmp_path: Path
) -> None:
    """The ledger accepts an order whose Ethereum leg expires minutes after its lock_by, but the
    taker's engine could not redeem it safely before it expires: the swap is refused, clearly,
    before anything locks."""
    taker, maker = _party("taker", tmp_path, net), _party("maker", tmp_path, net)
    link(taker.node, maker.node)
    taker.pipe.send = taker.node.engine._request
    preimage = os.urandom(32)
    order = _order(taker, maker, net, payment_hash=hashlib.sha256(preimage).digest())
    now = int(time.time())
    out, back = order.legs
    back = replace(back, expiry=UnixTime(now + 200), expiry_time=now + 200, lock_by=now + 100)
    out = replace(out, expiry_time=now + 200 + 3_600, lock_by=now + 60)
    order = with_derived_id(replace(order, legs=(out, back)))
    maker.pipe.expect(order)
    taker.pipe.submit(_commit_tx(order, taker, maker), preimage=preimage)
    with net.lock, pytest.raises(TermsRefused) as refused:
        taker.pipe.start_as_taker(order.order_id)
    assert refused.value.code == "terms_margin_too_small"
    assert taker.node.engine.unfinished() == [] and maker.node.engine.unfinished() == []
    assert "swap_started" not in taker.phases.phases(order.order_id)
