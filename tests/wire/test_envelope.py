"""The protocol message standard: canonical bytes, signatures, versions, replay protection."""

from __future__ import annotations

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from kofo.wire.codec import EncodingError, decode, encode
from kofo.wire.envelope import (
    BadMessage,
    BadSignature,
    ReplayedMessage,
    ReplayGuard,
    open_message,
    sign,
)

# A fixed key and nonce make the bytes reproducible: these are the test vectors in
# docs/protocol.md, and another implementation must produce the same bytes.
VECTOR_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
VECTOR_NONCE = bytes(range(16))
VECTOR_TS = 1_790_000_000

wire_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64) + 1, max_value=2**64 - 1)
    | st.binary(max_size=64)
    | st.text(max_size=32),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=30,
)


@given(wire_values)
def test_every_wire_value_round_trips_through_its_canonical_bytes(value):
    data = encode(value)
    assert decode(data) == value
    assert encode(decode(data)) == data


@given(st.dictionaries(st.text(max_size=8), st.integers(), min_size=2, max_size=8))
def test_map_key_order_does_not_change_the_bytes(d):
    assert encode(dict(reversed(list(d.items())))) == encode(d)


def test_floats_are_refused_because_money_is_integers():
    with pytest.raises(EncodingError, match="floats"):
        encode({"amount": 1.5})


def test_non_canonical_bytes_are_refused():
    # 1 encoded in two bytes (0x18 0x01) instead of one: valid CBOR, not canonical.
    with pytest.raises(EncodingError, match="canonical"):
        decode(b"\x18\x01")
    unsorted = cbor2.dumps({"b": 1, "a": 2})  # cbor2 keeps insertion order without canonical
    with pytest.raises(EncodingError, match="canonical"):
        decode(unsorted)


def test_oversized_and_garbage_input_is_refused():
    with pytest.raises(EncodingError, match="more than"):
        decode(b"\x00" * ((1 << 20) + 1))
    with pytest.raises(EncodingError, match="not valid CBOR"):
        decode(b"\x5a\xff\xff\xff\xff")  # claims a 4 GiB byte string, then ends
    with pytest.raises(EncodingError):
        decode(b"\xff\xff")  # a lone "break" is no value of the data model


def test_signed_message_verifies_and_tampering_is_detected():
    msg = sign(VECTOR_KEY, "swap.propose", {"amount": 10**18})
    opened = open_message(msg.to_bytes())
    assert opened.envelope.body == {"amount": 10**18}
    tampered = sign(VECTOR_KEY, "swap.propose", {"amount": 10**18 + 1}, nonce=msg.envelope.nonce)
    forged = encode({"env": tampered.envelope.as_map(), "sig": msg.signature})
    with pytest.raises(BadSignature):
        open_message(forged)


def test_unknown_version_and_missing_fields_are_bad_messages():
    msg = sign(VECTOR_KEY, "t", {})
    env = msg.envelope.as_map()
    with pytest.raises(BadMessage, match="version 2"):
        open_message(encode({"env": {**env, "v": 2}, "sig": msg.signature}))
    del env["nonce"]
    with pytest.raises(BadMessage, match="exactly"):
        open_message(encode({"env": env, "sig": msg.signature}))


def test_replayed_and_stale_messages_are_refused():
    guard = ReplayGuard(window=600)
    msg = open_message(sign(VECTOR_KEY, "t", {}, ts=VECTOR_TS).to_bytes())
    guard.check(msg.envelope, now=VECTOR_TS)
    with pytest.raises(ReplayedMessage, match="seen before"):
        guard.check(msg.envelope, now=VECTOR_TS + 1)
    with pytest.raises(ReplayedMessage, match="window"):
        guard.check(msg.envelope, now=VECTOR_TS + 601)


def test_envelope_test_vector_matches_docs():
    msg = sign(
        VECTOR_KEY,
        "example",
        {"amount": 1000, "hash": b"\xab" * 4},
        ts=VECTOR_TS,
        nonce=VECTOR_NONCE,
    )
    assert msg.to_bytes().hex() == EXPECTED_VECTOR_HEX


EXPECTED_VECTOR_HEX = (
    "a263656e76a66176016274731a6ab13b8064626f6479a2646861736844abababab66616d6f756e741903e86474"
    "797065676578616d706c65656e6f6e636550000102030405060708090a0b0c0d0e0f6673656e646572582003a1"
    "07bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8637369675840cd773647cd89f270ec"
    "9588515e6e355991313a1234dcfa1660f38630f9f6d7443e9030e995e4b91e420c61446df7ca4f94fdacbce647"
    "76cd03157f56e767d30e"
)
