"""Issue 17 section 4: no tx halts or splits the validators, and spam is not free.

Every integer is bounded at decode, so no field can overflow a conversion or reach Python's
int->str limit (``PYTHONINTMAXSTRDIGITS``), and the result never depends on a process setting;
moduli have fixed sizes; /importance costs at most one pass per height; the checked-tx cache is
bounded in bytes; and each sender has a bounded share of a block and of a node's CheckTx."""

import dataclasses
import sys

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kofo.clearance import app as app_module
from kofo.clearance import privacy
from kofo.clearance.admission import SenderRateLimit
from kofo.clearance.app import Block, LedgerApp
from kofo.clearance.store import MerkleStore
from kofo.wire.envelope import DOMAIN, BadMessage
from kofo.wire.orders import (
    MAX_AMOUNT,
    MAX_U64,
    TX_FILE_EVIDENCE,
    TX_REGISTER_NODE,
    TX_REPORT_OUTCOME,
    TX_UNBOND,
    TX_WITHDRAW_FEES,
    EvidenceKind,
    FileEvidence,
    LegOutcome,
    RegisterNode,
    ReportOutcome,
    Unbond,
    parse_tx_body,
    sign_tx,
)

from .helpers import T0, Ledger, Party, commit_tx, ledger_params, make_order

pytestmark = pytest.mark.timeout(120)


def _codes(result):
    return [r.error for r in result.results]


def _raw(party: Party, msg_type: str, body: dict, ts: int = T0) -> bytes:
    """A correctly signed tx built with cbor2 directly (past our own encoder's checks)."""
    env = {"v": 1, "type": msg_type, "sender": party.id, "nonce": bytes(16), "ts": ts, "body": body}
    sig = party.key.sign(DOMAIN + cbor2.dumps(env, canonical=True))
    return cbor2.dumps({"env": env, "sig": sig}, canonical=True)


def test_leg_not_locked_evidence_for_leg_256_is_refused_not_an_overflow():
    ledger = Ledger()
    alice, m1, m2 = (Party.make(i) for i in range(3))
    ledger.ok(*(p.register_tx() for p in (alice, m1, m2)))
    order = make_order([alice, m1, m2])
    ledger.ok(commit_tx(order, [alice, m1, m2], alice))
    for leg in (256, 2**64 - 1, 8):
        ev = sign_tx(alice.key, FileEvidence(EvidenceKind.LEG_NOT_LOCKED, order.order_id, leg))
        assert ledger.app.check_tx(ev).error == "bad_message"
        result = ledger.block(ev, time=T0 + 10**6)
        assert _codes(result) == ["bad_message"] and "leg" in result.results[0].log


def _huge_int_txs() -> list[bytes]:
    p = Party.make(0)
    huge = 10**5000  # past the default 4300-digit int->str limit
    reg = sign_tx(p.key, RegisterNode({}, b"\x01", b"\x01", 1, seed_proof=b"\x01"))
    reg_body = cbor2.loads(reg)["env"]["body"]
    report = ReportOutcome(b"\x00" * 16, 0, LegOutcome.LOCKED, "tx").as_map()
    evidence = FileEvidence(EvidenceKind.LEG_NOT_LOCKED, b"\x00" * 16, 0).as_map()
    withdraw = Party.make(1)
    unbond = Unbond(10**18, 0, b"\x11" * 20).as_map()
    return [
        _raw(p, TX_UNBOND, {**unbond, "amount": huge}),
        _raw(p, TX_UNBOND, {**unbond, "seq": -huge}),
        _raw(p, TX_REGISTER_NODE, {**reg_body, "bond": huge}),
        _raw(p, TX_REGISTER_NODE, {**reg_body, "bond": -huge}),
        _raw(p, TX_REPORT_OUTCOME, {**report, "leg": huge}),
        _raw(p, TX_FILE_EVIDENCE, {**evidence, "leg": -huge}),
        _raw(withdraw, TX_WITHDRAW_FEES, {"sv": 2, "amount": -huge}),
        _raw(p, TX_REPORT_OUTCOME, report, ts=huge),
        _raw(p, TX_REPORT_OUTCOME, {**report, "leg": 2**256}),
    ]


@pytest.mark.parametrize("digits", [0, 640, 4300])
def test_huge_integers_are_refused_the_same_way_whatever_the_int_str_limit(digits):
    txs = _huge_int_txs()
    old = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(digits)
    try:
        ledger = Ledger()
        checks = [ledger.app.check_tx(tx).error for tx in txs]
        result = ledger.block(*txs)
    finally:
        sys.set_int_max_str_digits(old)
    assert checks == ["bad_encoding"] * len(txs)
    assert _codes(result) == ["bad_encoding"] * len(txs)
    reference = Ledger()
    assert result.app_hash == reference.block(*txs).app_hash


