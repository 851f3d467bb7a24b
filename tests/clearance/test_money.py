"""Issue 17 section 1: fee balances and withdrawals rest on proofs and on what the ledger
itself credited, never on what a node declares."""

import dataclasses
import math
import random

import cbor2
import gmpy2
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

from .helpers import (
    PAILLIER_BITS,
    Ledger,
    Party,
    commit_tx,
    make_order,
    modulus_proof,
    registration_work,
)

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
    n = privacy.public_modulus(party.paillier_pub)
    body = RegisterNode(
        {"btc": "02" + "aa" * 32},
        n,
        seed,
        1_000_000,
        seed_proof=proof,
        modulus_proof=modulus_proof(party.paillier_priv, party.id),
        pow_nonce=registration_work(party.id, n),
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
    n = privacy.public_modulus(p.paillier_pub)
    return RegisterNode(
        {},
        n,
        seed,
        1,
        seed_proof=proof,
        modulus_proof=modulus_proof(p.paillier_priv, p.id),
        pow_nonce=registration_work(p.id, n),
    )


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


def _three_p_q(bits: int) -> int:
    """The reviewer's malformed modulus: ``3 p q`` of exactly ``bits`` bits."""
    rng = random.Random(3)
    while True:
        p = int(gmpy2.next_prime(rng.getrandbits(bits // 2 - 1) | 1 << (bits // 2 - 2)))
        q = int(gmpy2.next_prime(rng.getrandbits(bits // 2 - 1) | 1 << (bits // 2 - 2)))
        if (3 * p * q).bit_length() == bits:
            return 3 * p * q


def _forged_zero_proof(n: int, seed: bytes, r: int, context: bytes) -> bytes:
    """A proof that passes verify_zero for a seed encrypting ``n/3`` (not 0) when 3 divides n:
    ``c^e`` is an n-th residue whenever 3 divides ``e``, so retry until every challenge is a
    multiple of 3 (about 3^4 tries)."""
    nsq, size = n * n, (n.bit_length() + 7) // 8
    for _ in range(10_000):
        s = [random.randrange(2, n) for _ in range(privacy.ZERO_PROOF_REPS)]
        if any(math.gcd(x, n) != 1 for x in s):
            continue
        a = [pow(x, n, nsq) for x in s]
        es = privacy._challenges(n, privacy.from_bytes(seed), a, context)
        if all(e % 3 == 0 for e in es):
            z = [x * pow(r, e, n) % n for x, e in zip(s, es, strict=True)]
            return b"".join(v.to_bytes(2 * size, "big") for v in a) + b"".join(
                v.to_bytes(size, "big") for v in z
            )
    raise AssertionError("no forgery found")


def test_a_modulus_with_a_small_factor_is_refused_though_its_forged_zero_proof_verifies():
    # Issue 17: the ledger checked only that n was odd and of the right size; under n = 3 p q a
    # proof that a seed encrypting n/3 "encrypts 0" is forged in a few tries.
    ledger = Ledger()
    thief = Party.make(9)
    n = _three_p_q(PAILLIER_BITS)
    r = 2**61 - 1  # a prime: prime to n
    seed = privacy.to_bytes((1 + (n // 3) * n) * pow(r, n, n * n) % (n * n))  # Enc(n/3)
    context = privacy.register_context(thief.id)
    proof = _forged_zero_proof(n, seed, r, context)
    privacy.verify_zero(n, seed, proof, context, "seed")  # the zero proof alone is fooled
    n_bytes = privacy.to_bytes(n)
    for certificate in (
        b"\x01" * privacy.modulus_proof_size(n),
        bytes(privacy.modulus_proof_size(n)),
    ):
        body = RegisterNode(
            {},
            n_bytes,
            seed,
            1,
            seed_proof=proof,
            modulus_proof=certificate,
            pow_nonce=registration_work(thief.id, n_bytes),
        )
        result = ledger.block(sign_tx(thief.key, body))
        assert _codes(result) == ["bad_ciphertext"]
        assert "prime factor below" in result.results[0].log
    assert ledger.app.node(thief.id) is None


def test_a_registration_needs_the_certificate_of_its_own_modulus():
    ledger = Ledger()
    p, other = Party.make(0), Party.make(1)
    good = _body_of(p)
    for bad in (
        dataclasses.replace(good, modulus_proof=modulus_proof(p.paillier_priv, other.id)),
        dataclasses.replace(good, modulus_proof=modulus_proof(other.paillier_priv, p.id)),
        dataclasses.replace(good, modulus_proof=good.modulus_proof[:-1] + b"\x00"),
    ):
        result = ledger.block(sign_tx(p.key, bad))
        assert _codes(result) == ["bad_ciphertext"], result.results[0].log
    result = ledger.block(sign_tx(p.key, dataclasses.replace(good, modulus_proof=b"")))
    assert _codes(result) == ["bad_message"]
    ledger.ok(sign_tx(p.key, good))


def test_a_modulus_that_is_not_prime_to_its_totient_has_no_certificate():
    # n = p q r with r | p - 1 (every factor above the sieve): x -> x^n is not a permutation,
    # so the hashed values have n-th roots with probability 1/r each; the honest prover's
    # exponent n^-1 mod phi(n) does not exist.
    rng = random.Random(5)
    r = int(gmpy2.next_prime(privacy.SIEVE_BOUND + rng.getrandbits(16)))
    while True:
        p = 2 * r * rng.getrandbits(300) + 1
        if gmpy2.is_prime(p):
            break
    q = int(gmpy2.next_prime(rng.getrandbits(400)))
    n = p * q * r
    assert math.gcd(n, (p - 1) * (q - 1) * (r - 1)) == r
    with pytest.raises(ValueError):
        pow(n, -1, (p - 1) * (q - 1) * (r - 1))
    rho = [privacy._rho(n, b"ctx", i) for i in range(privacy.MODULUS_CHALLENGES)]
    phi = (p - 1) * (q - 1) * (r - 1)
    # the best a prover can do: a root of each value that is an n-th power (most are not)
    d = pow(n // r, -1, phi // r)
    sigmas = [pow(x, d, n) for x in rho]
    proof = b"".join(s.to_bytes((n.bit_length() + 7) // 8, "big") for s in sigmas)
    with pytest.raises(privacy.BadCiphertext, match="does not verify"):
        privacy.check_modulus(n, proof, b"ctx", "n")
