"""Point python-bitcointx at the libsecp256k1 that ships inside coincurve's wheel.

python-bitcointx loads libsecp256k1 with ctypes and finds none on a bare machine; coincurve's
wheel carries a full build of it, so a fresh ``pip install`` is enough to sign.
"""

from __future__ import annotations

import glob
import os
import threading

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


_thread_state = threading.local()


def ensure_thread_params() -> None:
    """Select python-bitcointx's Bitcoin parameters in the calling thread.

    python-bitcointx keeps its class dispatch (CScript -> CBitcoinScript, ...) in per-thread
    context variables that only the importing thread gets; any other thread (the RPC server's,
    a node's worker) must select them before building scripts or transactions. Litecoin uses
    the same transaction and script format, so one selection serves both.
    """
    if getattr(_thread_state, "ready", False):
        return
    bitcointx.select_chain_params("bitcoin")
    _thread_state.ready = True