# -- every decoded integer is bounded (property) ---------------------------------------------


def _valid_bodies() -> dict[str, dict]:
    alice, m1, m2 = (Party.make(i) for i in range(3))
    order = make_order([alice, m1, m2])
    commit = cbor2.loads(commit_tx(order, [alice, m1, m2], alice))["env"]["body"]
    reg = cbor2.loads(alice.register_tx())["env"]["body"]
    withdraw = cbor2.loads(
        sign_tx(alice.key, alice.withdraw(privacy.encrypt(alice.paillier_pub, 5), "btc", 0))
    )["env"]["body"]
    report = ReportOutcome(order.order_id, 1, LegOutcome.LOCKED, "tx").as_map()
    evidence = FileEvidence(EvidenceKind.LEG_NOT_LOCKED, order.order_id, 1).as_map()
    return {
        "clearance.unbond": Unbond(10**18, 0, b"\x11" * 20).as_map(),
        "clearance.commit_order": commit,
        "clearance.register_node": reg,
        "clearance.withdraw_fees": withdraw,
        "clearance.report_outcome": report,
        "clearance.file_evidence": evidence,
    }


BODIES = _valid_bodies()


def _int_paths(value, path=()):
    if isinstance(value, bool):
        return
    if isinstance(value, int):
        yield path
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _int_paths(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _int_paths(v, (*path, i))


def _replace(value, path, new):
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        return {**value, head: _replace(value[head], rest, new)}
    return [_replace(v, rest, new) if i == head else v for i, v in enumerate(value)]


INT_FIELDS = [(t, p) for t, body in BODIES.items() for p in _int_paths(body)]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    field=st.sampled_from(INT_FIELDS),
    value=st.one_of(
        st.integers(),
        st.integers(min_value=-(2**300), max_value=2**300),
        st.sampled_from([MAX_U64, MAX_U64 + 1, MAX_AMOUNT, MAX_AMOUNT + 1, -1, 256, 2**63]),
    ),
)
def test_every_decoded_integer_is_within_its_schema_bound(field, value):
    msg_type, path = field
    body = _replace(BODIES[msg_type], path, value)
    try:
        parsed = parse_tx_body(msg_type, body)
    except Exception as exc:
        assert getattr(exc, "code", None) == "bad_message", exc
        return
    for p in _int_paths(parsed.as_map()):
        v = parsed.as_map()
        for k in p:
            v = v[k]
        assert 0 <= v <= MAX_AMOUNT
    assert all(0 <= v <= MAX_U64 for v in _u64_fields(parsed))


def _u64_fields(parsed):
    m = parsed.as_map()
    out = [m.get("leg") or 0, m.get("seq") or 0, m.get("pow_nonce") or 0]
    order = m.get("order")
    if isinstance(order, dict) and "legs" not in order:  # evidence: the take's commit_order
        order = order.get("order")
    if isinstance(order, dict):
        out += [leg["lock_by"] for leg in order["legs"]]
        out += [leg["expiry_time"] for leg in order["legs"]]
    return out


# -- bounded costs ---------------------------------------------------------------------------


def test_an_outsized_paillier_modulus_is_refused_before_any_proof_is_checked(monkeypatch):
    called = []
    monkeypatch.setattr(privacy, "verify_zero", lambda *a, **k: called.append(1))
    p = Party.make(0)
    big_n = (1 << 8191) | 1
    body = RegisterNode({}, privacy.to_bytes(big_n), b"\x01", 1, seed_proof=b"\x01")
    ledger = Ledger()
    assert ledger.app.check_tx(sign_tx(p.key, body)).error == "bad_message"
    body = dataclasses.replace(body, paillier_n=privacy.to_bytes((1 << 3071) | 1))
    assert _codes(ledger.block(sign_tx(p.key, body))) == ["bad_message"]  # 3072 not allowed here
    assert called == []


