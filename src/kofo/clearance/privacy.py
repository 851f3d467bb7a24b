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

Key generation, encryption and decryption use python-paillier (``phe``); the ledger side is the
few modular operations above on plain integers, so it is deterministic and needs no key object.
"""

from __future__ import annotations

from math import gcd

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


# -- ledger side (public key only, deterministic) ----------------------------------------------


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


def verify_reveal(n: int, ct: bytes, amount: int, randomness: bytes) -> bool:
    r = from_bytes(randomness)
    if not 0 < r < n:
        return False
    nsq = n * n
    return (1 + amount * n) % nsq * pow(r, n, nsq) % nsq == from_bytes(ct)
