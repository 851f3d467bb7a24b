"""Attacker-briefed review of the clearance ledger before issue 17 is closed (session 7).

Each test is an attack that worked on the code before its fix (see docs/clearance.md, Threat
model); the attacks that failed are listed there too."""

from __future__ import annotations

import pytest

from kofo.clearance import admission
from kofo.clearance.admission import SenderRateLimit
from kofo.clearance.app import LedgerApp
from kofo.clearance.store import MerkleStore
from kofo.wire.orders import EvidenceKind, FileEvidence, LegOutcome, OrderKind, sign_tx

from .helpers import T0, Ledger, Party, commit_tx, ledger_params, make_order, signed_commit

pytestmark = pytest.mark.timeout(120)


def _heavy_commit(n: int = 0):  # type: ignore[no-untyped-def]
    """The heaviest order the schema allows: 8 legs, 16 relays, 24 party signatures and 16
    leg-key proofs (40 signature checks, ~9 KB)."""
    route = [Party.make(100 + i) for i in range(8)]
    relays = [Party.make(200 + i) for i in range(16)]
    return signed_commit(make_order(route, relays=relays), route + relays)


def test_checktx_charges_a_heavy_tx_by_the_checks_it_buys() -> None:
    """A registered sender (one registration's work, once) resent one 24-party order in fresh
    envelopes: one Ed25519 signature (~50 us) each made every validator re-verify its 40
    signatures (~7-14 ms), and the per-sender bucket charged it one token like a 2-leg order:
    50 a second per sybil, about half of each validator's core. Now it costs 7 tokens."""
    now = [0.0]
    app = LedgerApp(
        MerkleStore(), ledger_params(), rate_limit=SenderRateLimit(1.0, 14, clock=lambda: now[0])
    )
    app.init_chain()
    sender = Party.make(1)
    heavy = _heavy_commit()
    txs = [sign_tx(sender.key, heavy, ts=T0 + i) for i in range(3)]
    assert [app.check_tx(tx).error for tx in txs] == ["", "", "rate_limited"]
    assert admission.verifications(heavy) == 40
    assert admission.check_cost(heavy, len(txs[0])) == 7
    # an ordinary 2-leg order still costs one token (honest senders keep their rate)
    other = Party.make(2)
    a, b = Party.make(3), Party.make(4)
    light = signed_commit(make_order([a, b]), [a, b])
    assert admission.check_cost(light, len(sign_tx(other.key, light))) == 1
    results = [app.check_tx(sign_tx(other.key, light, ts=T0 + i)).error for i in range(15)]
    assert results == [""] * 14 + ["rate_limited"]
    # and the bucket refills at its rate, in tokens
    now[0] = 7.0
    assert app.check_tx(sign_tx(sender.key, heavy, ts=T0 + 99)).ok


