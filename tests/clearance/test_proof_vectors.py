"""Test vectors of the ledger's proofs (docs/protocol.md, "Proof vectors"): the Paillier modulus
certificate and the zero proof, on a toy 256-bit modulus (the arithmetic is the same at 2048 and
3072 bits; only the ledger's size rule refuses toy moduli). Regenerate the document section
with ``python -m tests.clearance.test_proof_vectors --write``."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import gmpy2
import pytest

from kofo.clearance import privacy

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"
BEGIN, END = "<!-- proof-vectors:begin -->", "<!-- proof-vectors:end -->"


def _h(label: str) -> int:
    return int.from_bytes(hashlib.sha256(label.encode()).digest(), "big")


def _prime(label: str) -> int:
    return int(gmpy2.next_prime((_h(label) >> 128) | 1 << 127))


def render() -> str:
    p, q = _prime("kofo-vector-p"), _prime("kofo-vector-q")
    n = p * q
    node = hashlib.sha256(b"alice").digest()
    from phe import paillier

    pub = paillier.PaillierPublicKey(n)
    priv = paillier.PaillierPrivateKey(pub, p, q)
    mod_ctx = privacy.modulus_context(node)
    certificate = privacy.prove_modulus(priv, mod_ctx)
    privacy.check_modulus(n, certificate, mod_ctx, "vector")
    r = _h("kofo-vector-r") % n
    seed = privacy.to_bytes(pow(r, n, n * n))
    s_values = [_h(f"kofo-vector-s{i}") % n for i in range(privacy.ZERO_PROOF_REPS)]
    zctx = privacy.register_context(node)
    proof = privacy.prove_zero_with(n, seed, r, zctx, s_values)
    privacy.verify_zero(n, seed, proof, zctx, "vector")
    size = (n.bit_length() + 7) // 8
    a_values = [
        privacy.from_bytes(proof[2 * size * i : 2 * size * (i + 1)])
        for i in range(privacy.ZERO_PROOF_REPS)
    ]
    es = privacy._challenges(n, privacy.from_bytes(seed), a_values, zctx)
    lines = [
        "Toy 256-bit modulus (the ledger refuses it by size; the arithmetic is the same):",
        '`p`, `q` = the next primes after the top 128 bits of `sha256("kofo-vector-p")`,',
        '`sha256("kofo-vector-q")` with the top bit set; node id `sha256("alice")`; zero proof',
        'randomness `r = sha256("kofo-vector-r") mod n`, prover nonces',
        '`s_i = sha256("kofo-vector-s<i>") mod n`, seed `c = rⁿ mod n²`, context',
        "`register_context(node)`. Checked by `tests/clearance/test_proof_vectors.py`.",
        "",
        "```",
        *_field("n", f"{n:x}"),
        *_field("modulus_proof", certificate.hex()),
        *_field("seed", seed.hex()),
        *_field("challenges", " ".join(str(e) for e in es)),
        *_field("seed_proof", proof.hex()),
        "```",
        "",
        "A prime is refused as a modulus (`bad_ciphertext`): its certificate verifies",
        "(`gcd(p, p - 1) = 1`), but the ledger's Miller-Rabin test, with bases",
        '`2 + SHAKE-256("KOFO/modulus-not-prime/v1\\0" ‖ n ‖ i)[:len(n)+16] mod (n − 3)`, i = 0, 1',
        "(4 bytes), must find `n` composite. `n = p` above, certificate",
        "`σ_i = ρ_i^(n⁻¹ mod (p − 1)) mod p` (context as above):",
        "",
        "```",
        *_field("n", f"{p:x}"),
        *_field("modulus_proof", prime_certificate(p, mod_ctx).hex()),
        *_field("base_0", f"{privacy._mr_base(p, 0):x}"),
        "```",
    ]
    return "\n".join(lines)


def prime_certificate(p: int, context: bytes) -> bytes:
    """The modulus certificate a prime ``p`` can make (it verifies: ``gcd(p, p - 1) = 1``)."""
    d = pow(p, -1, p - 1)
    size = (p.bit_length() + 7) // 8
    return b"".join(
        pow(privacy._rho(p, context, i), d, p).to_bytes(size, "big")
        for i in range(privacy.MODULUS_CHALLENGES)
    )


def _field(name: str, value: str, width: int = 64) -> list[str]:
    """``name`` then ``value`` cut into lines of ``width`` characters, aligned."""
    chunks = [value[i : i + width] for i in range(0, len(value), width)] or [""]
    return [f"{name:<16}{chunks[0]}"] + [" " * 16 + c for c in chunks[1:]]


def _documented() -> str:
    text = DOC.read_text()
    return text[text.index(BEGIN) + len(BEGIN) : text.index(END)].strip("\n")


def test_a_prime_modulus_is_refused() -> None:
    """Issue 17: a prime ``n`` passed the certificate (it was accepted as a modulus)."""
    p = _prime("kofo-vector-p")
    ctx = privacy.modulus_context(hashlib.sha256(b"alice").digest())
    certificate = prime_certificate(p, ctx)
    # the certificate itself verifies for a prime: only the primality test stops it
    for i in range(privacy.MODULUS_CHALLENGES):
        size = (p.bit_length() + 7) // 8
        sigma = privacy.from_bytes(certificate[size * i : size * (i + 1)])
        assert pow(sigma, p, p) == privacy._rho(p, ctx, i)
    with pytest.raises(privacy.BadCiphertext, match="is a prime"):
        privacy.check_modulus(p, certificate, ctx, "vector")
    # an honest p q still passes, and is called composite
    q = _prime("kofo-vector-q")
    assert not privacy.is_probable_prime(p * q)
    assert privacy.is_probable_prime(p) and privacy.is_probable_prime(q)


def test_a_prime_modulus_is_refused_at_registration() -> None:
    """The same through the ledger: a 1024-bit prime with its certificate, a seed and a zero
    proof that verify under it, and the registration's work: refused (``bad_ciphertext``)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from kofo.clearance.app import LedgerApp
    from kofo.clearance.params import LedgerParams
    from kofo.clearance.store import MerkleStore
    from kofo.wire.orders import RegisterNode, sign_tx

    key = Ed25519PrivateKey.generate()
    node = key.public_key().public_bytes_raw()
    p = int(gmpy2.next_prime(_h("kofo-1024-prime") << 768 | 1 << 1023))
    assert p.bit_length() == 1024
    r = _h("kofo-vector-r") % p
    seed = privacy.to_bytes(pow(r, p, p * p))
    zctx = privacy.register_context(node)
    s_values = [_h(f"kofo-vector-s{i}") % p for i in range(privacy.ZERO_PROOF_REPS)]
    proof = privacy.prove_zero_with(p, seed, r, zctx, s_values)
    privacy.verify_zero(p, seed, proof, zctx, "prime")  # the zero proof verifies too
    app = LedgerApp(
        MerkleStore(":memory:"),
        LedgerParams(paillier_bits=(1024,), registration_work_bits=0, registration_prework_bits=0),
    )
    body = RegisterNode(
        addresses={},
        bond=0,
        paillier_n=privacy.to_bytes(p),
        balance_seed=seed,
        seed_proof=proof,
        modulus_proof=prime_certificate(p, privacy.modulus_context(node)),
        pow_nonce=0,
    )
    result = app.check_tx(sign_tx(key, body))
    assert result.error == "bad_ciphertext", result
    assert "prime" in result.log


def test_proof_vectors_match_the_document() -> None:
    assert _documented() == render(), f"run: python -m {__name__} --write"


if __name__ == "__main__" and "--write" in sys.argv:
    text = DOC.read_text()
    if BEGIN not in text:
        raise SystemExit(f"add {BEGIN} / {END} to {DOC}")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    DOC.write_text(head + BEGIN + "\n" + render() + "\n" + END + tail)
    print(f"wrote the proof vectors to {DOC}")
