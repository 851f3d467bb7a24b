"""Attacker-briefed review of issue 17 sections 2 and 3 (bond vault, validator keys, voting
power): each test is an attack that worked on the first implementation and is now refused."""

import hashlib

import pytest

from kofo.clearance import bonds
from kofo.errors import KofoError
from kofo.wire.orders import (
    EvidenceKind,
    FileEvidence,
    LegOutcome,
    RegisterValidatorKey,
    sign_tx,
)

from .helpers import LEG_KEYS, Ledger, Party, commit_tx, make_order
from .test_bonds import _eth, _secp, _valkey_tx
from .test_vote_extensions import Validators

pytestmark = pytest.mark.timeout(120)


def _valkey_with(vals, i, node, secp):
    """Validator ``i`` bound to ``node`` with the Ethereum key ``secp`` (both proofs valid)."""
    eth = _eth(secp)
    body = RegisterValidatorKey(
        consensus_key=vals.pubs[i],
        eth_address=eth,
        consensus_sig=vals.keys[i].sign(bonds.valkey_consensus_message(eth, node.id)),
        eth_sig=bonds.sign_digest(secp, bonds.valkey_eth_digest(vals.pubs[i])),
    )
    return sign_tx(node.key, body)


def test_two_validators_cannot_register_one_ethereum_address():
    """Two colluding validators (a minority) register the same Ethereum key: the ledger's
    valset decisions would then list that address twice, which the vault's update_valset
    refuses for good ("validators not sorted"), freezing the vault on its old validator set
    (and a shared key would sign with both validators' power)."""
    vals = Validators()
    a, b = Party.make(5), Party.make(6)
    vals.step(a.register_tx(), b.register_tx())
    shared = hashlib.sha256(b"colluders' key").digest()
    res = vals.step(_valkey_with(vals, 0, a, shared), _valkey_with(vals, 1, b, shared))
    assert [r.code for r in res.tx_results] == [0, 0, 6]  # already_exists
    assert list(vals.apps[0].app.validator_keys().values()) == [_eth(shared)]


def _vault_sets(app):
    out, nonce = [], 1
    while True:
        try:
            out.append(app.valset_decision(nonce))
        except KofoError:
            return out
        nonce += 1


def test_a_keyed_minority_never_becomes_the_whole_vault_validator_set():
    """One validator of four (25 % of the power) binds its key and bond; the other three keep
    their genesis power without an Ethereum key. The first implementation recorded a vault
    valset decision listing only the keyed validator, with all of the vault's power: once the
    current vault set signed it (it is a ledger decision), that one validator alone could sign
    every slash and release, and every later valset update (take every bond out)."""
    vals = Validators()
    node = Party.make(5)
    vals.step(node.register_tx())
    vals.step(_valkey_tx(vals, 0, node))
    for c in vals.chains:
        c.see_bond(node.id, 10 * 10**15, 3)  # power 10, as the other three
    vals.step()
    vals.step()
    assert vals.apps[0].app.validators_at(vals.height + 2)[vals.address(0)].power == 10
    app = vals.apps[0].app

    def check(decision):
        # the vault's total is the ledger's whole power: the keyed validators sign with their
        # own share only, and the unkeyed power counts against them
        ledger_total = sum(v.power for v in app.validators_at(decision["height"] + 2).values())
        keyed = sum(decision["powers"])
        assert keyed + decision.get("unkeyed_power", 0) == ledger_total, decision
        assert 3 * keyed > 2 * ledger_total, decision

    for decision in _vault_sets(app):
        check(decision)
    assert _vault_sets(app) == []  # 25 % keyed: the vault keeps its set
    # three of four keyed: the vault set counts the fourth's power, unsigned
    others = [Party.make(6 + i) for i in range(3)]
    vals.step(*(p.register_tx() for p in others))
    for i, p in enumerate(others, start=1):
        for c in vals.chains:
            c.see_bond(p.id, (10 + i) * 10**15, 4)
    vals.step()
    vals.step(*(_valkey_tx(vals, i, p) for i, p in enumerate(others[:2], start=1)))
    (decision,) = _vault_sets(app)
    check(decision)
    assert decision["unkeyed_power"] == 10
    vals.step(_valkey_tx(vals, 3, others[2]))
    _, decision = _vault_sets(app)
    check(decision)
    assert decision["unkeyed_power"] == 0
    assert sorted(zip(decision["validators"], decision["powers"], strict=True)) == sorted(
        (_eth(_secp(i)), 10 + i) for i in range(4)
    )


