"""Proofs of control of leg keys (kofo.wire.legkeys, issue 17): each binds key, order id, leg
and role; high-s twins, other forms and junk are refused without raising."""

from __future__ import annotations

import hashlib

import pytest

from kofo.wire.legkeys import (
    _SECP256K1_N,
    KeyKind,
    LegRole,
    address_of,
    key_kind,
    sign_leg_key,
    verify_leg_key,
)

KEY = hashlib.sha256(b"leg-key-test").digest()
OTHER = hashlib.sha256(b"leg-key-other").digest()
OID = bytes(range(16))


@pytest.mark.parametrize("kind", list(KeyKind))
def test_a_proof_binds_key_order_leg_and_role(kind: KeyKind) -> None:
    addr = address_of(KEY, kind)
    assert key_kind(addr) is kind
    proof = sign_leg_key(KEY, addr, OID, 1, LegRole.RECIPIENT)
    assert verify_leg_key(addr, proof, OID, 1, LegRole.RECIPIENT)
    assert not verify_leg_key(addr, proof, OID, 1, LegRole.SENDER)
    assert not verify_leg_key(addr, proof, OID, 0, LegRole.RECIPIENT)
    assert not verify_leg_key(addr, proof, bytes(16), 1, LegRole.RECIPIENT)
    assert not verify_leg_key(address_of(OTHER, kind), proof, OID, 1, LegRole.RECIPIENT)
    bad = bytes([proof[0] ^ 1]) + proof[1:]
    assert not verify_leg_key(addr, bad, OID, 1, LegRole.RECIPIENT)
    assert not verify_leg_key(addr, proof[:-1], OID, 1, LegRole.RECIPIENT)
    with pytest.raises(ValueError, match="not the key"):
        sign_leg_key(OTHER, addr, OID, 1, LegRole.RECIPIENT)


def test_an_ethereum_proofs_high_s_twin_is_refused() -> None:
    addr = address_of(KEY, KeyKind.ETHEREUM)
    proof = sign_leg_key(KEY, addr, OID, 0, LegRole.SENDER)
    s = int.from_bytes(proof[32:64], "big")
    twin = proof[:32] + (_SECP256K1_N - s).to_bytes(32, "big") + bytes([proof[64] ^ 1])
    assert not verify_leg_key(addr, twin, OID, 0, LegRole.SENDER)


@pytest.mark.parametrize(
    "addr", ["btc-addr-0", "bc1qxyz", "04" + "aa" * 64, "0x" + "aa" * 19, "02" + "zz" * 32, ""]
)
def test_other_address_forms_have_no_proof(addr: str) -> None:
    assert key_kind(addr) is None
    assert not verify_leg_key(addr, bytes(64), OID, 0, LegRole.SENDER)
    with pytest.raises(ValueError, match="no leg-key proof form"):
        sign_leg_key(KEY, addr, OID, 0, LegRole.SENDER)


def test_a_pubkey_off_the_curve_verifies_nothing() -> None:
    # x = 5 is not on secp256k1 (5^3 + 7 = 132 is no square mod p): no raise, just False
    assert not verify_leg_key(
        "02" + (5).to_bytes(32, "big").hex(), bytes(64), OID, 0, LegRole.SENDER
    )
