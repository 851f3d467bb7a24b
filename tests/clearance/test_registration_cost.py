"""Issue 17: sybils filled the registration slots of every block for free. A registration now
carries memory-hard work at the difficulty the ledger's params set; a flood without it is
refused before any proof is checked, and an honest node that did the work still registers."""

import dataclasses

import pytest

from kofo.clearance import admission, privacy
from kofo.clearance.admission import SenderRateLimit
from kofo.clearance.app import LedgerApp
from kofo.clearance.params import LedgerParams
from kofo.clearance.store import MerkleStore
from kofo.wire.codec import decode
from kofo.wire.envelope import open_message
from kofo.wire.orders import RegisterNode, sign_tx

from .helpers import T0, TEST_PREWORK_BITS, Ledger, Party, ledger_params

pytestmark = pytest.mark.timeout(120)

BITS = 8


def _unworked(tx: bytes, party: Party, *, prework: bool = True) -> bytes:
    """The same registration with a nonce that is not work of ``BITS`` bits (with its
    pre-work, the costliest junk for a validator, unless ``prework`` is False)."""
    body = RegisterNode.from_map(open_message(tx).envelope.body)
    n = body.paillier_n
    pre = 0
    while admission.check_prework(party.id, n, pre << 32, TEST_PREWORK_BITS) != prework:
        pre += 1
    nonce = pre << 32
    while admission.check_registration_work(party.id, n, nonce, BITS):
        nonce += 1
    return sign_tx(party.key, dataclasses.replace(body, pow_nonce=nonce))


def _worked(party: Party) -> bytes:
    body = RegisterNode.from_map(open_message(party.register_tx()).envelope.body)
    work = admission.solve_registration_work(party.id, body.paillier_n, BITS, TEST_PREWORK_BITS)
    return sign_tx(party.key, dataclasses.replace(body, pow_nonce=work))


def test_a_registration_flood_without_work_is_refused_and_an_honest_node_registers():
    ledger = Ledger(params=ledger_params(registration_work_bits=BITS))
    sybils = [Party.make(100 + i) for i in range(30)]
    flood = [_unworked(s.register_tx(), s) for s in sybils]
    for tx in flood[:3]:  # refused at CheckTx already: the mempool never holds them
        res = ledger.app.check_tx(tx)
        assert res.error == "bad_message" and "pow_nonce" in res.log
    honest = Party.make(1)
    body = RegisterNode.from_map(open_message(honest.register_tx()).envelope.body)
    work = admission.solve_registration_work(honest.id, body.paillier_n, BITS, TEST_PREWORK_BITS)
    honest_tx = sign_tx(honest.key, dataclasses.replace(body, pow_nonce=work))
    result = ledger.block(*flood, honest_tx)
    assert [r.error for r in result.results] == ["bad_message"] * 30 + [""]
    assert ledger.app.node(honest.id) is not None
    assert all(ledger.app.node(s.id) is None for s in sybils)


def test_work_is_bound_to_the_sender_and_the_modulus():
    ledger = Ledger(params=ledger_params(registration_work_bits=BITS))
    a, b = Party.make(1), Party.make(2)
    body = RegisterNode.from_map(open_message(a.register_tx()).envelope.body)
    work = admission.solve_registration_work(a.id, body.paillier_n, BITS, TEST_PREWORK_BITS)
    # b reuses a's work for its own registration: refused (the digest names the sender)
    b_body = RegisterNode.from_map(open_message(b.register_tx()).envelope.body)
    if not admission.check_registration_work(b.id, b_body.paillier_n, work, BITS):
        res = ledger.block(sign_tx(b.key, dataclasses.replace(b_body, pow_nonce=work)))
        assert [r.error for r in res.results] == ["bad_message"]
    ledger.ok(sign_tx(a.key, dataclasses.replace(body, pow_nonce=work)))


def test_the_default_difficulty_is_in_the_params_and_bounded():
    assert LedgerParams().registration_work_bits == 12
    assert decode(Ledger().app.query("/params", b""))["registration_work_bits"] >= 0
    with pytest.raises(Exception, match="registration_work_bits"):
        LedgerParams(registration_work_bits=33)
    # one check is one scrypt evaluation (deterministic: the same digest on every validator)
    n = privacy.to_bytes(Party.make(0).paillier_pub.n)
    assert admission.registration_work(b"x" * 32, n, 7) == admission.registration_work(
        b"x" * 32, n, 7
    )


def _counting(monkeypatch) -> list[int]:
    calls: list[int] = []
    real = admission.registration_work

    def counted(sender: bytes, n: bytes, nonce: int) -> bytes:
        calls.append(nonce)
        return real(sender, n, nonce)

    monkeypatch.setattr(admission, "registration_work", counted)
    return calls