def test_a_lock_made_before_lock_by_and_attested_just_after_it_is_not_slashed():
    """The sender of leg 1 locks before its lock_by; the validators can only attest the lock
    in the next block (its confirmations, then a height), whose time is past lock_by. The
    initiator files leg_not_locked in that very block: the first implementation judged the
    lock by its attestation time and slashed the honest sender (and a flood of open orders
    slowing the observation window made the gap as wide as the attacker liked)."""
    ledger = Ledger()
    alice, m1, m2 = (Party.make(i) for i in range(3))
    ledger.ok(*(p.register_tx() for p in (alice, m1, m2)))
    ledger.bonded(alice, m1, m2)
    order = make_order([alice, m1, m2], t0=ledger.time)
    ledger.ok(commit_tx(order, [alice, m1, m2], alice))
    ledger.chains.see(order, 0, LegOutcome.LOCKED)
    ledger.attested()
    ledger.chains.see(order, 1, LegOutcome.LOCKED)  # on its chain before lock_by
    ev = sign_tx(alice.key, FileEvidence(EvidenceKind.LEG_NOT_LOCKED, order.order_id, 1))
    res = ledger.block(ev, time=order.legs[1].lock_by + 1)  # attested here, evidence too
    assert [r.error for r in res.results] == ["evidence_invalid"]
    late = order.legs[1].lock_by + ledger.app.params.attest_grace + 1
    assert [r.error for r in ledger.block(ev, time=late).results] == ["evidence_invalid"]
    assert ledger.app.bond(m1.id) == m1.bond
    assert ledger.app.node(m1.id)["penalty_points"] == 0


def test_extend_vote_reads_only_its_window_however_many_orders_are_open(monkeypatch):
    """ExtendVote observed at most MAX_OBSERVED_ORDERS orders per height, but first read and
    decoded the state of every open order (and sorted every registered node): sybil orders
    that never lock stay open for good, so a free flood made each validator's ExtendVote, on
    the consensus path, as slow as the attacker liked. Now it reads only its window."""
    import kofo.clearance.app as app_module
    from kofo.clearance.store import MerkleStore

    monkeypatch.setattr(app_module, "MAX_OBSERVED_ORDERS", 2)
    ledger = Ledger()
    alice, m1, m2 = (Party.make(i) for i in range(3))
    ledger.ok(*(p.register_tx() for p in (alice, m1, m2)))
    orders = [make_order([alice, m1, m2], amount=10_000 + i, t0=ledger.time) for i in range(40)]
    ledger.ok(*(commit_tx(o, [alice, m1, m2], alice) for o in orders))
    ledger.app.extend_vote()  # builds the in-memory index from the state once
    reads: list[bytes] = []
    get, get_committed = MerkleStore.get, MerkleStore.get_committed

    def counting(real):
        def counted(self, key):
            reads.append(key)
            return real(self, key)

        return counted

    # ExtendVote reads committed state (get_committed); either read path is counted
    monkeypatch.setattr(MerkleStore, "get", counting(get))
    monkeypatch.setattr(MerkleStore, "get_committed", counting(get_committed))
    ledger.app.extend_vote()
    order_reads = [k for k in reads if k.startswith((b"order/", b"order_state/"))]
    assert 0 < len(order_reads) <= 4, len(order_reads)  # two orders: state and terms each
    # the window still rotates over every open order, and a settled one leaves it
    monkeypatch.setattr(MerkleStore, "get", get)
    monkeypatch.setattr(MerkleStore, "get_committed", get_committed)
    seen = set()
    for _ in range(20):
        ledger.chains.asked.clear()
        ledger.attested()
        seen |= {ref.order_id for ref in ledger.chains.asked}
    assert seen == {o.order_id for o in orders}
    for leg in range(3):
        ledger.chains.see(orders[0], leg, LegOutcome.REDEEMED)
    for _ in range(20):
        ledger.attested()
    assert ledger.app.order(orders[0].order_id)["status"] == "settled"
    ledger.chains.asked.clear()
    for _ in range(20):
        ledger.attested()
    assert orders[0].order_id not in {ref.order_id for ref in ledger.chains.asked}


