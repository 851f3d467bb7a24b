"""Issue 17 section 1: fee balances and withdrawals rest on proofs and on what the ledger
itself credited, never on what a node declares."""

import dataclasses

import cbor2
import pytest

from kofo.clearance import privacy
from kofo.wire.codec import EncodingError, decode, encode
from kofo.wire.envelope import DOMAIN, sign
from kofo.wire.orders import (
    TX_REGISTER_NODE,
    TX_WITHDRAW_FEES,
    LegOutcome,
    RegisterNode,
    sign_tx,
)

from .helpers import PAILLIER_BITS, Ledger, Party, commit_tx, make_order

pytestmark = pytest.mark.timeout(120)


def _codes(result):
    return [r.error for r in result.results]


def _settled_order(ledger, route, relays=()):
    order = make_order(route, relays=list(relays))
    ledger.ok(commit_tx(order, [*route, *relays], route[0]))
    # the chains show every leg locked, then redeemed; the validator attests each step
    for i in range(len(order.legs)):
        ledger.chains.see(order, i, LegOutcome.LOCKED)
    ledger.attested()
    for i in reversed(range(len(order.legs))):
        ledger.chains.see(order, i, LegOutcome.REDEEMED)
    ledger.attested()
    return order


def _register_with_seed(party: Party, seed: bytes, proof: bytes) -> bytes:
    body = RegisterNode(
        {"btc": "02" + "aa" * 32},
        privacy.public_modulus(party.paillier_pub),
        seed,
        1_000_000,
        seed_proof=proof,
    )
    return sign_tx(party.key, body)


def test_a_seed_that_encrypts_a_large_number_is_refused_whatever_proof_comes_with_it():
    ledger = Ledger()
    thief = Party.make(7)
    n = thief.paillier_pub.n
    rich = privacy.encrypt(thief.paillier_pub, 10**12)
    _, r = privacy.reveal(thief.paillier_priv, rich)
    forged = privacy.prove_zero(n, rich, privacy.from_bytes(r), privacy.register_context(thief.id))
    zero, good_proof = privacy.zero_seed(thief.paillier_pub, privacy.register_context(thief.id))
    for proof in (forged, good_proof, b"\x01" * privacy.zero_proof_size(n)):
        assert _codes(ledger.block(_register_with_seed(thief, rich, proof))) == ["bad_ciphertext"]
    # a valid proof is bound to its node: another node cannot reuse it
    other = Party.make(8)
    assert _codes(ledger.block(_register_with_seed(other, zero, good_proof))) == ["bad_ciphertext"]
    ledger.ok(_register_with_seed(thief, zero, good_proof))


def test_a_version_1_registration_without_a_seed_proof_is_refused():
    ledger = Ledger()
    p = Party.make(0)
    body = decode(sign_tx(p.key, _body_of(p)))["env"]["body"]
    del body["sv"], body["seed_proof"]
    raw = sign(p.key, TX_REGISTER_NODE, body).to_bytes()
    result = ledger.block(raw)
    assert _codes(result) == ["bad_message"] and "sv" in result.results[0].log


def _body_of(p: Party) -> RegisterNode:
    seed, proof = privacy.zero_seed(p.paillier_pub, privacy.register_context(p.id))
    return RegisterNode({}, privacy.public_modulus(p.paillier_pub), seed, 1, seed_proof=proof)


def test_withdrawals_never_exceed_what_the_ledger_credited_even_with_a_forged_seed(monkeypatch):
    # Suppose a seed encrypting 10^12 got in anyway (here: the proof check switched off): the
    # public credited total still bounds what can be withdrawn.
    ledger = Ledger()
    alice, m1, thief = (Party.make(i) for i in range(3))
    ledger.ok(alice.register_tx(), m1.register_tx())
    rich = privacy.encrypt(thief.paillier_pub, 10**12)
    monkeypatch.setattr(privacy, "verify_zero", lambda *a, **k: None)
    ledger.ok(_register_with_seed(thief, rich, b"\x01"))
    monkeypatch.undo()
    order = _settled_order(ledger, [alice, m1, thief])
    asset = order.fee_asset
    ct = ledger.app.balance_ciphertext(thief.id, asset)
    tx = thief.withdraw(ct, asset, 0)
    assert tx.amount > 10**12
    result = ledger.block(sign_tx(thief.key, tx))
    assert _codes(result) == ["withdrawal_invalid"] and "credited" in result.results[0].log


