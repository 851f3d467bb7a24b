"""Test vectors of the ledger's proofs (docs/protocol.md, "Proof vectors"): the Paillier modulus
certificate and the zero proof, on a toy 256-bit modulus (the arithmetic is the same at 2048 and
3072 bits; only the ledger's size rule refuses toy moduli). Regenerate the document section
with ``python -m tests.clearance.test_proof_vectors --write``."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import gmpy2

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
    ]
    return "\n".join(lines)


def _field(name: str, value: str, width: int = 64) -> list[str]:
    """``name`` then ``value`` cut into lines of ``width`` characters, aligned."""
    chunks = [value[i : i + width] for i in range(0, len(value), width)] or [""]
    return [f"{name:<16}{chunks[0]}"] + [" " * 16 + c for c in chunks[1:]]


def _documented() -> str:
    text = DOC.read_text()
    return text[text.index(BEGIN) + len(BEGIN) : text.index(END)].strip("\n")


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
