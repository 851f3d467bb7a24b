from __future__ import annotations

import hashlib

import pytest
from bitcointx.core.key import CKey
from hypothesis import given, settings
from hypothesis import strategies as st

import kofo.settlement.chains.bitcoin  # noqa: F401
from kofo.errors import InvalidInput
from kofo.settlement.chain import BlockHeight, UnixTime
from kofo.settlement.chains.bitcoin.script import (
    LOCKTIME_THRESHOLD,
    HtlcScriptError,
    build_htlc_script,
    expiry_to_locktime,
    p2wsh_script_pubkey,
    parse_htlc_script,
    payment_hash_to_hash160,
)

_secrets = st.integers(min_value=1, max_value=2**255).map(lambda n: n.to_bytes(32, "big"))
_pubkeys = _secrets.map(lambda s: bytes(CKey.from_secret_bytes(s).pub))
_expiries = st.one_of(
    st.integers(1, LOCKTIME_THRESHOLD - 1).map(BlockHeight),
    st.integers(LOCKTIME_THRESHOLD, 2**32 - 1).map(UnixTime),
)


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=32, max_size=32), _pubkeys, _pubkeys, _expiries)
def test_any_terms_round_trip_through_build_and_parse(payment_hash, recipient, refund, expiry):
    script = build_htlc_script(payment_hash, recipient, refund, expiry)
    fields = parse_htlc_script(script, p2wsh_script_pubkey(script))
    assert fields.matches_payment_hash(payment_hash)
    assert fields.hash160 == payment_hash_to_hash160(payment_hash)
    assert fields.recipient_pubkey == recipient
    assert fields.refund_pubkey == refund
    assert fields.expiry == expiry
    assert type(fields.expiry) is type(expiry)


def test_hash160_of_preimage_equals_ripemd160_of_payment_hash():
    preimage = bytes(range(32))
    payment_hash = hashlib.sha256(preimage).digest()
    hash160 = hashlib.new("ripemd160", hashlib.sha256(preimage).digest()).digest()
    assert payment_hash_to_hash160(payment_hash) == hash160


def test_script_is_105_bytes_with_a_mainnet_height_expiry():
    k1 = bytes(CKey.from_secret_bytes(b"\x01" * 32).pub)
    k2 = bytes(CKey.from_secret_bytes(b"\x02" * 32).pub)
    assert len(build_htlc_script(b"\x00" * 32, k1, k2, BlockHeight(900_000))) == 105


def test_height_expiry_in_the_time_range_is_rejected():
    with pytest.raises(InvalidInput, match="block height"):
        expiry_to_locktime(BlockHeight(LOCKTIME_THRESHOLD))


def test_time_expiry_in_the_height_range_is_rejected():
    with pytest.raises(InvalidInput, match="unix time"):
        expiry_to_locktime(UnixTime(LOCKTIME_THRESHOLD - 1))


def test_time_expiry_beyond_32_bits_is_rejected():
    with pytest.raises(InvalidInput, match="unix time"):
        expiry_to_locktime(UnixTime(2**32))


def test_uncompressed_pubkey_is_rejected():
    k1 = CKey.from_secret_bytes(b"\x01" * 32, compressed=False)
    k2 = bytes(CKey.from_secret_bytes(b"\x02" * 32).pub)
    with pytest.raises(InvalidInput, match="recipient_pubkey"):
        build_htlc_script(b"\x00" * 32, bytes(k1.pub), k2, BlockHeight(10))


def _script():
    k1 = bytes(CKey.from_secret_bytes(b"\x01" * 32).pub)
    k2 = bytes(CKey.from_secret_bytes(b"\x02" * 32).pub)
    return build_htlc_script(b"\x07" * 32, k1, k2, BlockHeight(900_000))


def test_parser_rejects_a_script_that_differs_by_one_opcode():
    script = bytearray(_script())
    script[-1] = 0xAD  # OP_CHECKSIGVERIFY instead of OP_CHECKSIG
    with pytest.raises(HtlcScriptError, match="template"):
        parse_htlc_script(bytes(script))


def test_parser_rejects_a_script_without_the_size_check():
    script = _script()[4:]  # drop OP_SIZE <32> OP_EQUAL
    with pytest.raises(HtlcScriptError):
        parse_htlc_script(script)


def test_parser_rejects_garbage():
    with pytest.raises(HtlcScriptError):
        parse_htlc_script(b"\x4c\xff")


def test_parser_rejects_a_funding_output_for_another_script():
    script = _script()
    with pytest.raises(HtlcScriptError, match="P2WSH"):
        parse_htlc_script(script, p2wsh_script_pubkey(script + b"\x51"))


def test_parser_rejects_a_non_minimal_expiry_push():
    script = _script()
    # expiry 900000 is pushed as 03 a0bb0d; re-push it with a 4-byte non-minimal encoding.
    tampered = script.replace(bytes.fromhex("03a0bb0d"), bytes.fromhex("04a0bb0d00"))
    assert tampered != script
    with pytest.raises(HtlcScriptError):
        parse_htlc_script(tampered)