def test_an_amount_plus_a_multiple_of_n_is_refused():
    ledger = Ledger()
    alice, m1, m2 = (Party.make(i) for i in range(3))
    ledger.ok(*(p.register_tx() for p in (alice, m1, m2)))
    order = _settled_order(ledger, [alice, m1, m2])
    asset = order.fee_asset
    ct = ledger.app.balance_ciphertext(m2.id, asset)
    honest = m2.withdraw(ct, asset, 0)
    n = m2.paillier_pub.n
    tx = dataclasses.replace(honest, amount=honest.amount + n)
    assert privacy.verify_reveal(n, ct, tx.amount, tx.randomness)  # the reveal alone passes
    with pytest.raises(EncodingError):  # our own encoder will not even write it
        sign_tx(m2.key, tx)
    result = ledger.block(_signed_raw(m2, TX_WITHDRAW_FEES, tx.as_map()))
    assert _codes(result) == ["bad_encoding"] and "256 bits" in result.results[0].log
    ledger.ok(sign_tx(m2.key, honest))


def _signed_raw(party: Party, msg_type: str, body: dict) -> bytes:
    """A correctly signed envelope built with cbor2 directly, past our encoder's checks."""
    env = {"v": 1, "type": msg_type, "sender": party.id, "nonce": bytes(16), "ts": 1, "body": body}
    sig = party.key.sign(DOMAIN + cbor2.dumps(env, canonical=True))
    return cbor2.dumps({"env": env, "sig": sig}, canonical=True)


def test_a_withdrawal_cannot_be_replayed_nor_reseeded_with_the_current_ciphertext():
    ledger = Ledger()
    alice, m1, m2 = (Party.make(i) for i in range(3))
    ledger.ok(*(p.register_tx() for p in (alice, m1, m2)))
    order = _settled_order(ledger, [alice, m1, m2])
    asset = order.fee_asset
    ct = ledger.app.balance_ciphertext(m2.id, asset)
    honest = m2.withdraw(ct, asset, 0)
    # the old attack: the current ciphertext as the "new" seed, so the same reveal matches again
    reuse = dataclasses.replace(honest, new_seed=ct)
    assert _codes(ledger.block(sign_tx(m2.key, reuse))) == ["withdrawal_invalid"]
    tx = sign_tx(m2.key, honest)
    ledger.ok(tx)
    assert _codes(ledger.block(tx)) == ["withdrawal_invalid"]  # the same bytes, again
    # a second order credits more; the next withdrawal is seq 1, paying only the new share
    order2 = _settled_order(ledger, [alice, m1, m2])
    ct2 = ledger.app.balance_ciphertext(m2.id, asset)
    stale = m2.withdraw(ct2, asset, 0)
    assert _codes(ledger.block(sign_tx(m2.key, stale))) == ["withdrawal_invalid"]
    second = m2.withdraw(ct2, asset, 1)
    assert 0 < second.amount <= honest.amount * 2 and order2.order_id != order.order_id
    ledger.ok(sign_tx(m2.key, second))


def test_a_new_seed_that_is_not_a_proven_zero_is_refused():
    ledger = Ledger()
    alice, m1, m2 = (Party.make(i) for i in range(3))
    ledger.ok(*(p.register_tx() for p in (alice, m1, m2)))
    order = _settled_order(ledger, [alice, m1, m2])
    asset = order.fee_asset
    ct = ledger.app.balance_ciphertext(m2.id, asset)
    honest = m2.withdraw(ct, asset, 0)
    loaded = privacy.encrypt(m2.paillier_pub, 10**9)
    bad = dataclasses.replace(honest, new_seed=loaded)  # the proof is for another ciphertext
    assert _codes(ledger.block(sign_tx(m2.key, bad))) == ["bad_ciphertext"]
    wrong_seq = m2.withdraw(ct, asset, 0)
    wrong_seq = dataclasses.replace(
        wrong_seq,
        new_seed_proof=privacy.zero_seed(
            m2.paillier_pub, privacy.withdraw_context(m2.id, asset, 5)
        )[1],
    )
    assert _codes(ledger.block(sign_tx(m2.key, wrong_seq))) == ["bad_ciphertext"]


def test_paillier_moduli_outside_the_allowed_sizes_are_refused():
    ledger = Ledger()
    p = Party.make(0)
    seed, proof = privacy.zero_seed(p.paillier_pub, privacy.register_context(p.id))
    for bits in (PAILLIER_BITS + 8, 4096, PAILLIER_BITS - 8):
        n = (1 << (bits - 1)) | 1
        body = RegisterNode({}, privacy.to_bytes(n), seed, 1, seed_proof=proof)
        assert _codes(ledger.block(sign_tx(p.key, body))) == ["bad_message"]
    padded = RegisterNode(
        {}, b"\x00" + privacy.public_modulus(p.paillier_pub), seed, 1, seed_proof=proof
    )
    assert _codes(ledger.block(sign_tx(p.key, padded))) == ["bad_message"]
    assert decode(encode(1)) == 1
