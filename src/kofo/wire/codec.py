"""Canonical bytes for every KOFO protocol message.

Encoding: deterministic CBOR (RFC 8949 §4.2.1 "core deterministic encoding": shortest integer
forms, definite lengths, map keys sorted by their encoded bytes), produced by the maintained
``cbor2`` library. The allowed value types are deliberately few — ``int``, ``bytes``, ``str``,
``bool``, ``None``, ``list`` and ``dict`` with ``str`` keys — so that the same message always has
one byte form in every language. Floats are refused: money is integers.
"""

from __future__ import annotations

from typing import Any

import cbor2

from kofo.errors import KofoError

MAX_MESSAGE_BYTES = 1 << 20
"""No protocol message needs more than 1 MiB; anything larger is refused before decoding so a
peer cannot make us allocate unbounded memory."""

MAX_DEPTH = 16
"""Our schemas nest at most a few levels; a deeper structure is malformed or hostile."""

MAX_INT = (1 << 256) - 1
"""No integer of any KOFO message exceeds 256 bits in magnitude (the widest amount is an EVM
``uint256``; big numbers such as Paillier values travel as bytes). A larger one (a CBOR bignum)
is refused at decode, before any schema sees it: arithmetic on it would be slow, and formatting
it fails past Python's ``PYTHONINTMAXSTRDIGITS``, so a process's environment could change the
result. Schemas bound each field more tightly."""


class EncodingError(KofoError):
    """A value cannot be put into (or read from) canonical KOFO bytes."""

    code = "bad_encoding"


WireValue = int | bytes | str | bool | None | list[Any] | dict[str, Any]


def _check(value: object, path: str, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise EncodingError(f"{path}: nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, int) and not isinstance(value, bool) and not -MAX_INT <= value <= MAX_INT:
        raise EncodingError(f"{path}: a {value.bit_length()}-bit integer exceeds 256 bits")
    if value is None or isinstance(value, bool | int | bytes | str):
        return
    if isinstance(value, float):
        raise EncodingError(f"{path}: floats are not allowed (money is integers)")
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _check(item, f"{path}[{i}]", depth + 1)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise EncodingError(f"{path}: map keys must be strings, got {type(key).__name__}")
            _check(item, f"{path}.{key}", depth + 1)
        return
    raise EncodingError(f"{path}: type {type(value).__name__} cannot be encoded")


_SCALARS = frozenset({type(None), bool, bytes, str})


def _plain(value: object, depth: int) -> bool:
    """True when ``value`` is built only of exactly the allowed types within ``MAX_DEPTH``.

    The fast test for the common case: no path strings are built. Anything else (a subclass
    such as an ``IntEnum``, or an error) goes to :func:`_check`, which alone decides and
    names what is wrong, so the two together accept and refuse exactly what ``_check`` does."""
    if depth > MAX_DEPTH:
        return False
    kind = type(value)
    if kind in _SCALARS:
        return True
    if kind is int:
        return -MAX_INT <= value <= MAX_INT  # type: ignore[operator]
    items: Any
    if kind is dict:
        assert isinstance(value, dict)
        for key in value:
            if type(key) is not str:
                return False
        items = value.values()
    elif kind is list or kind is tuple:
        items = value
    else:
        return False
    for item in items:
        t = type(item)
        if t is int and depth < MAX_DEPTH:
            if not -MAX_INT <= item <= MAX_INT:
                return False
        elif (t not in _SCALARS or depth >= MAX_DEPTH) and not _plain(item, depth + 1):
            return False
    return True


def _validate(value: object) -> None:
    if not _plain(value, 0):
        _check(value, "$", 0)


def encode(value: WireValue) -> bytes:
    """The canonical bytes of ``value`` (what gets signed and sent)."""
    _validate(value)
    return cbor2.dumps(value, canonical=True)


def count_items(data: bytes, limit: int) -> int:
    """The number of CBOR data items in ``data`` (every array element, map key and value, tag
    content, at any depth), read from the item headers alone, without decoding anything; it
    stops as soon as the count passes ``limit`` (and returns it). Malformed input is left to
    :func:`decode` to name: the count is then whatever was read.

    Decoding costs ~1.5 us of Python per item (``cbor2.loads``, the type walk, the canonical
    re-encoding), so a receiver that bounds only a message's bytes pays ~60-90 ms for 64 KiB of
    one-byte items (``[[], [], ...]``) from anyone, before any signature or rate limit can
    apply. This walk costs well under a microsecond an item and stops at the limit."""
    n = len(data)
    pos = 0
    pending = 1  # items still to read
    count = 0
    while pending and pos < n:
        pending -= 1
        count += 1
        if count > limit:
            return count
        head = data[pos]
        major, info = head >> 5, head & 0x1F
        pos += 1
        if info < 24:
            arg = info
        elif info <= 27:
            size = 1 << (info - 24)
            arg = int.from_bytes(data[pos : pos + size], "big")
            pos += size
        else:
            return count  # reserved or indefinite length: never canonical, decode refuses it
        if major in (2, 3):
            pos += arg
        elif major == 4:
            pending += arg
        elif major == 5:
            pending += 2 * arg
        elif major == 6:
            pending += 1
    return count


def decode(data: bytes) -> Any:
    """Decode canonical bytes; refuses oversize input and any non-canonical encoding."""
    if len(data) > MAX_MESSAGE_BYTES:
        raise EncodingError(f"message is {len(data)} bytes, more than {MAX_MESSAGE_BYTES}")
    try:
        value = cbor2.loads(data)
    except Exception as exc:  # cbor2 raises several types for malformed input
        raise EncodingError(f"not valid CBOR: {type(exc).__name__}") from None
    _validate(value)
    # One message, one byte form: anything that does not re-encode identically is refused,
    # otherwise two different byte strings could carry the same signed content.
    if cbor2.dumps(value, canonical=True) != data:
        raise EncodingError("message is not in canonical form")
    return value
