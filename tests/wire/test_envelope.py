"""The protocol message standard: canonical bytes, signatures, versions, replay protection."""

from __future__ import annotations

import cbor2
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st

from kofo.wire.codec import EncodingError, decode, encode
from kofo.wire.envelope import (
    DOMAIN,
    BadMessage,
    BadSignature,
    Envelope,
    ReplayedMessage,
    ReplayGuard,
    SignedMessage,
    check_signature,
    open_message,
    read_message,
    sign,
    verify_ed25519,
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


def _reference_open(raw):
    """The straightforward reading of the spec: decode, check the shape, re-encode the envelope,
    verify with OpenSSL. open_message slices the signed bytes out of the message instead."""
    outer = decode(raw)
    if not isinstance(outer, dict) or set(outer) != {"env", "sig"}:
        raise BadMessage("shape")
    env = outer["env"]
    if not isinstance(env, dict) or set(env) != {"v", "type", "sender", "nonce", "ts", "body"}:
        raise BadMessage("shape")
    kinds = {"v": int, "type": str, "sender": bytes, "nonce": bytes, "ts": int, "body": dict}
    for name, kind in kinds.items():
        if not isinstance(env[name], kind) or (kind is int and isinstance(env[name], bool)):
            raise BadMessage(name)
    if env["v"] != 1 or len(env["sender"]) != 32 or len(env["nonce"]) != 16:
        raise BadMessage("field")
    sig = outer["sig"]
    if not isinstance(sig, bytes) or len(sig) != 64:
        raise BadMessage("sig")
    try:
        Ed25519PublicKey.from_public_bytes(env["sender"]).verify(sig, DOMAIN + encode(env))
    except (InvalidSignature, ValueError):
        raise BadSignature("sig") from None
    return SignedMessage(
        Envelope(env["type"], env["body"], env["sender"], env["nonce"], env["ts"], env["v"]), sig
    )


def _outcome(fn, raw):
    try:
        return ("ok", fn(raw))
    except (BadMessage, BadSignature, EncodingError) as exc:
        return ("error", type(exc))


_ENV_FIELDS = ["v", "type", "sender", "nonce", "ts", "body"]


@settings(max_examples=300)
@given(
    st.dictionaries(st.text(max_size=8), wire_values, max_size=4),
    st.sampled_from(["flip", "truncate", "replace_env", "replace_sig", "none"]),
    st.integers(0, 10_000),
    st.sampled_from(_ENV_FIELDS),
    wire_values,
)
def test_open_message_agrees_with_the_reference_reading_on_any_mutation(
    body, how, pos, field, value
):
    msg = sign(Ed25519PrivateKey.generate(), "offer", body)
    raw = msg.to_bytes()
    if how == "flip":
        b = bytearray(raw)
        b[pos % len(b)] ^= 1 << (pos % 8)
        raw = bytes(b)
    elif how == "truncate":
        raw = raw[: pos % len(raw)]
    elif how == "replace_env":
        raw = encode({"env": {**msg.envelope.as_map(), field: value}, "sig": msg.signature})
    elif how == "replace_sig":
        raw = encode({"env": msg.envelope.as_map(), "sig": value})
    assert _outcome(open_message, raw) == _outcome(_reference_open, raw)


def test_reading_a_message_checks_everything_but_the_signature():
    msg = sign(Ed25519PrivateKey.generate(), "offer", {"a": 1})
    raw = bytearray(msg.to_bytes())
    raw[-1] ^= 1  # only the signature changes
    assert read_message(bytes(raw)) == SignedMessage(msg.envelope, bytes(raw[-64:]))
    with pytest.raises(BadSignature):
        check_signature(msg.envelope.sender, bytes(raw))


def test_identity_key_universal_forgery_is_refused():
    # The identity point as public key with R = identity and S = 0 satisfies the Ed25519
    # equation for every message; OpenSSL accepts it, libsodium refuses small-order keys.
    identity = bytes([1]) + bytes(31)
    assert not verify_ed25519(identity, identity + bytes(32), b"any message")
    env = Envelope("offer", {}, identity, bytes(16), 1)
    raw = encode({"env": env.as_map(), "sig": identity + bytes(32)})
    with pytest.raises(BadSignature):
        open_message(raw)