def test_importance_queries_rank_once_per_height_and_match_a_full_scan(monkeypatch):
    ledger = Ledger()
    parties = [Party.make(i) for i in range(12)]
    ledger.ok(*(p.register_tx() for p in parties))
    order = make_order(parties[:3])
    ledger.ok(commit_tx(order, parties[:3], parties[0]))
    calls = []
    real = ledger.app._stats_score

    def counting(stats, height):
        calls.append(1)
        return real(stats, height)

    monkeypatch.setattr(ledger.app, "_stats_score", counting)
    ledger.app._rank = None  # rebuilt with the counting scorer
    first = ledger.app.query("/importance", b"")
    after_first = len(calls)
    for _ in range(50):
        assert ledger.app.query("/importance", b"") == first
    assert len(calls) == after_first <= len(parties)  # one pass at this height, then cached
    ledger.chains.see_bond(parties[1].id, 10**18)  # a block changes a node's record
    ledger.attested()
    assert ledger.app.bond(parties[1].id) == 10**18
    ranked = ledger.app.ranked_nodes(100)
    full = sorted(
        ((n, real(app_module._stats(ledger.app.node(n)), ledger.app.height)) for n, _ in ranked),
        key=lambda t: (-t[1], t[0]),
    )
    assert ranked == full and len(ranked) == len(parties)
    # a reopened app rebuilds the same ranking from the store
    reopened = LedgerApp(ledger.app.store, ledger_params())
    assert reopened.ranked_nodes(100) == ranked


def test_oversized_txs_are_refused_and_the_checked_cache_is_bounded_in_bytes(monkeypatch):
    p = Party.make(0)
    reg = cbor2.loads(p.register_tx())["env"]["body"]
    junk = _raw(p, TX_REGISTER_NODE, {**reg, "addresses": {"x" * 60_000: "a"}})
    ledger = Ledger()
    assert ledger.app.check_tx(junk).error == "bad_message"
    too_big = _raw(p, TX_REGISTER_NODE, {**reg, "pad": b"\x00" * 70_000})
    assert "at most" in ledger.app.check_tx(too_big).log
    monkeypatch.setattr(app_module, "_VERIFIED_BYTES", 5_000)
    txs = [Party.make(i).register_tx() for i in range(6)]
    for tx in txs:
        assert ledger.app.check_tx(tx).ok
    assert 0 < ledger.app._verified_bytes <= 5_000
    assert sum(size for *_, size in ledger.app._verified.values()) == ledger.app._verified_bytes


def _noise(party: Party, i: int) -> bytes:
    """A signed tx that passes CheckTx and is refused in the block (an unbond of more than any
    bond): charged to its sender like any tx. (Declared outcomes are no longer noise: they are
    refused before any budget, see test_review_la.py.)"""
    return sign_tx(party.key, Unbond(10**30 + i, 0, b"\x11" * 20))


def test_a_block_gives_each_sender_a_bounded_share():
    params = ledger_params(max_txs_per_sender_per_block=2, max_registrations_per_block=2)
    ledger = Ledger(params=params)
    a, b, c = (Party.make(i) for i in range(3))
    result = ledger.block(a.register_tx(), b.register_tx(), c.register_tx())
    assert _codes(result) == ["", "", "rate_limited"]
    noise = [_noise(a, i) for i in (0, 1, 2)]
    assert _codes(ledger.block(*noise)) == ["order_invalid", "order_invalid", "rate_limited"]


def _earners(ledger: Ledger) -> tuple[Party, Party, str]:
    """Two nodes with a fee balance (the hops of a settled order) and its asset."""
    from .test_money import _settled_order

    alice, m1, m2 = (Party.make(i) for i in range(3))
    ledger.ok(*(p.register_tx() for p in (alice, m1, m2)))
    order = _settled_order(ledger, [alice, m1, m2])
    return m1, m2, order.fee_asset


def _withdrawal(ledger: Ledger, p: Party, asset: str, *, bad_reveal: bool = False) -> bytes:
    """``p``'s next withdrawal; ``bad_reveal``: one the state rules pass and the reveal refuses
    (it is charged to the block's budgets, then refused)."""
    body = p.withdraw(ledger.app.balance_ciphertext(p.id, asset), asset, 0)
    if bad_reveal:
        body = dataclasses.replace(body, amount=body.amount - 1)
    return sign_tx(p.key, body)


def test_one_withdrawal_per_sender_per_block():
    ledger = Ledger()
    _, m2, asset = _earners(ledger)
    w = [_withdrawal(ledger, m2, asset, bad_reveal=True), _withdrawal(ledger, m2, asset)]
    assert _codes(ledger.block(*w)) == ["withdrawal_invalid", "rate_limited"]


