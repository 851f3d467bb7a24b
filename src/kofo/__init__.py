"""KOFO: an open exchange network for digital assets.

Three layers, each usable alone: ``settlement`` (HTLCs on every chain, the swap engine),
``clearance`` (the ledger of settlement orders) and ``exchange`` (the peer-to-peer network).
"""

from kofo.errors import KofoError
from kofo.money import Amount, Asset

__all__ = ["Amount", "Asset", "KofoError"]
__version__ = "0.1.0"