def test_sybils_cannot_copy_an_honest_orders_legs_to_be_settled_by_its_htlcs():
    """The validators' observer finds a leg's HTLC by its chain terms (payment hash, amount,
    addresses, expiry), which say nothing of the ledger's node ids. Two sybils copied an honest
    order from the mempool with their own node ids as the route parties and committed it too:
    the honest swap's real locks and redeems were then attested for the copy as well, which
    settled with the honest order's volume (settled count, importance; a routed copy would
    also be credited fee shares nobody paid). An HTLC (payment hash, chain, token and both
    keys) now serves one order leg, ever. (Uniqueness scoped to the initiator's node, which
    would also stop a take's hash being squatted, would let this copy in: its initiator is
    another node.)"""
    from kofo.settlement.chain import HtlcTerms
    from kofo.settlement.chains.ethereum.adapter import EthereumAdapter
    from kofo.settlement.chains.ethereum.contract import deploy
    from kofo.settlement.observer import AdapterObserver
    from kofo.wire.expiry import UnixTime
    from kofo.wire.orders import Leg, OrderKind, SettlementOrder, with_derived_id
    from tests.ethereum.conftest import EmbeddedChain

    chain = EmbeddedChain()
    htlc = deploy(chain.w3, "HTLC", chain.new_account(10**18))
    a = EthereumAdapter(chain.w3, chain.new_account(5 * 10**18), htlc)
    b = EthereumAdapter(chain.w3, chain.new_account(5 * 10**18), htlc)
    alice, bob, s1, s2 = (Party.make(i) for i in (0, 1, 7, 8))
    now = a.expiry_now().value
    preimage = hashlib.sha256(b"alice's secret").digest()
    payment_hash = hashlib.sha256(preimage).digest()

    for adapter in (a, b):  # alice's and bob's accounts: their proofs of control
        LEG_KEYS[adapter.address()] = bytes(adapter.account.key)

    def leg(sender, recipient, s_adapter, r_adapter, amount, expiry, lock_by):
        return Leg(
            "eth",
            None,
            sender.id,
            recipient.id,
            s_adapter.address(),
            r_adapter.address(),
            amount,
            UnixTime(expiry),
            expiry,
            lock_by,
        )

    def order_of(x, y):
        return with_derived_id(
            SettlementOrder(
                order_id=bytes(16),
                kind=OrderKind.DIRECT,
                payment_hash=payment_hash,
                legs=(
                    leg(x, y, a, b, 10**17, now + 7_200, now + 600),
                    leg(y, x, b, a, 2 * 10**17, now + 3_600, now + 660),
                ),
            )
        )

    honest, copy = order_of(alice, bob), order_of(s1, s2)
    # (the copy is given the keys' proofs here, to test the payment-hash rule alone: a real
    # copier has none and is refused as leg_key_unproven, test_chain_observer.py)
    ledger = Ledger(chains=AdapterObserver({"eth": a}))
    ledger.time = now
    ledger.ok(*(p.register_tx() for p in (alice, bob, s1, s2)))
    ledger.ok(commit_tx(honest, [alice, bob], alice))
    res = ledger.block(commit_tx(copy, [s1, s2], s1))
    assert [r.error for r in res.results] == ["already_exists"]
    # the honest swap runs on the chain; only the honest order is settled by it
    refs = []
    for adapter, lg in ((a, honest.legs[0]), (b, honest.legs[1])):
        terms = HtlcTerms(
            "eth", payment_hash, lg.amount, lg.sender_address, lg.recipient_address, lg.expiry
        )
        refs.append(adapter.lock(terms))
    ledger.attested()
    for adapter, ref in ((a, refs[1]), (b, refs[0])):
        tx = adapter.prepare_redeem(ref, preimage)
        adapter.broadcast(tx)
        adapter.wait(tx.txid)
    ledger.attested()
    assert ledger.app.order(honest.order_id)["status"] == "settled"
    assert ledger.app.node(s1.id)["settled"] == ledger.app.node(s2.id)["settled"] == 0