def test_check_tx_rate_limits_each_sender_and_rechecks_are_free():
    now = [0.0]
    app = LedgerApp(
        MerkleStore(), ledger_params(), rate_limit=SenderRateLimit(1.0, 3, clock=lambda: now[0])
    )
    app.init_chain()
    a, b = Party.make(0), Party.make(1)
    txs = [_noise(a, i) for i in range(5)]
    assert [app.check_tx(tx).error for tx in txs[:4]] == ["", "", "", "rate_limited"]
    assert app.check_tx(txs[0], recheck=True).ok
    assert app.check_tx(b.register_tx()).ok  # another sender has its own bucket
    now[0] = 1.0
    assert app.check_tx(txs[3]).ok
    assert app.check_tx(txs[4]).error == "rate_limited"


def test_block_budget_is_the_same_whether_or_not_the_txs_were_cached():
    params = ledger_params(max_txs_per_sender_per_block=1)
    a = Party.make(0)
    txs = [_noise(a, i) for i in range(2)]
    cold, warm = Ledger(params=params), Ledger(params=params)
    for tx in txs:
        warm.app.check_tx(tx)
    r1 = cold.app.apply_block(Block(1, T0, tuple(txs)))
    r2 = warm.app.apply_block(Block(1, T0, tuple(txs)))
    assert (
        [r.error for r in r1.results]
        == [r.error for r in r2.results]
        == ["unknown_node", "rate_limited"]
    )
    assert r1.app_hash == r2.app_hash


def test_a_public_validator_admits_only_registrations_and_registered_senders():
    app = LedgerApp(MerkleStore(), ledger_params(), require_registered=True)
    app.init_chain()
    a, b, c = (Party.make(i) for i in range(3))
    order = make_order([a, b, c])
    signed = commit_tx(order, [a, b, c], a)
    assert app.check_tx(signed).error == "unknown_node"
    assert app.check_tx(a.register_tx()).ok
    app.apply_block(Block(1, T0, (a.register_tx(),)))
    assert app.check_tx(signed).ok


def test_withdrawals_per_block_are_capped():
    ledger = Ledger(params=ledger_params(max_withdrawals_per_block=1))
    m1, m2, asset = _earners(ledger)
    w = [_withdrawal(ledger, m1, asset, bad_reveal=True), _withdrawal(ledger, m2, asset)]
    assert _codes(ledger.block(*w)) == ["withdrawal_invalid", "rate_limited"]


def test_resending_a_checked_tx_does_not_spend_its_senders_budget():
    now = [0.0]
    limit = SenderRateLimit(1.0, 2, clock=lambda: now[0])
    app = LedgerApp(MerkleStore(), ledger_params(), rate_limit=limit)
    app.init_chain()
    a = Party.make(0)
    tx = _noise(a, 0)
    for _ in range(20):  # an attacker replays the victim's bytes to this node
        assert app.check_tx(tx).ok
    own = _noise(a, 1)
    assert app.check_tx(own).ok  # the victim's next tx still gets in


def test_registrations_from_all_senders_share_one_checktx_bucket():
    limit = SenderRateLimit(1.0, 2, clock=lambda: 0.0)
    app = LedgerApp(MerkleStore(), ledger_params(), registration_limit=limit)
    app.init_chain()
    results = [app.check_tx(Party.make(i).register_tx()).error for i in range(3)]
    assert results == ["", "", "rate_limited"]


def test_an_honest_proposer_leaves_over_budget_txs_for_the_next_block():
    ledger = Ledger(params=ledger_params(max_registrations_per_block=2))
    regs = [Party.make(i).register_tx() for i in range(3)]
    junk = b"\x00junk"
    proposal = ledger.app.propose([regs[0], junk, regs[1], regs[2]], max_bytes=10**6)
    assert proposal == regs[:2]
    ledger.ok(*proposal)
    assert ledger.app.propose([regs[2]], max_bytes=10**6) == [regs[2]]
    more = [Party.make(i).register_tx() for i in (3, 4)]
    assert ledger.app.propose(more, max_bytes=len(more[0]) + 1) == [more[0]]
    assert ledger.app.propose(regs, max_bytes=10**6) == [regs[2]]  # applied ones left out


def test_an_unbond_amount_is_a_uint256_of_wei_not_a_u64():
    # a bond of 20 ETH is past 2^64 wei: it must be possible to take it back in one unbond
    body = Unbond(20 * 10**18, 0, b"\x11" * 20).as_map()
    assert parse_tx_body(TX_UNBOND, body).amount == 20 * 10**18
    with pytest.raises(BadMessage):
        parse_tx_body(TX_UNBOND, {**body, "amount": MAX_AMOUNT + 1})
