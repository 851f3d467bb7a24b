"""Sealed boxes: a message only the holder of one X25519 key can open.

A party of a chosen route reveals its node identity to the initiator in a *join* that travels
back through the other parties; sealing it to the claim's ``reply_key`` keeps those relaying
parties from reading it. Anonymous sender (fresh X25519 key per box), HKDF-SHA256 key
derivation, ChaCha20-Poly1305 AEAD — all from the ``cryptography`` package.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from kofo.wire.envelope import BadMessage

_INFO = b"KOFO/seal/v1"
_NONCE = b"\x00" * 12  # each box has its own fresh key, so a fixed nonce is never reused


def _key(shared: bytes, eph_pub: bytes, recipient_pub: bytes) -> bytes:
    return HKDF(hashes.SHA256(), 32, eph_pub + recipient_pub, _INFO).derive(shared)


def seal(recipient_pub: bytes, plaintext: bytes, *, eph: X25519PrivateKey | None = None) -> bytes:
    """``eph`` is the box's one-time key: fresh unless given (only test vectors give one; a
    reused key would reuse the nonce)."""
    eph = eph or X25519PrivateKey.generate()
    eph_pub = eph.public_key().public_bytes_raw()
    shared = eph.exchange(X25519PublicKey.from_public_bytes(recipient_pub))
    return eph_pub + ChaCha20Poly1305(_key(shared, eph_pub, recipient_pub)).encrypt(
        _NONCE, plaintext, None
    )


def open_sealed(recipient: X25519PrivateKey, box: bytes) -> bytes:
    if len(box) < 32 + 16:
        raise BadMessage(f"sealed box is {len(box)} bytes, too short")
    eph_pub = box[:32]
    try:
        shared = recipient.exchange(X25519PublicKey.from_public_bytes(eph_pub))
        key = _key(shared, eph_pub, recipient.public_key().public_bytes_raw())
        return ChaCha20Poly1305(key).decrypt(_NONCE, box[32:], None)
    except (InvalidTag, ValueError):
        raise BadMessage("sealed box does not open with this key") from None
