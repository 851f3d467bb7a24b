"""Length-prefixed framing: ``4-byte big-endian length || frame bytes``.

The decoder is incremental (it is fed whatever the socket returned) and refuses a declared
length above the limit *before* buffering the body, so a peer cannot make us hold more than one
maximal frame.
"""

from __future__ import annotations

from kofo.errors import KofoError
from kofo.wire.exchange import MAX_FRAME_BYTES

_HEADER = 4


class FrameTooLarge(KofoError):
    code = "frame_too_large"


def encode_frame(payload: bytes) -> bytes:
    if len(payload) > MAX_FRAME_BYTES:
        raise FrameTooLarge(f"frame payload is {len(payload)} bytes, limit {MAX_FRAME_BYTES}")
    return len(payload).to_bytes(_HEADER, "big") + payload


class FrameDecoder:
    """Feed bytes, get complete frame payloads back."""

    def __init__(self, max_frame: int = MAX_FRAME_BYTES) -> None:
        self._max = max_frame
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """Return every complete payload now available; raise :class:`FrameTooLarge` (and
        keep refusing) once a header announces more than the limit."""
        self._buf += data
        out: list[bytes] = []
        pos = 0
        buf = self._buf
        while len(buf) - pos >= _HEADER:
            size = int.from_bytes(buf[pos : pos + _HEADER], "big")
            if size > self._max:
                raise FrameTooLarge(f"frame announces {size} bytes, limit {self._max}")
            end = pos + _HEADER + size
            if end > len(buf):
                break
            out.append(bytes(buf[pos + _HEADER : end]))
            pos = end
        if pos:
            del buf[:pos]
        return out

    @property
    def buffered(self) -> int:
        return len(self._buf)
