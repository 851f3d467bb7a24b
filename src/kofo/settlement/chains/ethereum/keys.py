"""Ethereum keys derived from the node's one seed (BIP32, BIP44 path for Ethereum)."""

from __future__ import annotations

from eth_account import Account
from eth_account.hdaccount import key_from_seed
from eth_account.signers.local import LocalAccount

from kofo.errors import InvalidInput

ETH_PATH_TEMPLATE = "m/44'/60'/0'/0/{index}"
"""The path every common Ethereum wallet uses (BIP44 coin type 60), so a user can recover the
same address from the same seed in another wallet."""


def account_from_seed(seed: bytes, index: int = 0) -> LocalAccount:
    """The Ethereum account at ``index`` derived from ``seed`` (16–64 bytes, BIP32)."""
    if not 16 <= len(seed) <= 64:
        raise InvalidInput(f"seed must be 16 to 64 bytes, got {len(seed)}")
    if index < 0 or index >= 2**31:
        raise InvalidInput(f"account index must be in [0, 2^31), got {index}")
    key = key_from_seed(seed, ETH_PATH_TEMPLATE.format(index=index))
    account: LocalAccount = Account.from_key(key)
    return account