def test_a_flood_of_unworked_registrations_no_longer_empties_the_registration_bucket(
    monkeypatch,
):
    # Issue 17 (review): CheckTx charged the shared registration bucket (all senders) before
    # checking the work, so a flood of unworked registrations from fresh keys (free) emptied
    # it and every honest registration was refused rate_limited. The work (behind a one-hash
    # pre-work) is now checked first: only worked registrations spend the bucket.
    app = LedgerApp(
        MerkleStore(),
        ledger_params(registration_work_bits=BITS),
        registration_limit=SenderRateLimit(0.0001, 3, clock=lambda: 0.0),
    )
    sybils = [Party.make(200 + i) for i in range(5)]
    bare_txs = [_unworked(s.register_tx(), s, prework=False) for s in sybils]
    junk_txs = [_unworked(s.register_tx(), s) for s in sybils]
    honest = [_worked(Party.make(i)) for i in (1, 2, 3, 4)]
    scrypts = _counting(monkeypatch)
    bare = [app.check_tx(tx) for tx in bare_txs]
    assert [r.error for r in bare] == ["bad_message"] * 5
    assert all("pre-work" in r.log for r in bare)
    assert scrypts == []  # no pre-work: not one scrypt evaluated
    junk = [app.check_tx(tx) for tx in junk_txs]
    assert [r.error for r in junk] == ["bad_message"] * 5
    assert len(scrypts) == 5  # one scrypt each, and nothing charged to the shared bucket
    assert [app.check_tx(tx).error for tx in honest[:3]] == [""] * 3
    # the bucket (burst 3) is spent by worked registrations only
    assert app.check_tx(honest[3]).error == "rate_limited"


def test_one_pre_work_buys_one_scrypt_at_check_tx(monkeypatch):
    # A flood that found one pre-work and varies the nonce's low bits: without the memo each
    # nonce cost the validator a scrypt (~2-10 ms) for a few microseconds of the sender's.
    app = LedgerApp(MerkleStore(), ledger_params(registration_work_bits=BITS))
    sybil = Party.make(200)
    first = _unworked(sybil.register_tx(), sybil)
    body = RegisterNode.from_map(open_message(first).envelope.body)
    scrypts = _counting(monkeypatch)
    assert app.check_tx(first).error == "bad_message"
    for low in range(1, 40):
        tx = sign_tx(sybil.key, dataclasses.replace(body, pow_nonce=body.pow_nonce + low))
        res = app.check_tx(tx)
        assert res.error == "bad_message", res
    assert len(scrypts) == 1
    # the block still judges each on its own (consensus has no memo policy): real work passes
    ledger = Ledger(params=ledger_params(registration_work_bits=BITS))
    ledger.ok(_worked(sybil))


def test_a_proposer_cannot_charge_work_checks_with_registrations_lacking_pre_work(monkeypatch):
    ledger = Ledger(
        params=ledger_params(registration_work_bits=BITS, max_registrations_per_block=5)
    )
    sybils = [Party.make(400 + i) for i in range(60)]
    flood = [_unworked(s.register_tx(), s, prework=False) for s in sybils]
    honest = Party.make(1)
    honest_tx = _worked(honest)
    scrypts = _counting(monkeypatch)
    result = ledger.block(*flood, honest_tx)
    assert [r.error for r in result.results] == ["bad_message"] * 60 + [""]
    assert len(scrypts) == 1  # the honest one's
    assert ledger.app.node(honest.id) is not None


def test_the_solo_producer_defers_registrations_over_the_blocks_cap_instead_of_refusing():
    # Seven nodes of a local network start at once; a block takes five registrations. The
    # producer leaves the other two for the next block (as CometBFT's honest proposer does):
    # every node registers, none is refused rate_limited.
    from kofo.clearance.consensus.solo import SoloChain

    params = ledger_params(max_registrations_per_block=5)
    chain = SoloChain(LedgerApp(MerkleStore(), params), clock=lambda: T0)
    parties = [Party.make(300 + i) for i in range(7)]
    assert all(chain.submit(p.register_tx()).ok for p in parties)
    results = chain.drain()
    assert [len(r.results) for r in results] == [5, 2]
    assert all(r.ok for res in results for r in res.results)
    assert all(chain.app.node(p.id) is not None for p in parties)


def test_a_hostile_proposers_block_of_unworked_registrations_costs_a_bounded_number_of_scrypts(
    monkeypatch,
):
    # CheckTx refuses registrations without their work, but a hostile proposer puts what it
    # likes in its block: every validator evaluated one scrypt (~2-10 ms, 1 MiB) per such
    # registration at FinalizeBlock, uncharged, and a ~300-byte tx repeated to CometBFT's
    # block size was minutes of every validator's CPU. Work checks per block are now capped
    # (a multiple of the registration slots); past the cap a registration is refused
    # rate_limited without evaluating anything.
    ledger = Ledger(
        params=ledger_params(registration_work_bits=BITS, max_registrations_per_block=5)
    )
    cap = 5 * 4  # WORK_CHECKS_PER_REGISTRATION_SLOT checks per registration slot
    sybils = [Party.make(400 + i) for i in range(cap + 40)]
    flood = [_unworked(s.register_tx(), s) for s in sybils]
    evaluations = 0
    real = admission.registration_work

    def counted(sender: bytes, n: bytes, nonce: int) -> bytes:
        nonlocal evaluations
        evaluations += 1
        return real(sender, n, nonce)

    monkeypatch.setattr(admission, "registration_work", counted)
    result = ledger.block(*flood)
    codes = [r.error for r in result.results]
    assert codes == ["bad_message"] * cap + ["rate_limited"] * 40
    assert evaluations == cap
    assert all(ledger.app.node(s.id) is None for s in sybils)
    # the next block (an honest proposer's) registers an honest node as before
    honest = Party.make(1)
    body = RegisterNode.from_map(open_message(honest.register_tx()).envelope.body)
    work = admission.solve_registration_work(honest.id, body.paillier_n, BITS, TEST_PREWORK_BITS)
    ledger.ok(sign_tx(honest.key, dataclasses.replace(body, pow_nonce=work)))
    assert ledger.app.node(honest.id) is not None
