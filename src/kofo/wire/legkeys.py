"""Proofs of control of a settlement order's leg keys (issue 17).

Validators attest a leg's lock, redeem and refund by the HTLC's chain terms (payment hash,
amount, addresses, expiry), which name no ledger node. Without more, a sybil that saw a
stranger's HTLC (one that belongs to no ledger order) in a mempool could commit an order
copying its terms and have it settled by the stranger's locks. So an order commits only with a
proof, for every leg, that the keys behind its ``sender_address`` (the refund key / Ethereum
sender) and its ``recipient_address`` (the claim key / Ethereum recipient) signed the order's id:
a copier cannot sign for a stranger's keys.

The message (version 1) is ``KOFO/leg-key/v1\\0 || order_id (16) || leg index (1 byte) ||
role (1 byte: 0 sender, 1 recipient)``. The order id is derived from the whole order (node ids,
terms and fees), so a proof binds the exact order. The scheme follows the address's form:

* ``0x`` + 40 hex digits (an Ethereum account): 65 bytes ``r || s || v`` (``v`` 27 or 28,
  low ``s``) over ``keccak256(message)``, recovering to the address;
* 66 hex digits starting ``02``/``03`` (a compressed secp256k1 public key: a Bitcoin-like
  HTLC key): a 64-byte BIP340 Schnorr signature over ``sha256(message)`` by the key (its
  x-only form).

Any other address form has no proof and cannot be committed. Verifying is one secp256k1
operation per proof: at most ``2 * MAX_LEGS`` = 16 per order.
"""

from __future__ import annotations

import enum
import hashlib
import re

import coincurve
from eth_utils.crypto import keccak

from kofo.wire.envelope import BadSignature

LEG_KEY_DOMAIN = b"KOFO/leg-key/v1\x00"
ETH_PROOF_SIZE = 65
SCHNORR_PROOF_SIZE = 64
_SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
_ETH_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")
_PUBKEY = re.compile(r"0[23][0-9a-fA-F]{64}")


class LegKeyUnproven(BadSignature):
    """An order leg's sender or recipient key did not prove its control (the message names
    the leg and the role)."""

    code = "leg_key_unproven"


class LegRole(enum.IntEnum):
    SENDER = 0  # the refund key (Bitcoin-like) / the account that locks (Ethereum)
    RECIPIENT = 1  # the claim key (Bitcoin-like) / the account paid on redeem (Ethereum)


class KeyKind(enum.Enum):
    ETHEREUM = "ethereum"
    SECP256K1 = "secp256k1"


def key_kind(address: str) -> KeyKind | None:
    """How a proof for ``address`` is made; None for an address form with no proof."""
    if _ETH_ADDRESS.fullmatch(address):
        return KeyKind.ETHEREUM
    if _PUBKEY.fullmatch(address):
        return KeyKind.SECP256K1
    return None


def leg_key_message(order_id: bytes, leg: int, role: LegRole) -> bytes:
    if len(order_id) != 16 or not 0 <= leg < 256:
        raise ValueError("a leg-key message needs a 16-byte order id and a leg index < 256")
    return LEG_KEY_DOMAIN + order_id + bytes([leg, int(role)])


def _eth_digest(message: bytes) -> bytes:
    return keccak(message)


def _schnorr_digest(message: bytes) -> bytes:
    return hashlib.sha256(message).digest()


def address_of(private_key: bytes, kind: KeyKind) -> str:
    """The address a leg names for ``private_key`` (tests and tools)."""
    pub = coincurve.PrivateKey(private_key).public_key
    if kind is KeyKind.ETHEREUM:
        return "0x" + keccak(pub.format(compressed=False)[1:])[12:].hex()
    return pub.format(compressed=True).hex()


def sign_leg_key(
    private_key: bytes,
    address: str,
    order_id: bytes,
    leg: int,
    role: LegRole,
    *,
    aux: bytes = b"",
) -> bytes:
    """The proof that ``private_key`` (the key behind ``address``) controls leg ``leg``'s
    ``role`` of order ``order_id``. Raises ValueError for an address form with no proof or a
    key that is not the address's. ``aux``: BIP340's auxiliary randomness (fresh by default;
    32 fixed bytes only for test vectors)."""
    kind = key_kind(address)
    if kind is None:
        raise ValueError(f"address {address!r} has no leg-key proof form")
    if address_of(private_key, kind).lower() != address.lower():
        raise ValueError(f"the key is not the key of address {address}")
    message = leg_key_message(order_id, leg, role)
    key = coincurve.PrivateKey(private_key)
    if kind is KeyKind.ETHEREUM:
        sig = key.sign_recoverable(_eth_digest(message), hasher=None)  # libsecp256k1: low s
        return sig[:64] + bytes([27 + sig[64]])
    return key.sign_schnorr(_schnorr_digest(message), aux)


def verify_leg_key(address: str, proof: bytes, order_id: bytes, leg: int, role: LegRole) -> bool:
    """Whether ``proof`` is the key behind ``address`` signing leg ``leg``'s ``role`` of order
    ``order_id`` (never raises for bad input: False)."""
    kind = key_kind(address)
    if kind is None:
        return False
    message = leg_key_message(order_id, leg, role)
    try:
        if kind is KeyKind.ETHEREUM:
            if len(proof) != ETH_PROOF_SIZE or proof[64] not in (27, 28):
                return False
            if not 0 < int.from_bytes(proof[32:64], "big") <= _SECP256K1_N // 2:
                return False  # high-s twins are refused: one proof per key and message
            pub = coincurve.PublicKey.from_signature_and_message(
                proof[:64] + bytes([proof[64] - 27]), _eth_digest(message), hasher=None
            )
            got = keccak(pub.format(compressed=False)[1:])[12:]
            return got == bytes.fromhex(address[2:])
        if len(proof) != SCHNORR_PROOF_SIZE:
            return False
        xonly = coincurve.PublicKeyXOnly(bytes.fromhex(address)[1:])
        return bool(xonly.verify(proof, _schnorr_digest(message)))
    except Exception:  # coincurve raises ValueError / its own errors for invalid points
        return False
