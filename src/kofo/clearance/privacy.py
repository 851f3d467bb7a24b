"""Private fee balances: Paillier ciphertexts the ledger adds up without reading.

Who encrypts: **the submitter, never the app.** Paillier encryption needs fresh randomness; a
deterministic app cannot draw any, and randomness derived from block data would be public, and
anyone who knows ``r`` decrypts ``c = (1 + m n) r^n mod n^2`` in one step. So every ciphertext
with real randomness in it is made by the node that owns the key: the ``balance_seed`` it
registers with (an encryption of 0), the ``fee_ct`` of its own fee in a quote, the ``new_seed``
after a withdrawal. The ledger only ever

* multiplies ciphertexts (``Enc(a) * Enc(b) = Enc(a + b)``), and
* adds a public integer ``s`` as ``c * (1 + s n) mod n^2`` — the encryption of ``s`` with
  randomness 1, which needs no randomness and keeps ``c``'s blinding.

Withdrawing reveals the balance: the owner decrypts ``m`` and recovers the ciphertext's
randomness ``R`` with its factorisation; anyone re-encrypts ``(m, R)`` and compares.

Every seed carries a **proof that it encrypts 0** (:func:`prove_zero`, :func:`verify_zero`), so
a node cannot start its balance at a number of its choosing and withdraw it. A ciphertext
encrypts 0 exactly when it is an n-th residue mod n^2 (``c = r^n``); the proof is the standard
sigma protocol for n-th residuosity (Damgard-Jurik; Cramer-Damgard-Nielsen), repeated
``ZERO_PROOF_REPS`` (4) times in parallel and made non-interactive and deterministic by
Fiat-Shamir:

* prover: random ``s_i`` in Z_n*, ``a_i = s_i^n mod n^2``; ``e = H(context, n, c, a_1..a_4)``
  cut into four 20-bit challenges ``e_i``; ``z_i = s_i * r^(e_i) mod n``;
* verifier: ``0 < a_i < n^2``, ``0 < z_i < n``, both prime to ``n``, and
  ``z_i^n = a_i * c^(e_i) mod n^2`` for each i.

Special soundness needs every challenge difference to be prime to ``n``: two accepting answers
to one ``a`` then give an n-th root of ``c``. Nothing about a modulus the node chose can be
assumed, so **every modulus is certified at registration** (:func:`prove_modulus`,
:func:`check_modulus`): it has no prime factor below ``SIEVE_BOUND`` = 2^20 (one gcd with the
product of those primes), it is not a prime (Miller-Rabin with bases hashed from ``n``), and it
is square-free and prime to phi(n), by the proof of
Goldberg, Reyzin, Sagga and Baldimtsi ("Efficient noninteractive certification of RSA moduli
and beyond", ASIACRYPT 2019, the ``N``-th root protocol with a small-prime sieve): for
``MODULUS_CHALLENGES`` (4) values ``rho_i`` derived by hash from ``n`` and the node id, the node
shows ``sigma_i`` with ``sigma_i^n = rho_i mod n``. If ``gcd(n, phi(n)) != 1`` some prime
``p >= 2^20`` divides both, so ``x -> x^n`` is at least ``p``-to-1 on Z_n* and each ``rho_i``
has an n-th root with probability at most ``2^-20``: four give ``2^-80``. On a certified
modulus every 20-bit challenge difference is below its smallest prime factor, so each round of
the zero proof is cheated with probability at most ``2^-20`` and the four together ``2^-80``;
and an n-th residue mod n^2 is exactly an encryption of 0 (``Z_{n^2}* = Z_n x Z_n*`` when
``gcd(n, phi(n)) = 1``). (The first version used one 256-bit challenge and checked only the
size and oddness of ``n``: with ``n = 3 p q`` a proof for a seed encrypting ``n/3`` was forged
in a handful of tries.) The context binds each proof to its purpose, the sender and (for a
withdrawal) the asset and withdrawal number, so a proof is never valid anywhere else. The
ledger still never relies on the proofs alone for money: a withdrawal is also bounded by the
protocol fees the ledger itself credited (see the app).

Key generation, encryption and decryption use python-paillier (``phe``); the ledger side is the
few modular operations above on plain integers, so it is deterministic and needs no key object.
Modular powers go through GMP (``gmpy2.powmod``, exact like ``pow``, ~8x faster at these sizes),
because every validator pays for every proof and reveal a sender can put in a block (measured
costs in docs/clearance.md, Privacy).
"""

