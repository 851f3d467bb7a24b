"""Point python-bitcointx at the libsecp256k1 that ships inside coincurve's wheel.

python-bitcointx loads libsecp256k1 with ctypes and finds none on a bare machine; coincurve's
wheel carries a full build of it, so a fresh ``pip install`` is enough to sign.
"""

from __future__ import annotations

import glob
import os

import bitcointx
import coincurve

_done = False


def ensure_secp256k1() -> None:
    global _done
    if _done:
        return
    candidates = glob.glob(os.path.join(os.path.dirname(coincurve.__file__), "_libsecp256k1*"))
    if candidates:
        bitcointx.set_custom_secp256k1_path(candidates[0])
    _done = True