def _flooded(monkeypatch, route_ids=(0, 1)):  # type: ignore[no-untyped-def]
    """A ledger flooded with never-locked orders (scaled down: a window of 2 orders, a grace
    of 60 s, blocks 30 s apart) and a 2-leg direct order between ``route_ids`` committed so
    that the window reaches it only after its legs' ``lock_by + attest_grace``."""
    import kofo.clearance.app as app_module

    monkeypatch.setattr(app_module, "MAX_OBSERVED_ORDERS", 2)
    ledger = Ledger(params=ledger_params(attest_grace=60))
    alice, bob = (Party.make(i) for i in route_ids)
    x, y = Party.make(7), Party.make(8)
    ledger.ok(*(p.register_tx() for p in (alice, bob, x, y)))
    ledger.bonded(alice, bob)
    junk = [
        make_order([x, y], kind=OrderKind.DIRECT, amount=1_000 + i, t0=ledger.time + 3_600)
        for i in range(40)
    ]
    ledger.ok(*(commit_tx(o, [x, y], x) for o in junk))
    step, grace = 30, 60
    commit_height = ledger.app.height + 1
    while True:  # an order the window reaches late (most are: 20 heights a round)
        order = make_order([alice, bob], kind=OrderKind.DIRECT, t0=ledger.time - 540)
        ids = sorted([o.order_id for o in junk] + [order.order_id])
        heights = range(commit_height, commit_height + grace // step + 4)
        if not any(order.order_id in app_module._window(ids, h) for h in heights):
            break
    ledger.ok(commit_tx(order, [alice, bob], alice), time=ledger.time + step)
    return ledger, alice, bob, x, order


def test_a_flood_of_never_locked_orders_cannot_get_an_honest_sender_slashed(monkeypatch):
    """ExtendVote observes at most MAX_OBSERVED_ORDERS (1,024) open orders a height, in a
    window rotating over all of them; orders nobody locks stay open for good. Two registered
    sybils commit enough never-locked direct orders between themselves (free: no bond, no fee)
    that the window comes round to an honest order only after its legs' ``lock_by +
    attest_grace``: its senders locked at once, but their locks were attested late, and any
    node filed ``leg_not_locked``: the honest initiator lost 5 % of its bond. At the defaults
    that takes 1,024 x 1,800 heights (1 s blocks): ~1.8 M orders, ~10 minutes of full 4 MB
    blocks. Now a leg is late only if the validators looked at its order after its deadline
    and saw no lock: the evidence is refused until then, and the lock they then see is in
    time (xfail(strict) on the old code: alice was slashed)."""
    ledger, alice, _bob, x, honest = _flooded(monkeypatch)
    ledger.chains.see(honest, 0, LegOutcome.LOCKED)  # both lock at once, in time
    ledger.chains.see(honest, 1, LegOutcome.LOCKED)
    deadline = honest.legs[0].lock_by + 60
    while ledger.time + 30 <= deadline:
        ledger.attested(time=ledger.time + 30)
    assert ledger.app.order(honest.order_id)["legs"][0]["outcome"] is None  # not reached yet
    ev = sign_tx(x.key, FileEvidence(EvidenceKind.LEG_NOT_LOCKED, honest.order_id, 0))
    result = ledger.block(ev, time=deadline + 1)
    assert "not yet observed" in result.results[0].log
    assert ledger.app.node(alice.id)["penalty_points"] == 0
    assert ledger.app.bond(alice.id) == alice.bond
    for _ in range(40):  # the window comes round (21 open orders, 2 a height)
        if ledger.app.order(honest.order_id)["legs"][0]["outcome"] == "locked":
            break
        ledger.attested(time=ledger.time + 30)
    legs = ledger.app.order(honest.order_id)["legs"]
    assert [leg["outcome"] for leg in legs] == ["locked", "locked"]
    assert "missed_at" not in legs[0] and "missed_at" not in legs[1]
    ev = sign_tx(x.key, FileEvidence(EvidenceKind.LEG_NOT_LOCKED, honest.order_id, 0), ts=T0 + 2)
    result = ledger.block(ev, time=ledger.time + 30)
    assert "attested locked" in result.results[0].log
    assert ledger.app.node(alice.id)["penalty_points"] == 0
    assert ledger.app.bond(alice.id) == alice.bond


def test_under_a_flood_a_real_defaulter_is_slashed_once_the_window_saw_it(monkeypatch):
    """The same flood delays evidence against a sender that really never locks, and no more:
    once the window has looked at its order after its leg's deadline and seen no lock, its
    ``leg_not_locked`` slashes it as before."""
    ledger, alice, bob, x, order = _flooded(monkeypatch)
    ledger.chains.see(order, 0, LegOutcome.LOCKED)  # alice pays in; bob never locks
    deadline = order.legs[1].lock_by + 60
    while ledger.time + 30 <= deadline:
        ledger.attested(time=ledger.time + 30)
    ev = sign_tx(x.key, FileEvidence(EvidenceKind.LEG_NOT_LOCKED, order.order_id, 1))
    result = ledger.block(ev, time=deadline + 1)
    if "missed_at" not in ledger.app.order(order.order_id)["legs"][1]:
        assert "not yet observed" in result.results[0].log
        assert ledger.app.node(bob.id)["penalty_points"] == 0
    for _ in range(40):  # the window comes round (21 open orders, 2 a height)
        if "missed_at" in ledger.app.order(order.order_id)["legs"][1]:
            break
        ledger.attested(time=ledger.time + 30)
    legs = ledger.app.order(order.order_id)["legs"]
    assert legs[0]["outcome"] == "locked" and "missed_at" not in legs[0]
    assert legs[1]["outcome"] is None and legs[1]["missed_at"] > deadline - 60
    ev = sign_tx(x.key, FileEvidence(EvidenceKind.LEG_NOT_LOCKED, order.order_id, 1), ts=T0 + 2)
    result = ledger.block(ev, time=ledger.time + 30)
    assert result.results[0].ok, result.results[0].log
    assert ledger.app.node(bob.id)["penalty_points"] == 100
    assert ledger.app.bond(bob.id) < bob.bond
    assert ledger.app.node(alice.id)["penalty_points"] == 0


def test_a_fact_that_cannot_be_applied_does_not_drop_every_other_fact(monkeypatch):
    """All facts of a height travel in one attestation tx, and a fact whose application raised
    refused the whole tx. The fact stayed pending, so the validators attested it again at the
    next height, and the next: from then on no leg outcome, bond or vault execution was ever
    applied again (a halt of everything the ledger learns from the chains). No input is known
    to make a fact raise; here one order's settlement is made to, standing for such a bug.
    Now each fact is applied in its own overlay and a failing one is skipped alone."""
    from kofo.clearance.app import LedgerApp

    ledger = Ledger()
    alice, m1, m2 = (Party.make(i) for i in range(3))
    ledger.ok(*(p.register_tx() for p in (alice, m1, m2)))
    bad, good = (make_order([alice, m1, m2], t0=ledger.time) for _ in range(2))
    ledger.ok(*(commit_tx(o, [alice, m1, m2], alice) for o in (bad, good)))
    settle = LedgerApp._settle

    def buggy(self, view, ctx, order):  # type: ignore[no-untyped-def]
        if order.order_id == bad.order_id:
            raise ZeroDivisionError("a bug this order hits")
        settle(self, view, ctx, order)

    monkeypatch.setattr(LedgerApp, "_settle", buggy)
    for o in (bad, good):
        for leg in range(3):
            ledger.chains.see(o, leg, LegOutcome.REDEEMED)
    for _ in range(3):  # the attestation tx itself is accepted (Ledger.block checks it)
        ledger.attested()
    assert ledger.app.order(good.order_id)["status"] == "settled"
    assert ledger.app.order(bad.order_id)["status"] == "committed"
    # a bond seen later still counts: nothing else is held up by the failing fact
    ledger.chains.see_bond(m1.id, 5_000)
    ledger.attested()
    assert ledger.app.bond(m1.id) == 5_000


def test_junk_of_many_tiny_items_is_refused_before_it_is_decoded(monkeypatch):
    """Anyone, without a key or a registration, sent 64 KiB of one-byte CBOR items (``[[], [],
    ...]``) as a tx: CheckTx decoded, type-checked and re-encoded all 65,000 of them before the
    envelope check refused it, ~60-90 ms of each validator's CPU for bytes that cost nothing
    to resend (CometBFT drops refused txs from its cache, so the same bytes are checked again).
    A query argument of 500 KB of them cost ~1 s of the loop that also runs consensus. Both
    are now refused from the item headers, before anything is decoded."""
    import cbor2

    from kofo.errors import KofoError

    app = LedgerApp(MerkleStore(), ledger_params(), require_registered=True)
    app.init_chain()
    junk = cbor2.dumps([[]] * 65_000, canonical=True)
    big_query = cbor2.dumps([[]] * 500_000, canonical=True)
    decoded: list[int] = []
    loads = cbor2.loads
    monkeypatch.setattr(cbor2, "loads", lambda data: decoded.append(len(data)) or loads(data))
    result = app.check_tx(junk)
    assert result.error == "bad_message" and "CBOR items" in result.log, result.log
    with pytest.raises(KofoError, match="CBOR items") as refused:
        app.query("/node", big_query)
    assert refused.value.code == "invalid_input"
    assert decoded == []
    # the heaviest valid tx and a full /rank_routes query still pass
    sender = Party.make(1)
    # (refused past its decoding: its sender is not registered on this public validator)
    assert app.check_tx(sign_tx(sender.key, _heavy_commit())).error == "unknown_node"
    routes = [[Party.make(i).id] * 8 for i in range(64)]
    assert app.query("/rank_routes", cbor2.dumps(routes, canonical=True))


def test_a_proposers_junk_attestation_tx_is_refused_before_it_is_decoded(monkeypatch):
    """A hostile proposer put 1 MB of one-byte CBOR items after the attestation prefix: every
    validator's ProcessProposal decoded all of them (~1.5 s) before refusing the block, every
    round it proposed. Now the item headers are counted first."""
    import cbor2

    from kofo.clearance import attest

    from .test_vote_extensions import Validators

    vals = Validators()
    vals.step()
    honest = vals.propose()
    junk = attest.ATTEST_TX_PREFIX + cbor2.dumps([[]] * 1_000_000, canonical=True)
    decoded: list[int] = []
    loads = cbor2.loads
    monkeypatch.setattr(cbor2, "loads", lambda data: decoded.append(len(data)) or loads(data))
    why = vals.apps[0].app.check_proposal(vals.height + 1, [junk, *honest[1:]])
    assert why is not None and "CBOR items" in why, why
    assert max(decoded, default=0) < 1_000  # (the state's own small records only)
    monkeypatch.setattr(cbor2, "loads", loads)
    assert vals.apps[0].app.check_proposal(vals.height + 1, honest) is None


def test_an_unsigned_tx_is_refused_before_it_is_decoded(monkeypatch):
    """Under the item bound, junk from anyone still cost a decode of up to 2,048 items (~4 ms)
    before its envelope signature was checked. The signature is now verified first, from the
    canonical layout (the sender's 32 bytes sit right before the ``sig`` entry)."""
    import cbor2

    from kofo.wire.envelope import signed_sender

    app = LedgerApp(MerkleStore(), ledger_params(), require_registered=True)
    app.init_chain()
    someone = Party.make(5)
    good = someone.register_tx()
    assert signed_sender(good) == someone.id
    forged = good[:-64] + bytes(64)  # a valid tx's layout, a signature that does not verify
    junk = cbor2.dumps([b"x" * 28] * 2_000, canonical=True)
    decoded: list[int] = []
    loads = cbor2.loads
    monkeypatch.setattr(cbor2, "loads", lambda data: decoded.append(len(data)) or loads(data))
    assert app.check_tx(forged).error == "bad_signature"
    assert app.check_tx(junk).error == "bad_encoding"
    assert decoded == []
    monkeypatch.setattr(cbor2, "loads", loads)
    assert app.check_tx(good).ok


def test_a_window_not_read_whole_marks_nothing(monkeypatch):
    """ExtendVote stops at MAX_OBSERVATIONS facts and encoding drops leg facts past the size
    cap: an extension that full may not have looked at every order of its window, so the
    orders left unread must not count as seen without a lock. Scaled down: an extension with
    one leg fact or more counts as incomplete."""
    import kofo.clearance.app as app_module

    monkeypatch.setattr(app_module, "COMPLETE_EXTENSION_OBS", 1)
    ledger = Ledger(params=ledger_params(attest_grace=60))
    alice, bob, x, y = (Party.make(i) for i in (0, 1, 7, 8))
    ledger.ok(*(p.register_tx() for p in (alice, bob, x, y)))
    ledger.bonded(alice, bob)
    order = make_order([alice, bob], kind=OrderKind.DIRECT, t0=ledger.time)
    other = make_order([x, y], kind=OrderKind.DIRECT, t0=ledger.time + 3_600)
    ledger.ok(commit_tx(order, [alice, bob], alice), commit_tx(other, [x, y], x))
    ledger.chains.see(order, 0, LegOutcome.LOCKED)
    ledger.attested()
    deadline = order.legs[1].lock_by + 60
    ledger.chains.see(other, 0, LegOutcome.LOCKED)  # the look after the deadline is full
    ledger.attested(time=deadline)
    assert ledger.app.order(other.order_id)["legs"][0]["outcome"] == "locked"
    assert "missed_at" not in ledger.app.order(order.order_id)["legs"][1]
    ledger.attested(time=deadline + 1)  # a whole look: bob's leg is seen missed
    assert ledger.app.order(order.order_id)["legs"][1]["missed_at"] == deadline + 1
    ev = sign_tx(x.key, FileEvidence(EvidenceKind.LEG_NOT_LOCKED, order.order_id, 1))
    assert ledger.block(ev, time=deadline + 2).results[0].ok
    assert ledger.app.node(bob.id)["penalty_points"] == 100