from __future__ import annotations

import functools
import hashlib
import secrets
from math import gcd

import gmpy2
from phe import paillier

from kofo.errors import KofoError


class BadCiphertext(KofoError):
    code = "bad_ciphertext"


def to_bytes(x: int) -> bytes:
    return x.to_bytes(max(1, (x.bit_length() + 7) // 8), "big")


def from_bytes(b: bytes) -> int:
    return int.from_bytes(b, "big")


# -- node side (holds the private key) ---------------------------------------------------------


def generate_keypair(
    bits: int = 2048,
) -> tuple[paillier.PaillierPublicKey, paillier.PaillierPrivateKey]:
    pub, priv = paillier.generate_paillier_keypair(n_length=bits)
    return pub, priv


def public_modulus(pub: paillier.PaillierPublicKey) -> bytes:
    return to_bytes(pub.n)


def encrypt(pub: paillier.PaillierPublicKey, amount: int) -> bytes:
    """A fresh encryption of ``amount`` (random ``r`` drawn here, outside the ledger)."""
    if amount < 0:
        raise BadCiphertext(f"only non-negative amounts are encrypted, got {amount}")
    ct: int = pub.encrypt(amount).ciphertext(be_secure=True)
    return to_bytes(ct)


def decrypt(priv: paillier.PaillierPrivateKey, ct: bytes) -> int:
    value: int = priv.raw_decrypt(from_bytes(ct))
    return value


def reveal(priv: paillier.PaillierPrivateKey, ct: bytes) -> tuple[int, bytes]:
    """(plaintext, randomness) of ``ct``: what a withdrawal shows the validators.

    ``c mod n = r^n mod n`` and ``gcd(n, phi(n)) = 1``, so ``r = (c mod n)^(n^-1 mod phi) mod n``.
    """
    n = priv.public_key.n
    c = from_bytes(ct)
    m = decrypt(priv, ct)
    phi = (priv.p - 1) * (priv.q - 1)
    r = pow(c % n, pow(n, -1, phi), n)
    return m, to_bytes(r)


def encrypt_zero(pub: paillier.PaillierPublicKey) -> tuple[bytes, int]:
    """A fresh encryption of 0 (``r^n mod n^2``) and its randomness ``r`` (for the proof)."""
    n = pub.n
    while True:
        r = secrets.randbelow(n)
        if r > 0 and gcd(r, n) == 1:
            return to_bytes(_powmod(r, n, n * n)), r


def prove_zero(n: int, ct: bytes, r: int, context: bytes) -> bytes:
    """The proof that ``ct = r^n mod n^2`` encrypts 0, bound to ``context`` (see module doc)."""
    s_values: list[int] = []
    while len(s_values) < ZERO_PROOF_REPS:
        s = secrets.randbelow(n)
        if s > 0 and gcd(s, n) == 1:
            s_values.append(s)
    return prove_zero_with(n, ct, r, context, s_values)


def prove_zero_with(n: int, ct: bytes, r: int, context: bytes, s_values: list[int]) -> bytes:
    """:func:`prove_zero` with the prover's nonces given (test vectors; never reuse them)."""
    nsq = n * n
    a_values = [_powmod(s, n, nsq) for s in s_values]
    challenges = _challenges(n, from_bytes(ct), a_values, context)
    size = _size(n)
    out = b"".join(a.to_bytes(2 * size, "big") for a in a_values)
    for s, e in zip(s_values, challenges, strict=True):
        out += (s * _powmod(r, e, n) % n).to_bytes(size, "big")
    return out


def zero_seed(pub: paillier.PaillierPublicKey, context: bytes) -> tuple[bytes, bytes]:
    """``(seed, proof)``: what a node sends when it registers or re-seeds after a withdrawal."""
    ct, r = encrypt_zero(pub)
    return ct, prove_zero(pub.n, ct, r, context)


# -- ledger side (public key only, deterministic) ----------------------------------------------

ZERO_PROOF_DOMAIN = b"KOFO/zk-zero/v1\x00"


def register_context(node: bytes) -> bytes:
    """What a registration's seed proof is bound to."""
    return ZERO_PROOF_DOMAIN + b"register\x00" + node


def withdraw_context(node: bytes, asset: str, seq: int) -> bytes:
    """What a withdrawal's new-seed proof is bound to: one node, asset and withdrawal number."""
    return (
        ZERO_PROOF_DOMAIN
        + b"withdraw\x00"
        + node
        + len(asset.encode()).to_bytes(2, "big")
        + asset.encode()
        + seq.to_bytes(8, "big")
    )


def _size(n: int) -> int:
    return (n.bit_length() + 7) // 8


ZERO_PROOF_REPS = 4
"""Parallel rounds of the zero proof, each with a ``CHALLENGE_BITS`` challenge: 80 bits."""
CHALLENGE_BITS = 20
SIEVE_BOUND = 1 << 20
"""A certified modulus has no prime factor below this: it must exceed every challenge."""
MODULUS_CHALLENGES = 4
"""Values ``rho_i`` of the modulus proof: soundness ``(1/SIEVE_BOUND)^4 = 2^-80``."""
MODULUS_DOMAIN = b"KOFO/paillier-modulus/v1\x00"
PRIME_TEST_DOMAIN = b"KOFO/modulus-not-prime/v1\x00"
PRIME_TEST_ROUNDS = 2
"""Miller-Rabin rounds that must find ``n`` composite. A prime passes every round for every
base, so one round already refuses every prime; the second guards an honest ``p q`` against
the (negligible) chance that the one base is a strong liar for it."""


def _challenges(n: int, c: int, a_values: list[int], context: bytes) -> list[int]:
    size = _size(n)
    h = hashlib.sha256()
    h.update(len(context).to_bytes(4, "big") + context)
    h.update(n.to_bytes(size, "big"))
    h.update(c.to_bytes(2 * size, "big"))
    for a in a_values:
        h.update(a.to_bytes(2 * size, "big"))
    e = int.from_bytes(h.digest(), "big")
    mask = (1 << CHALLENGE_BITS) - 1
    return [(e >> (CHALLENGE_BITS * i)) & mask for i in range(ZERO_PROOF_REPS)]


def zero_proof_size(n: int) -> int:
    """Bytes of a proof under modulus ``n``: the ``a_i`` (mod n^2) then the ``z_i`` (mod n),
    fixed width."""
    return 3 * ZERO_PROOF_REPS * _size(n)


def verify_zero(n: int, ct: bytes, proof: bytes, context: bytes, what: str) -> None:
    """Raise :class:`BadCiphertext` unless ``proof`` shows that ``ct`` encrypts 0 under ``n``.

    ``n`` must already be a certified modulus (:func:`check_modulus`; its size bounds the work:
    ``2 * ZERO_PROOF_REPS`` modular powers, half of them with 20-bit exponents)."""
    c = check_ciphertext(n, ct, what)
    size = _size(n)
    if len(proof) != zero_proof_size(n):
        raise BadCiphertext(
            f"{what}: the zero proof must be {zero_proof_size(n)} bytes, got {len(proof)}"
        )
    nsq = n * n
    k = ZERO_PROOF_REPS
    a_values = [from_bytes(proof[2 * size * i : 2 * size * (i + 1)]) for i in range(k)]
    base = 2 * size * k
    z_values = [from_bytes(proof[base + size * i : base + size * (i + 1)]) for i in range(k)]
    for a, z in zip(a_values, z_values, strict=True):
        if not (0 < a < nsq and 0 < z < n and gcd(a, n) == 1 and gcd(z, n) == 1):
            raise BadCiphertext(f"{what}: the zero proof's values are out of range")
    challenges = _challenges(n, c, a_values, context)
    for a, z, e in zip(a_values, z_values, challenges, strict=True):
        if _powmod(z, n, nsq) != a * _powmod(c, e, nsq) % nsq:
            raise BadCiphertext(f"{what}: the proof that it encrypts 0 does not verify")


# -- the modulus certificate (Goldberg-Reyzin-Sagga-Baldimtsi 2019 with a small-prime sieve) ---


@functools.cache
def _small_primorial() -> int:
    """The product of every prime below ``SIEVE_BOUND`` (82,025 primes, ~1.6 Mbit), built once
    by a product tree over GMP's primes."""
    primes = []
    p = gmpy2.mpz(2)
    while p < SIEVE_BOUND:
        primes.append(p)
        p = gmpy2.next_prime(p)
    while len(primes) > 1:
        primes = [
            primes[i] * primes[i + 1] if i + 1 < len(primes) else primes[i]
            for i in range(0, len(primes), 2)
        ]
    return int(primes[0])


def _rho(n: int, context: bytes, i: int) -> int:
    size = _size(n)
    h = hashlib.shake_256()
    h.update(MODULUS_DOMAIN + len(context).to_bytes(4, "big") + context)
    h.update(n.to_bytes(size, "big") + i.to_bytes(4, "big"))
    return int.from_bytes(h.digest(size + 16), "big") % n


def modulus_proof_size(n: int) -> int:
    return MODULUS_CHALLENGES * _size(n)


def prove_modulus(priv: paillier.PaillierPrivateKey, context: bytes) -> bytes:
    """The certificate that ``n = p q`` is square-free and prime to phi(n): the n-th roots
    ``sigma_i = rho_i^(n^-1 mod phi(n)) mod n`` of ``MODULUS_CHALLENGES`` hashed values."""
    n = priv.public_key.n
    d = pow(n, -1, (priv.p - 1) * (priv.q - 1))
    size = _size(n)
    return b"".join(
        _powmod(_rho(n, context, i), d, n).to_bytes(size, "big") for i in range(MODULUS_CHALLENGES)
    )


def _mr_base(n: int, i: int) -> int:
    size = _size(n)
    digest = hashlib.shake_256(
        PRIME_TEST_DOMAIN + n.to_bytes(size, "big") + i.to_bytes(4, "big")
    ).digest(size + 16)
    return 2 + int.from_bytes(digest, "big") % (n - 3)


def is_probable_prime(n: int) -> bool:
    """Miller-Rabin with ``PRIME_TEST_ROUNDS`` bases hashed from ``n`` (odd ``n > 3``):
    deterministic, so every validator gives the same answer, whatever its GMP version (GMP's own
    test changed between versions). A composite ``p q`` fails at the first round (one modular
    power); a prime passes every round."""
    d, s = n - 1, 0
    while d % 2 == 0:
        d, s = d // 2, s + 1
    for i in range(PRIME_TEST_ROUNDS):
        x = _powmod(_mr_base(n, i), d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


def check_modulus(n: int, proof: bytes, context: bytes, what: str) -> None:
    """Raise :class:`BadCiphertext` unless ``n`` has no prime factor below ``SIEVE_BOUND``, is
    not a prime, and ``proof`` certifies it square-free and prime to phi(n) (see module doc).

    A prime ``n`` passes the certificate (``gcd(p, p - 1) = 1``) yet is no Paillier modulus (it
    harms only its own balance, but it is a wrong acceptance): refused by a public, cheap
    probable-prime test. Perfect powers ``p^k`` (``k >= 2``) need no test of their own: ``p``
    divides both ``n`` and ``phi(n)``, which the certificate refuses."""
    if n < SIEVE_BOUND or gcd(n, _small_primorial()) != 1:
        raise BadCiphertext(f"{what}: the modulus has a prime factor below {SIEVE_BOUND}")
    if is_probable_prime(n):
        raise BadCiphertext(f"{what}: the modulus is a prime, not a product of two primes")
    size = _size(n)
    if len(proof) != modulus_proof_size(n):
        raise BadCiphertext(
            f"{what}: the modulus proof must be {modulus_proof_size(n)} bytes, got {len(proof)}"
        )
    for i in range(MODULUS_CHALLENGES):
        rho = _rho(n, context, i)
        sigma = from_bytes(proof[size * i : size * (i + 1)])
        if not 0 < sigma < n or gcd(rho, n) != 1 or _powmod(sigma, n, n) != rho:
            raise BadCiphertext(f"{what}: the modulus proof does not verify")


def modulus_context(node: bytes) -> bytes:
    """What a registration's modulus proof is bound to: the registering node."""
    return b"register\x00" + node


def check_ciphertext(n: int, ct: bytes, what: str) -> int:
    c = from_bytes(ct)
    if not 0 < c < n * n or gcd(c, n) != 1:
        raise BadCiphertext(f"{what} is not a valid ciphertext for this node's key")
    return c


def add(n: int, a: bytes, b: bytes) -> bytes:
    return to_bytes(from_bytes(a) * from_bytes(b) % (n * n))


def add_plain(n: int, ct: bytes, amount: int) -> bytes:
    nsq = n * n
    return to_bytes(from_bytes(ct) * ((1 + amount * n) % nsq) % nsq)


def _powmod(base: int, exp: int, mod: int) -> int:
    return int(gmpy2.powmod(base, exp, mod))


def verify_reveal(n: int, ct: bytes, amount: int, randomness: bytes) -> bool:
    r = from_bytes(randomness)
    if not 0 < r < n:
        return False
    nsq = n * n
    return (1 + amount * n) % nsq * _powmod(r, n, nsq) % nsq == from_bytes(ct)
