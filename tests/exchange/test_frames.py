"""The length-prefixed frame decoder, including a fuzz run (>= 100k inputs under CI=true)."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kofo.exchange.frames import FrameDecoder, FrameTooLarge, encode_frame
from kofo.wire.envelope import BadMessage
from kofo.wire.exchange import MAX_FRAME_BYTES, Frame

FUZZ_EXAMPLES = 100_000 if os.environ.get("CI") else 3_000


@given(st.lists(st.binary(max_size=300), max_size=20), st.lists(st.integers(1, 64), max_size=30))
def test_frames_split_at_any_points_come_out_whole_and_in_order(payloads, cuts):
    stream = b"".join(encode_frame(p) for p in payloads)
    dec = FrameDecoder()
    out, pos = [], 0
    for c in cuts:
        out += dec.feed(stream[pos : pos + c])
        pos += c
    out += dec.feed(stream[pos:])
    assert out == payloads
    assert dec.buffered == 0


def test_oversized_length_is_refused_before_the_body_arrives():
    dec = FrameDecoder()
    with pytest.raises(FrameTooLarge):
        dec.feed((MAX_FRAME_BYTES + 1).to_bytes(4, "big"))
    assert dec.buffered <= 4


@settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    database=None,
)
@given(st.binary(max_size=512))
def test_fuzz_decoder_never_fails_except_with_its_own_errors(data):
    dec = FrameDecoder(max_frame=4096)
    try:
        payloads = dec.feed(data)
    except FrameTooLarge:
        return
    for p in payloads:
        try:
            Frame.from_bytes(p)
        except BadMessage:
            pass
