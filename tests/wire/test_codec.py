"""The codec's fast type test agrees with the full one on every value, at the depth limit too."""

from __future__ import annotations

import enum

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kofo.wire.codec import MAX_DEPTH, EncodingError, _check, _validate


class Kind(enum.IntEnum):
    A = 1


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.binary(max_size=4),
    st.text(max_size=4),
    st.floats(allow_nan=False),
    st.just(Kind.A),
    st.builds(bytearray, st.binary(max_size=2)),
    st.frozensets(st.integers(), max_size=2),
)
keys = st.one_of(st.text(max_size=3), st.integers(0, 3))
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.lists(inner, max_size=3).map(tuple),
        st.dictionaries(keys, inner, max_size=3),
    ),
    max_leaves=12,
)


def _verdict(check, value) -> str | None:
    try:
        check(value)
    except EncodingError as exc:
        return str(exc)
    return None


def _nested(depth: int, leaf: object) -> object:
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


@settings(max_examples=2000, deadline=None)
@given(values)
def test_fast_and_full_type_checks_accept_and_refuse_the_same_values(value):
    assert _verdict(_validate, value) == _verdict(lambda v: _check(v, "$", 0), value)


def test_the_depth_limit_is_the_same_on_both_paths():
    for depth in (MAX_DEPTH - 1, MAX_DEPTH, MAX_DEPTH + 1, MAX_DEPTH + 2):
        for leaf in (1, [], {"k": 1}):
            value = _nested(depth, leaf)
            assert _verdict(_validate, value) == _verdict(lambda v: _check(v, "$", 0), value)
    assert _verdict(_validate, _nested(MAX_DEPTH, 1)) is None
    assert "deeper" in (_verdict(_validate, _nested(MAX_DEPTH + 1, 1)) or "")


def test_integers_beyond_256_bits_are_refused_on_both_paths_and_at_decode():
    import cbor2

    from kofo.wire.codec import MAX_INT, decode

    for value in (MAX_INT + 1, -MAX_INT - 1, 10**5000, [1, {"k": 1 << 300}]):
        assert _verdict(_validate, value) == _verdict(lambda v: _check(v, "$", 0), value)
        assert "256 bits" in (_verdict(_validate, value) or "")
        with pytest.raises(EncodingError, match="256 bits"):
            decode(cbor2.dumps(value, canonical=True))
    assert decode(cbor2.dumps([MAX_INT, -MAX_INT], canonical=True)) == [MAX_INT, -MAX_INT]


def _items(v: object) -> int:
    """The CBOR items of ``v`` as the encoder writes them (a bignum is a tag and its bytes)."""
    if isinstance(v, list):
        return 1 + sum(_items(x) for x in v)
    if isinstance(v, dict):
        return 1 + sum(1 + _items(x) for x in v.values())
    if type(v) is int and not -(2**64) <= v < 2**64:
        return 2
    return 1


_WIRE = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**256) + 1, 2**256 - 1)
    | st.binary(max_size=300)
    | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=40,
)


@settings(max_examples=200, deadline=None)
@given(_WIRE, st.integers(0, 60))
def test_count_items_reads_the_item_headers_exactly(value: object, limit: int) -> None:
    """count_items (the ledger's bound before decoding) counts exactly the items encode wrote,
    and stops as soon as the count passes the limit."""
    from kofo.wire.codec import count_items, encode

    data = encode(value)  # type: ignore[arg-type]
    assert count_items(data, 10**6) == _items(value)
    assert count_items(data, limit) == min(_items(value), limit + 1)
